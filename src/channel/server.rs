//! The channel process (`Phoenix.Channel.Server`): one thread per joined topic per connection.
//!
//! Runs on: `channel-<conn>-<n>` threads. Mailbox: `channel::Msg` (bounded) plus a one-slot
//! stop mailbox owned by the socket, so a stop request always gets through a full mailbox.
//! Lifecycle: join (reply written here, then `JoinOutcome` to the waiting socket) → message
//! loop → exit, reported to the socket as the channel id on its `exits` mailbox.
//! **Invariant:** the join reply is queued before any push of the channel, and the channel's
//! PubSub subscriptions are removed before its exit is reported, so a rejoin never receives a
//! broadcast twice.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, select};

use crate::process::MailboxSender;
use serde_json::json;

use super::{Assigns, Channel, ChannelCtx, Flow, HandleIn, Info, Msg, StopReason};
use crate::process;
use crate::protocol::{EVENT_CLOSE, EVENT_ERROR, Outgoing, Payload};
use crate::pubsub::{PubSub, SubId, Subscriber, Target};
use crate::socket::conn::ConnHandle;

/// Everything a channel process needs to start.
pub(crate) struct JoinRequest {
    pub id: u64,
    pub topic: String,
    pub join_ref: String,
    pub ref_: Option<String>,
    pub payload: Payload,
    pub channel: Box<dyn Channel>,
    pub assigns: Arc<Assigns>,
    pub conn: ConnHandle,
    pub pubsub: PubSub,
    pub exits: Sender<u64>,
}

/// What the socket learns about a join attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinOutcome {
    Joined,
    Refused,
    Crashed,
}

/// Why the socket stops a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The connection ended: `terminate(Closed)`, no frame.
    Closed,
    /// Server shutdown: `terminate(Shutdown)`, no frame (the socket closes with 1012).
    Shutdown,
    /// A newer join of the same topic replaces this one: no `terminate`, like Phoenix's kill.
    Duplicate,
}

/// The socket's handles on a started channel process.
pub(crate) struct Spawned {
    /// The client inbox: `In` and `Leave` from the socket.
    pub tx: Sender<Msg>,
    pub stop: Sender<Stop>,
    pub outcome: Receiver<JoinOutcome>,
    pub thread: JoinHandle<()>,
}

/// Client messages in flight from the socket to one channel. Small on purpose: a bounded
/// crossbeam channel allocates all its slots up front, and when a channel is this far behind
/// its client, the socket waiting (and TCP pushing back on the client) is the right answer.
const CLIENT_INBOX: usize = 8;

pub(crate) fn spawn(req: JoinRequest, mailbox: usize, stack_bytes: usize) -> io::Result<Spawned> {
    let (tx, inbox) = bounded(CLIENT_INBOX);
    let (self_tx, info) = process::mailbox(mailbox);
    let (stop, stop_rx) = bounded(1);
    let (outcome_tx, outcome) = bounded(1);
    let name = format!("channel-{}-{}", req.conn.shared.id, req.id);
    let thread = process::spawn(name, stack_bytes, move || {
        let exits = req.exits.clone();
        let id = req.id;
        run(req, Mailboxes { inbox, info, self_tx, stop_rx, outcome_tx });
        // Bounded: the socket drains its exits mailbox before and after every message.
        let _ = exits.send_timeout(id, Duration::from_secs(5));
    })?;
    Ok(Spawned { tx, stop, outcome, thread })
}

/// A channel process reads three mailboxes: the socket's stop requests (always first), the
/// client's messages, and everything else (broadcasts it intercepts or subscribed to, and
/// `ChannelSender` messages), which never blocks its senders.
struct Mailboxes {
    inbox: Receiver<Msg>,
    info: Receiver<Msg>,
    self_tx: MailboxSender<Msg>,
    stop_rx: Receiver<Stop>,
    outcome_tx: Sender<JoinOutcome>,
}

/// How the message loop ended.
enum Exit {
    /// A callback returned stop.
    Stop(StopReason),
    /// The socket stopped us.
    Stopped(Stop),
    /// A callback panicked.
    Crash,
}

fn run(req: JoinRequest, mb: Mailboxes) {
    let JoinRequest { topic, join_ref, ref_, payload, mut channel, assigns, conn, pubsub, .. } =
        req;
    let mut ctx = ChannelCtx {
        topic,
        join_ref,
        assigns,
        conn,
        pubsub,
        sub_id: SubId::next(),
        self_tx: mb.self_tx.clone(),
        current_ref: None,
        pending: Some(Vec::new()),
        extra_topics: Vec::new(),
    };
    let joined = catch_unwind(AssertUnwindSafe(|| {
        let topic = ctx.topic.clone();
        channel.join(&topic, payload, &mut ctx)
    }));
    let (status, response, outcome) = match joined {
        Ok(Ok(reply)) => ("ok", reply, JoinOutcome::Joined),
        Ok(Err(reply)) => ("error", reply, JoinOutcome::Refused),
        Err(panic) => {
            log::error!("join of {} crashed: {}", ctx.topic, process::panic_message(&*panic));
            ("error", json!({"reason": "join crashed"}).into(), JoinOutcome::Crashed)
        }
    };
    // The socket gave up waiting (join timeout) or is gone: leave without a word.
    if !matches!(mb.stop_rx.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
        unsubscribe_all(&ctx);
        return;
    }
    if outcome == JoinOutcome::Joined && !subscribe_own_topic(&ctx, &*channel) {
        let reply = Payload::from(json!({"reason": "join crashed"}));
        reply_join(&ctx, ref_.as_deref(), "error", &reply);
        let _ = mb.outcome_tx.send(JoinOutcome::Crashed);
        return;
    }
    reply_join(&ctx, ref_.as_deref(), status, &response);
    let _ = mb.outcome_tx.send(outcome);
    if outcome != JoinOutcome::Joined {
        unsubscribe_all(&ctx);
        return;
    }
    for (event, payload) in ctx.pending.take().unwrap_or_default() {
        ctx.push(&event, payload);
    }
    let exit = serve(&mut *channel, &mut ctx, &mb);
    finish(&mut *channel, &mut ctx, exit);
}

fn subscribe_own_topic(ctx: &ChannelCtx, channel: &dyn Channel) -> bool {
    let target = Target::Channel {
        tx: ctx.self_tx.clone(),
        fastlane: Some(ctx.conn.clone()),
        intercepts: Arc::from(channel.intercepts()),
    };
    let sub = Subscriber { id: ctx.sub_id, target };
    ctx.pubsub.subscribe_target(&ctx.topic, sub).is_ok()
}

fn reply_join(ctx: &ChannelCtx, ref_: Option<&str>, status: &str, response: &Payload) {
    let out = Outgoing::reply(Some(&ctx.join_ref), ref_, &ctx.topic, status, response);
    ctx.conn.send_message(&out);
}

/// The message loop. Bounded by the socket: it ends when the socket stops it or goes away.
fn serve(channel: &mut dyn Channel, ctx: &mut ChannelCtx, mb: &Mailboxes) -> Exit {
    loop {
        if let Ok(stop) = mb.stop_rx.try_recv() {
            return Exit::Stopped(stop);
        }
        let msg = select! {
            recv(mb.stop_rx) -> stop => return Exit::Stopped(stop.unwrap_or(Stop::Closed)),
            recv(mb.inbox) -> msg => match msg {
                Ok(msg) => msg,
                // The socket dropped its sender after queueing our stop (or vanished).
                Err(_) => return Exit::Stopped(mb.stop_rx.try_recv().unwrap_or(Stop::Closed)),
            },
            recv(mb.info) -> msg => msg.expect("the channel holds a sender to its own mailbox"),
        };
        match catch_unwind(AssertUnwindSafe(|| handle(channel, ctx, msg))) {
            Ok(Flow::Continue) => {}
            Ok(Flow::Stop(reason)) => return Exit::Stop(reason),
            Err(panic) => {
                log::error!("channel {} crashed: {}", ctx.topic, process::panic_message(&*panic));
                return Exit::Crash;
            }
        }
    }
}

fn handle(channel: &mut dyn Channel, ctx: &mut ChannelCtx, msg: Msg) -> Flow {
    match msg {
        Msg::In { event, payload, ref_ } => {
            ctx.current_ref = ref_;
            let result = channel.handle_in(&event, payload, ctx);
            let flow = apply_handle_in(ctx, result);
            ctx.current_ref = None;
            flow
        }
        Msg::Leave { ref_ } => {
            reply(ctx, ref_.as_deref(), "ok", &Payload::empty());
            Flow::Stop(StopReason::Left)
        }
        Msg::Broadcast(b) if b.topic == ctx.topic => {
            channel.handle_out(&b.event, b.payload.clone(), ctx)
        }
        Msg::Broadcast(b) => channel.handle_info(Info::Broadcast(b), ctx),
        Msg::Info(m) => channel.handle_info(Info::Message(m), ctx),
    }
}

fn apply_handle_in(ctx: &mut ChannelCtx, result: HandleIn) -> Flow {
    let ref_ = ctx.current_ref.clone();
    match result {
        HandleIn::Reply { status, payload } => {
            reply(ctx, ref_.as_deref(), &status, &payload);
            Flow::Continue
        }
        HandleIn::NoReply => Flow::Continue,
        HandleIn::Stop { reason, reply: answer } => {
            if let Some((status, payload)) = answer {
                reply(ctx, ref_.as_deref(), &status, &payload);
            }
            Flow::Stop(reason)
        }
    }
}

fn reply(ctx: &ChannelCtx, ref_: Option<&str>, status: &str, payload: &Payload) {
    let out = Outgoing::reply(Some(&ctx.join_ref), ref_, &ctx.topic, status, payload);
    ctx.conn.send_message(&out);
}

/// Runs `terminate` where Phoenix would, drops the subscriptions, and tells the client how the
/// channel ended: `phx_close` for a graceful stop, `phx_error` for a crash, nothing when the
/// socket itself is going away or a newer join replaced this one.
fn finish(channel: &mut dyn Channel, ctx: &mut ChannelCtx, exit: Exit) {
    let (reason, frame) = match exit {
        Exit::Stop(StopReason::Error(e)) => (Some(StopReason::Error(e)), Some(EVENT_ERROR)),
        Exit::Stop(reason) => (Some(reason), Some(EVENT_CLOSE)),
        Exit::Stopped(Stop::Closed) => (Some(StopReason::Closed), None),
        Exit::Stopped(Stop::Shutdown) => (Some(StopReason::Shutdown), None),
        Exit::Stopped(Stop::Duplicate) => (None, None),
        Exit::Crash => (None, Some(EVENT_ERROR)),
    };
    if let Some(reason) = reason {
        let terminated = catch_unwind(AssertUnwindSafe(|| channel.terminate(&reason, ctx)));
        if let Err(panic) = terminated {
            log::error!("terminate of {} panicked: {}", ctx.topic, process::panic_message(&*panic));
        }
    }
    unsubscribe_all(ctx);
    if let Some(event) = frame {
        let payload = if event == EVENT_ERROR {
            Payload::from(json!({"reason": "channel_crash"}))
        } else {
            Payload::empty()
        };
        ctx.conn.send_message(&Outgoing::control(&ctx.join_ref, &ctx.topic, event, &payload));
    }
}

fn unsubscribe_all(ctx: &ChannelCtx) {
    ctx.pubsub.unsubscribe(&ctx.topic, ctx.sub_id);
    for topic in &ctx.extra_topics {
        ctx.pubsub.unsubscribe(topic, ctx.sub_id);
    }
}
