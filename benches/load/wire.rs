//! The bytes on the wire: the WebSocket client handshake, client (masked) and server
//! (unmasked) frames, and the two application protocols the generator speaks: Phoenix V2 JSON
//! arrays and Socket.IO v4 over Engine.IO v4.
//!
//! Everything here is pure (no I/O), so the event loop in `driver.rs` stays about sockets.

use std::borrow::Cow;

use serde::Deserialize;

/// Which application protocol a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Phoenix,
    SocketIo,
}

/// The HTTP/1.1 upgrade request. Returns the request bytes and the `Sec-WebSocket-Accept` value
/// the server must answer with.
pub fn handshake_request(host: &str, path: &str) -> (Vec<u8>, String) {
    let key = tungstenite::handshake::client::generate_key();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    (req.into_bytes(), accept)
}

/// Outcome of looking at the start of the read buffer while waiting for the `101` response.
pub enum HandshakeReply {
    /// Not all headers have arrived yet.
    Partial,
    /// Upgrade accepted; the response took this many bytes (frames may follow).
    Accepted(usize),
    /// Anything else, with a short reason.
    Refused(String),
}

pub fn parse_handshake_reply(buf: &[u8], accept: &str) -> HandshakeReply {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 16 * 1024 {
            HandshakeReply::Refused("oversized handshake response".into())
        } else {
            HandshakeReply::Partial
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 101") {
        return HandshakeReply::Refused(status.to_string());
    }
    let accepted = head.lines().any(|l| {
        let mut it = l.splitn(2, ':');
        let name = it.next().unwrap_or("").trim();
        let value = it.next().unwrap_or("").trim();
        name.eq_ignore_ascii_case("sec-websocket-accept") && value == accept
    });
    if accepted {
        HandshakeReply::Accepted(end + 4)
    } else {
        HandshakeReply::Refused("bad Sec-WebSocket-Accept".into())
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A server frame found at the start of a buffer.
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// Range of the payload inside the buffer.
    pub payload: std::ops::Range<usize>,
    /// Total bytes the frame took.
    pub len: usize,
}

/// Parses one frame from `buf`. `Ok(None)`: need more bytes. Masked server frames are refused.
pub fn decode_frame(buf: &[u8]) -> Result<Option<Frame>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err("masked frame from server");
    }
    let (len, hdr) = match b1 & 0x7f {
        126 if buf.len() < 4 => return Ok(None),
        126 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() < 10 => return Ok(None),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if len > 64 * 1024 * 1024 {
        return Err("frame too large");
    }
    if buf.len() < hdr + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        payload: hdr..hdr + len,
        len: hdr + len,
    }))
}

/// The fields of a received message the generator cares about, for both protocols.
#[derive(Debug, Default, PartialEq)]
pub struct Incoming<'a> {
    pub kind: Kind,
    /// Reply / ack reference (Phoenix `ref`, Socket.IO ack id).
    pub reference: Option<u64>,
    pub topic: Cow<'a, str>,
    pub event: Cow<'a, str>,
    /// Reply status (`ok`, `error`) for Phoenix replies.
    pub status: Option<Cow<'a, str>>,
    /// `body` of a `new_msg` broadcast, or the `name` of a superhero in a `create`/`update`.
    pub stamp: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, PartialEq, Clone, Copy)]
pub enum Kind {
    /// A reply to one of our requests (Phoenix `phx_reply`, Socket.IO ack).
    Reply,
    /// A push/broadcast from the server.
    Push,
    /// Engine.IO open packet `0{...}`.
    EioOpen,
    /// Engine.IO ping `2`: must be answered with `3`.
    EioPing,
    /// Socket.IO namespace connect acknowledgement `40{...}`.
    SioConnected,
    /// A close/disconnect packet or anything else we ignore.
    #[default]
    Other,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    body: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    superhero: Option<Hero<'a>>,
}

#[derive(Deserialize)]
struct Hero<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

type V2<'a> = (Option<Cow<'a, str>>, Option<Cow<'a, str>>, Cow<'a, str>, Cow<'a, str>, Payload<'a>);

/// Parses a Phoenix V2 JSON text frame.
pub fn parse_phoenix(text: &str) -> Option<Incoming<'_>> {
    let (_join_ref, reference, topic, event, payload): V2<'_> = serde_json::from_str(text).ok()?;
    let reference = reference.and_then(|r| r.parse().ok());
    let kind = if event == "phx_reply" { Kind::Reply } else { Kind::Push };
    let stamp = payload.body.or(payload.superhero.and_then(|h| h.name));
    Some(Incoming { kind, reference, topic, event, status: payload.status, stamp })
}

/// Parses an Engine.IO v4 / Socket.IO v4 text packet (default namespace only).
pub fn parse_socketio(text: &str) -> Option<Incoming<'_>> {
    let mut msg = Incoming::default();
    let b = text.as_bytes();
    match b.first()? {
        b'0' => msg.kind = Kind::EioOpen,
        b'2' => msg.kind = Kind::EioPing,
        b'4' => match b.get(1)? {
            b'0' => msg.kind = Kind::SioConnected,
            b'2' | b'3' => {
                let digits = b[2..].iter().take_while(|c| c.is_ascii_digit()).count();
                let id = &text[2..2 + digits];
                msg.reference = id.parse().ok();
                let rest = &text[2 + digits..];
                if b[1] == b'3' {
                    msg.kind = Kind::Reply;
                    msg.status = Some(Cow::Borrowed("ok"));
                } else {
                    let (event, payload): (Cow<'_, str>, Payload<'_>) =
                        serde_json::from_str(rest).ok()?;
                    msg.kind = Kind::Push;
                    msg.event = event;
                    msg.stamp = payload.body;
                }
            }
            _ => {}
        },
        _ => {}
    }
    Some(msg)
}

/// Body of a timed message: `<seq>:<ns since the shared epoch>:<padding>`.
pub fn stamp_body(seq: u64, ts_ns: u64, pad: usize) -> String {
    let mut s = format!("{seq}:{ts_ns}:");
    s.extend(std::iter::repeat_n('x', pad));
    s
}

/// Reads `<seq>:<ts_ns>` back from a body (or a superhero name `bench:<seq>:<ts_ns>`).
pub fn parse_stamp(s: &str) -> Option<(u64, u64)> {
    let s = s.strip_prefix("bench:").unwrap_or(s);
    let mut it = s.splitn(3, ':');
    let seq = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((seq, ts))
}

/// Client → server text for each request kind.
pub mod out {
    use super::Proto;
    use std::fmt::Write;

    pub fn join(proto: Proto, buf: &mut String, reference: u64, topic: &str) {
        buf.clear();
        match proto {
            Proto::Phoenix => {
                let _ = write!(buf, r#"["{reference}","{reference}","{topic}","phx_join",{{}}]"#);
            }
            Proto::SocketIo => {
                let _ = write!(buf, r#"42{reference}["join","{topic}"]"#);
            }
        }
    }

    pub fn heartbeat(proto: Proto, buf: &mut String, reference: u64) {
        buf.clear();
        match proto {
            Proto::Phoenix => {
                let _ = write!(buf, r#"[null,"{reference}","phoenix","heartbeat",{{}}]"#);
            }
            Proto::SocketIo => {
                let _ = write!(buf, r#"42{reference}["hb"]"#);
            }
        }
    }

    /// A `new_msg` push; `body` must need no JSON escaping (digits, `:` and `x`).
    pub fn new_msg(
        proto: Proto,
        buf: &mut String,
        join_ref: u64,
        reference: u64,
        topic: &str,
        body: &str,
    ) {
        buf.clear();
        match proto {
            Proto::Phoenix => {
                let _ = write!(
                    buf,
                    r#"["{join_ref}","{reference}","{topic}","new_msg",{{"body":"{body}"}}]"#
                );
            }
            Proto::SocketIo => {
                let _ = write!(buf, r#"42["new_msg",{{"body":"{body}"}}]"#);
            }
        }
    }
}

/// Checks of the pure code above, run at the start of every bench run (a `harness = false`
/// bench runs no `#[test]`s).
pub fn selftest() {
    {
        // frame_roundtrip_unmasked
        let mut f = vec![0x81, 5];
        f.extend_from_slice(b"hello");
        let fr = decode_frame(&f).unwrap().unwrap();
        assert_eq!(&f[fr.payload.clone()], b"hello");
        assert_eq!(fr.len, 7);
        assert!(decode_frame(&f[..4]).unwrap().is_none());
    }

    {
        // masked_encoding
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, &[0u8; 200], [1, 2, 3, 4]);
        assert_eq!(out[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 200);
        assert_eq!(&out[8..12], &[1, 2, 3, 4]);
    }

    {
        // phoenix_frames
        let m = parse_phoenix(r#"[null,null,"room:x","new_msg",{"body":"7:123:xx"}]"#).unwrap();
        assert_eq!(m.kind, Kind::Push);
        assert_eq!(parse_stamp(m.stamp.as_deref().unwrap()), Some((7, 123)));
        let r = parse_phoenix(r#"[null,"5","phoenix","phx_reply",{"status":"ok","response":{}}]"#)
            .unwrap();
        assert_eq!((r.kind, r.reference, r.status.as_deref()), (Kind::Reply, Some(5), Some("ok")));
    }

    {
        // socketio_packets
        assert_eq!(parse_socketio(r#"0{"sid":"a"}"#).unwrap().kind, Kind::EioOpen);
        assert_eq!(parse_socketio("2").unwrap().kind, Kind::EioPing);
        assert_eq!(parse_socketio(r#"40{"sid":"b"}"#).unwrap().kind, Kind::SioConnected);
        let a = parse_socketio(r#"4312[{"status":"ok"}]"#).unwrap();
        assert_eq!((a.kind, a.reference), (Kind::Reply, Some(12)));
        let e = parse_socketio(r#"42["new_msg",{"body":"1:2:"}]"#).unwrap();
        assert_eq!(e.stamp.as_deref(), Some("1:2:"));
    }
}
