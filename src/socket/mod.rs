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
pub(crate) mod longpoll;
pub(crate) mod longpoll_route;
mod rate;
mod state;
pub mod transport;
pub(crate) mod writer;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError, unbounded};
use tungstenite::{Message as WsMessage, WebSocket};

use crate::channel::server::{self as channel_server, JoinOutcome, JoinRequest, Notice, Stop};
use crate::channel::{self, Assigns, Router};
use crate::config::Config;
use crate::process::MailboxSender;
use crate::protocol::{self, EVENT_CLOSE, Inbound, Outgoing, Payload, frame};
use crate::pubsub::{PubSub, SubId, Subscriber, Target};
use conn::{CloseReason, ConnHandle, ConnShared};
use rate::RateLimits;
use state::{Effect, JoinResult, Limits, Reply, SocketState, Undeliverable};
use transport::{ConnectFn, HandshakeFailure, Session, WsStream};

/// What every socket process shares with the server.
pub(crate) struct Endpoint {
    pub config: Config,
    pub router: Router,
    pub connect: ConnectFn,
    pub pubsub: PubSub,
    pub admit: Box<dyn Admit>,
    /// Open LongPoll sessions and their token key.
    pub longpoll: longpoll::Sessions,
}

/// The server's connection limit, asked when an upgrade is about to complete.
pub(crate) trait Admit: Send + Sync {
    /// Connection `id` has sent its whole request head: whatever its handshake waits on now is
    /// the server's, so it is no longer dropped as a slow client (`Config::max_handshakes`).
    fn head_received(&self, id: u64);

    /// Connection `id` completed its upgrade: move it from the handshake budget to a
    /// `max_connections` slot. False if no slot is left (or `id` was dropped meanwhile).
    fn upgraded(&self, id: u64) -> bool;
}

/// Close codes the socket itself decides (the others are in `CloseReason`).
const CLOSE_PROTOCOL_ERROR: u16 = 1002;
const CLOSE_TOO_BIG: u16 = 1009;
use state::{CLOSE_INTERNAL, CLOSE_INVALID_DATA};
/// After our close frame, how long we keep reading for the client's close reply. Closing a TCP
/// stream with unread data makes Linux send RST, which can destroy our close frame in flight.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes we are willing to discard while lingering.
const LINGER_BYTES: usize = 1 << 20;

/// A running channel process, by id (its route is in `SocketState`).
struct ChannelProc {
    tx: Sender<channel::Msg>,
    control: MailboxSender<channel::Msg>,
    thread: JoinHandle<()>,
}

/// How the read loop ended.
#[derive(Debug)]
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
    /// The decision table; this struct only performs its effects.
    state: SocketState,
    channels: HashMap<u64, ChannelProc>,
    /// Channels told to stop whose exit has not been seen yet.
    retired: HashMap<u64, JoinHandle<()>>,
    /// The read timeout currently set on the stream (the idle timeout, or less while a leave
    /// is in flight).
    read_timeout: Duration,
    notices_tx: Sender<Notice>,
    notices: Receiver<Notice>,
    /// The socket id this connection is subscribed to for `disconnect`, if any.
    socket_id: Option<(String, SubId)>,
}

/// A connection that completed the WebSocket upgrade, ready for `run`.
pub(crate) struct Upgraded {
    ws: WebSocket<WsStream>,
    session: Session,
}

/// Entry point of the `ws-<id>` thread: the request, then the connection's whole life (a
/// WebSocket upgrade, or a LongPoll request or session).
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
    let _ = tcp.set_write_timeout(Some(endpoint.config.handshake_timeout));
    let request = match transport::read_request(&tcp, &endpoint.config) {
        Ok(request) => request,
        Err(failure) => return log_failure(&shared, failure),
    };
    endpoint.admit.head_received(shared.id);
    if longpoll::handles(&request.0, &endpoint.config) {
        return longpoll::serve(endpoint, tcp, request, peer, shared);
    }
    if let Some(upgraded) = handshake(&endpoint, tcp, request, peer, &shared) {
        run(endpoint, upgraded, shared);
    }
}

fn log_failure(shared: &ConnShared, failure: HandshakeFailure) {
    match failure {
        HandshakeFailure::Refused(status) => {
            crate::metrics::refused_connect(crate::metrics::upgrade_refusal(status));
            log::info!("conn {}: upgrade refused with {status}", shared.id);
        }
        HandshakeFailure::Failed(why) => {
            log::debug!("conn {}: handshake failed: {why}", shared.id);
        }
    }
}

/// The HTTP upgrade (`transport::accept`). None if the client was refused or vanished.
#[inline(never)]
fn handshake(
    endpoint: &Endpoint,
    tcp: Arc<TcpStream>,
    request: (http1::RequestHead, Vec<u8>),
    peer: SocketAddr,
    shared: &Arc<ConnShared>,
) -> Option<Box<Upgraded>> {
    match transport::accept(tcp, request, shared, peer, endpoint) {
        Ok((ws, session)) => Some(Box::new(Upgraded { ws, session })),
        Err(failure) => {
            log_failure(shared, failure);
            None
        }
    }
}

/// Serves an upgraded connection, then tears it down.
#[inline(never)]
fn run(endpoint: Arc<Endpoint>, upgraded: Box<Upgraded>, shared: Arc<ConnShared>) {
    let Upgraded { mut ws, session } = *upgraded;
    let conn = attach_outbound(&endpoint, &mut ws, &shared, session.vsn);
    let _counted = crate::metrics::connection("websocket");
    let mut socket = Socket::new(endpoint, conn, session);
    let end = socket.serve(&mut ws);
    socket.teardown(&mut ws, end);
}

/// The decision table's limits, from the server's configuration.
fn limits(config: &Config) -> Limits {
    Limits {
        max_channels: config.max_channels_per_connection,
        leave_timeout: config.channel_send_timeout,
        rates: RateLimits {
            messages_per_sec: config.messages_per_sec,
            message_burst: config.message_burst,
            joins_per_sec: config.joins_per_sec,
            join_burst: config.join_burst,
            max_refusals: config.max_rate_refusals,
        },
    }
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
    let target = Target::socket(conn.clone());
    pubsub.subscribe_target(id, Subscriber { id: sub, target }).ok().map(|()| sub)
}

impl Socket {
    /// A socket process for a connected client, subscribed to its socket id (for `disconnect`
    /// broadcasts), whatever its transport.
    fn new(endpoint: Arc<Endpoint>, conn: ConnHandle, session: Session) -> Socket {
        let socket_sub = subscribe_socket_id(&endpoint.pubsub, session.socket_id.as_deref(), &conn);
        let socket_id = session.socket_id.zip(socket_sub);
        // Unbounded but bounded by construction: each channel thread sends exactly one exit,
        // and at most `max_channels_per_connection` run at once. (A bounded channel would
        // preallocate.)
        let (notices_tx, notices) = unbounded();
        Socket {
            state: SocketState::new(conn.shared.id, limits(&endpoint.config), Instant::now()),
            read_timeout: endpoint.config.idle_timeout,
            endpoint,
            conn,
            assigns: Arc::new(session.assigns),
            socket_id,
            channels: HashMap::new(),
            retired: HashMap::new(),
            notices_tx,
            notices,
        }
    }

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
                Ok(frame) => {
                    crate::metrics::frame_in(frame.len());
                    frame
                }
                // A read with a timeout fails with EINTR after the process was stopped
                // (SIGSTOP, a debugger) and continued, signal handler or not (signal(7)):
                // nothing was lost, so read again.
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {
                    continue;
                }
                Err(e) if self.leave_timer_fired(&e) => {
                    let effects = self.state.expire_leaves(Instant::now());
                    match self.perform(effects) {
                        Ok(()) => continue,
                        Err(end) => return end,
                    }
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

    /// Decodes one client message and performs what the decision table makes of it.
    fn handle_frame(&mut self, frame: Inbound<'_>) -> Result<(), End> {
        let effects = match self.conn.vsn.decode(frame) {
            Ok(message) => self.state.handle(message, Instant::now()),
            Err(e) => self.state.undecodable(&e),
        };
        self.perform(effects)
    }

    fn perform(&mut self, effects: Vec<Effect>) -> Result<(), End> {
        effects.into_iter().try_for_each(|effect| self.perform_one(effect))
    }

    fn perform_one(&mut self, effect: Effect) -> Result<(), End> {
        match effect {
            Effect::Reply(r) => self.reply(&r),
            Effect::PhxClose { join_ref, topic } => {
                let empty = Payload::empty();
                self.conn.send_message(&Outgoing::control(&join_ref, &topic, EVENT_CLOSE, &empty));
            }
            Effect::ReplaceChannel { id } => self.replace_channel(id),
            Effect::AwaitExit { id } => {
                if !self.wait_exit(id, Duration::from_secs(5)) {
                    log::warn!("conn {}: abandoned channel {id} still runs", self.conn.shared.id);
                }
            }
            Effect::StartChannel { id, topic, join_ref, ref_, payload } => {
                let result = self.start_channel(id, topic, join_ref, ref_, payload);
                let effects = self.state.join_outcome(id, result);
                return self.perform(effects);
            }
            Effect::Push { id, topic, event, payload, ref_ } => {
                let effects = self.push(id, &topic, event, payload, ref_);
                return self.perform(effects);
            }
            Effect::Leave { id, topic, ref_ } => {
                let effects = self.send_leave(id, &topic, ref_);
                return self.perform(effects);
            }
            Effect::StopChannel { id } => self.stop_channel(id, Stop::Closed),
            Effect::Close(code, reason) => {
                log::info!("conn {}: closing: {reason}", self.conn.shared.id);
                return Err(End::Close(code, reason));
            }
        }
        Ok(())
    }

    /// Tells channel `id` to stop whenever it returns; its exit is reaped like any other.
    fn stop_channel(&mut self, id: u64, stop: Stop) {
        if let Some(proc) = self.channels.remove(&id) {
            proc.control.force_send(channel::Msg::Stop(stop));
            self.retired.insert(id, proc.thread);
        }
    }

    /// Stops the channel a duplicate join replaces and waits (bounded) until it has left
    /// PubSub, so the new channel does not receive every broadcast twice meanwhile.
    fn replace_channel(&mut self, id: u64) {
        self.stop_channel(id, Stop::Duplicate);
        if !self.wait_exit(id, Duration::from_secs(5)) {
            log::warn!("conn {}: replaced channel {id} did not stop in 5 s", self.conn.shared.id);
        }
    }

    fn start_channel(
        &mut self,
        id: u64,
        topic: String,
        join_ref: String,
        ref_: Option<String>,
        payload: Payload,
    ) -> JoinResult {
        let Some(channel) = self.endpoint.router.route(&topic) else {
            return JoinResult::Unmatched;
        };
        let config = &self.endpoint.config;
        let req = JoinRequest {
            id,
            topic,
            join_ref,
            ref_,
            payload,
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
                    crate::metrics::refused_join("no_thread");
                    return JoinResult::AtCapacity;
                }
            };
        let result = match self.wait_join(id, config.join_timeout) {
            Some(JoinOutcome::Joined) => {
                let channel_server::Spawned { tx, control, thread } = spawned;
                self.channels.insert(id, ChannelProc { tx, control, thread });
                return JoinResult::Joined;
            }
            Some(JoinOutcome::Refused | JoinOutcome::Crashed) => JoinResult::Answered,
            None => {
                log::warn!("conn {}: join of channel {id} timed out", self.conn.shared.id);
                crate::metrics::refused_join("join_timeout");
                JoinResult::TimedOut
            }
        };
        // Dropping the inbox sender tells a late join to exit silently.
        drop(spawned.tx);
        self.retired.insert(id, spawned.thread);
        result
    }

    /// Sends `phx_leave` to channel `id` without waiting: the channel replies and exits, and
    /// `SocketState` completes the leave itself if it has not by its deadline.
    fn send_leave(&mut self, id: u64, topic: &str, ref_: Option<String>) -> Vec<Effect> {
        let Some(proc) = self.channels.get(&id) else {
            return self.state.leave_undeliverable(topic, Undeliverable::Gone);
        };
        match proc.tx.try_send(channel::Msg::Leave { ref_ }) {
            Ok(()) => Vec::new(),
            Err(TrySendError::Full(_)) => {
                self.state.leave_undeliverable(topic, Undeliverable::Busy)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.state.leave_undeliverable(topic, Undeliverable::Gone)
            }
        }
    }

    /// Hands an event to channel `id`, waiting (bounded) while its mailbox is full.
    fn push(
        &mut self,
        id: u64,
        topic: &str,
        event: String,
        payload: Payload,
        ref_: Option<String>,
    ) -> Vec<Effect> {
        let Some(proc) = self.channels.get(&id) else {
            return self.state.undeliverable(topic, ref_, Undeliverable::Gone);
        };
        let msg = channel::Msg::In { event, payload, ref_: ref_.clone() };
        match proc.tx.send_timeout(msg, self.endpoint.config.channel_send_timeout) {
            Ok(()) => Vec::new(),
            Err(SendTimeoutError::Disconnected(_)) => {
                self.state.undeliverable(topic, ref_, Undeliverable::Gone)
            }
            Err(SendTimeoutError::Timeout(_)) => {
                self.state.undeliverable(topic, ref_, Undeliverable::Busy)
            }
        }
    }

    /// The read loop sleeps in `read`; while a leave is in flight, it must wake at its
    /// deadline, so the read timeout is shortened to it (and restored to the idle timeout).
    fn arm_read_timeout(&mut self, ws: &WebSocket<WsStream>) {
        let idle = self.endpoint.config.idle_timeout;
        let timeout = match self.state.next_deadline() {
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

    fn reply(&self, r: &Reply) {
        let (join_ref, ref_) = (r.join_ref.as_deref(), r.ref_.as_deref());
        let out = Outgoing::reply(join_ref, ref_, &r.topic, r.status, &r.payload);
        self.conn.send_message(&out);
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
        self.state.exited(id);
        let thread = match self.retired.remove(&id) {
            Some(thread) => Some(thread),
            None => self.channels.remove(&id).map(|proc| proc.thread),
        };
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Stops every channel, closes the WebSocket the way `end` says, and waits (bounded) for
    /// the channel threads.
    fn teardown(&mut self, ws: &mut WebSocket<WsStream>, end: End) {
        crate::logger::conn_closed(self.conn.shared.id, format_args!("{end:?}"));
        self.stop_all(&end);
        self.close_websocket(ws, end);
        self.conn.shared.shutdown_tcp();
        self.await_channels();
        self.conn.shared.join_flusher();
    }

    /// Ends a socket process that has no WebSocket to close (LongPoll).
    fn finish(&mut self, end: End) {
        crate::logger::conn_closed(self.conn.shared.id, format_args!("{end:?}"));
        self.stop_all(&end);
        self.await_channels();
    }

    /// Leaves the socket id's topic and tells every channel to stop.
    fn stop_all(&mut self, end: &End) {
        if let Some((id, sub)) = self.socket_id.take() {
            self.endpoint.pubsub.unsubscribe(&id, sub);
        }
        let stop = match end {
            End::Requested(CloseReason::Shutdown) => Stop::Shutdown,
            _ => Stop::Closed,
        };
        self.state.drain();
        let ids: Vec<u64> = self.channels.keys().copied().collect();
        for id in ids {
            self.stop_channel(id, stop);
        }
    }

    /// Waits (bounded by half the shutdown timeout) for every stopped channel to exit.
    fn await_channels(&mut self) {
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
