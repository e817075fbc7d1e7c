//! The store against a real database: migrations, queries, NOTIFY events and the listener,
//! the pool's bounds and healing.

use std::collections::BTreeSet;
use std::time::Duration;

use crossbeam_channel::Receiver;
use phx_threads::store::listener::{self, Action, ListenerHandle, StoreEvent, spawn_listener};
use phx_threads::store::migrate::{self, MIGRATIONS};
use phx_threads::store::superheroes::{self, Superhero, SuperheroParams};
use phx_threads::store::{Store, StoreConfig};

use crate::support::pg::TestDb;
use crate::support::recv;

fn params(name: &str) -> SuperheroParams {
    SuperheroParams {
        name: Some(name.into()),
        location: Some("Earth".into()),
        power: Some("Grit".into()),
    }
}

fn rename(name: &str) -> SuperheroParams {
    SuperheroParams { name: Some(name.into()), ..SuperheroParams::default() }
}

fn listening(db: &TestDb, store: &Store) -> (ListenerHandle, Receiver<StoreEvent>) {
    crate::support::listening(&db.url, store)
}

fn change(rx: &Receiver<StoreEvent>) -> (Action, Superhero) {
    match recv(rx, "a change event") {
        StoreEvent::Change { action, superhero } => (action, superhero),
        other => panic!("expected a change, got {other:?}"),
    }
}

#[test]
fn migrations_are_recorded_and_idempotent() {
    let db = TestDb::new();
    let mut client = db.client();
    assert_eq!(migrate::run(&mut client).unwrap(), Vec::<i64>::new());
    let rows = client.query("SELECT version FROM schema_migrations ORDER BY version", &[]).unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
}

#[test]
fn concurrent_migrators_apply_each_migration_once() {
    let db = TestDb::empty();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            std::thread::spawn(move || {
                let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                migrate::run(&mut client).unwrap()
            })
        })
        .collect();
    let mut applied: Vec<i64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    applied.sort();
    assert_eq!(applied, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
}

#[test]
fn embedded_migrations_match_the_sql_directory() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
    let files: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".sql"))
        .collect();
    let embedded: BTreeSet<String> = MIGRATIONS.iter().map(|m| m.file.to_owned()).collect();
    assert_eq!(files, embedded);
    for (i, m) in MIGRATIONS.iter().enumerate() {
        assert_eq!(m.version, i as i64 + 1, "versions are consecutive");
        assert!(m.file.starts_with(&format!("{:03}_", m.version)));
    }
}

#[test]
fn queries_round_trip_and_report_not_found() {
    let db = TestDb::new();
    let store = db.store();
    let mut c = store.client().unwrap();
    let hero = superheroes::create(&mut *c, &params("Flash")).unwrap();
    assert_eq!((hero.version, hero.inserted_at), (1, hero.updated_at));
    assert_eq!(superheroes::get(&mut *c, hero.id).unwrap(), hero);
    let renamed = superheroes::update(&mut *c, hero.id, &rename("Barry")).unwrap();
    assert_eq!(
        (renamed.name.as_str(), renamed.location.as_str(), renamed.version),
        ("Barry", "Earth", 2)
    );
    assert!(renamed.updated_at > hero.updated_at);
    assert_eq!(superheroes::list(&mut *c).unwrap(), vec![renamed.clone()]);
    assert_eq!(superheroes::delete(&mut *c, hero.id).unwrap(), renamed);
    assert!(superheroes::get(&mut *c, hero.id).unwrap_err().is_not_found());
    assert!(superheroes::update(&mut *c, hero.id, &rename("X")).unwrap_err().is_not_found());
    assert!(superheroes::delete(&mut *c, hero.id).unwrap_err().is_not_found());
    let invalid = superheroes::create(&mut *c, &rename("Only a name")).unwrap_err();
    assert_eq!(invalid.field_errors().unwrap().get("power").unwrap(), ["can't be blank"]);
}

#[test]
fn seeding_fills_an_empty_table_once() {
    let db = TestDb::new();
    let store = db.store();
    let mut c = store.client().unwrap();
    let n = superheroes::seed_if_empty(&mut *c).unwrap();
    assert!(n >= 3);
    assert_eq!(superheroes::seed_if_empty(&mut *c).unwrap(), 0);
    assert_eq!(superheroes::list(&mut *c).unwrap().len(), n);
}

#[test]
fn every_committed_write_notifies_with_the_full_row() {
    let db = TestDb::new();
    let store = db.store();
    let (listener, events) = listening(&db, &store);
    let mut c = store.client().unwrap();
    let created = superheroes::create(&mut *c, &params("Storm")).unwrap();
    let updated = superheroes::update(&mut *c, created.id, &rename("Ororo")).unwrap();
    let deleted = superheroes::delete(&mut *c, created.id).unwrap();
    assert_eq!(change(&events), (Action::Create, created));
    assert_eq!(change(&events), (Action::Update, updated));
    assert_eq!(change(&events), (Action::Delete, deleted));
    listener.shutdown().unwrap();
}

#[test]
fn rolled_back_and_failed_writes_do_not_notify() {
    let db = TestDb::new();
    let store = db.store();
    let (listener, events) = listening(&db, &store);
    let mut c = store.client().unwrap();
    let kept = superheroes::create(&mut *c, &params("Kept")).unwrap();
    assert_eq!(change(&events).1, kept);

    // A write inside an outer transaction that is rolled back.
    let mut tx = c.transaction().unwrap();
    superheroes::create(&mut tx, &params("Ghost")).unwrap();
    superheroes::update(&mut tx, kept.id, &rename("Ghost")).unwrap();
    tx.rollback().unwrap();
    // Writes that fail: invalid input, missing rows, a constraint the database enforces.
    assert!(superheroes::create(&mut *c, &rename("Half")).is_err());
    assert!(superheroes::update(&mut *c, kept.id + 1000, &rename("Nobody")).is_err());
    assert!(superheroes::delete(&mut *c, kept.id + 1000).is_err());
    let oversized =
        c.execute("UPDATE superheroes SET name = repeat('x', 101) WHERE id = $1", &[&kept.id]);
    assert!(oversized.is_err(), "CHECK constraint backs the validation");

    // Notifications arrive in commit order, so if any of the above had notified, it would
    // arrive before this one.
    let marker = superheroes::update(&mut *c, kept.id, &rename("Marker")).unwrap();
    assert_eq!(change(&events), (Action::Update, marker));
    listener.shutdown().unwrap();
}

#[test]
fn listener_resyncs_after_its_connection_is_killed() {
    let db = TestDb::new();
    let store = db.store();
    let (listener, events) = listening(&db, &store);
    let mut admin = db.client();
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'phx-threads-listener') t",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    assert_eq!(recv(&events, "resync"), StoreEvent::Resync);
    let hero = superheroes::create(&mut *store.client().unwrap(), &params("After")).unwrap();
    assert_eq!(change(&events), (Action::Create, hero));
    listener.shutdown().unwrap();
}

/// 50 updates of one row from 5 threads: notifications arrive in commit order, and in that
/// order `version` counts up by one and `updated_at` strictly increases.
#[test]
fn concurrent_updates_have_strictly_increasing_updated_at() {
    let db = TestDb::new();
    let store = db.store();
    let (listener, events) = listening(&db, &store);
    let hero = superheroes::create(&mut *store.client().unwrap(), &params("Contested")).unwrap();
    assert_eq!(change(&events).1, hero);
    let threads: Vec<_> = (0..5)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let mut c = store.client().unwrap();
                    superheroes::update(&mut *c, hero.id, &rename(&format!("t{t}-{i}"))).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let mut previous = hero;
    for _ in 0..50 {
        let (action, next) = change(&events);
        assert_eq!(action, Action::Update);
        assert_eq!(next.version, previous.version + 1);
        assert!(next.updated_at > previous.updated_at, "{next:?} after {previous:?}");
        previous = next;
    }
    assert_eq!(superheroes::get(&mut *store.client().unwrap(), previous.id).unwrap(), previous);
    listener.shutdown().unwrap();
}

#[test]
fn pool_checkout_times_out_as_unavailable() {
    let db = TestDb::new();
    let config = StoreConfig {
        pool_size: 1,
        checkout_timeout: Duration::from_millis(100),
        ..StoreConfig::new(&db.url)
    };
    let store = Store::connect(config).unwrap();
    let held = store.client().unwrap();
    let err = store.client().err().expect("pool is exhausted");
    assert!(err.is_unavailable(), "{err}");
    drop(held);
    assert!(store.client().is_ok());
}

#[test]
fn broken_connections_are_replaced() {
    let db = TestDb::new();
    let config = StoreConfig { pool_size: 2, ..StoreConfig::new(&db.url) };
    let store = Store::connect(config).unwrap();
    let (mut a, mut b) = (store.client().unwrap(), store.client().unwrap());
    superheroes::list(&mut *a).unwrap();
    superheroes::list(&mut *b).unwrap();
    drop((a, b));
    let sql = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'phx-threads'";
    assert_eq!(db.client().query(sql, &[]).unwrap().len(), 2);
    // The first use of a dead connection may fail (as unavailable); after that the pool has
    // replaced it, and the breakage makes it ping the other one before use.
    if let Err(e) = superheroes::list(&mut *store.client().unwrap()) {
        assert!(e.is_unavailable(), "{e}");
    }
    for _ in 0..3 {
        superheroes::list(&mut *store.client().unwrap()).unwrap();
    }
}

#[test]
fn unreachable_database_is_unavailable() {
    let dir = crate::support::TempDir::new("phx-it-nosock");
    let url = format!("host={} user=postgres dbname=x connect_timeout=2", dir.path().display());
    let err = Store::connect(StoreConfig::new(url)).err().expect("nothing listens there");
    assert!(err.is_unavailable(), "{err}");
}

#[test]
fn listener_shuts_down_promptly_even_while_reconnecting() {
    let dir = crate::support::TempDir::new("phx-it-nosock");
    let url = format!("host={} user=postgres dbname=x", dir.path().display());
    let listener = spawn_listener(&url, |_| {}).unwrap();
    let started = std::time::Instant::now();
    listener.shutdown().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn bootstrap_migrates_and_seeds_an_empty_database() {
    let db = TestDb::empty();
    let unused = crate::support::TempDir::new("phx-it-unused");
    let (store, cluster) = phx_threads::store::bootstrap(Some(&db.url), unused.path()).unwrap();
    assert!(cluster.is_none());
    let heroes = superheroes::list(&mut *store.client().unwrap()).unwrap();
    assert!(heroes.iter().any(|h| h.name == "Superman"), "{heroes:?}");
    // A second start finds everything in place.
    let (store, _) = phx_threads::store::bootstrap(Some(&db.url), unused.path()).unwrap();
    assert_eq!(superheroes::list(&mut *store.client().unwrap()).unwrap(), heroes);
}

/// A cluster left running (say, by a killed server) is adopted, not started twice.
#[test]
fn a_running_cluster_is_adopted() {
    let mut first = crate::support::pg::private_cluster();
    let mut options = phx_threads::store::cluster::ClusterOptions::new(first.data_dir());
    options.fsync = false;
    let second = phx_threads::store::cluster::LocalCluster::start_with(options).unwrap();
    assert_eq!(second.url("postgres"), first.url("postgres"));
    second.create_database("adopted").unwrap();
    drop(second); // stops the server it adopted
    first.stop().unwrap(); // notices that, instead of failing
    assert!(!first.is_running());
}

/// A notification on the changes channel that does not parse (another version of the server
/// mid-deploy, a NOTIFY by hand) may stand for a change nobody would see: subscribers get a
/// `Resync` and reload, and later changes still arrive.
#[test]
fn an_unparsable_change_notification_makes_subscribers_resync() {
    let db = TestDb::new();
    let store = db.store();
    let (listener, events) = listening(&db, &store);
    let sql = format!("SELECT pg_notify('{}', 'not a change')", listener::CHANNEL);
    db.client().execute(sql.as_str(), &[]).unwrap();
    assert_eq!(recv(&events, "resync"), StoreEvent::Resync);
    let hero = superheroes::create(&mut *store.client().unwrap(), &params("After")).unwrap();
    assert_eq!(change(&events), (Action::Create, hero));
    listener.shutdown().unwrap();
}
