//! The relay process (`cluster-relay`): takes the broadcasts this node originates from its
//! bounded mailbox and NOTIFYs them to the other nodes on its own connection, outside the REST
//! pool.
//!
//! Batches: the broadcasts emitted within `batch_window` of the first go out as one
//! notification (several if they exceed NOTIFY's limit). Each batch gets the next number of
//! this incarnation and is written to the log (`cluster_messages`, kept `LOG_TTL`) in the same
//! statement that notifies it, so a receiver that missed it fetches it (`cursor.rs`); a batch
//! too big for NOTIFY is only in the log, and its notification says so. One connection sends
//! everything in mailbox order, so per (origin, topic) order is kept. With nothing to send for
//! `heartbeat`, a heartbeat goes out carrying the last committed number. Log rows older than
//! `LOG_TTL` are deleted every `SWEEP_EVERY`.
//! **Nothing is lost silently:** a broadcast the mailbox has no room for is counted and logged
//! (`Stats::dropped`); a batch the database did not take is kept, with its number, and sent
//! again after the reconnect (with backoff, logged), so what is queued survives a PostgreSQL
//! restart, and a batch that had in fact committed is recognised by its number (the log
//! ignores the copy, receivers skip it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use postgres::{Client, NoTls};

use super::wire::{self, Body, NOTIFY_LIMIT};
use super::{CHANNEL, Shared, backoff_sleep};
use crate::pubsub::{Broadcast, Relay};

/// How long a batch stays in the log: far longer than a listener's reconnect (its backoff
/// tops out at 5 s) or a PostgreSQL restart, and what bounds the log's size.
pub(super) const LOG_TTL: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Logs a batch and notifies it in one statement (one round trip, one transaction). A copy
/// sent again after a reconnect keeps its number: the log ignores it, receivers skip it.
const LOG_AND_NOTIFY: &str = "WITH logged AS (INSERT INTO cluster_messages \
    (origin, incarnation, batch, body) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING) \
    SELECT pg_notify($5, $6)";
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

/// The relay's connection.
struct Conn {
    client: Client,
    last_sent: Instant,
    last_sweep: Instant,
}

/// What the relay has yet to send, kept across reconnects.
#[derive(Default)]
struct Outbox {
    /// Encoded broadcasts, in mailbox order.
    elements: Vec<String>,
    /// The batch being sent: its number is kept until the database took it.
    sealed: Option<Sealed>,
    /// The last batch number the database took (heartbeats carry it).
    committed: u64,
}

/// A numbered batch of the first `count` elements.
struct Sealed {
    number: u64,
    count: usize,
    text: String,
}

impl RelayProcess {
    /// Bounded by the stop channel: every wait below is a timeout on it or on the mailbox.
    pub fn run(self) {
        let mut out = Outbox::default();
        let mut attempt = 0u32;
        loop {
            let Some(mut conn) = self.connect(&mut attempt) else { return };
            match self.serve(&mut conn, &mut out) {
                Ok(()) => return self.say_bye(&mut conn, out.committed),
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

    /// Sends until stopped (`Ok`) or the connection fails (`Err`, `out` kept).
    fn serve(&self, conn: &mut Conn, out: &mut Outbox) -> Result<(), postgres::Error> {
        loop {
            self.flush(conn, out)?;
            let wait = self.shared.config.heartbeat.saturating_sub(conn.last_sent.elapsed());
            crossbeam_channel::select! {
                recv(self.stop) -> _ => return self.drain(conn, out),
                recv(self.rx) -> first => match first {
                    Ok(first) => self.collect(first, &mut out.elements),
                    Err(_) => return Ok(()),
                },
                default(wait) => self.notify(conn, out.committed, Body::Heartbeat)?,
            }
            if conn.last_sweep.elapsed() >= SWEEP_EVERY {
                sweep(conn)?;
            }
        }
    }

    /// On stop: what is queued still goes out (bounded by the mailbox's capacity).
    fn drain(&self, conn: &mut Conn, out: &mut Outbox) -> Result<(), postgres::Error> {
        out.elements.extend(self.rx.try_iter().map(|b| wire::encode(&b)));
        self.flush(conn, out)
    }

    /// Takes what arrives within the batch window of `first`.
    fn collect(&self, first: Arc<Broadcast>, elements: &mut Vec<String>) {
        elements.push(wire::encode(&first));
        let deadline = Instant::now() + self.shared.config.batch_window;
        while elements.len() < MAX_BATCH {
            match self.rx.recv_deadline(deadline) {
                Ok(b) => elements.push(wire::encode(&b)),
                Err(_) => break,
            }
        }
    }

    /// Sends the queued elements as numbered batches under NOTIFY's limit; a batch leaves the
    /// outbox only once the database took it.
    fn flush(&self, conn: &mut Conn, out: &mut Outbox) -> Result<(), postgres::Error> {
        loop {
            if out.sealed.is_none() && !out.elements.is_empty() {
                out.sealed = Some(self.seal(&out.elements));
            }
            let Some(sealed) = &out.sealed else { return Ok(()) };
            self.send_batch(conn, sealed)?;
            self.shared.stats.relayed.fetch_add(sealed.count as u64, Ordering::Relaxed);
            out.committed = sealed.number;
            out.elements.drain(..sealed.count);
            out.sealed = None;
        }
    }

    fn seal(&self, elements: &[String]) -> Sealed {
        let count = chunk_len(elements, self.inline_limit());
        let text = wire::batch_text(&elements[..count]);
        Sealed { number: self.shared.next_batch(), count, text }
    }

    /// Room for a batch in one notification, after the envelope's header.
    fn inline_limit(&self) -> usize {
        NOTIFY_LIMIT - self.shared.node.len() - 64
    }

    /// Logs and notifies one batch; one too big for NOTIFY is only logged, and notified as
    /// stored.
    fn send_batch(&self, conn: &mut Conn, sealed: &Sealed) -> Result<(), postgres::Error> {
        let inline = sealed.text.len() <= self.inline_limit();
        let body = if inline { Body::Batch(&sealed.text) } else { Body::Stored };
        let text = self.envelope(sealed.number, body);
        let (node, number) = (&self.shared.node, sealed.number as i64);
        let incarnation = self.shared.incarnation as i64;
        let params: [&(dyn postgres::types::ToSql + Sync); 6] =
            [node, &incarnation, &number, &sealed.text, &CHANNEL, &text];
        conn.client.execute(LOG_AND_NOTIFY, &params)?;
        conn.last_sent = Instant::now();
        self.shared.stats.notifications.fetch_add(1, Ordering::Relaxed);
        if !inline {
            self.shared.stats.rows.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// A notification without a batch (heartbeat, bye), carrying the last committed number.
    fn notify(
        &self,
        conn: &mut Conn,
        committed: u64,
        body: Body<'_>,
    ) -> Result<(), postgres::Error> {
        let text = self.envelope(committed, body);
        conn.client.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &text])?;
        conn.last_sent = Instant::now();
        self.shared.stats.notifications.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn envelope(&self, number: u64, body: Body<'_>) -> String {
        wire::envelope(&self.shared.node, self.shared.incarnation, number, body)
    }

    /// An orderly shutdown: the others forget this node at once.
    fn say_bye(&self, conn: &mut Conn, committed: u64) {
        match self.notify(conn, committed, Body::Bye) {
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
    let deleted = conn.client.execute(sql, &[&LOG_TTL.as_secs_f64()])?;
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
