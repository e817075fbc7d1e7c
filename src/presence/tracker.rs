//! The tracker process: the one owner of the presence state (Phoenix.Tracker's shard).
//!
//! Runs on: the `presence` thread. Mailbox: unbounded channel with a capacity check on the
//! calls (`Presence::call` answers `Overloaded` past it, never blocks a channel) and none on
//! exit notices, which must never be lost (`ExitGuard`).
//! Coalescing: the changes to a topic open a window of `PresenceConfig::window` per started
//! thousand members (at most `max_window`); when it ends they go out as one `presence_diff`,
//! encoded once and broadcast on the topic through PubSub,
//! so it reaches every member by the fastlane. A join and a leave of the same meta within one
//! window cancel out. While changes keep coming (a change within a window's length of the
//! last diff), each window is twice the last, up to `max_window` (`next_span`): a reconnect
//! storm costs every member a few frames a second however long it lasts, where 50 ms windows
//! made it twenty, and the server's and the clients' CPU went to presence frames.
//! Replication (with `--cluster`): local changes go to the other trackers as one `delta` per
//! `window` at most (and always before a heartbeat, whose digest must cover them), not one per
//! change: a join storm of 10,000 made 10,000 replication messages, which the other trackers'
//! mailboxes dropped (requests for whole states are coalesced too: `Wants`).
//! **Invariant:** the `presence_state` handed to joiners is the topic as of the last diff sent
//! (its "published view"), never the live state. A joiner asks for it only after its
//! subscription was queued at the registry, and every later diff is broadcast after that, so
//! it receives exactly the diffs its state lacks (and maybe some it already holds: the JS
//! sync applies a join of a known `phx_ref` or a leave of an unknown one as a no-op).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvError};
use serde::Deserialize;

use super::replication::{Message, Peers, REPLICATION_TOPIC, ReplicationConfig, Wants, WireDelta};
use super::state::{Changes, Presence, State};
use crate::protocol::{JsonText, Payload};
use crate::pubsub::{Broadcast, PubSub, Subscription};

pub(crate) type Call = Box<dyn FnOnce(&mut Tracker) + Send>;

pub(crate) enum Msg {
    /// Runs on the tracker thread (track, list, ...), which answers on the caller's channel.
    Call(Call),
    /// A channel that tracked something has ended; past the capacity check.
    Exited(super::state::Owner),
    /// The server is stopping (`TrackerProcess::leave`).
    Leave,
    Stop,
}

/// What the clients of one topic were last told, and what they will be told next.
#[derive(Default)]
struct Topic {
    /// key → `"key":{"metas":[...]}` as of the last diff sent.
    published: BTreeMap<Arc<str>, String>,
    /// `published` assembled into one `presence_state` payload; dropped by the next diff.
    cached_state: Option<JsonText>,
    window: Option<Window>,
    /// Length of the last window opened, and when its diff went out (`next_span`).
    span: Duration,
    last_sent: Option<Instant>,
}

/// The changes of a topic not yet sent. Joins are indexed by `phx_ref`, so that a leave of a
/// meta joined in the same window (a reconnect storm) cancels it without a scan.
#[derive(Default)]
struct Window {
    joins: HashMap<Arc<str>, Presence>,
    leaves: Vec<Presence>,
}

impl Window {
    fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    fn touched(&self) -> impl Iterator<Item = &Presence> {
        self.joins.values().chain(&self.leaves)
    }
}

pub(crate) struct Tracker {
    pub state: State,
    topics: HashMap<Arc<str>, Topic>,
    /// Topics with an open window, by the time it ends.
    due: BTreeSet<(Instant, Arc<str>)>,
    window: Duration,
    max_window: Duration,
    pubsub: PubSub,
    replication: Option<Replicator>,
    /// Said `bye`: the server is stopping, changes are no longer told to anyone.
    leaving: bool,
}

/// The tracker's side of a cluster (`replication.rs`).
pub(crate) struct Replicator {
    config: ReplicationConfig,
    sub: Subscription,
    peers: Peers,
    next_heartbeat: Instant,
    wants: Wants,
    /// Replication messages our mailbox had no room for since we last asked for states.
    missed: u64,
    /// Local changes not yet sent as a `delta`, and when the next one may go.
    dirty: bool,
    next_delta: Instant,
}

impl Replicator {
    /// Subscribes to the other trackers' messages (mailbox of `capacity`).
    pub fn start(
        config: ReplicationConfig,
        pubsub: &PubSub,
        capacity: usize,
    ) -> Result<Replicator, crate::pubsub::PubSubError> {
        let sub = pubsub.subscribe(REPLICATION_TOPIC, capacity)?;
        let (peers, wants, now) = (Peers::default(), Wants::default(), Instant::now());
        Ok(Replicator {
            config,
            sub,
            peers,
            next_heartbeat: now,
            wants,
            missed: 0,
            dirty: false,
            next_delta: now,
        })
    }
}

impl Tracker {
    pub fn new(
        state: State,
        windows: (Duration, Duration),
        pubsub: PubSub,
        replication: Option<Replicator>,
    ) -> Tracker {
        let (window, max_window) = windows;
        let (topics, due) = (HashMap::new(), BTreeSet::new());
        Tracker { state, topics, due, window, max_window, pubsub, replication, leaving: false }
    }

    /// Queues `changes` for the diffs of their topics.
    pub fn record(&mut self, changes: Changes) {
        if self.leaving {
            return;
        }
        for join in changes.joins {
            self.window_of(&join.topic).joins.insert(join.phx_ref.clone(), join);
        }
        for leave in changes.leaves {
            let window = self.window_of(&leave.topic);
            // Joined and left within one window: nobody was told, nobody needs to be.
            if window.joins.remove(&leave.phx_ref).is_none() {
                window.leaves.push(leave);
            }
        }
    }

    /// The `presence_state` payload of `topic` as of its last diff (see the invariant).
    pub fn published_state(&mut self, topic: &str) -> JsonText {
        let Some(view) = self.topics.get_mut(topic) else { return empty_object() };
        view.cached_state.get_or_insert_with(|| raw_json(assemble(view.published.values()))).clone()
    }

    fn window_of(&mut self, topic: &Arc<str>) -> &mut Window {
        let floor = window_for(self.window, self.max_window, self.state.count(topic));
        let view = self.topics.entry(topic.clone()).or_default();
        if view.window.is_none() {
            let now = Instant::now();
            view.span = next_span(view.span, view.last_sent, now, floor, self.max_window);
            self.due.insert((now + view.span, topic.clone()));
        }
        view.window.get_or_insert_with(Window::default)
    }

    /// When the loop must wake: the first window to end, or the next heartbeat.
    fn next_wake(&self) -> Instant {
        // A quarter heartbeat at most between checks, so a silent peer is noticed soon after
        // its timeout; and the next `delta` when changes wait for it.
        let check = |r: &Replicator| {
            let beat = r.next_heartbeat.min(Instant::now() + r.config.heartbeat / 4);
            if r.dirty { beat.min(r.next_delta) } else { beat }
        };
        let heartbeat = self.replication.as_ref().map(check);
        let window = self.due.first().map(|(at, _)| *at);
        [heartbeat, window]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Sends the diffs of every window that has ended by `now`.
    fn flush_due(&mut self, now: Instant) {
        while let Some((at, _)) = self.due.first() {
            if *at > now {
                return;
            }
            let (_, topic) = self.due.pop_first().expect("first exists");
            self.flush(topic, now);
        }
    }

    fn flush(&mut self, topic: Arc<str>, now: Instant) {
        let Some(window) = self.topics.get_mut(&topic).and_then(|v| v.window.take()) else {
            return;
        };
        if window.is_empty() {
            return self.forget_if_empty(&topic);
        }
        let diff = diff_payload(&window);
        if let Err(e) =
            self.pubsub.local_broadcast(&topic, "presence_diff", Payload::JsonText(diff))
        {
            // Keep the changes and try again a window later: a lost diff would leave every
            // member of the topic with a wrong list until it rejoins.
            log::error!("presence_diff on {topic} not sent ({e}); retrying");
            self.topics.get_mut(&topic).expect("topic exists").window = Some(window);
            self.due.insert((now + self.window, topic));
            return;
        }
        self.topics.get_mut(&topic).expect("topic exists").last_sent = Some(now);
        self.publish(&topic, &window);
    }

    /// Brings the published view of `topic` up to the live state for the keys `sent` touched.
    fn publish(&mut self, topic: &Arc<str>, sent: &Window) {
        let view = self.topics.get_mut(topic).expect("topic exists");
        view.cached_state = None;
        for p in sent.touched() {
            let metas = self.state.get_by_key(topic, &p.key);
            match metas.is_empty() {
                true => view.published.remove(&p.key),
                false => view.published.insert(p.key.clone(), entry(&p.key, &metas)),
            };
        }
        self.forget_if_empty(topic);
    }

    fn forget_if_empty(&mut self, topic: &str) {
        if self.topics.get(topic).is_some_and(|v| v.published.is_empty() && v.window.is_none()) {
            self.topics.remove(topic);
        }
    }
}

/// The tracker's loop: calls and exit notices, the other nodes' replication messages, and
/// the diffs of the windows that end. Bounded by `Msg::Stop` (or every sender gone).
pub(crate) fn run(mut tracker: Tracker, rx: Receiver<Msg>) {
    let mut remote =
        tracker.replication.as_ref().map_or_else(crossbeam_channel::never, |r| r.sub.rx.clone());
    loop {
        if tracker.leaving {
            // Unsubscribed with the replicator: a disconnected receiver would spin `select!`.
            remote = crossbeam_channel::never();
        }
        let wait = tracker.next_wake().saturating_duration_since(Instant::now());
        crossbeam_channel::select! {
            recv(rx) -> msg => if !handle(&mut tracker, msg) {
                return tracker.say_bye();
            },
            recv(remote) -> b => if let Ok(b) = b { tracker.receive(&b, Instant::now()) },
            default(wait) => {}
        }
        let now = Instant::now();
        tracker.flush_due(now);
        tracker.replicate(now, false);
    }
}

/// One mailbox message; false to stop.
fn handle(tracker: &mut Tracker, msg: Result<Msg, RecvError>) -> bool {
    match msg {
        Ok(Msg::Call(call)) => {
            // A bug in one call must not take presence down for the whole server: the
            // caller sees its reply channel close (`Unavailable`), the tracker goes on.
            let run = std::panic::AssertUnwindSafe(|| call(tracker));
            if let Err(panic) = std::panic::catch_unwind(run) {
                log::error!("presence call panicked: {}", crate::process::panic_message(&*panic));
            }
            tracker.changed_locally();
            true
        }
        Ok(Msg::Exited(_)) if tracker.leaving => true,
        Ok(Msg::Leave) => {
            tracker.leave();
            true
        }
        Ok(Msg::Exited(owner)) => {
            let changes = tracker.state.untrack_owner(owner);
            tracker.record(changes);
            tracker.changed_locally();
            true
        }
        Ok(Msg::Stop) | Err(RecvError) => false,
    }
}

impl Tracker {
    fn replica(&self) -> String {
        self.state.replica().to_string()
    }

    /// A call or an exit may have changed the local state: a `delta` is due within `window`.
    fn changed_locally(&mut self) {
        if let Some(r) = self.replication.as_mut() {
            r.dirty = true;
        }
    }

    /// Sends what changed (when its delta is due, or `force`), the heartbeat when due, and
    /// drops the peers gone silent.
    fn replicate(&mut self, now: Instant, force: bool) {
        let window = self.window;
        // Silence is judged as far as this node has heard the others (`PubSub::heard_until`).
        let heard = self.pubsub.heard_until(now);
        self.catch_up_before_expiry(now, heard);
        let Some(r) = self.replication.as_mut() else { return };
        let (heartbeat, timeout) = (r.config.heartbeat, r.config.timeout);
        let beat = now >= r.next_heartbeat;
        if beat {
            r.next_heartbeat = now + heartbeat;
        }
        let down = r.peers.expire(heard, timeout);
        let missed = r.sub.take_dropped();
        if missed > 0 {
            r.missed += missed;
            r.wants.ask("*");
        }
        let (ask, give) = r.wants.due(now, heartbeat);
        let missed = if ask.is_some() { std::mem::take(&mut r.missed) } else { 0 };
        // The heartbeat's digest covers every local change, so they go out before it.
        if force || beat || r.dirty && now >= r.next_delta {
            r.dirty = false;
            r.next_delta = now + window;
            let delta = WireDelta::from(&self.state.take_delta());
            if !delta.is_empty() {
                self.send(&Message::Delta { from: self.replica(), delta });
            }
        }
        if beat {
            let (clock, held) = self.state.digest(self.state.replica());
            self.send(&Message::Heartbeat { from: self.replica(), clock, held });
        }
        for replica in down {
            log::warn!("presence: replica {replica} silent for {timeout:?}; its presences leave");
            let changes = self.state.remove_replica(&replica);
            self.record(changes);
        }
        if let Some(to) = ask {
            // At most once per heartbeat (`Wants`): a replication that does not converge
            // shows in the log instead of only as load.
            match missed {
                0 => log::info!("presence: asking {to} for its state (a digest differs)"),
                n => log::warn!("presence: missed {n} replication messages; asking for states"),
            }
            self.send(&Message::Want { from: self.replica(), to });
        }
        if give {
            self.send_state();
        }
    }

    /// Asks `to` for its whole state (coalesced: `Wants`).
    fn want(&mut self, to: &str) {
        if let Some(r) = self.replication.as_mut() {
            r.wants.ask(to);
        }
    }

    /// A peer looks silent: first take the replication messages already waiting in our
    /// mailbox (as many as are queued now), since its heartbeat may be among them. A tracker
    /// busy with a storm falls behind its mailbox, and expiring a peer whose heartbeat merely
    /// waits there makes every presence of that node leave and then join again (its whole
    /// state), a storm of its own.
    fn catch_up_before_expiry(&mut self, now: Instant, heard: Instant) {
        let Some(r) = self.replication.as_ref() else { return };
        if !r.peers.overdue(heard, r.config.timeout) {
            return;
        }
        let queued: Vec<_> = r.sub.rx.try_iter().take(r.sub.rx.len()).collect();
        for b in &queued {
            self.receive(b, now);
        }
    }

    /// One message of another node's tracker (our own come back too, and are skipped).
    fn receive(&mut self, b: &Broadcast, now: Instant) {
        let parsed = match &b.payload {
            Payload::Json(v) => Message::deserialize(v).map_err(|e| e.to_string()),
            Payload::JsonText(t) => serde_json::from_str(t.as_str()).map_err(|e| e.to_string()),
            Payload::Binary(_) => Err("binary".to_string()),
        };
        let msg = match parsed {
            Ok(msg) if msg.from() == &**self.state.replica() => return,
            Ok(msg) => msg,
            // The sender is unknown, so it cannot be asked now; its next heartbeat's digest
            // will not match, and that asks it for its whole state (see `Heartbeat`).
            Err(e) => return log::warn!("presence: unreadable replication message: {e}"),
        };
        let Some(r) = self.replication.as_mut() else { return };
        if !matches!(msg, Message::Bye { .. }) && r.peers.seen(msg.from(), now) {
            log::info!("presence: replica {} joined; sending it our state", msg.from());
            r.wants.give();
        }
        self.apply(msg);
    }

    fn apply(&mut self, msg: Message) {
        match msg {
            Message::Delta { delta, from } | Message::State { delta, from } => {
                match delta.into_delta() {
                    Some(delta) => {
                        let changes = self.state.merge(&delta);
                        self.record(changes);
                    }
                    None => {
                        // Catch up instead of diverging: ask the sender for its whole state.
                        log::warn!("presence: unreadable delta from {from}; asking for its state");
                        self.want(&from);
                    }
                }
            }
            Message::Heartbeat { from, clock, held } => {
                if self.state.digest(&from) != (clock, held) {
                    self.want(&from);
                }
            }
            Message::Want { to, .. } if to == "*" || *to == **self.state.replica() => {
                if let Some(r) = self.replication.as_mut() {
                    r.wants.give();
                }
            }
            Message::Want { .. } => {}
            Message::Bye { from } => {
                if let Some(r) = self.replication.as_mut() {
                    r.peers.left(&from);
                }
                log::info!("presence: replica {from} stopped; its presences leave");
                let changes = self.state.remove_replica(&from);
                self.record(changes);
            }
        }
    }

    fn send_state(&mut self) {
        let snapshot = self.state.snapshot();
        let (me, n) = (self.state.replica(), snapshot.values.len());
        log::info!("presence: {me} sending its state ({n} presences)");
        let delta = WireDelta::from(&snapshot);
        self.send(&Message::State { from: self.replica(), delta });
    }

    /// An orderly stop: what changed last, then `bye`, so the others drop us at once.
    fn say_bye(&mut self) {
        if self.replication.is_some() {
            self.replicate(Instant::now(), true);
            self.send(&Message::Bye { from: self.replica() });
        }
    }

    /// `bye` now, then nothing more to the other nodes (a message after `bye` would make
    /// them take this replica for a new one) nor to local clients, who are being closed.
    fn leave(&mut self) {
        if let Some(r) = self.replication.as_mut() {
            // A state owed to a peer that joined: `bye` makes it moot.
            r.wants = Wants::default();
        }
        self.say_bye();
        self.replication = None;
        self.leaving = true;
    }

    fn send(&self, msg: &Message) {
        let event = match msg {
            Message::Delta { .. } => "delta",
            Message::State { .. } => "state",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Want { .. } => "want",
            Message::Bye { .. } => "bye",
        };
        let payload = JsonText::encode(msg).expect("replication messages encode");
        if let Err(e) = self.pubsub.broadcast(REPLICATION_TOPIC, event, Payload::JsonText(payload))
        {
            log::error!("presence: {event} not replicated: {e}");
        }
    }
}

/// The window of a topic of `members`: `base` per started thousand members, at most `max`.
/// A diff costs one frame per member, so a big room gets fewer, bigger diffs: with the
/// defaults a room sends about 20,000 diff frames per second at most, whatever its size.
fn window_for(base: Duration, max: Duration, members: usize) -> Duration {
    let thousands = u32::try_from(members / 1000 + 1).unwrap_or(u32::MAX);
    base.saturating_mul(thousands).min(max.max(base))
}

/// The length of a topic's next window: `floor` (the window for its size) after a quiet spell,
/// twice the `last` one (at most `max`) when this change comes within `last` of the last diff
/// sent. A lone join still goes out after `floor`; a storm of joins gets windows of 50, 100,
/// 200, ... ms up to `max` with the defaults, so a room's members get about one frame a second
/// from it instead of twenty.
fn next_span(
    last: Duration,
    last_sent: Option<Instant>,
    now: Instant,
    floor: Duration,
    max: Duration,
) -> Duration {
    let busy = last_sent.is_some_and(|sent| now < sent + last);
    if busy { last.saturating_mul(2).min(max).max(floor) } else { floor }
}

/// `{"joins": {...}, "leaves": {...}}`, assembled from the metas' encoded text.
fn diff_payload(window: &Window) -> JsonText {
    let (joins, leaves) = (by_key(window.joins.values()), by_key(&window.leaves));
    let joins: Vec<String> = joins.iter().map(|(k, metas)| entry(k, metas)).collect();
    let leaves: Vec<String> = leaves.iter().map(|(k, metas)| entry(k, metas)).collect();
    raw_json(format!(r#"{{"joins":{},"leaves":{}}}"#, assemble(&joins), assemble(&leaves)))
}

fn by_key<'a>(
    presences: impl IntoIterator<Item = &'a Presence>,
) -> BTreeMap<&'a str, Vec<&'a Presence>> {
    let mut keys: BTreeMap<&str, Vec<&Presence>> = BTreeMap::new();
    for p in presences {
        keys.entry(&p.key).or_default().push(p);
    }
    keys
}

/// `"key":{"metas":[...]}`.
fn entry(key: &str, metas: &[&Presence]) -> String {
    let key = serde_json::to_string(key).expect("a string encodes");
    let metas: Vec<&str> = metas.iter().map(|p| &*p.meta).collect();
    format!(r#"{key}:{{"metas":[{}]}}"#, metas.join(","))
}

/// `{` entries `}`.
fn assemble<'a>(entries: impl IntoIterator<Item = &'a String>) -> String {
    let mut text = String::from("{");
    for (i, e) in entries.into_iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(e);
    }
    text.push('}');
    text
}

fn empty_object() -> JsonText {
    raw_json("{}".to_string())
}

/// Text assembled from encoded JSON pieces, checked once (a bug here must not reach clients as
/// malformed frames) and wrapped without re-encoding its contents.
fn raw_json(text: String) -> JsonText {
    let raw = serde_json::value::RawValue::from_string(text).expect("assembled valid JSON");
    JsonText::encode(&raw).expect("raw JSON encodes")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::presence::state::Limits;
    use crate::pubsub::PubSubProcess;

    fn heartbeat_of(from: &str) -> Payload {
        let msg = Message::Heartbeat { from: from.into(), clock: 0, held: 0 };
        Payload::JsonText(JsonText::encode(&msg).unwrap())
    }

    /// Found by the `reconnect` bench: trackers busy with a 10,000-client storm expired peers
    /// whose heartbeats were waiting in their own mailbox, and every presence of those nodes
    /// left and joined again.
    #[test]
    fn a_peer_whose_heartbeat_waits_in_the_mailbox_is_not_expired() {
        let pubsub = PubSubProcess::start(1024, 512).unwrap();
        let timeout = Duration::from_millis(150);
        let config = ReplicationConfig { heartbeat: Duration::from_millis(100), timeout };
        let replicator = Replicator::start(config, &pubsub.pubsub, 64).unwrap();
        let limits = Limits { max_meta_bytes: 1024, max_metas_per_key: 8, max_per_topic: 100 };
        let state = State::new("a".into(), limits);
        let windows = (Duration::from_millis(50), Duration::from_secs(1));
        let mut t = Tracker::new(state, windows, pubsub.pubsub.clone(), Some(replicator));
        let next = |t: &Tracker| {
            let rx = &t.replication.as_ref().unwrap().sub.rx;
            rx.recv_timeout(Duration::from_secs(5)).expect("a replication message")
        };
        let queued = |t: &Tracker| t.replication.as_ref().unwrap().sub.rx.len();
        let t0 = Instant::now();
        pubsub.pubsub.broadcast(REPLICATION_TOPIC, "heartbeat", heartbeat_of("b")).unwrap();
        let first = next(&t);
        t.receive(&first, t0);
        // b's next heartbeat is queued, not yet taken, when its timeout has passed.
        pubsub.pubsub.broadcast(REPLICATION_TOPIC, "heartbeat", heartbeat_of("b")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while queued(&t) == 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(queued(&t), 1);
        t.replicate(t0 + 4 * timeout, false);
        let peers = &mut t.replication.as_mut().unwrap().peers;
        assert!(!peers.seen("b", t0 + 4 * timeout), "b is still known: its heartbeat counted");
        // With nothing waiting, a silent peer is expired.
        t.replicate(t0 + 8 * timeout, false);
        assert!(!t.replication.as_mut().unwrap().peers.left("b"), "b expired");
        pubsub.stop();
    }

    #[test]
    fn windows_grow_with_the_topic_up_to_the_cap() {
        let (base, max) = (Duration::from_millis(50), Duration::from_secs(1));
        let w = |members| super::window_for(base, max, members).as_millis();
        assert_eq!([w(0), w(999), w(1000), w(10_000), w(100_000)], [50, 50, 100, 550, 1000]);
        assert_eq!(super::window_for(base, Duration::ZERO, 5000), base, "never below the base");
    }

    #[test]
    fn windows_double_while_changes_keep_coming_and_reset_after_a_quiet_spell() {
        let (floor, max) = (Duration::from_millis(50), Duration::from_secs(1));
        let t0 = Instant::now();
        let ms = |d: u64| Duration::from_millis(d);
        let span = |last, sent: Option<Instant>, now| next_span(last, sent, now, floor, max);
        assert_eq!(span(Duration::ZERO, None, t0), floor, "a first change waits the floor");
        // Each change a moment after the last diff: 100, 200, 400, 800, then the cap.
        let mut last = floor;
        let mut seen = Vec::new();
        for i in 0..6 {
            let sent = t0 + ms(i * 2000);
            last = span(last, Some(sent), sent + ms(1));
            seen.push(last.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1000, 1000]);
        // Quiet for a whole window since the last diff: back to the floor.
        assert_eq!(span(ms(800), Some(t0), t0 + ms(800)), floor);
        // A bigger topic's floor is kept even right after a quiet spell.
        assert_eq!(next_span(ms(100), Some(t0), t0 + ms(1), ms(300), max), ms(300));
    }
}
