//! The change listener: one named thread (`store-listener`) with its own connection doing
//! `LISTEN superheroes_changes`, turning each NOTIFY into a `StoreEvent`.
//!
//! Threads: everything below `spawn_listener` runs on the listener thread, including the
//! `on_event` callback, which must therefore be quick (forward into a bounded mailbox with
//! `try_send`). A panic in the callback is caught and logged; the listener keeps going.
//!
//! Notifications sent while the listener is disconnected are lost for good, so after every
//! successful reconnect it emits `StoreEvent::Resync`: subscribers must reload the full list.
//! Reconnects back off from 100 ms, doubling, capped at 5 s.
//!
//! Every wait is bounded: notifications are awaited in slices of `POLL_INTERVAL` so that a
//! shutdown request is noticed quickly, and backoff sleeps are `recv_timeout`s on the
//! shutdown channel, so `shutdown()` interrupts them at once.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};

use crate::store::superheroes::{ChangePayload, Superhero};
use crate::store::{Error, parse_url, with_network_bounds};

/// The NOTIFY channel written by `store::superheroes` and listened to here.
pub const CHANNEL: &str = "superheroes_changes";

const POLL_INTERVAL: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a shutdown can wait: one poll slice, or one connect attempt in progress.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Postgres calls (and `on_event`) run on this thread's stack. The tests pass with 64 KiB in
/// a debug build; the rest is headroom for subscribers' callbacks.
const STACK_SIZE: usize = 256 * 1024;

/// What happened to a superhero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Delete,
}

/// An event delivered to the `on_event` callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A committed write. For `Delete`, `superhero` is the row as it was deleted.
    Change { action: Action, superhero: Superhero },
    /// The listener reconnected after losing its connection (or connected only after its
    /// first attempt failed); changes may have been missed, so reload everything.
    Resync,
}

/// Owns the listener thread. `shutdown()` (or drop) stops and joins it.
pub struct ListenerHandle {
    stop_tx: Option<Sender<()>>,
    done_rx: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the listener thread for the database at `url`.
///
/// # Errors
/// A config error if `url` does not parse; an error if the thread cannot be spawned.
pub fn spawn_listener(
    url: &str,
    on_event: impl Fn(StoreEvent) + Send + 'static,
) -> Result<ListenerHandle, Error> {
    let mut pg = with_network_bounds(parse_url(url)?, CONNECT_TIMEOUT);
    pg.application_name("phx-threads-listener");
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let listener = Listener { pg, stop_rx, on_event: Box::new(on_event) };
    let thread = std::thread::Builder::new()
        .name("store-listener".to_owned())
        .stack_size(STACK_SIZE)
        .spawn(move || {
            // Dropped when the thread ends, even by panic: tells `shutdown` we are done.
            let _done = done_tx;
            listener.run();
        })
        .map_err(|e| Error::cluster("cannot spawn the listener thread", Some(e)))?;
    Ok(ListenerHandle { stop_tx: Some(stop_tx), done_rx, thread: Some(thread) })
}

impl ListenerHandle {
    /// Stops the thread and joins it, waiting at most 10 s.
    ///
    /// # Errors
    /// If the thread did not finish in time it is detached and an error is returned.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        let Some(stop_tx) = self.stop_tx.take() else { return Ok(()) };
        drop(stop_tx);
        match self.done_rx.recv_timeout(SHUTDOWN_TIMEOUT) {
            Err(RecvTimeoutError::Timeout) => Err(Error::shutdown_timeout("store-listener")),
            _ => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                Ok(())
            }
        }
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            log::error!("{e}");
        }
    }
}

struct Listener {
    pg: postgres::Config,
    stop_rx: Receiver<()>,
    on_event: Box<dyn Fn(StoreEvent) + Send>,
}

/// Why `listen` returned.
enum Ended {
    Stopped,
    Disconnected,
}

impl Listener {
    fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut first_attempt = true;
        loop {
            match self.connect() {
                Ok(mut client) => {
                    // The very first connection needs no resync: subscribers load after
                    // starting us. Any later one follows a gap in which events were lost.
                    if !first_attempt {
                        crate::metrics::listener_reconnect();
                        self.emit(StoreEvent::Resync);
                    }
                    backoff = BACKOFF_MIN;
                    if let Ended::Stopped = self.listen(&mut client) {
                        return;
                    }
                }
                Err(e) => log::warn!("store-listener: {e}; retrying in {backoff:?}"),
            }
            first_attempt = false;
            if self.stop_requested(backoff) {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn connect(&self) -> Result<Client, Error> {
        let mut client = self.pg.connect(NoTls).map_err(Error::connect)?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(client)
    }

    /// Delivers notifications until the connection drops or a stop is requested.
    fn listen(&self, client: &mut Client) -> Ended {
        loop {
            if self.stop_requested(Duration::ZERO) {
                return Ended::Stopped;
            }
            let next = client.notifications().timeout_iter(POLL_INTERVAL).next();
            match next {
                Ok(Some(n)) => self.deliver(n.payload()),
                Ok(None) if client.is_closed() => return Ended::Disconnected,
                Ok(None) => {}
                Err(e) => {
                    log::warn!("store-listener: connection lost: {}", Error::from(e));
                    return Ended::Disconnected;
                }
            }
        }
    }

    fn deliver(&self, payload: &str) {
        match serde_json::from_str::<ChangePayload>(payload) {
            Ok(ChangePayload { action, superhero }) => {
                self.emit(StoreEvent::Change { action, superhero });
            }
            // Ours always parse, so it came from elsewhere: NOTIFY by hand, or another
            // version of this server mid-deploy. A change may be behind it that subscribers
            // would otherwise never see: they reload the whole list instead.
            Err(e) => {
                log::warn!("store-listener: unparsable payload ({e}); subscribers resync");
                self.emit(StoreEvent::Resync);
            }
        }
    }

    fn emit(&self, event: StoreEvent) {
        if catch_unwind(AssertUnwindSafe(|| (self.on_event)(event))).is_err() {
            log::error!("store-listener: on_event panicked; event dropped");
        }
    }

    /// Waits up to `wait` for a stop request (the sender dropped).
    fn stop_requested(&self, wait: Duration) -> bool {
        !matches!(self.stop_rx.recv_timeout(wait), Err(RecvTimeoutError::Timeout))
    }
}
