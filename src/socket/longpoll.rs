//! The LongPoll transport (`<socket path>/longpoll`, phoenix-protocol.md §1.8): a session is a
//! socket process like a WebSocket connection, on the thread of the request that opened it.
//!
//! * GET without a token runs the connect path (`transport::connect_session`), takes a
//!   `max_connections` slot, answers `{"status":410,"token":T}` and then *becomes* the session:
//!   the same `Socket` (decision table, channels, limits) as a WebSocket, fed by POSTs.
//! * GET with a token waits (up to `longpoll_window`) on the session's buffer and answers
//!   `{"status":200,"messages":[..],"token":T'}` or `{"status":204,"token":T'}`; POST hands
//!   each ndjson line to the session's mailbox and waits for it to be handled. Both run on
//!   their request's own thread.
//! * The connection's frames go to the session's buffer (`Sink`), bounded by
//!   `outbound_queue_bytes`: a client that stops polling is cut as a slow consumer; one that
//!   polls nobody for 1.5 windows is gone, and the session ends, stopping its channels.
//!
//! The token is `hex(session id).ack.hex(node).hex(HMAC-SHA256(key, id ‖ ack ‖ node ‖ client
//! IP))`. The key is shared by the nodes of a cluster (`auth::longpoll_key`; random per process
//! on a single node without a secret), so any node can verify it: it cannot be forged, it dies
//! with its session (ids are random, never reused), and it is refused from any other IP address
//! than the one that opened the session (a leaked token is useless elsewhere; behind a proxy
//! that is the proxy's address). `node` is where the session lives: a request that reaches
//! another node travels there through the cluster (`longpoll_route.rs`).
//!
//! **Acknowledged delivery.** A poll's messages stay in the buffer until the client shows it
//! has them: every answer carries a new token whose `ack` is the sequence number of its last
//! message, phoenix.js polls next with that token, and only then are they dropped. An answer
//! that never reaches the client (a routed reply lost on the way, a proxy that cut the
//! response) leaves the client with its old token, and its next poll gets the same messages
//! again: nothing is lost and, since a client only ever holds one token, nothing is shown twice.
//! Holding a batch until the next poll costs at most one batch, inside the same byte budget.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use hmac::{Hmac, Mac};
use parking_lot::{Condvar, Mutex};
use serde_json::{Value, json};
use sha2::Sha256;

use super::conn::{Chunk, CloseReason, ConnHandle, ConnShared, Sink};
use super::http1::{self, RequestHead};
use super::longpoll_route::{self, Route};
use super::transport::{self, Session};
use super::{End, Endpoint, Socket};
use crate::protocol::Inbound;

/// Most messages in one POST (phoenix.js `MAX_LONGPOLL_BATCH_SIZE`).
const MAX_BATCH: usize = 100;
/// Lines a session's mailbox holds; a POST waits for each line's turn anyway.
const INBOX: usize = 16;

type HmacSha256 = Hmac<Sha256>;
pub(super) type SessionId = [u8; 16];

/// Every open LongPoll session of a server, and the key their tokens are signed with.
pub(crate) struct Sessions {
    key: [u8; 32],
    /// This node's name, written into every token (empty on a single node).
    node: String,
    table: Mutex<HashMap<SessionId, Arc<LongPoll>>>,
    /// Set once the node joins a cluster (`longpoll_route::start`).
    pub(super) route: OnceLock<Route>,
}

impl Default for Sessions {
    fn default() -> Sessions {
        Sessions::new(None, "")
    }
}

/// What a token says once its signature holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub id: SessionId,
    /// The sequence number of the last message the client has received.
    pub ack: u64,
    /// The node holding the session.
    pub node: String,
}

impl Sessions {
    /// `key`: shared by a cluster's nodes; `None` draws a random one for this process.
    pub(crate) fn new(key: Option<&crate::auth::LongPollKey>, node: &str) -> Sessions {
        let key = key.map_or_else(random_key, |k| k.0);
        let (node, table, route) = (node.to_string(), Mutex::default(), OnceLock::new());
        Sessions { key, node, table, route }
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    fn mac(&self, token: &Token, ip: IpAddr) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&token.id);
        mac.update(&token.ack.to_be_bytes());
        // Length-prefixed, so that node and address cannot trade bytes.
        mac.update(&(token.node.len() as u64).to_be_bytes());
        mac.update(token.node.as_bytes());
        mac.update(ip.to_string().as_bytes());
        mac
    }

    pub(super) fn token(&self, token: &Token, ip: IpAddr) -> String {
        let sig = self.mac(token, ip).finalize().into_bytes();
        format!("{}.{}.{}.{}", hex(&token.id), token.ack, hex(token.node.as_bytes()), hex(&sig))
    }

    /// What `text` says, if its signature holds for this client's address.
    pub(super) fn verify(&self, text: &str, ip: IpAddr) -> Option<Token> {
        let mut parts = text.splitn(4, '.');
        let id = unhex(parts.next()?)?.try_into().ok()?;
        let ack = parts.next().filter(|a| a.len() <= 20)?.parse().ok()?;
        let node = String::from_utf8(unhex(parts.next()?)?).ok()?;
        let token = Token { id, ack, node };
        self.mac(&token, ip).verify_slice(&unhex(parts.next()?)?).ok()?;
        Some(token)
    }

    /// The session `id` if it lives on this node.
    pub(super) fn local(&self, id: &SessionId) -> Option<Arc<LongPoll>> {
        self.table.lock().get(id).cloned()
    }

    /// The session a token names, if its signature holds and the session is on this node.
    fn find(&self, text: &str, ip: IpAddr) -> Option<Arc<LongPoll>> {
        self.local(&self.verify(text, ip)?.id)
    }
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key
}

/// One session's shared side: its buffer of encoded messages and its mailbox.
pub(crate) struct LongPoll {
    id: SessionId,
    inbox: Sender<Line>,
    buffer: Mutex<Buffer>,
    ready: Condvar,
    /// Weak: the connection holds this session as its sink, so a strong reference back would
    /// be a cycle, and the connection (with its file descriptor) would never be freed.
    shared: Weak<ConnShared>,
    conn_id: u64,
    max_bytes: usize,
}

struct Buffer {
    /// Messages not yet acknowledged: `messages[i]` has the sequence number `acked + 1 + i`.
    messages: VecDeque<String>,
    /// The last sequence number the client has acknowledged (and that was dropped).
    acked: u64,
    bytes: usize,
    /// Polls waiting now; the session cannot expire while one waits.
    polling: usize,
    last_poll: Instant,
    closed: bool,
}

/// One POSTed message for the session thread, acknowledged once handled.
struct Line {
    text: String,
    done: Sender<()>,
}

impl Sink for LongPoll {
    fn push(&self, chunk: Chunk) -> bool {
        let mut buffer = self.buffer.lock();
        if buffer.closed {
            return false;
        }
        for (opcode, payload) in frames(chunk.bytes()) {
            if opcode != 1 {
                // The buffer is JSON strings (§1.8): a binary push cannot be carried. Counted
                // and logged, as for V1 clients.
                crate::limits::refuse_binary(self.conn_id, "a LongPoll session");
                continue;
            }
            buffer.bytes += payload.len();
            buffer.messages.push_back(String::from_utf8_lossy(payload).into_owned());
        }
        if buffer.bytes > self.max_bytes {
            // Like a WebSocket slow consumer: what it missed is dropped with the session, and
            // its next poll gets 410, on which phoenix.js reconnects and rejoins.
            log::warn!("conn {}: LongPoll client too far behind, closing", self.conn_id);
            buffer.closed = true;
            buffer.messages.clear();
            buffer.bytes = 0;
            self.ready.notify_all();
            drop(buffer);
            if let Some(shared) = self.shared.upgrade() {
                shared.close(CloseReason::SlowConsumer);
            }
            return false;
        }
        self.ready.notify_all();
        true
    }

    fn closing(&self) {
        self.ready.notify_all();
        let (done, _) = bounded(1);
        let _ = self.inbox.try_send(Line { text: String::new(), done });
    }
}

impl Buffer {
    /// Drops what the client has received (sequence numbers up to `ack`).
    fn acknowledge(&mut self, ack: u64) {
        let n = ack.saturating_sub(self.acked).min(self.messages.len() as u64);
        for message in self.messages.drain(..n as usize) {
            self.bytes -= message.len();
        }
        self.acked += n;
    }
}

/// What a poll found.
#[derive(Debug, PartialEq)]
pub(super) enum Polled {
    /// Every unacknowledged message (none: 204), and the ack that covers them.
    Messages(Vec<String>, u64),
    /// The session has ended (410).
    Gone,
    /// A routed poll got no answer in time (500: phoenix.js reconnects).
    Unreachable(String),
}

impl LongPoll {
    /// Drops what `ack` acknowledges, then waits up to `window` for messages. The messages
    /// answered stay buffered until a later poll acknowledges them (see the module comment).
    pub(super) fn poll(&self, window: Duration, ack: u64) -> Polled {
        let deadline = Instant::now() + window;
        let mut buffer = self.buffer.lock();
        buffer.acknowledge(ack);
        buffer.polling += 1;
        while buffer.messages.is_empty() && !buffer.closed && !self.ending() {
            if self.ready.wait_until(&mut buffer, deadline).timed_out() {
                break;
            }
        }
        buffer.polling -= 1;
        buffer.last_poll = Instant::now();
        if buffer.messages.is_empty() && (buffer.closed || self.ending()) {
            return Polled::Gone;
        }
        let ack = buffer.acked + buffer.messages.len() as u64;
        Polled::Messages(buffer.messages.iter().cloned().collect(), ack)
    }

    /// Hands each line to the session and waits, until `deadline` in all, for it to be handled:
    /// 200, 408 when it is not handled in time, 410 when the session has ended.
    pub(super) fn deliver(&self, lines: Vec<String>, deadline: Instant) -> u16 {
        for text in lines.into_iter().filter(|l| !l.is_empty()) {
            let (done, acked) = bounded(1);
            let sent = self.inbox.send_deadline(Line { text, done }, deadline).is_ok();
            if !sent || acked.recv_deadline(deadline).is_err() {
                return if self.ending() { 410 } else { 408 };
            }
        }
        200
    }

    fn ending(&self) -> bool {
        self.shared.upgrade().is_none_or(|shared| shared.close_reason().is_some())
    }

    /// When the session expires if nobody polls meanwhile.
    fn expiry(&self, window: Duration) -> Option<Instant> {
        let buffer = self.buffer.lock();
        (buffer.polling == 0).then(|| buffer.last_poll + window * 3 / 2)
    }
}

/// True if `req` is for the LongPoll endpoint.
pub(crate) fn handles(req: &RequestHead, config: &crate::config::Config) -> bool {
    req.path == format!("{}/longpoll", config.ws_path.trim_end_matches('/'))
}

/// Serves one LongPoll request; a session-opening GET then runs the session on this thread.
pub(crate) fn serve(
    endpoint: Arc<Endpoint>,
    tcp: Arc<TcpStream>,
    (head, rest): (RequestHead, Vec<u8>),
    peer: SocketAddr,
    shared: Arc<ConnShared>,
) {
    let ip = peer.ip();
    let token = session_token(&head).map(|t| endpoint.longpoll.verify(&t, ip));
    let answer = match (head.method.as_str(), token) {
        ("GET", None) => return open(endpoint, &tcp, &head, peer, shared),
        ("GET", Some(Some(token))) => poll_answer(&endpoint, &token, ip),
        ("POST", Some(Some(token))) => post_answer(&endpoint, &tcp, &head, rest, &token),
        ("GET" | "POST", _) => json!({"status": 410}),
        ("OPTIONS", _) => return preflight(&tcp, &head),
        _ => return respond(&tcp, 400, &json!({"error": "LongPoll accepts GET and POST"})),
    };
    // A request the cluster could not route is a gateway failure; phoenix.js reads the body.
    let http = if answer["status"] == 500 { 503 } else { 200 };
    respond(&tcp, http, &answer);
}

/// The token from `X-Phoenix-Longpoll-Token` (phoenix.js 1.9) or the `token` param (1.8,
/// which sends it empty before it has one).
fn session_token(head: &RequestHead) -> Option<String> {
    let token = head
        .header("x-phoenix-longpoll-token")
        .map(str::to_string)
        .or_else(|| transport::parse_query(&head.query).remove("token"))?;
    (!token.is_empty()).then_some(token)
}

/// A poll, answered here when the session is on this node, else by the session's node.
fn poll_answer(endpoint: &Endpoint, token: &Token, ip: IpAddr) -> Value {
    let sessions = &endpoint.longpoll;
    let polled = match sessions.local(&token.id) {
        Some(lp) => lp.poll(endpoint.config.longpoll_window, token.ack),
        None if token.node == sessions.node => Polled::Gone,
        None => longpoll_route::poll(endpoint, token),
    };
    match polled {
        Polled::Gone => json!({"status": 410}),
        Polled::Unreachable(reason) => json!({"status": 500, "reason": reason}),
        Polled::Messages(messages, ack) => {
            let token = sessions.token(&Token { ack, ..token.clone() }, ip);
            let status = if messages.is_empty() { 204 } else { 200 };
            json!({"status": status, "token": token, "messages": messages})
        }
    }
}

/// Hands each line of the body to the session (here, or on its node) and waits until it is
/// handled, as Phoenix does, so the client's next POST comes after these messages' effects.
fn post_answer(
    endpoint: &Endpoint,
    tcp: &TcpStream,
    head: &RequestHead,
    rest: Vec<u8>,
    token: &Token,
) -> Value {
    let deadline = Instant::now() + endpoint.config.handshake_timeout;
    let body = match read_body(tcp, head, rest, endpoint.config.max_frame_bytes, deadline) {
        Ok(body) => body,
        Err(why) => return json!({"status": 400, "reason": why}),
    };
    let ndjson = head.header("content-type").is_some_and(|t| t.contains("ndjson"));
    let lines: Vec<String> = match ndjson {
        true => body.split('\n').map(str::to_string).collect(),
        false => vec![body],
    };
    if lines.len() > MAX_BATCH {
        return json!({"status": 400, "reason": format!("more than {MAX_BATCH} messages")});
    }
    let sessions = &endpoint.longpoll;
    let window = endpoint.config.longpoll_window;
    match sessions.local(&token.id) {
        Some(lp) => json!({ "status": lp.deliver(lines, Instant::now() + window) }),
        None if token.node == sessions.node => json!({"status": 410}),
        None => longpoll_route::send(endpoint, token, lines),
    }
}

/// The request body, within `max_bytes` and before `deadline` (however slowly it trickles).
fn read_body(
    mut tcp: &TcpStream,
    head: &RequestHead,
    mut body: Vec<u8>,
    max_bytes: usize,
    deadline: Instant,
) -> Result<String, String> {
    let len: usize = match head.header("content-length").map(str::trim) {
        Some(n) => n.parse().map_err(|_| "invalid content-length".to_string())?,
        None => return Err("content-length required".into()),
    };
    if len > max_bytes {
        return Err(format!("body over {max_bytes} bytes"));
    }
    body.truncate(len);
    let mut filled = body.len();
    body.resize(len, 0);
    while filled < len {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            return Err("body not received in time".into());
        }
        match tcp.read(&mut body[filled..]) {
            Ok(0) => return Err("body cut short".into()),
            Ok(n) => filled += n,
            Err(e) => return Err(format!("body not received: {e}")),
        }
    }
    String::from_utf8(body).map_err(|_| "body is not UTF-8".into())
}

/// Every answer may be read by any page, as Phoenix's are: what protects a session is its
/// token (a bearer a page of another site never sees), and opening one passes the origin
/// check (`transport::connect_session`). No cookies are involved.
const CORS: (&str, &str) = ("access-control-allow-origin", "*");

fn respond(mut tcp: &TcpStream, status: u16, body: &Value) {
    let _ = tcp.write_all(&http1::json_response(status, &[CORS], &body.to_string()));
    let _ = tcp.shutdown(std::net::Shutdown::Write);
}

/// The CORS preflight of a cross-origin page's POST (its ndjson content type is not simple).
fn preflight(mut tcp: &TcpStream, head: &RequestHead) {
    let asked = head.header("access-control-request-headers").unwrap_or("");
    let headers = [
        CORS,
        ("access-control-allow-headers", asked),
        ("access-control-allow-methods", "get, post, options"),
        ("access-control-max-age", "3600"),
    ];
    let _ = tcp.write_all(&http1::typed_response(200, &headers, "text/plain", ""));
    let _ = tcp.shutdown(std::net::Shutdown::Write);
}

/// A GET without a session: connect, answer 410 with a token, and run the session here.
fn open(
    endpoint: Arc<Endpoint>,
    tcp: &TcpStream,
    head: &RequestHead,
    peer: SocketAddr,
    shared: Arc<ConnShared>,
) {
    let config = &endpoint.config;
    let auth = head.header("x-phoenix-authtoken").map(str::to_string);
    let session = match transport::connect_session(head, peer, config, &endpoint.connect, auth) {
        Ok(session) => session,
        Err(refusal) => return respond(tcp, 200, &json!({ "status": refusal.status })),
    };
    if !endpoint.admit.upgraded(shared.id) {
        // phoenix.js reads only the body: 500 makes it retry with its backoff, as for a
        // WebSocket refused with 503.
        let body = json!({"status": 500, "reason": "server at connection limit"});
        return respond(tcp, 503, &body);
    }
    let (inbox, lines) = bounded(INBOX);
    let buffer = Buffer {
        messages: VecDeque::new(),
        acked: 0,
        bytes: 0,
        polling: 0,
        last_poll: Instant::now(),
        closed: false,
    };
    let lp = Arc::new(LongPoll {
        id: *uuid::Uuid::new_v4().as_bytes(),
        inbox,
        buffer: Mutex::new(buffer),
        ready: Condvar::new(),
        shared: Arc::downgrade(&shared),
        conn_id: shared.id,
        max_bytes: config.outbound_queue_bytes,
    });
    shared.divert(lp.clone());
    endpoint.longpoll.table.lock().insert(lp.id, lp.clone());
    let fresh = Token { id: lp.id, ack: 0, node: endpoint.longpoll.node.clone() };
    let token = endpoint.longpoll.token(&fresh, peer.ip());
    respond(tcp, 200, &json!({"status": 410, "token": token, "messages": []}));
    log::debug!("conn {}: LongPoll session opened for {peer}", shared.id);
    run(endpoint.clone(), session, shared, &lp, lines);
    endpoint.longpoll.table.lock().remove(&lp.id);
}

/// The session process: handles POSTed lines and channel notices until the session ends.
fn run(
    endpoint: Arc<Endpoint>,
    session: Session,
    shared: Arc<ConnShared>,
    lp: &Arc<LongPoll>,
    lines: Receiver<Line>,
) {
    let conn = ConnHandle { shared, vsn: session.vsn };
    let _counted = crate::metrics::connection("longpoll");
    let mut socket = Socket::new(endpoint.clone(), conn, session);
    let end = serve_lines(&mut socket, lp, &lines);
    socket.finish(end);
    lp.buffer.lock().closed = true;
    lp.ready.notify_all();
}

fn serve_lines(socket: &mut Socket, lp: &LongPoll, lines: &Receiver<Line>) -> End {
    let window = socket.endpoint.config.longpoll_window;
    loop {
        if let Some(reason) = socket.conn.shared.close_reason() {
            return End::Requested(reason);
        }
        let now = Instant::now();
        let expiry = lp.expiry(window).unwrap_or(now + window);
        if expiry <= now {
            log::info!("conn {}: LongPoll session not polled, closing", lp.conn_id);
            return End::ClientClosed;
        }
        let wake = socket.state.next_deadline().map_or(expiry, |d| d.min(expiry));
        let notices = socket.notices.clone();
        let result = select! {
            recv(lines) -> line => match line {
                Ok(line) => handle_line(socket, line),
                Err(_) => return End::ClientClosed,
            },
            recv(notices) -> notice => {
                if let Ok(notice) = notice {
                    socket.notice(notice);
                }
                Ok(())
            },
            default(wake.saturating_duration_since(now)) => {
                let effects = socket.state.expire_leaves(Instant::now());
                socket.perform(effects)
            },
        };
        if let Err(end) = result {
            return end;
        }
    }
}

fn handle_line(socket: &mut Socket, line: Line) -> Result<(), End> {
    let result = match line_frame(&line.text) {
        None => Ok(()), // a wake-up from `closing`
        Some(LineFrame::Text(text)) => socket.handle_frame(Inbound::Text(text)),
        Some(LineFrame::Binary(bytes)) => socket.handle_frame(Inbound::Binary(&bytes)),
    };
    let _ = line.done.send(());
    result
}

/// One POSTed line as a client frame: JSON text, or a binary frame in base64 (phoenix.js
/// sends binary pushes that way over LongPoll).
enum LineFrame<'a> {
    Text(&'a str),
    Binary(Vec<u8>),
}

fn line_frame(text: &str) -> Option<LineFrame<'_>> {
    if text.is_empty() {
        None
    } else if text.starts_with('[') || text.starts_with('{') {
        Some(LineFrame::Text(text))
    } else {
        Some(transport::base64_decode(text).map_or(LineFrame::Text(text), LineFrame::Binary))
    }
}

/// What the server does with a LongPoll request's bytes before any session thread is involved,
/// for the `longpoll` fuzz target: the head, the session token (checked against `sessions`,
/// where a forged one must fail), the ndjson lines of a POST body and each line decoded as the
/// session would decode it. Never panics, whatever `data` is.
pub(crate) fn parse_request(data: &[u8], sessions: &Sessions, config: &crate::config::Config) {
    let split = data.windows(4).position(|w| w == b"\r\n\r\n").map_or(data.len(), |i| i + 4);
    let Ok(head) = http1::parse(&data[..split]) else { return };
    let _ = handles(&head, config);
    if let Some(token) = session_token(&head) {
        let _ = sessions.find(&token, std::net::Ipv4Addr::LOCALHOST.into());
    }
    let Ok(body) = std::str::from_utf8(&data[split..]) else { return };
    for line in body.split('\n').take(MAX_BATCH) {
        for vsn in [crate::protocol::Vsn::V1, crate::protocol::Vsn::V2] {
            let _ = match line_frame(line) {
                None => continue,
                Some(LineFrame::Text(text)) => vsn.decode(Inbound::Text(text)).is_ok(),
                Some(LineFrame::Binary(bytes)) => vsn.decode(Inbound::Binary(&bytes)).is_ok(),
            };
        }
    }
}

/// The WebSocket frames in `bytes` (server frames: unmasked), as (opcode, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => {
                let n = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
                (n as usize, 10)
            }
            n @ 0..=125 => (n as usize, 2),
            _ => break,
        };
        let Some(payload) = bytes.get(header..header + len) else { break };
        out.push((opcode, payload));
        bytes = &bytes[header + len..];
    }
    out
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// At most 512 hex digits: a session id, a signature, or a node name of up to 256 bytes.
pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 512 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{OpCode, encode};

    #[test]
    fn frames_are_split_into_payloads() {
        let mut bytes = encode(OpCode::Text, b"[1]");
        bytes.extend_from_slice(&encode(OpCode::Text, "x".repeat(300).as_bytes()));
        let parsed = frames(&bytes);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0], (1, "[1]".as_bytes()));
        assert_eq!(parsed[1].1.len(), 300);
    }

    #[test]
    fn tokens_verify_only_for_their_session_ack_node_and_address() {
        let key = crate::auth::LongPollKey([3; 32]);
        let sessions = Sessions::new(Some(&key), "n1");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let token = Token { id: [7; 16], ack: 42, node: "n.2".into() };
        let text = sessions.token(&token, ip);
        assert_eq!(sessions.verify(&text, ip), Some(token.clone()));
        // Another node with the same key verifies it; a node with another key does not.
        assert_eq!(Sessions::new(Some(&key), "n3").verify(&text, ip), Some(token.clone()));
        assert_eq!(Sessions::default().verify(&text, ip), None);
        assert_eq!(sessions.verify(&text, "127.0.0.2".parse().unwrap()), None);
        // Any changed part breaks the signature: id, ack, node.
        let (id, rest) = text.split_once('.').unwrap();
        let other_id = format!("{}8.{rest}", &id[..31]);
        assert!(id.ends_with('7') && sessions.verify(&format!("{id}.{rest}"), ip).is_some());
        assert_eq!(sessions.verify(&other_id, ip), None);
        assert_eq!(sessions.verify(&text.replacen(".42.", ".43.", 1), ip), None);
        let elsewhere = sessions.token(&Token { node: "n3".into(), ..token.clone() }, ip);
        let sig = elsewhere.rsplit_once('.').unwrap().1;
        let spliced = format!("{}.{sig}", text.rsplit_once('.').unwrap().0);
        assert_eq!(sessions.verify(&spliced, ip), None);
        for bad in ["", "x", "00.1.00.00", &format!("{text}0"), &text.replacen(".42.", ".-1.", 1)] {
            assert_eq!(sessions.verify(bad, ip), None, "{bad}");
        }
    }

    #[test]
    fn acknowledged_messages_are_dropped_and_the_others_kept() {
        let mut buffer = Buffer {
            messages: ["a", "bb", "ccc"].map(String::from).into(),
            acked: 10,
            bytes: 6,
            polling: 0,
            last_poll: Instant::now(),
            closed: false,
        };
        buffer.acknowledge(9);
        assert_eq!((buffer.messages.len(), buffer.acked, buffer.bytes), (3, 10, 6));
        buffer.acknowledge(12);
        assert_eq!(
            (buffer.messages.front().unwrap().as_str(), buffer.acked, buffer.bytes),
            ("ccc", 12, 3)
        );
        buffer.acknowledge(99);
        assert_eq!((buffer.messages.len(), buffer.acked, buffer.bytes), (0, 13, 0));
    }
}
