//! V1 serializer (`vsn=1.0.0`, and the default when `vsn` is absent): one JSON object per text
//! frame, `{topic, event, payload, ref}` plus an optional `join_ref` from clients. The server never
//! sends `join_ref` in V1, and V1 has no binary frames.

use serde_json::{Map, Value};

use super::{
    DecodeError, EVENT_REPLY, Encoded, Inbound, Message, OutKind, Outgoing, Payload, ref_field,
    string_field,
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

pub fn encode(out: &Outgoing<'_>) -> Option<Encoded> {
    let (event, payload) = match out.kind {
        OutKind::Event { event, payload: Payload::Json(p) } => (event, p.clone()),
        OutKind::Reply { status, response: Payload::Json(r) } => {
            (EVENT_REPLY, serde_json::json!({ "status": status, "response": r }))
        }
        _ => return None,
    };
    let mut obj = Map::with_capacity(4);
    obj.insert("topic".into(), out.topic.into());
    obj.insert("event".into(), event.into());
    obj.insert("payload".into(), payload);
    obj.insert("ref".into(), out.ref_.map_or(Value::Null, Value::from));
    Some(Encoded::Text(Value::Object(obj).to_string()))
}
