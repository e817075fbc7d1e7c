//! The WebSocket transport: the HTTP upgrade (`Phoenix.Transports.WebSocket.call/2`) and the
//! stream adapter that lets tungstenite read on the socket thread while its writes go through
//! the connection's ordered outbound side (`conn.rs`).
//!
//! **Invariant:** the only file that decides an upgrade; it turns a TCP stream into a
//! `WebSocket<WsStream>` plus the `Session` the connect callback produced, or refuses it with the
//! HTTP status Phoenix would use (404 wrong path, 400 not a GET or not a valid upgrade, 403
//! refused/bad vsn/bad origin, 431 head too large), in Phoenix's order (module `upgrade`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use tungstenite::WebSocket;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::Endpoint;
use super::conn::{Chunk, ConnShared};
use super::http1::{self, HeadError, RequestHead};
use crate::channel::Assigns;
use crate::config::Config;
use crate::protocol::Vsn;

/// What the connect callback sees (`connect/3`'s params and `connect_info`).
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// Query-string parameters except `vsn`; duplicate keys keep the last value, like Plug.
    pub params: HashMap<String, String>,
    /// The token phoenix.js sends with `authToken` (in `Sec-WebSocket-Protocol`). Never logged.
    pub auth_token: Option<String>,
    pub peer_addr: SocketAddr,
    pub user_agent: Option<String>,
    /// All `x-*` request headers, lower-cased names.
    pub x_headers: Vec<(String, String)>,
}

/// A successful connect: assigns for every channel, and an optional socket id. A `disconnect`
/// broadcast on the socket id closes every connection of that id with 1001.
#[derive(Debug, Clone, Default)]
pub struct Connected {
    pub assigns: Assigns,
    pub id: Option<String>,
}

/// A refused connect. Browsers never show the status or the reason to JavaScript; other
/// clients may. The reason (never a secret) is logged and is the body of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
}

impl Refused {
    /// 403 with `reason`.
    pub fn forbidden(reason: impl Into<String>) -> Refused {
        Refused { status: 403, reason: reason.into() }
    }
}

impl Default for Refused {
    fn default() -> Refused {
        Refused::forbidden("")
    }
}

/// The socket-level connect callback (`UserSocket.connect/3` + `id/1`).
pub type ConnectFn = Arc<dyn Fn(&ConnectInfo) -> Result<Connected, Refused> + Send + Sync>;

/// A connection that passed the handshake.
pub(crate) struct Session {
    pub vsn: Vsn,
    pub assigns: Assigns,
    pub socket_id: Option<String>,
}

/// The stream tungstenite drives: reads come from the TCP stream; its writes (pongs and close
/// replies) are collected and sent, in order with every other frame of the connection, through
/// the connection's outbound side.
pub(crate) struct WsStream {
    tcp: Arc<TcpStream>,
    outbox: Arc<ConnShared>,
    pending: Vec<u8>,
}

impl WsStream {
    pub fn tcp(&self) -> &Arc<TcpStream> {
        &self.tcp
    }
}

impl Read for WsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.tcp).read(buf)
    }
}

impl Write for WsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.pending);
        if self.outbox.send(Chunk::Owned(bytes)) {
            Ok(())
        } else {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }
}

/// Why a connection did not become a WebSocket (already answered, or the client vanished).
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    /// We answered with an HTTP error status.
    Refused(u16),
    /// The client sent no valid upgrade in time, or the socket failed.
    Failed(String),
}

/// Reads the upgrade request (within `handshake_timeout`), decides it, and answers: 101 through
/// the connection's outbound side (so no thread of the connection ever writes to the stream
/// itself, see `conn.rs`), or an error status written here, as the connection then ends.
pub(crate) fn accept(
    tcp: Arc<TcpStream>,
    (head, rest): (RequestHead, Vec<u8>),
    outbox: &Arc<ConnShared>,
    peer_addr: SocketAddr,
    endpoint: &Endpoint,
) -> Result<(WebSocket<WsStream>, Session), HandshakeFailure> {
    let config = &endpoint.config;
    let (headers, session) = match upgrade(&head, peer_addr, config, &endpoint.connect) {
        Ok(accepted) => accepted,
        Err(Refusal { status, body }) => return Err(refuse(&tcp, status, &body)),
    };
    // Only now does the connection take a `max_connections` slot (the handshake had its own
    // budget): the limit counts real connections, not half-sent requests.
    if !endpoint.admit.upgraded(outbox.id) {
        return Err(refuse(&tcp, 503, "server at connection limit"));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    if !outbox.send(Chunk::Owned(http1::response(101, &headers, ""))) {
        return Err(HandshakeFailure::Failed("stream broke before the upgrade".into()));
    }
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(0)
        .max_frame_size(Some(config.max_frame_bytes))
        .max_message_size(Some(config.max_frame_bytes));
    let stream = WsStream { tcp, outbox: outbox.clone(), pending: Vec::new() };
    let ws = WebSocket::from_partially_read(stream, rest, Role::Server, Some(ws_config));
    Ok((ws, session))
}

/// Reads the request head (within `handshake_timeout`); a head too large or malformed is
/// answered here. Returns the head and whatever the client sent after it.
pub(crate) fn read_request(
    tcp: &TcpStream,
    config: &Config,
) -> Result<(RequestHead, Vec<u8>), HandshakeFailure> {
    let deadline = Instant::now() + config.handshake_timeout;
    match http1::read_head(tcp, deadline) {
        Ok(read) => Ok(read),
        Err(HeadError::TooLarge) => Err(refuse(tcp, 431, "request head too large")),
        Err(HeadError::Malformed) => Err(refuse(tcp, 400, "malformed HTTP request")),
        Err(e) => Err(HandshakeFailure::Failed(e.to_string())),
    }
}

/// Answers a refused upgrade and half-closes. The connection is over, so this thread writes
/// itself (its TCP page fragment is freed when it exits a moment later). What the client is
/// still sending (the rest of an oversized head) is read and dropped for a moment first:
/// closing with unread data would make the kernel reset the connection, and the client could
/// lose our answer.
pub(crate) fn refuse(mut tcp: &TcpStream, status: u16, body: &str) -> HandshakeFailure {
    let _ = tcp.write_all(&http1::response(status, &[], body));
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + REFUSE_LINGER;
    let mut scratch = vec![0u8; 4096];
    for _ in 0..REFUSE_LINGER_BYTES / scratch.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match tcp.read(&mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    HandshakeFailure::Refused(status)
}

/// How long, and how many bytes, a refused client's leftovers are drained.
const REFUSE_LINGER: std::time::Duration = std::time::Duration::from_millis(500);
const REFUSE_LINGER_BYTES: usize = 64 * 1024;

/// Extra headers of the 101 response.
pub(crate) type ResponseHeaders = Vec<(&'static str, String)>;

/// An upgrade refused with `status` and a plain-text `body` (empty, as Phoenix's, for 404;
/// the reason for a refused origin or connect, which Phoenix only logs).
pub(crate) struct Refusal {
    pub status: u16,
    pub body: Cow<'static, str>,
}

impl From<u16> for Refusal {
    fn from(status: u16) -> Refusal {
        Refusal { status, body: Cow::Borrowed("") }
    }
}

/// The decision of `Phoenix.Transports.WebSocket.call/2`, in its order: path and method,
/// origin, params, vsn, auth token and subprotocols, the application's connect callback, and
/// last the upgrade headers themselves (`WebSockAdapter.upgrade`, 400 with the reason).
/// Returns the extra headers of the 101 response.
pub(crate) fn upgrade(
    req: &RequestHead,
    peer_addr: SocketAddr,
    config: &Config,
    connect: &ConnectFn,
) -> Result<(ResponseHeaders, Session), Refusal> {
    if req.path != format!("{}/websocket", config.ws_path.trim_end_matches('/')) {
        return Err(404.into());
    }
    if req.method != "GET" {
        return Err(Refusal {
            status: 400,
            body: "the websocket endpoint only accepts GET".into(),
        });
    }
    let protocols = Subprotocols::parse(req.header("sec-websocket-protocol"));
    let mut headers = Vec::with_capacity(4);
    if protocols.offered_phoenix {
        headers.push(("sec-websocket-protocol", "phoenix".to_string()));
    } else if protocols.offered_any {
        // A browser that offered subprotocols fails unless one is selected; we only speak
        // "phoenix" (Phoenix answers 403 here too).
        return Err(403.into());
    }
    let session = connect_session(req, peer_addr, config, connect, protocols.auth_token)?;
    let key = valid_upgrade(req).map_err(|body| Refusal { status: 400, body: body.into() })?;
    headers.push(("upgrade", "websocket".to_string()));
    headers.push(("connection", "Upgrade".to_string()));
    headers.push(("sec-websocket-accept", derive_accept_key(key.as_bytes())));
    Ok((headers, session))
}

/// The transport-independent part of a connect (WebSocket upgrade or LongPoll session): the
/// origin, the params and `vsn`, and the application's connect callback.
pub(crate) fn connect_session(
    req: &RequestHead,
    peer_addr: SocketAddr,
    config: &Config,
    connect: &ConnectFn,
    auth_token: Option<String>,
) -> Result<Session, Refusal> {
    check_origin(req, peer_addr, config)?;
    let mut params = parse_query(&req.query);
    let vsn = Vsn::negotiate(params.remove("vsn").as_deref()).ok_or(403u16)?;
    let info = ConnectInfo {
        params,
        auth_token,
        peer_addr,
        user_agent: req.header("user-agent").map(str::to_string),
        x_headers: x_headers(req),
    };
    let connected = connect(&info).map_err(|r| {
        crate::limits::count(&crate::limits::REFUSALS.connect);
        log::warn!("refused socket from {peer_addr}: {}", crate::logger::shown(&r.reason));
        Refusal { status: r.status, body: r.reason.into() }
    })?;
    Ok(Session { vsn, assigns: connected.assigns, socket_id: connected.id })
}

/// The origin rule (`crate::origin`) for a socket request, WebSocket or LongPoll: 403 with the
/// reason, which is logged.
pub(crate) fn check_origin(
    req: &RequestHead,
    peer_addr: SocketAddr,
    config: &Config,
) -> Result<(), Refusal> {
    crate::origin::check(req.header("origin"), req.header("host"), &config.check_origin).map_err(
        |reason| {
            crate::limits::count(&crate::limits::REFUSALS.origin);
            log::warn!("refused socket from {peer_addr}: {}", crate::logger::shown(&reason));
            Refusal { status: 403, body: reason.into() }
        },
    )
}

/// RFC 6455 §4.2.1: the request must be an HTTP/1.1 upgrade to `websocket`, version 13, with a
/// key of 16 base64-encoded bytes. Returns the key, or why the request is not an upgrade.
fn valid_upgrade(req: &RequestHead) -> Result<&str, &'static str> {
    if !req.http11 {
        return Err("a websocket upgrade needs HTTP/1.1");
    }
    if !req.has_token("upgrade", "websocket") {
        return Err("'upgrade' header must contain 'websocket'");
    }
    if !req.has_token("connection", "upgrade") {
        return Err("'connection' header must contain 'upgrade'");
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err("'sec-websocket-version' header must be 13");
    }
    let key = req.header("sec-websocket-key").map(str::trim).unwrap_or("");
    if base64_decode(key).map(|k| k.len()) != Some(16) {
        return Err("'sec-websocket-key' header must be 16 base64-encoded bytes");
    }
    Ok(key)
}

fn x_headers(req: &RequestHead) -> Vec<(String, String)> {
    req.headers()
        .filter(|(name, _)| name.starts_with("x-"))
        .map(|(name, v)| (name.to_string(), v.to_string()))
        .collect()
}

/// The `Sec-WebSocket-Protocol` offer: phoenix.js sends `phoenix` and, with `authToken`,
/// `base64url.bearer.phx.<base64 of the token>`.
struct Subprotocols {
    offered_phoenix: bool,
    offered_any: bool,
    auth_token: Option<String>,
}

const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

impl Subprotocols {
    fn parse(header: Option<&str>) -> Subprotocols {
        let entries: Vec<&str> =
            header.unwrap_or("").split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
        let auth_token = entries
            .iter()
            .find_map(|e| e.strip_prefix(AUTH_TOKEN_PREFIX))
            .and_then(base64_decode)
            .and_then(|bytes| String::from_utf8(bytes).ok());
        Subprotocols {
            offered_phoenix: entries.contains(&"phoenix"),
            offered_any: !entries.is_empty(),
            auth_token,
        }
    }
}

/// Lenient base64: standard or URL-safe alphabet, padding optional (phoenix.js uses `btoa`
/// and strips `=` despite the `base64url` prefix).
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// `a=1&b=x%20y` → map; `+` is a space; duplicate keys keep the last value.
pub(crate) fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if hex_pair(&bytes[i + 1..]).is_some() => {
                out.push(hex_pair(&bytes[i + 1..]).expect("checked"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_pair(bytes: &[u8]) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    Some((hex(*bytes.first()?)? * 16 + hex(*bytes.get(1)?)?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let q = parse_query("token=a%2Fb&name=J+D&vsn=2.0.0&token=last&flag&bad=%zz&end=%4");
        assert_eq!(q["token"], "last");
        assert_eq!(q["name"], "J D");
        assert_eq!(q["flag"], "");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }

    #[test]
    fn base64_variants() {
        assert_eq!(base64_decode("aGVsbG8/Pz4+").unwrap(), b"hello??>>");
        assert_eq!(base64_decode("aGVsbG8_Pz4-").unwrap(), b"hello??>>");
        assert_eq!(base64_decode("dG9rZW4").unwrap(), b"token");
        assert_eq!(base64_decode("dG9rZW4=").unwrap(), b"token");
        assert_eq!(base64_decode("not base64!"), None);
    }

    #[test]
    fn subprotocol_offer() {
        let p = Subprotocols::parse(Some("phoenix, base64url.bearer.phx.dG9rZW4"));
        assert!(p.offered_phoenix);
        assert_eq!(p.auth_token.as_deref(), Some("token"));
        let none = Subprotocols::parse(None);
        assert!(!none.offered_any && none.auth_token.is_none());
    }
}
