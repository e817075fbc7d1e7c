//! Presence across the nodes of a cluster (Phoenix.Tracker's replication): each tracker
//! broadcasts on `REPLICATION_TOPIC` through PubSub, which the cluster relays to the other
//! nodes, and subscribes to it to hear theirs. Pure message shapes and the peer table here;
//! the tracker (`tracker.rs`) acts on them.
//!
//! - `delta`: what changed since the last one (`State::take_delta`), merged by every peer.
//! - `heartbeat`: every `heartbeat`, the sender's digest of its own presences (`State::digest`).
//!   A peer whose own digest of the sender differs has missed something and asks for `want`.
//! - `state`: the sender's own presences whole (`State::snapshot`), sent when a new peer
//!   appears (it has nothing of ours) and when a peer asks for it.
//! - `bye`: an orderly stop; peers drop its presences at once. A peer silent for `timeout` is
//!   down, and its presences leave the same way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::state::{Context, Delta, Dot, Presence, REMOTE_OWNER, Replica};

/// The PubSub topic trackers talk on. Clients cannot join it (no channel matches it).
pub const REPLICATION_TOPIC: &str = "phx:presence";

/// Replication settings; `None` in `PresenceConfig` for a single node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationConfig {
    pub heartbeat: Duration,
    /// A peer silent this long is down.
    pub timeout: Duration,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Message {
    Delta {
        from: String,
        delta: WireDelta,
    },
    State {
        from: String,
        delta: WireDelta,
    },
    Heartbeat {
        from: String,
        clock: u64,
        held: usize,
    },
    /// Asks `to` for its `state`.
    Want {
        from: String,
        to: String,
    },
    Bye {
        from: String,
    },
}

impl Message {
    pub fn from(&self) -> &str {
        match self {
            Message::Delta { from, .. }
            | Message::State { from, .. }
            | Message::Heartbeat { from, .. }
            | Message::Want { from, .. }
            | Message::Bye { from } => from,
        }
    }
}

/// A `Delta` on the wire: dots as `[replica, clock]`, values as `[replica, clock, topic,
/// key, phx_ref, meta]` (the meta's JSON text).
#[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct WireDelta {
    vv: Vec<(String, u64)>,
    cloud: Vec<(String, u64)>,
    values: Vec<(String, u64, String, String, String, String)>,
}

impl WireDelta {
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty() && self.values.is_empty()
    }
}

impl From<&Delta> for WireDelta {
    fn from(d: &Delta) -> WireDelta {
        let (vv, cloud) = d.context.parts();
        let value = |(dot, p): (&Dot, &Presence)| {
            let text = |s: &Arc<str>| s.to_string();
            (
                text(&dot.replica),
                dot.clock,
                text(&p.topic),
                text(&p.key),
                text(&p.phx_ref),
                text(&p.meta),
            )
        };
        WireDelta {
            vv: vv.iter().map(|(r, c)| (r.to_string(), *c)).collect(),
            cloud: cloud.iter().map(|d| (d.replica.to_string(), d.clock)).collect(),
            values: d.values.iter().map(value).collect(),
        }
    }
}

impl WireDelta {
    /// Back to a `Delta`; every value gets `REMOTE_OWNER`. `None` for a meta that is not JSON.
    pub fn into_delta(self) -> Option<Delta> {
        let dot = |(r, c): (String, u64)| Dot { replica: Replica::from(r), clock: c };
        let vv: BTreeMap<Replica, u64> = self.vv.into_iter().map(|(r, c)| (r.into(), c)).collect();
        let cloud: BTreeSet<Dot> = self.cloud.into_iter().map(dot).collect();
        let mut values = BTreeMap::new();
        for (r, c, topic, key, phx_ref, meta) in self.values {
            serde_json::from_str::<Value>(&meta).ok().filter(Value::is_object)?;
            let presence = Presence {
                topic: topic.into(),
                key: key.into(),
                owner: REMOTE_OWNER,
                phx_ref: phx_ref.into(),
                meta: meta.into(),
            };
            values.insert(dot((r, c)), presence);
        }
        Some(Delta { context: Context::from_parts(vv, cloud), values })
    }
}

/// The other trackers this one has heard, by replica, and when.
#[derive(Debug, Default)]
pub struct Peers {
    last_seen: HashMap<String, Instant>,
}

impl Peers {
    /// Records a message of `from`; true if it is new (it needs our whole state).
    pub fn seen(&mut self, from: &str, now: Instant) -> bool {
        self.last_seen.insert(from.to_string(), now).is_none()
    }

    pub fn left(&mut self, from: &str) -> bool {
        self.last_seen.remove(from).is_some()
    }

    /// True if some peer has been silent for longer than `timeout`.
    pub fn overdue(&self, now: Instant, timeout: Duration) -> bool {
        self.last_seen.values().any(|seen| now.saturating_duration_since(*seen) > timeout)
    }

    /// Removes and returns the peers silent for longer than `timeout`.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<String> {
        let down: Vec<String> = (self.last_seen.iter())
            .filter(|(_, seen)| now.saturating_duration_since(**seen) > timeout)
            .map(|(r, _)| r.clone())
            .collect();
        for r in &down {
            self.last_seen.remove(r);
        }
        down
    }
}

/// Requests for whole states, coalesced to at most one `Want` and one `State` per period.
///
/// Why: a tracker whose mailbox overflowed asks every node for its state, and each answer is
/// a node's whole state, which every node receives. Sent once per request, a join storm that
/// overflows mailboxes made more requests than answers could be taken, each answer overflowed
/// the mailboxes again, and the cluster spent its CPU and memory on whole states (found by
/// the `cluster` bench at 70,000 clients: 19 GB, joins timing out). One `State` answers every
/// request made before it (it goes to every node), so sending one per period loses nothing.
#[derive(Debug, Default)]
pub struct Wants {
    /// Whom to ask for their state: one replica, or `*` for every node.
    ask: Option<String>,
    asked_at: Option<Instant>,
    /// Someone wants our state.
    give: bool,
    given_at: Option<Instant>,
}

impl Wants {
    /// Ask `to` (a replica, or `*`) for its state at the next chance.
    pub fn ask(&mut self, to: &str) {
        self.ask = match self.ask.take() {
            Some(pending) if pending != to => Some("*".to_string()),
            _ => Some(to.to_string()),
        };
    }

    /// Send our state at the next chance.
    pub fn give(&mut self) {
        self.give = true;
    }

    /// What may go out at `now`: whom to ask (if anyone), and whether to send our state.
    pub fn due(&mut self, now: Instant, period: Duration) -> (Option<String>, bool) {
        let ready =
            |at: Option<Instant>| at.is_none_or(|t| now.saturating_duration_since(t) >= period);
        let ask = match self.ask.is_some() && ready(self.asked_at) {
            true => {
                self.asked_at = Some(now);
                self.ask.take()
            }
            false => None,
        };
        let give = self.give && ready(self.given_at);
        if give {
            self.give = false;
            self.given_at = Some(now);
        }
        (ask, give)
    }

    /// Something waits for its period to end.
    pub fn pending(&self) -> bool {
        self.ask.is_some() || self.give
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::state::{Limits, State};
    use serde_json::json;

    fn state(replica: &str) -> State {
        let limits = Limits { max_meta_bytes: 1024, max_metas_per_key: 8, max_per_topic: 100 };
        State::new(replica.into(), limits)
    }

    fn roundtrip(delta: &Delta) -> Delta {
        let msg = Message::Delta { from: "a".into(), delta: WireDelta::from(delta) };
        let text = serde_json::to_string(&msg).unwrap();
        match serde_json::from_str::<Message>(&text).unwrap() {
            Message::Delta { delta, .. } => delta.into_delta().unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deltas_cross_the_wire_and_replicas_converge() {
        let (mut a, mut b) = (state("a"), state("b"));
        let meta = |v: i64| json!({ "v": v }).as_object().unwrap().clone();
        a.track(1, "room:1", "alice", meta(1)).unwrap();
        a.track(2, "room:1", "bob", meta(2)).unwrap();
        let joins = b.merge(&roundtrip(&a.take_delta()));
        assert_eq!(joins.joins.len(), 2);
        assert_eq!(b.digest("a"), a.digest("a"));
        a.untrack_owner(1);
        let leaves = b.merge(&roundtrip(&a.take_delta()));
        assert_eq!(leaves.leaves.len(), 1);
        assert_eq!(b.get_by_key("room:1", "alice").len(), 0);
        assert_eq!(b.digest("a"), (2, 1));
        // A node that went down: its presences leave, and nothing of it is replicated.
        assert_eq!(b.remove_replica("a").leaves.len(), 1);
        assert_eq!(b.count("room:1"), 0);
        assert!(b.take_delta().values.is_empty());
        // Its whole state, sent again, is taken whole.
        assert_eq!(b.merge(&roundtrip(&a.snapshot())).joins.len(), 1);
    }

    #[test]
    fn a_meta_that_is_not_json_is_refused() {
        let mut wire = WireDelta::default();
        wire.values.push(("a".into(), 1, "t".into(), "k".into(), "r".into(), "nope".into()));
        assert!(wire.into_delta().is_none());
    }

    #[test]
    fn a_storm_of_state_requests_sends_one_state_and_one_request_per_period() {
        let (t0, period) = (Instant::now(), Duration::from_secs(1));
        let mut wants = Wants::default();
        wants.ask("b");
        wants.give();
        assert_eq!(
            wants.due(t0, period),
            (Some("b".to_string()), true),
            "the first go out at once"
        );
        for i in 0..1000 {
            wants.ask(if i % 2 == 0 { "b" } else { "c" });
            wants.give();
            assert_eq!(wants.due(t0 + Duration::from_millis(i / 2), period), (None, false));
        }
        assert!(wants.pending());
        let later = t0 + period;
        assert_eq!(wants.due(later, period), (Some("*".to_string()), true), "one for all of them");
        assert!(!wants.pending());
        assert_eq!(wants.due(later + period * 2, period), (None, false), "nothing asked since");
    }

    #[test]
    fn peers_join_leave_and_expire() {
        let t0 = Instant::now();
        let mut peers = Peers::default();
        assert!(peers.seen("a", t0));
        assert!(!peers.seen("a", t0));
        assert!(peers.seen("b", t0 + Duration::from_secs(2)));
        assert_eq!(peers.expire(t0 + Duration::from_secs(2), Duration::from_secs(1)), ["a"]);
        assert!(peers.left("b"));
    }
}
