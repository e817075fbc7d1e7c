//! The application mounted by the binary: our channels and the socket's connect callback
//! (Phoenix's `lib/my_app_web`). Nothing in the framework modules depends on this module.

pub mod lobby;
pub mod room_channel;
pub mod superheroes_channel;

use crate::channel::Router;
use lobby::Lobby;

/// The socket's channel routes: the chat (`room:*`) and, with a database, the superheroes lobby.
/// Every lobby channel shares `lobby`'s one copy of the table.
pub fn router(lobby: Option<Lobby>) -> Router {
    let router = Router::new().channel("room:*", room_channel::RoomChannel::default);
    match lobby {
        Some(lobby) => router.channel(lobby::TOPIC, move || {
            superheroes_channel::SuperheroesChannel::new(lobby.clone())
        }),
        None => router,
    }
}
