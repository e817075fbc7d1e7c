//! The lobby's one copy of the superheroes table, shared by every `superheroes:lobby` channel.
//!
//! `LobbyState` is pure: the rows, a sequence number that grows with every change clients
//! must hear of, last-write-wins applied once per change, and the encoded `hydrate` payload,
//! cached per sequence number so that every joiner of one version shares one encoding.
//! `Lobby` is the handle: the state under a mutex (held for a comparison, or for the one load
//! that every waiting joiner then shares) plus the store it loads from.
//!
//! A channel remembers only the sequence number of what it sent its client: it subscribes to
//! the changes first, then takes `Lobby::snapshot`, and afterwards forwards only changes
//! numbered above the snapshot's, so nothing is missed or sent twice. This works because the
//! listener applies each change here *before* publishing it: a change published after the
//! channel subscribed is either in the snapshot (lower number) or arrives after it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use serde_json::json;

use crate::protocol::JsonText;
use crate::pubsub::SharedPush;
use crate::store::listener::Action;
use crate::store::{Store, superheroes, superheroes::Superhero};

/// Last-write-wins order of one row's versions.
type Key = (DateTime<Utc>, i64);

/// The channel topic every lobby client joins.
pub const TOPIC: &str = "superheroes:lobby";

/// One `hydrate`: the rows as of change `seq`, encoded once and framed once per serializer,
/// shared by every client it is sent to.
#[derive(Debug)]
pub struct Hydrate {
    pub seq: u64,
    pub push: SharedPush,
}

/// The table as clients should see it. Pure: no I/O, no locks.
#[derive(Default)]
pub struct LobbyState {
    heroes: BTreeMap<i64, Arc<Superhero>>,
    /// Ids deleted since the last load, with the version they had, so that a late update
    /// (committed before the load, delivered after it) cannot bring a deleted hero back.
    deleted: HashMap<i64, Key>,
    seq: u64,
    hydrate: Option<Arc<Hydrate>>,
}

impl LobbyState {
    /// A state holding `rows`, numbered after every change `previous` announced.
    pub fn loaded(rows: Vec<Superhero>, previous: u64) -> LobbyState {
        let heroes = rows.into_iter().map(|h| (h.id, Arc::new(h))).collect();
        LobbyState { heroes, deleted: HashMap::new(), seq: previous + 1, hydrate: None }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn len(&self) -> usize {
        self.heroes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heroes.is_empty()
    }

    /// Applies one committed change, last write wins. Returns the event clients must be sent
    /// and its sequence number, or `None` when the change is stale or changes nothing.
    pub fn apply(&mut self, action: Action, hero: &Arc<Superhero>) -> Option<(u64, &'static str)> {
        let event = self.merge(action, hero)?;
        self.seq += 1;
        self.hydrate = None;
        Some((self.seq, event))
    }

    fn merge(&mut self, action: Action, hero: &Arc<Superhero>) -> Option<&'static str> {
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
                let event = match (action, current) {
                    (Action::Update, Some(_)) => "update",
                    _ => "create",
                };
                self.heroes.insert(hero.id, hero.clone());
                Some(event)
            }
        }
    }

    /// The `hydrate` of the current version, encoded on first use and shared afterwards.
    pub fn hydrate(&mut self) -> Result<Arc<Hydrate>, serde_json::Error> {
        if let Some(h) = &self.hydrate {
            return Ok(h.clone());
        }
        let list: Vec<&Superhero> = self.heroes.values().map(|h| &**h).collect();
        let payload =
            JsonText::encode(&json!({ "superheroes": list, "message_id": message_id() }))?;
        let push = SharedPush::new(TOPIC, "hydrate", payload.into());
        let hydrate = Arc::new(Hydrate { seq: self.seq, push });
        self.hydrate = Some(hydrate.clone());
        Ok(hydrate)
    }

    /// The rows, ordered by id (tests and diagnostics).
    pub fn rows(&self) -> impl Iterator<Item = &Superhero> {
        self.heroes.values().map(|h| &**h)
    }
}

/// A fresh message id: each push names itself, as the seed's `Ecto.UUID.generate()`.
pub fn message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// After a failed load, joins within this are refused at once instead of each waiting for the
/// database in turn behind the lock.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The shared handle; clone it freely. Every holder of the lock is bounded: a load by the
/// pool's checkout (5 s) and statement (10 s) timeouts, the rest by CPU work on the table.
#[derive(Clone)]
pub struct Lobby {
    inner: Arc<Mutex<Inner>>,
    store: Store,
    /// Test hook (`hold_channels`): channels take it shared before each change they handle.
    gate: Arc<RwLock<()>>,
    /// A resync could not be published (registry congested): publish it before the next event.
    resync_owed: Arc<AtomicBool>,
}

struct Inner {
    /// `None` until the first join (or after a failed reload): the next `snapshot` loads.
    state: Option<LobbyState>,
    /// Sequence numbers keep growing across reloads.
    last_seq: u64,
    failed_at: Option<Instant>,
}

impl Lobby {
    pub fn new(store: Store) -> Lobby {
        let inner = Inner { state: None, last_seq: 0, failed_at: None };
        let (gate, resync_owed) = (Arc::default(), Arc::default());
        Lobby { inner: Arc::new(Mutex::new(inner)), store, gate, resync_owed }
    }

    /// Remembers that channels must be told to resync at the next opportunity.
    pub fn owe_resync(&self) {
        self.resync_owed.store(true, Ordering::Relaxed);
    }

    /// Whether a resync is owed; clears the debt.
    pub fn take_resync_owed(&self) -> bool {
        self.resync_owed.swap(false, Ordering::Relaxed)
    }

    /// For tests that need a slow lobby channel: until the guard is dropped, every lobby
    /// channel stalls (up to 10 s per message) before handling a change, so its mailbox fills.
    #[doc(hidden)]
    pub fn hold_channels(&self) -> impl Drop + '_ {
        self.gate.write()
    }

    /// Where channels wait while a test holds them (uncontended otherwise: one atomic).
    pub(super) fn pass_gate(&self) {
        drop(self.gate.try_read_for(Duration::from_secs(10)));
    }

    /// The current `hydrate`, loading the table first if nobody has yet. Concurrent joiners
    /// wait for the one load and share it.
    pub fn snapshot(&self) -> Result<Arc<Hydrate>, String> {
        let mut inner = self.inner.lock();
        if inner.state.is_none() {
            self.load(&mut inner)?;
        }
        let state = inner.state.as_mut().expect("loaded above");
        state.hydrate().map_err(|e| e.to_string())
    }

    /// Applies a committed change; `Some((seq, event))` if clients must hear of it. Before the
    /// first load there is nothing to apply it to, and the load will include it.
    pub fn apply(&self, action: Action, hero: &Arc<Superhero>) -> Option<(u64, &'static str)> {
        let mut inner = self.inner.lock();
        let applied = inner.state.as_mut()?.apply(action, hero);
        if let Some((seq, _)) = applied {
            inner.last_seq = seq;
        }
        applied
    }

    /// Reloads the table once for everyone (after changes may have been lost). On failure
    /// the state is dropped, so channels asking for a snapshot learn that the lobby is down.
    pub fn reload(&self) -> Result<(), String> {
        let mut inner = self.inner.lock();
        inner.failed_at = None;
        self.load(&mut inner)
    }

    fn load(&self, inner: &mut Inner) -> Result<(), String> {
        if inner.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return Err("database unavailable".into());
        }
        let rows = self.store.client().and_then(|mut c| superheroes::list(&mut *c));
        match rows {
            Ok(rows) => {
                let state = LobbyState::loaded(rows, inner.last_seq);
                inner.last_seq = state.seq();
                inner.state = Some(state);
                inner.failed_at = None;
                Ok(())
            }
            Err(e) => {
                log::warn!("superheroes lobby: cannot load the table: {e}");
                inner.state = None;
                inner.failed_at = Some(Instant::now());
                Err("database unavailable".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use crate::protocol::Payload;

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
        let mut state = LobbyState::loaded(vec![hero(1, 1, 0, "one")], 0);
        let got: Vec<&str> = events
            .iter()
            .filter_map(|(a, h)| state.apply(*a, &Arc::new(h.clone())))
            .map(|(_, event)| event)
            .collect();
        assert_eq!(got, pushed);
        let names: Vec<(i64, &str)> = state.rows().map(|h| (h.id, h.name.as_str())).collect();
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
        // An update of a row the client never had (its create was lost) is a create for it.
        check(&[(Update, hero(3, 2, 1, "late"))], &["create"], &[(1, "one"), (3, "late")]);
    }

    #[test]
    fn sequence_numbers_count_only_pushed_changes_and_survive_reloads() {
        let mut state = LobbyState::loaded(vec![hero(1, 1, 0, "one")], 41);
        assert_eq!(state.seq(), 42);
        assert_eq!(state.apply(Action::Update, &Arc::new(hero(1, 1, 0, "stale"))), None);
        assert_eq!(
            state.apply(Action::Update, &Arc::new(hero(1, 2, 1, "b"))),
            Some((43, "update"))
        );
        let reloaded = LobbyState::loaded(state.rows().cloned().collect(), state.seq());
        assert_eq!(reloaded.seq(), 44);
    }

    #[test]
    fn the_hydrate_is_encoded_once_per_version() {
        let mut state = LobbyState::loaded(vec![hero(2, 1, 0, "b"), hero(1, 1, 0, "a")], 0);
        let first = state.hydrate().unwrap();
        assert!(Arc::ptr_eq(&first, &state.hydrate().unwrap()));
        let Payload::JsonText(text) = first.push.payload() else { panic!("encoded as text") };
        let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        let ids: Vec<i64> = value["superheroes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [1, 2]);
        state.apply(Action::Delete, &Arc::new(hero(1, 1, 0, "a")));
        let second = state.hydrate().unwrap();
        assert_eq!(second.seq, first.seq + 1);
        assert!(!Arc::ptr_eq(&first, &second));
    }
}
