//! The writer pool: a few `ws-write-<n>` threads that send the frames a connection's own
//! threads (its socket and its channels) produce.
//!
//! Why a pool instead of writing from the thread that made the frame: Linux gives every thread
//! that sends on a TCP socket a page fragment of its own (`current->task_frag`, an order-3,
//! 32 KiB page) that TCP copies outgoing bytes into, and the thread keeps it until it exits.
//! When the socket thread and the channel thread each wrote their replies, every idle joined
//! connection pinned 64 KiB of kernel memory that shows up nowhere in `/proc/meminfo` (measured:
//! 152 KiB of system memory per connection, 56 KiB of it these fragments). With the pool, the
//! fragments are one per writer and one for the registry, whatever the connection count.
//!
//! What it costs: one thread wake when a connection goes from nothing queued to something
//! queued; a writer then sends everything queued for that connection in one vectored `send`.
//! Broadcasts pass through here only for topics of at least `Config::spread_fanout`
//! subscribers; smaller ones the registry writes itself (`send_direct`).
//!
//! **Invariants:** a connection is in at most one writer's queue at a time (`queued` in
//! `conn.rs`), so a queue holds at most one entry per live connection, and its capacity
//! (`max_connections` plus slack) is never reached. A writer never blocks on a client: it
//! sends with `MSG_DONTWAIT` and leaves a full socket to that connection's flusher.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, bounded};

use parking_lot::{Condvar, Mutex};

use super::conn::ConnShared;
use crate::process;

/// Stack of a writer thread: a 64-slot `IoSlice` array and the send path.
const WRITER_STACK_BYTES: usize = 256 * 1024;
/// An idle writer looks at its queue at least this often (a bound on every wait).
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How long a failed `start` waits for the writers it did start.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// One writer's queue of connections with something to send.
///
/// Why not `process::mailbox` (crossbeam): the queue is pushed to from every socket and
/// channel thread, and crossbeam's send path needs about 700 bytes more stack than this
/// lock-and-notify, which was enough to make one more page of every socket thread's stack
/// resident (4 KiB per connection).
pub(crate) struct WriterQueue {
    state: Mutex<QueueState>,
    ready: Condvar,
    capacity: usize,
}

#[derive(Default)]
struct QueueState {
    conns: VecDeque<Arc<ConnShared>>,
    stopped: bool,
}

/// Why a connection could not be queued.
#[derive(Debug)]
pub(crate) enum QueueError {
    Stopped,
    Full,
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueueError::Stopped => "writer stopped",
            QueueError::Full => "writer queue full",
        })
    }
}

impl WriterQueue {
    /// Queues `conn` for its writer. Never blocks beyond the queue's short lock.
    pub fn push(&self, conn: Arc<ConnShared>) -> Result<(), QueueError> {
        let mut st = self.state.lock();
        if st.stopped {
            return Err(QueueError::Stopped);
        }
        if st.conns.len() >= self.capacity {
            return Err(QueueError::Full);
        }
        let was_empty = st.conns.is_empty();
        st.conns.push_back(conn);
        drop(st);
        // A writer that found the queue non-empty has not gone back to waiting yet.
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Waits (bounded) for work; returns everything queued, or `None` once stopped and empty.
    fn take(&self, batch: &mut VecDeque<Arc<ConnShared>>) -> Option<()> {
        let mut st = self.state.lock();
        while st.conns.is_empty() {
            if st.stopped {
                return None;
            }
            self.ready.wait_for(&mut st, IDLE_WAKE);
        }
        std::mem::swap(&mut st.conns, batch);
        Some(())
    }

    fn stop(&self) {
        self.state.lock().stopped = true;
        self.ready.notify_all();
    }
}

pub(crate) type WriterSender = Arc<WriterQueue>;

/// The running writers, shared by the acceptor (which assigns connections) and the server
/// handle (which stops them); `stop` ends them.
pub(crate) struct WriterPool {
    shards: Vec<WriterSender>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Disconnected once every writer has exited: each holds a sender and drops it as its last
    /// act (also when it panics), so `stop` can wait for all of them with a deadline.
    exited: Receiver<()>,
}

impl WriterPool {
    /// Starts `writers` threads (at least one), each with a queue of at most `capacity`
    /// connections.
    pub fn start(writers: usize, capacity: usize) -> io::Result<WriterPool> {
        let (exit_tx, exited) = bounded::<()>(0);
        let mut pool = WriterPool { shards: Vec::new(), threads: Mutex::new(Vec::new()), exited };
        for n in 0..writers.max(1) {
            let queue = Arc::new(WriterQueue {
                state: Mutex::new(QueueState::default()),
                ready: Condvar::new(),
                capacity,
            });
            let (q, alive) = (queue.clone(), exit_tx.clone());
            let writer = move || {
                run(&q);
                drop(alive);
            };
            match process::spawn(format!("ws-write-{n}"), WRITER_STACK_BYTES, writer) {
                Ok(handle) => {
                    pool.shards.push(queue);
                    pool.threads.get_mut().push(handle);
                }
                Err(e) => {
                    // Our own sender too, or `stop` would wait for it until the deadline.
                    drop(exit_tx);
                    pool.stop(Instant::now() + STOP_TIMEOUT);
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// The queue of the writer that serves connection `id`: connections are spread evenly,
    /// and one connection always uses the same writer.
    pub fn for_connection(&self, id: u64) -> WriterSender {
        self.shards[(id % self.shards.len() as u64) as usize].clone()
    }

    /// Stops every writer after it has sent what was queued before the stop, and joins them if
    /// they have all exited by `deadline`; false (the writers are left detached) if not. A
    /// connection that still sends afterwards writes from its own thread (`ConnShared::send`).
    pub fn stop(&self, deadline: Instant) -> bool {
        for queue in &self.shards {
            queue.stop();
        }
        let handles = std::mem::take(&mut *self.threads.lock());
        if self.exited.recv_deadline(deadline) != Err(RecvTimeoutError::Disconnected) {
            log::warn!("{} writer thread(s) did not stop in time", handles.len());
            return false;
        }
        for handle in handles {
            let _ = handle.join();
        }
        true
    }
}

/// A writer's loop. Each job is a handful of non-blocking sends, so a stop is reached quickly.
fn run(queue: &WriterQueue) {
    let mut batch = VecDeque::new();
    while queue.take(&mut batch).is_some() {
        for conn in batch.drain(..) {
            conn.write_queued();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::socket::conn::OutLimits;

    /// A writer that cannot finish its job (here: stuck on a connection's lock) must not hang
    /// shutdown: `stop` gives up at its deadline and says so.
    #[test]
    fn stop_gives_up_on_a_stuck_writer_at_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = Arc::new(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
        let pool = WriterPool::start(1, 8).unwrap();
        let limits = OutLimits { max_pending_bytes: 1024, flusher_stack_bytes: 64 * 1024 };
        let conn = Arc::new(ConnShared::new(1, tcp, limits, pool.for_connection(1)));
        let (locked_tx, locked) = bounded(1);
        let (release, released) = bounded::<()>(1);
        let holder = {
            let conn = conn.clone();
            std::thread::spawn(move || {
                conn.with_out_lock(|| {
                    locked_tx.send(()).unwrap();
                    let _ = released.recv_timeout(Duration::from_secs(30));
                })
            })
        };
        locked.recv_timeout(Duration::from_secs(5)).unwrap();
        pool.for_connection(1).push(conn).unwrap();
        let started = Instant::now();
        assert!(!pool.stop(started + Duration::from_millis(200)), "reported as not stopped");
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        release.send(()).unwrap();
        holder.join().unwrap();
    }
}
