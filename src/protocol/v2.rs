//! V2 serializer (`vsn=2.0.0`, what phoenix.js speaks): JSON arrays
//! `[join_ref, ref, topic, event, payload]` in text frames, and the binary frames of
//! `v2_json_serializer.ex` for binary payloads (kind 0 push, 1 reply, 2 broadcast).

use serde_json::Value;

use super::{
    DecodeError, EVENT_REPLY, Encoded, Inbound, Message, OutKind, Outgoing, Payload, json_string,
    ref_field, string_field, write_json_opt, write_json_str, write_reply_json,
};

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

pub fn decode(frame: Inbound<'_>) -> Result<Message, DecodeError> {
    match frame {
        Inbound::Text(text) => decode_text(text),
        Inbound::Binary(bytes) => decode_binary(bytes),
    }
}

fn decode_text(text: &str) -> Result<Message, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Array(mut items) = value else { return Err(DecodeError::NotArray) };
    if items.len() < 5 {
        return Err(DecodeError::NotArray);
    }
    // Extra elements are ignored, as Phoenix does.
    items.truncate(5);
    let payload = items.pop().expect("five elements");
    Ok(Message {
        join_ref: ref_field(items.first(), "join_ref")?,
        ref_: ref_field(items.get(1), "ref")?,
        topic: string_field(items.get(2), "topic")?,
        event: string_field(items.get(3), "event")?,
        payload: Payload::Json(payload),
    })
}

/// Client binary frames are kind-0 pushes: `[0, jr_len, ref_len, topic_len, event_len]` then the
/// four strings and the payload bytes.
fn decode_binary(bytes: &[u8]) -> Result<Message, DecodeError> {
    let [kind, jr_len, ref_len, topic_len, event_len, rest @ ..] = bytes else {
        return Err(DecodeError::BadBinary("header shorter than 5 bytes"));
    };
    if *kind != KIND_PUSH {
        return Err(DecodeError::BadBinary("only kind 0 (push) is accepted from clients"));
    }
    let mut cursor = rest;
    let mut take = |len: u8, what: &'static str| -> Result<String, DecodeError> {
        let len = len as usize;
        if cursor.len() < len {
            return Err(DecodeError::BadBinary(what));
        }
        let (head, tail) = cursor.split_at(len);
        cursor = tail;
        String::from_utf8(head.to_vec()).map_err(|_| DecodeError::BadBinary("field is not UTF-8"))
    };
    let join_ref = take(*jr_len, "join_ref truncated")?;
    let ref_ = take(*ref_len, "ref truncated")?;
    let topic = take(*topic_len, "topic truncated")?;
    let event = take(*event_len, "event truncated")?;
    Ok(Message {
        join_ref: Some(join_ref).filter(|s| !s.is_empty()),
        ref_: Some(ref_).filter(|s| !s.is_empty()),
        topic,
        event,
        payload: Payload::Binary(cursor.to_vec()),
    })
}

pub fn encode(out: &Outgoing<'_>) -> Encoded {
    match out.kind {
        OutKind::Event { event, payload: Payload::Binary(b) } => {
            Encoded::Binary(binary_event(out, event, b))
        }
        OutKind::Reply { status, response: Payload::Binary(b) } => {
            let header = [out.join_ref.unwrap_or(""), out.ref_.unwrap_or(""), out.topic, status];
            Encoded::Binary(binary(KIND_REPLY, &header, b))
        }
        OutKind::Event { event, payload } => Encoded::Text(text(out, event, |buf| {
            payload.write_json(buf);
        })),
        OutKind::Reply { status, response } => Encoded::Text(text(out, EVENT_REPLY, |buf| {
            write_reply_json(buf, status, response);
        })),
    }
}

/// `[join_ref, ref, topic, event, payload]`, written straight into one buffer.
fn text(out: &Outgoing<'_>, event: &str, payload: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut buf = Vec::with_capacity(128);
    buf.push(b'[');
    write_json_opt(&mut buf, out.join_ref);
    buf.push(b',');
    write_json_opt(&mut buf, out.ref_);
    buf.push(b',');
    write_json_str(&mut buf, out.topic);
    buf.push(b',');
    write_json_str(&mut buf, event);
    buf.push(b',');
    payload(&mut buf);
    buf.push(b']');
    json_string(buf)
}

/// Server pushes without a ref use kind 0; broadcasts (no join_ref, no ref) use kind 2.
fn binary_event(out: &Outgoing<'_>, event: &str, payload: &[u8]) -> Vec<u8> {
    match (out.join_ref, out.ref_) {
        (None, None) => binary(KIND_BROADCAST, &[out.topic, event], payload),
        (join_ref, _) => binary(KIND_PUSH, &[join_ref.unwrap_or(""), out.topic, event], payload),
    }
}

/// Every header string is at most 255 bytes (one length byte); longer ones are cut on a
/// character boundary rather than corrupting the frame. Clients cannot send longer topics,
/// events or refs (`MAX_FIELD_BYTES`, checked by the socket), so only a topic or event the
/// server itself makes up could ever hit this.
fn binary(kind: u8, fields: &[&str], payload: &[u8]) -> Vec<u8> {
    let fields: Vec<&str> = fields.iter().map(|f| truncate_255(f)).collect();
    let mut out = Vec::with_capacity(1 + fields.len() + payload.len() + 64);
    out.push(kind);
    out.extend(fields.iter().map(|f| f.len() as u8));
    for f in &fields {
        out.extend_from_slice(f.as_bytes());
    }
    out.extend_from_slice(payload);
    out
}

fn truncate_255(s: &str) -> &str {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
