//! `superheroes:lobby` (seed 000): the channel keeps its own copy of the superheroes, pushes
//! `hydrate` on join, then `create`, `update` and `delete` as committed changes arrive.
//!
//! Changes come from the database's NOTIFY listener through PubSub topic `CHANGES_TOPIC`.
//! Updates are last-write-wins on `(updated_at, version)`: an update that is not newer than the
//! channel's copy is not pushed, so a client applying the seed's upsert logic ends with exactly
//! the database's rows. After the listener reconnects (changes may have been missed) a `resync`
//! reloads the list and pushes a fresh `hydrate`.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::channel::{Channel, ChannelCtx, Flow, Info, JoinResult, StopReason};
use crate::protocol::Payload;
use crate::store::listener::{Action, StoreEvent};
use crate::store::{Store, superheroes, superheroes::Superhero};

/// Internal PubSub topic carrying committed changes (not routable by clients).
pub const CHANGES_TOPIC: &str = "superheroes:changes";
/// Event on `CHANGES_TOPIC` meaning "changes may have been lost: reload".
pub const EVENT_RESYNC: &str = "resync";

pub struct SuperheroesChannel {
    store: Store,
    heroes: HashMap<i64, Superhero>,
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
        self.heroes = list.into_iter().map(|h| (h.id, h)).collect();
        self.deleted.clear();
        Ok(())
    }

    fn push_hydrate(&self, ctx: &mut ChannelCtx) {
        let mut list: Vec<&Superhero> = self.heroes.values().collect();
        list.sort_by_key(|h| h.id);
        ctx.push("hydrate", json!({ "superheroes": list, "message_id": message_id() }));
    }

    /// Applies one committed change; returns the event to push, if the client must hear of it.
    fn apply(&mut self, action: Action, hero: Superhero) -> Option<(&'static str, Superhero)> {
        let key = (hero.updated_at, hero.version);
        if self.deleted.get(&hero.id).is_some_and(|deleted| *deleted >= key) {
            return None;
        }
        let current = self.heroes.get(&hero.id).map(|h| (h.updated_at, h.version));
        match action {
            Action::Delete => {
                self.heroes.remove(&hero.id)?;
                self.deleted.insert(hero.id, key.max(current.unwrap_or(key)));
                Some(("delete", hero))
            }
            Action::Create | Action::Update if current.is_some_and(|c| c >= key) => None,
            Action::Create | Action::Update => {
                let event = if current.is_some() { "update" } else { "create" };
                let event = if action == Action::Create { "create" } else { event };
                self.heroes.insert(hero.id, hero.clone());
                Some((event, hero))
            }
        }
    }
}

impl Channel for SuperheroesChannel {
    fn join(&mut self, _topic: &str, _payload: Payload, ctx: &mut ChannelCtx) -> JoinResult {
        // Subscribe before loading: a change committed in between arrives as an event and is
        // reconciled by last-write-wins instead of being lost.
        ctx.subscribe(CHANGES_TOPIC).map_err(|e| Payload::from(json!({"reason": e.to_string()})))?;
        if let Err(e) = self.load() {
            log::warn!("superheroes:lobby join: {e}");
            return Err(json!({"reason": "database unavailable"}).into());
        }
        self.push_hydrate(ctx);
        Ok(Payload::empty())
    }

    fn handle_info(&mut self, info: Info, ctx: &mut ChannelCtx) -> Flow {
        let Info::Broadcast(b) = info else { return Flow::Continue };
        if b.event == EVENT_RESYNC {
            return match self.load() {
                Ok(()) => {
                    self.push_hydrate(ctx);
                    Flow::Continue
                }
                // The client rejoins after phx_error, and its join reloads the list.
                Err(e) => Flow::Stop(StopReason::Error(format!("resync failed: {e}"))),
            };
        }
        let Some((action, hero)) = decode_change(&b.event, b.payload.as_json()) else {
            log::warn!("superheroes:lobby: ignoring malformed change {:?}", b.event);
            return Flow::Continue;
        };
        if let Some((event, hero)) = self.apply(action, hero) {
            ctx.push(event, json!({ "superhero": hero, "message_id": message_id() }));
        }
        Flow::Continue
    }
}

fn decode_change(event: &str, payload: Option<&Value>) -> Option<(Action, Superhero)> {
    let action = match event {
        "create" => Action::Create,
        "update" => Action::Update,
        "delete" => Action::Delete,
        _ => return None,
    };
    let hero = serde_json::from_value(payload?.get("superhero")?.clone()).ok()?;
    Some((action, hero))
}

fn message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The listener callback: publishes each committed change (or a resync) on `CHANGES_TOPIC`.
pub fn publish_store_event(pubsub: &crate::PubSub, event: StoreEvent) {
    let result = match event {
        StoreEvent::Change { action, superhero } => {
            let event = match action {
                Action::Create => "create",
                Action::Update => "update",
                Action::Delete => "delete",
            };
            pubsub.broadcast(CHANGES_TOPIC, event, json!({ "superhero": superhero }).into())
        }
        StoreEvent::Resync => pubsub.broadcast(CHANGES_TOPIC, EVENT_RESYNC, Payload::empty()),
    };
    if let Err(e) = result {
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
        channel.heroes.insert(1, hero(1, 1, 0, "one"));
        let got: Vec<&str> =
            events.iter().filter_map(|(a, h)| channel.apply(*a, h.clone()).map(|(e, _)| e)).collect();
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
        check(&[(Update, hero(1, 3, 9, "three")), (Update, hero(1, 2, 5, "two"))], &["update"], &[(1, "three")]);
        check(&[(Update, hero(1, 1, 0, "same"))], &[], &[(1, "one")]);
        // Equal timestamps: the version decides, deterministically.
        check(&[(Update, hero(1, 3, 0, "v3")), (Update, hero(1, 2, 0, "v2"))], &["update"], &[(1, "v3")]);
        check(&[(Create, hero(2, 1, 1, "new")), (Create, hero(2, 1, 1, "new"))], &["create"], &[(1, "one"), (2, "new")]);
        check(&[(Delete, hero(1, 1, 0, "one")), (Update, hero(1, 1, 0, "late"))], &["delete"], &[]);
        check(&[(Delete, hero(7, 1, 0, "unknown"))], &[], &[(1, "one")]);
    }
}
