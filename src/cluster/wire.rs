//! The cluster's wire format: what one NOTIFY on `phx_cluster` carries. Pure; unit-tested.
//!
//! A notification is one JSON `Envelope`: the origin node's name and incarnation, a batch
//! number (`s`: the batch's own, or for a heartbeat and `bye` the last one committed; see
//! `cursor.rs`), and either a batch of broadcasts (`m`), the flag that the batch was too big
//! for NOTIFY and is only in the log (`st`), nothing (a heartbeat), or `bye` (an orderly
//! shutdown).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::protocol::Payload;
use crate::pubsub::Broadcast;

/// NOTIFY refuses payloads of 8,000 bytes and more; batches stay under this, leaving room for
/// the envelope's header.
pub const NOTIFY_LIMIT: usize = 7_900;

#[derive(Debug, Deserialize)]
pub struct Envelope {
    /// Origin node name.
    pub n: String,
    /// Origin incarnation (its start time, ms since the epoch): a restarted node is new.
    pub i: u64,
    /// The batch's number in this incarnation, or the last committed one (heartbeat, bye).
    pub s: u64,
    /// A batch, each element an encoded `WireMsg`.
    #[serde(default)]
    pub m: Vec<Box<serde_json::value::RawValue>>,
    /// The batch `s` is only in the log (`cluster_messages`): too big for NOTIFY.
    #[serde(default)]
    pub st: bool,
    #[serde(default)]
    pub bye: bool,
}

impl Envelope {
    /// Carries a batch (inline or stored), numbered `s`.
    pub fn is_batch(&self) -> bool {
        self.st || !self.m.is_empty()
    }
}

/// One broadcast: JSON payloads as they are, binary ones in hex.
#[derive(Serialize, Deserialize)]
struct WireMsg {
    t: String,
    e: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<String>,
}

/// What a notification carries besides its origin.
pub enum Body<'a> {
    /// A batch (`batch_text`).
    Batch(&'a str),
    /// A batch only in the log (too big for NOTIFY).
    Stored,
    Heartbeat,
    Bye,
}

/// The text of one notification. Written by hand so that a batch, already JSON, is not parsed
/// again to be embedded.
pub fn envelope(node: &str, incarnation: u64, seq: u64, body: Body<'_>) -> String {
    let name = serde_json::to_string(node).expect("a string always encodes");
    let head = format!("{{\"n\":{name},\"i\":{incarnation},\"s\":{seq}");
    match body {
        Body::Batch(batch) => format!("{head},\"m\":{batch}}}"),
        Body::Stored => format!("{head},\"st\":true}}"),
        Body::Heartbeat => format!("{head}}}"),
        Body::Bye => format!("{head},\"bye\":true}}"),
    }
}

/// Encodes one broadcast as a batch element.
pub fn encode(b: &Broadcast) -> String {
    let (p, x) = match &b.payload {
        Payload::Json(v) => (Some(v.clone()), None),
        Payload::JsonText(t) => (serde_json::from_str(t.as_str()).ok(), None),
        Payload::Binary(bytes) => (None, Some(hex(bytes))),
    };
    let msg = WireMsg { t: b.topic.clone(), e: b.event.clone(), p, x };
    serde_json::to_string(&msg).expect("a JSON value always encodes")
}

/// The text of a batch (`Envelope::m` or a stored row): `[m1,m2,...]`.
pub fn batch_text(encoded: &[String]) -> String {
    let mut out = String::with_capacity(encoded.iter().map(|m| m.len() + 1).sum::<usize>() + 2);
    out.push('[');
    out.push_str(&encoded.join(","));
    out.push(']');
    out
}

/// Decodes a batch element; `None` for one no node of ours wrote (logged by the caller).
pub fn decode(raw: &str) -> Option<Arc<Broadcast>> {
    let msg: WireMsg = serde_json::from_str(raw).ok()?;
    let payload = match (msg.p, msg.x) {
        (_, Some(x)) => Payload::Binary(unhex(&x)?),
        (Some(v), None) => Payload::Json(v),
        (None, None) => Payload::Json(Value::Null),
    };
    Some(Arc::new(Broadcast { topic: msg.t, event: msg.e, payload }))
}

/// Decodes a stored batch (`batch_text`).
pub fn decode_batch(text: &str) -> Option<Vec<Box<serde_json::value::RawValue>>> {
    serde_json::from_str(text).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::JsonText;
    use serde_json::json;

    fn roundtrip(payload: Payload) -> Payload {
        let b = Broadcast::new("room:1", "msg", payload);
        let back = decode(&encode(&b)).unwrap();
        assert_eq!((back.topic.as_str(), back.event.as_str()), ("room:1", "msg"));
        Arc::try_unwrap(back).unwrap().payload
    }

    #[test]
    fn payloads_survive_the_wire() {
        assert_eq!(
            roundtrip(Payload::Json(json!({"a": [1, "é"]}))),
            Payload::Json(json!({"a": [1, "é"]}))
        );
        let text = JsonText::encode(&json!({"k": true})).unwrap();
        assert_eq!(roundtrip(Payload::JsonText(text)), Payload::Json(json!({"k": true})));
        assert_eq!(roundtrip(Payload::Binary(vec![0, 255, 16])), Payload::Binary(vec![0, 255, 16]));
    }

    #[test]
    fn a_batch_and_its_envelope_decode_in_order() {
        let encoded: Vec<String> = (0..3)
            .map(|i| encode(&Broadcast::new("t", &format!("e{i}"), Payload::empty())))
            .collect();
        let batch = decode_batch(&batch_text(&encoded)).unwrap();
        let events: Vec<String> =
            batch.iter().map(|m| decode(m.get()).unwrap().event.clone()).collect();
        assert_eq!(events, ["e0", "e1", "e2"]);
        let text = envelope("a\"b", 1, 2, Body::Batch(&batch_text(&encoded)));
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!((back.n.as_str(), back.i, back.s, back.m.len()), ("a\"b", 1, 2, 3));
        let bye: Envelope = serde_json::from_str(&envelope("a", 1, 3, Body::Bye)).unwrap();
        assert!(bye.bye && bye.m.is_empty() && !bye.st);
        let stored: Envelope = serde_json::from_str(&envelope("a", 1, 4, Body::Stored)).unwrap();
        assert!(stored.st && stored.is_batch() && stored.m.is_empty());
        let beat: Envelope = serde_json::from_str(&envelope("a", 1, 5, Body::Heartbeat)).unwrap();
        assert!(!beat.bye && !beat.is_batch() && !beat.st);
    }

    #[test]
    fn foreign_input_is_refused_not_guessed() {
        assert!(decode("{\"t\":1}").is_none());
        assert!(decode("{\"t\":\"a\",\"e\":\"b\",\"x\":\"abc\"}").is_none());
        assert!(decode("{\"t\":\"a\",\"e\":\"b\",\"x\":\"zz\"}").is_none());
        assert!(decode_batch("not json").is_none());
    }
}
