//! Our minimal OTP: every process is a named OS thread with an explicit, small stack.
//!
//! Knows nothing about Phoenix. Rust's default thread stack is 2 MiB of address space; ours are
//! set per process kind in `Config` (see ARCHITECTURE.md, "Threads and memory") because at 19k
//! connections the stacks are most of the memory a connection costs.

use std::any::Any;
use std::io;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TrySendError};

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

/// Lowers every thread of this process to `nice` `niceness` (Linux: a nice value is per
/// thread, so each one in `/proc/self/task` is set; threads made later inherit their creator's).
/// Raising niceness needs no privilege. Returns how many threads were set; bounded by the
/// thread count read once.
#[allow(unsafe_code)]
pub fn yield_cpu(niceness: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let tids = tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<libc::id_t>().ok());
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let set = |tid| unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, niceness) } == 0;
    tids.filter(|&tid| set(tid)).count()
}

/// A mailbox that holds at most `capacity` messages but allocates only while it holds some.
///
/// Why not `crossbeam_channel::bounded`: it preallocates and touches every slot, so a
/// 1024-message mailbox of 100-byte messages costs 100 KiB per channel process before it ever
/// receives anything; at 19k channels that was most of the server's memory. The unbounded
/// channel grows in 31-slot blocks and frees them as they drain. The length check and the push
/// are two steps, so with k concurrent senders the queue may exceed `capacity` by k - 1.
pub struct MailboxSender<T> {
    tx: Sender<T>,
    capacity: usize,
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        MailboxSender { tx: self.tx.clone(), capacity: self.capacity }
    }
}

impl<T> MailboxSender<T> {
    /// Queues `msg` unless the mailbox is full or its receiver is gone; never blocks.
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        if self.tx.len() >= self.capacity {
            return Err(TrySendError::Full(msg));
        }
        self.tx.send(msg).map_err(|e| TrySendError::Disconnected(e.into_inner()))
    }
}

impl<T> MailboxSender<T> {
    /// Queues `msg` even when the mailbox is full: for the one control message (a stop) that
    /// must get through a mailbox flooded by others. False if the receiver is gone.
    pub fn force_send(&self, msg: T) -> bool {
        self.tx.send(msg).is_ok()
    }
}

/// A new mailbox of `capacity` messages.
pub fn mailbox<T>(capacity: usize) -> (MailboxSender<T>, Receiver<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (MailboxSender { tx, capacity }, rx)
}

/// Sizes the kernel's per-process futex hash for about `threads` blocked threads.
///
/// Why: since Linux 6.16 a threaded process gets a private futex hash of 16 buckets on a
/// 2-CPU machine, whatever its thread count. Every thread parked on a mailbox or lock sits in
/// it, so at 19k connections each wake-up walked chains of a thousand waiters: a profile showed
/// 54% of all CPU in `futex_wake`. `PR_FUTEX_HASH_SET_SLOTS` (Linux 6.16+) resizes it; older
/// kernels answer EINVAL, which is fine, as their futex hash is global and large.
#[allow(unsafe_code)]
pub fn size_futex_hash(threads: usize) -> io::Result<usize> {
    const PR_FUTEX_HASH: libc::c_int = 78;
    const PR_FUTEX_HASH_SET_SLOTS: libc::c_ulong = 1;
    let slots = threads.next_power_of_two().clamp(16, 1 << 16);
    // SAFETY: prctl with integer arguments only; no memory is passed to the kernel.
    let rc = unsafe {
        libc::prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_SET_SLOTS, slots as libc::c_ulong, 0, 0)
    };
    if rc == 0 { Ok(slots) } else { Err(io::Error::last_os_error()) }
}
