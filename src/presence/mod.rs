//! Presence: who is on a topic, synced with the official JS `Presence` class
//! (`Phoenix.Presence` on top of `Phoenix.Tracker`).
//!
//! `Presence` is the handle channel code uses (`track`, `untrack`, `update`, `list`,
//! `get_by_key`, `push_state`); the tracker process (`tracker.rs`) owns the state
//! (`state.rs`, a delta-state observed-remove set) and sends one coalesced `presence_diff` per
//! topic per window. A channel's presences are removed when it stops, however it stops: the
//! first `track` puts an `ExitGuard` into its `ChannelCtx`, and dropping the context (the last
//! thing a channel thread does, panics included) tells the tracker.
//!
//! Wire format (phoenix-protocol.md §6.2): `presence_state` `{key: {"metas": [...]}}` pushed
//! to one client, `presence_diff` `{"joins": {...}, "leaves": {...}}` broadcast on the topic;
//! every meta carries a unique `phx_ref`.

pub mod replication;
pub mod state;
mod tracker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use crate::channel::ChannelCtx;
use crate::process;
use crate::protocol::Payload;
use crate::pubsub::PubSub;
pub use replication::ReplicationConfig;
pub use state::{Limits, PresenceError};
use state::{Owner, State};
use tracker::{Msg, Replicator, Tracker};

/// Replication messages of other nodes waiting for the tracker; past it they are counted and
/// the tracker asks every node for its whole state.
const REPLICATION_MAILBOX: usize = 16_384;

/// A change of one key by one owner: `State::track` or `State::update`.
type Op =
    fn(&mut State, Owner, &str, &str, Map<String, Value>) -> Result<state::Changes, PresenceError>;

/// Event names of the wire format.
pub const STATE_EVENT: &str = "presence_state";
pub const DIFF_EVENT: &str = "presence_diff";

/// Presence settings (`Config::presence`, flags `--presence-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceConfig {
    /// Changes to one topic within this window go out as one `presence_diff` (default 50 ms,
    /// per started thousand members of the topic): a join storm costs each member one frame
    /// per window instead of one per join.
    pub window: Duration,
    /// The longest window, however big the topic (default 1 s).
    pub max_window: Duration,
    /// Calls queued for the tracker before `track`/`update` answer `Overloaded` (65,536).
    /// Exit notices are never refused.
    pub mailbox: usize,
    /// How long a call waits for the tracker's answer (5 s), then `Unavailable`.
    pub call_timeout: Duration,
    /// Largest meta, in bytes of JSON without `phx_ref` (1,024).
    pub max_meta_bytes: usize,
    /// Metas under one key of one topic, e.g. one user's tabs (64).
    pub max_metas_per_key: usize,
    /// Presences on one topic (100,000).
    pub max_per_topic: usize,
    /// With `--cluster`: replicate to the other nodes' trackers (`replication.rs`).
    pub replication: Option<ReplicationConfig>,
}

impl Default for PresenceConfig {
    fn default() -> PresenceConfig {
        PresenceConfig {
            window: Duration::from_millis(50),
            max_window: Duration::from_secs(1),
            mailbox: 65_536,
            call_timeout: Duration::from_secs(5),
            max_meta_bytes: 1024,
            max_metas_per_key: 64,
            max_per_topic: 100_000,
            replication: None,
        }
    }
}

/// The application's presence handle (`MyAppWeb.Presence`); clone it into channel factories and
/// mount it with `Router::presence` so the server starts and stops its tracker. One running
/// server per handle: `app::router` makes a new one for every router.
#[derive(Clone, Default)]
pub struct Presence {
    inner: Arc<Mutex<Option<Running>>>,
}

/// The tracker of a running server.
#[derive(Clone)]
struct Running {
    tx: Sender<Msg>,
    capacity: usize,
    call_timeout: Duration,
}

/// The running tracker thread, stopped by the server after its connections.
pub(crate) struct TrackerProcess {
    presence: Presence,
    thread: JoinHandle<()>,
    tx: Sender<Msg>,
    /// Disconnected when the tracker thread ends (it holds the sender), so `stop` can wait
    /// for it with a deadline.
    done: Receiver<()>,
}

/// How long the server waits for the tracker to end (after its queued exit notices).
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl TrackerProcess {
    /// The server is stopping: the tracker says `bye` now, so the other nodes drop this
    /// node's presences at once, and from then on neither replicates nor diffs the exits of
    /// the channels being stopped (19,000 leaves nobody would be told of).
    pub(crate) fn leave(&self) {
        let _ = self.tx.send(Msg::Leave);
    }

    /// Stops the tracker after what is queued; false (the thread is left detached, and
    /// reported) if it has not ended within `STOP_TIMEOUT`.
    pub(crate) fn stop(self) -> bool {
        let _ = self.tx.send(Msg::Stop);
        *self.presence.inner.lock() = None;
        let ended = matches!(
            self.done.recv_timeout(STOP_TIMEOUT),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        if ended {
            let _ = self.thread.join();
        } else {
            log::error!("presence tracker did not stop within {STOP_TIMEOUT:?}; left running");
        }
        ended
    }
}

/// What a channel holds for presence (`ChannelCtx::presence`).
#[derive(Default)]
pub(crate) struct ChannelPresence {
    exit: Option<ExitGuard>,
    /// A `push_state` made during `join`, run when the join's pushes are sent (subscribed).
    state_after_join: Option<Presence>,
}

impl ChannelPresence {
    pub(crate) fn state_after_join(&self) -> bool {
        self.state_after_join.is_some()
    }
}

/// Tells the tracker its channel exited when dropped.
struct ExitGuard {
    owner: Owner,
    tx: Sender<Msg>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Unbounded: an exit notice is never refused. It fails only if the tracker is gone.
        let _ = self.tx.send(Msg::Exited(self.owner));
    }
}

impl Presence {
    pub fn new() -> Presence {
        Presence::default()
    }

    /// Starts the tracker thread (the server does, when this handle is mounted).
    pub(crate) fn start(
        &self,
        config: &PresenceConfig,
        pubsub: PubSub,
    ) -> std::io::Result<TrackerProcess> {
        let limits = Limits {
            max_meta_bytes: config.max_meta_bytes,
            max_metas_per_key: config.max_metas_per_key,
            max_per_topic: config.max_per_topic,
        };
        let state = State::new(replica_id().into(), limits);
        let replicator = match config.replication {
            Some(r) => Some(
                Replicator::start(r, &pubsub, REPLICATION_MAILBOX)
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            ),
            None => None,
        };
        let tracker = Tracker::new(state, (config.window, config.max_window), pubsub, replicator);
        let (tx, rx) = unbounded();
        let (alive, done) = bounded::<()>(0);
        let thread = process::spawn("presence".into(), 256 * 1024, move || {
            tracker::run(tracker, rx);
            drop(alive);
        })?;
        let running =
            Running { tx: tx.clone(), capacity: config.mailbox, call_timeout: config.call_timeout };
        *self.inner.lock() = Some(running);
        Ok(TrackerProcess { presence: self.clone(), thread, tx, done })
    }

    /// Tracks `key` with `meta` (a JSON object) on the channel's topic, for as long as the
    /// channel runs; returns the new `phx_ref`.
    pub fn track(
        &self,
        ctx: &mut ChannelCtx,
        key: &str,
        meta: Value,
    ) -> Result<String, PresenceError> {
        self.change(ctx, key, meta, |state, owner, topic, key, meta| {
            let tracked = state.track(owner, topic, key, meta)?;
            Ok(state::Changes { joins: vec![tracked], leaves: Vec::new() })
        })
    }

    /// Stops tracking `key` on the channel's topic (nothing if it was not tracked).
    pub fn untrack(&self, ctx: &mut ChannelCtx, key: &str) -> Result<(), PresenceError> {
        let owner = self.owner(ctx)?;
        let (topic, key) = (ctx.topic().to_string(), key.to_string());
        self.call(move |t| {
            let changes = t.state.untrack(owner, &topic, &key);
            t.record(changes);
        })
    }

    /// Replaces the meta of `key`: a new `phx_ref`, the old one as `phx_ref_prev`, sent as a
    /// join and a leave in one diff. `NoPresence` if this channel does not track `key`.
    pub fn update(
        &self,
        ctx: &mut ChannelCtx,
        key: &str,
        meta: Value,
    ) -> Result<String, PresenceError> {
        self.change(ctx, key, meta, State::update)
    }

    /// Runs a track or an update of the channel's `key` on the tracker; the new `phx_ref`.
    fn change(
        &self,
        ctx: &mut ChannelCtx,
        key: &str,
        meta: Value,
        op: Op,
    ) -> Result<String, PresenceError> {
        let Value::Object(meta) = meta else { return Err(PresenceError::MetaNotObject) };
        let owner = self.owner(ctx)?;
        let (topic, key) = (ctx.topic().to_string(), key.to_string());
        self.call(move |t| {
            let changes = op(&mut t.state, owner, &topic, &key, meta)?;
            let phx_ref = changes.joins[0].phx_ref.to_string();
            t.record(changes);
            Ok(phx_ref)
        })?
    }

    /// Everyone on `topic` now: `{key: {"metas": [...]}}` (Phoenix's `list/1`).
    pub fn list(&self, topic: &str) -> Result<Map<String, Value>, PresenceError> {
        let topic = topic.to_string();
        self.call(move |t| {
            let keys = t.state.list(&topic);
            keys.map(|(key, metas)| (key.to_string(), metas_value(&metas))).collect()
        })
    }

    /// `{"metas": [...]}` of one key, or `None` if nobody is tracked under it.
    pub fn get_by_key(&self, topic: &str, key: &str) -> Result<Option<Value>, PresenceError> {
        let (topic, key) = (topic.to_string(), key.to_string());
        self.call(move |t| {
            let metas = t.state.get_by_key(&topic, &key);
            (!metas.is_empty()).then(|| metas_value(&metas))
        })
    }

    /// Pushes `presence_state` to this channel's client. Call it after every join (phoenix.js
    /// waits for it before applying diffs); made during `join`, it is sent once the channel
    /// is subscribed to its topic, so no diff falls between the state and the subscription.
    pub fn push_state(&self, ctx: &mut ChannelCtx) -> Result<(), PresenceError> {
        if ctx.in_join() {
            if ctx.presence().state_after_join.replace(self.clone()).is_some() {
                return Ok(());
            }
            // A placeholder among the join's pushes; `deferred_state` replaces it when sent.
            ctx.push(STATE_EVENT, Payload::empty());
            return Ok(());
        }
        let topic = ctx.topic().to_string();
        let state = self.call(move |t| t.published_state(&topic))?;
        ctx.push(STATE_EVENT, Payload::JsonText(state));
        Ok(())
    }

    /// The owner id of the channel, made (with its exit guard) on first use.
    fn owner(&self, ctx: &mut ChannelCtx) -> Result<Owner, PresenceError> {
        static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);
        if let Some(guard) = &ctx.presence().exit {
            return Ok(guard.owner);
        }
        let tx = self.running()?.tx;
        let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
        ctx.presence().exit = Some(ExitGuard { owner, tx });
        Ok(owner)
    }

    fn running(&self) -> Result<Running, PresenceError> {
        self.inner.lock().clone().ok_or(PresenceError::Unavailable)
    }

    /// Runs `f` on the tracker thread and waits for its answer, bounded by the call timeout.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tracker) -> T + Send + 'static,
    ) -> Result<T, PresenceError> {
        let running = self.running()?;
        if running.tx.len() >= running.capacity {
            return Err(PresenceError::Overloaded);
        }
        let (reply, answer) = bounded(1);
        let call = Box::new(move |t: &mut Tracker| {
            let _ = reply.send(f(t));
        });
        running.tx.send(Msg::Call(call)).map_err(|_| PresenceError::Unavailable)?;
        answer.recv_timeout(running.call_timeout).map_err(|_| PresenceError::Unavailable)
    }
}

/// Sends the `presence_state` a `push_state` during `join` asked for, in place of its
/// placeholder (called by `ChannelCtx::push` once the channel is subscribed).
pub(crate) fn deferred_state(ctx: &mut ChannelCtx) {
    if let Some(presence) = ctx.presence().state_after_join.take() {
        if let Err(e) = presence.push_state(ctx) {
            log::error!("presence_state for {} not sent: {e}", ctx.topic());
        }
    }
}

/// `{"metas": [...]}` from the encoded metas.
fn metas_value(metas: &[&state::Presence]) -> Value {
    let metas: Vec<Value> = metas
        .iter()
        .map(|p| serde_json::from_str(&p.meta).expect("stored metas are JSON"))
        .collect();
    json!({ "metas": metas })
}

/// This server's replica: host name and start time, so a restart is a new replica.
fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}/{started}", host.trim())
}
