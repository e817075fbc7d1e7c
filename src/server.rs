//! The top of the process tree: starts PubSub and the WebSocket acceptor, and shuts everything
//! down in order (`ServerHandle::shutdown`).
//!
//! Runs on: the caller's thread (start/shutdown) and the `ws-accept` thread.
//! Shutdown order: stop accepting → the presence tracker says `bye` to the other nodes → send
//! every WebSocket its 1012 close frame and ask every connection to end (each stops its
//! channels, then flushes and shuts its stream, then joins its threads) → wait, bounded,
//! until every connection thread has ended → stop the presence tracker → stop the writer
//! pool → stop the PubSub registry.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::{Condvar, Mutex};

use crate::channel::Router;
use crate::config::Config;
use crate::limits::{self, PerAddress};
use crate::presence::TrackerProcess;
use crate::process;
use crate::pubsub::{PubSub, PubSubProcess};
use crate::socket::conn::{CloseReason, ConnShared, OutLimits};
use crate::socket::transport::{ConnectFn, Connected};
use crate::socket::writer::WriterPool;
use crate::socket::{self, Endpoint};

/// The `nice` of a stopping binary's threads once its clients have their 1012
/// (`Config::shutdown_yields_cpu`).
const SHUTDOWN_NICE: i32 = 10;

/// At shutdown, the writers get at least this long after the connections are done.
const WRITER_GRACE: Duration = Duration::from_secs(1);

/// Live connections, for shutdown and the two limits: `max_handshakes` for upgrades in
/// progress, `max_connections` for completed ones.
#[derive(Default)]
struct Connections {
    table: Mutex<Table>,
    emptied: Condvar,
    /// A handshake ended or upgraded: the acceptor may be waiting for its slot.
    freed: Condvar,
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, (Arc<ConnShared>, Phase)>,
    /// Connections in `Phase::Handshake` whose request head is not all in, and when they were
    /// accepted, oldest first: the ones a slow client may be holding.
    handshaking: VecDeque<(u64, Instant)>,
    /// Connections in `Phase::Handshake` whose head is all in (`Admit::head_received`, or seen
    /// waiting in the kernel): the rest of their handshake is the server's work.
    received: VecDeque<(u64, Instant)>,
    /// Connections in `Phase::Upgraded`.
    upgraded: usize,
}

/// Where a connection is, for the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In its upgrade, not yet answered 101: counts against `max_handshakes`.
    Handshake,
    /// Dropped as the oldest handshake; counts against nothing while its thread ends.
    Evicted,
    /// Upgraded: holds a `max_connections` slot.
    Upgraded,
}

/// Drops handshake `id` (the oldest) for a newer one: its client gets a 503 saying why, and
/// its thread wakes from reading the request head and ends. `why` says what it had sent.
fn evict(table: &mut Table, id: u64, max: usize, why: &str) {
    let Some((conn, phase)) = table.conns.get_mut(&id) else { return };
    log::info!("conn {id}: dropped, the oldest of {max} handshakes ({why})");
    *phase = Phase::Evicted;
    crate::metrics::refused_connect("handshake_evicted");
    conn.refuse_handshake("too many handshakes in progress; this one was the oldest");
}

/// How old a handshake must be before it may be dropped for a newer one: `grace` while its
/// client is still sending the request head, `timeout` once the head is in.
#[derive(Clone, Copy)]
struct Ages {
    grace: Duration,
    timeout: Duration,
}

impl Table {
    fn handshakes(&self) -> usize {
        self.handshaking.len() + self.received.len()
    }

    fn forget_handshake(&mut self, id: u64) {
        self.handshaking.retain(|(h, _)| *h != id);
        self.received.retain(|(h, _)| *h != id);
    }

    /// One step towards a free handshake slot: drops the oldest handshake that may go, or
    /// moves one whose head turns out to be in; `Err(when)` if none may go before `when`.
    fn make_room(&mut self, ages: Ages, max: usize) -> Result<(), Instant> {
        let now = Instant::now();
        if self.settle_oldest_sender(now, ages.grace, max)
            || self.drop_timed_out(now, ages.timeout, max)
        {
            return Ok(());
        }
        let due = |q: &VecDeque<(u64, Instant)>, age| q.front().map(|&(_, since)| since + age);
        let next = [due(&self.handshaking, ages.grace), due(&self.received, ages.timeout)];
        Err(next.into_iter().flatten().min().unwrap_or(now + ages.grace))
    }

    /// The oldest handshake still sending its head, once `grace` old: dropped, unless its
    /// whole head is waiting in the kernel (its thread has not run yet), then `received`.
    fn settle_oldest_sender(&mut self, now: Instant, grace: Duration, max: usize) -> bool {
        let Some(&(oldest, since)) = self.handshaking.front() else { return false };
        if now < since + grace {
            return false;
        }
        self.handshaking.pop_front();
        let (bytes, whole) = self.conns.get(&oldest).map_or((0, false), |(c, _)| c.head_waiting());
        if whole {
            self.received.push_back((oldest, since));
        } else {
            let why = format!("{bytes} bytes of its request head unread after {:?}", now - since);
            evict(self, oldest, max, &why);
        }
        true
    }

    /// The oldest handshake whose head is in, once `timeout` old: dropped.
    fn drop_timed_out(&mut self, now: Instant, timeout: Duration, max: usize) -> bool {
        let Some(&(oldest, since)) = self.received.front() else { return false };
        if now < since + timeout {
            return false;
        }
        self.received.pop_front();
        evict(self, oldest, max, "its request head was in; the handshake timed out");
        true
    }
}

impl Connections {
    fn len(&self) -> usize {
        self.table.lock().conns.len()
    }

    fn remove(&self, id: u64) {
        let mut table = self.table.lock();
        match table.conns.remove(&id).map(|(_, phase)| phase) {
            Some(Phase::Handshake) => {
                table.forget_handshake(id);
                self.freed.notify_one();
            }
            Some(Phase::Upgraded) => table.upgraded -= 1,
            Some(Phase::Evicted) | None => {}
        }
        if table.conns.is_empty() {
            self.emptied.notify_all();
        }
    }

    /// Registers a new connection in its handshake. With `max_handshakes` reached, the oldest
    /// handshake is dropped to make room (see `Config::max_handshakes` for why the oldest), but
    /// only once it is `grace` old and only if its client has not sent its whole request head:
    /// one whose head is in waits on us, not on a slow client, and is dropped only once it is
    /// `timeout` (`handshake_timeout`) old. Until one may go, the acceptor waits for a slot.
    fn start_handshake(&self, id: u64, shared: &Arc<ConnShared>, max: usize, ages: Ages) {
        let mut table = self.table.lock();
        // Bounded: each pass drops or moves a handshake, or waits until the next one comes of
        // age (or a slot frees), and nothing is added to the queues meanwhile.
        while table.handshakes() >= max.max(1) {
            if let Err(until) = table.make_room(ages, max) {
                self.freed.wait_until(&mut table, until);
            }
        }
        table.conns.insert(id, (shared.clone(), Phase::Handshake));
        table.handshaking.push_back((id, Instant::now()));
    }

    /// Connection `id` has its whole request head: it leaves the ones a slow client may hold.
    fn head_received(&self, id: u64) {
        let mut table = self.table.lock();
        if let Some(i) = table.handshaking.iter().position(|(h, _)| *h == id) {
            let entry = table.handshaking.remove(i).expect("a position in the queue");
            table.received.push_back(entry);
        }
    }

    /// Waits until no connection is left; false on timeout.
    fn wait_empty(&self, deadline: Instant) -> bool {
        let mut table = self.table.lock();
        while !table.conns.is_empty() {
            if self.emptied.wait_until(&mut table, deadline).timed_out() {
                return table.conns.is_empty();
            }
        }
        true
    }
}

/// Moves a connection from the handshake budget to a `max_connections` slot when its upgrade
/// completes (`transport::accept`, just before the 101).
pub(crate) struct Admission {
    connections: Arc<Connections>,
    max_connections: usize,
}

impl socket::Admit for Admission {
    fn head_received(&self, id: u64) {
        self.connections.head_received(id);
    }

    fn upgraded(&self, id: u64) -> bool {
        let mut table = self.connections.table.lock();
        if table.upgraded >= self.max_connections {
            return false;
        }
        let Some((_, phase)) = table.conns.get_mut(&id) else { return false };
        if *phase != Phase::Handshake {
            return false; // evicted meanwhile: its stream is already shut
        }
        *phase = Phase::Upgraded;
        table.forget_handshake(id);
        table.upgraded += 1;
        self.connections.freed.notify_one();
        true
    }
}

/// Removes a connection from the table when its socket thread ends, however it ends.
struct ConnGuard {
    id: u64,
    connections: Arc<Connections>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.connections.remove(self.id);
    }
}

/// A running server. Dropping it without `shutdown` leaves the threads running.
pub struct ServerHandle {
    ws_addr: SocketAddr,
    pubsub: Option<PubSubProcess>,
    presence: Option<TrackerProcess>,
    writers: Arc<WriterPool>,
    connections: Arc<Connections>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    /// Disconnected when the acceptor has exited (it drops the sender as its last act).
    acceptor_exited: Receiver<()>,
    /// The listening socket, to wake a blocked `accept` at shutdown.
    listener: TcpListener,
    shutdown_timeout: Duration,
    /// `Config::shutdown_yields_cpu`.
    yields_cpu: bool,
    /// For `route_longpoll`; the acceptor and the connections hold it.
    endpoint: std::sync::Weak<Endpoint>,
}

/// What `shutdown` achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when shutdown began.
    pub connections: usize,
    /// Of those, the ones whose threads had not ended by the shutdown timeout.
    pub unfinished: usize,
    /// True if every connection and thread ended within the shutdown timeout.
    pub clean: bool,
}

/// Accepts every connection with no assigns and no socket id.
pub fn accept_all() -> ConnectFn {
    Arc::new(|_| Ok(Connected::default()))
}

/// Binds the WebSocket listener and starts the acceptor and the PubSub registry.
pub fn start(config: Config, router: Router, connect: ConnectFn) -> io::Result<ServerHandle> {
    let listener = bind_listener(config.ws_addr, config.listen_backlog)?;
    match process::size_futex_hash(config.max_connections * 2 + 64) {
        Ok(slots) => log::debug!("futex hash sized to {slots} slots"),
        Err(e) => log::debug!("futex hash left as is: {e}"),
    }
    let ws_addr = listener.local_addr()?;
    let waker = listener.try_clone()?;
    let pubsub = PubSubProcess::start(config.registry_mailbox, config.spread_fanout)?;
    // Each writer mailbox holds at most one entry per connection (`socket/writer.rs`):
    // upgraded ones, handshakes, and dropped handshakes whose threads are ending.
    let capacity = config.max_connections + 2 * config.max_handshakes + 64;
    let writers = match WriterPool::start(config.writer_threads, capacity) {
        Ok(writers) => Arc::new(writers),
        Err(e) => {
            pubsub.stop();
            return Err(e);
        }
    };
    let (shutdown_timeout, yields_cpu) = (config.shutdown_timeout, config.shutdown_yields_cpu);
    let presence =
        match router.presence_handle().map(|p| p.start(&config.presence, pubsub.pubsub.clone())) {
            Some(Err(e)) => {
                writers.stop(Instant::now() + Duration::from_secs(1));
                pubsub.stop();
                return Err(e);
            }
            started => started.and_then(Result::ok),
        };
    let connections = Arc::new(Connections::default());
    let max_connections = config.max_connections;
    let admit = Box::new(Admission { connections: connections.clone(), max_connections });
    let pubsub_handle = pubsub.pubsub.clone();
    let longpoll =
        crate::socket::longpoll::Sessions::new(config.longpoll_key.as_ref(), &config.node_name);
    let endpoint =
        Arc::new(Endpoint { config, router, connect, pubsub: pubsub_handle, admit, longpoll });
    let stopping = Arc::new(AtomicBool::new(false));
    let (conns, stop, pool) = (connections.clone(), stopping.clone(), writers.clone());
    let per_address = PerAddress::new(
        endpoint.config.max_connections_per_address,
        endpoint.config.trusted_proxies.clone(),
    );
    let (alive, acceptor_exited) = crossbeam_channel::bounded::<()>(0);
    let weak_endpoint = Arc::downgrade(&endpoint);
    let spawned = process::spawn("ws-accept".into(), 256 * 1024, move || {
        accept_loop(listener, endpoint, pool, (conns, per_address), stop);
        drop(alive);
    });
    let acceptor = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            if let Some(presence) = presence {
                presence.stop();
            }
            writers.stop(Instant::now() + Duration::from_secs(1));
            pubsub.stop();
            return Err(e);
        }
    };
    log::info!("websocket listening on {ws_addr}");
    Ok(ServerHandle {
        ws_addr,
        pubsub: Some(pubsub),
        presence,
        writers,
        connections,
        stopping,
        acceptor: Some(acceptor),
        acceptor_exited,
        listener: waker,
        shutdown_timeout,
        yields_cpu,
        endpoint: weak_endpoint,
    })
}

impl ServerHandle {
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// With a cluster: a LongPoll request that reaches this node for a session on another
    /// travels there, and this node serves the requests routed to its own sessions
    /// (`socket::longpoll_route`). `node_timeout` is the cluster's: until it has passed, a
    /// node not yet heard from is not taken for down.
    pub fn route_longpoll(
        &self,
        view: crate::cluster::ClusterView,
        node_timeout: Duration,
    ) -> std::io::Result<()> {
        let endpoint = self.endpoint.upgrade().ok_or_else(|| std::io::Error::other("stopped"))?;
        crate::socket::longpoll_route::start(&endpoint, view, node_timeout)
    }

    /// Broadcast from outside any channel (REST handlers, jobs): `Endpoint.broadcast/3`.
    pub fn pubsub(&self) -> PubSub {
        self.pubsub.as_ref().expect("running").pubsub.clone()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Stops accepting, closes every connection with 1012 and joins every thread, within the
    /// configured shutdown timeout.
    pub fn shutdown(mut self) -> ShutdownReport {
        let deadline = Instant::now() + self.shutdown_timeout;
        self.stopping.store(true, Ordering::SeqCst);
        let acceptor_stopped = self.stop_acceptor(deadline);
        let open = self.close_connections();
        // Connection threads are detached (see `admit`); each drops its guard as its last act.
        let connections_closed = self.connections.wait_empty(deadline);
        // Every channel has ended, so every exit notice is queued: the tracker may go.
        let tracker_stopped = self.presence.take().is_none_or(TrackerProcess::stop);
        // The writers only finish non-blocking sends; they get a moment even when the
        // connections used up the deadline.
        let writers_stopped = self.writers.stop(deadline.max(Instant::now() + WRITER_GRACE));
        let clean = acceptor_stopped && connections_closed && tracker_stopped && writers_stopped;
        if let Some(pubsub) = self.pubsub.take() {
            pubsub.stop();
        }
        let unfinished = self.connections.len();
        match unfinished {
            0 => log::info!("websocket server stopped ({} connections closed)", open.len()),
            n => {
                log::warn!("websocket server stopped; {n} of {} connections not ended", open.len())
            }
        }
        ShutdownReport { connections: open.len(), unfinished, clean }
    }
}

impl ServerHandle {
    /// Tells the other nodes and every client that this server is going, then asks every
    /// connection to end; returns the connections open at that point.
    fn close_connections(&self) -> Vec<Arc<ConnShared>> {
        // The other nodes drop this node's presences in one step, before its clients reach
        // them, instead of one leave per channel as the channels end.
        if let Some(tracker) = &self.presence {
            tracker.leave();
        }
        let open: Vec<Arc<ConnShared>> =
            self.connections.table.lock().conns.values().map(|(c, _)| c.clone()).collect();
        // Every client is told first, from this thread (`send_close_now`); only then are the
        // connections' threads woken to end. Woken in the same pass, each one preempted this
        // loop to run its teardown: at 10,000 connections the last 1012 went out after 2.2 s.
        let started = Instant::now();
        let told = open.iter().filter(|c| c.send_close_now(CloseReason::Shutdown)).count();
        log::info!("sent 1012 to {told} of {} connections in {:?}", open.len(), started.elapsed());
        if self.yields_cpu {
            // The teardown is 0.3 ms of CPU per connection; the nodes and clients taking over
            // these clients need the CPU more (BENCHMARKS.md, `reconnect`).
            let threads = process::yield_cpu(SHUTDOWN_NICE);
            log::info!("teardown at nice {SHUTDOWN_NICE} ({threads} threads)");
        }
        for conn in &open {
            conn.close(CloseReason::Shutdown);
        }
        open
    }

    /// Wakes the blocking `accept` and joins the acceptor, by `deadline`: a connection to
    /// ourselves (what tiny_http does), and in case that cannot get through (a full backlog),
    /// shutting the listening socket, which makes a blocked `accept` fail on Linux.
    fn stop_acceptor(&mut self, deadline: Instant) -> bool {
        let _ = TcpStream::connect_timeout(&self.ws_addr, Duration::from_secs(1));
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Both);
        let Some(acceptor) = self.acceptor.take() else { return true };
        if self.acceptor_exited.recv_deadline(deadline) != Err(RecvTimeoutError::Disconnected) {
            log::warn!("the acceptor did not stop in time");
            return false;
        }
        let _ = acceptor.join();
        true
    }
}

/// Binds with a listen backlog of `backlog` (std always uses 128): a burst of connects beyond
/// the backlog loses SYNs, and each lost SYN costs its client a one-second retransmit. The
/// kernel caps it at `net.core.somaxconn` (4096 by default).
fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// The acceptor loop; it ends when `stopping` is set.
fn accept_loop(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    writers: Arc<WriterPool>,
    (connections, per_address): (Arc<Connections>, Arc<PerAddress>),
    stopping: Arc<AtomicBool>,
) {
    static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
    for incoming in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let tcp = match incoming {
            Ok(tcp) => tcp,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                log::warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let id = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        admit(tcp, id, &endpoint, &writers, (&connections, &per_address));
    }
}

/// Starts the socket process for one accepted stream, or refuses it with 503 when the server
/// is at its connection limit, its address at `max_connections_per_address` (trusted proxies
/// are not limited: they carry many clients), or out of threads.
fn admit(
    tcp: TcpStream,
    id: u64,
    endpoint: &Arc<Endpoint>,
    writers: &WriterPool,
    (connections, per_address): (&Arc<Connections>, &Arc<PerAddress>),
) {
    let Ok(peer) = tcp.peer_addr() else { return };
    let Some(place) = per_address.admit(peer.ip()) else {
        log::warn!("refusing {peer}: max_connections_per_address reached");
        limits::count(&limits::REFUSALS.ws_per_address);
        refuse_503(&tcp, "too many connections from this address");
        return;
    };
    let _ = tcp.set_nodelay(true);
    // One file descriptor per connection, shared by its threads (`&TcpStream` reads and
    // writes): the process may hold at most 20,000 open files, and 19k connections must fit.
    let tcp = Arc::new(tcp);
    let limits = OutLimits {
        max_pending_bytes: endpoint.config.outbound_queue_bytes,
        flusher_stack_bytes: endpoint.config.flusher_stack_bytes,
    };
    let shared = Arc::new(ConnShared::new(id, tcp.clone(), limits, writers.for_connection(id)));
    // Refused here, costing no thread, while every slot is taken; a race for the last slot
    // is decided when the upgrade completes (`Admission`).
    if connections.table.lock().upgraded >= endpoint.config.max_connections {
        log::warn!("refusing {peer}: max_connections reached");
        crate::metrics::refused_connect("at_capacity");
        drop(shared);
        refuse_503(&tcp, "server at connection limit");
        return;
    }
    let config = &endpoint.config;
    let ages = Ages { grace: config.handshake_grace, timeout: config.handshake_timeout };
    connections.start_handshake(id, &shared, config.max_handshakes, ages);
    let guard = ConnGuard { id, connections: connections.clone() };
    let endpoint = endpoint.clone();
    let stack = endpoint.config.socket_stack_bytes;
    // Detached: a joinable thread that has ended keeps its whole stack until someone joins it,
    // and nobody waits on a connection. Shutdown waits for the guards instead.
    let spawned = process::spawn(format!("ws-{id}"), stack, move || {
        let (_guard, _place) = (guard, place);
        socket::serve(endpoint, tcp, peer, shared);
    });
    if let Err(e) = spawned {
        // The guard moved into the closure was dropped with it, freeing the slot.
        log::error!("refusing {peer}: cannot start a thread: {e}");
        crate::metrics::refused_connect("no_thread");
    }
}

/// Answers an over-limit connection with 503 from the acceptor itself: no thread is spent.
/// Whatever the client already sent is read first so closing does not reset the connection.
fn refuse_503(mut tcp: &TcpStream, body: &str) {
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = tcp.set_write_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 2048];
    let _ = tcp.read(&mut buf);
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nretry-after: 5\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(response.as_bytes());
    let _ = tcp.shutdown(std::net::Shutdown::Write);
}
