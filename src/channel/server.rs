//! The channel process (`Phoenix.Channel.Server`): one thread per joined topic per connection.
//!
//! Runs on: `channel-<conn>-<n>` threads. Mailboxes: a small bounded inbox for the client's
//! messages and a lazily allocated one for everything else (see `Mailboxes`); the socket's stop
//! request skips that one's capacity check, so it always gets through.
//! Lifecycle: join (reply queued here, then `JoinOutcome` to the waiting socket) → message
//! loop → exit. The join outcome and the exit reach the socket as `Notice`s on its one
//! notice mailbox.
//! **Invariant:** the join reply is queued before any push of the channel, and the channel's
//! PubSub subscriptions are removed before its exit is reported, so a rejoin never receives a
//! broadcast twice.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;

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
    pub notices: Sender<Notice>,
}

/// What the socket learns about a join attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinOutcome {
    Joined,
    Refused,
    Crashed,
}

/// What channel processes tell their socket, on its one (unbounded) notice mailbox. Each
/// channel sends at most one `Joined` and one `Exited`, so the mailbox is bounded by the
/// channel limit; an unbounded one allocates nothing while empty (a bounded one would).
pub(crate) enum Notice {
    Joined(u64, JoinOutcome),
    Exited(u64),
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
    /// The mailbox for everything else; the socket sends `Msg::Stop` through it.
    pub control: MailboxSender<Msg>,
    pub thread: JoinHandle<()>,
}

/// Client messages in flight from the socket to one channel. Small on purpose: a bounded
/// crossbeam channel allocates all its slots up front, and when a channel is this far behind
/// its client, the socket waiting (and TCP pushing back on the client) is the right answer.
const CLIENT_INBOX: usize = 4;

pub(crate) fn spawn(req: JoinRequest, mailbox: usize, stack_bytes: usize) -> io::Result<Spawned> {
    let (tx, inbox) = bounded(CLIENT_INBOX);
    let (self_tx, info) = process::mailbox(mailbox);
    let self_tx_for_socket = self_tx.clone();
    let name = format!("channel-{}-{}", req.conn.shared.id, req.id);
    let thread = process::spawn(name, stack_bytes, move || {
        let notices = req.notices.clone();
        let id = req.id;
        run(req, Mailboxes { inbox, info, self_tx });
        let _ = notices.send(Notice::Exited(id));
    })?;
    Ok(Spawned { tx, control: self_tx_for_socket, thread })
}

/// A channel process reads two mailboxes: the client's messages (bounded, the socket waits),
/// and everything else (broadcasts it intercepts or subscribed to, `ChannelSender` messages and
/// the socket's stop), which never blocks its senders.
struct Mailboxes {
    inbox: Receiver<Msg>,
    info: Receiver<Msg>,
    self_tx: MailboxSender<Msg>,
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
    let JoinRequest {
        id,
        topic,
        join_ref,
        ref_,
        payload,
        mut channel,
        assigns,
        conn,
        pubsub,
        notices,
        ..
    } = req;
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
        presence: Default::default(),
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
    // The socket drops the inbox sender when it stops waiting for the join (or is gone).
    if matches!(mb.inbox.try_recv(), Err(crossbeam_channel::TryRecvError::Disconnected)) {
        unsubscribe_all(&ctx);
        return;
    }
    if outcome == JoinOutcome::Joined && !subscribe_own_topic(&ctx, &*channel) {
        let reply = Payload::from(json!({"reason": "join crashed"}));
        reply_join(&ctx, ref_.as_deref(), "error", &reply);
        // The topics `join` subscribed to must not outlive this refused join. After the reply:
        // the registry is congested (that is why the subscribe failed), so this may wait.
        unsubscribe_all(&ctx);
        let _ = notices.send(Notice::Joined(id, JoinOutcome::Crashed));
        return;
    }
    reply_join(&ctx, ref_.as_deref(), status, &response);
    if outcome != JoinOutcome::Joined {
        crate::metrics::refused_join(if outcome == JoinOutcome::Crashed {
            "crashed"
        } else {
            "refused"
        });
    }
    let _ = notices.send(Notice::Joined(id, outcome));
    if outcome != JoinOutcome::Joined {
        unsubscribe_all(&ctx);
        return;
    }
    let _counted = crate::metrics::channel_joined(&ctx.topic);
    for (event, payload) in ctx.pending.take().unwrap_or_default() {
        ctx.push(&event, payload);
    }
    let exit = serve(&mut *channel, &mut ctx, &mb);
    finish(&mut *channel, &mut ctx, exit);
}

fn subscribe_own_topic(ctx: &ChannelCtx, channel: &dyn Channel) -> bool {
    let target = Target::Channel {
        tx: Box::new(ctx.self_tx.clone()),
        fastlane: Some(Box::new(ctx.conn.clone())),
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
        let msg = select! {
            recv(mb.inbox) -> msg => match msg {
                Ok(msg) => msg,
                // The socket dropped its sender after queueing our stop (or vanished).
                Err(_) => return Exit::Stopped(queued_stop(&mb.info).unwrap_or(Stop::Closed)),
            },
            recv(mb.info) -> msg => msg.expect("the channel holds a sender to its own mailbox"),
        };
        if let Msg::Stop(stop) = msg {
            return Exit::Stopped(stop);
        }
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

/// A stop waiting behind other messages in `info`; the rest are dropped, as the channel ends.
fn queued_stop(info: &Receiver<Msg>) -> Option<Stop> {
    info.try_iter().find_map(|m| if let Msg::Stop(stop) = m { Some(stop) } else { None })
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
        Msg::Shared(m) => channel.handle_info(Info::Shared(m), ctx),
        Msg::Info(m) => channel.handle_info(Info::Message(m), ctx),
        Msg::Lagged(lag) => {
            lag.resume();
            channel.handle_lagged(&lag.topic, ctx)
        }
        Msg::Stop(_) => unreachable!("serve handles stops before dispatch"),
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
