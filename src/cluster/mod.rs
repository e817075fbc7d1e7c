//! A cluster of phx-threads nodes on one PostgreSQL (Phoenix.PubSub's adapters, over
//! LISTEN/NOTIFY): every broadcast a node originates reaches the subscribers of every other
//! node through the same dispatch as a local one.
//!
//! Processes: `cluster-relay` (`relay.rs`: this node's broadcasts → batched NOTIFYs,
//! heartbeats, `bye`) and `cluster-listen` (`inbound.rs`: NOTIFYs of the other nodes →
//! `PubSub::dispatch`, membership). Each has its own connection, outside the REST pool, and
//! reconnects with backoff. The wire format is `wire.rs`; membership `members.rs`.
//! **Invariant:** no socket or channel thread ever waits on the database: they only hand a
//! broadcast to the relay's bounded mailbox (`RelayTx`), and what does not fit is counted and
//! logged (`Stats::dropped`), never waited for.

mod cursor;
mod inbound;
mod members;
mod relay;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, bounded};
use parking_lot::Mutex;
use serde::Serialize;

use crate::process;
use crate::pubsub::PubSub;
use crate::store::{Error, parse_url, with_network_bounds};
use members::{Members, NodeView};

/// The NOTIFY channel every node listens on.
pub const CHANNEL: &str = "phx_cluster";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const STACK_SIZE: usize = 256 * 1024;

/// `--cluster` and its settings (README, "Limits and defaults").
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// Unique per node; default host name and process id.
    pub node_name: String,
    /// Broadcasts emitted within this of the first go out as one NOTIFY.
    pub batch_window: Duration,
    /// A node with nothing to send notifies this often anyway.
    pub heartbeat: Duration,
    /// A node silent for this long is down. 1.6 heartbeats by default, so that a crashed
    /// node's presences leave the others within two heartbeat periods (the tracker checks
    /// every quarter heartbeat). 5 s / 8 s by default: with 1 s / 1.5 s, the `cluster` bench's
    /// nodes (2 cores, 90,000 clients) took live peers for dead 12–17 times each during the
    /// ramp, whose tracker or relay had been starved of CPU for over a second, and each time
    /// their presences left and joined again; the ramp stalled at 47,000.
    pub node_timeout: Duration,
    /// Broadcasts waiting for the relay; more are counted as dropped and logged.
    pub mailbox: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            node_name: default_node_name(),
            batch_window: Duration::from_millis(5),
            heartbeat: Duration::from_secs(5),
            node_timeout: Duration::from_secs(8),
            mailbox: 65_536,
        }
    }
}

fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = match host.trim() {
        "" => "node",
        h => h,
    };
    format!("{host}-{}", std::process::id())
}

/// Counters shown on `/cluster`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Broadcasts handed to the database.
    relayed: AtomicU64,
    /// Notifications sent (batches, heartbeats).
    notifications: AtomicU64,
    /// Batches too big for NOTIFY, sent through the log (`cluster_messages`) only.
    rows: AtomicU64,
    /// Broadcasts the relay's mailbox had no room for: the other nodes never got them.
    dropped: AtomicU64,
    /// Broadcasts received from other nodes.
    received: AtomicU64,
    /// Notifications of another node that uses this node's name.
    conflicts: AtomicU64,
    /// Batches of other nodes fetched from the log (missed notifications, big batches).
    fetched: AtomicU64,
    /// Batches of other nodes this node missed and could not fetch from the log (gone:
    /// older than `LOG_TTL`, or the log emptied by a PostgreSQL crash).
    missed: AtomicU64,
}

/// What the relay, the listener and `/cluster` share.
pub(crate) struct Shared {
    node: String,
    incarnation: u64,
    config: ClusterConfig,
    batches: AtomicU64,
    members: Mutex<Members>,
    /// How far the listener has heard the cluster (its own notifications coming back).
    heard: Mutex<members::Heard>,
    stats: Stats,
    /// When another node was last heard using this node's name (see `name_conflict`).
    conflict: Mutex<Option<Instant>>,
}

impl Shared {
    /// The next batch number of this incarnation (1, 2, 3…).
    fn next_batch(&self) -> u64 {
        self.batches.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A notification with this node's name from another incarnation: a second node was
    /// started with the same `--node-name`. Counted, and logged at 1, 2, 4, 8…
    fn count_conflict(&self, incarnation: u64) {
        *self.conflict.lock() = Some(Instant::now());
        let n = self.stats.conflicts.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            log::error!(
                "cluster: another node (incarnation {incarnation}) uses this node's name {:?}: \
                 the two cannot hear each other; give each node its own --node-name ({n} so far)",
                self.node
            );
        }
    }

    /// A full relay mailbox: counted, and logged at 1, 2, 4, 8… so a flood is seen without
    /// flooding the log.
    fn count_dropped(&self, topic: &str) {
        let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            log::error!(
                "cluster: relay mailbox full ({} broadcasts); a broadcast on {topic} reached \
                 this node only ({n} so far)",
                self.config.mailbox
            );
        }
    }
}

/// `GET /cluster`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub node: String,
    pub incarnation: u64,
    /// The other live nodes.
    pub nodes: Vec<NodeView>,
    pub relayed: u64,
    pub notifications: u64,
    pub rows: u64,
    pub dropped: u64,
    pub received: u64,
    pub fetched: u64,
    pub missed: u64,
    /// Notifications heard from another node with this node's name (a misconfiguration).
    pub name_conflicts: u64,
}

/// A read handle for `/cluster`.
#[derive(Clone)]
pub struct ClusterView(Arc<Shared>);

impl ClusterView {
    pub fn status(&self) -> Status {
        let s = &self.0;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Status {
            node: s.node.clone(),
            incarnation: s.incarnation,
            nodes: s.members.lock().view(Instant::now()),
            relayed: get(&s.stats.relayed),
            notifications: get(&s.stats.notifications),
            rows: get(&s.stats.rows),
            dropped: get(&s.stats.dropped),
            received: get(&s.stats.received),
            fetched: get(&s.stats.fetched),
            missed: get(&s.stats.missed),
            name_conflicts: get(&s.stats.conflicts),
        }
    }

    /// Another node uses this node's name and was heard within the node timeout: each
    /// skips the other's broadcasts as its own, so their clients no longer hear each other.
    /// `/healthz` answers 503 with this until it stops.
    pub fn name_conflict(&self) -> Option<String> {
        let last = (*self.0.conflict.lock())?;
        let current = last.elapsed() <= self.0.config.node_timeout;
        current.then(|| format!("another node also uses the node name {:?}", self.0.node))
    }
}

/// The running cluster processes; `stop` announces the shutdown and joins them.
pub struct Cluster {
    stop: Option<Sender<()>>,
    threads: Vec<(JoinHandle<()>, crossbeam_channel::Receiver<()>)>,
    view: ClusterView,
}

impl Cluster {
    /// Joins the cluster on the database at `url`: starts both processes and makes `pubsub`
    /// relay every broadcast this node originates.
    ///
    /// # Errors
    /// A bad `url`, or a thread that could not be started.
    pub fn start(config: ClusterConfig, url: &str, pubsub: &PubSub) -> Result<Cluster, Error> {
        let pg = |name: &str| -> Result<postgres::Config, Error> {
            let mut pg = with_network_bounds(parse_url(url)?, CONNECT_TIMEOUT);
            pg.application_name(name);
            Ok(pg)
        };
        let shared = Arc::new(Shared {
            node: config.node_name.clone(),
            incarnation: incarnation(),
            batches: AtomicU64::new(0),
            members: Mutex::default(),
            heard: Mutex::new(members::Heard::new(Instant::now())),
            stats: Stats::default(),
            conflict: Mutex::default(),
            config,
        });
        let (stop_tx, stop) = bounded::<()>(0);
        let (tx, rx) = bounded(shared.config.mailbox);
        let relay = relay::RelayProcess {
            pg: pg("phx-threads-cluster-relay")?,
            rx,
            stop: stop.clone(),
            shared: shared.clone(),
        };
        let inbound = inbound::InboundProcess {
            pg: pg("phx-threads-cluster-listen")?,
            pubsub: pubsub.clone(),
            stop,
            shared: shared.clone(),
            cursors: cursor::Cursors::default(),
            probe: inbound::Probe::default(),
        };
        let mut cluster =
            Cluster { stop: Some(stop_tx), threads: Vec::new(), view: ClusterView(shared.clone()) };
        cluster.spawn("cluster-listen", move || inbound.run())?;
        cluster.spawn("cluster-relay", move || relay.run())?;
        if !pubsub.set_relay(Box::new(relay::RelayTx { tx, shared: shared.clone() })) {
            log::error!("cluster: this PubSub already relays elsewhere; broadcasts stay local");
        }
        log::info!("cluster: node {} (incarnation {}) joining", shared.node, shared.incarnation);
        Ok(cluster)
    }

    pub fn view(&self) -> ClusterView {
        self.view.clone()
    }

    fn spawn(&mut self, name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        let (done_tx, done) = bounded::<()>(0);
        let body = move || {
            let _done = done_tx;
            run()
        };
        let thread = process::spawn(name.into(), STACK_SIZE, body)
            .map_err(|e| Error::cluster("cannot spawn a cluster thread", Some(e)))?;
        self.threads.push((thread, done));
        Ok(())
    }

    /// Says `bye` (the others drop this node at once) and joins both processes, waiting at
    /// most 10 s for each; a process that does not end in time is left detached.
    pub fn stop(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        drop(self.stop.take());
        for (thread, done) in self.threads.drain(..) {
            let name = thread.thread().name().unwrap_or("cluster").to_string();
            match done.recv_timeout(STOP_TIMEOUT) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    log::error!("{name} did not stop within {STOP_TIMEOUT:?}; left running")
                }
                _ => drop(thread.join()),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Milliseconds since the epoch at start: a restarted node is a new incarnation.
fn incarnation() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Reconnect backoff: 100 ms doubling per attempt, at most 5 s.
fn backoff_sleep(attempt: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    Duration::from_millis(ms.min(5_000))
}
