//! The WebSocket transport: the HTTP upgrade (`Phoenix.Transports.WebSocket.call/2`) and the
//! stream adapter that lets tungstenite read on the socket thread while its writes go through
//! the connection's ordered outbound side (`conn.rs`).
//!
//! **Invariant:** the only file that imports tungstenite's handshake; it turns a TCP stream into a
//! `WebSocket<WsStream>` plus the `Session` the connect callback produced, or refuses it with the
//! HTTP status Phoenix would use (404 wrong path, 403 refused/bad vsn/bad origin).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{HandshakeError, WebSocket};

use super::conn::{Chunk, ConnShared};
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

/// A refused connect. Browsers never show the status to JavaScript; other clients may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
}

impl Default for Refused {
    fn default() -> Refused {
        Refused { status: 403 }
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

/// The stream tungstenite drives: reads come from the TCP stream, writes (pongs and close
/// replies) are collected and, once the outbox is attached, sent in order with every other
/// frame of the connection. Before that (during the handshake) they go straight to the stream.
pub(crate) struct WsStream {
    tcp: Arc<TcpStream>,
    outbox: Option<Arc<ConnShared>>,
    pending: Vec<u8>,
}

impl WsStream {
    pub fn attach(&mut self, outbox: Arc<ConnShared>) {
        self.outbox = Some(outbox);
    }

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
        match self.outbox {
            None => (&*self.tcp).write(buf),
            Some(_) => {
                self.pending.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let Some(outbox) = &self.outbox else { return (&*self.tcp).flush() };
        if self.pending.is_empty() {
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.pending);
        if outbox.send(Chunk::Owned(bytes)) {
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

pub(crate) fn accept(
    tcp: Arc<TcpStream>,
    peer_addr: SocketAddr,
    config: &Config,
    connect: &ConnectFn,
) -> Result<(WebSocket<WsStream>, Session), HandshakeFailure> {
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(0)
        .max_frame_size(Some(config.max_frame_bytes))
        .max_message_size(Some(config.max_frame_bytes));
    let stream = WsStream { tcp, outbox: None, pending: Vec::new() };
    let mut session = None;
    let mut refused = None;
    let callback = |req: &Request, resp: Response| {
        let result = upgrade(req, resp, peer_addr, config, connect);
        match result {
            Ok((resp, s)) => {
                session = Some(s);
                Ok(resp)
            }
            Err(status) => {
                refused = Some(status);
                Err(error_response(status))
            }
        }
    };
    let result = match tungstenite::accept_hdr_with_config(stream, callback, Some(ws_config)) {
        Ok(ws) => Ok(ws),
        Err(HandshakeError::Interrupted(_)) => Err("handshake timed out".to_string()),
        Err(HandshakeError::Failure(e)) => Err(e.to_string()),
    };
    match (result, refused) {
        (Ok(ws), _) => Ok((ws, session.expect("callback accepted the upgrade"))),
        (Err(_), Some(status)) => Err(HandshakeFailure::Refused(status)),
        (Err(why), None) => Err(HandshakeFailure::Failed(why)),
    }
}

fn error_response(status: u16) -> ErrorResponse {
    let mut resp = ErrorResponse::new(None);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    resp
}

/// The decision of `Phoenix.Transports.WebSocket.call/2`, in its order: path, origin, params,
/// vsn, auth token and subprotocols, then the application's connect callback.
fn upgrade(
    req: &Request,
    mut resp: Response,
    peer_addr: SocketAddr,
    config: &Config,
    connect: &ConnectFn,
) -> Result<(Response, Session), u16> {
    if req.uri().path() != format!("{}/websocket", config.ws_path.trim_end_matches('/')) {
        return Err(404);
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if !origin_allowed(header("origin"), &config.check_origin) {
        log::warn!("refused websocket from {peer_addr}: origin {:?} not allowed", header("origin"));
        return Err(403);
    }
    let mut params = parse_query(req.uri().query().unwrap_or(""));
    let vsn = Vsn::negotiate(params.remove("vsn").as_deref()).ok_or(403u16)?;
    let protocols = Subprotocols::parse(header("sec-websocket-protocol"));
    if protocols.offered_phoenix {
        resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("phoenix"));
    } else if protocols.offered_any {
        // A browser that offered subprotocols fails unless one is selected; we only speak
        // "phoenix" (Phoenix answers 403 here too).
        return Err(403);
    }
    let info = ConnectInfo {
        params,
        auth_token: protocols.auth_token,
        peer_addr,
        user_agent: header("user-agent").map(str::to_string),
        x_headers: x_headers(req),
    };
    let connected = connect(&info).map_err(|r| r.status)?;
    Ok((resp, Session { vsn, assigns: connected.assigns, socket_id: connected.id }))
}

fn x_headers(req: &Request) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-"))
        .filter_map(|(name, v)| Some((name.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// `Origin` check: no header, or an empty allow-list, passes. Entries are host names, and
/// `*.example.com` matches example.com and its subdomains (scheme and port are not compared).
fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else { return true };
    if allowed.is_empty() {
        return true;
    }
    let host = origin.split("://").nth(1).unwrap_or(origin);
    let host = host.split(['/', ':']).next().unwrap_or("");
    allowed.iter().any(|a| match a.strip_prefix("*.") {
        Some(domain) => host == domain || host.ends_with(&format!(".{domain}")),
        None => host == a,
    })
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

    #[test]
    fn origins() {
        let allowed = vec!["example.com".to_string(), "*.other.com".to_string()];
        assert!(origin_allowed(None, &allowed));
        assert!(origin_allowed(Some("https://example.com"), &allowed));
        assert!(origin_allowed(Some("http://a.b.other.com:8080"), &allowed));
        assert!(origin_allowed(Some("http://other.com"), &allowed));
        assert!(!origin_allowed(Some("http://evil.com"), &allowed));
        assert!(!origin_allowed(Some("http://notother.com"), &allowed));
        assert!(origin_allowed(Some("http://evil.com"), &[]));
    }
}
