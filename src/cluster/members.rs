//! Cluster membership as this node sees it: who sent a notification (every one counts as a
//! heartbeat) and when. Pure state behind a lock; the inbound listener writes it, `/cluster`
//! reads it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One other node.
#[derive(Debug, Clone)]
struct Member {
    incarnation: u64,
    last_seen: Instant,
}

/// What changed when a notification arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A node we knew was up.
    Known,
    /// A node (or a new incarnation of one) we did not have: it needs our full state.
    Joined { restarted: bool },
}

#[derive(Debug, Default)]
pub struct Members {
    nodes: BTreeMap<String, Member>,
}

/// `/cluster`'s view of one node.
#[derive(Debug, Serialize, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub incarnation: u64,
    pub last_seen_ms: u64,
}

impl Members {
    /// Records a notification from (`name`, `incarnation`).
    pub fn seen(&mut self, name: &str, incarnation: u64, now: Instant) -> Seen {
        let fresh = Member { incarnation, last_seen: now };
        let Some(m) = self.nodes.get_mut(name) else {
            self.nodes.insert(name.to_string(), fresh);
            return Seen::Joined { restarted: false };
        };
        if m.incarnation != incarnation {
            *m = fresh;
            return Seen::Joined { restarted: true };
        }
        m.last_seen = now;
        Seen::Known
    }

    /// Forgets `name` (its orderly `bye`); true if it was known.
    pub fn left(&mut self, name: &str) -> bool {
        self.nodes.remove(name).is_some()
    }

    /// Removes and returns the nodes silent for longer than `timeout`: they are down.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<String> {
        let down: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > timeout)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &down {
            self.nodes.remove(name);
        }
        down
    }

    /// The live nodes other than this one, by name.
    pub fn view(&self, now: Instant) -> Vec<NodeView> {
        let view = |(name, m): (&String, &Member)| NodeView {
            name: name.clone(),
            incarnation: m.incarnation,
            last_seen_ms: now.saturating_duration_since(m.last_seen).as_millis() as u64,
        };
        self.nodes.iter().map(view).collect()
    }

    /// Forgets everyone, after this node lost its listener: it cannot know who is still up,
    /// and every node it hears of again is treated as joining (full state).
    pub fn clear(&mut self) {
        self.nodes.clear();
    }
}

/// How far this node has heard the cluster, told by probes it sends itself.
///
/// PostgreSQL delivers notifications to a listener in commit order. The listener notifies
/// itself (a probe on a channel of its own) every `PROBE_EVERY`; when the probe sent at `t`
/// comes back, it has read everything the other nodes committed before `t`. So silence is
/// judged as of `t`, not of the clock: a listener that is behind (its thread starved of CPU in
/// a join storm, the process stopped) does not take peers whose heartbeats are still queued
/// for it for dead. While no probe comes back (the database unreachable) the time stands
/// still, and nobody is taken for dead on that account.
#[derive(Debug)]
pub struct Heard {
    started: Instant,
    probe: Option<Instant>,
}

impl Heard {
    pub fn new(started: Instant) -> Heard {
        Heard { started, probe: None }
    }

    /// Milliseconds since `started`: a probe's payload.
    pub fn stamp(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// The probe stamped `stamp` came back; returns when it was sent.
    pub fn back(&mut self, stamp: u64) -> Instant {
        let sent = self.started + Duration::from_millis(stamp);
        self.probe = Some(self.probe.map_or(sent, |p| p.max(sent)));
        sent
    }

    /// The time up to which silence may be judged: `now` until a first probe came back.
    pub fn until(&self, now: Instant) -> Instant {
        self.probe.map_or(now, |sent| sent.min(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_judged_as_far_as_the_probes_came_back() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut heard = Heard::new(t0);
        assert_eq!(heard.until(at(5_000)), at(5_000), "nothing known to be queued yet");
        heard.back(heard.stamp(at(200)));
        // Whatever the clock says, only what was committed before 200 ms is known to be read.
        assert_eq!(heard.until(at(5_000)), at(200));
        heard.back(heard.stamp(at(100)));
        assert_eq!(heard.until(at(5_000)), at(200), "a late probe does not move it back");
        heard.back(heard.stamp(at(4_950)));
        assert_eq!(heard.until(at(5_000)), at(4_950));
    }

    #[test]
    fn joins_restarts_and_expiry() {
        let t0 = Instant::now();
        let mut m = Members::default();
        assert_eq!(m.seen("a", 1, t0), Seen::Joined { restarted: false });
        assert_eq!(m.seen("a", 1, t0), Seen::Known);
        assert_eq!(m.seen("a", 2, t0), Seen::Joined { restarted: true });
        let later = t0 + Duration::from_secs(2);
        assert_eq!(m.seen("b", 7, later), Seen::Joined { restarted: false });
        assert_eq!(m.expire(later, Duration::from_secs(1)), ["a"]);
        let names: Vec<String> = m.view(later).into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["b"]);
        assert!(m.left("b"));
        assert!(!m.left("b"));
        assert!(m.view(later).is_empty());
    }
}
