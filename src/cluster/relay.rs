//! The relay process (`cluster-relay`): takes the broadcasts this node originates from its
//! bounded mailbox and NOTIFYs them to the other nodes on its own connection, outside the REST
//! pool.
//!
//! Batches: the broadcasts emitted within `batch_window` of the first go out as one
//! notification (several if they exceed NOTIFY's limit); a single batch element too big for
//! NOTIFY goes into a `cluster_messages` row whose id is notified, in the same transaction.
//! One connection sends everything in mailbox order, so per (origin, topic) order is kept.
//! With nothing to send for `heartbeat`, a heartbeat notification goes out (every
//! notification is one). Rows older than `ROW_TTL` are deleted every `SWEEP_EVERY`.
//! **Nothing is lost silently:** a broadcast the mailbox has no room for is counted and logged
//! (`Stats::dropped`); a batch the database did not take is kept and sent again after the
//! reconnect (with backoff, logged), so what is queued survives a PostgreSQL restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use postgres::{Client, NoTls};

use super::wire::{self, Body, NOTIFY_LIMIT};
use super::{CHANNEL, Shared, backoff_sleep};
use crate::pubsub::{Broadcast, Relay};

/// How long a stored batch stays: far longer than any node takes to fetch it.
const ROW_TTL_SECS: i64 = 300;
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Most broadcasts in one batch, so one notification round never grows unbounded.
const MAX_BATCH: usize = 1024;

/// The `PubSub` side: a non-blocking hand-off into the relay's mailbox.
pub struct RelayTx {
    pub(super) tx: Sender<Arc<Broadcast>>,
    pub(super) shared: Arc<Shared>,
}

impl Relay for RelayTx {
    fn relay(&self, broadcast: &Arc<Broadcast>) {
        match self.tx.try_send(broadcast.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.shared.count_dropped(&broadcast.topic),
            // The cluster has stopped (server shutting down): local delivery goes on.
            Err(TrySendError::Disconnected(_)) => {
                log::debug!("cluster stopped: {} not relayed", broadcast.topic)
            }
        }
    }
}

pub(super) struct RelayProcess {
    pub pg: postgres::Config,
    pub rx: Receiver<Arc<Broadcast>>,
    pub stop: Receiver<()>,
    pub shared: Arc<Shared>,
}

/// The relay's connection and what it has yet to send.
struct Conn {
    client: Client,
    last_sent: Instant,
    last_sweep: Instant,
}

impl RelayProcess {
    /// Bounded by the stop channel: every wait below is a timeout on it or on the mailbox.
    pub fn run(self) {
        let mut unsent: Vec<String> = Vec::new();
        let mut attempt = 0u32;
        loop {
            let Some(mut conn) = self.connect(&mut attempt) else { return };
            match self.serve(&mut conn, &mut unsent) {
                Ok(()) => return self.say_bye(&mut conn),
                Err(e) => log::warn!("cluster-relay: database connection lost: {e}; reconnecting"),
            }
        }
    }

    /// Connects with backoff; `None` if stopped meanwhile.
    fn connect(&self, attempt: &mut u32) -> Option<Conn> {
        loop {
            match self.pg.connect(NoTls) {
                Ok(client) => {
                    if *attempt > 0 {
                        log::info!("cluster-relay: connected again after {attempt} attempts");
                    }
                    *attempt = 0;
                    let now = Instant::now();
                    return Some(Conn { client, last_sent: now, last_sweep: now });
                }
                Err(e) => {
                    *attempt += 1;
                    let wait = backoff_sleep(*attempt);
                    log::warn!("cluster-relay: cannot connect ({e}); retry in {wait:?}");
                    if self.stopped(wait) {
                        return None;
                    }
                }
            }
        }
    }

    /// Sends until stopped (`Ok`) or the connection fails (`Err`, `unsent` kept).
    fn serve(&self, conn: &mut Conn, unsent: &mut Vec<String>) -> Result<(), postgres::Error> {
        loop {
            self.flush(conn, unsent)?;
            let wait = self.shared.config.heartbeat.saturating_sub(conn.last_sent.elapsed());
            crossbeam_channel::select! {
                recv(self.stop) -> _ => return self.drain(conn, unsent),
                recv(self.rx) -> first => match first {
                    Ok(first) => self.collect(first, unsent),
                    Err(_) => return Ok(()),
                },
                default(wait) => self.notify(conn, Body::Heartbeat)?,
            }
            if conn.last_sweep.elapsed() >= SWEEP_EVERY {
                sweep(conn)?;
            }
        }
    }

    /// On stop: what is queued still goes out (bounded by the mailbox's capacity).
    fn drain(&self, conn: &mut Conn, unsent: &mut Vec<String>) -> Result<(), postgres::Error> {
        unsent.extend(self.rx.try_iter().map(|b| wire::encode(&b)));
        self.flush(conn, unsent)
    }

    /// Takes what arrives within the batch window of `first`.
    fn collect(&self, first: Arc<Broadcast>, unsent: &mut Vec<String>) {
        unsent.push(wire::encode(&first));
        let deadline = Instant::now() + self.shared.config.batch_window;
        while unsent.len() < MAX_BATCH {
            match self.rx.recv_deadline(deadline) {
                Ok(b) => unsent.push(wire::encode(&b)),
                Err(_) => break,
            }
        }
    }

    /// Sends `unsent` in notifications under NOTIFY's limit; what was sent leaves `unsent`
    /// only once the database took it.
    fn flush(&self, conn: &mut Conn, unsent: &mut Vec<String>) -> Result<(), postgres::Error> {
        while !unsent.is_empty() {
            let n = chunk_len(unsent, NOTIFY_LIMIT - self.shared.node.len() - 64);
            let batch = wire::batch_text(&unsent[..n]);
            if n == 1 && batch.len() > NOTIFY_LIMIT - self.shared.node.len() - 64 {
                self.store_row(conn, &batch)?;
            } else {
                self.notify(conn, Body::Batch(&batch))?;
            }
            self.shared.stats.relayed.fetch_add(n as u64, Ordering::Relaxed);
            unsent.drain(..n);
        }
        Ok(())
    }

    fn notify(&self, conn: &mut Conn, body: Body<'_>) -> Result<(), postgres::Error> {
        let text = self.envelope(body);
        conn.client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &text])?;
        conn.last_sent = Instant::now();
        self.shared.stats.notifications.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A batch too big for NOTIFY: the row and the notification of its id commit together.
    fn store_row(&self, conn: &mut Conn, batch: &str) -> Result<(), postgres::Error> {
        let mut tx = conn.client.transaction()?;
        let sql = "INSERT INTO cluster_messages (origin, body) VALUES ($1, $2) RETURNING id";
        let id: i64 = tx.query_one(sql, &[&self.shared.node, &batch])?.get(0);
        let text = self.envelope(Body::Row(id));
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &text])?;
        tx.commit()?;
        conn.last_sent = Instant::now();
        self.shared.stats.rows.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn envelope(&self, body: Body<'_>) -> String {
        let seq = self.shared.next_seq();
        wire::envelope(&self.shared.node, self.shared.incarnation, seq, body)
    }

    /// An orderly shutdown: the others forget this node at once.
    fn say_bye(&self, conn: &mut Conn) {
        match self.notify(conn, Body::Bye) {
            Ok(()) => log::info!("cluster: node {} left the cluster", self.shared.node),
            Err(e) => log::warn!("cluster-relay: could not announce the shutdown: {e}"),
        }
    }

    /// Waits up to `wait` for a stop request (or the owner gone).
    fn stopped(&self, wait: Duration) -> bool {
        !matches!(self.stop.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
    }
}

/// How many leading elements fit in one batch of at most `limit` bytes (at least one).
fn chunk_len(encoded: &[String], limit: usize) -> usize {
    let mut size = 2;
    let fits = encoded.iter().take_while(|m| {
        size += m.len() + 1;
        size <= limit
    });
    fits.count().max(1)
}

fn sweep(conn: &mut Conn) -> Result<(), postgres::Error> {
    let sql = "DELETE FROM cluster_messages WHERE inserted_at < now() - make_interval(secs => $1)";
    let deleted = conn.client.execute(sql, &[&(ROW_TTL_SECS as f64)])?;
    if deleted > 0 {
        log::debug!("cluster-relay: deleted {deleted} expired message rows");
    }
    conn.last_sweep = Instant::now();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::chunk_len;

    #[test]
    fn batches_split_under_the_limit_and_oversized_ones_go_alone() {
        let m = |n: usize| "x".repeat(n);
        assert_eq!(chunk_len(&[m(10), m(10), m(10)], 100), 3);
        assert_eq!(chunk_len(&[m(40), m(40), m(40)], 100), 2);
        assert_eq!(chunk_len(&[m(500), m(10)], 100), 1);
    }
}
