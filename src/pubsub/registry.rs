//! The registry loop: topic → subscribers, and the fastlane dispatch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{
    Broadcast, Connection, Eviction, Inbound, Inbox, Lag, Msg, Refused, Shared, SubId, Subscriber,
    Target,
};
use crate::protocol::Vsn;

/// One subscription as the registry keeps it. `lagged` is shared with the `Lag` marker the
/// subscriber receives when its mailbox overflowed: set here, cleared by the channel when it
/// handles the marker; while it is set, messages for that subscriber are not queued (the
/// marker already tells it to catch up).
struct Entry {
    sub: Subscriber,
    lagged: Arc<AtomicBool>,
}

/// Subscribers of one topic. The index makes unsubscribe O(1), which matters when 19k
/// connections leave one topic at once.
#[derive(Default)]
struct Topic {
    subs: Vec<Entry>,
    index: HashMap<SubId, usize>,
}

impl Topic {
    fn insert(&mut self, sub: Subscriber) {
        self.index.insert(sub.id, self.subs.len());
        self.subs.push(Entry { sub, lagged: Arc::default() });
    }

    fn remove(&mut self, id: SubId) {
        let Some(i) = self.index.remove(&id) else { return };
        self.subs.swap_remove(i);
        if let Some(moved) = self.subs.get(i) {
            self.index.insert(moved.sub.id, i);
        }
    }
}

/// What became of one delivery to a mailbox.
#[derive(PartialEq)]
enum Delivery {
    Done,
    /// The receiver is gone (its channel or owner ended without unsubscribing): prune it.
    Gone,
}

/// `spread_fanout`: from this many subscribers up, fastlane frames are queued at the
/// connections' writers rather than written by the registry itself. One thread writes about
/// 100,000 small frames a second (~10 µs per loopback `send`), so a broadcast to 10,000 sockets
/// kept one core busy for 100 ms while the writers, one per core, sat idle; queueing costs the
/// registry well under a microsecond per subscriber, and a writer that finds several frames
/// queued for a connection sends them in one call. Smaller topics are written directly, which
/// wakes no thread at all.
pub(super) fn run(rx: Receiver<Msg>, spread_fanout: usize) {
    let mut topics: HashMap<String, Topic> = HashMap::new();
    for msg in rx {
        match msg {
            Msg::Subscribe { topic, sub } => topics.entry(topic).or_default().insert(sub),
            Msg::Unsubscribe { topic, id } => unsubscribe(&mut topics, &topic, id),
            Msg::Broadcast { broadcast, from } => {
                let topic = &broadcast.topic;
                deliver(&mut topics, topic, |t| dispatch(t, &broadcast, from, spread_fanout));
            }
            Msg::Publish { topic, message } => {
                deliver(&mut topics, &topic, |t| dispatch_shared(t, &topic, &message));
            }
            Msg::Count { topic, reply } => count(&topics, &topic, &reply),
            Msg::Heard { at, cell } => {
                let mut heard = cell.lock();
                *heard = Some(heard.map_or(at, |h| h.max(at)));
            }
            Msg::Stop => break,
        }
    }
}

/// Runs one dispatch over `topic`'s subscribers, then prunes those whose receiver was gone.
fn deliver(
    topics: &mut HashMap<String, Topic>,
    topic: &str,
    dispatch: impl FnOnce(&Topic) -> Vec<SubId>,
) {
    let Some(t) = topics.get(topic) else { return };
    for id in dispatch(t) {
        log::debug!("pubsub: pruning a subscriber of {topic} whose mailbox is gone");
        unsubscribe(topics, topic, id);
    }
}

fn count(topics: &HashMap<String, Topic>, topic: &str, reply: &Sender<usize>) {
    let _ = reply.try_send(topics.get(topic).map_or(0, |t| t.subs.len()));
}

fn unsubscribe(topics: &mut HashMap<String, Topic>, topic: &str, id: SubId) {
    if let Some(t) = topics.get_mut(topic) {
        t.remove(id);
        if t.subs.is_empty() {
            topics.remove(topic);
        }
    }
}

/// Delivers one broadcast; returns the subscribers found gone. Fastlane frames are encoded at
/// most once per serializer.
///
/// Either path keeps each connection's frames in order: `send_direct` writes only when nothing
/// is queued for that connection, and otherwise appends behind what is.
fn dispatch(
    topic: &Topic,
    broadcast: &Arc<Broadcast>,
    from: Option<SubId>,
    spread_fanout: usize,
) -> Vec<SubId> {
    let spread = topic.subs.len() >= spread_fanout;
    let mut frames = Fastlane::new(broadcast);
    let mut gone = Vec::new();
    // Counted here, and handed to the metrics once per broadcast: no atomic per subscriber.
    let (mut deliveries, mut bytes) = (0u64, 0u64);
    for entry in topic.subs.iter().filter(|e| Some(e.sub.id) != from) {
        let done = match &entry.sub.target {
            Target::Channel { fastlane: Some(conn), intercepts, .. }
                if !intercepts.iter().any(|e| *e == broadcast.event) =>
            {
                let frame = frames.get(conn.vsn());
                deliveries += 1;
                bytes += frame.as_ref().map_or(0, |f| f.len() as u64);
                fastlane(&**conn, frame, spread, &broadcast.topic)
            }
            Target::Channel { tx, fastlane, .. } => {
                let msg = Inbound::Broadcast(broadcast.clone());
                to_channel(entry, &**tx, fastlane.as_deref(), msg, &broadcast.topic)
            }
            Target::Socket(conn) => to_socket(&**conn, &broadcast.event),
            Target::Mailbox { tx, dropped } => to_mailbox(tx, dropped, broadcast),
        };
        if done == Delivery::Gone {
            gone.push(entry.sub.id);
        }
    }
    crate::metrics::broadcast(deliveries, bytes);
    gone
}

/// The channel process is bypassed: that is the point of fastlane. A connection that cannot
/// take the frame is cut by `ConnShared` (slow consumer), which its client sees.
fn fastlane(
    conn: &dyn Connection,
    frame: Option<Arc<[u8]>>,
    spread: bool,
    topic: &str,
) -> Delivery {
    match frame {
        Some(frame) => conn.send_frame(frame, !spread),
        None => conn.refused(topic),
    }
    Delivery::Done
}

fn to_socket(conn: &dyn Connection, event: &str) -> Delivery {
    if event == "disconnect" {
        conn.evict(Eviction::Disconnect);
    }
    Delivery::Done
}

/// A full `PubSub::subscribe` mailbox: the broadcast is not queued, and the owner sees it in
/// `Subscription::take_dropped`.
fn to_mailbox(
    tx: &Sender<Arc<Broadcast>>,
    dropped: &std::sync::atomic::AtomicU64,
    broadcast: &Arc<Broadcast>,
) -> Delivery {
    match tx.try_send(broadcast.clone()) {
        Ok(()) => Delivery::Done,
        Err(TrySendError::Full(_)) => {
            dropped.fetch_add(1, Ordering::Relaxed);
            Delivery::Done
        }
        Err(TrySendError::Disconnected(_)) => Delivery::Gone,
    }
}

/// Delivers a published value to the channels subscribed to `topic`.
fn dispatch_shared(subs: &Topic, topic: &str, message: &Shared) -> Vec<SubId> {
    let mut gone = Vec::new();
    for entry in &subs.subs {
        if let Target::Channel { tx, fastlane, .. } = &entry.sub.target {
            let msg = Inbound::Shared(message.clone());
            if to_channel(entry, &**tx, fastlane.as_deref(), msg, topic) == Delivery::Gone {
                gone.push(entry.sub.id);
            }
        }
    }
    gone
}

/// Queues `msg` for a channel process, never waiting. A channel that cannot keep up is never
/// left silently behind: on its own topic (`fastlane`) its connection is cut as a slow
/// consumer, and the client rejoins; on an extra topic it gets one `Lag` marker (past the
/// capacity check) and nothing more until it has handled it (`Channel::handle_lagged`).
fn to_channel(
    entry: &Entry,
    tx: &dyn Inbox,
    fastlane: Option<&dyn Connection>,
    msg: Inbound,
    topic: &str,
) -> Delivery {
    if entry.lagged.load(Ordering::Acquire) {
        return Delivery::Done;
    }
    match tx.try_deliver(msg) {
        Ok(()) => Delivery::Done,
        Err(Refused::Gone) => Delivery::Gone,
        Err(Refused::Full) => match fastlane {
            Some(conn) => {
                log::warn!("channel mailbox full on {topic}: disconnecting slow consumer");
                conn.evict(Eviction::SlowConsumer);
                Delivery::Done
            }
            None => mark_lagged(entry, tx, topic),
        },
    }
}

fn mark_lagged(entry: &Entry, tx: &dyn Inbox, topic: &str) -> Delivery {
    log::warn!("channel mailbox full on {topic}: the channel is told it lagged");
    entry.lagged.store(true, Ordering::Release);
    let lag = Lag { topic: topic.to_string(), flag: entry.lagged.clone() };
    if tx.force_deliver(Inbound::Lagged(lag)) { Delivery::Done } else { Delivery::Gone }
}

/// Lazily encoded broadcast frames, one per serializer (`Serializer.fastlane!/1`).
struct Fastlane<'a> {
    broadcast: &'a Broadcast,
    frames: [Option<Option<Arc<[u8]>>>; 2],
}

impl<'a> Fastlane<'a> {
    fn new(broadcast: &'a Broadcast) -> Self {
        Fastlane { broadcast, frames: [None, None] }
    }

    fn get(&mut self, vsn: Vsn) -> Option<Arc<[u8]>> {
        let b = self.broadcast;
        self.frames[vsn.index()].get_or_insert_with(|| b.frame(vsn)).clone()
    }
}
