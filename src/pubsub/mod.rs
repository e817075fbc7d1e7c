//! PubSub: the registry process that routes broadcasts to subscribers (Phoenix.PubSub plus
//! `Phoenix.Channel.Server.dispatch/3`).
//!
//! Runs on: the `pubsub` thread (`registry::run`); `PubSub` handles are used from any thread.
//! Messages: `Msg::{Subscribe, Unsubscribe, Broadcast, Publish, Count, Stop}`.
//! **Invariant:** the registry never blocks on a client. Fastlane frames are written with one
//! non-blocking send from this thread (`ConnShared::send_direct`), or, for topics of at least
//! `spread_fanout` subscribers, queued at the connections' writers (`ConnShared::send`); a
//! client too far behind is evicted (slow consumer), never waited for.
//! **Nothing is dropped silently:** a message a subscriber's mailbox cannot take either cuts its
//! connection (a channel's own topic), or leaves it one `Lag` marker (a channel's extra topic;
//! `Channel::handle_lagged`), or is counted in `Subscription::take_dropped` (plain mailboxes).

mod registry;
mod target;

pub(crate) use target::{Connection, Eviction, Inbound, Inbox, Lag, Refused, Subscriber, Target};

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use std::{fmt, io};

use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;

use crate::process;
use crate::protocol::{Outgoing, Payload, Vsn};

/// A message for every subscriber of a topic (`%Phoenix.Socket.Broadcast{}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

impl Broadcast {
    pub fn new(topic: &str, event: &str, payload: Payload) -> Broadcast {
        Broadcast { topic: topic.to_string(), event: event.to_string(), payload }
    }

    /// The broadcast as one complete WebSocket frame for `vsn` (`Serializer.fastlane!/1`);
    /// `None` when that serializer cannot carry it (binary to a V1 client).
    pub(crate) fn frame(&self, vsn: Vsn) -> Option<Arc<[u8]>> {
        let out = Outgoing::broadcast(&self.topic, &self.event, &self.payload);
        vsn.encode(&out).map(|e| Arc::from(e.into_frame()))
    }
}

/// A push that many clients receive alike (the lobby's `hydrate`), framed at most once per
/// serializer and shared by every connection it is sent to (`ChannelCtx::push_shared`), so a
/// megabyte payload costs no per-client copy. It goes out as a broadcast does,
/// `[null, null, topic, event, payload]`, which phoenix.js delivers to the joined channel.
pub struct SharedPush {
    broadcast: Broadcast,
    frames: [OnceLock<Option<Arc<[u8]>>>; 2],
}

impl SharedPush {
    pub fn new(topic: &str, event: &str, payload: Payload) -> SharedPush {
        SharedPush { broadcast: Broadcast::new(topic, event, payload), frames: Default::default() }
    }

    pub fn payload(&self) -> &Payload {
        &self.broadcast.payload
    }

    pub(crate) fn frame(&self, vsn: Vsn) -> Option<Arc<[u8]>> {
        self.frames[vsn.index()].get_or_init(|| self.broadcast.frame(vsn)).clone()
    }
}

impl fmt::Debug for SharedPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPush").field("event", &self.broadcast.event).finish()
    }
}

/// Any value published to channels with `PubSub::publish` (`Phoenix.PubSub.broadcast/3` with a
/// term): every subscribed channel gets the same `Arc`.
pub type Shared = Arc<dyn Any + Send + Sync>;

/// Identity of one subscription, used to unsubscribe and to exclude the sender in
/// `broadcast_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubId(u64);

impl SubId {
    pub fn next() -> SubId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        SubId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) enum Msg {
    Subscribe {
        topic: String,
        sub: Subscriber,
    },
    Unsubscribe {
        topic: String,
        id: SubId,
    },
    Broadcast {
        broadcast: Arc<Broadcast>,
        from: Option<SubId>,
    },
    Publish {
        topic: String,
        message: Shared,
    },
    /// `PubSub::note_heard`, in order with the broadcasts before it.
    Heard {
        at: Instant,
        cell: Arc<Mutex<Option<Instant>>>,
    },
    /// How many subscribers `topic` has (observability and tests).
    Count {
        topic: String,
        reply: Sender<usize>,
    },
    Stop,
}

/// The registry mailbox stayed full for longer than the send timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSubError {
    /// The registry is overloaded; the broadcast was not queued.
    Timeout,
    /// The registry has stopped (server shutting down).
    Stopped,
}

impl fmt::Display for PubSubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PubSubError::Timeout => "pubsub registry is overloaded",
            PubSubError::Stopped => "pubsub registry has stopped",
        })
    }
}

impl std::error::Error for PubSubError {}

/// Where the broadcasts this node originates also go: the cluster relay (`crate::cluster`),
/// which hands them to the other nodes. `relay` must never block (a bounded mailbox, counted
/// when full), since it runs on the broadcasting socket or channel thread.
pub trait Relay: Send + Sync {
    fn relay(&self, broadcast: &Arc<Broadcast>);
}

/// Handle to the registry; clone it freely.
#[derive(Clone)]
pub struct PubSub {
    tx: Sender<Msg>,
    send_timeout: Duration,
    /// Set once, when the node joins a cluster; shared by every clone.
    relay: Arc<OnceLock<Box<dyn Relay>>>,
    /// How far the other nodes' broadcasts have been handed to subscribers (`note_heard`).
    heard: Arc<Mutex<Option<Instant>>>,
}

/// A mailbox subscription for code outside channels. Dropping it unsubscribes.
pub struct Subscription {
    pub rx: Receiver<Arc<Broadcast>>,
    topic: String,
    id: SubId,
    pubsub: PubSub,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// How many broadcasts were not queued because `rx` was full, since the last call. Non-zero
    /// means this subscriber missed messages and must resynchronise however its use requires.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.pubsub.unsubscribe(&self.topic, self.id);
    }
}

/// The registry thread's owner; `stop` ends and joins it.
pub struct PubSubProcess {
    pub pubsub: PubSub,
    thread: JoinHandle<()>,
    /// Disconnected when the registry thread ends (even by panic), so `stop` can wait for it
    /// with a deadline before joining.
    done: Receiver<()>,
}

/// How long `PubSubProcess::stop` waits for the registry to take the stop and finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl PubSubProcess {
    /// `spread_fanout`: from this many subscribers up, a topic's fastlane frames are queued at
    /// the connections' writers instead of written by the registry (`Config::spread_fanout`).
    pub fn start(mailbox: usize, spread_fanout: usize) -> io::Result<PubSubProcess> {
        let (tx, rx) = bounded(mailbox);
        let (done_tx, done) = bounded::<()>(0);
        let run = move || {
            let _done = done_tx;
            registry::run(rx, spread_fanout)
        };
        let thread = process::spawn("pubsub".into(), 256 * 1024, run)?;
        let (relay, heard) = (Arc::default(), Arc::default());
        let pubsub = PubSub { tx, send_timeout: Duration::from_secs(5), relay, heard };
        Ok(PubSubProcess { pubsub, thread, done })
    }

    /// Stops the registry and joins it, waiting at most 5 s in all. False if it did not end in
    /// time: the thread is then left detached rather than waited for.
    pub fn stop(self) -> bool {
        self.stop_within(STOP_TIMEOUT)
    }

    /// `stop` with a deadline of `timeout` for the whole stop.
    pub fn stop_within(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let _ = self.pubsub.tx.send_deadline(Msg::Stop, deadline);
        let ended = matches!(
            self.done.recv_deadline(deadline),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        if ended {
            let _ = self.thread.join();
        } else {
            log::error!("pubsub registry did not stop within {timeout:?}; left running");
        }
        ended
    }
}

impl PubSub {
    /// Sends `event` with `payload` to every subscriber of `topic`, including the caller's own
    /// channel if it is subscribed, on this node and (in a cluster) every other.
    pub fn broadcast(&self, topic: &str, event: &str, payload: Payload) -> Result<(), PubSubError> {
        self.send_broadcast(topic, event, payload, None)
    }

    /// `broadcast` to the subscribers of this node only (`Phoenix.PubSub.local_broadcast/4`):
    /// Presence diffs, which every node computes for itself.
    pub fn local_broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
    ) -> Result<(), PubSubError> {
        self.dispatch(Arc::new(Broadcast::new(topic, event, payload)))
    }

    /// Hands a broadcast to this node's registry without relaying it: the entry of broadcasts
    /// relayed from other nodes, which take the same dispatch (fastlane) as local ones.
    pub fn dispatch(&self, broadcast: Arc<Broadcast>) -> Result<(), PubSubError> {
        self.send(Msg::Broadcast { broadcast, from: None })
    }

    /// Makes every broadcast this node originates from now on also go to `relay`. False (and
    /// `relay` dropped) if one was set already.
    /// The time up to which this node has heard what the other nodes sent and handed it to
    /// the subscribers: `now` on a single node, or as far as the cluster listener had read
    /// (`note_heard`). Silence is judged against it, so a node that is behind (CPU-starved,
    /// stopped) does not take the peers whose messages still wait for it for dead.
    pub fn heard_until(&self, now: Instant) -> Instant {
        self.heard.lock().map_or(now, |heard| heard.min(now))
    }

    /// The cluster listener has read everything the other nodes committed before `at`, and
    /// dispatched it. Queued behind those broadcasts, so that when `heard_until` says `at`,
    /// they are in their subscribers' mailboxes. When the registry is full, the time simply
    /// does not advance yet.
    pub fn note_heard(&self, at: Instant) {
        let _ = self.tx.try_send(Msg::Heard { at, cell: self.heard.clone() });
    }

    pub fn set_relay(&self, relay: Box<dyn Relay>) -> bool {
        self.relay.set(relay).is_ok()
    }

    /// Like `broadcast`, but skips the subscription `from` (the sending channel).
    pub fn broadcast_from(
        &self,
        from: SubId,
        topic: &str,
        event: &str,
        payload: Payload,
    ) -> Result<(), PubSubError> {
        self.send_broadcast(topic, event, payload, Some(from))
    }

    /// Sends any value to every channel subscribed to `topic` (`Phoenix.PubSub.broadcast/3`
    /// with a term rather than a `%Broadcast{}`). Each channel receives the same `Arc` in
    /// `handle_info` as `Info::Shared`, so a value decoded or encoded once serves them all.
    /// Only channels receive it: it is not a client message, so there is no fastlane, and
    /// `Subscription` mailboxes carry broadcasts only.
    pub fn publish(&self, topic: &str, message: Shared) -> Result<(), PubSubError> {
        self.send(Msg::Publish { topic: topic.to_string(), message })
    }

    /// Subscribes a bounded mailbox of `capacity` messages to `topic`. When the mailbox is full,
    /// further broadcasts to it are not waited for: they are counted, and
    /// `Subscription::take_dropped` tells the owner it missed them.
    pub fn subscribe(&self, topic: &str, capacity: usize) -> Result<Subscription, PubSubError> {
        let (tx, rx) = bounded(capacity);
        let id = SubId::next();
        let dropped = Arc::new(AtomicU64::new(0));
        let target = Target::Mailbox { tx, dropped: dropped.clone() };
        self.subscribe_target(topic, Subscriber { id, target })?;
        let topic = topic.to_string();
        Ok(Subscription { rx, topic, id, pubsub: self.clone(), dropped })
    }

    /// How many subscribers `topic` has once the registry has handled everything sent to it
    /// before this call (waits at most the send timeout for the answer).
    pub fn subscriber_count(&self, topic: &str) -> Result<usize, PubSubError> {
        let (reply, answer) = bounded(1);
        self.send(Msg::Count { topic: topic.to_string(), reply })?;
        answer.recv_timeout(self.send_timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => PubSubError::Timeout,
            crossbeam_channel::RecvTimeoutError::Disconnected => PubSubError::Stopped,
        })
    }

    fn send_broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        from: Option<SubId>,
    ) -> Result<(), PubSubError> {
        let broadcast = Arc::new(Broadcast::new(topic, event, payload));
        if let Some(relay) = self.relay.get() {
            relay.relay(&broadcast);
        }
        self.send(Msg::Broadcast { broadcast, from })
    }

    pub(crate) fn subscribe_target(&self, topic: &str, sub: Subscriber) -> Result<(), PubSubError> {
        self.send(Msg::Subscribe { topic: topic.to_string(), sub })
    }

    pub(crate) fn unsubscribe(&self, topic: &str, id: SubId) {
        if let Err(e) = self.send(Msg::Unsubscribe { topic: topic.to_string(), id }) {
            log::debug!("unsubscribe from {topic}: {e}");
        }
    }

    fn send(&self, msg: Msg) -> Result<(), PubSubError> {
        use crossbeam_channel::SendTimeoutError;
        self.tx.send_timeout(msg, self.send_timeout).map_err(|e| match e {
            SendTimeoutError::Timeout(_) => PubSubError::Timeout,
            SendTimeoutError::Disconnected(_) => PubSubError::Stopped,
        })
    }
}
