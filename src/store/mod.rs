//! The database side: a bounded pool of blocking `postgres::Client`s, migrations, the
//! superheroes queries, the change listener and a private PostgreSQL cluster for development.
//!
//! Threads: `Store` methods run on the caller's thread (HTTP workers, channel processes);
//! they block for at most `checkout_timeout` waiting for a pooled connection, at most
//! `connect_timeout` connecting, and at most `statement_timeout` per statement.
//! The listener (`listener.rs`) runs on its own named thread.
//!
//! **Invariant:** this is the only module that imports `postgres`; SQL lives in `sql/` and in
//! `store/*.rs` only.
//!
//! Connections are replaced lazily: a slot whose connection broke is emptied when it is
//! returned, and the next checkout of that slot reconnects. So a database outage yields
//! `Error::is_unavailable()` errors while it lasts and heals without a restart.

pub mod cluster;
pub mod listener;
pub mod migrate;
pub mod superheroes;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use postgres::error::SqlState;
use postgres::{Client, NoTls};

use crate::store::cluster::LocalCluster;

/// Name of the database `bootstrap` creates inside a `LocalCluster`.
pub const LOCAL_DATABASE: &str = "phx_threads";

/// A connection idle in the pool for longer than this is pinged before it is handed out,
/// because a server restart kills idle connections and we only learn that on next use.
const VALIDATE_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How to reach the database and how long to wait for it.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// A libpq-style URL or key-value string, e.g.
    /// `postgresql://postgres@%2Ftmp%2Fpg/phx_threads` (a `%2F`-encoded host is a Unix socket
    /// directory) or `host=/tmp/pg user=postgres dbname=phx_threads`.
    pub url: String,
    /// Maximum number of open connections.
    pub pool_size: usize,
    /// How long a caller waits for a free connection before getting `is_unavailable()`.
    pub checkout_timeout: Duration,
    /// Limit for establishing one connection.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` (and `lock_timeout`) of every pooled session.
    pub statement_timeout: Duration,
    /// The REST API refuses creates beyond this many superheroes (422).
    pub max_superheroes: usize,
}

impl StoreConfig {
    /// The defaults for `url`: pool of 8, 5 s checkout, 5 s connect, 10 s statements.
    pub fn new(url: impl Into<String>) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            pool_size: 8,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            max_superheroes: superheroes::MAX_ROWS,
        }
    }
}

/// A cloneable handle to a bounded pool of connections.
///
/// The pool is a bounded crossbeam channel holding exactly `pool_size` slots; a slot is either
/// an open connection or empty (to be connected on checkout). Checking out receives a slot,
/// dropping the `PooledClient` sends it back, so at most `pool_size` connections ever exist.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    config: StoreConfig,
    pg_config: postgres::Config,
    slots_tx: Sender<Slot>,
    slots_rx: Receiver<Slot>,
    /// Incremented whenever a connection is found broken. A server restart breaks every
    /// idle connection at once, but each only notices when used; so after one breaks, the
    /// others are pinged before their next use instead of failing a request each.
    n_breakages: AtomicU64,
}

struct Slot {
    client: Option<Client>,
    idle_since: Instant,
    /// `n_breakages` when this connection was last known good.
    checked_at_breakage: u64,
}

/// A connection checked out of the pool; derefs to `postgres::Client`.
/// Dropping it returns the connection, or an empty slot if the connection broke.
pub struct PooledClient<'a> {
    slot: Option<Slot>,
    inner: &'a Inner,
}

/// Errors of the store. Opaque: ask the predicates rather than matching on internals.
pub struct Error {
    kind: Kind,
}

enum Kind {
    /// The database could not be reached, the connection broke, the pool stayed exhausted for
    /// `checkout_timeout`, or a statement timed out. Retry later; HTTP maps this to 503.
    Unavailable { reason: &'static str, source: Option<postgres::Error> },
    /// The requested row does not exist.
    NotFound,
    /// Input failed validation; carries Ecto-style messages per field.
    Invalid(FieldErrors),
    /// Any other database error: a bug in our SQL or a schema mismatch.
    Db(postgres::Error),
    /// A migration failed; the transaction was rolled back.
    Migration { version: i64, source: postgres::Error },
    /// The local cluster could not be prepared, started or stopped.
    Cluster { message: String, source: Option<std::io::Error> },
    /// A configuration value is unusable (bad URL, pool size 0).
    Config(String),
    /// A NOTIFY payload or stored JSON could not be (de)serialized.
    Json(serde_json::Error),
    /// A background thread did not stop within its bound and was detached.
    ShutdownTimeout(&'static str),
}

/// Validation errors keyed by field, serialized as `{"name":["can't be blank"]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct FieldErrors(BTreeMap<&'static str, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.entry(field).or_default().push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, field: &str) -> Option<&[String]> {
        self.0.get(field).map(Vec::as_slice)
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }
}

impl Store {
    /// Creates the pool and opens one connection to prove the database is reachable.
    ///
    /// # Errors
    /// `is_unavailable()` if the first connection fails; a config error for a bad URL.
    pub fn connect(config: StoreConfig) -> Result<Store, Error> {
        let store = Store::lazy(config)?;
        drop(store.client()?);
        Ok(store)
    }

    /// Creates the pool without connecting; every slot connects on first checkout.
    ///
    /// # Errors
    /// A config error for an unparsable URL or a pool size of 0.
    pub fn lazy(config: StoreConfig) -> Result<Store, Error> {
        if config.pool_size == 0 {
            return Err(Error::config("pool_size must be at least 1"));
        }
        let pg_config = session_config(&config)?;
        let (slots_tx, slots_rx) = crossbeam_channel::bounded(config.pool_size);
        for _ in 0..config.pool_size {
            let slot = Slot { client: None, idle_since: Instant::now(), checked_at_breakage: 0 };
            slots_tx.try_send(slot).expect("channel has room for every slot");
        }
        let n_breakages = AtomicU64::new(0);
        Ok(Store { inner: Arc::new(Inner { config, pg_config, slots_tx, slots_rx, n_breakages }) })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Checks out a connection, waiting at most `checkout_timeout`.
    ///
    /// Use it with the query functions: `superheroes::list(&mut *store.client()?)`.
    ///
    /// # Errors
    /// `is_unavailable()` on pool timeout or when (re)connecting fails.
    pub fn client(&self) -> Result<PooledClient<'_>, Error> {
        let timeout = self.inner.config.checkout_timeout;
        let slot = crate::metrics::pool_checkout(&self.inner.slots_rx, timeout)
            .map_err(|_| Error::unavailable("timed out waiting for a pooled connection", None))?;
        let mut pooled = PooledClient { slot: Some(slot), inner: &self.inner };
        pooled.ensure_connected()?;
        Ok(pooled)
    }

    /// True if a connection can be checked out and answers a trivial query.
    pub fn is_up(&self) -> bool {
        match self.client() {
            Ok(mut client) => client.is_valid(self.inner.config.connect_timeout).is_ok(),
            Err(_) => false,
        }
    }
}

impl PooledClient<'_> {
    fn slot(&mut self) -> &mut Slot {
        self.slot.as_mut().expect("slot is present until drop")
    }

    /// Drops a connection that is closed, or fails a ping after idling or after another
    /// connection broke; then connects if the slot is empty.
    fn ensure_connected(&mut self) -> Result<(), Error> {
        let ping_timeout = self.inner.config.connect_timeout;
        let n_breakages = self.inner.n_breakages.load(Ordering::Relaxed);
        let slot = self.slot.as_mut().expect("slot is present until drop");
        if let Some(client) = &mut slot.client {
            let suspect = slot.idle_since.elapsed() > VALIDATE_AFTER_IDLE
                || slot.checked_at_breakage < n_breakages;
            if client.is_closed() || (suspect && client.is_valid(ping_timeout).is_err()) {
                slot.client = None;
                self.inner.n_breakages.fetch_add(1, Ordering::Relaxed);
            }
        }
        if slot.client.is_none() {
            slot.client = Some(self.inner.pg_config.connect(NoTls).map_err(Error::connect)?);
        }
        slot.checked_at_breakage = n_breakages;
        Ok(())
    }
}

impl Deref for PooledClient<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        let slot = self.slot.as_ref().expect("slot is present until drop");
        slot.client.as_ref().expect("checked-out slot is connected")
    }
}

impl DerefMut for PooledClient<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.slot().client.as_mut().expect("checked-out slot is connected")
    }
}

impl Drop for PooledClient<'_> {
    fn drop(&mut self) {
        let Some(mut slot) = self.slot.take() else { return };
        crate::metrics::pool_released();
        if slot.client.as_ref().is_some_and(Client::is_closed) {
            slot.client = None;
            self.inner.n_breakages.fetch_add(1, Ordering::Relaxed);
        }
        slot.idle_since = Instant::now();
        // Never blocks: the channel has room for every slot and only our slots circulate.
        let _ = self.inner.slots_tx.try_send(slot);
    }
}

/// Parses the URL and adds our bounds: connect timeout, server-side statement and lock
/// timeouts, TCP keepalives, and an application name visible in `pg_stat_activity`.
fn session_config(config: &StoreConfig) -> Result<postgres::Config, Error> {
    let mut pg = parse_url(&config.url)?;
    let ms = config.statement_timeout.as_millis();
    let mut options = pg.get_options().unwrap_or("").to_owned();
    options.push_str(&format!(" -c statement_timeout={ms} -c lock_timeout={ms}"));
    pg.options(options.trim());
    if pg.get_application_name().is_none() {
        pg.application_name("phx-threads");
    }
    Ok(with_network_bounds(pg, config.connect_timeout))
}

/// Parses a URL or key-value connection string.
pub(crate) fn parse_url(url: &str) -> Result<postgres::Config, Error> {
    url.parse::<postgres::Config>().map_err(|e| Error::config(format!("invalid database url: {e}")))
}

/// Bounds every network wait of a connection: connecting, and noticing a dead TCP peer.
pub(crate) fn with_network_bounds(
    mut pg: postgres::Config,
    connect_timeout: Duration,
) -> postgres::Config {
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(connect_timeout);
    }
    pg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(30));
    pg
}

/// Starts (if needed) a local cluster, connects, migrates, and seeds sample heroes into an
/// empty table. This is what `phx-threads serve` and `phx-threads migrate` call.
///
/// With `database_url` the cluster is not touched; without it a `LocalCluster` in `data_dir`
/// is initialised on first use and started, and the caller must keep it alive (dropping it
/// stops PostgreSQL).
///
/// # Errors
/// Cluster, connection, migration or seed failures.
pub fn bootstrap(
    database_url: Option<&str>,
    data_dir: &Path,
) -> Result<(Store, Option<LocalCluster>), Error> {
    bootstrap_with(database_url, data_dir, superheroes::MAX_ROWS)
}

/// `bootstrap` with a bound on the superheroes table other than the default.
pub fn bootstrap_with(
    database_url: Option<&str>,
    data_dir: &Path,
    max_superheroes: usize,
) -> Result<(Store, Option<LocalCluster>), Error> {
    let (url, cluster) = match database_url {
        Some(url) => (url.to_owned(), None),
        None => {
            let mut cluster = LocalCluster::start(data_dir)?;
            // If we die without unwinding, PostgreSQL should not outlive us.
            cluster.stop_on_exit()?;
            // If PostgreSQL dies without us, it comes back.
            cluster.supervise()?;
            cluster.create_database(LOCAL_DATABASE)?;
            (cluster.url(LOCAL_DATABASE), Some(cluster))
        }
    };
    let store = Store::connect(StoreConfig { max_superheroes, ..StoreConfig::new(url) })?;
    let applied = migrate::run(&mut *store.client()?)?;
    log::info!("migrations applied: {applied:?}");
    let seeded = superheroes::seed_if_empty(&mut *store.client()?)?;
    if seeded > 0 {
        log::info!("seeded {seeded} sample superheroes");
    }
    Ok((store, cluster))
}

impl Error {
    /// The database is unreachable or overloaded; retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::Unavailable { .. })
    }

    /// The requested row does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self.kind, Kind::NotFound)
    }

    /// The validation messages if the input was invalid.
    pub fn field_errors(&self) -> Option<&FieldErrors> {
        match &self.kind {
            Kind::Invalid(errors) => Some(errors),
            _ => None,
        }
    }

    pub(crate) fn not_found() -> Error {
        Error { kind: Kind::NotFound }
    }

    pub(crate) fn invalid(errors: FieldErrors) -> Error {
        Error { kind: Kind::Invalid(errors) }
    }

    pub(crate) fn unavailable(reason: &'static str, source: Option<postgres::Error>) -> Error {
        Error { kind: Kind::Unavailable { reason, source } }
    }

    /// Any failure to establish a connection means the database is unavailable to us,
    /// whether it is down, starting up, or refusing (too many clients).
    pub(crate) fn connect(source: postgres::Error) -> Error {
        Error::unavailable("cannot connect to the database", Some(source))
    }

    /// A failed migration, unless the failure was the connection's.
    pub(crate) fn migration(version: i64, source: postgres::Error) -> Error {
        if is_unavailability(&source) {
            return Error::from(source);
        }
        Error { kind: Kind::Migration { version, source } }
    }

    pub(crate) fn cluster(message: impl Into<String>, source: Option<std::io::Error>) -> Error {
        Error { kind: Kind::Cluster { message: message.into(), source } }
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error { kind: Kind::Config(message.into()) }
    }

    pub(crate) fn json(source: serde_json::Error) -> Error {
        Error { kind: Kind::Json(source) }
    }

    pub(crate) fn shutdown_timeout(what: &'static str) -> Error {
        Error { kind: Kind::ShutdownTimeout(what) }
    }
}

impl From<postgres::Error> for Error {
    fn from(e: postgres::Error) -> Error {
        if is_unavailability(&e) {
            Error::unavailable("lost the database connection", Some(e))
        } else {
            Error { kind: Kind::Db(e) }
        }
    }
}

/// Classifies a driver error: a broken or timed-out connection, or a server that is shutting
/// down, overloaded or cancelled our statement on timeout, is "unavailable", not a bug.
fn is_unavailability(e: &postgres::Error) -> bool {
    if e.is_closed() || e.to_string() == "timeout waiting for server" {
        return true;
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    let transient = [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::QUERY_CANCELED,
        SqlState::LOCK_NOT_AVAILABLE,
    ];
    let code = e.code();
    io || code.is_some_and(|c| c.code().starts_with("08") || transient.contains(c))
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Unavailable { reason, source: Some(e) } => write!(f, "{reason}: {}", chain(e)),
            Kind::Unavailable { reason, source: None } => f.write_str(reason),
            Kind::NotFound => f.write_str("not found"),
            Kind::Invalid(errors) => write!(f, "invalid input: {errors:?}"),
            Kind::Db(e) => write!(f, "database error: {}", chain(e)),
            Kind::Migration { version, source } => {
                write!(f, "migration {version} failed: {}", chain(source))
            }
            Kind::Cluster { message, source: Some(e) } => write!(f, "{message}: {e}"),
            Kind::Cluster { message, source: None } => f.write_str(message),
            Kind::Config(message) => f.write_str(message),
            Kind::Json(e) => write!(f, "json error: {e}"),
            Kind::ShutdownTimeout(what) => write!(f, "{what} did not stop in time"),
        }
    }
}

/// `postgres::Error`'s Display hides the server's message in its source ("db error");
/// show the whole chain so logs say what actually happened.
fn chain(e: &postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Unavailable { source: Some(e), .. } | Kind::Db(e) => Some(e),
            Kind::Migration { source, .. } => Some(source),
            Kind::Cluster { source: Some(e), .. } => Some(e),
            Kind::Json(e) => Some(e),
            _ => None,
        }
    }
}
