//! The chat example of the seeds: `room:*` topics, `room:private` refused, `new_msg` broadcast
//! to every member (sender included) and acknowledged, `ping` echoed. Every member is tracked in
//! presence under its connect param `user_id` (a generated id when absent) with
//! `{"online_at": <unix seconds>}`, and gets `presence_state` after each join, unless its join
//! params say `{"presence": false}`: a listener that does not appear in the room (a wall
//! display, a bot, a broadcast audience of tens of thousands, where every joiner would
//! otherwise receive the whole member list).

use serde_json::{Value, json};

use crate::channel::{Channel, ChannelCtx, HandleIn, JoinResult};
use crate::presence::Presence;
use crate::protocol::Payload;

/// Longest chat message body we accept, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

pub struct RoomChannel {
    presence: Presence,
}

impl RoomChannel {
    pub fn new(presence: Presence) -> RoomChannel {
        RoomChannel { presence }
    }
}

impl Channel for RoomChannel {
    fn join(&mut self, topic: &str, payload: Payload, ctx: &mut ChannelCtx) -> JoinResult {
        if topic == "room:private" {
            return Err(json!({"reason": "unauthorized"}).into());
        }
        if unseen(&payload) {
            return Ok(Payload::empty());
        }
        let user_id = match ctx.assigns().get("user_id") {
            Some(Value::String(id)) => id.clone(),
            _ => format!("anon-{}", uuid::Uuid::new_v4()),
        };
        super::track_and_push_state(&self.presence, ctx, &user_id)?;
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

/// The join params ask not to be tracked: `{"presence": false}`.
fn unseen(payload: &Payload) -> bool {
    payload.as_json().and_then(|p| p.get("presence")) == Some(&Value::Bool(false))
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
