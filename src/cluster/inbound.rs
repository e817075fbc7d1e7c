//! The inbound process (`cluster-listen`): its own connection LISTENs on `phx_cluster` and
//! hands every broadcast from another node to this node's registry, the same dispatch as a
//! local broadcast (`PubSub::dispatch`, never relayed again). Every notification is also a
//! heartbeat of its origin (`Members`); a node silent for `node_timeout` is down, one that
//! says `bye` is gone at once.
//!
//! Nothing is lost across a reconnect: notifications sent while this connection is down
//! never reach it (PostgreSQL keeps none for a listener that is not there), but every batch is
//! also in the log (`cluster_messages`, see `relay.rs`), and `Cursors` knows up to which batch
//! of each origin this node delivered. After the reconnect (LISTEN first, so nothing falls in
//! between) it fetches the rest of every origin's batches in order; later, any notification
//! whose number is past the cursor (a gap, a batch too big for NOTIFY) fetches what lies
//! between. Batches gone from the log are counted (`Stats::missed`) and logged. Membership is
//! forgotten as soon as the connection is lost, so `/cluster` lists no peer until it is heard
//! again, and every node is then treated as newly joined (Presence takes its full state).
//!
//! Silence is judged as far as this listener has read, not by the clock (`members::Heard`):
//! every `PROBE_EVERY` it notifies itself on a channel of its own, and a probe coming back
//! means that everything committed before it was read. `PubSub::heard_until` gives the same
//! time to Presence.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::cursor::{Cursors, Mark};
use super::members::Seen;
use super::wire::{self, Envelope};
use super::{CHANNEL, Shared, backoff_sleep};
use crate::pubsub::PubSub;

/// Notifications are awaited in slices of this, so stops and expiries are noticed.
const POLL: Duration = Duration::from_millis(100);
/// How often the listener probes how far it has read (`members::Heard`): at most this much
/// later than the clock alone would a dead peer be noticed.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Batches fetched from the log per query.
const PAGE: i64 = 256;
const FETCH: &str = "SELECT batch, body FROM cluster_messages WHERE origin = $1 \
    AND incarnation = $2 AND batch >= $3 AND batch <= $4 ORDER BY batch LIMIT $5";

pub(super) struct InboundProcess {
    pub pg: postgres::Config,
    pub pubsub: PubSub,
    pub stop: Receiver<()>,
    pub shared: Arc<Shared>,
    /// Per origin, the last batch delivered here; kept across reconnects.
    pub cursors: Cursors,
    pub probe: Probe,
}

/// This connection's probe channel, and the probe on its way (one at a time).
#[derive(Default)]
pub(super) struct Probe {
    channel: String,
    sent: Option<Instant>,
    back: bool,
}

impl InboundProcess {
    /// Bounded by the stop channel.
    pub fn run(mut self) {
        let mut attempt = 0u32;
        let mut first = true;
        while let Some(mut client) = self.connect(&mut attempt) {
            let caught_up = first || self.catch_up(&mut client);
            first = false;
            if caught_up && self.listen(&mut client) {
                return;
            }
            // Forgotten at once, not at the reconnect: while this node hears nothing it cannot
            // say who is up, and `/cluster` must not show peers it has not heard since (a node
            // seen again is then heard on the new connection, after LISTEN).
            self.shared.members.lock().clear();
        }
    }

    /// After a reconnect: every origin's batches past its cursor, from the log. False if the
    /// connection failed meanwhile.
    fn catch_up(&mut self, client: &mut Client) -> bool {
        log::warn!("cluster-listen: listening again; fetching what was missed from the log");
        for (origin, incarnation, delivered) in self.cursors.resume_points() {
            if let Err(e) = self.fetch(client, &origin, incarnation, delivered + 1, None) {
                log::warn!("cluster-listen: database connection lost: {e}; reconnecting");
                return false;
            }
        }
        true
    }

    fn connect(&mut self, attempt: &mut u32) -> Option<Client> {
        loop {
            let connected = self.pg.connect(NoTls).and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
                let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[])?.get(0);
                let channel = format!("{CHANNEL}_probe_{pid}");
                c.batch_execute(&format!("LISTEN {channel}"))?;
                Ok((c, channel))
            });
            match connected {
                Ok((client, channel)) => {
                    self.probe = Probe { channel, sent: None, back: true };
                    return Some(client);
                }
                Err(e) => {
                    *attempt += 1;
                    let wait = backoff_sleep(*attempt);
                    log::warn!("cluster-listen: cannot connect ({e}); retry in {wait:?}");
                    if self.stopped(wait) {
                        return None;
                    }
                }
            }
        }
    }

    /// Delivers until stopped (true) or the connection is lost (false).
    fn listen(&mut self, client: &mut Client) -> bool {
        loop {
            if self.stopped(Duration::ZERO) {
                return true;
            }
            let probed = self.probe(client);
            self.expire();
            let next = client.notifications().timeout_iter(POLL).next();
            let result = match next {
                _ if probed.is_err() => probed,
                Ok(Some(n)) if n.channel() == CHANNEL => self.receive(client, n.payload()),
                Ok(Some(n)) => {
                    self.probe_back(n.payload());
                    Ok(())
                }
                Ok(None) if client.is_closed() => Err("connection closed".to_string()),
                Ok(None) => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                log::warn!("cluster-listen: database connection lost: {e}; reconnecting");
                return false;
            }
        }
    }

    /// One notification. Err only when the connection failed (fetching from the log).
    fn receive(&mut self, client: &mut Client, text: &str) -> Result<(), String> {
        let env: Envelope = match serde_json::from_str(text) {
            Ok(env) => env,
            Err(e) => {
                log::warn!("cluster-listen: ignoring a foreign notification: {e}");
                return Ok(());
            }
        };
        if env.n == self.shared.node {
            if env.i != self.shared.incarnation {
                self.shared.count_conflict(env.i);
            }
            return Ok(());
        }
        self.note(&env);
        self.follow(client, &env)?;
        if env.bye {
            self.cursors.forget(&env.n);
            if self.shared.members.lock().left(&env.n) {
                log::info!("cluster: node {} left (orderly shutdown)", env.n);
            }
        }
        Ok(())
    }

    /// Delivers what `env` carries, after fetching what it shows this node missed.
    fn follow(&mut self, client: &mut Client, env: &Envelope) -> Result<(), String> {
        let inline = !env.m.is_empty();
        let mark = Mark { incarnation: env.i, batch: env.s, is_batch: env.is_batch(), inline };
        let plan = self.cursors.plan(&env.n, mark);
        if let Some(range) = plan.fetch {
            self.fetch(client, &env.n, env.i, *range.start(), Some(*range.end()))?;
        }
        if plan.deliver {
            self.deliver(&env.n, env.m.iter().map(|m| m.get()));
            self.cursors.advance(&env.n, env.s);
        }
        Ok(())
    }

    /// Membership bookkeeping for one notification of `env.n`.
    fn note(&self, env: &Envelope) {
        let seen = self.shared.members.lock().seen(&env.n, env.i, Instant::now());
        match seen {
            Seen::Known => {}
            Seen::Joined { restarted: false } => log::info!("cluster: node {} is up", env.n),
            Seen::Joined { restarted: true } => {
                log::info!("cluster: node {} restarted (incarnation {})", env.n, env.i)
            }
        }
    }

    /// Delivers `origin`'s logged batches from `from` to `to` (or all there are), in order, a
    /// page at a time; numbers the log no longer has are counted as missed.
    fn fetch(
        &mut self,
        client: &mut Client,
        origin: &str,
        incarnation: u64,
        from: u64,
        to: Option<u64>,
    ) -> Result<(), String> {
        let mut next = from;
        loop {
            let last = to.map_or(i64::MAX, |t| t as i64);
            let params: [&(dyn postgres::types::ToSql + Sync); 5] =
                [&origin, &(incarnation as i64), &(next as i64), &last, &PAGE];
            let rows = client.query(FETCH, &params).map_err(|e| e.to_string())?;
            for row in &rows {
                let number = row.get::<_, i64>(0) as u64;
                self.count_missed(origin, number - next);
                self.deliver_logged(origin, row.get(1));
                self.cursors.advance(origin, number);
                next = number + 1;
            }
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        if let Some(to) = to.filter(|&t| t >= next) {
            self.count_missed(origin, to + 1 - next);
            self.cursors.advance(origin, to);
        }
        Ok(())
    }

    fn deliver_logged(&self, origin: &str, body: &str) {
        self.shared.stats.fetched.fetch_add(1, Ordering::Relaxed);
        match wire::decode_batch(body) {
            Some(batch) => self.deliver(origin, batch.iter().map(|m| m.get())),
            None => log::error!("cluster-listen: an unreadable logged batch of node {origin}"),
        }
    }

    /// Batches of `origin` gone from the log before this node fetched them.
    fn count_missed(&self, origin: &str, n: u64) {
        if n > 0 {
            self.shared.stats.missed.fetch_add(n, Ordering::Relaxed);
            log::error!(
                "cluster-listen: {n} batches of node {origin} were missed (gone from the log)"
            );
        }
    }

    /// Hands each broadcast to the registry, in order; waits (bounded by PubSub's send
    /// timeout) rather than dropping when the registry is busy.
    fn deliver<'a>(&self, origin: &str, batch: impl Iterator<Item = &'a str>) {
        for raw in batch {
            let Some(broadcast) = wire::decode(raw) else {
                // Counted with the missed ones, so `/cluster` shows it, not only the log.
                self.shared.stats.missed.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "cluster-listen: an unreadable broadcast from {origin} was not delivered"
                );
                continue;
            };
            self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
            match self.pubsub.dispatch(broadcast) {
                Ok(()) => {}
                // This server is stopping and its clients are closed: nobody is left to miss
                // it (the listener outlives the registry by a few milliseconds).
                Err(crate::pubsub::PubSubError::Stopped) => {
                    log::debug!("cluster-listen: a broadcast from {origin} after shutdown");
                }
                Err(e) => {
                    self.shared.stats.missed.fetch_add(1, Ordering::Relaxed);
                    log::error!("cluster-listen: a broadcast from {origin} was not delivered: {e}");
                }
            }
        }
    }

    /// Sends a probe when the last one came back and `PROBE_EVERY` has passed.
    fn probe(&mut self, client: &mut Client) -> Result<(), String> {
        let now = Instant::now();
        let due = self.probe.sent.is_none_or(|t| now.saturating_duration_since(t) >= PROBE_EVERY);
        if !(self.probe.back && due) {
            return Ok(());
        }
        let stamp = self.shared.heard.lock().stamp(now).to_string();
        let sql = "SELECT pg_notify($1, $2)";
        client.execute(sql, &[&self.probe.channel, &stamp]).map_err(|e| e.to_string())?;
        self.probe.sent = Some(now);
        self.probe.back = false;
        Ok(())
    }

    fn probe_back(&mut self, payload: &str) {
        match payload.parse() {
            Ok(stamp) => {
                let sent = self.shared.heard.lock().back(stamp);
                self.pubsub.note_heard(sent);
            }
            Err(_) => log::warn!("cluster-listen: an unreadable probe {payload:?}"),
        }
        self.probe.back = true;
    }

    /// Takes the nodes silent for `node_timeout` for down, judged as far as this node has
    /// heard (`members::Heard`), not by the clock alone.
    fn expire(&mut self) {
        let timeout = self.shared.config.node_timeout;
        let heard = self.shared.heard.lock().until(Instant::now());
        let down = self.shared.members.lock().expire(heard, timeout);
        for name in down {
            log::warn!("cluster: node {name} is down (silent for {timeout:?})");
            self.cursors.forget(&name);
        }
    }

    fn stopped(&self, wait: Duration) -> bool {
        !matches!(self.stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
    }
}
