//! Shared test support. Every wait here has a deadline and fails the test with a message.

pub mod http;
pub mod pg;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use phx_threads::store::Store;
use phx_threads::store::listener::{Action, ListenerHandle, StoreEvent, spawn_listener};
use phx_threads::store::superheroes::{self, SuperheroParams};

/// How long any single expected event may take before the test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Receives the next message or fails the test after `EVENT_TIMEOUT`.
pub fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    rx.recv_timeout(EVENT_TIMEOUT).unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A listener on `url` that has provably started listening: it has delivered the events of a
/// probe write (created and deleted again through `store`).
pub fn listening(url: &str, store: &Store) -> (ListenerHandle, Receiver<StoreEvent>) {
    let (tx, rx) = crossbeam_channel::bounded(1000);
    let listener = spawn_listener(url, move |event| {
        tx.try_send(event).expect("test mailbox has room");
    })
    .unwrap();
    let probe = SuperheroParams {
        name: Some("Probe".into()),
        location: Some("Lab".into()),
        power: Some("Listening".into()),
    };
    // The listener may subscribe at any moment, even between a probe's create and delete, so
    // probe until the create of the current probe is seen, skipping stray earlier deletes.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while Instant::now() < deadline {
        let hero = superheroes::create(&mut *store.client().unwrap(), &probe).unwrap();
        let seen = wait_for(
            &rx,
            Duration::from_millis(500),
            |event| matches!(event, StoreEvent::Change { action: Action::Create, superhero } if superhero.id == hero.id),
        );
        superheroes::delete(&mut *store.client().unwrap(), hero.id).unwrap();
        if seen {
            let deleted = recv(&rx, "probe delete");
            assert!(matches!(deleted, StoreEvent::Change { action: Action::Delete, .. }));
            return (listener, rx);
        }
    }
    panic!("listener never started");
}

/// Receives until an event satisfies `wanted` (true) or `within` passes (false).
fn wait_for(
    rx: &Receiver<StoreEvent>,
    within: Duration,
    wanted: impl Fn(&StoreEvent) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while let Ok(event) = rx.recv_deadline(deadline) {
        if wanted(&event) {
            return true;
        }
    }
    false
}
