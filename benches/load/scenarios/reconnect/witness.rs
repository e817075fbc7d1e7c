//! The clients that watch a rolling-restart step from the nodes that stay up: a publisher
//! pushing numbered `new_msg`s at a steady rate, receivers recording every sequence number they
//! get, and an observer holding the Presence view of every room as phoenix.js would (a
//! `presence_state` sets a room's keys, a `presence_diff` adds its joins and removes its
//! leaves, by `phx_ref`).
//!
//! A few connections only, so each is a plain blocking tungstenite client on its own thread.
//! None of them reconnects: a witness that loses its node fails the step.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use super::super::Res;
use crate::now_ns;
use crate::wire;

type Ws = WebSocket<TcpStream>;

/// The topic the publisher broadcasts on (not one the measured clients join).
pub const FEED: &str = "room:reconnect-feed";
/// A witness reads with this timeout, so it notices `stop` and its own send times.
const TICK: Duration = Duration::from_millis(20);
/// Witnesses heartbeat like phoenix.js (the server closes a connection silent for 60 s).
const HEARTBEAT: Duration = Duration::from_secs(20);
/// Topics one observer connection joins (the server allows 100 per connection, and a burst of
/// 100 joins).
pub const TOPICS_PER_OBSERVER: usize = 90;

/// What the publisher sent and each receiver got.
#[derive(Default)]
pub struct Feed {
    /// Pushes written, and the sequence numbers the server acknowledged with `ok` (a broadcast
    /// it made) or refused.
    pub pushed: AtomicU64,
    acked: Mutex<Vec<u64>>,
    pub refused: AtomicU64,
    /// Set by the publisher once it has seen publishing turned off (nothing more is written).
    quiet: AtomicBool,
    received: Mutex<Vec<Vec<u64>>>,
    /// A witness whose connection failed, with why.
    pub broken: Mutex<Vec<String>>,
}

/// What the receivers got of the acknowledged broadcasts.
#[derive(Debug, Default)]
pub struct FeedReport {
    pub sent: u64,
    /// The fewest acknowledged broadcasts any receiver got.
    pub received_min: u64,
    /// Acknowledged sequence numbers missing at a receiver below the highest it got (lost:
    /// later ones arrived), summed over receivers.
    pub gaps: u64,
    /// Acknowledged ones missing above the highest it got when the wait ended (late or lost).
    pub late: u64,
    pub duplicates: u64,
    /// Per receiver (`r<slot>`, in `Placement::receivers` order) that missed any: which, and
    /// the highest it got; for telling a slow receiver from a lost tail.
    pub detail: Vec<String>,
}

impl Feed {
    pub fn report(&self) -> FeedReport {
        let acked = self.acked.lock().clone();
        let mut r =
            FeedReport { sent: acked.len() as u64, received_min: u64::MAX, ..Default::default() };
        for (slot, got) in self.received.lock().iter().enumerate() {
            let distinct: HashSet<u64> = got.iter().copied().collect();
            let top = got.iter().copied().max().unwrap_or(0);
            let missing = acked.iter().filter(|s| !distinct.contains(s));
            let (holes, tail): (Vec<u64>, Vec<u64>) = missing.partition(|&&s| s < top);
            r.received_min = r.received_min.min(r.sent - (holes.len() + tail.len()) as u64);
            r.gaps += holes.len() as u64;
            r.late += tail.len() as u64;
            r.duplicates += (got.len() - distinct.len()) as u64;
            if !holes.is_empty() || !tail.is_empty() {
                let (n, last) = (got.len(), acked.iter().max().copied().unwrap_or(0));
                let shown = |v: &[u64]| format!("{:?}", &v[..v.len().min(10)]);
                r.detail.push(format!(
                    "r{slot}: got {n}, top {top} of {last}, holes {}, tail {}",
                    shown(&holes),
                    shown(&tail)
                ));
            }
        }
        if r.received_min == u64::MAX {
            r.received_min = 0;
        }
        r
    }

    /// The publisher has stopped and every push it wrote has its answer: the acknowledged
    /// set is final. (Before this, the receivers could be found complete while the last
    /// pushes' `ok`s were in flight, and those counted as `late`.)
    fn settled(&self) -> bool {
        let answered = self.acked.lock().len() as u64 + self.refused.load(Relaxed);
        self.quiet.load(Relaxed) && answered >= self.pushed.load(Relaxed)
    }

    /// True once every receiver holds every acknowledged broadcast.
    fn complete(&self) -> bool {
        let sent = self.acked.lock().len();
        self.received.lock().iter().all(|got| got.len() >= sent)
    }
}

/// The Presence view of the observer, and the condition a step waits for.
#[derive(Default)]
pub struct View {
    /// Presence key → its metas' `phx_ref`s, over every room.
    keys: Mutex<HashMap<String, Vec<String>>>,
    armed: Mutex<Option<Armed>>,
    /// `now_ns` when the armed condition first held; 0 before.
    pub done_ns: AtomicU64,
    /// The fewest measured members shown with exactly one meta since arming.
    pub low: AtomicU64,
}

/// "Presence shows all N again": every member key has exactly one meta, and every moved key's
/// meta is a new one (tracked after the SIGTERM, its old one gone).
struct Armed {
    members: usize,
    before: HashMap<String, Vec<String>>,
    last_check: Instant,
}

impl View {
    /// Members shown now with exactly one meta (keys `u<i>`; the witnesses' own keys aside).
    /// Up to `max` member keys not shown with exactly one meta, with their `phx_ref`s: what a
    /// failed wait reports.
    pub fn odd(&self, max: usize) -> Vec<(String, Vec<String>)> {
        let keys = self.keys.lock();
        let odd = keys.iter().filter(|(k, refs)| is_member(k) && refs.len() != 1);
        odd.take(max).map(|(k, refs)| (k.clone(), refs.clone())).collect()
    }

    /// What keeps the armed condition from holding: member keys without a meta, with several,
    /// and moved keys that still show only a meta from before the SIGTERM.
    pub fn lacking(&self) -> String {
        let keys = self.keys.lock();
        let count = |f: &dyn Fn(usize) -> bool| {
            keys.iter().filter(|(k, refs)| is_member(k) && f(refs.len())).count()
        };
        let (none, several) = (count(&|n| n == 0), count(&|n| n > 1));
        let armed = self.armed.lock();
        let stale = armed.as_ref().map_or(0, |a| {
            let old = |k: &String, refs: &Vec<String>| keys.get(k).is_some_and(|now| now == refs);
            a.before.iter().filter(|(k, refs)| !refs.is_empty() && old(k, refs)).count()
        });
        let present = keys.keys().filter(|k| is_member(k)).count();
        let missing = armed.as_ref().map_or(0, |a| a.members.saturating_sub(present));
        format!(
            "{missing} keys absent, {none} without a meta, {several} with several, {stale} stale"
        )
    }

    pub fn members(&self) -> usize {
        self.keys.lock().iter().filter(|(k, refs)| is_member(k) && refs.len() == 1).count()
    }

    /// Starts watching for the view to show `members` again, the `moved` keys re-tracked.
    pub fn arm(&self, members: usize, moved: &[String]) {
        let keys = self.keys.lock();
        let before = moved.iter().map(|k| (k.clone(), keys.get(k).cloned().unwrap_or_default()));
        let before = before.collect();
        self.done_ns.store(0, Relaxed);
        self.low.store(members as u64, Relaxed);
        let last_check = Instant::now() - Duration::from_secs(1);
        *self.armed.lock() = Some(Armed { members, before, last_check });
    }

    fn apply(&self, event: &str, payload: &Value) {
        let mut keys = self.keys.lock();
        match event {
            "presence_state" => add(&mut keys, payload),
            "presence_diff" => {
                add(&mut keys, &payload["joins"]);
                remove(&mut keys, &payload["leaves"]);
            }
            _ => return,
        }
        drop(keys);
        self.check(false);
    }

    /// Evaluates the armed condition, at most every 5 ms unless `force`.
    fn check(&self, force: bool) {
        let mut armed = self.armed.lock();
        let Some(a) = armed.as_mut() else { return };
        if self.done_ns.load(Relaxed) != 0
            || !force && a.last_check.elapsed() < Duration::from_millis(5)
        {
            return;
        }
        a.last_check = Instant::now();
        let keys = self.keys.lock();
        let one = keys.iter().filter(|(k, refs)| is_member(k) && refs.len() == 1);
        let shown = one.count();
        self.low.fetch_min(shown as u64, Relaxed);
        let renewed = a.before.iter().all(|(k, old)| {
            keys.get(k).is_some_and(|refs| refs.len() == 1 && !old.contains(&refs[0]))
        });
        if shown == a.members && renewed {
            self.done_ns.store(now_ns(), Relaxed);
        }
    }
}

fn is_member(key: &str) -> bool {
    key.starts_with('u')
}

/// As phoenix.js's `syncDiff`: a join of a `phx_ref` already held is no new meta (the server
/// may send a joiner a diff its `presence_state` already covered).
fn add(keys: &mut HashMap<String, Vec<String>>, entries: &Value) {
    for (k, v) in entries.as_object().into_iter().flatten() {
        let refs = keys.entry(k.clone()).or_default();
        for r in phx_refs(v) {
            if !refs.contains(&r) {
                refs.push(r);
            }
        }
    }
}

fn remove(keys: &mut HashMap<String, Vec<String>>, entries: &Value) {
    for (k, v) in entries.as_object().into_iter().flatten() {
        let Some(refs) = keys.get_mut(k) else { continue };
        let gone: Vec<String> = phx_refs(v).collect();
        refs.retain(|r| !gone.contains(r));
        if refs.is_empty() {
            keys.remove(k);
        }
    }
}

fn phx_refs(entry: &Value) -> impl Iterator<Item = String> + '_ {
    let metas = entry["metas"].as_array().into_iter().flatten();
    metas.filter_map(|m| m["phx_ref"].as_str().map(str::to_string))
}

/// Every witness of one step.
pub struct Witnesses {
    pub feed: Arc<Feed>,
    pub view: Arc<View>,
    stop: Arc<AtomicBool>,
    publishing: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Where the witnesses of a step go.
pub struct Placement {
    /// The publisher's node.
    pub publisher: SocketAddr,
    /// One receiver per address (repeat an address for more).
    pub receivers: Vec<SocketAddr>,
    pub observer: SocketAddr,
    /// Every room the measured clients are in.
    pub rooms: Vec<String>,
    /// Broadcasts per second.
    pub rate: f64,
}

impl Witnesses {
    /// Connects and joins every witness (each has 10 s), then starts them. The publisher waits
    /// for `publish`.
    pub fn start(p: &Placement, tag: &str) -> Res<Witnesses> {
        let mut w = Witnesses {
            feed: Arc::new(Feed::default()),
            view: Arc::new(View::default()),
            stop: Arc::new(AtomicBool::new(false)),
            publishing: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (i, &addr) in p.receivers.iter().enumerate() {
            let ws = open(addr, &format!("w-{tag}-r{i}"), &[FEED.to_string()], &w.view)?;
            w.feed.received.lock().push(Vec::new());
            let (feed, stop) = (w.feed.clone(), w.stop.clone());
            w.threads.push(std::thread::spawn(move || receive(ws, i, &feed, &stop)));
        }
        for (i, rooms) in p.rooms.chunks(TOPICS_PER_OBSERVER).enumerate() {
            let ws = open(p.observer, &format!("w-{tag}-o{i}"), rooms, &w.view)?;
            let (view, feed, stop) = (w.view.clone(), w.feed.clone(), w.stop.clone());
            w.threads.push(std::thread::spawn(move || observe(ws, &view, &feed, &stop)));
        }
        let ws = open(p.publisher, &format!("w-{tag}-p"), &[FEED.to_string()], &w.view)?;
        let (feed, stop, go) = (w.feed.clone(), w.stop.clone(), w.publishing.clone());
        let every = Duration::from_secs_f64(1.0 / p.rate.max(0.1));
        w.threads.push(std::thread::spawn(move || publish(ws, every, &feed, &stop, &go)));
        Ok(w)
    }

    pub fn publish(&self, on: bool) {
        self.feed.quiet.store(false, Relaxed);
        self.publishing.store(on, Relaxed);
    }

    /// Waits until the publisher is done and every receiver holds every acknowledged
    /// broadcast, or `max`.
    pub fn drain(&self, max: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < max && !(self.feed.settled() && self.feed.complete()) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Re-evaluates the Presence condition now (it is otherwise checked as frames arrive).
    pub fn check_presence(&self) {
        self.view.check(true);
    }

    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects as `user`, joins `topics` (all at once) and waits for every join's `ok`, feeding
/// presence frames that arrive meanwhile to `view`.
fn open(addr: SocketAddr, user: &str, topics: &[String], view: &View) -> Res<Ws> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("witness {user}: connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&user_id={user}");
    let (mut ws, _) =
        tungstenite::client(url, tcp).map_err(|e| format!("witness {user}: upgrade: {e}"))?;
    for (i, topic) in topics.iter().enumerate() {
        send(&mut ws, json!([i.to_string(), i.to_string(), topic, "phx_join", {}]))?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut waiting = topics.len();
    while waiting > 0 {
        if Instant::now() > deadline {
            return Err(format!("witness {user}: {waiting} joins unanswered after 10 s"));
        }
        let Some(msg) = read(&mut ws).map_err(|e| format!("witness {user}: {e}"))? else {
            continue;
        };
        if msg[3] == "phx_reply" {
            if msg[4]["status"] != "ok" {
                return Err(format!("witness {user}: join refused: {}", msg[4]));
            }
            waiting -= 1;
        } else {
            view.apply(msg[3].as_str().unwrap_or(""), &msg[4]);
        }
    }
    ws.get_ref().set_read_timeout(Some(TICK)).map_err(|e| e.to_string())?;
    Ok(ws)
}

fn send(ws: &mut Ws, msg: Value) -> Res {
    ws.send(Message::text(msg.to_string())).map_err(|e| format!("send: {e}"))
}

/// The next Phoenix message, `None` on a read timeout or a frame that is not one.
fn read(ws: &mut Ws) -> Res<Option<Value>> {
    match ws.read() {
        Ok(Message::Text(t)) => Ok(serde_json::from_str(t.as_str()).ok()),
        Ok(Message::Close(c)) => Err(format!("closed by the server: {c:?}")),
        Ok(_) => Ok(None),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Runs `on_msg` for every message until `stop`, heartbeating; a broken connection is recorded
/// in `feed.broken`.
fn pump(
    ws: &mut Ws,
    feed: &Feed,
    stop: &AtomicBool,
    mut on_tick: impl FnMut(&mut Ws) -> Res,
    mut on_msg: impl FnMut(Value),
) {
    let mut last_hb = Instant::now();
    let mut hb_ref = 0u64;
    while !stop.load(Relaxed) {
        let step = (|| -> Res {
            if last_hb.elapsed() > HEARTBEAT {
                hb_ref += 1;
                send(ws, json!([null, format!("hb{hb_ref}"), "phoenix", "heartbeat", {}]))?;
                last_hb = Instant::now();
            }
            on_tick(ws)?;
            if let Some(msg) = read(ws)? {
                on_msg(msg);
            }
            Ok(())
        })();
        if let Err(e) = step {
            feed.broken.lock().push(e);
            return;
        }
    }
    let _ = ws.close(None);
}

fn receive(mut ws: Ws, slot: usize, feed: &Feed, stop: &AtomicBool) {
    pump(
        &mut ws,
        feed,
        stop,
        |_| Ok(()),
        |msg| {
            if msg[3] != "new_msg" {
                return;
            }
            if let Some((seq, _)) = msg[4]["body"].as_str().and_then(wire::parse_stamp) {
                feed.received.lock()[slot].push(seq);
            }
        },
    );
}

/// Also evaluates the armed condition on every tick: `apply` evaluates it at most every 5 ms,
/// so the frame that completed the view may have gone unchecked, and the step's own check comes
/// only after its CPU readings (which took seconds while the stopped node's threads exited).
fn observe(mut ws: Ws, view: &View, feed: &Feed, stop: &AtomicBool) {
    let tick = |_: &mut Ws| {
        view.check(false);
        Ok(())
    };
    pump(&mut ws, feed, stop, tick, |msg| view.apply(msg[3].as_str().unwrap_or(""), &msg[4]));
}

/// Pushes `new_msg` with the next sequence number every `every` while `go` is set; the push's
/// ref is its sequence number, so its reply says whether that broadcast was made.
fn publish(mut ws: Ws, every: Duration, feed: &Feed, stop: &AtomicBool, go: &AtomicBool) {
    let mut seq = 0u64;
    let mut next = Instant::now();
    let tick = |ws: &mut Ws| -> Res {
        if !go.load(Relaxed) {
            next = Instant::now();
            feed.quiet.store(true, Relaxed);
            return Ok(());
        }
        while Instant::now() >= next {
            seq += 1;
            let body = wire::stamp_body(seq, now_ns(), 0);
            // Join ref "0": the feed is the publisher's only (first) topic (see `open`).
            send(ws, json!(["0", seq.to_string(), FEED, "new_msg", {"body": body}]))?;
            feed.pushed.fetch_add(1, Relaxed);
            next += every;
        }
        Ok(())
    };
    pump(&mut ws, feed, stop, tick, |msg| {
        let Some(seq) = msg[1].as_str().and_then(|r| r.parse::<u64>().ok()) else { return };
        if msg[3] != "phx_reply" {
            return;
        }
        if msg[4]["status"] == "ok" {
            feed.acked.lock().push(seq);
        } else {
            feed.refused.fetch_add(1, Relaxed);
        }
    });
}
