//! The Phoenix wire protocol: messages, serializers and WebSocket framing.
//!
//! **Invariant:** pure. No threads, no I/O, no tungstenite; the only module that knows how a
//! Phoenix message looks on the wire. `v2` is the array form phoenix.js speaks (`vsn=2.0.0`),
//! `v1` the object form of old clients, `frame` wraps encoded messages in server WebSocket frames
//! so that a broadcast is framed once and the same bytes go to every subscriber.

pub mod frame;
pub mod v1;
pub mod v2;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// Topic of the socket-level heartbeat (`[null, ref, "phoenix", "heartbeat", {}]`).
pub const HEARTBEAT_TOPIC: &str = "phoenix";
pub const EVENT_HEARTBEAT: &str = "heartbeat";
pub const EVENT_JOIN: &str = "phx_join";
pub const EVENT_LEAVE: &str = "phx_leave";
pub const EVENT_REPLY: &str = "phx_reply";
pub const EVENT_CLOSE: &str = "phx_close";
pub const EVENT_ERROR: &str = "phx_error";

/// A message payload: JSON, JSON already encoded, or raw bytes carried in a V2 binary frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    /// JSON encoded once and written verbatim, so one encoding serves many pushes (the
    /// superheroes lobby sends the same change to every subscriber). Server-side only: client
    /// payloads always decode to `Json`.
    JsonText(JsonText),
    Binary(Vec<u8>),
}

/// A JSON document already encoded. It can only be made by serializing a value, so it is
/// always valid JSON; cloning shares the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(Arc<str>);

impl JsonText {
    /// Encodes `value` once.
    ///
    /// # Errors
    /// When `value` cannot be JSON (a map with non-string keys, a failing `Serialize` impl).
    pub fn encode(value: &impl Serialize) -> Result<JsonText, serde_json::Error> {
        Ok(JsonText(Arc::from(serde_json::to_string(value)?)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Payload {
    /// The empty object `{}`, Phoenix's default payload.
    pub fn empty() -> Payload {
        Payload::Json(Value::Object(Default::default()))
    }

    /// The payload as a JSON value; `None` for binary and pre-encoded payloads.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Payload::Json(v) => Some(v),
            Payload::JsonText(_) | Payload::Binary(_) => None,
        }
    }

    /// Appends the payload as JSON; false (nothing written) for a binary payload.
    fn write_json(&self, out: &mut Vec<u8>) -> bool {
        match self {
            Payload::Json(v) => serde_json::to_writer(&mut *out, v).expect("Value to Vec"),
            Payload::JsonText(t) => out.extend_from_slice(t.as_str().as_bytes()),
            Payload::Binary(_) => return false,
        }
        true
    }
}

impl From<JsonText> for Payload {
    fn from(t: JsonText) -> Payload {
        Payload::JsonText(t)
    }
}

/// Appends `s` as a JSON string, escaped, without an intermediate allocation.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("str to Vec");
}

fn write_json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends a reply's payload, `{"response":…,"status":…}` (keys in the order Phoenix's
/// encoder writes them); false for a binary response.
fn write_reply_json(out: &mut Vec<u8>, status: &str, response: &Payload) -> bool {
    out.extend_from_slice(b"{\"response\":");
    if !response.write_json(out) {
        return false;
    }
    out.extend_from_slice(b",\"status\":");
    write_json_str(out, status);
    out.push(b'}');
    true
}

/// Turns bytes written only by the helpers above (serde_json and verbatim `JsonText`) back
/// into a `String`.
fn json_string(out: Vec<u8>) -> String {
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

impl From<Value> for Payload {
    fn from(v: Value) -> Payload {
        Payload::Json(v)
    }
}

/// A message from a client: a join, leave, heartbeat or push.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub join_ref: Option<String>,
    pub ref_: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// Longest topic, event, ref and join_ref a client may send, in bytes. A V2 binary frame gives
/// each of these strings one length byte, so nothing longer could be echoed in a reply; and no
/// real topic comes near it. Checked by the socket (`Message::oversized`), not the decoder, so
/// that an oversized event can still be answered on its ref.
pub const MAX_FIELD_BYTES: usize = 255;

impl Message {
    /// The first of topic, event, ref and join_ref that is longer than `MAX_FIELD_BYTES`.
    pub fn oversized(&self) -> Option<&'static str> {
        let fields = [
            ("topic", Some(&self.topic)),
            ("event", Some(&self.event)),
            ("ref", self.ref_.as_ref()),
            ("join_ref", self.join_ref.as_ref()),
        ];
        let too_long = |value: &Option<&String>| value.is_some_and(|v| v.len() > MAX_FIELD_BYTES);
        fields.iter().find(|(_, value)| too_long(value)).map(|(name, _)| *name)
    }
}

/// Which serializer a connection negotiated with its `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// Parses the `vsn` query parameter the way `Phoenix.Socket` does: absent means 1.0.0,
    /// `~> 1.0.0` selects V1 and `~> 2.0.0` selects V2; anything else is refused (HTTP 403).
    pub fn negotiate(vsn: Option<&str>) -> Option<Vsn> {
        let vsn = vsn.unwrap_or("1.0.0");
        let mut parts = vsn.splitn(3, '.');
        let major = parts.next()?;
        let minor = parts.next()?;
        let patch = parts.next()?;
        let patch = patch.split(['-', '+']).next()?;
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !(numeric(major) && numeric(minor) && numeric(patch)) || minor != "0" {
            return None;
        }
        match major {
            "1" => Some(Vsn::V1),
            "2" => Some(Vsn::V2),
            _ => None,
        }
    }

    pub const ALL: [Vsn; 2] = [Vsn::V1, Vsn::V2];

    pub fn index(self) -> usize {
        match self {
            Vsn::V1 => 0,
            Vsn::V2 => 1,
        }
    }

    pub fn decode(self, frame: Inbound<'_>) -> Result<Message, DecodeError> {
        match self {
            Vsn::V1 => v1::decode(frame),
            Vsn::V2 => v2::decode(frame),
        }
    }

    /// Encodes a server push, reply, close or error (`ref_` is `None` for pushes).
    /// Returns `None` when this serializer cannot carry the payload (binary over V1).
    pub fn encode(self, out: &Outgoing<'_>) -> Option<Encoded> {
        match self {
            Vsn::V1 => v1::encode(out),
            Vsn::V2 => Some(v2::encode(out)),
        }
    }
}

/// A received WebSocket data frame, before decoding.
#[derive(Debug, Clone, Copy)]
pub enum Inbound<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// Everything the server sends, as borrowed parts, so encoding allocates only the output.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub join_ref: Option<&'a str>,
    pub ref_: Option<&'a str>,
    pub topic: &'a str,
    pub kind: OutKind<'a>,
}

#[derive(Debug, Clone, Copy)]
pub enum OutKind<'a> {
    /// A push or broadcast: `event` with `payload`.
    Event { event: &'a str, payload: &'a Payload },
    /// A `phx_reply` with `{"status": status, "response": response}`.
    Reply { status: &'a str, response: &'a Payload },
}

impl<'a> Outgoing<'a> {
    pub fn push(join_ref: Option<&'a str>, topic: &'a str, event: &'a str, p: &'a Payload) -> Self {
        Outgoing { join_ref, ref_: None, topic, kind: OutKind::Event { event, payload: p } }
    }

    pub fn broadcast(topic: &'a str, event: &'a str, payload: &'a Payload) -> Self {
        Outgoing::push(None, topic, event, payload)
    }

    pub fn reply(
        join_ref: Option<&'a str>,
        ref_: Option<&'a str>,
        topic: &'a str,
        status: &'a str,
        response: &'a Payload,
    ) -> Self {
        Outgoing { join_ref, ref_, topic, kind: OutKind::Reply { status, response } }
    }

    /// `phx_close` and `phx_error` carry the join_ref in both ref fields (§3.6, §3.7).
    pub fn control(join_ref: &'a str, topic: &'a str, event: &'a str, p: &'a Payload) -> Self {
        Outgoing {
            join_ref: Some(join_ref),
            ref_: Some(join_ref),
            topic,
            kind: OutKind::Event { event, payload: p },
        }
    }
}

/// An encoded message and the WebSocket opcode it must travel in.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    Text(String),
    Binary(Vec<u8>),
}

impl Encoded {
    /// The complete server WebSocket frame carrying this message.
    pub fn into_frame(self) -> Vec<u8> {
        match self {
            Encoded::Text(s) => frame::encode(frame::OpCode::Text, s.as_bytes()),
            Encoded::Binary(b) => frame::encode(frame::OpCode::Binary, &b),
        }
    }
}

/// Why a client frame could not be decoded. The connection is closed with 1007 and this text.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// The text frame is not JSON.
    Json(String),
    /// V2: not an array of at least five elements `[join_ref, ref, topic, event, payload]`.
    NotArray,
    /// V1: not an object with `topic`, `event`, `payload` and `ref`.
    NotObject,
    /// A field has the wrong type, e.g. a numeric topic.
    BadField { field: &'static str, expected: &'static str },
    /// A binary frame that is not a well-formed kind-0 push.
    BadBinary(&'static str),
    /// V1 has no binary frames.
    BinaryUnsupported,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Json(e) => write!(f, "malformed message: invalid JSON ({e})"),
            DecodeError::NotArray => {
                f.write_str("malformed message: expected [join_ref, ref, topic, event, payload]")
            }
            DecodeError::NotObject => {
                f.write_str("malformed message: expected {topic, event, payload, ref}")
            }
            DecodeError::BadField { field, expected } => {
                write!(f, "malformed message: {field} must be {expected}")
            }
            DecodeError::BadBinary(why) => write!(f, "malformed binary message: {why}"),
            DecodeError::BinaryUnsupported => f.write_str("binary frames need vsn=2.0.0"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads a ref-like field: a string, `null`, or (for lenient non-JS clients) a number,
/// which is kept as its decimal text.
fn ref_field(v: Option<&Value>, field: &'static str) -> Result<Option<String>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(DecodeError::BadField { field, expected: "a string or null" }),
    }
}

fn string_field(v: Option<&Value>, field: &'static str) -> Result<String, DecodeError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(DecodeError::BadField { field, expected: "a string" }),
    }
}

#[cfg(test)]
mod tests;
