//! The application mounted by the binary: our channels and the socket's connect callback
//! (Phoenix's `lib/my_app_web`). Nothing in the framework modules depends on this module.

pub mod admin_channel;
pub mod lobby;
pub mod room_channel;
pub mod superheroes_channel;
pub mod viewers;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::auth::{Verified, Verifier};
use crate::channel::Assigns;
use crate::channel::{ChannelCtx, Router};
use crate::presence::Presence;
use crate::protocol::Payload;
use crate::socket::transport::{ConnectFn, ConnectInfo, Connected, Refused};
use lobby::Lobby;

/// The socket's channel routes: the chat (`room:*`) and, with a database, the superheroes lobby;
/// both track their members in one presence tracker. Every lobby channel shares `lobby`'s one
/// copy of the table.
pub fn router(lobby: Option<Lobby>) -> Router {
    router_with_stats(lobby, None)
}

/// `router`, with the dashboard's `admin:stats` answering joins from the running ticker's
/// `history`.
pub fn router_with_stats(lobby: Option<Lobby>, history: Option<admin_channel::History>) -> Router {
    let presence = Presence::new();
    let rooms = presence.clone();
    let router = Router::new()
        .presence(presence.clone())
        .channel("room:*", move || room_channel::RoomChannel::new(rooms.clone()))
        .channel(admin_channel::TOPIC, move || admin_channel::AdminChannel::new(history.clone()));
    match lobby {
        Some(lobby) => router.channel(lobby::TOPIC, move || {
            let channel = superheroes_channel::SuperheroesChannel::new(lobby.clone());
            viewers::Viewed::new(channel, presence.clone())
        }),
        None => router,
    }
}

/// The connect callback. Without a verifier it accepts everyone and keeps the `user_id` param
/// (the chat's presence key) in the socket's assigns. With one (a secret is configured), only a
/// valid token connects, from the `token` param or the `authToken` subprotocol, and the
/// assigns come from it (`token_assigns`); the `user_id` param is ignored then.
pub fn connect(verifier: Option<Arc<Verifier>>) -> ConnectFn {
    connect_with_admin(verifier, None)
}

/// `connect`, and the `admin` assign (`admin:stats`) for a connection that gives
/// `admin_token` as its connect param `admin_token`, or comes from loopback without a proxy's
/// forwarding headers.
pub fn connect_with_admin(
    verifier: Option<Arc<Verifier>>,
    admin_token: Option<String>,
) -> ConnectFn {
    Arc::new(move |info| {
        let mut connected = match &verifier {
            None => anonymous(info),
            Some(verifier) => verified(verifier, info)?,
        };
        if is_admin(info, admin_token.as_deref()) {
            connected.assigns.insert("admin".into(), Value::Bool(true));
        }
        Ok(connected)
    })
}

fn verified(verifier: &Verifier, info: &ConnectInfo) -> Result<Connected, Refused> {
    let token = info.params.get("token").or(info.auth_token.as_ref());
    match verifier.verify(token.map(String::as_str)) {
        Ok(verified) => Ok(Connected { assigns: token_assigns(verified), id: None }),
        Err(e) => Err(Refused::forbidden(e.to_string())),
    }
}

fn is_admin(info: &ConnectInfo, token: Option<&str>) -> bool {
    let forwarded =
        info.x_headers.iter().any(|(name, _)| name == "x-forwarded-for" || name == "x-real-ip");
    let local = info.peer_addr.ip().is_loopback() && !forwarded;
    let given = info.params.get("admin_token").map(String::as_bytes);
    let token_ok = matches!((token, given), (Some(t), Some(g)) if same_bytes(t.as_bytes(), g));
    local || token_ok
}

/// Compares in time that depends on the lengths only, not on where the first difference is.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn anonymous(info: &ConnectInfo) -> Connected {
    let mut connected = Connected::default();
    if let Some(id) = info.params.get("user_id").filter(|id| !id.is_empty()) {
        connected.assigns.insert("user_id".into(), Value::String(id.clone()));
    }
    connected
}

/// A JWT's claims, or a Phoenix token's map, are the assigns; any other Phoenix token data
/// (`Phoenix.Token.sign(endpoint, salt, user.id)`, the guides' idiom) is the `user_id`. The
/// chat's presence key is a string, so a numeric `user_id` is turned into its decimal text.
fn token_assigns(verified: Verified) -> Assigns {
    let mut assigns = match verified {
        Verified::Jwt(claims) => claims,
        Verified::Phoenix(Value::Object(map)) => map,
        Verified::Phoenix(data) => Assigns::from_iter([("user_id".to_string(), data)]),
    };
    if let Some(Value::Number(n)) = assigns.get("user_id") {
        let text = n.to_string();
        assigns.insert("user_id".into(), Value::String(text));
    }
    assigns
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
