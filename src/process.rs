//! Our minimal OTP: every process is a named OS thread with an explicit, small stack.
//!
//! Knows nothing about Phoenix. Rust's default thread stack is 2 MiB of address space; ours are
//! set per process kind in `Config` (see ARCHITECTURE.md, "Threads and memory") because at 19k
//! connections the stacks are most of the memory a connection costs.

use std::any::Any;
use std::io;
use std::thread::{self, JoinHandle};

/// Spawns a named thread. Fails (instead of panicking like `thread::spawn`) when the OS refuses
/// another thread, so callers can refuse one connection instead of crashing the server.
pub fn spawn<F, T>(name: String, stack_size: usize, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    thread::Builder::new().name(name).stack_size(stack_size).spawn(f)
}

/// The text of a caught panic, for logs and exit reasons.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Number of threads in this process, from `/proc/self/status` (Linux only; `None` elsewhere).
pub fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}
