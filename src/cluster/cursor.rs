//! Where this node stands in every other node's stream of batches. Pure state, owned by the
//! inbound listener; unit-tested as a table.
//!
//! Every batch a node relays has a number, 1, 2, 3… per incarnation, and is kept a while in
//! `cluster_messages` (the log). Each notification carries its origin's high-water mark: the
//! batch's own number, or for a heartbeat the last number committed. A receiver that finds
//! the mark past what it delivered has missed batches (its listener was away, or the batch
//! was too big for NOTIFY) and fetches them from the log before going on, so per origin the
//! batches are delivered once and in their order.

use std::collections::HashMap;
use std::ops::RangeInclusive;

/// What to do with one notification.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Batches to fetch from the log and deliver first, in order.
    pub fetch: Option<RangeInclusive<u64>>,
    /// Deliver the batch the notification carries inline.
    pub deliver: bool,
}

/// The notification, as far as ordering goes.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub incarnation: u64,
    /// The batch's number, or a heartbeat's last committed number.
    pub batch: u64,
    /// Carries a batch (inline, or stored when too big): `batch` is its own number.
    pub is_batch: bool,
    /// The batch is inline; otherwise it must be fetched from the log.
    pub inline: bool,
}

#[derive(Debug, Clone, Copy)]
struct Cursor {
    incarnation: u64,
    /// Every batch up to this number has been delivered (or counted as missed).
    delivered: u64,
}

#[derive(Debug, Default)]
pub struct Cursors {
    origins: HashMap<String, Cursor>,
}

impl Cursors {
    /// Plans one notification of `origin`. A node first heard is followed from this
    /// notification on (its history is not replayed); a new incarnation of a known node is
    /// followed from its first batch, since this node may have been away when it started.
    pub fn plan(&mut self, origin: &str, mark: Mark) -> Plan {
        let before = mark.batch - u64::from(mark.is_batch && mark.batch > 0);
        let cursor = match self.origins.get(origin) {
            Some(c) if c.incarnation == mark.incarnation => *c,
            Some(_) => Cursor { incarnation: mark.incarnation, delivered: 0 },
            None => Cursor { incarnation: mark.incarnation, delivered: before },
        };
        self.origins.insert(origin.to_string(), cursor);
        let fresh = mark.is_batch && mark.batch > cursor.delivered;
        let fetch_to = if fresh && !mark.inline { mark.batch } else { before };
        Plan {
            fetch: (fetch_to > cursor.delivered).then(|| cursor.delivered + 1..=fetch_to),
            deliver: fresh && mark.inline,
        }
    }

    /// Batches up to `batch` of `origin` are delivered (or given up as missed).
    pub fn advance(&mut self, origin: &str, batch: u64) {
        if let Some(c) = self.origins.get_mut(origin) {
            c.delivered = c.delivered.max(batch);
        }
    }

    /// Every origin followed, with its incarnation and the next batch to deliver: what to
    /// fetch after this node's listener was away.
    pub fn resume_points(&self) -> Vec<(String, u64, u64)> {
        let point = |(name, c): (&String, &Cursor)| (name.clone(), c.incarnation, c.delivered);
        self.origins.iter().map(point).collect()
    }

    /// `origin` said `bye`, or is down: its stream has ended.
    pub fn forget(&mut self, origin: &str) {
        self.origins.remove(origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(incarnation: u64, batch: u64) -> Mark {
        Mark { incarnation, batch, is_batch: true, inline: true }
    }

    fn heartbeat(incarnation: u64, batch: u64) -> Mark {
        Mark { incarnation, batch, is_batch: false, inline: false }
    }

    fn plan(fetch: Option<RangeInclusive<u64>>, deliver: bool) -> Plan {
        Plan { fetch, deliver }
    }

    /// Plans `mark` and, like the listener, records what it delivered.
    fn step(c: &mut Cursors, mark: Mark) -> Plan {
        let p = c.plan("a", mark);
        let last = if p.deliver { Some(mark.batch) } else { p.fetch.clone().map(|r| *r.end()) };
        if let Some(last) = last {
            c.advance("a", last);
        }
        p
    }

    #[test]
    fn in_order_duplicates_gaps_heartbeats_and_restarts() {
        let mut c = Cursors::default();
        // First heard at batch 7: followed from there, nothing replayed.
        assert_eq!(step(&mut c, batch(1, 7)), plan(None, true));
        assert_eq!(step(&mut c, batch(1, 8)), plan(None, true));
        // A batch delivered twice (fetched, then notified) is skipped.
        assert_eq!(step(&mut c, batch(1, 8)), plan(None, false));
        // A gap: 9 and 10 come from the log before 11.
        assert_eq!(step(&mut c, batch(1, 11)), plan(Some(9..=10), true));
        // A heartbeat saying 13 was committed: 12 and 13 were missed.
        assert_eq!(step(&mut c, heartbeat(1, 13)), plan(Some(12..=13), false));
        assert_eq!(step(&mut c, heartbeat(1, 13)), plan(None, false));
        // Too big for NOTIFY: fetched by its own number.
        let stored = Mark { inline: false, ..batch(1, 14) };
        assert_eq!(step(&mut c, stored), plan(Some(14..=14), false));
        // A restart: the new incarnation is followed from its first batch.
        assert_eq!(step(&mut c, batch(2, 3)), plan(Some(1..=2), true));
        assert_eq!(c.resume_points(), [("a".to_string(), 2, 3)]);
        c.forget("a");
        assert!(c.resume_points().is_empty());
    }

    #[test]
    fn a_node_first_heard_by_its_heartbeat_is_followed_from_its_mark() {
        let mut c = Cursors::default();
        assert_eq!(step(&mut c, heartbeat(5, 40)), plan(None, false));
        assert_eq!(step(&mut c, batch(5, 41)), plan(None, true));
        let first_stored = Mark { inline: false, ..batch(6, 1) };
        assert_eq!(step(&mut c, first_stored), plan(Some(1..=1), false));
    }
}
