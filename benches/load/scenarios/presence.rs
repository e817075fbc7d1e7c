//! `presence`: a join storm. N members join one room as fast as the generator can; each keeps
//! the set of keys it holds from `presence_state` and `presence_diff` as phoenix.js would
//! (a state replaces the set, a diff adds its joins and removes its leaves). Reported per N:
//! the time from the last join reply until every member holds all N keys, presence frames and
//! bytes per member, server CPU and RSS, and how close the bytes moved come to the floor of
//! N × (final state size): every member must end up holding every key.
//!
//! Keys are counted without a JSON parse (each entry is `"m<i>":{"metas":[...]}`), so the
//! generator stays cheaper than the server. Its own event loop (not `driver.rs`): it must read
//! gigabytes and count keys, where the other scenarios count stamped broadcasts.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::{Res, cap, start};
use crate::opts::Opts;
use crate::report::Table;
use crate::target::{self, Kind};
use crate::wire::{self, HandshakeReply};

const TOPIC: &str = "room:presence-bench";
const HEADERS: &[&str] = &[
    "members",
    "join_s",
    "settle_s",
    "converged",
    "frames_per_member",
    "max_frames",
    "kib_per_member",
    "final_state_kib",
    "bytes_vs_floor",
    "server_cpu_s",
    "server_rss_mib",
];

pub fn run(opts: &Opts) -> Res {
    let sizes = sizes(opts);
    let mut table = Table::new("presence: N members join one room at once", HEADERS);
    for &n in &sizes {
        let n = n.min(cap(Kind::Phoenix, n));
        let row = storm(opts, n)?;
        println!("  {}", row.join("  "));
        table.row(row);
    }
    table.print();
    table.write_csv(&opts.out, "presence").map_err(|e| e.to_string())
}

/// `PRESENCE_SIZES=1000,5000` overrides the default 1k, 5k, 10k (100, 300 with --smoke).
fn sizes(opts: &Opts) -> Vec<usize> {
    if let Ok(list) = std::env::var("PRESENCE_SIZES") {
        return list.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    }
    if opts.smoke { vec![100, 300] } else { vec![1000, 5000, 10_000] }
}

/// What every member thread shares with the coordinator.
#[derive(Default)]
struct Shared {
    joined: AtomicU64,
    failed: AtomicU64,
    converged: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    max_frames: AtomicU64,
    /// `now_ns` of the last join reply and of the last member reaching N keys.
    last_join_ns: AtomicU64,
    last_converged_ns: AtomicU64,
    stop: AtomicBool,
}

fn storm(opts: &Opts, n: usize) -> Res<Vec<String>> {
    let mut server = start(Kind::Phoenix, opts, &format!("presence-{n}"))?;
    let shared = Arc::new(Shared::default());
    let cpu0 = target::proc_stat(server.pid).unwrap_or_default().cpu_s;
    let t0_ns = crate::now_ns();
    let handles = spawn_members(opts, n, &server, &shared);
    wait_converged(&shared, n, &server, cpu0);
    let stat = target::proc_stat(server.pid).unwrap_or_default();
    let final_state = final_state_bytes(server.ws, &server.path);
    shared.stop.store(true, Relaxed);
    for h in handles {
        let _ = h.join();
    }
    server.stop();
    let measured = Measured { n, t0_ns, final_state: final_state?, cpu_s: stat.cpu_s - cpu0, stat };
    Ok(row(&shared, &measured))
}

/// One generator thread per `--client-threads`, each with its share of the members.
fn spawn_members(
    opts: &Opts,
    n: usize,
    server: &target::Server,
    shared: &Arc<Shared>,
) -> Vec<std::thread::JoinHandle<()>> {
    let threads = opts.client_threads.max(1);
    let inflight = (opts.inflight / threads).max(1);
    let spawn = |t: usize| {
        let ids: Vec<usize> = (t..n).step_by(threads).collect();
        let (shared, addr, path) = (shared.clone(), server.ws, server.path.clone());
        std::thread::spawn(move || Members::new(ids, n, addr, path, shared, inflight).run())
    };
    (0..threads).map(spawn).collect()
}

/// Waits, printing progress every second, until every member holds N keys, or every member
/// joined or failed and all joined ones converged, or the deadline.
fn wait_converged(shared: &Shared, n: usize, server: &target::Server, cpu0: f64) {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60 + n as u64 / 100);
    let mut last_print = Instant::now();
    while Instant::now() < deadline {
        let (joined, failed) = (shared.joined.load(Relaxed), shared.failed.load(Relaxed));
        let conv = shared.converged.load(Relaxed);
        if last_print.elapsed() >= Duration::from_secs(1) {
            let server_cpu = target::proc_stat(server.pid).unwrap_or_default().cpu_s - cpu0;
            let own_cpu = target::self_stat().cpu_s;
            println!(
                "  [{n}] joined {joined} failed {failed} converged {conv} at {:.1} s \
                 (cpu: server {server_cpu:.1} s, generator {own_cpu:.1} s)",
                t0.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        if conv as usize == n || failed > 0 && (joined + failed) as usize == n && conv == joined {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What one storm measured besides the shared counters.
struct Measured {
    n: usize,
    t0_ns: u64,
    final_state: usize,
    cpu_s: f64,
    stat: target::ProcStat,
}

fn row(s: &Shared, m: &Measured) -> Vec<String> {
    let (n, members) = (m.n, m.n as f64);
    let (last_join, last_conv) = (s.last_join_ns.load(Relaxed), s.last_converged_ns.load(Relaxed));
    let converged = s.converged.load(Relaxed);
    let settle = match converged as usize == n {
        true => format!("{:.2}", last_conv.saturating_sub(last_join) as f64 / 1e9),
        false => "not converged".into(),
    };
    let bytes = s.bytes.load(Relaxed) as f64;
    vec![
        n.to_string(),
        format!("{:.2}", last_join.saturating_sub(m.t0_ns) as f64 / 1e9),
        settle,
        format!("{converged}/{n}"),
        format!("{:.1}", s.frames.load(Relaxed) as f64 / members),
        s.max_frames.load(Relaxed).to_string(),
        format!("{:.0}", bytes / members / 1024.0),
        format!("{:.0}", m.final_state as f64 / 1024.0),
        format!("{:.2}", bytes / (members * m.final_state as f64)),
        format!("{:.2}", m.cpu_s),
        format!("{:.0}", m.stat.rss_kib as f64 / 1024.0),
    ]
}

/// The size of the room's `presence_state` payload once everyone is in: an observer joins as
/// an existing member's second socket and measures the state it is sent.
fn final_state_bytes(addr: std::net::SocketAddr, path: &str) -> Res<usize> {
    let shared = Arc::new(Shared::default());
    let mut observer = Members::new(vec![0], 0, addr, path.to_string(), shared, 1);
    observer.observer = true;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        observer.turn(Duration::from_millis(20));
        if let Some(size) = observer.state_bytes {
            return Ok(size);
        }
    }
    Err("observer got no presence_state".into())
}

#[derive(PartialEq)]
enum Phase {
    Connecting,
    Upgrading(String),
    Joining,
    Joined,
    Closed,
}

struct Member {
    id: usize,
    stream: TcpStream,
    phase: Phase,
    buf: Vec<u8>,
    /// Bit i set: this member holds key `m<i>`.
    keys: Vec<u64>,
    count: usize,
    frames: u64,
    /// Diffs that came before the first state (the fastlane can overtake the channel's push):
    /// held and applied after it, as phoenix.js does.
    early: Option<Vec<Vec<u8>>>,
}

/// One generator thread's members and its event loop.
struct Members {
    pending: Vec<usize>,
    members: Vec<Member>,
    n: usize,
    addr: std::net::SocketAddr,
    path: String,
    shared: Arc<Shared>,
    inflight: usize,
    poll: Poll,
    observer: bool,
    state_bytes: Option<usize>,
    last_heartbeat: Instant,
    /// The read buffer, reused by every member of the thread.
    chunk: Vec<u8>,
    /// Members connecting, upgrading or joining.
    busy: usize,
}

impl Members {
    fn new(
        ids: Vec<usize>,
        n: usize,
        addr: std::net::SocketAddr,
        path: String,
        shared: Arc<Shared>,
        inflight: usize,
    ) -> Members {
        let mut pending = ids;
        pending.reverse();
        let poll = Poll::new().expect("mio poll");
        Members {
            pending,
            members: Vec::new(),
            n,
            addr,
            path,
            shared,
            inflight,
            poll,
            observer: false,
            state_bytes: None,
            last_heartbeat: Instant::now(),
            chunk: Vec::new(),
            busy: 0,
        }
    }

    fn run(mut self) {
        while !self.shared.stop.load(Relaxed) {
            self.turn(Duration::from_millis(20));
        }
    }

    fn turn(&mut self, wait: Duration) {
        self.open_more();
        let mut events = Events::with_capacity(1024);
        if self.poll.poll(&mut events, Some(wait)).is_err() {
            return;
        }
        for ev in events.iter() {
            self.step(ev.token().0);
        }
        if self.last_heartbeat.elapsed() > Duration::from_secs(20) {
            self.heartbeat();
        }
    }

    /// Keeps `inflight` members connecting or joining at once, as fast as they complete.
    fn open_more(&mut self) {
        while self.busy < self.inflight {
            let Some(id) = self.pending.pop() else { return };
            let Ok(mut stream) = TcpStream::connect(self.addr) else {
                self.shared.failed.fetch_add(1, Relaxed);
                continue;
            };
            self.busy += 1;
            let token = Token(self.members.len());
            let interest = Interest::READABLE | Interest::WRITABLE;
            self.poll.registry().register(&mut stream, token, interest).expect("register");
            let keys = vec![0u64; self.n.div_ceil(64)];
            self.members.push(Member {
                id,
                stream,
                phase: Phase::Connecting,
                buf: Vec::new(),
                keys,
                count: 0,
                frames: 0,
                early: Some(Vec::new()),
            });
        }
    }

    fn step(&mut self, i: usize) {
        if self.members[i].phase == Phase::Connecting {
            self.upgrade(i);
        }
        if let Err(why) = self.read(i) {
            self.fail(i, &why);
        }
    }

    fn upgrade(&mut self, i: usize) {
        let m = &mut self.members[i];
        if m.stream.peer_addr().is_err() {
            return; // still connecting
        }
        let path = format!("{}&user_id=m{}", self.path, m.id);
        let (req, accept) = wire::handshake_request(&self.addr.to_string(), &path);
        let _ = self.poll.registry().reregister(&mut m.stream, Token(i), Interest::READABLE);
        m.phase = Phase::Upgrading(accept);
        if let Err(e) = write_all(&mut m.stream, &req) {
            self.fail(i, &e);
        }
    }

    fn read(&mut self, i: usize) -> Result<(), String> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(256 * 1024, 0);
        let result = self.read_into(i, &mut chunk);
        self.chunk = chunk;
        result
    }

    fn read_into(&mut self, i: usize, chunk: &mut [u8]) -> Result<(), String> {
        use std::io::Read;
        loop {
            let m = &mut self.members[i];
            if matches!(m.phase, Phase::Connecting | Phase::Closed) {
                return Ok(());
            }
            match m.stream.read(chunk) {
                Ok(0) => return Err("closed by server".into()),
                Ok(k) => m.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
            self.process(i)?;
        }
    }

    fn process(&mut self, i: usize) -> Result<(), String> {
        if let Phase::Upgrading(accept) = &self.members[i].phase {
            match wire::parse_handshake_reply(&self.members[i].buf, accept) {
                HandshakeReply::Partial => return Ok(()),
                HandshakeReply::Refused(why) => return Err(why),
                HandshakeReply::Accepted(len) => {
                    self.members[i].buf.drain(..len);
                    self.send_text(i, &format!(r#"["1","1","{TOPIC}","phx_join",{{}}]"#))?;
                    self.members[i].phase = Phase::Joining;
                }
            }
        }
        let mut at = 0;
        while let Some(frame) = wire::decode_frame(&self.members[i].buf[at..])? {
            let payload = at + frame.payload.start..at + frame.payload.end;
            let text = std::mem::take(&mut self.members[i].buf);
            self.on_message(i, &text[payload]);
            self.members[i].buf = text;
            at += frame.len;
        }
        let buf = &mut self.members[i].buf;
        buf.drain(..at);
        if buf.is_empty() && buf.capacity() > 64 * 1024 {
            // A state frame grew it; 10k members must not each keep a state's worth.
            *buf = Vec::new();
        }
        Ok(())
    }

    fn on_message(&mut self, i: usize, msg: &[u8]) {
        let head = &msg[..msg.len().min(96)];
        if self.members[i].phase == Phase::Joining && contains(head, b"\"phx_reply\"") {
            self.members[i].phase = Phase::Joined;
            self.busy -= 1;
            self.shared.joined.fetch_add(1, Relaxed);
            self.shared.last_join_ns.fetch_max(crate::now_ns(), Relaxed);
            return;
        }
        let state = contains(head, b"\"presence_state\"");
        if !state && !contains(head, b"\"presence_diff\"") {
            return;
        }
        if self.observer {
            let start = msg.iter().position(|&b| b == b'{').unwrap_or(0);
            if state {
                self.state_bytes.get_or_insert(msg.len() - start - 1);
            }
            return;
        }
        self.count_keys(i, msg, state);
    }

    /// Counts a presence frame and applies it to member `i`'s key set.
    fn count_keys(&mut self, i: usize, msg: &[u8], state: bool) {
        let m = &mut self.members[i];
        m.frames += 1;
        self.shared.frames.fetch_add(1, Relaxed);
        self.shared.bytes.fetch_add(msg.len() as u64, Relaxed);
        self.shared.max_frames.fetch_max(m.frames, Relaxed);
        match (&mut m.early, state) {
            (Some(early), false) => early.push(msg.to_vec()),
            (early, true) => {
                let held = early.take().unwrap_or_default();
                self.apply(i, msg, true);
                held.iter().for_each(|diff| self.apply(i, diff, false));
            }
            (None, false) => self.apply(i, msg, false),
        }
    }

    /// A state replaces the key set; a diff adds its joins and removes its leaves.
    fn apply(&mut self, i: usize, msg: &[u8], state: bool) {
        let m = &mut self.members[i];
        let was_done = m.count == self.n;
        if state {
            m.keys.iter_mut().for_each(|w| *w = 0);
            m.count = 0;
        }
        let leaves_at =
            if state { msg.len() } else { find(msg, b"\"leaves\":").unwrap_or(msg.len()) };
        for_each_key(msg, |at, key| {
            let (word, bit) = (key / 64, 1u64 << (key % 64));
            let Some(w) = m.keys.get_mut(word) else { return };
            match (at < leaves_at, *w & bit != 0) {
                (true, false) => (*w |= bit, m.count += 1),
                (false, true) => (*w &= !bit, m.count -= 1),
                _ => ((), ()),
            };
        });
        match (was_done, m.count == self.n) {
            (false, true) => {
                self.shared.converged.fetch_add(1, Relaxed);
                self.shared.last_converged_ns.fetch_max(crate::now_ns(), Relaxed);
            }
            (true, false) => drop(self.shared.converged.fetch_sub(1, Relaxed)),
            _ => {}
        }
    }

    fn send_text(&mut self, i: usize, text: &str) -> Result<(), String> {
        let mut out = Vec::with_capacity(text.len() + 14);
        wire::encode_frame(&mut out, wire::OP_TEXT, text.as_bytes(), [7, 3, 5, 1]);
        write_all(&mut self.members[i].stream, &out)
    }

    fn heartbeat(&mut self) {
        self.last_heartbeat = Instant::now();
        for i in 0..self.members.len() {
            if self.members[i].phase == Phase::Joined {
                let _ = self.send_text(i, r#"[null,"hb","phoenix","heartbeat",{}]"#);
            }
        }
    }

    fn fail(&mut self, i: usize, why: &str) {
        let m = &mut self.members[i];
        if m.phase != Phase::Closed {
            if m.phase != Phase::Joined {
                self.shared.failed.fetch_add(1, Relaxed);
                self.busy -= 1;
            }
            eprintln!("  member m{}: {why}", m.id);
            m.phase = Phase::Closed;
            let _ = self.poll.registry().deregister(&mut m.stream);
        }
    }
}

/// Calls `f(offset, i)` for every entry `"m<i>":{"metas":` in `msg`. The mark starts with
/// `{`, a rare byte in presence payloads, which keeps the scan fast.
fn for_each_key(msg: &[u8], mut f: impl FnMut(usize, usize)) {
    const MARK: &[u8] = b"{\"metas\":";
    let mut from = 0;
    while let Some(rel) = find(&msg[from..], MARK) {
        let end = (from + rel).saturating_sub(2); // before `":`
        let start = msg[..end].iter().rposition(|&b| b == b'"').map_or(end, |q| q + 1);
        let key = &msg[start..end];
        if let Some(digits) = key.strip_prefix(b"m") {
            if let Some(i) = std::str::from_utf8(digits).ok().and_then(|d| d.parse().ok()) {
                f(end, i);
            }
        }
        from += rel + MARK.len();
    }
}

/// First index of `needle` in `hay`: a scan for its first byte, then a compare.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut at = 0;
    while at + needle.len() <= hay.len() {
        let rel = hay[at..=hay.len() - needle.len()].iter().position(|&b| b == first)?;
        if hay[at + rel..].starts_with(needle) {
            return Some(at + rel);
        }
        at += rel + 1;
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Client writes are a handshake, a join and heartbeats: tiny, so the kernel takes them whole.
fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    match stream.write(bytes) {
        Ok(k) if k == bytes.len() => Ok(()),
        Ok(_) => Err("short write".into()),
        Err(e) => Err(e.to_string()),
    }
}
