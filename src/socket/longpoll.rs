//! The LongPoll transport (`<socket path>/longpoll`, phoenix-protocol.md §1.8): a session is a
//! socket process like a WebSocket connection, on the thread of the request that opened it.
//!
//! * GET without a token runs the connect path (`transport::connect_session`), takes a
//!   `max_connections` slot, answers `{"status":410,"token":T}` and then *becomes* the session:
//!   the same `Socket` (decision table, channels, limits) as a WebSocket, fed by POSTs.
//! * GET with a token waits (up to `longpoll_window`) on the session's buffer and answers
//!   `{"status":200,"messages":[..]}` or `{"status":204}`; POST hands each ndjson line to the
//!   session's mailbox and waits for it to be handled. Both run on their request's own thread.
//! * The connection's frames go to the session's buffer (`Sink`), bounded by
//!   `outbound_queue_bytes`: a client that stops polling is cut as a slow consumer; one that
//!   polls nobody for 1.5 windows is gone, and the session ends, stopping its channels.
//!
//! The token is `hex(session id).hex(HMAC-SHA256(key, session id ‖ client IP))`, with a random
//! key per process: it cannot be forged, it dies with its session (ids are random, never
//! reused), and it is refused from any other IP address than the one that opened the session
//! (a leaked token is useless elsewhere). Behind a proxy that is the proxy's address.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use hmac::{Hmac, Mac};
use parking_lot::{Condvar, Mutex};
use serde_json::{Value, json};
use sha2::Sha256;

use super::conn::{Chunk, CloseReason, ConnHandle, ConnShared, Sink};
use super::http1::{self, RequestHead};
use super::transport::{self, Session};
use super::{End, Endpoint, Socket};
use crate::protocol::Inbound;

/// Most messages in one POST (phoenix.js `MAX_LONGPOLL_BATCH_SIZE`).
const MAX_BATCH: usize = 100;
/// Lines a session's mailbox holds; a POST waits for each line's turn anyway.
const INBOX: usize = 16;

type HmacSha256 = Hmac<Sha256>;
type SessionId = [u8; 16];

/// Every open LongPoll session of a server, and the key their tokens are signed with.
pub(crate) struct Sessions {
    key: [u8; 32],
    table: Mutex<HashMap<SessionId, Arc<LongPoll>>>,
}

impl Default for Sessions {
    fn default() -> Sessions {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Sessions { key, table: Mutex::new(HashMap::new()) }
    }
}

impl Sessions {
    fn mac(&self, id: &SessionId, ip: IpAddr) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(id);
        mac.update(ip.to_string().as_bytes());
        mac
    }

    fn token(&self, id: &SessionId, ip: IpAddr) -> String {
        format!("{}.{}", hex(id), hex(&self.mac(id, ip).finalize().into_bytes()))
    }

    /// The session a token names, if its signature holds for this client's address.
    fn find(&self, token: &str, ip: IpAddr) -> Option<Arc<LongPoll>> {
        let (id, sig) = token.split_once('.')?;
        let id: SessionId = unhex(id)?.try_into().ok()?;
        self.mac(&id, ip).verify_slice(&unhex(sig)?).ok()?;
        self.table.lock().get(&id).cloned()
    }
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
    messages: VecDeque<String>,
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
                // The buffer is JSON strings (§1.8): a binary push cannot be carried.
                log::debug!("conn {}: dropped a binary frame for LongPoll", self.conn_id);
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

impl LongPoll {
    /// Waits up to `window` for messages; None when the session has ended.
    fn poll(&self, window: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + window;
        let mut buffer = self.buffer.lock();
        buffer.polling += 1;
        while buffer.messages.is_empty() && !buffer.closed && !self.ending() {
            if self.ready.wait_until(&mut buffer, deadline).timed_out() {
                break;
            }
        }
        buffer.polling -= 1;
        buffer.last_poll = Instant::now();
        if buffer.messages.is_empty() && (buffer.closed || self.ending()) {
            return None;
        }
        buffer.bytes = 0;
        Some(buffer.messages.drain(..).collect())
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
    let token = session_token(&head);
    let found = token.as_deref().map(|t| endpoint.longpoll.find(t, peer.ip()));
    let answer = match (head.method.as_str(), found) {
        ("GET", None) => return open(endpoint, &tcp, &head, peer, shared),
        ("GET", Some(Some(lp))) => poll_answer(&endpoint, &lp, token.as_deref()),
        ("POST", Some(Some(lp))) => post_answer(&endpoint, &tcp, &head, rest, &lp),
        ("GET" | "POST", _) => json!({"status": 410}),
        ("OPTIONS", _) => return preflight(&tcp, &head),
        _ => return respond(&tcp, 400, &json!({"error": "LongPoll accepts GET and POST"})),
    };
    respond(&tcp, 200, &answer);
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

fn poll_answer(endpoint: &Endpoint, lp: &LongPoll, token: Option<&str>) -> Value {
    match lp.poll(endpoint.config.longpoll_window) {
        None => json!({"status": 410}),
        Some(messages) if messages.is_empty() => {
            json!({"status": 204, "token": token, "messages": []})
        }
        Some(messages) => json!({"status": 200, "token": token, "messages": messages}),
    }
}

/// Hands each line of the body to the session and waits for it to be handled, as Phoenix
/// does, so the client's next POST comes after these messages' effects.
fn post_answer(
    endpoint: &Endpoint,
    tcp: &TcpStream,
    head: &RequestHead,
    rest: Vec<u8>,
    lp: &LongPoll,
) -> Value {
    let deadline = Instant::now() + endpoint.config.handshake_timeout;
    let body = match read_body(tcp, head, rest, endpoint.config.max_frame_bytes, deadline) {
        Ok(body) => body,
        Err(why) => return json!({"status": 400, "reason": why}),
    };
    let ndjson = head.header("content-type").is_some_and(|t| t.contains("ndjson"));
    let lines: Vec<&str> = if ndjson { body.split('\n').collect() } else { vec![&body] };
    if lines.len() > MAX_BATCH {
        return json!({"status": 400, "reason": format!("more than {MAX_BATCH} messages")});
    }
    let window = endpoint.config.longpoll_window;
    for text in lines.into_iter().filter(|l| !l.is_empty()) {
        let (done, acked) = bounded(1);
        let line = Line { text: text.to_string(), done };
        if lp.inbox.send_timeout(line, window).is_err() || acked.recv_timeout(window).is_err() {
            let status = if lp.ending() { 410 } else { 408 };
            return json!({ "status": status });
        }
    }
    json!({"status": 200})
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
    let token = endpoint.longpoll.token(&lp.id, peer.ip());
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 128 {
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
    fn tokens_verify_only_for_their_session_and_address() {
        let sessions = Sessions::default();
        let id = [7u8; 16];
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let token = sessions.token(&id, ip);
        let (hex_id, sig) = token.split_once('.').unwrap();
        assert_eq!(unhex(hex_id).unwrap(), id);
        assert!(sessions.mac(&id, ip).verify_slice(&unhex(sig).unwrap()).is_ok());
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(sessions.mac(&id, other).verify_slice(&unhex(sig).unwrap()).is_err());
        assert!(sessions.mac(&[8u8; 16], ip).verify_slice(&unhex(sig).unwrap()).is_err());
        assert!(Sessions::default().mac(&id, ip).verify_slice(&unhex(sig).unwrap()).is_err());
    }
}
