//! V1 serializer (`vsn=1.0.0`, and the default when `vsn` is absent): one JSON object per text
//! frame, `{topic, event, payload, ref}` plus an optional `join_ref` from clients. The server never
//! sends `join_ref` in V1, and V1 has no binary frames.

use serde_json::Value;

use super::{
    DecodeError, EVENT_REPLY, Encoded, Inbound, Message, OutKind, Outgoing, Payload, json_string,
    ref_field, string_field, write_json_opt, write_json_str, write_reply_json,
};

pub fn decode(frame: Inbound<'_>) -> Result<Message, DecodeError> {
    let Inbound::Text(text) = frame else { return Err(DecodeError::BinaryUnsupported) };
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Object(mut obj) = value else { return Err(DecodeError::NotObject) };
    for key in ["topic", "event", "payload", "ref"] {
        if !obj.contains_key(key) {
            return Err(DecodeError::NotObject);
        }
    }
    let payload = obj.remove("payload").expect("checked above");
    Ok(Message {
        join_ref: ref_field(obj.get("join_ref"), "join_ref")?,
        ref_: ref_field(obj.get("ref"), "ref")?,
        topic: string_field(obj.get("topic"), "topic")?,
        event: string_field(obj.get("event"), "event")?,
        payload: Payload::Json(payload),
    })
}

/// `{"event":…,"payload":…,"ref":…,"topic":…}` (keys sorted, as this server has always
/// written them); `None` for binary payloads, which V1 cannot carry.
pub fn encode(out: &Outgoing<'_>) -> Option<Encoded> {
    let mut buf = Vec::with_capacity(128);
    buf.extend_from_slice(b"{\"event\":");
    let written = match out.kind {
        OutKind::Event { event, payload } => {
            write_json_str(&mut buf, event);
            buf.extend_from_slice(b",\"payload\":");
            payload.write_json(&mut buf)
        }
        OutKind::Reply { status, response } => {
            write_json_str(&mut buf, EVENT_REPLY);
            buf.extend_from_slice(b",\"payload\":");
            write_reply_json(&mut buf, status, response)
        }
    };
    if !written {
        return None;
    }
    buf.extend_from_slice(b",\"ref\":");
    write_json_opt(&mut buf, out.ref_);
    buf.extend_from_slice(b",\"topic\":");
    write_json_str(&mut buf, out.topic);
    buf.push(b'}');
    Some(Encoded::Text(json_string(buf)))
}
