//! The inbound process (`cluster-listen`): its own connection LISTENs on `phx_cluster` and
//! hands every broadcast from another node to this node's registry, the same dispatch as a
//! local broadcast (`PubSub::dispatch`, never relayed again). Every notification is also a
//! heartbeat of its origin (`Members`); a node silent for `node_timeout` is down, one that
//! says `bye` is gone at once.
//!
//! Notifications sent while this connection is down are lost (PostgreSQL keeps none for a
//! listener that is not there): the membership is forgotten as soon as the connection is lost,
//! so `/cluster` lists no peer until it is heard again after the reconnect (which backs off and
//! is logged), and every node is then treated as newly joined. A gap in an origin's sequence numbers is logged and counted
//! (`Stats::missed`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use super::members::Seen;
use super::wire::{self, Envelope};
use super::{CHANNEL, Shared, backoff_sleep};
use crate::pubsub::PubSub;

/// Notifications are awaited in slices of this, so stops and expiries are noticed.
const POLL: Duration = Duration::from_millis(100);

pub(super) struct InboundProcess {
    pub pg: postgres::Config,
    pub pubsub: PubSub,
    pub stop: Receiver<()>,
    pub shared: Arc<Shared>,
}

impl InboundProcess {
    /// Bounded by the stop channel.
    pub fn run(self) {
        let mut attempt = 0u32;
        let mut first = true;
        while let Some(mut client) = self.connect(&mut attempt) {
            if !first {
                log::warn!(
                    "cluster-listen: listening again; notifications sent meanwhile are lost"
                );
            }
            first = false;
            if self.listen(&mut client) {
                return;
            }
            // Forgotten at once, not at the reconnect: while this node hears nothing it cannot
            // say who is up, and `/cluster` must not show peers it has not heard since (a node
            // seen again is then heard on the new connection, after LISTEN).
            self.shared.members.lock().clear();
        }
    }

    fn connect(&self, attempt: &mut u32) -> Option<Client> {
        loop {
            let connected = self.pg.connect(NoTls).and_then(|mut c| {
                c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
                Ok(c)
            });
            match connected {
                Ok(client) => return Some(client),
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
    fn listen(&self, client: &mut Client) -> bool {
        loop {
            if self.stopped(Duration::ZERO) {
                return true;
            }
            self.expire();
            let next = client.notifications().timeout_iter(POLL).next();
            let result = match next {
                Ok(Some(n)) => self.receive(client, n.payload()),
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

    /// One notification. Err only when the connection failed (fetching a stored batch).
    fn receive(&self, client: &mut Client, text: &str) -> Result<(), String> {
        let env: Envelope = match serde_json::from_str(text) {
            Ok(env) => env,
            Err(e) => {
                log::warn!("cluster-listen: ignoring a foreign notification: {e}");
                return Ok(());
            }
        };
        if env.n == self.shared.node {
            return Ok(());
        }
        self.note(&env);
        if env.bye {
            if self.shared.members.lock().left(&env.n) {
                log::info!("cluster: node {} left (orderly shutdown)", env.n);
            }
            return Ok(());
        }
        match env.r {
            Some(id) => self.deliver_row(client, &env.n, id),
            None => {
                self.deliver(&env.n, env.m.iter().map(|m| m.get()));
                Ok(())
            }
        }
    }

    /// Membership bookkeeping for one notification of `env.n`.
    fn note(&self, env: &Envelope) {
        let seen = self.shared.members.lock().seen(&env.n, env.i, env.s, Instant::now());
        match seen {
            Seen::InOrder => {}
            Seen::Joined { restarted: false } => log::info!("cluster: node {} is up", env.n),
            Seen::Joined { restarted: true } => {
                log::info!("cluster: node {} restarted (incarnation {})", env.n, env.i)
            }
            Seen::Gap { missed } => {
                self.shared.stats.missed.fetch_add(missed, Ordering::Relaxed);
                log::warn!("cluster: missed {missed} notifications from node {}", env.n);
            }
        }
    }

    fn deliver_row(&self, client: &mut Client, origin: &str, id: i64) -> Result<(), String> {
        let sql = "SELECT body FROM cluster_messages WHERE id = $1";
        let row = client.query_opt(sql, &[&id]).map_err(|e| e.to_string())?;
        let batch = row.and_then(|r| wire::decode_batch(r.get::<_, &str>(0)));
        match batch {
            Some(batch) => self.deliver(origin, batch.iter().map(|m| m.get())),
            None => {
                self.shared.stats.missed.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "cluster-listen: stored batch {id} of node {origin} is gone or unreadable"
                );
            }
        }
        Ok(())
    }

    /// Hands each broadcast to the registry, in order; waits (bounded by PubSub's send
    /// timeout) rather than dropping when the registry is busy.
    fn deliver<'a>(&self, origin: &str, batch: impl Iterator<Item = &'a str>) {
        for raw in batch {
            let Some(broadcast) = wire::decode(raw) else {
                log::warn!("cluster-listen: ignoring an unreadable broadcast from {origin}");
                continue;
            };
            self.shared.stats.received.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.pubsub.dispatch(broadcast) {
                self.shared.stats.missed.fetch_add(1, Ordering::Relaxed);
                log::error!("cluster-listen: a broadcast from {origin} was not delivered: {e}");
            }
        }
    }

    fn expire(&self) {
        let timeout = self.shared.config.node_timeout;
        for name in self.shared.members.lock().expire(Instant::now(), timeout) {
            log::warn!("cluster: node {name} is down (silent for {timeout:?})");
        }
    }

    fn stopped(&self, wait: Duration) -> bool {
        !matches!(self.stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
    }
}
