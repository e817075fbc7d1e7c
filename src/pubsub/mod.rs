//! PubSub: the registry process that routes broadcasts to subscribers (Phoenix.PubSub plus
//! `Phoenix.Channel.Server.dispatch/3`).
//!
//! Runs on: the `pubsub` thread (`registry::run`); `PubSub` handles are used from any thread.
//! Messages: `Msg::{Subscribe, Unsubscribe, Broadcast, Publish, Stop}`.
//! **Invariant:** the registry never blocks on a client. Fastlane frames are written with one
//! non-blocking send from this thread (`ConnShared::send_direct`), or, for topics of at least
//! `spread_fanout` subscribers, queued at the connections' writers (`ConnShared::send`); a
//! client too far behind is evicted (slow consumer), never waited for.

mod registry;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use std::{fmt, io};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::channel;
use crate::process::{self, MailboxSender};
use crate::protocol::Payload;
use crate::socket::conn::ConnHandle;

/// A message for every subscriber of a topic (`%Phoenix.Socket.Broadcast{}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    pub topic: String,
    pub event: String,
    pub payload: Payload,
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

/// Where a subscriber wants its broadcasts.
pub(crate) enum Target {
    /// A joined channel. With `fastlane`, events it does not intercept go straight to its
    /// connection as one shared frame; intercepted events (and all events when there is no
    /// fastlane, i.e. extra topics) go to the channel's mailbox.
    Channel {
        tx: MailboxSender<channel::Msg>,
        fastlane: Option<ConnHandle>,
        intercepts: Arc<[String]>,
    },
    /// A socket subscribed to its socket id: `disconnect` closes it with 1001.
    Socket(ConnHandle),
    /// Anything else (REST code, tests): a plain bounded mailbox.
    Mailbox(Sender<Arc<Broadcast>>),
}

pub(crate) struct Subscriber {
    pub id: SubId,
    pub target: Target,
}

pub(crate) enum Msg {
    Subscribe { topic: String, sub: Subscriber },
    Unsubscribe { topic: String, id: SubId },
    Broadcast { broadcast: Arc<Broadcast>, from: Option<SubId> },
    Publish { topic: String, message: Shared },
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

/// Handle to the registry; clone it freely.
#[derive(Clone)]
pub struct PubSub {
    tx: Sender<Msg>,
    send_timeout: Duration,
}

/// A mailbox subscription for code outside channels. Dropping it unsubscribes.
pub struct Subscription {
    pub rx: Receiver<Arc<Broadcast>>,
    topic: String,
    id: SubId,
    pubsub: PubSub,
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
}

impl PubSubProcess {
    /// `spread_fanout`: from this many subscribers up, a topic's fastlane frames are queued at
    /// the connections' writers instead of written by the registry (`Config::spread_fanout`).
    pub fn start(mailbox: usize, spread_fanout: usize) -> io::Result<PubSubProcess> {
        let (tx, rx) = bounded(mailbox);
        let run = move || registry::run(rx, spread_fanout);
        let thread = process::spawn("pubsub".into(), 256 * 1024, run)?;
        let pubsub = PubSub { tx, send_timeout: Duration::from_secs(5) };
        Ok(PubSubProcess { pubsub, thread })
    }

    pub fn stop(self) {
        let _ = self.pubsub.tx.send_timeout(Msg::Stop, Duration::from_secs(5));
        let _ = self.thread.join();
    }
}

impl PubSub {
    /// Sends `event` with `payload` to every subscriber of `topic`, including the caller's own
    /// channel if it is subscribed.
    pub fn broadcast(&self, topic: &str, event: &str, payload: Payload) -> Result<(), PubSubError> {
        self.send_broadcast(topic, event, payload, None)
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
    /// further broadcasts to it are dropped (and logged), never waited for.
    pub fn subscribe(&self, topic: &str, capacity: usize) -> Result<Subscription, PubSubError> {
        let (tx, rx) = bounded(capacity);
        let id = SubId::next();
        self.subscribe_target(topic, Subscriber { id, target: Target::Mailbox(tx) })?;
        Ok(Subscription { rx, topic: topic.to_string(), id, pubsub: self.clone() })
    }

    fn send_broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        from: Option<SubId>,
    ) -> Result<(), PubSubError> {
        let broadcast =
            Arc::new(Broadcast { topic: topic.to_string(), event: event.to_string(), payload });
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
