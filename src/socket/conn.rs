//! A connection's outbound side: frames reach the TCP stream in order, written by the PubSub
//! registry directly (fastlane broadcasts) or by the writer pool (`writer.rs`) for frames the
//! connection's own threads produce; a short-lived flusher thread exists only while a client
//! is behind.
//!
//! Why no writer thread per connection: at 19k connections a dedicated writer was 19k more
//! threads (a kernel stack and task_struct each) and one futex wake per frame: a broadcast to
//! 10k subscribers meant 10k thread wakes. Now a broadcast costs one non-blocking
//! `send(MSG_DONTWAIT)` per subscriber, under the connection's lock, from the registry thread
//! (or, for big topics, from the few writers, so that it runs on every core).
//!
//! Why the socket and channel threads hand their frames over instead of writing them: Linux
//! gives each thread that sends on a TCP socket a 32 KiB page fragment (`task_frag`) that it
//! keeps until the thread exits. Two writing threads per connection pinned 64 KiB of kernel
//! memory per connection, more than both their kernel stacks (see `writer.rs`).
//!
//! Runs on: any thread holding a `ConnHandle`, a `ws-write-<n>` writer, and `ws-flush-<id>`
//! while the client is behind.
//! **Invariants:** frames never interleave and keep their order: bytes reach the stream only
//! under `OutState`'s lock (non-blocking sends), or from the one flusher that owns the stream
//! (`draining`), or from `finish` after the flusher is done. Whenever `pending` is not empty,
//! the connection is queued at a writer (`queued`) or a flusher is draining it, so nothing is
//! stranded. Senders never block: more than `max_pending_bytes` behind marks the client a slow
//! consumer and the connection is cut, which wakes all of its threads.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use socket2::SockRef;

use super::writer::WriterSender;
use crate::process;
use crate::protocol::{OutKind, Outgoing, Payload, Vsn};
use crate::pubsub::{Connection, Eviction};

/// Most bytes the flusher gathers from `pending` into one `write` call.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Most frames a writer passes to one vectored `send`.
const WRITE_BATCH_FRAMES: usize = 64;

/// One complete WebSocket frame (or several, from tungstenite's own control replies).
pub(crate) enum Chunk {
    Owned(Vec<u8>),
    /// A broadcast frame, encoded once and shared by every subscriber (fastlane).
    Shared(Arc<[u8]>),
}

impl Chunk {
    pub(crate) fn bytes(&self) -> &[u8] {
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
    /// cut, after a 1008 close frame if the kernel can still take one (`cut_slow_consumer`).
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
    /// Length of the one queued frame bigger than the budget, or 0 (see `append`).
    oversized: usize,
    /// A flusher thread owns writing; others append.
    draining: bool,
    /// The connection is in a writer's queue; the writer will send `pending`.
    queued: bool,
    /// The connection is ending: no new frames are accepted.
    closed: bool,
    /// Something was ever queued (for a WebSocket, the 101 first): a close frame may follow.
    opened: bool,
    /// The close frame is queued or sent already (`send_close_now`): `finish` only flushes.
    farewell: bool,
    /// A write failed or timed out; nothing more will reach the client.
    broken: bool,
    flusher: Option<JoinHandle<()>>,
}

/// Where a connection's messages go instead of its TCP stream: a LongPoll session's buffer,
/// which its polls drain (`longpoll.rs`). Set once, when the session opens.
pub(crate) trait Sink: Send + Sync {
    /// Takes one complete frame; false if the session is ending or the client is too far
    /// behind (then the sink has closed the connection as a slow consumer).
    fn push(&self, chunk: Chunk) -> bool;
    /// The connection is ending (`close`): wake whoever waits on the session.
    fn closing(&self);
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
    /// The writer this connection's handed-over frames go to.
    writer: WriterSender,
    /// Set for a LongPoll session: every frame goes there, never to the stream.
    sink: std::sync::OnceLock<Arc<dyn Sink>>,
}

impl ConnShared {
    pub fn new(id: u64, tcp: Arc<TcpStream>, limits: OutLimits, writer: WriterSender) -> Self {
        ConnShared {
            id,
            tcp,
            reason: Mutex::new(None),
            out: Mutex::new(OutState::default()),
            drained: Condvar::new(),
            limits,
            writer,
            sink: std::sync::OnceLock::new(),
        }
    }

    /// Turns this connection into a LongPoll session: its frames go to `sink` from now on.
    pub fn divert(&self, sink: Arc<dyn Sink>) {
        let _ = self.sink.set(sink);
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
        if reason == CloseReason::SlowConsumer {
            crate::metrics::slow_consumer();
        }
        let how = if reason == CloseReason::SlowConsumer { Shutdown::Both } else { Shutdown::Read };
        let _ = self.tcp.shutdown(how);
        if let Some(sink) = self.sink.get() {
            sink.closing();
        }
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.reason.lock()
    }

    pub fn shutdown_tcp(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }

    /// What the kernel holds of this connection's request head, unread: how many bytes (up to
    /// `MAX_HEAD_BYTES`) and whether they end the head, i.e. whether its client has sent
    /// everything and the wait is ours. A peek: never blocks, consumes nothing.
    #[allow(unsafe_code)]
    pub fn head_waiting(&self) -> (usize, bool) {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); super::http1::MAX_HEAD_BYTES];
        let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
        let Ok(n) = SockRef::from(&*self.tcp).recv_with_flags(&mut buf, flags) else {
            return (0, false);
        };
        // SAFETY: `recv` initialised the first `n` bytes.
        let peeked = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        (n, peeked.windows(4).any(|w| w == b"\r\n\r\n"))
    }

    /// Refuses a connection still in its handshake: an HTTP 503 with `reason`, if one
    /// non-blocking send takes it (the client sees why), then the stream is shut, which wakes
    /// the connection's thread from reading the request head.
    pub fn refuse_handshake(&self, reason: &str) {
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nretry-after: 1\r\n\r\n{reason}",
            reason.len()
        );
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let _ = SockRef::from(&*self.tcp).send_with_flags(response.as_bytes(), flags);
        self.shutdown_tcp();
    }

    /// Queues one frame for this connection's writer, in order with every other frame; never
    /// blocks. For the connection's own threads (socket, channels), which must not write to
    /// the stream themselves (module doc). False if the connection is ending, broken, or was
    /// just cut as a slow consumer.
    pub fn send(self: &Arc<Self>, chunk: Chunk) -> bool {
        if let Some(sink) = self.sink.get() {
            return sink.push(chunk);
        }
        let mut st = self.out.lock();
        if st.closed || st.broken || !self.append(&mut st, chunk) {
            return false;
        }
        if st.queued || st.draining {
            return true;
        }
        st.queued = true;
        drop(st);
        if let Err(e) = self.writer.push(self.clone()) {
            log::debug!("conn {}: writer unavailable ({e}), writing directly", self.id);
            return self.write_without_writer();
        }
        true
    }

    /// Only when the pool has stopped (a connection outliving shutdown's deadline): write from
    /// this thread rather than strand the frame. Kept out of line so that `send`, which runs
    /// on every connection thread, does not carry `write_pending`'s 1 KiB frame (an extra
    /// resident stack page per thread).
    #[cold]
    #[inline(never)]
    fn write_without_writer(self: &Arc<Self>) -> bool {
        let mut st = self.out.lock();
        st.queued = false;
        self.write_pending(&mut st)
    }

    /// Writes one frame now if nothing is queued before it, else queues it behind the others;
    /// never blocks. For the PubSub registry (fastlane) and other long-lived shared threads.
    pub fn send_direct(self: &Arc<Self>, chunk: Chunk) -> bool {
        if let Some(sink) = self.sink.get() {
            return sink.push(chunk);
        }
        let mut st = self.out.lock();
        if st.closed || st.broken {
            return false;
        }
        if st.queued || st.draining || !st.pending.is_empty() {
            return self.append(&mut st, chunk);
        }
        let written = match send_nonblocking(&self.tcp, chunk.bytes()) {
            Ok(n) => n,
            Err(e) => return self.write_failed(&mut st, &e),
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

    /// The writer's job: send everything queued, without blocking. What the kernel will not
    /// take yet is left to a flusher.
    pub(super) fn write_queued(self: &Arc<Self>) {
        let mut st = self.out.lock();
        st.queued = false;
        // A flusher owns the stream, or `finish` is taking over: they write what is pending.
        if st.draining || st.closed || st.broken {
            return;
        }
        self.write_pending(&mut st);
    }

    /// Vectored non-blocking sends of `pending` until it is empty or the kernel's buffer is
    /// full (then a flusher takes over). Called with the lock held, so nothing interleaves.
    fn write_pending(self: &Arc<Self>, st: &mut OutState) -> bool {
        while !st.pending.is_empty() {
            match send_pending_once(&self.tcp, st) {
                Ok(0) => return self.start_flusher(st),
                Ok(n) => advance(st, n),
                Err(e) => return self.write_failed(st, &e),
            }
        }
        true
    }

    fn write_failed(&self, st: &mut OutState, e: &io::Error) -> bool {
        log::debug!("conn {}: write failed: {e}", self.id);
        st.broken = true;
        self.close(CloseReason::SlowConsumer);
        false
    }

    /// Appends to `pending`, or cuts the connection if that would put the client more than
    /// `max_pending_bytes` behind. One shared frame bigger than that budget (a big `hydrate`,
    /// one `Arc` for every client it goes to, so it costs no memory per client) is not by
    /// itself a sign of a slow client: it is taken when the rest of the queue is within budget
    /// and does not count against the frames behind it, so the budget is `max_pending_bytes`
    /// plus one such frame; a second one while the first is queued is over budget. An owned
    /// frame (a reply) bigger than the budget still makes a slow consumer.
    fn append(&self, st: &mut OutState, chunk: Chunk) -> bool {
        let len = chunk.bytes().len();
        let max = self.limits.max_pending_bytes;
        let big = len > max && matches!(chunk, Chunk::Shared(_));
        let counted = st.pending_bytes.saturating_sub(st.oversized) + if big { 0 } else { len };
        if counted > max || (big && st.oversized > 0) {
            log::warn!("conn {}: client too far behind, disconnecting slow consumer", self.id);
            self.cut_slow_consumer(st);
            return false;
        }
        if big {
            st.oversized = len;
        }
        st.pending_bytes += len;
        st.pending.push_back(chunk);
        st.opened = true;
        true
    }

    /// Shutdown's first step, from the server's thread: the close frame goes out now, behind
    /// what is queued, without waiting for this connection's own threads to be scheduled (with
    /// 19,000 connections on a busy machine the last clients saw their 1012 after seconds, and
    /// their reconnects waited for it). No frame is taken after it; `finish` then only flushes.
    /// False for a LongPoll session, a connection not yet upgraded or already ending.
    pub fn send_close_now(self: &Arc<Self>, reason: CloseReason) -> bool {
        if self.sink.get().is_some() {
            return false;
        }
        let mut st = self.out.lock();
        if st.closed || st.broken || !st.opened {
            return false;
        }
        let close = crate::protocol::frame::close(reason.code(), reason.text());
        st.pending_bytes += close.len();
        st.pending.push_back(Chunk::Owned(close));
        (st.closed, st.farewell) = (true, true);
        // A flusher owns the stream and will send it; otherwise send now, under the lock.
        st.draining || self.write_pending(&mut st)
    }

    /// Cuts a slow consumer, first telling it why (close 1008) when that costs one
    /// non-blocking `send`: only at a frame boundary (no flusher mid-frame, nothing partly
    /// written), and only if the kernel takes the whole small frame; the frames still queued are
    /// dropped, since the client will never read them. A client whose socket buffer is full
    /// gets no frame and sees 1006; phoenix.js reconnects either way.
    fn cut_slow_consumer(&self, st: &mut OutState) {
        if !st.broken && !st.draining && st.offset == 0 {
            let code = CloseReason::SlowConsumer;
            let close = crate::protocol::frame::close(code.code(), code.text());
            if matches!(send_nonblocking(&self.tcp, &close), Ok(n) if n == close.len()) {
                log::debug!("conn {}: sent close 1008 to the slow consumer", self.id);
            }
        }
        st.broken = true;
        self.close(CloseReason::SlowConsumer);
    }

    /// Runs `f` with the outbound lock held, so a test can stand in for a writer stuck on it.
    #[cfg(test)]
    pub(super) fn with_out_lock<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = self.out.lock();
        f()
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
    /// `deadline`), writes `last` (a close frame, unless `send_close_now` queued one) and
    /// half-closes the stream. True when
    /// everything, `last` included, reached the kernel.
    pub fn finish(&self, last: Option<Vec<u8>>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.out.lock();
        st.closed = true;
        let last = if st.farewell { None } else { last };
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

/// Moves up to `WRITE_BATCH_BYTES` more of the pending bytes into `batch`, splitting a frame
/// if need be: a multi-megabyte frame (a big `hydrate`, shared by every client it goes to) must
/// not be copied whole for each client that is behind.
fn take_batch(st: &mut OutState, batch: &mut Vec<u8>) {
    let end = batch.len() + WRITE_BATCH_BYTES;
    while batch.len() < end {
        let Some(front) = st.pending.front() else { break };
        let bytes = &front.bytes()[st.offset..];
        let n = bytes.len().min(end - batch.len());
        batch.extend_from_slice(&bytes[..n]);
        advance(st, n);
    }
}

/// One vectored `send` of the first `WRITE_BATCH_FRAMES` pending frames that never blocks.
/// Returns how many bytes the kernel took; 0 when its buffer is full. Out of line: its 1 KiB
/// slice array stays off the stacks of callers that do not reach it.
#[inline(never)]
fn send_pending_once(tcp: &TcpStream, st: &OutState) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); WRITE_BATCH_FRAMES];
    let mut count = 0;
    for (i, chunk) in st.pending.iter().take(WRITE_BATCH_FRAMES).enumerate() {
        let skip = if i == 0 { st.offset } else { 0 };
        slices[i] = IoSlice::new(&chunk.bytes()[skip..]);
        count = i + 1;
    }
    let sock = SockRef::from(tcp);
    loop {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        match sock.send_vectored_with_flags(&slices[..count], flags) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Drops the first `n` pending bytes (whole frames, then a prefix of the next).
fn advance(st: &mut OutState, mut n: usize) {
    st.pending_bytes -= n;
    while let Some(front) = st.pending.front() {
        let left = front.bytes().len() - st.offset;
        if n < left {
            st.offset += n;
            return;
        }
        n -= left;
        st.offset = 0;
        let len = front.bytes().len();
        st.pending.pop_front();
        forget_oversized(st, len);
    }
}

/// A frame of `len` bytes left the queue; if it was the oversized one, the budget is normal
/// again (at most one is queued, and every other frame is smaller).
fn forget_oversized(st: &mut OutState, len: usize) {
    if len == st.oversized {
        st.oversized = 0;
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
    /// Hands a complete frame to the connection's writer; see `ConnShared::send`.
    pub fn send(&self, chunk: Chunk) -> bool {
        self.shared.send(chunk)
    }

    /// Writes a complete frame from the calling thread; see `ConnShared::send_direct`.
    pub fn send_direct(&self, chunk: Chunk) -> bool {
        self.shared.send_direct(chunk)
    }

    /// Encodes and sends a message. One this connection's serializer cannot carry (a binary
    /// payload over V1, which Phoenix's V1 serializer refuses too) is not sent: a reply is
    /// answered with an error reply saying why, so the client's push does not wait for its
    /// timeout; a push is counted and logged (`limits::refuse_binary`).
    pub fn send_message(&self, out: &Outgoing<'_>) -> bool {
        match self.vsn.encode(out) {
            Some(encoded) => self.send_encoded(encoded.into_frame()),
            None => {
                crate::limits::refuse_binary(self.shared.id, out.topic);
                match out.kind {
                    OutKind::Reply { .. } => self.send_message(&binary_refused(out)),
                    OutKind::Event { .. } => false,
                }
            }
        }
    }

    fn send_encoded(&self, frame: Vec<u8>) -> bool {
        crate::metrics::frame_out(frame.len());
        self.send(Chunk::Owned(frame))
    }
}

/// The error reply that replaces a binary reply a JSON-only client cannot be sent.
fn binary_refused<'a>(out: &Outgoing<'a>) -> Outgoing<'a> {
    static REASON: std::sync::LazyLock<Payload> = std::sync::LazyLock::new(|| {
        serde_json::json!({"reason": "binary reply cannot be sent to a JSON-only (vsn 1.0.0) client"})
            .into()
    });
    Outgoing::reply(out.join_ref, out.ref_, out.topic, "error", &REASON)
}

/// The registry's fastlane writes through this (PubSub knows no sockets).
impl Connection for ConnHandle {
    fn vsn(&self) -> Vsn {
        self.vsn
    }

    fn send_frame(&self, frame: Arc<[u8]>, direct: bool) {
        if direct {
            self.send_direct(Chunk::Shared(frame));
        } else {
            self.send(Chunk::Shared(frame));
        }
    }

    fn refused(&self, topic: &str) {
        crate::limits::refuse_binary(self.shared.id, topic);
    }

    fn evict(&self, why: Eviction) {
        self.shared.close(match why {
            Eviction::Disconnect => CloseReason::Disconnect,
            Eviction::SlowConsumer => CloseReason::SlowConsumer,
        });
    }
}
