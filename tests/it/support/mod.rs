//! Test harness: `TestServer` (the real server, in process, on `127.0.0.1:0`) and `WsClient`.

#![allow(dead_code)]

pub mod http;
pub mod pg;
pub mod ws;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use phx_threads::store::Store;
use phx_threads::store::listener::{Action, ListenerHandle, StoreEvent, spawn_listener};
use phx_threads::store::superheroes::{self, SuperheroParams};

use phx_threads::{Config, ConnectFn, Router, ServerHandle, server};

pub use ws::WsClient;

/// Default deadline for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    handle: Option<ServerHandle>,
}

impl TestServer {
    /// The binary's application (the chat) with test-friendly limits.
    pub fn start() -> TestServer {
        TestServer::with(test_config(), phx_threads::app::router(None), server::accept_all())
    }

    pub fn with(config: Config, router: Router, connect: ConnectFn) -> TestServer {
        phx_threads::logger::init();
        let handle = server::start(config, router, connect).expect("server starts");
        TestServer { handle: Some(handle) }
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("running")
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle().ws_addr()
    }

    pub fn client(&self) -> WsClient {
        WsClient::connect(self.addr(), "vsn=2.0.0").expect("websocket connects")
    }

    pub fn shutdown(mut self) -> phx_threads::ShutdownReport {
        self.handle.take().expect("running").shutdown()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let report = handle.shutdown();
            if !std::thread::panicking() {
                assert!(report.clean, "server did not shut down cleanly: {report:?}");
            }
        }
    }
}

pub fn test_config() -> Config {
    Config { ws_addr: "127.0.0.1:0".parse().unwrap(), ..Config::default() }
}

/// A topic no other test uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("{prefix}:{}", uuid::Uuid::new_v4().simple())
}

/// Polls `probe` until it returns true or `timeout` passes. For conditions that have no event
/// to wait on (a thread count in /proc); every call is a fresh observation.
pub fn eventually(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if probe() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
        // A short park between observations instead of a busy loop; not a synchronisation.
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

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
