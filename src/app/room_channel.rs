//! The chat example of the seeds: `room:*` topics, `room:private` refused, `new_msg` broadcast
//! to every member (sender included) and acknowledged, `ping` echoed.

use serde_json::{Value, json};

use crate::channel::{Channel, ChannelCtx, HandleIn, JoinResult};
use crate::protocol::Payload;

/// Longest chat message body we accept, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Default)]
pub struct RoomChannel;

impl Channel for RoomChannel {
    fn join(&mut self, topic: &str, _payload: Payload, _ctx: &mut ChannelCtx) -> JoinResult {
        if topic == "room:private" {
            return Err(json!({"reason": "unauthorized"}).into());
        }
        Ok(Payload::empty())
    }

    fn handle_in(&mut self, event: &str, payload: Payload, ctx: &mut ChannelCtx) -> HandleIn {
        match event {
            "new_msg" => new_msg(payload, ctx),
            "ping" => HandleIn::ok(payload),
            _ => HandleIn::error(json!({"reason": format!("unknown event {event:?}")})),
        }
    }
}

fn new_msg(payload: Payload, ctx: &mut ChannelCtx) -> HandleIn {
    let body = match payload.as_json().and_then(|p| p.get("body")) {
        Some(Value::String(body)) if body.len() <= MAX_BODY_BYTES => body.clone(),
        Some(Value::String(_)) => {
            return HandleIn::error(json!({"reason": "body is too long"}));
        }
        _ => return HandleIn::error(json!({"reason": "body must be a string"})),
    };
    match ctx.broadcast("new_msg", json!({ "body": body })) {
        Ok(()) => HandleIn::ok(Payload::empty()),
        Err(e) => HandleIn::error(json!({"reason": e.to_string()})),
    }
}
