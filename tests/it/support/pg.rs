//! Throwaway PostgreSQL for the tests.
//!
//! Once per test binary a private `LocalCluster` boots in a temp dir (fsync off, Unix socket
//! only), migrations are applied once to a template database, and each test gets a fresh
//! `CREATE DATABASE t_<uuid> TEMPLATE ...`, dropped (with FORCE) when the `TestDb` drops.
//! Tests therefore run in parallel without seeing each other's rows or notifications
//! (NOTIFY is per database).
//!
//! If `DATABASE_URL` is set, that server is used instead of booting one.
//! The cluster is a static, whose destructor never runs; `stop_on_exit_and_remove` makes a
//! watchdog stop it and delete its directory when the test process exits.

use std::sync::OnceLock;

use phx_threads::store::cluster::{ClusterOptions, LocalCluster};
use phx_threads::store::{Store, StoreConfig, migrate};

const TEMPLATE: &str = "phx_threads_it_template";

struct Shared {
    /// URL of the maintenance database, used to create and drop test databases.
    admin_url: String,
    _cluster: Option<LocalCluster>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// One fresh, migrated, empty database.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let shared = shared();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin(&shared.admin_url)
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .expect("create test database");
        TestDb { url: with_dbname(&shared.admin_url, &name), name }
    }

    /// A database without any tables (from `template0`), for testing migrations.
    pub fn empty() -> TestDb {
        let shared = shared();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin(&shared.admin_url)
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .expect("create empty test database");
        TestDb { url: with_dbname(&shared.admin_url, &name), name }
    }

    /// A pool over this database with the default config.
    pub fn store(&self) -> Store {
        Store::connect(StoreConfig::new(&self.url)).expect("connect to test database")
    }

    pub fn client(&self) -> postgres::Client {
        admin(&self.url)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin(&shared().admin_url).batch_execute(&sql) {
            eprintln!("dropping {}: {e}", self.name);
        }
    }
}

/// Starts a private cluster in a fresh temp dir (used directly by the outage tests, which
/// must stop a server without disturbing the shared one).
pub fn private_cluster() -> LocalCluster {
    let dir = std::env::temp_dir().join(format!("phx-it-pg-{}", uuid::Uuid::new_v4().simple()));
    let mut options = ClusterOptions::new(dir.join("data"));
    options.fsync = false;
    options.max_connections = 200;
    let mut cluster = LocalCluster::start_with(options).unwrap_or_else(|e| panic!("{e}"));
    cluster.stop_on_exit_and_remove(&dir).expect("start cluster watchdog");
    cluster
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) => {
            prepare_template(&url);
            Shared { admin_url: url, _cluster: None }
        }
        Err(_) => {
            let cluster = private_cluster();
            let admin_url = cluster.url("postgres");
            prepare_template(&admin_url);
            Shared { admin_url, _cluster: Some(cluster) }
        }
    })
}

fn prepare_template(admin_url: &str) {
    let mut client = admin(admin_url);
    // Separate calls: several statements in one simple query form an implicit transaction,
    // which DROP/CREATE DATABASE refuse.
    let drop_old = format!("DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)");
    client.batch_execute(&drop_old).expect("drop old template database");
    let create = format!("CREATE DATABASE {TEMPLATE}");
    client.batch_execute(&create).expect("create template database");
    let mut template = admin(&with_dbname(admin_url, TEMPLATE));
    migrate::run(&mut template).expect("migrate template database");
    // Dropped here: CREATE DATABASE ... TEMPLATE fails while anyone is connected to it.
}

fn admin(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// Replaces the database of a URL or key-value connection string.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={dbname}");
    };
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_start = scheme_end + 3;
    let path_start = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    format!("{}/{dbname}{query}", &base[..path_start])
}
