//! phx-threads patch 6: request framing (RFC 9112 §6) and reading the whole body on the
//! connection's own thread, before a handler sees the request. Upstream read a request with
//! both `Content-Length` and `Transfer-Encoding` (any value) as chunked and kept the
//! connection open, so a second, smuggled request was answered; and a handler read the body
//! itself, so 8 clients trickling bodies held all 8 handler threads.

use std::io::{BufRead, ErrorKind, Read};

use crate::common::Header;
use crate::head::{self, HeadError, Line};
use crate::refusal::Refusal;

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// What reading the body gave.
pub(crate) enum Body {
    Complete(Vec<u8>),
    /// `Content-Length` above the limit: the body is left unread, the handler sees its
    /// declared length (and answers 413 if it wanted one), and the connection closes.
    Oversized(u64),
}

/// Longest chunk-size line (the size and any extensions, which are ignored).
const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// RFC 9112 §6.1–§6.3: `Transfer-Encoding` and `Content-Length` together, several or
/// malformed lengths are 400; a transfer coding other than exactly `chunked` is 501. Header
/// values are compared case-insensitively and without surrounding whitespace (OWS).
pub(crate) fn framing(headers: &[Header]) -> Result<Framing, Refusal> {
    let (codings, lengths) =
        (values(headers, "Transfer-Encoding"), values(headers, "Content-Length"));
    match (codings.is_empty(), lengths.as_slice()) {
        (false, []) => transfer_coding(&codings),
        (false, _) => Err(Refusal::new(400, "both Content-Length and Transfer-Encoding")),
        (true, []) => Ok(Framing::None),
        (true, [length]) => content_length(length),
        (true, _) => Err(Refusal::new(400, "more than one Content-Length")),
    }
}

fn values<'h>(headers: &'h [Header], name: &'static str) -> Vec<&'h str> {
    let named = headers.iter().filter(|h| h.field.equiv(name));
    named.map(|h| h.value.as_str()).collect()
}

fn transfer_coding(codings: &[&str]) -> Result<Framing, Refusal> {
    let joined = codings.join(",");
    let list: Vec<&str> = joined.split(',').map(|c| c.trim_matches([' ', '\t'])).collect();
    match list[..] {
        [coding] if coding.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
        _ => Err(Refusal::new(501, format!("unsupported Transfer-Encoding: {joined}"))),
    }
}

fn content_length(value: &str) -> Result<Framing, Refusal> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse() {
        Ok(n) if digits => Ok(Framing::Length(n)),
        _ => Err(Refusal::new(400, format!("invalid Content-Length: {value}"))),
    }
}

/// Reads the body `framing` announces, at most `max` bytes. `reader` enforces the deadline.
pub(crate) fn read_body(
    reader: &mut impl BufRead,
    framing: Framing,
    max: usize,
) -> Result<Body, HeadError> {
    match framing {
        Framing::None => Ok(Body::Complete(Vec::new())),
        Framing::Length(n) if n > max as u64 => Ok(Body::Oversized(n)),
        Framing::Length(n) => read_exact(reader, n as usize, Vec::new()).map(Body::Complete),
        Framing::Chunked => read_chunked(reader, max).map(Body::Complete),
    }
}

/// Appends exactly `n` bytes to `body`.
fn read_exact(
    reader: &mut impl BufRead,
    n: usize,
    mut body: Vec<u8>,
) -> Result<Vec<u8>, HeadError> {
    let start = body.len();
    body.resize(start + n, 0);
    let mut filled = start;
    while filled < body.len() {
        match reader.read(&mut body[filled..]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(k) => filled += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(body_failed(&e)),
        }
    }
    Ok(body)
}

/// RFC 9112 §7.1: chunks until the zero-size one, then trailer fields (read and dropped).
fn read_chunked(reader: &mut impl BufRead, max: usize) -> Result<Vec<u8>, HeadError> {
    let mut body = Vec::new();
    loop {
        let size = chunk_size(reader)?;
        if size == 0 {
            let mut budget = head::MAX_LINE_BYTES * 4;
            head::read_fields(reader, &mut budget).map_err(body_error)?;
            return Ok(body);
        }
        if body.len().saturating_add(size) > max {
            // No detail: the same answer as a handler's 413 for a declared length.
            return Err(Refusal::new(413, "").into());
        }
        body = read_exact(reader, size, body)?;
        let mut budget = 3; // CRLF, and one byte to tell an over-long line
        let end = head::read_line(reader, Line::Header, &mut budget, false).map_err(body_error)?;
        if !end.is_empty() {
            return Err(Refusal::new(400, "chunk data not followed by CRLF").into());
        }
    }
}

/// `chunk-size [ chunk-ext ] CRLF`, the size in hex.
fn chunk_size(reader: &mut impl BufRead) -> Result<usize, HeadError> {
    let mut budget = MAX_CHUNK_LINE_BYTES;
    let line = head::read_line(reader, Line::Header, &mut budget, false).map_err(body_error)?;
    let hex = line.split(';').next().unwrap_or("").trim_end_matches([' ', '\t']);
    let valid = !hex.is_empty() && hex.len() <= 15 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    match usize::from_str_radix(hex, 16) {
        Ok(size) if valid => Ok(size),
        _ => Err(Refusal::new(400, "bad chunk size").into()),
    }
}

/// Errors of the line reader, restated for a body: any refusal of a chunk or trailer line is
/// a malformed body (400), except the deadline (408).
fn body_error(e: HeadError) -> HeadError {
    match e {
        HeadError::Refused(r) if r.status == 408 => timed_out(),
        HeadError::Refused(_) => Refusal::new(400, "malformed chunked body").into(),
        HeadError::Closed => HeadError::Closed,
    }
}

fn body_failed(e: &std::io::Error) -> HeadError {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => timed_out(),
        _ => HeadError::Closed,
    }
}

fn timed_out() -> HeadError {
    Refusal::new(408, "request body not received in time").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Vec<Header> {
        list.iter().map(|(n, v)| Header::from_bytes(n.as_bytes(), v.as_bytes()).unwrap()).collect()
    }

    fn status(list: &[(&str, &str)]) -> u16 {
        framing(&headers(list)).map_or_else(|r| r.status, |_| 200)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(framing(&headers(&[("transfer-encoding", "CHUNKED")])), Ok(Framing::Chunked));
        assert_eq!(framing(&headers(&[("Content-Length", "12")])), Ok(Framing::Length(12)));
        assert_eq!(status(&[("Content-Length", "3"), ("Transfer-Encoding", "chunked")]), 400);
        assert_eq!(status(&[("Transfer-Encoding", "xchunked")]), 501);
        assert_eq!(status(&[("Transfer-Encoding", "gzip, chunked")]), 501);
        assert_eq!(status(&[("Transfer-Encoding", "identity")]), 501);
        assert_eq!(
            status(&[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")]),
            501
        );
        assert_eq!(status(&[("Content-Length", "3"), ("Content-Length", "3")]), 400);
        assert_eq!(status(&[("Content-Length", "3, 3")]), 400);
        assert_eq!(status(&[("Content-Length", "+3")]), 400);
    }

    #[test]
    fn chunked_bodies() {
        let read = |raw: &[u8]| match read_body(&mut &raw[..], Framing::Chunked, 10) {
            Ok(Body::Complete(body)) => Ok(body),
            Ok(Body::Oversized(_)) => Err(0),
            Err(HeadError::Refused(r)) => Err(r.status),
            Err(HeadError::Closed) => Err(1),
        };
        assert_eq!(read(b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"), Ok(b"abcde".to_vec()));
        assert_eq!(read(b"zz\r\nabc\r\n0\r\n\r\n"), Err(400));
        assert_eq!(read(b"3\r\nabcX\r\n0\r\n\r\n"), Err(400));
        assert_eq!(read(b"b\r\n"), Err(413));
    }
}
