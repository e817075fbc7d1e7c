//! The socket process (`Phoenix.Socket` + the WebSocket transport): one per connection.
//!
//! Threads per connection: this one (`ws-<id>`: it performs the upgrade, then reads frames
//! with blocking reads and owns the connection's routing state) and one per joined channel.
//! Their frames are queued on the connection and sent by a shared writer (`conn.rs`,
//! `writer.rs`); a flusher thread exists only while the client is behind. The socket never polls: it sleeps in `read` until
//! the client sends something, the idle timeout passes, or someone shuts the TCP stream to
//! wake it (`ConnShared::close`). Channel exits arrive on the `notices` mailbox, which is drained
//! before and after every frame.
//!
//! The decision table (`handle_message`) follows `socket.ex`'s `handle_in/4`: heartbeat, join,
//! duplicate join, leave, stale `join_ref`, unmatched topic, channel limit.

pub(crate) mod conn;
pub(crate) mod http1;
pub mod transport;
pub(crate) mod writer;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError, unbounded};
use serde_json::json;
use tungstenite::{Message as WsMessage, WebSocket};

use crate::channel::server::{self as channel_server, JoinOutcome, JoinRequest, Notice, Stop};
use crate::channel::{self, Assigns, Router};
use crate::config::Config;
use crate::logger::shown;
use crate::process::MailboxSender;
use crate::protocol::{
    self, EVENT_CLOSE, EVENT_HEARTBEAT, EVENT_JOIN, EVENT_LEAVE, HEARTBEAT_TOPIC, Inbound, Message,
    Outgoing, Payload, frame,
};
use crate::pubsub::{PubSub, SubId, Subscriber, Target};
use conn::{CloseReason, ConnHandle, ConnShared};
use transport::{ConnectFn, HandshakeFailure, Session, WsStream};

/// What every socket process shares with the server.
pub(crate) struct Endpoint {
    pub config: Config,
    pub router: Router,
    pub connect: ConnectFn,
    pub pubsub: PubSub,
    pub admit: Box<dyn Admit>,
}

/// The server's connection limit, asked when an upgrade is about to complete.
pub(crate) trait Admit: Send + Sync {
    /// Connection `id` completed its upgrade: move it from the handshake budget to a
    /// `max_connections` slot. False if no slot is left (or `id` was dropped meanwhile).
    fn upgraded(&self, id: u64) -> bool;
}

/// Close codes the socket itself decides (the others are in `CloseReason`).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_INVALID_DATA: u16 = 1007;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_INTERNAL: u16 = 1011;
/// After our close frame, how long we keep reading for the client's close reply. Closing a TCP
/// stream with unread data makes Linux send RST, which can destroy our close frame in flight.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes we are willing to discard while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// A joined (or leaving) topic.
struct Joined {
    id: u64,
    join_ref: String,
    tx: Sender<channel::Msg>,
    control: MailboxSender<channel::Msg>,
    thread: JoinHandle<()>,
    /// A `phx_leave` the channel has not acknowledged (by exiting) yet.
    leaving: Option<Leave>,
}

/// A leave in flight: the channel replies and exits, or the socket gives up at `deadline`.
struct Leave {
    ref_: Option<String>,
    deadline: Instant,
}

/// How the read loop ended.
enum End {
    /// The client closed the WebSocket or the TCP stream.
    ClientClosed,
    /// We close with a code and reason.
    Close(u16, String),
    /// Someone else asked us to close (shutdown, disconnect, slow consumer).
    Requested(CloseReason),
}

struct Socket {
    endpoint: Arc<Endpoint>,
    conn: ConnHandle,
    assigns: Arc<Assigns>,
    channels: HashMap<String, Joined>,
    /// Channels told to stop whose exit has not been seen yet.
    retired: HashMap<u64, JoinHandle<()>>,
    /// Topics whose channel did not acknowledge a leave in time, with that channel's id, while
    /// it still runs: a rejoin waits (bounded) for it to leave PubSub first.
    abandoned: HashMap<String, u64>,
    /// The read timeout currently set on the stream (the idle timeout, or less while a leave
    /// is in flight).
    read_timeout: Duration,
    notices_tx: Sender<Notice>,
    notices: Receiver<Notice>,
    next_channel_id: u64,
}

/// A connection that completed the WebSocket upgrade, ready for `run`.
pub(crate) struct Upgraded {
    ws: WebSocket<WsStream>,
    session: Session,
}

/// Entry point of the `ws-<id>` thread: the HTTP upgrade, then the connection's whole life.
///
/// This frame stays on the stack under `run` for the connection's life, so it holds only a
/// pointer: the upgrade happens in its own out-of-line frame, and its result is boxed. (Inlined,
/// it was 1.2 KiB and made one more stack page resident per connection.)
pub(crate) fn serve(
    endpoint: Arc<Endpoint>,
    tcp: Arc<TcpStream>,
    peer: SocketAddr,
    shared: Arc<ConnShared>,
) {
    if let Some(upgraded) = handshake(&endpoint, tcp, peer, &shared) {
        run(endpoint, upgraded, shared);
    }
}

/// The HTTP upgrade (`transport::accept`). None if the client was refused or vanished.
#[inline(never)]
fn handshake(
    endpoint: &Endpoint,
    tcp: Arc<TcpStream>,
    peer: SocketAddr,
    shared: &Arc<ConnShared>,
) -> Option<Box<Upgraded>> {
    let config = &endpoint.config;
    let _ = tcp.set_write_timeout(Some(config.handshake_timeout));
    match transport::accept(tcp, shared, peer, endpoint) {
        Ok((ws, session)) => Some(Box::new(Upgraded { ws, session })),
        Err(HandshakeFailure::Refused(status)) => {
            log::info!("conn {}: upgrade refused with {status}", shared.id);
            None
        }
        Err(HandshakeFailure::Failed(why)) => {
            log::debug!("conn {}: handshake failed: {why}", shared.id);
            None
        }
    }
}

/// Serves an upgraded connection, then tears it down.
#[inline(never)]
fn run(endpoint: Arc<Endpoint>, upgraded: Box<Upgraded>, shared: Arc<ConnShared>) {
    let Upgraded { mut ws, session } = *upgraded;
    let conn = attach_outbound(&endpoint, &mut ws, &shared, session.vsn);
    let socket_sub = subscribe_socket_id(&endpoint.pubsub, session.socket_id.as_deref(), &conn);
    // Unbounded but bounded by construction: each channel thread sends exactly one exit, and
    // at most `max_channels_per_connection` run at once. (A bounded channel would preallocate.)
    let (notices_tx, notices) = unbounded();
    let mut socket = Socket {
        endpoint: endpoint.clone(),
        conn,
        assigns: Arc::new(session.assigns),
        channels: HashMap::new(),
        retired: HashMap::new(),
        abandoned: HashMap::new(),
        read_timeout: endpoint.config.idle_timeout,
        notices_tx,
        notices,
        next_channel_id: 1,
    };
    let end = socket.serve(&mut ws);
    if let (Some(id), Some(sub)) = (session.socket_id.as_deref(), socket_sub) {
        endpoint.pubsub.unsubscribe(id, sub);
    }
    socket.teardown(&mut ws, end);
}

/// Switches the stream from the handshake's timeouts to the connection's.
fn attach_outbound(
    endpoint: &Endpoint,
    ws: &mut WebSocket<WsStream>,
    shared: &Arc<ConnShared>,
    vsn: protocol::Vsn,
) -> ConnHandle {
    let config = &endpoint.config;
    let tcp = ws.get_ref().tcp();
    let _ = tcp.set_read_timeout(Some(config.idle_timeout));
    let _ = tcp.set_write_timeout(Some(config.write_timeout));
    ConnHandle { shared: shared.clone(), vsn }
}

fn subscribe_socket_id(pubsub: &PubSub, id: Option<&str>, conn: &ConnHandle) -> Option<SubId> {
    let id = id?;
    let sub = SubId::next();
    let target = Target::Socket(conn.clone());
    pubsub.subscribe_target(id, Subscriber { id: sub, target }).ok().map(|()| sub)
}

impl Socket {
    /// The read loop. Each iteration blocks in `read` for at most the idle timeout.
    fn serve(&mut self, ws: &mut WebSocket<WsStream>) -> End {
        loop {
            self.arm_read_timeout(ws);
            let read = ws.read();
            self.reap_exits();
            if let Some(reason) = self.conn.shared.close_reason() {
                return End::Requested(reason);
            }
            let frame = match read {
                Ok(frame) => frame,
                Err(e) if self.leave_timer_fired(&e) => {
                    self.expire_leaves();
                    continue;
                }
                Err(e) => return self.read_error(e),
            };
            let result = match &frame {
                WsMessage::Text(text) => self.handle_frame(Inbound::Text(text.as_str())),
                WsMessage::Binary(bytes) => self.handle_frame(Inbound::Binary(bytes)),
                // Pongs to pings and the reply to a close are queued by tungstenite and
                // flushed at the start of the next `read`.
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Close(_) => Ok(()),
                WsMessage::Frame(_) => Ok(()),
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    fn read_error(&self, e: tungstenite::Error) -> End {
        use std::io::ErrorKind;
        use tungstenite::Error as E;
        match e {
            E::ConnectionClosed | E::AlreadyClosed => End::ClientClosed,
            E::Io(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                log::info!("conn {}: idle timeout", self.conn.shared.id);
                End::Close(CLOSE_PROTOCOL_ERROR, "idle timeout".into())
            }
            E::Io(_) => End::ClientClosed,
            E::Capacity(e) => End::Close(CLOSE_TOO_BIG, format!("message too big: {e}")),
            E::Utf8(_) => End::Close(CLOSE_INVALID_DATA, "invalid UTF-8 in text frame".into()),
            E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => {
                End::ClientClosed
            }
            E::Protocol(e) => End::Close(CLOSE_PROTOCOL_ERROR, format!("protocol error: {e}")),
            other => End::Close(CLOSE_INTERNAL, other.to_string()),
        }
    }

    fn handle_frame(&mut self, frame: Inbound<'_>) -> Result<(), End> {
        match self.conn.vsn.decode(frame) {
            Ok(message) => match message.oversized() {
                None => self.handle_message(message),
                Some(field) => self.refuse_oversized(&message, field),
            },
            Err(e) => {
                log::info!("conn {}: closing: {e}", self.conn.shared.id);
                Err(End::Close(CLOSE_INVALID_DATA, e.to_string()))
            }
        }
    }

    /// A field over `MAX_FIELD_BYTES`. An oversized event on a ref is answered there, like any
    /// refused message; anything else cannot be answered without echoing the oversized topic or
    /// ref (which a binary reply could not even carry), so the frame is invalid data: 1007.
    fn refuse_oversized(&mut self, m: &Message, field: &str) -> Result<(), End> {
        let why = format!("{field} is longer than {} bytes", protocol::MAX_FIELD_BYTES);
        if field == "event" && m.ref_.is_some() {
            let reason = json!({ "reason": why }).into();
            self.reply(m.join_ref.as_deref(), m.ref_.as_deref(), &m.topic, "error", &reason);
            return Ok(());
        }
        log::info!("conn {}: closing: {why}", self.conn.shared.id);
        Err(End::Close(CLOSE_INVALID_DATA, why))
    }

    /// `socket.ex` `handle_in/4`, first match wins.
    fn handle_message(&mut self, m: Message) -> Result<(), End> {
        if m.topic == HEARTBEAT_TOPIC && m.event == EVENT_HEARTBEAT {
            self.reply(None, m.ref_.as_deref(), &m.topic, "ok", &Payload::empty());
            return Ok(());
        }
        match m.event.as_str() {
            EVENT_JOIN => {
                self.join(m);
                Ok(())
            }
            EVENT_LEAVE => {
                self.leave(m);
                Ok(())
            }
            _ => self.forward(m),
        }
    }

    fn join(&mut self, m: Message) {
        let join_ref = m.join_ref.clone().or_else(|| m.ref_.clone()).unwrap_or_default();
        let topic = m.topic.clone();
        let replaced = self.channels.remove(&topic).and_then(|old| self.stop_duplicate(old));
        self.await_abandoned(&topic);
        let config = &self.endpoint.config;
        if self.channels.len() >= config.max_channels_per_connection {
            let reason = json!({"reason": "too many channels joined"});
            self.reply(Some(&join_ref), m.ref_.as_deref(), &m.topic, "error", &reason.into());
            return;
        }
        let Some(channel) = self.endpoint.router.route(&m.topic) else {
            log::warn!("conn {}: join of unmatched topic {}", self.conn.shared.id, shown(&m.topic));
            self.reply_unmatched(&m);
            return;
        };
        if let Some(joined) = self.start_channel(topic.clone(), join_ref, m, channel) {
            self.channels.insert(joined.0, joined.1);
        }
        if let Some(old_join_ref) = replaced {
            let empty = Payload::empty();
            let out = Outgoing::control(&old_join_ref, &topic, EVENT_CLOSE, &empty);
            self.conn.send_message(&out);
        }
    }

    /// Stops the channel a duplicate join replaces and waits (bounded) until it has left
    /// PubSub. Returns the old join_ref for the `phx_close` that follows the new join's reply,
    /// unless the old channel was already leaving (then it sent its own `phx_close`).
    fn stop_duplicate(&mut self, old: Joined) -> Option<String> {
        old.control.force_send(channel::Msg::Stop(Stop::Duplicate));
        let (id, leaving, join_ref) = (old.id, old.leaving.is_some(), old.join_ref.clone());
        self.retired.insert(id, old.thread);
        if !self.wait_exit(id, Duration::from_secs(5)) {
            log::warn!("conn {}: replaced channel {id} did not stop in 5 s", self.conn.shared.id);
        }
        (!leaving).then_some(join_ref)
    }

    fn start_channel(
        &mut self,
        topic: String,
        join_ref: String,
        m: Message,
        channel: Box<dyn channel::Channel>,
    ) -> Option<(String, Joined)> {
        let config = &self.endpoint.config;
        let id = self.next_channel_id;
        self.next_channel_id += 1;
        let req = JoinRequest {
            id,
            topic: topic.clone(),
            join_ref: join_ref.clone(),
            ref_: m.ref_.clone(),
            payload: m.payload,
            channel,
            assigns: self.assigns.clone(),
            conn: self.conn.clone(),
            pubsub: self.endpoint.pubsub.clone(),
            notices: self.notices_tx.clone(),
        };
        let spawned =
            match channel_server::spawn(req, config.channel_mailbox, config.channel_stack_bytes) {
                Ok(spawned) => spawned,
                Err(e) => {
                    log::error!("conn {}: cannot start channel thread: {e}", self.conn.shared.id);
                    let reason = json!({"reason": "server at capacity"}).into();
                    self.reply(Some(&join_ref), m.ref_.as_deref(), &topic, "error", &reason);
                    return None;
                }
            };
        match self.wait_join(id, config.join_timeout) {
            Some(JoinOutcome::Joined) => {
                let joined = Joined {
                    id,
                    join_ref,
                    tx: spawned.tx,
                    control: spawned.control,
                    thread: spawned.thread,
                    leaving: None,
                };
                return Some((topic, joined));
            }
            Some(JoinOutcome::Refused | JoinOutcome::Crashed) => {}
            None => {
                log::warn!("conn {}: join of {} timed out", self.conn.shared.id, shown(&topic));
                let reason = json!({"reason": "join timeout"}).into();
                self.reply(Some(&join_ref), m.ref_.as_deref(), &topic, "error", &reason);
            }
        }
        // Dropping the inbox sender tells a late join to exit silently.
        drop(spawned.tx);
        self.retired.insert(id, spawned.thread);
        None
    }

    /// `phx_leave`: the channel replies ok and exits; the socket waits for that (without
    /// blocking its read loop) until `channel_send_timeout`, then completes the leave itself.
    fn leave(&mut self, m: Message) {
        let Some(joined) = self.channels.get_mut(&m.topic) else {
            return self.leave_ok(&m); // not joined: Phoenix answers ok so the leave completes
        };
        if m.join_ref.as_ref().is_some_and(|jr| *jr != joined.join_ref) {
            return; // stale: the client raced a server-side close
        }
        if joined.leaving.is_some() {
            return self.abandon(&m.topic, m.ref_); // asked twice: the client is done waiting
        }
        let deadline = Instant::now() + self.endpoint.config.channel_send_timeout;
        match joined.tx.try_send(channel::Msg::Leave { ref_: m.ref_.clone() }) {
            Ok(()) => joined.leaving = Some(Leave { ref_: m.ref_, deadline }),
            // Its inbox is full: the channel is far behind, so do not wait for it at all.
            Err(TrySendError::Full(_)) => self.abandon(&m.topic, m.ref_),
            // It just exited (its exit notice is on the way): nothing left to leave.
            Err(TrySendError::Disconnected(_)) => self.leave_ok(&m),
        }
    }

    fn leave_ok(&self, m: &Message) {
        let (join_ref, ref_) = (m.join_ref.as_deref(), m.ref_.as_deref());
        self.reply(join_ref, ref_, &m.topic, "ok", &Payload::empty());
    }

    /// Completes a leave the channel did not acknowledge in time (it is stuck in a callback):
    /// the client gets what Phoenix sends, an `ok` reply and `phx_close`, the route is
    /// forgotten so the topic can be joined again, and the channel is told to stop whenever
    /// it returns. If it then also handles the leave, the client sees a second reply and
    /// `phx_close` for the old join_ref, which phoenix.js ignores.
    fn abandon(&mut self, topic: &str, ref_: Option<String>) {
        let Some(joined) = self.channels.remove(topic) else { return };
        log::warn!(
            "conn {}: channel {} did not leave in time; forgetting it",
            self.conn.shared.id,
            shown(topic)
        );
        joined.control.force_send(channel::Msg::Stop(Stop::Closed));
        let empty = Payload::empty();
        self.reply(Some(&joined.join_ref), ref_.as_deref(), topic, "ok", &empty);
        self.conn.send_message(&Outgoing::control(&joined.join_ref, topic, EVENT_CLOSE, &empty));
        self.retired.insert(joined.id, joined.thread);
        self.abandoned.insert(topic.to_string(), joined.id);
    }

    /// Gives up on every leave whose deadline has passed.
    fn expire_leaves(&mut self) {
        let now = Instant::now();
        let expired: Vec<(String, Option<String>)> = self
            .channels
            .iter_mut()
            .filter(|(_, j)| j.leaving.as_ref().is_some_and(|l| l.deadline <= now))
            .map(|(topic, j)| (topic.clone(), j.leaving.take().and_then(|l| l.ref_)))
            .collect();
        for (topic, ref_) in expired {
            self.abandon(&topic, ref_);
        }
    }

    /// The earliest deadline of a leave in flight.
    fn next_leave_deadline(&self) -> Option<Instant> {
        self.channels.values().filter_map(|j| j.leaving.as_ref().map(|l| l.deadline)).min()
    }

    /// The read loop sleeps in `read`; while a leave is in flight, it must wake at its
    /// deadline, so the read timeout is shortened to it (and restored to the idle timeout).
    fn arm_read_timeout(&mut self, ws: &WebSocket<WsStream>) {
        let idle = self.endpoint.config.idle_timeout;
        let timeout = match self.next_leave_deadline() {
            Some(deadline) => idle.min(deadline.saturating_duration_since(Instant::now())),
            None => idle,
        };
        let timeout = timeout.max(Duration::from_millis(1));
        if timeout != self.read_timeout
            && ws.get_ref().tcp().set_read_timeout(Some(timeout)).is_ok()
        {
            self.read_timeout = timeout;
        }
    }

    /// A read timed out because the timeout was shortened for a leave's deadline, not because
    /// the client was idle for the idle timeout. (The idle period then starts again: a leave
    /// can only extend it, by at most the leave's wait.)
    fn leave_timer_fired(&self, e: &tungstenite::Error) -> bool {
        use std::io::ErrorKind;
        let timed_out = matches!(e, tungstenite::Error::Io(e)
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
        timed_out && self.read_timeout < self.endpoint.config.idle_timeout
    }

    /// Before a rejoin of a topic whose channel was abandoned, waits (bounded) until that
    /// channel has left PubSub, so the client does not receive every broadcast twice.
    fn await_abandoned(&mut self, topic: &str) {
        let Some(id) = self.abandoned.remove(topic) else { return };
        if !self.wait_exit(id, Duration::from_secs(5)) {
            log::warn!("conn {}: abandoned channel {id} still runs", self.conn.shared.id);
        }
    }

    fn forward(&mut self, m: Message) -> Result<(), End> {
        // A channel that was asked to leave handles nothing more: it exits right after the
        // leave, and an event queued behind it would be dropped without an answer.
        let joined = self.channels.get(&m.topic).filter(|j| j.leaving.is_none());
        let Some(joined) = joined else {
            self.reply_unmatched(&m);
            return Ok(());
        };
        if m.join_ref.as_ref().is_some_and(|jr| *jr != joined.join_ref) {
            return Ok(()); // stale join_ref: dropped (Phoenix 1.8.3+); null is accepted
        }
        let msg =
            channel::Msg::In { event: m.event.clone(), payload: m.payload, ref_: m.ref_.clone() };
        match joined.tx.send_timeout(msg, self.endpoint.config.channel_send_timeout) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Disconnected(_)) => {
                // The channel just exited; its exit notice is on the way.
                let unmatched = Message { payload: Payload::empty(), ..m };
                self.reply_unmatched(&unmatched);
                Ok(())
            }
            Err(SendTimeoutError::Timeout(_)) => {
                log::warn!(
                    "conn {}: channel {} is not keeping up",
                    self.conn.shared.id,
                    shown(&m.topic)
                );
                Err(End::Close(CLOSE_INTERNAL, format!("channel {} overloaded", m.topic)))
            }
        }
    }

    fn reply_unmatched(&self, m: &Message) {
        let reason = json!({"reason": "unmatched topic"}).into();
        self.reply(None, m.ref_.as_deref(), &m.topic, "error", &reason);
    }

    fn reply(
        &self,
        join_ref: Option<&str>,
        ref_: Option<&str>,
        topic: &str,
        status: &str,
        p: &Payload,
    ) {
        self.conn.send_message(&Outgoing::reply(join_ref, ref_, topic, status, p));
    }

    /// Handles every notice already queued, without waiting.
    fn reap_exits(&mut self) {
        while let Ok(notice) = self.notices.try_recv() {
            self.notice(notice);
        }
    }

    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Exited(id) => self.exited(id),
            // The outcome of a join we stopped waiting for: that channel exits on its own.
            Notice::Joined(..) => {}
        }
    }

    /// Waits for the outcome of channel `id`'s join, handling other notices meanwhile. A
    /// channel always reports its outcome before its exit; None when the timeout passes.
    fn wait_join(&mut self, id: u64, timeout: Duration) -> Option<JoinOutcome> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.notices.recv_deadline(deadline) {
                Ok(Notice::Joined(n, outcome)) if n == id => return Some(outcome),
                Ok(notice) => self.notice(notice),
                Err(_) => return None,
            }
        }
    }

    /// Waits until channel `id` has exited, handling other exits meanwhile.
    fn wait_exit(&mut self, id: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.retired.contains_key(&id) {
            match self.notices.recv_deadline(deadline) {
                Ok(notice) => self.notice(notice),
                Err(_) => return false,
            }
        }
        true
    }

    fn exited(&mut self, id: u64) {
        self.abandoned.retain(|_, abandoned| *abandoned != id);
        if let Some(thread) = self.retired.remove(&id) {
            let _ = thread.join();
            return;
        }
        let topic = self.channels.iter().find(|(_, j)| j.id == id).map(|(t, _)| t.clone());
        if let Some(joined) = topic.and_then(|t| self.channels.remove(&t)) {
            let _ = joined.thread.join();
        }
    }

    /// Stops every channel, closes the WebSocket the way `end` says, and waits (bounded) for
    /// the channel threads.
    fn teardown(&mut self, ws: &mut WebSocket<WsStream>, end: End) {
        let stop = match end {
            End::Requested(CloseReason::Shutdown) => Stop::Shutdown,
            _ => Stop::Closed,
        };
        for (_, joined) in self.channels.drain() {
            joined.control.force_send(channel::Msg::Stop(stop));
            self.retired.insert(joined.id, joined.thread);
        }
        self.close_websocket(ws, end);
        self.conn.shared.shutdown_tcp();
        let deadline = Instant::now() + self.endpoint.config.shutdown_timeout / 2;
        while !self.retired.is_empty() {
            match self.notices.recv_deadline(deadline) {
                Ok(notice) => self.notice(notice),
                Err(_) => break,
            }
        }
        if !self.retired.is_empty() {
            log::warn!(
                "conn {}: {} channel(s) did not stop",
                self.conn.shared.id,
                self.retired.len()
            );
        }
        self.conn.shared.join_flusher();
    }

    fn close_websocket(&self, ws: &mut WebSocket<WsStream>, end: End) {
        use std::io::Write;
        let (code, reason) = match end {
            End::ClientClosed => {
                // tungstenite wrote its reply to the client's Close (the echoed code, or 1002
                // for a code RFC 6455 §7.4 forbids) into the stream without flushing it, since
                // it then reports `ConnectionClosed`; hand it over, then flush and half-close.
                let _ = ws.get_mut().flush();
                self.conn.shared.finish(None, LINGER);
                return;
            }
            End::Requested(CloseReason::SlowConsumer) => {
                self.conn.shared.shutdown_tcp();
                return;
            }
            End::Requested(r) => (r.code(), r.text().to_string()),
            End::Close(code, reason) => (code, reason),
        };
        if self.conn.shared.finish(Some(frame::close(code, &reason)), LINGER) {
            linger(ws);
        }
    }
}

/// Reads and discards until the client closes, for at most `LINGER` and `LINGER_BYTES`.
fn linger(ws: &mut WebSocket<WsStream>) {
    use std::io::Read;
    let deadline = Instant::now() + LINGER;
    // On the heap: a 4 KiB array here would be inlined into `run`'s frame and sit below every
    // read for the connection's whole life, one more resident stack page per connection.
    let mut buf = vec![0u8; 4096];
    let mut total = 0;
    let tcp = ws.get_mut();
    while total < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.tcp().set_read_timeout(Some(left)).is_err() {
            return;
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}
