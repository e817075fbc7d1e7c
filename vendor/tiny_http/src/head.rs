//! phx-threads patch 6: reading one request head (RFC 9112 §2–§5) under limits. Upstream
//! accepted lower-case methods, `HTTP/9.9`-style versions as a bare 400, header lines without
//! a colon, and closed the connection without an answer on non-ASCII bytes or long lines.
//! Here every violation is a `Refusal` with the status RFC 9110 names for it; the caller
//! answers it and closes.

use std::io::{BufRead, ErrorKind};

use crate::common::{HTTPVersion, Header, Method};
use crate::refusal::Refusal;

/// Longest request line (414 past it) and header line (431 past it), without the CRLF.
pub(crate) const MAX_LINE_BYTES: usize = 8 * 1024;
/// Most header lines in one head (431 past it).
pub(crate) const MAX_HEADERS: usize = 100;
/// Largest whole head (431 past it): 100 lines of 8 KiB would be 800 KiB.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Methods we recognise (case-sensitive, RFC 9110 §9.1); any other token is 501.
/// phx-threads patch 8: `QUERY` (the IETF httpbis safe-query draft) is passed on, so the
/// application answers it 405 with `Allow` like any method a path does not take (schemathesis
/// sends it as an undeclared method); other unknown methods stay 501.
const KNOWN_METHODS: [&str; 10] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"];

pub(crate) struct Head {
    pub method: Method,
    pub target: String,
    pub version: HTTPVersion,
    pub headers: Vec<Header>,
}

/// Why no head was read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// Answer this, then close.
    Refused(Refusal),
    /// Close without an answer: the peer went away, or sent nothing before the deadline
    /// (an idle keep-alive connection), or the socket failed.
    Closed,
}

impl From<Refusal> for HeadError {
    fn from(refusal: Refusal) -> HeadError {
        HeadError::Refused(refusal)
    }
}

/// Which line is being read: decides the status for an over-long one.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Line {
    Request,
    Header,
}

/// Reads a request head. `reader` enforces the deadline: a read past it fails with a
/// timeout, which is 408 once any byte has arrived.
pub(crate) fn read_head(reader: &mut impl BufRead) -> Result<Head, HeadError> {
    let mut budget = MAX_HEAD_BYTES;
    let line = read_line(reader, Line::Request, &mut budget, true)?;
    let (method, target, version) = parse_request_line(&line)?;
    let headers = read_fields(reader, &mut budget)?;
    Ok(Head { method, target, version, headers })
}

/// Reads header (or trailer) lines up to the empty line.
pub(crate) fn read_fields(
    reader: &mut impl BufRead,
    budget: &mut usize,
) -> Result<Vec<Header>, HeadError> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, Line::Header, budget, false)?;
        if line.is_empty() {
            return Ok(headers);
        }
        if headers.len() == MAX_HEADERS {
            return Err(Refusal::new(431, "too many header fields").into());
        }
        headers.push(parse_field(&line)?);
    }
}

/// One CRLF-terminated line of visible ASCII (plus SP and HT), without its CRLF. Bytes are
/// checked as they arrive, so binary garbage such as a TLS ClientHello is refused at once.
/// `first` marks the first line of a request: a timeout or EOF before its first byte is a
/// silent close.
pub(crate) fn read_line(
    reader: &mut impl BufRead,
    kind: Line,
    budget: &mut usize,
    first: bool,
) -> Result<String, HeadError> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok([]) => return Err(HeadError::Closed),
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_failed(&e, first && line.is_empty())),
        };
        let (taken, done) = scan(available, &mut line)?;
        reader.consume(taken);
        check_length(&line, kind, budget, taken)?;
        if done {
            return finish_line(line);
        }
    }
}

/// Appends bytes up to and including the first LF; returns how many were taken and whether
/// the line is complete.
fn scan(available: &[u8], line: &mut Vec<u8>) -> Result<(usize, bool), Refusal> {
    for (i, &byte) in available.iter().enumerate() {
        if byte == b'\n' {
            return Ok((i + 1, true));
        }
        if !(byte == b'\t' || byte == b'\r' || (0x20..0x7f).contains(&byte)) {
            return Err(Refusal::new(400, "request head is not visible ASCII"));
        }
        line.push(byte);
    }
    Ok((available.len(), false))
}

fn check_length(line: &[u8], kind: Line, budget: &mut usize, taken: usize) -> Result<(), Refusal> {
    *budget = budget.saturating_sub(taken);
    if line.len() > MAX_LINE_BYTES + 1 && kind == Line::Request {
        return Err(Refusal::new(414, "request line too long"));
    }
    if line.len() > MAX_LINE_BYTES + 1 || *budget == 0 {
        return Err(Refusal::new(431, "request header fields too large"));
    }
    Ok(())
}

/// A line must end in CRLF and hold no other CR (RFC 9112 §2.2: a bare CR is an error).
fn finish_line(mut line: Vec<u8>) -> Result<String, HeadError> {
    if line.pop() != Some(b'\r') || line.contains(&b'\r') {
        return Err(Refusal::new(400, "lines must end with CRLF").into());
    }
    Ok(String::from_utf8(line).expect("scan keeps only ASCII"))
}

/// A timeout before the request's first byte is an idle connection (closed silently);
/// later, the client was too slow (408).
fn read_failed(e: &std::io::Error, nothing_read: bool) -> HeadError {
    let timed_out = matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock);
    if timed_out && !nothing_read {
        HeadError::Refused(Refusal::new(408, "request head not received in time"))
    } else {
        HeadError::Closed
    }
}

/// `method SP request-target SP HTTP-version`; the version is judged first so that
/// `get / HTTP/9.9` is a 505, not a 501.
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), Refusal> {
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(Refusal::new(400, "malformed request line"));
    };
    let version = parse_version(version)?;
    if target.is_empty() || !is_token(method) {
        return Err(Refusal::new(400, "malformed request line"));
    }
    if !KNOWN_METHODS.contains(&method) {
        return Err(Refusal::new(501, format!("unknown method {method}")));
    }
    let method = method.parse().expect("a known method parses");
    Ok((method, target.to_owned(), version))
}

/// HTTP/1.0 and HTTP/1.1; any other well-formed version is 505 (RFC 9110 §15.6.6), anything
/// else is not a version at all (400).
fn parse_version(version: &str) -> Result<HTTPVersion, Refusal> {
    let digits = version.strip_prefix("HTTP/").map(str::as_bytes);
    match digits {
        Some(b"1.1") => Ok(HTTPVersion(1, 1)),
        Some(b"1.0") => Ok(HTTPVersion(1, 0)),
        Some([major, b'.', minor]) if major.is_ascii_digit() && minor.is_ascii_digit() => {
            Err(Refusal::new(505, format!("{version} is not supported; use HTTP/1.1")))
        }
        _ => Err(Refusal::new(400, "malformed HTTP version")),
    }
}

/// `field-name ":" OWS field-value OWS`; no whitespace before the colon (RFC 9112 §5.1) and
/// no obsolete line folding (§5.2).
fn parse_field(line: &str) -> Result<Header, Refusal> {
    if line.starts_with([' ', '\t']) {
        return Err(Refusal::new(400, "obsolete header line folding"));
    }
    let Some((name, value)) = line.split_once(':') else {
        return Err(Refusal::new(400, "header line without a colon"));
    };
    if !is_token(name) {
        return Err(Refusal::new(400, "invalid header field name"));
    }
    let value = value.trim_matches([' ', '\t']);
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .map_err(|()| Refusal::new(400, "invalid header field"))
}

/// RFC 9110 §5.6.2 `token`: one or more `tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Result<Head, HeadError> {
        read_head(&mut std::io::BufReader::new(raw))
    }

    fn status(raw: &[u8]) -> u16 {
        match head(raw) {
            Err(HeadError::Refused(r)) => r.status,
            Err(HeadError::Closed) => 0,
            Ok(_) => 200,
        }
    }

    #[test]
    fn statuses_follow_the_rfc() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(status(b"get / HTTP/1.1\r\n\r\n"), 501);
        assert_eq!(status(b"GET / HTTP/9.9\r\n\r\n"), 505);
        assert_eq!(status(b"GET / HTTQ/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET /  HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nA : b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\nA: b\r\n\r\n"), 400);
        assert_eq!(status(b"\x16\x03\x01\x02\x00\x01"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nA: b"), 0);
    }

    #[test]
    fn limits() {
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LINE_BYTES));
        assert_eq!(status(long_target.as_bytes()), 414);
        let long_header = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "a".repeat(MAX_LINE_BYTES));
        assert_eq!(status(long_header.as_bytes()), 431);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS + 1));
        assert_eq!(status(many.as_bytes()), 431);
        let max = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(MAX_HEADERS));
        assert_eq!(status(max.as_bytes()), 200);
    }
}
