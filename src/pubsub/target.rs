//! Where the registry delivers: PubSub's own delivery types. The registry knows a subscriber
//! only through these, so `pubsub` imports neither `channel` nor `socket`; those modules
//! implement the traits (`ConnHandle: Connection`, a channel's mailbox: `Inbox`). A broadcast
//! relayed from another node (`crate::cluster`) enters the same dispatch as a local one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::Sender;

use super::{Broadcast, Shared, SubId};
use crate::protocol::Vsn;

/// A client connection the fastlane writes to (`socket::conn::ConnHandle`).
pub(crate) trait Connection: Send + Sync {
    /// The serializer the client speaks: the fastlane encodes once per serializer.
    fn vsn(&self) -> Vsn;
    /// Sends one complete, shared frame without ever blocking: written now when `direct` and
    /// nothing is queued for the connection, otherwise queued behind what is.
    fn send_frame(&self, frame: Arc<[u8]>, direct: bool);
    /// Closes the connection; its client sees why (`Eviction`).
    fn evict(&self, why: Eviction);
    /// A broadcast on `topic` this client's serializer cannot carry (binary over V1) was not
    /// sent: counted and logged, never silent.
    fn refused(&self, topic: &str);
}

/// Why the registry closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// `disconnect` broadcast on the socket id (close 1001).
    Disconnect,
    /// Its channel could not keep up (close 1008).
    SlowConsumer,
}

/// What the registry hands a channel process.
pub(crate) enum Inbound {
    /// A broadcast the fastlane does not carry: intercepted, or on an extra topic.
    Broadcast(Arc<Broadcast>),
    /// A value from `PubSub::publish`.
    Shared(Shared),
    /// Messages were not queued; sent past the capacity check (`Channel::handle_lagged`).
    Lagged(Lag),
}

/// Why an `Inbox` did not take a message.
pub(crate) enum Refused {
    Full,
    /// The receiver is gone: the registry prunes the subscriber.
    Gone,
}

/// A channel process's mailbox (`channel::Msg` implements it for its `MailboxSender`).
pub(crate) trait Inbox: Send {
    /// Queues `msg` if the capacity allows; never waits.
    fn try_deliver(&self, msg: Inbound) -> Result<(), Refused>;
    /// Queues `msg` past the capacity check; false if the receiver is gone.
    fn force_deliver(&self, msg: Inbound) -> bool;
}

/// Where a subscriber wants its broadcasts.
pub(crate) enum Target {
    /// A joined channel. With `fastlane`, events it does not intercept go straight to its
    /// connection as one shared frame; intercepted events (and all events when there is no
    /// fastlane, i.e. extra topics) go to the channel's mailbox.
    Channel { tx: Box<dyn Inbox>, fastlane: Option<Box<dyn Connection>>, intercepts: Arc<[String]> },
    /// A socket subscribed to its socket id: `disconnect` closes it with 1001.
    Socket(Box<dyn Connection>),
    /// Anything else (REST code, tests): a plain bounded mailbox; broadcasts it had no room for
    /// are counted in `dropped`.
    Mailbox { tx: Sender<Arc<Broadcast>>, dropped: Arc<AtomicU64> },
}

impl Target {
    /// A socket's subscription to its own id.
    pub(crate) fn socket(conn: impl Connection + 'static) -> Target {
        Target::Socket(Box::new(conn))
    }
}

/// The marker a channel gets instead of the messages its mailbox had no room for, on a topic it
/// subscribed to with `ChannelCtx::subscribe`. Until the channel has handled it, nothing more
/// is queued for it on any topic (the marker already says "catch up").
pub(crate) struct Lag {
    pub topic: String,
    pub(super) flag: Arc<AtomicBool>,
}

impl Lag {
    /// Lets the registry queue messages for this channel again. Call before catching up (e.g.
    /// before taking a fresh snapshot), so that whatever was published after the snapshot is
    /// delivered.
    pub(crate) fn resume(&self) {
        self.flag.store(false, Ordering::Release);
    }
}

pub(crate) struct Subscriber {
    pub id: SubId,
    pub target: Target,
}
