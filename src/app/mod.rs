//! The application mounted by the binary: our channels and the socket's connect callback
//! (Phoenix's `lib/my_app_web`). Nothing in the framework modules depends on this module.

pub mod room_channel;

use crate::channel::Router;

/// The socket's channel routes (`channel "room:*", RoomChannel`).
pub fn router() -> Router {
    Router::new().channel("room:*", room_channel::RoomChannel::default)
}
