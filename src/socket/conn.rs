//! A connection's outbound side: frames are written straight to the TCP stream by whichever
//! thread produces them (the socket, a channel, the PubSub registry), and a short-lived
//! flusher thread exists only while a client is behind.
//!
//! Why no writer thread per connection: at 19k connections a dedicated writer was 19k more
//! threads (a kernel stack and task_struct each) and, worse, one futex wake per frame: a
//! broadcast to 10k subscribers meant 10k thread wakes. Now a frame costs one non-blocking
//! `send(MSG_DONTWAIT)` under the connection's lock, and nothing else.
//!
//! Runs on: any thread holding a `ConnHandle`, plus `ws-flush-<id>` while the client is behind.
//! **Invariants:** frames never interleave and keep their order: a sender writes directly only
//! when nothing is pending and no flusher owns the stream, all under `OutState`'s lock;
//! otherwise it appends to `pending`, which only the flusher (or the closing socket thread)
//! drains. Senders never block: more than `max_pending_bytes` behind marks the client a slow
//! consumer and the connection is cut, which wakes all of its threads.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use socket2::SockRef;

use crate::process;
use crate::protocol::{Outgoing, Vsn};

/// Most bytes the flusher gathers from `pending` into one `write` call.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// One complete WebSocket frame (or several, from tungstenite's own control replies).
pub(crate) enum Chunk {
    Owned(Vec<u8>),
    /// A broadcast frame, encoded once and shared by every subscriber (fastlane).
    Shared(Arc<[u8]>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(s) => s,
        }
    }
}

/// Why the server is ending a connection; decides the close code the client sees (§1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Graceful server shutdown: 1012, so clients reconnect (to this server once it is back).
    Shutdown,
    /// `disconnect` broadcast on the socket id: 1001, the client reconnects and re-authenticates.
    Disconnect,
    /// The client did not read its frames fast enough (or its stream broke); the TCP stream is
    /// cut without a close frame.
    SlowConsumer,
}

impl CloseReason {
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Shutdown => 1012,
            CloseReason::Disconnect => 1001,
            CloseReason::SlowConsumer => 1008,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "server restart",
            CloseReason::Disconnect => "disconnected",
            CloseReason::SlowConsumer => "slow consumer",
        }
    }
}

/// Limits of one connection's outbound side (from `Config`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutLimits {
    /// Bytes a client may be behind (beyond the kernel's socket buffer) before it is cut.
    pub max_pending_bytes: usize,
    /// Stack of the flusher thread.
    pub flusher_stack_bytes: usize,
}

/// The outbound state, guarded by one lock per connection.
#[derive(Default)]
struct OutState {
    /// Frames (the first possibly partly written: `offset`) the kernel would not take yet.
    pending: VecDeque<Chunk>,
    offset: usize,
    pending_bytes: usize,
    /// A flusher thread (or the closing socket thread) owns writing; others append.
    draining: bool,
    /// The connection is ending: no new frames are accepted.
    closed: bool,
    /// A write failed or timed out; nothing more will reach the client.
    broken: bool,
    flusher: Option<JoinHandle<()>>,
}

/// State shared by a connection's threads and everyone who may need to end it.
pub(crate) struct ConnShared {
    pub id: u64,
    tcp: Arc<TcpStream>,
    reason: Mutex<Option<CloseReason>>,
    out: Mutex<OutState>,
    /// Signalled when a flusher stops draining.
    drained: Condvar,
    limits: OutLimits,
}

impl ConnShared {
    pub fn new(id: u64, tcp: Arc<TcpStream>, limits: OutLimits) -> ConnShared {
        ConnShared {
            id,
            tcp,
            reason: Mutex::new(None),
            out: Mutex::new(OutState::default()),
            drained: Condvar::new(),
            limits,
        }
    }

    /// Asks the connection to end. The first reason wins. A slow consumer is cut at once (its
    /// flusher may be blocked in `write`); otherwise only the read side is shut, which wakes the
    /// socket thread so it can close the WebSocket properly.
    pub fn close(&self, reason: CloseReason) {
        {
            let mut current = self.reason.lock();
            if current.is_some() {
                return;
            }
            *current = Some(reason);
        }
        let how = if reason == CloseReason::SlowConsumer { Shutdown::Both } else { Shutdown::Read };
        let _ = self.tcp.shutdown(how);
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.reason.lock()
    }

    pub fn shutdown_tcp(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }

    /// Sends one frame, in order with every other, without blocking. False if the connection
    /// is ending, broken, or was just cut as a slow consumer.
    pub fn send(self: &Arc<Self>, chunk: Chunk) -> bool {
        let mut st = self.out.lock();
        if st.closed || st.broken {
            return false;
        }
        if st.draining || !st.pending.is_empty() {
            return self.append(st, chunk);
        }
        let written = match send_nonblocking(&self.tcp, chunk.bytes()) {
            Ok(n) => n,
            Err(e) => {
                log::debug!("conn {}: write failed: {e}", self.id);
                st.broken = true;
                drop(st);
                self.close(CloseReason::SlowConsumer);
                return false;
            }
        };
        if written == chunk.bytes().len() {
            return true;
        }
        // The kernel's send buffer is full: keep the rest and let a flusher wait for the client.
        st.offset = written;
        st.pending_bytes = chunk.bytes().len() - written;
        st.pending.push_back(chunk);
        self.start_flusher(&mut st)
    }

    fn append(&self, mut st: parking_lot::MutexGuard<'_, OutState>, chunk: Chunk) -> bool {
        let len = chunk.bytes().len();
        if st.pending_bytes + len > self.limits.max_pending_bytes {
            st.broken = true;
            drop(st);
            log::warn!("conn {}: client too far behind, disconnecting slow consumer", self.id);
            self.close(CloseReason::SlowConsumer);
            return false;
        }
        st.pending_bytes += len;
        st.pending.push_back(chunk);
        true
    }

    fn start_flusher(self: &Arc<Self>, st: &mut OutState) -> bool {
        // A previous flusher has already left its loop (draining was false); reap it.
        if let Some(old) = st.flusher.take() {
            let _ = old.join();
        }
        let me = self.clone();
        let name = format!("ws-flush-{}", self.id);
        match process::spawn(name, self.limits.flusher_stack_bytes, move || me.run_flusher()) {
            Ok(handle) => {
                st.draining = true;
                st.flusher = Some(handle);
                true
            }
            Err(e) => {
                log::error!("conn {}: cannot start a flusher thread: {e}", self.id);
                st.broken = true;
                self.close(CloseReason::SlowConsumer);
                false
            }
        }
    }

    /// The flusher loop: blocking writes (bounded by the socket's write timeout) until nothing
    /// is pending, then the thread ends. A write error or timeout cuts the connection.
    fn run_flusher(&self) {
        let mut batch = Vec::new();
        loop {
            {
                let mut st = self.out.lock();
                if st.pending.is_empty() || st.broken {
                    st.draining = false;
                    self.drained.notify_all();
                    return;
                }
                take_batch(&mut st, &mut batch);
            }
            if let Err(e) = (&*self.tcp).write_all(&batch) {
                log::info!("conn {}: write failed while behind: {e}", self.id);
                self.out.lock().broken = true;
                self.close(CloseReason::SlowConsumer);
            }
            batch.clear();
        }
    }

    /// Ends the outbound side: refuses new frames, lets a running flusher finish (until
    /// `deadline`), writes `last` (a close frame) and half-closes the stream. True when
    /// everything, `last` included, reached the kernel.
    pub fn finish(&self, last: Option<Vec<u8>>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.out.lock();
        st.closed = true;
        while st.draining {
            if self.drained.wait_until(&mut st, deadline).timed_out() {
                return false;
            }
        }
        if st.broken {
            return false;
        }
        let mut rest = Vec::new();
        while !st.pending.is_empty() {
            take_batch(&mut st, &mut rest);
        }
        drop(st);
        rest.extend_from_slice(last.as_deref().unwrap_or_default());
        let _ = self.tcp.set_write_timeout(Some(timeout));
        let ok = (&*self.tcp).write_all(&rest).is_ok();
        let _ = self.tcp.shutdown(Shutdown::Write);
        ok
    }

    /// Joins the flusher, if one ever ran. Call after the stream is shut down, so it cannot
    /// be blocked in `write`.
    pub fn join_flusher(&self) {
        let flusher = self.out.lock().flusher.take();
        if let Some(handle) = flusher {
            let _ = handle.join();
        }
    }
}

/// Moves pending frames into `batch`, up to about `WRITE_BATCH_BYTES`.
fn take_batch(st: &mut OutState, batch: &mut Vec<u8>) {
    while let Some(chunk) = st.pending.pop_front() {
        let bytes = &chunk.bytes()[st.offset..];
        batch.extend_from_slice(bytes);
        st.pending_bytes -= bytes.len();
        st.offset = 0;
        if batch.len() >= WRITE_BATCH_BYTES {
            break;
        }
    }
}

/// One `send` that never blocks (the stream itself stays blocking for the socket's reads).
/// Returns how many bytes the kernel took; 0 when its buffer is full.
fn send_nonblocking(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let sock = SockRef::from(tcp);
    let mut done = 0;
    while done < bytes.len() {
        match sock.send_with_flags(&bytes[done..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Cheap, cloneable handle through which channels and the registry send to one connection.
#[derive(Clone)]
pub(crate) struct ConnHandle {
    pub shared: Arc<ConnShared>,
    pub vsn: Vsn,
}

impl ConnHandle {
    /// Sends a complete frame without blocking; see `ConnShared::send`.
    pub fn send(&self, chunk: Chunk) -> bool {
        self.shared.send(chunk)
    }

    /// Encodes and sends a message. Messages this connection's serializer cannot carry
    /// (binary payloads over V1) are dropped with a debug log, as they cannot be expressed.
    pub fn send_message(&self, out: &Outgoing<'_>) -> bool {
        match self.vsn.encode(out) {
            Some(encoded) => self.send(Chunk::Owned(encoded.into_frame())),
            None => {
                log::debug!("conn {}: dropped binary message for a V1 client", self.shared.id);
                false
            }
        }
    }
}
