//! The application mounted by the binary: our channels and the socket's connect callback
//! (Phoenix's `lib/my_app_web`). Nothing in the framework modules depends on this module.

pub mod lobby;
pub mod room_channel;
pub mod superheroes_channel;
pub mod viewers;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::channel::{ChannelCtx, Router};
use crate::presence::Presence;
use crate::protocol::Payload;
use crate::socket::transport::{ConnectFn, Connected};
use lobby::Lobby;

/// The socket's channel routes: the chat (`room:*`) and, with a database, the superheroes lobby;
/// both track their members in one presence tracker. Every lobby channel shares `lobby`'s one
/// copy of the table.
pub fn router(lobby: Option<Lobby>) -> Router {
    let presence = Presence::new();
    let rooms = presence.clone();
    let router = Router::new()
        .presence(presence.clone())
        .channel("room:*", move || room_channel::RoomChannel::new(rooms.clone()));
    match lobby {
        Some(lobby) => router.channel(lobby::TOPIC, move || {
            let channel = superheroes_channel::SuperheroesChannel::new(lobby.clone());
            viewers::Viewed::new(channel, presence.clone())
        }),
        None => router,
    }
}

/// The connect callback: accepts everyone, and keeps the `user_id` param (the chat's presence
/// key) in the socket's assigns.
pub fn connect() -> ConnectFn {
    Arc::new(|info| {
        let mut connected = Connected::default();
        if let Some(id) = info.params.get("user_id").filter(|id| !id.is_empty()) {
            connected.assigns.insert("user_id".into(), Value::String(id.clone()));
        }
        Ok(connected)
    })
}

/// Tracks `key` with `{"online_at": <unix seconds>}` and pushes `presence_state` once joined;
/// a refusal becomes the join's error reply.
fn track_and_push_state(
    presence: &Presence,
    ctx: &mut ChannelCtx,
    key: &str,
) -> Result<(), Payload> {
    let online_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let refused =
        |e: crate::presence::PresenceError| Payload::from(json!({"reason": e.to_string()}));
    presence.track(ctx, key, json!({ "online_at": online_at })).map_err(refused)?;
    presence.push_state(ctx).map_err(refused)
}
