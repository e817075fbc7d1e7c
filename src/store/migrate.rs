//! Schema migrations: the files in `sql/`, embedded at compile time and applied in order.
//!
//! Threads: runs on the caller's thread (startup in `bootstrap`, or `phx-threads migrate`).
//!
//! Each migration runs in its own transaction together with its row in `schema_migrations`,
//! so it is applied completely or not at all. Every transaction first takes a
//! transaction-scoped `pg_advisory_xact_lock`, then re-checks whether the version is
//! recorded: two processes migrating at once serialise, and the second one skips what the
//! first applied. The lock is released by commit or rollback, even if the connection dies.

use postgres::Client;

use crate::store::Error;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    /// The file name in `sql/`, e.g. `001_create_superheroes.sql`.
    pub file: &'static str,
    pub sql: &'static str,
}

/// All migrations in the order they are applied. A test checks that this list matches the
/// files in `sql/`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        file: "001_create_superheroes.sql",
        sql: include_str!("../../sql/001_create_superheroes.sql"),
    },
    Migration {
        version: 2,
        file: "002_cluster_messages.sql",
        sql: include_str!("../../sql/002_cluster_messages.sql"),
    },
    Migration {
        version: 3,
        file: "003_cluster_log.sql",
        sql: include_str!("../../sql/003_cluster_log.sql"),
    },
    Migration {
        version: 4,
        file: "004_cluster_secrets.sql",
        sql: include_str!("../../sql/004_cluster_secrets.sql"),
    },
];

/// Arbitrary key of the advisory lock ("phx_migr" in ASCII).
const MIGRATION_LOCK: i64 = 0x7068_785f_6d69_6772;

/// Waiting for another migrator is bounded, like every wait.
const LOCK_TIMEOUT: &str = "60s";

/// Applies every migration not yet recorded; returns the versions applied now (empty when
/// the schema is current, so running it twice is harmless).
///
/// # Errors
/// `is_unavailable()` if the connection fails; a migration error (rolled back) otherwise.
pub fn run(client: &mut Client) -> Result<Vec<i64>, Error> {
    let mut applied = Vec::new();
    for migration in MIGRATIONS {
        if apply(client, migration)? {
            log::info!("applied migration {}", migration.file);
            applied.push(migration.version);
        }
    }
    Ok(applied)
}

/// Applies one migration under the lock unless it is already recorded.
fn apply(client: &mut Client, migration: &Migration) -> Result<bool, Error> {
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';
         SET LOCAL client_min_messages = warning;
         SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version bigint PRIMARY KEY,
             file text NOT NULL,
             inserted_at timestamptz NOT NULL DEFAULT now()
         );"
    ))?;
    let exists = "SELECT 1 FROM schema_migrations WHERE version = $1";
    if tx.query_opt(exists, &[&migration.version])?.is_some() {
        return Ok(false);
    }
    let version = migration.version;
    tx.batch_execute(migration.sql).map_err(|e| Error::migration(version, e))?;
    let record = "INSERT INTO schema_migrations (version, file) VALUES ($1, $2)";
    tx.execute(record, &[&version, &migration.file])?;
    tx.commit()?;
    Ok(true)
}
