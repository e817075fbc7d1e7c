//! A client thread: one `mio::Poll` driving thousands of WebSocket connections, so the
//! generator needs two or three threads however many connections it holds and does not blur the
//! server's thread counts.
//!
//! The coordinator (the scenario code) talks to each driver with `Cmd` messages and a
//! `mio::Waker`; drivers report progress through atomic `Counters` and hand over their latency
//! samples on `Cmd::Collect`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::now_ns;
use crate::wire::{self, HandshakeReply, Incoming, Kind, Proto};

const WAKER: Token = Token(usize::MAX);
/// A connection not joined this long after its `connect()` counts as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A reconnect try not joined this long is abandoned and the next one scheduled: phoenix.js's
/// default push timeout (`DEFAULT_TIMEOUT`), after which its join push times out.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// phoenix.js's default `reconnectAfterMs(tries)` (phoenix 1.8 `socket.js`): the delay before
/// reconnect try `tries` (1-based). Its timer counts tries from the close and is reset when a
/// connection opens (`onConnOpen`), not when the channels are joined.
pub fn reconnect_after(tries: u32) -> Duration {
    const MS: [u64; 9] = [10, 50, 100, 150, 200, 250, 500, 1000, 2000];
    Duration::from_millis(MS.get(tries.saturating_sub(1) as usize).copied().unwrap_or(5000))
}

/// phoenix.js's default `rejoinAfterMs(tries)`: the delay before a refused join is retried on
/// the same socket.
pub fn rejoin_after(tries: u32) -> Duration {
    const MS: [u64; 3] = [1000, 2000, 5000];
    Duration::from_millis(MS.get(tries.saturating_sub(1) as usize).copied().unwrap_or(10_000))
}

/// Opt-in phoenix.js behaviour after the server closes a joined connection: reconnect with
/// `reconnect_after`, each try to the next address of `addrs` (one counter for every client
/// sharing this value, like a round-robin load balancer in front of the nodes), and rejoin every
/// topic as soon as the socket opens. Bounded: an outage ends in `gave up` after `max_tries`
/// tries or `give_up_after`, whichever comes first.
///
/// With `next_upstream`, the load balancer is the one `deploy/nginx` configures: a node that
/// refuses a connection is skipped for `FAIL_TIMEOUT` (`max_fails=1 fail_timeout=5s`) and the
/// try goes on to the next node unseen by the client (`proxy_next_upstream error`, nginx's
/// default). Without it, a try that lands on a stopped node fails and the client backs off.
pub struct Redial {
    pub addrs: Vec<SocketAddr>,
    next: AtomicUsize,
    pub max_tries: u32,
    pub give_up_after: Duration,
    pub next_upstream: bool,
    /// Per address, `now_ns` until which the load balancer skips it.
    down_until: Vec<AtomicU64>,
}

/// nginx's `fail_timeout` in `deploy/nginx/phx-threads-cluster.conf`.
const FAIL_TIMEOUT: Duration = Duration::from_secs(5);

impl Redial {
    pub fn new(addrs: Vec<SocketAddr>, max_tries: u32, give_up_after: Duration) -> Redial {
        assert!(!addrs.is_empty(), "a load balancer needs an address");
        let down_until = addrs.iter().map(|_| AtomicU64::new(0)).collect();
        let next = AtomicUsize::new(0);
        Redial { addrs, next, max_tries, give_up_after, next_upstream: false, down_until }
    }

    /// The next address in turn, skipping the ones marked down (unless all are).
    fn next_addr(&self) -> SocketAddr {
        let now = now_ns();
        let mut i = self.next.fetch_add(1, Relaxed);
        for _ in 1..self.addrs.len() {
            if self.down_until[i % self.addrs.len()].load(Relaxed) <= now {
                break;
            }
            i = self.next.fetch_add(1, Relaxed);
        }
        self.addrs[i % self.addrs.len()]
    }

    fn mark_down(&self, addr: SocketAddr) {
        if let Some(i) = self.addrs.iter().position(|&a| a == addr) {
            self.down_until[i].store(now_ns() + FAIL_TIMEOUT.as_nanos() as u64, Relaxed);
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// Request path with query, e.g. `/socket/websocket?vsn=2.0.0`.
    pub path: String,
}

/// Source addresses the generator spreads loopback connections over: 127.0.0.2 to 127.0.0.251.
const SOURCE_IPS: u32 = 250;
/// Source ports used with each of them (10000..60000).
const SOURCE_PORTS: (u32, u32) = (10_000, 60_000);

/// The next source address for a connection to `target`, or `None` to let the kernel pick.
///
/// Why: every client here shares one kernel with the server. With one source address, each
/// `connect()` makes the kernel search the ephemeral port range for a port whose 4-tuple is
/// free (`__inet_hash_connect`), and that search grows with the connections already open: past
/// 10k connections it was over half of the machine's CPU (perf), and the measured join rate
/// was the generator's, not the server's. An explicit, distinct (address, port) per connection
/// is one hash lookup. Only for IPv4 loopback targets, as all of 127.0.0.0/8 is local.
fn source_address(target: SocketAddr) -> Option<SocketAddr> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let IpAddr::V4(ip) = target.ip() else { return None };
    if !ip.is_loopback() {
        return None;
    }
    // Start where the previous run in this second is unlikely to have left off.
    let n = NEXT.fetch_add(1, Relaxed) + u64::from(std::process::id()) * 7919;
    let ports = u64::from(SOURCE_PORTS.1 - SOURCE_PORTS.0);
    let host = 2 + (n % u64::from(SOURCE_IPS)) as u8;
    let port = SOURCE_PORTS.0 as u64 + (n / u64::from(SOURCE_IPS)) % ports;
    Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), port as u16))
}

/// Binds `sock` to the next free source address (a few tries: a socket of an earlier run may
/// still hold one), or leaves it unbound for targets that are not IPv4 loopback.
fn bind_source(sock: &socket2::Socket, target: SocketAddr) -> std::io::Result<()> {
    let mut last = None;
    for _ in 0..8 {
        let Some(source) = source_address(target) else { return Ok(()) };
        sock.set_reuse_address(true)?;
        match sock.bind(&source.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one try"))
}

/// One connection to open.
#[derive(Clone)]
pub struct ConnSpec {
    pub topic: Arc<str>,
    /// Shrink `SO_RCVBUF` before connecting (the slow client, so the server's writes stall soon).
    pub small_rcvbuf: bool,
    /// Record this connection's deliveries in the samples (false for the slow client).
    pub record: bool,
}

/// A connection with more than a `ConnSpec` says: several topics, connect params, and
/// reconnecting like phoenix.js.
#[derive(Clone)]
pub struct Client {
    pub spec: ConnSpec,
    /// Topics joined (and rejoined) besides `spec.topic`, all at once.
    pub extra_topics: Vec<Arc<str>>,
    /// Connect params appended to the path, e.g. `user_id=u17`.
    pub params: Option<Arc<str>>,
    pub redial: Option<Arc<Redial>>,
}

impl From<ConnSpec> for Client {
    fn from(spec: ConnSpec) -> Client {
        Client { spec, extra_topics: Vec::new(), params: None, redial: None }
    }
}

/// Where a connection stands, for the coordinator (`Cmd::Status`).
#[derive(Clone, Debug)]
pub struct ConnStatus {
    pub joined: bool,
    /// The address of the current (or last) try.
    pub addr: SocketAddr,
    /// `now_ns` when it was last joined (every topic acknowledged); 0 if never.
    pub joined_at_ns: u64,
    /// `now_ns` when a joined socket of it was last closed (by the server or the network).
    pub dropped_at_ns: u64,
    /// Reconnect tries and the ones that failed (refused, closed, timed out before joining).
    pub tries: u64,
    pub failures: u64,
    /// The outage outlasted the redial bounds; the connection is closed for good.
    pub gave_up: bool,
}

pub enum Cmd {
    Connect(Vec<ConnSpec>),
    Clients(Vec<Client>),
    Status(Sender<Vec<ConnStatus>>),
    /// Every joined connection sends a heartbeat each `interval` (staggered); `None` stops.
    Heartbeat(Option<Duration>),
    /// Send a `new_msg` whose body carries `seq` and the send time, from connection `local`.
    Push {
        local: usize,
        seq: u64,
        pad: usize,
    },
    /// Stop (`false`) or resume (`true`) reading connection `local`.
    Reading {
        local: usize,
        on: bool,
    },
    Inspect {
        local: usize,
        reply: Sender<ConnReport>,
    },
    Collect(Sender<Samples>),
    /// Close every connection (RST, so no TIME_WAIT piles up) and exit the thread.
    Shutdown,
}

/// Live progress, read by the coordinator without stopping the driver.
#[derive(Default)]
pub struct Counters {
    pub joined: AtomicU64,
    pub failed: AtomicU64,
    /// Joined connections later closed by the server or the network.
    pub dropped: AtomicU64,
    pub hb_sent: AtomicU64,
    pub hb_replies: AtomicU64,
    /// Heartbeats not sent because the previous one had no reply yet.
    pub hb_skipped: AtomicU64,
    pub delivered: AtomicU64,
    pub pushes: AtomicU64,
    pub push_replies: AtomicU64,
    /// Redialling connections: tries, failed tries, rejoins completed, outages given up.
    pub redials: AtomicU64,
    pub redial_failed: AtomicU64,
    pub rejoined: AtomicU64,
    pub gave_up: AtomicU64,
}

/// Samples since the previous `Collect`.
#[derive(Default)]
pub struct Samples {
    pub hb_rtt_us: Vec<u32>,
    /// (seq, latency µs) per received timed message.
    pub deliveries: Vec<(u32, u32)>,
    pub join_us: Vec<u32>,
    pub errors: HashMap<String, u32>,
}

#[derive(Debug, Clone)]
pub struct ConnReport {
    pub open: bool,
    pub bytes_read: u64,
    pub closed_by: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Connecting,
    Handshaking,
    /// Socket.IO: waiting for the Engine.IO open packet, then for `40`.
    SioOpening,
    Joining,
    Joined,
    /// Closed, a reconnect try scheduled.
    Waiting,
    Closed,
}

/// What a timer does when it fires.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Timer {
    Redial,
    Rejoin,
}

/// A redialling connection's bookkeeping.
struct RedialState {
    cfg: Arc<Redial>,
    /// phoenix.js's reconnect timer `tries` (reset when a socket opens).
    tries: u32,
    /// Tries in the current outage, for the bound.
    outage_tries: u32,
    /// Refused rejoins on the current socket (phoenix.js's rejoin timer `tries`).
    join_tries: u32,
    down_since: Option<Instant>,
    /// Nodes the load balancer passed the current try on from (`Redial::next_upstream`).
    passes: u32,
    attempts: u64,
    failures: u64,
    gave_up: bool,
}

/// One topic of a connection and its current join.
struct Topic {
    name: Arc<str>,
    join_ref: u64,
    joined: bool,
}

struct Conn {
    /// `None` once closed (the fd is released at once) or if the socket could not be made.
    stream: Option<TcpStream>,
    state: State,
    addr: SocketAddr,
    /// The first is the one `Cmd::Push` sends on.
    topics: Vec<Topic>,
    params: Option<Arc<str>>,
    redial: Option<RedialState>,
    ever_joined: bool,
    joined_at_ns: u64,
    dropped_at_ns: u64,
    /// Counts sockets, so a timer set for an earlier one is ignored.
    generation: u32,
    accept: String,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    frag: Vec<u8>,
    started: Instant,
    next_ref: u64,
    hb_pending: Option<(u64, u64)>,
    reading: bool,
    record: bool,
    bytes_read: u64,
    closed_by: Option<String>,
}

pub struct Handle {
    pub tx: Sender<Cmd>,
    pub waker: Arc<Waker>,
    pub counters: Arc<Counters>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    pub fn send(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

pub fn spawn(id: usize, target: Target, max_inflight: usize) -> Handle {
    let poll = Poll::new().expect("mio poll");
    let waker = Arc::new(Waker::new(poll.registry(), WAKER).expect("mio waker"));
    let (tx, rx) = crossbeam_channel::unbounded();
    let counters = Arc::new(Counters::default());
    let mut d = Driver::new(poll, rx, target, counters.clone(), max_inflight);
    let thread = std::thread::Builder::new()
        .name(format!("load-driver-{id}"))
        .spawn(move || d.run())
        .expect("spawn driver");
    Handle { tx, waker, counters, thread: Some(thread) }
}

struct Driver {
    poll: Poll,
    rx: Receiver<Cmd>,
    target: Target,
    c: Arc<Counters>,
    conns: Vec<Conn>,
    /// Clients waiting for an in-flight slot.
    queue: VecDeque<Client>,
    /// (when, connection, what, its socket generation then).
    timers: BinaryHeap<Reverse<(Instant, usize, Timer, u32)>>,
    inflight: usize,
    max_inflight: usize,
    joined: Vec<usize>,
    hb: Option<(Duration, Instant, u64)>,
    samples: Samples,
    scratch: Vec<u8>,
    text: String,
    rng: u64,
    last_sweep: Instant,
}

impl Driver {
    fn new(
        poll: Poll,
        rx: Receiver<Cmd>,
        target: Target,
        c: Arc<Counters>,
        max_inflight: usize,
    ) -> Driver {
        Driver {
            poll,
            rx,
            target,
            c,
            conns: Vec::new(),
            queue: VecDeque::new(),
            timers: BinaryHeap::new(),
            inflight: 0,
            max_inflight: max_inflight.max(1),
            joined: Vec::new(),
            hb: None,
            samples: Samples::default(),
            scratch: vec![0; 64 * 1024],
            text: String::new(),
            rng: 0x9E37_79B9_7F4A_7C15 ^ now_ns(),
            last_sweep: Instant::now(),
        }
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(4096);
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(2))) {
                if e.kind() != ErrorKind::Interrupted {
                    panic!("poll: {e}");
                }
            }
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    continue;
                }
                if ev.is_writable() {
                    self.on_writable(t.0);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(t.0);
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                if !self.command(cmd) {
                    self.shutdown();
                    return;
                }
            }
            self.start_queued();
            self.fire_timers();
            self.heartbeats();
            if self.last_sweep.elapsed() > Duration::from_millis(500) {
                self.sweep_timeouts();
            }
        }
    }

    fn command(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Connect(specs) => self.queue.extend(specs.into_iter().map(Client::from)),
            Cmd::Clients(clients) => self.queue.extend(clients),
            Cmd::Status(reply) => {
                let _ = reply.send(self.conns.iter().map(Conn::status).collect());
            }
            Cmd::Heartbeat(iv) => self.hb = iv.map(|iv| (iv, Instant::now(), 0)),
            Cmd::Push { local, seq, pad } => self.push(local, seq, pad),
            Cmd::Reading { local, on } => {
                if let Some(conn) = self.conns.get_mut(local) {
                    conn.reading = on;
                }
                if on {
                    self.on_readable(local);
                }
            }
            Cmd::Inspect { local, reply } => {
                let r = self.conns.get(local).map(|c| ConnReport {
                    open: c.state != State::Closed,
                    bytes_read: c.bytes_read,
                    closed_by: c.closed_by.clone(),
                });
                let _ = reply.send(r.unwrap_or(ConnReport {
                    open: false,
                    bytes_read: 0,
                    closed_by: Some("no such connection".into()),
                }));
            }
            Cmd::Collect(reply) => {
                let _ = reply.send(std::mem::take(&mut self.samples));
            }
            Cmd::Shutdown => return false,
        }
        true
    }

    fn shutdown(&mut self) {
        for c in self.conns.drain(..) {
            if let Some(s) = &c.stream {
                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
        }
    }

    fn error(&mut self, what: impl Into<String>) {
        *self.samples.errors.entry(what.into()).or_default() += 1;
    }

    fn start_queued(&mut self) {
        while self.inflight < self.max_inflight {
            let Some(client) = self.queue.pop_front() else { return };
            let local = self.conns.len();
            let conn = self.new_conn(&client);
            self.conns.push(conn);
            match open(self.target.addr, client.spec.small_rcvbuf) {
                Ok(stream) => {
                    self.inflight += 1;
                    self.attach(local, stream);
                }
                Err(e) => {
                    self.c.failed.fetch_add(1, Relaxed);
                    self.error(format!("connect: {e}"));
                    // Keep the slot numbering aligned with the coordinator's view.
                    let c = &mut self.conns[local];
                    c.state = State::Closed;
                    c.closed_by = Some(format!("connect: {e}"));
                }
            }
        }
    }

    /// Gives connection `local` its new, connecting stream.
    fn attach(&mut self, local: usize, mut stream: TcpStream) {
        let interest = Interest::READABLE | Interest::WRITABLE;
        let reg = self.poll.registry().register(&mut stream, Token(local), interest);
        let c = &mut self.conns[local];
        c.stream = Some(stream);
        c.generation += 1;
        c.state = State::Connecting;
        c.started = Instant::now();
        if let Err(e) = reg {
            self.close(local, format!("register: {e}"));
        }
    }

    fn new_conn(&mut self, client: &Client) -> Conn {
        let topic = |name: &Arc<str>| Topic { name: name.clone(), join_ref: 0, joined: false };
        let topics = std::iter::once(&client.spec.topic).chain(&client.extra_topics);
        Conn {
            stream: None,
            state: State::Connecting,
            addr: self.target.addr,
            topics: topics.map(topic).collect(),
            params: client.params.clone(),
            redial: client.redial.clone().map(RedialState::new),
            ever_joined: false,
            joined_at_ns: 0,
            dropped_at_ns: 0,
            generation: 0,
            accept: String::new(),
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            frag: Vec::new(),
            started: Instant::now(),
            next_ref: 1,
            hb_pending: None,
            reading: true,
            record: client.spec.record,
            bytes_read: 0,
            closed_by: None,
        }
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift64: masks need not be unpredictable for a load generator on loopback.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_le_bytes()
    }

    /// Frames `self.text` as one text message on connection `local` and writes it.
    fn send_text(&mut self, local: usize) {
        let mask = self.mask();
        let c = &mut self.conns[local];
        wire::encode_frame(&mut c.wbuf, wire::OP_TEXT, self.text.as_bytes(), mask);
        self.flush(local);
    }

    fn send_frame(&mut self, local: usize, opcode: u8, payload: &[u8]) {
        let mask = self.mask();
        let c = &mut self.conns[local];
        wire::encode_frame(&mut c.wbuf, opcode, payload, mask);
        self.flush(local);
    }

    fn flush(&mut self, local: usize) {
        let c = &mut self.conns[local];
        if c.state == State::Connecting {
            return;
        }
        let Some(stream) = c.stream.as_mut() else { return };
        let mut written = 0;
        while written < c.wbuf.len() {
            match stream.write(&c.wbuf[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    c.wbuf.drain(..written);
                    self.close(local, format!("write: {}", e.kind()));
                    return;
                }
            }
        }
        c.wbuf.drain(..written);
    }

    fn on_writable(&mut self, local: usize) {
        let Some(c) = self.conns.get_mut(local) else { return };
        let Some(stream) = c.stream.as_mut() else { return };
        if c.state == State::Connecting {
            match stream.peer_addr() {
                Ok(_) => {
                    let path = match &c.params {
                        Some(p) => format!("{}&{p}", self.target.path),
                        None => self.target.path.clone(),
                    };
                    let (req, accept) = wire::handshake_request(&c.addr.to_string(), &path);
                    c.accept = accept;
                    c.wbuf.extend_from_slice(&req);
                    c.state = State::Handshaking;
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => {
                    let err = stream.take_error().ok().flatten();
                    if let Some(err) = err {
                        self.connect_failed(local, err.kind(), format!("connect: {}", err.kind()));
                    }
                    return;
                }
                Err(e) => {
                    self.connect_failed(local, e.kind(), format!("connect: {}", e.kind()));
                    return;
                }
            }
        }
        self.flush(local);
    }

    fn on_readable(&mut self, local: usize) {
        let Some(c) = self.conns.get_mut(local) else { return };
        let Some(stream) = c.stream.as_mut() else { return };
        if c.state == State::Connecting {
            if let Ok(Some(err)) = stream.take_error() {
                self.connect_failed(local, err.kind(), format!("connect: {}", err.kind()));
            }
            return;
        }
        if !c.reading {
            return;
        }
        let mut closed = None;
        loop {
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    closed = Some("eof".to_string());
                    break;
                }
                Ok(n) => {
                    c.bytes_read += n as u64;
                    c.rbuf.extend_from_slice(&self.scratch[..n]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    closed = Some(format!("read: {}", e.kind()));
                    break;
                }
            }
        }
        self.process(local);
        if let Some(why) = closed {
            self.close(local, why);
        }
    }

    fn process(&mut self, local: usize) {
        if self.conns[local].state == State::Handshaking {
            let c = &mut self.conns[local];
            match wire::parse_handshake_reply(&c.rbuf, &c.accept) {
                HandshakeReply::Partial => return,
                HandshakeReply::Refused(why) => {
                    return self.close(local, format!("upgrade: {why}"));
                }
                HandshakeReply::Accepted(n) => {
                    c.rbuf.drain(..n);
                    c.accept = String::new();
                    // phoenix.js resets its reconnect timer when a socket opens.
                    if let Some(r) = c.redial.as_mut() {
                        r.tries = 0;
                        r.join_tries = 0;
                    }
                    match self.target.proto {
                        Proto::Phoenix => self.send_join(local),
                        Proto::SocketIo => self.conns[local].state = State::SioOpening,
                    }
                }
            }
        }
        let mut pos = 0;
        let rbuf = std::mem::take(&mut self.conns[local].rbuf);
        loop {
            if self.conns[local].state == State::Closed {
                break;
            }
            let frame = match wire::decode_frame(&rbuf[pos..]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.close(local, format!("protocol: {e}"));
                    break;
                }
            };
            let payload = &rbuf[pos + frame.payload.start..pos + frame.payload.end];
            pos += frame.len;
            self.on_frame(local, frame.fin, frame.opcode, payload);
        }
        let c = &mut self.conns[local];
        let mut rbuf = rbuf;
        rbuf.drain(..pos);
        if rbuf.capacity() > 64 * 1024 && rbuf.len() < 4096 {
            rbuf.shrink_to(4096);
        }
        c.rbuf = rbuf;
    }

    fn on_frame(&mut self, local: usize, fin: bool, opcode: u8, payload: &[u8]) {
        match opcode {
            wire::OP_PING => self.send_frame(local, wire::OP_PONG, payload),
            wire::OP_PONG => {}
            wire::OP_CLOSE => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                self.send_frame(local, wire::OP_CLOSE, &payload[..payload.len().min(2)]);
                self.close(
                    local,
                    format!("close frame {}", code.map_or("-".into(), |c| c.to_string())),
                );
            }
            wire::OP_TEXT | wire::OP_BINARY | wire::OP_CONT => {
                if fin && self.conns[local].frag.is_empty() {
                    self.on_message(local, payload);
                } else {
                    self.conns[local].frag.extend_from_slice(payload);
                    if fin {
                        let whole = std::mem::take(&mut self.conns[local].frag);
                        self.on_message(local, &whole);
                    }
                }
            }
            _ => self.close(local, format!("protocol: opcode {opcode}")),
        }
    }

    fn on_message(&mut self, local: usize, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return self.error("non-utf8 message");
        };
        let parsed = match self.target.proto {
            Proto::Phoenix => wire::parse_phoenix(text),
            Proto::SocketIo => wire::parse_socketio(text),
        };
        match parsed {
            Some(msg) => self.on_incoming(local, msg),
            None => self.error("unparsed message"),
        }
    }

    fn on_incoming(&mut self, local: usize, msg: Incoming<'_>) {
        let now = now_ns();
        match msg.kind {
            Kind::EioOpen => {
                self.text.clear();
                self.text.push_str("40");
                self.send_text(local);
            }
            Kind::SioConnected => self.send_join(local),
            Kind::EioPing => {
                self.text.clear();
                self.text.push('3');
                self.send_text(local);
            }
            Kind::Reply => self.on_reply(local, msg, now),
            Kind::Push => {
                let c = &self.conns[local];
                let Some((seq, ts)) = msg.stamp.as_deref().and_then(wire::parse_stamp) else {
                    if msg.event == "phx_error" || msg.event == "phx_close" {
                        self.error(format!("server sent {}", msg.event));
                    }
                    return;
                };
                if c.record {
                    let lat = (now.saturating_sub(ts) / 1000).min(u32::MAX as u64) as u32;
                    self.samples.deliveries.push((seq as u32, lat));
                    self.c.delivered.fetch_add(1, Relaxed);
                }
            }
            Kind::Other => {}
        }
    }

    fn on_reply(&mut self, local: usize, msg: Incoming<'_>, now: u64) {
        let c = &mut self.conns[local];
        let ok = msg.status.as_deref() == Some("ok");
        let joining = c.topics.iter().position(|t| !t.joined && msg.reference == Some(t.join_ref));
        if let (State::Joining, Some(t)) = (c.state, joining) {
            if !ok {
                return self.join_refused(local, t, &msg);
            }
            c.topics[t].joined = true;
            if c.topics.iter().all(|t| t.joined) {
                self.on_joined(local);
            }
            return;
        }
        if let Some((r, sent)) = c.hb_pending {
            if msg.reference == Some(r) {
                c.hb_pending = None;
                let us = (now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32;
                self.samples.hb_rtt_us.push(us);
                self.c.hb_replies.fetch_add(1, Relaxed);
                return;
            }
        }
        self.c.push_replies.fetch_add(1, Relaxed);
    }

    /// Every topic is acknowledged: the first join of a connection, or a rejoin after a
    /// reconnect.
    fn on_joined(&mut self, local: usize) {
        let c = &mut self.conns[local];
        c.state = State::Joined;
        c.joined_at_ns = now_ns();
        if let Some(r) = c.redial.as_mut().filter(|_| c.ever_joined) {
            r.down_since = None;
            r.outage_tries = 0;
            self.c.rejoined.fetch_add(1, Relaxed);
            return;
        }
        c.ever_joined = true;
        let us = c.started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        self.samples.join_us.push(us);
        self.inflight -= 1;
        self.joined.push(local);
        self.c.joined.fetch_add(1, Relaxed);
    }

    /// A first join refused ends the connection (a failure); a rejoin refused is tried again on
    /// the same socket after `rejoin_after`, as phoenix.js's channel rejoin timer does.
    fn join_refused(&mut self, local: usize, topic: usize, msg: &Incoming<'_>) {
        let c = &mut self.conns[local];
        let why = format!("join refused: {:?}", msg.status);
        let Some(r) = c.redial.as_mut().filter(|_| c.ever_joined) else {
            return self.close(local, why);
        };
        r.join_tries += 1;
        let at = Instant::now() + rejoin_after(r.join_tries);
        c.topics[topic].join_ref = 0;
        self.timers.push(Reverse((at, local, Timer::Rejoin, c.generation)));
        self.error(format!("re{why}"));
    }

    /// Sends a join for every topic not joined yet, all at once (phoenix.js rejoins every
    /// errored channel when its socket opens).
    fn send_join(&mut self, local: usize) {
        let c = &mut self.conns[local];
        c.state = State::Joining;
        for i in 0..c.topics.len() {
            let c = &mut self.conns[local];
            if c.topics[i].joined {
                continue;
            }
            let join_ref = c.next_ref;
            c.next_ref += 1;
            c.topics[i].join_ref = join_ref;
            let topic = c.topics[i].name.clone();
            wire::out::join(self.target.proto, &mut self.text, join_ref, &topic);
            self.send_text(local);
        }
    }

    fn push(&mut self, local: usize, seq: u64, pad: usize) {
        let Some(c) = self.conns.get_mut(local) else { return };
        if c.state != State::Joined {
            return self.error("push on a connection that is not joined");
        }
        let reference = c.next_ref;
        c.next_ref += 1;
        let (topic, join_ref) = (c.topics[0].name.clone(), c.topics[0].join_ref);
        let body = wire::stamp_body(seq, now_ns(), pad);
        wire::out::new_msg(self.target.proto, &mut self.text, join_ref, reference, &topic, &body);
        self.c.pushes.fetch_add(1, Relaxed);
        self.send_text(local);
    }

    fn heartbeats(&mut self) {
        let Some((interval, start, mut slots)) = self.hb else { return };
        let n = self.joined.len() as u64;
        if n == 0 {
            return;
        }
        let target = (start.elapsed().as_nanos() * n as u128 / interval.as_nanos().max(1)) as u64;
        if target > slots + n {
            slots = target - n; // we fell behind by a whole round: don't burst
        }
        while slots < target {
            let local = self.joined[(slots % n) as usize];
            slots += 1;
            let c = &mut self.conns[local];
            if c.state != State::Joined || !c.reading {
                continue;
            }
            if c.hb_pending.is_some() {
                self.c.hb_skipped.fetch_add(1, Relaxed);
                continue;
            }
            let r = c.next_ref;
            c.next_ref += 1;
            c.hb_pending = Some((r, now_ns()));
            wire::out::heartbeat(self.target.proto, &mut self.text, r);
            self.c.hb_sent.fetch_add(1, Relaxed);
            self.send_text(local);
        }
        self.hb = Some((interval, start, slots));
    }

    fn sweep_timeouts(&mut self) {
        self.last_sweep = Instant::now();
        let late: Vec<usize> = (0..self.conns.len())
            .filter(|&i| {
                let c = &self.conns[i];
                let limit = if c.ever_joined { REJOIN_TIMEOUT } else { JOIN_TIMEOUT };
                !matches!(c.state, State::Joined | State::Closed | State::Waiting)
                    && c.started.elapsed() > limit
            })
            .collect();
        for i in late {
            let c = &self.conns[i];
            let limit = if c.ever_joined { REJOIN_TIMEOUT } else { JOIN_TIMEOUT };
            self.close(i, format!("not joined after {}s", limit.as_secs()));
        }
    }

    fn close(&mut self, local: usize, why: String) {
        let c = &mut self.conns[local];
        match c.state {
            State::Closed | State::Waiting => return,
            State::Joined => {
                c.dropped_at_ns = now_ns();
                self.c.dropped.fetch_add(1, Relaxed);
                *self.samples.errors.entry(format!("dropped: {why}")).or_default() += 1;
            }
            _ if c.ever_joined => {
                // A reconnect try that did not get as far as joined.
                self.c.redial_failed.fetch_add(1, Relaxed);
                if let Some(r) = c.redial.as_mut() {
                    r.failures += 1;
                }
                *self.samples.errors.entry(format!("redial: {why}")).or_default() += 1;
            }
            _ => {
                // Not yet joined: counts as a failure.
                self.inflight -= 1;
                self.c.failed.fetch_add(1, Relaxed);
                *self.samples.errors.entry(why.clone()).or_default() += 1;
            }
        }
        c.state = State::Closed;
        c.closed_by = Some(why);
        c.hb_pending = None;
        c.frag = Vec::new();
        for t in &mut c.topics {
            t.joined = false;
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
        c.rbuf = Vec::new();
        c.wbuf = Vec::new();
        if c.ever_joined && c.redial.is_some() {
            self.schedule_redial(local);
        }
    }

    /// After a close: the next reconnect try after `reconnect_after(tries + 1)`, or the end of
    /// the connection when this outage has used its bounds.
    fn schedule_redial(&mut self, local: usize) {
        let c = &mut self.conns[local];
        let Some(r) = c.redial.as_mut() else { return };
        let now = Instant::now();
        let down = now - *r.down_since.get_or_insert(now);
        if r.outage_tries >= r.cfg.max_tries || down >= r.cfg.give_up_after {
            r.gave_up = true;
            let why =
                format!("gave up after {} tries in {:.1} s", r.outage_tries, down.as_secs_f64());
            self.c.gave_up.fetch_add(1, Relaxed);
            return self.error(why);
        }
        c.state = State::Waiting;
        let at = now + reconnect_after(r.tries + 1);
        self.timers.push(Reverse((at, local, Timer::Redial, c.generation)));
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, local, timer, generation))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let c = &self.conns[local];
            if c.generation != generation {
                continue; // set for an earlier socket
            }
            match (timer, c.state) {
                (Timer::Redial, State::Waiting) => self.redial(local),
                (Timer::Rejoin, State::Joining) => self.send_join(local),
                _ => {} // overtaken: the connection closed or joined meanwhile
            }
        }
    }

    /// One reconnect try, to the load balancer's next address.
    fn redial(&mut self, local: usize) {
        let c = &mut self.conns[local];
        let r = c.redial.as_mut().expect("a redialling connection");
        r.tries += 1;
        r.outage_tries += 1;
        r.attempts += 1;
        r.passes = 0;
        c.addr = r.cfg.next_addr();
        self.c.redials.fetch_add(1, Relaxed);
        self.dial(local);
    }

    /// Opens the socket of a try to `addr`.
    fn dial(&mut self, local: usize) {
        match open(self.conns[local].addr, false) {
            Ok(stream) => self.attach(local, stream),
            Err(e) => {
                // As if it had connected and failed at once: `close` counts it and reschedules.
                self.conns[local].state = State::Connecting;
                self.connect_failed(local, e.kind(), format!("connect: {e}"));
            }
        }
    }

    /// A connection that did not open: the load balancer passes the try on, or it fails.
    fn connect_failed(&mut self, local: usize, kind: ErrorKind, why: String) {
        if !self.pass_on(local, kind) {
            self.close(local, why);
        }
    }

    /// `Redial::next_upstream`: a refused try goes on to the next node, each node once.
    fn pass_on(&mut self, local: usize, kind: ErrorKind) -> bool {
        let c = &mut self.conns[local];
        let Some(r) = c.redial.as_mut() else { return false };
        let nodes = r.cfg.addrs.len() as u32;
        if kind != ErrorKind::ConnectionRefused || !r.cfg.next_upstream || r.passes + 1 >= nodes {
            return false;
        }
        r.passes += 1;
        r.cfg.mark_down(c.addr);
        c.addr = r.cfg.next_addr();
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        self.dial(local);
        true
    }
}

/// A non-blocking socket connecting to `addr` from its own source address.
fn open(addr: SocketAddr, small_rcvbuf: bool) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    if small_rcvbuf {
        sock.set_recv_buffer_size(4096)?;
    }
    bind_source(&sock, addr)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(115) || e.kind() == ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(sock.into()))
}

impl RedialState {
    fn new(cfg: Arc<Redial>) -> RedialState {
        RedialState {
            cfg,
            tries: 0,
            outage_tries: 0,
            join_tries: 0,
            down_since: None,
            passes: 0,
            attempts: 0,
            failures: 0,
            gave_up: false,
        }
    }
}

impl Conn {
    fn status(&self) -> ConnStatus {
        let r = self.redial.as_ref();
        ConnStatus {
            joined: self.state == State::Joined,
            addr: self.addr,
            joined_at_ns: self.joined_at_ns,
            dropped_at_ns: self.dropped_at_ns,
            tries: r.map_or(0, |r| r.attempts),
            failures: r.map_or(0, |r| r.failures),
            gave_up: r.is_some_and(|r| r.gave_up),
        }
    }
}
