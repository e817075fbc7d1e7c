//! Just enough HTTP/1.1 for the WebSocket upgrade: read one request head, bounded in size and
//! time, and format a response.
//!
//! Why not tungstenite's handshake: it parses into a 124-slot header array and an `http`
//! request on the stack (about 16 KiB deep), and those pages would stay resident under every
//! socket thread for the connection's whole life; running it on a separate short-lived thread
//! instead cost a thread creation per connect. Here the head and its headers live on the heap,
//! so the upgrade runs on the socket thread itself and leaves its stack shallow.

use std::fmt;
use std::io::{self, Read};
use std::net::TcpStream;
use std::time::Instant;

/// Largest request head accepted (request line and headers); beyond it the answer is 431.
pub(crate) const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Most header lines accepted; beyond it the answer is 431.
const MAX_HEADERS: usize = 64;
/// Bytes asked of the kernel per read while the head is incomplete.
const READ_CHUNK: usize = 1024;

/// A parsed request head. Header names are lower-cased; values are kept as sent (lossy UTF-8).
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: String,
    /// The request target's path, without the query.
    pub path: String,
    /// The query string without `?`; empty if there was none.
    pub query: String,
    /// True for HTTP/1.1 (the upgrade needs it), false for HTTP/1.0.
    pub http11: bool,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header called `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// True if any header called `name` lists `token` in its comma-separated value
    /// (case-insensitive), as `Connection: keep-alive, Upgrade` does.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// Why no request head could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The client closed the stream before the head was complete.
    Closed,
    /// The deadline passed first.
    TimedOut,
    /// More than `MAX_HEAD_BYTES` or `MAX_HEADERS`: answer 431.
    TooLarge,
    /// Not HTTP/1.x: answer 400.
    Malformed,
    Io(io::Error),
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Closed => f.write_str("client closed before the request was complete"),
            HeadError::TimedOut => f.write_str("request not complete before the handshake timeout"),
            HeadError::TooLarge => f.write_str("request head too large"),
            HeadError::Malformed => f.write_str("malformed HTTP request"),
            HeadError::Io(e) => write!(f, "read failed: {e}"),
        }
    }
}

/// Reads one request head from `stream` before `deadline`. Returns it with whatever the client
/// sent after it (the start of its first WebSocket frame, if it did not wait for our answer).
pub(crate) fn read_head(
    mut stream: &TcpStream,
    deadline: Instant,
) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let filled = buf.len();
        if filled >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        buf.resize((filled + READ_CHUNK).min(MAX_HEAD_BYTES), 0);
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => buf.truncate(filled + n),
            Err(e) => {
                buf.truncate(filled);
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        return Err(HeadError::TimedOut);
                    }
                    _ => return Err(HeadError::Io(e)),
                }
            }
        }
        // The end marker may straddle the previous read.
        let from = filled.saturating_sub(3);
        if let Some(at) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + at + 4;
            let head = parse(&buf[..end])?;
            return Ok((head, buf.split_off(end)));
        }
    }
}

pub(crate) fn parse(bytes: &[u8]) -> Result<RequestHead, HeadError> {
    let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = req
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    Ok(RequestHead {
        method: req.method.unwrap_or_default().to_string(),
        path: path.to_string(),
        query: query.to_string(),
        http11: req.version == Some(1),
        headers,
    })
}

/// A complete response head (and `body`, if any). Responses other than 101 close the
/// connection, so they say so.
pub(crate) fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    typed_response(status, headers, "text/plain", body)
}

/// A JSON response (LongPoll), never cached: every answer is about this moment.
pub(crate) fn json_response(status: u16, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut headers = vec![("cache-control", "no-store")];
    headers.extend_from_slice(extra);
    typed_response(status, &headers, "application/json; charset=utf-8", body)
}

pub(crate) fn typed_response(
    status: u16,
    headers: &[(&str, &str)],
    ctype: &str,
    body: &str,
) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if status != 101 {
        out.push_str(&format!(
            "connection: close\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_browser_upgrade() {
        let raw = b"GET /socket/websocket?vsn=2.0.0&token=a HTTP/1.1\r\nHost: x\r\n\
            Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let head = parse(raw).unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str()), ("GET", "/socket/websocket"));
        assert_eq!(head.query, "vsn=2.0.0&token=a");
        assert!(head.http11);
        assert_eq!(head.header("host"), Some("x"));
        assert!(head.has_token("connection", "upgrade"));
        assert!(!head.has_token("connection", "close"));
    }

    #[test]
    fn rejects_garbage_and_too_many_headers() {
        assert!(matches!(parse(b"\x16\x03\x01 hello\r\n\r\n"), Err(HeadError::Malformed)));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many), Err(HeadError::TooLarge)));
    }

    #[test]
    fn responses_close_unless_switching() {
        let r = String::from_utf8(response(403, &[], "no")).unwrap();
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{r}");
        assert!(r.contains("connection: close\r\n") && r.ends_with("\r\n\r\nno"), "{r}");
        let ok = String::from_utf8(response(101, &[("upgrade", "websocket")], "")).unwrap();
        assert_eq!(ok, "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n");
    }
}
