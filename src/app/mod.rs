//! The application mounted by the binary: our channels and the socket's connect callback
//! (Phoenix's `lib/my_app_web`). Nothing in the framework modules depends on this module.

pub mod room_channel;
pub mod superheroes_channel;

use crate::channel::Router;
use crate::store::Store;

/// The socket's channel routes: the chat (`room:*`) and, with a database, the superheroes lobby.
pub fn router(store: Option<Store>) -> Router {
    let router = Router::new().channel("room:*", room_channel::RoomChannel::default);
    match store {
        Some(store) => router.channel("superheroes:lobby", move || {
            superheroes_channel::SuperheroesChannel::new(store.clone())
        }),
        None => router,
    }
}
