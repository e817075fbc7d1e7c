//! The registry loop: topic → subscribers, and the fastlane dispatch.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, TrySendError};

use super::{Broadcast, Msg, Shared, SubId, Subscriber, Target};
use crate::channel;
use crate::process::MailboxSender;
use crate::protocol::{Outgoing, Vsn};
use crate::socket::conn::{Chunk, CloseReason, ConnHandle};

/// Subscribers of one topic. The index makes unsubscribe O(1), which matters when 19k
/// connections leave one topic at once.
#[derive(Default)]
struct Topic {
    subs: Vec<Subscriber>,
    index: HashMap<SubId, usize>,
}

impl Topic {
    fn insert(&mut self, sub: Subscriber) {
        self.index.insert(sub.id, self.subs.len());
        self.subs.push(sub);
    }

    fn remove(&mut self, id: SubId) {
        let Some(i) = self.index.remove(&id) else { return };
        self.subs.swap_remove(i);
        if let Some(moved) = self.subs.get(i) {
            self.index.insert(moved.id, i);
        }
    }
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
                if let Some(topic) = topics.get(&broadcast.topic) {
                    dispatch(topic, &broadcast, from, topic.subs.len() >= spread_fanout);
                }
            }
            Msg::Publish { topic, message } => {
                if let Some(subs) = topics.get(&topic) {
                    dispatch_shared(subs, &topic, &message);
                }
            }
            Msg::Stop => break,
        }
    }
}

fn unsubscribe(topics: &mut HashMap<String, Topic>, topic: &str, id: SubId) {
    if let Some(t) = topics.get_mut(topic) {
        t.remove(id);
        if t.subs.is_empty() {
            topics.remove(topic);
        }
    }
}

/// Delivers one broadcast. Fastlane frames are encoded at most once per serializer.
///
/// Either path keeps each connection's frames in order: `send_direct` writes only when nothing
/// is queued for that connection, and otherwise appends behind what is.
fn dispatch(topic: &Topic, broadcast: &Arc<Broadcast>, from: Option<SubId>, spread: bool) {
    let mut frames = Fastlane::new(broadcast);
    for sub in topic.subs.iter().filter(|s| Some(s.id) != from) {
        match &sub.target {
            Target::Channel { tx, fastlane: Some(conn), intercepts }
                if !intercepts.iter().any(|e| *e == broadcast.event) =>
            {
                if let Some(frame) = frames.get(conn.vsn) {
                    if spread {
                        conn.send(Chunk::Shared(frame));
                    } else {
                        conn.send_direct(Chunk::Shared(frame));
                    }
                }
                let _ = tx; // the channel process is bypassed: that is the point of fastlane
            }
            Target::Channel { tx, fastlane, .. } => {
                let msg = channel::Msg::Broadcast(broadcast.clone());
                to_channel(tx, fastlane.as_ref(), msg, &broadcast.topic);
            }
            Target::Socket(conn) if broadcast.event == "disconnect" => {
                conn.shared.close(CloseReason::Disconnect);
            }
            Target::Socket(_) => {}
            Target::Mailbox(tx) => {
                if let Err(TrySendError::Full(_)) = tx.try_send(broadcast.clone()) {
                    log::warn!("subscriber mailbox full on {}: broadcast dropped", broadcast.topic);
                }
            }
        }
    }
}

/// Delivers a published value to the channels subscribed to `topic`.
fn dispatch_shared(subs: &Topic, topic: &str, message: &Shared) {
    for sub in &subs.subs {
        if let Target::Channel { tx, fastlane, .. } = &sub.target {
            to_channel(tx, fastlane.as_ref(), channel::Msg::Shared(message.clone()), topic);
        }
    }
}

/// Queues `msg` for a channel process. A channel that cannot keep up with its broadcasts is a
/// slow consumer too: its connection is closed rather than waited for.
fn to_channel(
    tx: &MailboxSender<channel::Msg>,
    fastlane: Option<&ConnHandle>,
    msg: channel::Msg,
    topic: &str,
) {
    if let Err(TrySendError::Full(_)) = tx.try_send(msg) {
        if let Some(conn) = fastlane {
            conn.shared.close(CloseReason::SlowConsumer);
        }
        log::warn!("channel mailbox full on {topic}: message dropped");
    }
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
        self.frames[vsn.index()]
            .get_or_insert_with(|| {
                let out = Outgoing::broadcast(&b.topic, &b.event, &b.payload);
                vsn.encode(&out).map(|e| Arc::from(e.into_frame()))
            })
            .clone()
    }
}
