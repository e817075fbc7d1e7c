//! `superheroes:lobby` (seed 000): the channel keeps its own copy of the superheroes, pushes
//! `hydrate` on join, then `create`, `update` and `delete` as committed changes arrive.
//!
//! Changes come from the database's NOTIFY listener through PubSub topic `CHANGES_TOPIC`, as a
//! `LobbyEvent` published once (`PubSub::publish`, the seed's `PubSub.broadcast` of
//! `{action, superhero}`): the hero is decoded and its push payload encoded once per change, and
//! every lobby channel shares them, so a change costs each subscriber a comparison and a frame.
//! Updates are last-write-wins on `(updated_at, version)`: an update that is not newer than the
//! channel's copy is not pushed, so a client applying the seed's upsert logic ends with exactly
//! the database's rows. After the listener reconnects (changes may have been missed) a `Resync`
//! reloads the list and pushes a fresh `hydrate`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;

use crate::channel::{Channel, ChannelCtx, Flow, Info, JoinResult, StopReason};
use crate::protocol::{JsonText, Payload};
use crate::store::listener::{Action, StoreEvent};
use crate::store::{Store, superheroes, superheroes::Superhero};

/// Internal PubSub topic carrying committed changes (not routable by clients).
pub const CHANGES_TOPIC: &str = "superheroes:changes";

/// What the listener publishes on `CHANGES_TOPIC`.
#[derive(Debug)]
pub enum LobbyEvent {
    Change(Change),
    /// Changes may have been lost: reload.
    Resync,
}

/// One committed change, decoded and encoded once for every lobby channel.
#[derive(Debug)]
pub struct Change {
    pub action: Action,
    pub hero: Arc<Superhero>,
    /// `{"superhero": …, "message_id": …}`. The message id names this change: each client
    /// receives it once, and every client sees the same id for the same change.
    pub payload: Payload,
}

impl Change {
    pub fn new(action: Action, hero: Superhero) -> Result<Change, serde_json::Error> {
        let payload = JsonText::encode(&json!({ "superhero": hero, "message_id": message_id() }))?;
        Ok(Change { action, hero: Arc::new(hero), payload: payload.into() })
    }
}

pub struct SuperheroesChannel {
    store: Store,
    heroes: HashMap<i64, Arc<Superhero>>,
    /// Ids deleted while joined, with the version they had, so a late update cannot bring a
    /// deleted hero back.
    deleted: HashMap<i64, (chrono::DateTime<chrono::Utc>, i64)>,
}

impl SuperheroesChannel {
    pub fn new(store: Store) -> SuperheroesChannel {
        SuperheroesChannel { store, heroes: HashMap::new(), deleted: HashMap::new() }
    }

    fn load(&mut self) -> Result<(), String> {
        let mut client = self.store.client().map_err(|e| e.to_string())?;
        let list = superheroes::list(&mut *client).map_err(|e| e.to_string())?;
        self.heroes = list.into_iter().map(|h| (h.id, Arc::new(h))).collect();
        self.deleted.clear();
        Ok(())
    }

    fn push_hydrate(&self, ctx: &mut ChannelCtx) {
        let mut list: Vec<&Superhero> = self.heroes.values().map(|h| &**h).collect();
        list.sort_by_key(|h| h.id);
        ctx.push("hydrate", json!({ "superheroes": list, "message_id": message_id() }));
    }

    /// Applies one committed change; returns the event to push, if the client must hear of it.
    fn apply(&mut self, action: Action, hero: &Arc<Superhero>) -> Option<&'static str> {
        let key = (hero.updated_at, hero.version);
        if self.deleted.get(&hero.id).is_some_and(|deleted| *deleted >= key) {
            return None;
        }
        let current = self.heroes.get(&hero.id).map(|h| (h.updated_at, h.version));
        match action {
            Action::Delete => {
                self.heroes.remove(&hero.id)?;
                self.deleted.insert(hero.id, key.max(current.unwrap_or(key)));
                Some("delete")
            }
            Action::Create | Action::Update if current.is_some_and(|c| c >= key) => None,
            Action::Create | Action::Update => {
                let event = if current.is_some() { "update" } else { "create" };
                let event = if action == Action::Create { "create" } else { event };
                self.heroes.insert(hero.id, hero.clone());
                Some(event)
            }
        }
    }
}

impl Channel for SuperheroesChannel {
    fn join(&mut self, _topic: &str, _payload: Payload, ctx: &mut ChannelCtx) -> JoinResult {
        // Subscribe before loading: a change committed in between arrives as an event and is
        // reconciled by last-write-wins instead of being lost.
        ctx.subscribe(CHANGES_TOPIC)
            .map_err(|e| Payload::from(json!({"reason": e.to_string()})))?;
        if let Err(e) = self.load() {
            log::warn!("superheroes:lobby join: {e}");
            return Err(json!({"reason": "database unavailable"}).into());
        }
        self.push_hydrate(ctx);
        Ok(Payload::empty())
    }

    fn handle_info(&mut self, info: Info, ctx: &mut ChannelCtx) -> Flow {
        let Info::Shared(message) = info else { return Flow::Continue };
        match message.downcast_ref::<LobbyEvent>() {
            Some(LobbyEvent::Change(change)) => {
                if let Some(event) = self.apply(change.action, &change.hero) {
                    ctx.push(event, change.payload.clone());
                }
                Flow::Continue
            }
            Some(LobbyEvent::Resync) => match self.load() {
                Ok(()) => {
                    self.push_hydrate(ctx);
                    Flow::Continue
                }
                // The client rejoins after phx_error, and its join reloads the list.
                Err(e) => Flow::Stop(StopReason::Error(format!("resync failed: {e}"))),
            },
            None => Flow::Continue,
        }
    }
}

fn message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The listener callback: publishes each committed change (or a resync) on `CHANGES_TOPIC`.
pub fn publish_store_event(pubsub: &crate::PubSub, event: StoreEvent) {
    let event = match event {
        StoreEvent::Change { action, superhero } => match Change::new(action, superhero) {
            Ok(change) => LobbyEvent::Change(change),
            Err(e) => {
                log::error!("cannot encode a superheroes change: {e}");
                return;
            }
        },
        StoreEvent::Resync => LobbyEvent::Resync,
    };
    if let Err(e) = pubsub.publish(CHANGES_TOPIC, Arc::new(event)) {
        log::error!("cannot publish a superheroes change: {e}");
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn hero(id: i64, version: i64, micros: i64, name: &str) -> Superhero {
        let at = Utc.timestamp_micros(1_800_000_000_000_000 + micros).unwrap();
        Superhero {
            id,
            name: name.into(),
            location: "Gotham".into(),
            power: "none".into(),
            version,
            inserted_at: at,
            updated_at: at,
        }
    }

    fn check(events: &[(Action, Superhero)], pushed: &[&str], final_names: &[(i64, &str)]) {
        let store = Store::lazy(crate::store::StoreConfig::new("postgresql://unused@localhost/x"))
            .expect("lazy store does not connect");
        let mut channel = SuperheroesChannel::new(store);
        channel.heroes.insert(1, Arc::new(hero(1, 1, 0, "one")));
        let got: Vec<&str> =
            events.iter().filter_map(|(a, h)| channel.apply(*a, &Arc::new(h.clone()))).collect();
        assert_eq!(got, pushed);
        let mut names: Vec<(i64, &str)> =
            channel.heroes.values().map(|h| (h.id, h.name.as_str())).collect();
        names.sort();
        assert_eq!(names, final_names);
    }

    #[test]
    fn last_write_wins() {
        use Action::*;
        check(&[(Update, hero(1, 2, 5, "two"))], &["update"], &[(1, "two")]);
        check(
            &[(Update, hero(1, 3, 9, "three")), (Update, hero(1, 2, 5, "two"))],
            &["update"],
            &[(1, "three")],
        );
        check(&[(Update, hero(1, 1, 0, "same"))], &[], &[(1, "one")]);
        // Equal timestamps: the version decides, deterministically.
        check(
            &[(Update, hero(1, 3, 0, "v3")), (Update, hero(1, 2, 0, "v2"))],
            &["update"],
            &[(1, "v3")],
        );
        check(
            &[(Create, hero(2, 1, 1, "new")), (Create, hero(2, 1, 1, "new"))],
            &["create"],
            &[(1, "one"), (2, "new")],
        );
        check(&[(Delete, hero(1, 1, 0, "one")), (Update, hero(1, 1, 0, "late"))], &["delete"], &[]);
        check(&[(Delete, hero(7, 1, 0, "unknown"))], &[], &[(1, "one")]);
    }
}
