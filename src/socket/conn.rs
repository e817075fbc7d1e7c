//! A connection's outbound side: the bounded outbox, the writer thread that drains it, and the
//! shared handle (`ConnHandle`) through which channels and the registry send frames.
//!
//! Runs on: the `ws-writer-<id>` thread (the loop) and any thread holding a `ConnHandle`.
//! **Invariant:** only the writer thread writes to the TCP stream after the handshake, so frames
//! never interleave. Senders never block: a full outbox marks the client a slow consumer and
//! the connection is shut down, which wakes both of its threads.

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;

use crate::process;
use crate::protocol::{Outgoing, Vsn, frame};

/// Most bytes the writer gathers from its queue into one `write` call. Batching several queued
/// frames into one syscall is what makes sustained fan-out cheap.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Something for the writer thread to do.
pub(crate) enum Outbound {
    /// One complete WebSocket frame (or several, from tungstenite's own control replies).
    Frame(Vec<u8>),
    /// A broadcast frame, encoded once and shared by every subscriber (fastlane).
    Shared(Arc<[u8]>),
    /// Send a close frame, half-close the TCP stream and stop.
    Close { code: u16, reason: String },
    /// Half-close the TCP stream and stop (the close handshake is already done).
    Finish,
}

/// Why the server is ending a connection; decides the close code the client sees (§1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Graceful server shutdown: 1012, so clients reconnect (to this server once it is back).
    Shutdown,
    /// `disconnect` broadcast on the socket id: 1001, the client reconnects and re-authenticates.
    Disconnect,
    /// The client did not read its frames fast enough; the TCP stream is cut without a close frame.
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

/// State shared by a connection's threads and everyone who may need to end it.
pub(crate) struct ConnShared {
    pub id: u64,
    /// A clone of the stream used only to `shutdown` it, which wakes a blocked read or write.
    tcp: Arc<TcpStream>,
    reason: Mutex<Option<CloseReason>>,
}

impl ConnShared {
    pub fn new(id: u64, tcp: Arc<TcpStream>) -> ConnShared {
        ConnShared { id, tcp, reason: Mutex::new(None) }
    }

    /// Asks the connection to end. The first reason wins. A slow consumer is cut at once (its
    /// writer may be blocked in `write`); otherwise only the read side is shut, which wakes the
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
}

/// Cheap, cloneable handle to one connection's outbox.
#[derive(Clone)]
pub(crate) struct ConnHandle {
    pub shared: Arc<ConnShared>,
    pub outbox: Sender<Outbound>,
    pub vsn: Vsn,
}

impl ConnHandle {
    /// Queues a frame without blocking. Returns false if the connection is gone or was just
    /// evicted as a slow consumer.
    pub fn send(&self, out: Outbound) -> bool {
        match self.outbox.try_send(out) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                if self.shared.close_reason().is_none() {
                    log::warn!("conn {}: outbox full, disconnecting slow consumer", self.shared.id);
                }
                self.shared.close(CloseReason::SlowConsumer);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Encodes and queues a message. Messages this connection's serializer cannot carry
    /// (binary payloads over V1) are dropped with a debug log, as they cannot be expressed.
    pub fn send_message(&self, out: &Outgoing<'_>) -> bool {
        match self.vsn.encode(out) {
            Some(encoded) => self.send(Outbound::Frame(encoded.into_frame())),
            None => {
                log::debug!("conn {}: dropped binary message for a V1 client", self.shared.id);
                false
            }
        }
    }
}

/// The writer thread, and a way to wait for it with a deadline (`JoinHandle::join` has none).
pub(crate) struct Writer {
    thread: JoinHandle<()>,
    done: Receiver<()>,
}

impl Writer {
    /// Waits until the writer has stopped, or `timeout` passes.
    pub fn wait_done(&self, timeout: Duration) {
        let _ = self.done.recv_timeout(timeout);
    }

    /// Joins the writer; call after the TCP stream was shut down, so it cannot block.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

pub(crate) fn spawn_writer(
    tcp: Arc<TcpStream>,
    rx: Receiver<Outbound>,
    conn_id: u64,
    stack_bytes: usize,
) -> io::Result<Writer> {
    let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
    let thread = process::spawn(format!("ws-writer-{conn_id}"), stack_bytes, move || {
        run_writer(tcp, rx);
        drop(done_tx);
    })?;
    Ok(Writer { thread, done })
}

/// The writer loop. It ends on `Close`/`Finish`, on a write error, or when every sender is gone.
fn run_writer(tcp: Arc<TcpStream>, rx: Receiver<Outbound>) {
    let mut tcp: &TcpStream = &tcp;
    let mut batch: Vec<u8> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut last = Some(first);
        let mut stop = false;
        while let Some(out) = last.take() {
            stop = append(&mut batch, out);
            if stop || batch.len() >= WRITE_BATCH_BYTES {
                break;
            }
            last = rx.try_recv().ok();
        }
        if tcp.write_all(&batch).is_err() {
            break;
        }
        // Keep idle connections small: a big batch buffer is not kept around.
        batch.clear();
        if batch.capacity() > 8 * 1024 {
            batch = Vec::new();
        }
        if stop {
            let _ = tcp.flush();
            let _ = tcp.shutdown(Shutdown::Write);
            break;
        }
    }
}

/// Adds one item to the batch; true when the writer must stop after writing it.
fn append(batch: &mut Vec<u8>, out: Outbound) -> bool {
    match out {
        Outbound::Frame(bytes) if batch.is_empty() => {
            *batch = bytes;
            false
        }
        Outbound::Frame(bytes) => {
            batch.extend_from_slice(&bytes);
            false
        }
        Outbound::Shared(bytes) => {
            batch.extend_from_slice(&bytes);
            false
        }
        Outbound::Close { code, reason } => {
            batch.extend_from_slice(&frame::close(code, &reason));
            true
        }
        Outbound::Finish => true,
    }
}
