//! Test harness: `TestServer` (the real server, in process, on `127.0.0.1:0`) and `WsClient`.

#![allow(dead_code)]

pub mod ws;

use std::time::{Duration, Instant};

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
        TestServer::with(test_config(), phx_threads::app::router(), server::accept_all())
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
