//! Shared test support. Every wait here has a deadline and fails the test with a message.

pub mod http;
pub mod pg;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::Receiver;

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
