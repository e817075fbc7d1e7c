//! Channels: the application-facing API shaped after `Phoenix.Channel`.
//!
//! Application code implements `Channel` and mounts it in a `Router` under a topic pattern.
//! Every joined topic of every connection runs its own `Channel` value on its own thread
//! (`server::run`), so a callback may block (a database query) or panic without touching any
//! other channel: a panic becomes `phx_error` for that channel only, and the client rejoins.

pub mod router;
pub(crate) mod server;

use std::any::Any;
use std::sync::Arc;

use crossbeam_channel::TrySendError;

use crate::process::MailboxSender;
use serde_json::{Map, Value, json};

use crate::protocol::{Outgoing, Payload};
use crate::pubsub::{
    Broadcast, Inbound, Inbox, PubSub, PubSubError, Refused, Shared, SharedPush, SubId, Subscriber,
    Target,
};
use crate::socket::conn::{Chunk, ConnHandle};

pub use router::Router;

/// Socket-level assigns set by the connect callback (`socket.assigns`), shared read-only by
/// every channel of the connection.
pub type Assigns = Map<String, Value>;

/// Outcome of `join`: the reply payload for `ok`, or the reply payload for `error`.
pub type JoinResult = Result<Payload, Payload>;

/// A channel implementation: one value per joined topic per connection.
///
/// Only `join` is required. Defaults: `handle_in` answers `{"reason":"unhandled event"}`,
/// `handle_out` pushes the intercepted event unchanged, `handle_info` ignores the message.
pub trait Channel: Send + 'static {
    /// Authorizes the join. `Ok(reply)` joins (reply `ok`), `Err(reply)` refuses (reply
    /// `error`, e.g. `{"reason":"unauthorized"}`). A panic here replies
    /// `{"reason":"join crashed"}`. Pushes made here are sent right after the join reply.
    fn join(&mut self, topic: &str, payload: Payload, ctx: &mut ChannelCtx) -> JoinResult;

    /// A client event on this topic.
    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelCtx) -> HandleIn {
        let _ = (payload, ctx);
        HandleIn::error(json!({ "reason": format!("unhandled event {event:?}") }))
    }

    /// Broadcast events that `handle_out` should see instead of the fastlane. Each intercepted
    /// event is encoded once per subscriber, so keep this list short.
    fn intercepts(&self) -> Vec<String> {
        Vec::new()
    }

    /// An intercepted broadcast on this channel's topic.
    fn handle_out(&mut self, event: &str, payload: Payload, ctx: &mut ChannelCtx) -> Flow {
        ctx.push(event, payload);
        Flow::Continue
    }

    /// A broadcast on an extra topic (`ChannelCtx::subscribe`) or a message sent with a
    /// `ChannelSender`.
    fn handle_info(&mut self, info: Info, ctx: &mut ChannelCtx) -> Flow {
        let _ = (info, ctx);
        Flow::Continue
    }

    /// This channel's mailbox overflowed with messages of `topic`, an extra topic it
    /// subscribed to: some were not delivered, and none are queued until this returns. A
    /// channel that can catch up (reload, resend a snapshot) does so and continues. The default
    /// stops the channel with `phx_error`, so the client rejoins and starts afresh: never
    /// silently behind.
    fn handle_lagged(&mut self, topic: &str, ctx: &mut ChannelCtx) -> Flow {
        let _ = ctx;
        Flow::Stop(StopReason::Error(format!("slow consumer: missed messages on {topic}")))
    }

    /// Called when the channel stops for any reason but a crash or a duplicate join.
    fn terminate(&mut self, reason: &StopReason, ctx: &mut ChannelCtx) {
        let _ = (reason, ctx);
    }
}

/// What `handle_in` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum HandleIn {
    /// Reply to the client's ref with `{"status": status, "response": payload}`.
    Reply { status: String, payload: Payload },
    /// No reply now (maybe later through a `SocketRef`).
    NoReply,
    /// Optionally reply, then stop the channel.
    Stop { reason: StopReason, reply: Option<(String, Payload)> },
}

impl HandleIn {
    pub fn ok(payload: impl Into<Payload>) -> HandleIn {
        HandleIn::Reply { status: "ok".into(), payload: payload.into() }
    }

    pub fn error(payload: impl Into<Payload>) -> HandleIn {
        HandleIn::Reply { status: "error".into(), payload: payload.into() }
    }
}

/// Whether the channel keeps running after `handle_out` / `handle_info`.
#[derive(Debug, Clone, PartialEq)]
pub enum Flow {
    Continue,
    Stop(StopReason),
}

/// Why a channel stopped. All but `Error` end with `phx_close` (the client does not rejoin);
/// `Error` ends with `phx_error` and the client rejoins with backoff.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// The channel decided to stop (`{:stop, :normal, socket}`).
    Normal,
    /// The client left (`phx_leave`).
    Left,
    /// The connection ended.
    Closed,
    /// The server is shutting down; the socket closes with 1012 and no `phx_close` is sent.
    Shutdown,
    /// The channel failed; reported as `phx_error`.
    Error(String),
}

/// A message for `handle_info`.
pub enum Info {
    /// A broadcast on an extra topic this channel subscribed to.
    Broadcast(Arc<Broadcast>),
    /// Any value sent with `ChannelSender::send`.
    Message(Box<dyn Any + Send>),
    /// A value published with `PubSub::publish` on a topic this channel subscribed to; every
    /// subscriber holds the same `Arc`.
    Shared(Shared),
}

/// Mailbox messages of a channel process.
pub(crate) enum Msg {
    In {
        event: String,
        payload: Payload,
        ref_: Option<String>,
    },
    Leave {
        ref_: Option<String>,
    },
    Broadcast(Arc<Broadcast>),
    Shared(Shared),
    Info(Box<dyn Any + Send>),
    /// From the registry, past the capacity check: messages were not queued
    /// (`Channel::handle_lagged`).
    Lagged(crate::pubsub::Lag),
    /// From the socket, past the capacity check: stop now (`server::Stop`).
    Stop(server::Stop),
}

impl From<Inbound> for Msg {
    fn from(msg: Inbound) -> Msg {
        match msg {
            Inbound::Broadcast(b) => Msg::Broadcast(b),
            Inbound::Shared(s) => Msg::Shared(s),
            Inbound::Lagged(lag) => Msg::Lagged(lag),
        }
    }
}

/// The registry delivers to a channel through its mailbox.
impl Inbox for MailboxSender<Msg> {
    fn try_deliver(&self, msg: Inbound) -> Result<(), Refused> {
        self.try_send(msg.into()).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Gone,
        })
    }

    fn force_deliver(&self, msg: Inbound) -> bool {
        self.force_send(msg.into())
    }
}

/// Sends `Info::Message`s to one channel process from any thread.
#[derive(Clone)]
pub struct ChannelSender(MailboxSender<Msg>);

impl ChannelSender {
    /// Queues `msg` without blocking; false if the channel is gone or its mailbox is full.
    pub fn send(&self, msg: impl Any + Send) -> bool {
        match self.0.try_send(Msg::Info(Box::new(msg))) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Everything a callback may do: push to its client, broadcast, reply later, subscribe.
pub struct ChannelCtx {
    topic: String,
    join_ref: String,
    assigns: Arc<Assigns>,
    conn: ConnHandle,
    pubsub: PubSub,
    sub_id: SubId,
    self_tx: MailboxSender<Msg>,
    current_ref: Option<String>,
    /// Pushes made during `join`, sent after the join reply (Phoenix forbids them; we queue).
    pending: Option<Vec<(String, Payload)>>,
    extra_topics: Vec<String>,
    /// Presence (`crate::presence`): the guard whose drop, on every way the channel thread
    /// ends, tells the tracker to untrack this channel's presences, and a `push_state` asked
    /// for during `join` (sent once subscribed).
    pub(crate) presence: crate::presence::ChannelPresence,
}

impl ChannelCtx {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn join_ref(&self) -> &str {
        &self.join_ref
    }

    /// The connect callback's assigns for this connection.
    pub fn assigns(&self) -> &Assigns {
        &self.assigns
    }

    pub fn pubsub(&self) -> &PubSub {
        &self.pubsub
    }

    /// Pushes `event` to this client only (`[join_ref, null, topic, event, payload]`).
    pub fn push(&mut self, event: &str, payload: impl Into<Payload>) {
        let payload = payload.into();
        if let Some(pending) = &mut self.pending {
            pending.push((event.to_string(), payload));
            return;
        }
        if event == crate::presence::STATE_EVENT && self.presence.state_after_join() {
            // The placeholder of a `push_state` made during join: the state is read only now,
            // after the subscription, so no diff falls between the two.
            return crate::presence::deferred_state(self);
        }
        let out = Outgoing::push(Some(&self.join_ref), &self.topic, event, &payload);
        self.conn.send_message(&out);
    }

    /// Pushes a message shared by many clients without copying it (`SharedPush`). Unlike
    /// `push`, it carries no join_ref, and during `join` it is not held back until the reply:
    /// send it from `handle_info` (e.g. a message the channel sent itself in `join`).
    pub fn push_shared(&self, push: &SharedPush) -> bool {
        push.frame(self.conn.vsn).is_some_and(|frame| self.conn.send(Chunk::Shared(frame)))
    }

    /// Broadcasts to every subscriber of this topic, this client included.
    pub fn broadcast(&self, event: &str, payload: impl Into<Payload>) -> Result<(), PubSubError> {
        self.pubsub.broadcast(&self.topic, event, payload.into())
    }

    /// Broadcasts to every subscriber of this topic except this channel.
    pub fn broadcast_from(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<(), PubSubError> {
        self.pubsub.broadcast_from(self.sub_id, &self.topic, event, payload.into())
    }

    /// Subscribes this channel to another topic; its broadcasts arrive in `handle_info` as
    /// `Info::Broadcast`. Unsubscribed automatically when the channel stops.
    pub fn subscribe(&mut self, topic: &str) -> Result<(), PubSubError> {
        if self.extra_topics.iter().any(|t| t == topic) || topic == self.topic {
            return Ok(());
        }
        let tx = Box::new(self.self_tx.clone());
        let target = Target::Channel { tx, fastlane: None, intercepts: Arc::from([]) };
        self.pubsub.subscribe_target(topic, Subscriber { id: self.sub_id, target })?;
        self.extra_topics.push(topic.to_string());
        Ok(())
    }

    /// A handle to reply later to the message being handled (`socket_ref/1`). `None` outside
    /// `handle_in` or when the client sent no ref.
    pub fn socket_ref(&self) -> Option<SocketRef> {
        Some(SocketRef {
            conn: self.conn.clone(),
            topic: self.topic.clone(),
            join_ref: self.join_ref.clone(),
            ref_: self.current_ref.clone()?,
        })
    }

    /// Presence: true while `join` runs (pushes are queued until the channel is subscribed).
    pub(crate) fn in_join(&self) -> bool {
        self.pending.is_some()
    }

    pub(crate) fn presence(&mut self) -> &mut crate::presence::ChannelPresence {
        &mut self.presence
    }

    /// A handle for other threads to send this channel `Info::Message`s.
    pub fn sender(&self) -> ChannelSender {
        ChannelSender(self.self_tx.clone())
    }
}

/// Reply to one client message from anywhere, any time (`Phoenix.Channel.reply/2`).
#[derive(Clone)]
pub struct SocketRef {
    conn: ConnHandle,
    topic: String,
    join_ref: String,
    ref_: String,
}

impl SocketRef {
    pub fn reply(&self, status: &str, payload: impl Into<Payload>) -> bool {
        let payload = payload.into();
        let out =
            Outgoing::reply(Some(&self.join_ref), Some(&self.ref_), &self.topic, status, &payload);
        self.conn.send_message(&out)
    }
}
