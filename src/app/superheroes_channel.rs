//! `superheroes:lobby` (seed 000): pushes `hydrate` on join, then `create`, `update` and
//! `delete` as committed changes arrive.
//!
//! The table lives once, in the shared `Lobby` (`app/lobby.rs`); a channel keeps only the
//! sequence number of what it has sent. Changes come from the database's NOTIFY listener:
//! `publish_store_event` applies each to the `Lobby` (last-write-wins on `(updated_at,
//! version)`, once for all clients), encodes its push payload once, and publishes it on PubSub
//! topic `CHANGES_TOPIC` (the seed's `PubSub.broadcast` of `{action, superhero}`), so a change
//! costs each channel a comparison and a frame. After the listener reconnects (changes may
//! have been missed) the table is reloaded once and every channel pushes the new `hydrate`.
//! A channel whose mailbox overflowed (`handle_lagged`) catches up the same way.

use std::sync::Arc;

use serde_json::json;

use super::lobby::{Hydrate, Lobby, message_id};
use crate::channel::{Channel, ChannelCtx, Flow, Info, JoinResult, StopReason};
use crate::protocol::{JsonText, Payload};
use crate::store::listener::StoreEvent;
use crate::store::superheroes::Superhero;

/// Internal PubSub topic carrying committed changes (not routable by clients).
pub const CHANGES_TOPIC: &str = "superheroes:changes";

/// What the listener publishes on `CHANGES_TOPIC`.
#[derive(Debug)]
pub enum LobbyEvent {
    Change(Change),
    /// The table was reloaded (changes may have been lost): send the new `hydrate`.
    Resync,
}

/// One change clients must hear of, numbered and encoded once for every lobby channel.
#[derive(Debug)]
pub struct Change {
    pub seq: u64,
    pub event: &'static str,
    /// `{"superhero": …, "message_id": …}`. The message id names this change: each client
    /// receives it once, and every client sees the same id for the same change.
    pub payload: Payload,
}

impl Change {
    pub fn new(
        seq: u64,
        event: &'static str,
        hero: &Superhero,
    ) -> Result<Change, serde_json::Error> {
        let payload = JsonText::encode(&json!({ "superhero": hero, "message_id": message_id() }))?;
        Ok(Change { seq, event, payload: payload.into() })
    }
}

pub struct SuperheroesChannel {
    lobby: Lobby,
    /// The sequence number of the last state this client was sent (hydrate or change).
    sent: u64,
    /// The `hydrate` taken in `join`, pushed before anything else this channel sends (a shared
    /// push cannot be held back behind the join reply, so `join` cannot send it itself).
    unsent: Option<Arc<Hydrate>>,
}

/// What `join` sends itself so that the first `hydrate` goes out even if no change comes.
struct SendHydrate;

impl SuperheroesChannel {
    pub fn new(lobby: Lobby) -> SuperheroesChannel {
        SuperheroesChannel { lobby, sent: 0, unsent: None }
    }

    fn send_unsent(&mut self, ctx: &mut ChannelCtx) {
        if let Some(hydrate) = self.unsent.take() {
            ctx.push_shared(&hydrate.push);
        }
    }

    /// Pushes the current `hydrate` unless the client already has that version or a newer one.
    fn catch_up(&mut self, ctx: &mut ChannelCtx) -> Result<(), String> {
        let hydrate = self.lobby.snapshot()?;
        if hydrate.seq > self.sent {
            self.unsent = None;
            ctx.push_shared(&hydrate.push);
            self.sent = hydrate.seq;
        }
        Ok(())
    }

    fn forward(&mut self, change: &Change, ctx: &mut ChannelCtx) {
        self.lobby.pass_gate();
        if change.seq > self.sent {
            ctx.push(change.event, change.payload.clone());
            self.sent = change.seq;
        }
    }

    fn resync(&mut self, ctx: &mut ChannelCtx) -> Flow {
        match self.catch_up(ctx) {
            Ok(()) => Flow::Continue,
            // The client rejoins after phx_error, and its join loads the table again.
            Err(e) => Flow::Stop(StopReason::Error(format!("resync failed: {e}"))),
        }
    }
}

impl Channel for SuperheroesChannel {
    fn join(&mut self, _topic: &str, _payload: Payload, ctx: &mut ChannelCtx) -> JoinResult {
        // Subscribe before taking the snapshot: a change committed in between arrives as an
        // event numbered above the snapshot instead of being lost.
        ctx.subscribe(CHANGES_TOPIC)
            .map_err(|e| Payload::from(json!({"reason": e.to_string()})))?;
        let hydrate = self.lobby.snapshot().map_err(|e| {
            log::warn!("superheroes:lobby join: {e}");
            Payload::from(json!({"reason": "database unavailable"}))
        })?;
        self.sent = hydrate.seq;
        self.unsent = Some(hydrate);
        // If the mailbox is full, the first change queued there sends the hydrate instead.
        ctx.sender().send(SendHydrate);
        Ok(Payload::empty())
    }

    fn handle_info(&mut self, info: Info, ctx: &mut ChannelCtx) -> Flow {
        self.send_unsent(ctx);
        let Info::Shared(message) = info else { return Flow::Continue };
        match message.downcast_ref::<LobbyEvent>() {
            Some(LobbyEvent::Change(change)) => {
                self.forward(change, ctx);
                Flow::Continue
            }
            Some(LobbyEvent::Resync) => self.resync(ctx),
            None => Flow::Continue,
        }
    }

    /// Changes were not delivered to this channel: its client gets a fresh `hydrate` of the
    /// shared table, which includes them.
    fn handle_lagged(&mut self, _topic: &str, ctx: &mut ChannelCtx) -> Flow {
        self.send_unsent(ctx);
        self.resync(ctx)
    }
}

/// The listener callback: applies each committed change to the lobby and publishes it on
/// `CHANGES_TOPIC`; after a reconnect, reloads the lobby once and publishes a resync.
pub fn publish_store_event(lobby: &Lobby, pubsub: &crate::PubSub, event: StoreEvent) {
    if lobby.take_resync_owed() {
        resync_after(lobby, pubsub, "an earlier resync could not be published");
    }
    let event = match event {
        StoreEvent::Change { action, superhero } => {
            let hero = Arc::new(superhero);
            let Some((seq, event)) = lobby.apply(action, &hero) else { return };
            match Change::new(seq, event, &hero) {
                Ok(change) => LobbyEvent::Change(change),
                Err(e) => return resync_after(lobby, pubsub, &format!("cannot encode: {e}")),
            }
        }
        StoreEvent::Resync => {
            if let Err(e) = lobby.reload() {
                log::warn!("superheroes lobby: reload failed ({e}); channels will stop");
            }
            LobbyEvent::Resync
        }
    };
    if let Err(e) = pubsub.publish(CHANGES_TOPIC, Arc::new(event)) {
        resync_after(lobby, pubsub, &format!("cannot publish: {e}"));
    }
}

/// A change applied to the lobby could not be sent: rather than leave every client without
/// it, reload and tell every channel to send a fresh `hydrate`.
fn resync_after(lobby: &Lobby, pubsub: &crate::PubSub, why: &str) {
    log::error!("superheroes lobby: a change was not delivered ({why}); resyncing");
    let _ = lobby.reload();
    if let Err(e) = pubsub.publish(CHANGES_TOPIC, Arc::new(LobbyEvent::Resync)) {
        log::error!("superheroes lobby: resync not delivered either ({e}); retried next event");
        lobby.owe_resync();
    }
}
