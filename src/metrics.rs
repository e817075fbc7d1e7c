//! Prometheus metrics: one process-wide registry of atomic counters and gauges, rendered in the
//! text exposition format at `GET /metrics` (`http/handlers/metrics.rs`).
//!
//! Cost: every hook is one relaxed atomic add, or a label lookup (a read lock and a hash) on
//! paths that already create a thread or answer a request (connects, joins, REST). The fan-out
//! path counts a whole broadcast with one add per counter (`broadcast`), never one per
//! subscriber. What the kernel knows (threads, RSS, open files) is read from `/proc` at
//! scrape time, so it costs nothing between scrapes.
//!
//! Label cardinality is bounded by construction: transports, refusal reasons and REST routes
//! are `&'static str` from our code; a channel is labelled with the router pattern it matched
//! (`room:*`), never with the client's topic.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PatternLabel {
    pub pattern: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoutedLabel {
    pub op: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteTimeLabel {
    pub method: &'static str,
    pub route: &'static str,
}

/// Seconds, from 0.5 ms to about 16 s.
#[derive(Clone)]
pub struct LatencyBuckets;

impl MetricConstructor<Histogram> for LatencyBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }
}

/// Every metric of the process. Fields are public so tests and the admin channel can read them.
pub struct Metrics {
    registry: Registry,
    pub connections: Family<TransportLabel, Gauge>,
    pub connects: Family<TransportLabel, Counter>,
    pub refused_connects: Family<ReasonLabel, Counter>,
    pub channels: Family<PatternLabel, Gauge>,
    pub joins: Family<PatternLabel, Counter>,
    pub refused_joins: Family<ReasonLabel, Counter>,
    pub frames_in: Counter,
    pub bytes_in: Counter,
    pub frames_out: Counter,
    pub bytes_out: Counter,
    pub broadcasts: Counter,
    pub deliveries: Counter,
    pub slow_consumers: Counter,
    pub http_requests: Family<RouteLabel, Counter>,
    pub http_duration: Family<RouteTimeLabel, Histogram, LatencyBuckets>,
    pub pool_in_use: Gauge,
    pub pool_waits: Counter,
    pub pool_timeouts: Counter,
    pub pool_wait_seconds: Histogram,
    pub listener_reconnects: Counter,
    pub threads: Gauge,
    pub resident_bytes: Gauge,
    pub open_fds: Gauge,
    /// `limits::REFUSALS`, brought up to date at every scrape.
    pub limit_refusals: Family<KindLabel, Counter>,
    /// LongPoll requests this node routed to their session's node (`socket::longpoll_route`).
    pub longpoll_routed: Family<RoutedLabel, Counter>,
    started: Instant,
    /// Totals across labels, for the dashboard's snapshot (`app::admin_channel`).
    open_connections: AtomicI64,
    open_channels: AtomicI64,
    http_total: AtomicU64,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The channel topic patterns mounted by any router of this process (`Router::channel`).
static PATTERNS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("phx"),
            connections: Family::default(),
            connects: Family::default(),
            refused_connects: Family::default(),
            channels: Family::default(),
            joins: Family::default(),
            refused_joins: Family::default(),
            frames_in: Counter::default(),
            bytes_in: Counter::default(),
            frames_out: Counter::default(),
            bytes_out: Counter::default(),
            broadcasts: Counter::default(),
            deliveries: Counter::default(),
            slow_consumers: Counter::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(LatencyBuckets),
            pool_in_use: Gauge::default(),
            pool_waits: Counter::default(),
            pool_timeouts: Counter::default(),
            pool_wait_seconds: LatencyBuckets.new_metric(),
            listener_reconnects: Counter::default(),
            threads: Gauge::default(),
            resident_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            limit_refusals: Family::default(),
            longpoll_routed: Family::default(),
            started: Instant::now(),
            open_connections: AtomicI64::new(0),
            open_channels: AtomicI64::new(0),
            http_total: AtomicU64::new(0),
        };
        m.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register("connections", "Open client connections", self.connections.clone());
        r.register("connects", "Connections accepted", self.connects.clone());
        r.register("refused_connects", "Connections refused", self.refused_connects.clone());
        r.register("channels", "Joined channels", self.channels.clone());
        r.register("joins", "Successful channel joins", self.joins.clone());
        r.register("refused_joins", "Channel joins refused", self.refused_joins.clone());
        r.register("frames_in", "WebSocket data frames received", self.frames_in.clone());
        r.register_with_unit("in", "Bytes received", Unit::Bytes, self.bytes_in.clone());
        r.register("frames_out", "Frames queued to clients", self.frames_out.clone());
        r.register_with_unit("out", "Bytes queued to clients", Unit::Bytes, self.bytes_out.clone());
        r.register("broadcasts", "PubSub broadcasts dispatched", self.broadcasts.clone());
        r.register("deliveries", "Broadcast frames handed to subscribers", self.deliveries.clone());
        r.register("slow_consumer_evictions", "Clients cut as slow", self.slow_consumers.clone());
        r.register("http_requests", "REST requests answered", self.http_requests.clone());
        let help = "REST request latency";
        r.register_with_unit("http_request", help, Unit::Seconds, self.http_duration.clone());
        r.register("pg_pool_in_use", "Pooled connections checked out", self.pool_in_use.clone());
        r.register("pg_pool_waits", "Checkouts that had to wait", self.pool_waits.clone());
        r.register("pg_pool_timeouts", "Checkouts that timed out", self.pool_timeouts.clone());
        let help = "Time waited for a pooled connection";
        r.register_with_unit("pg_pool_wait", help, Unit::Seconds, self.pool_wait_seconds.clone());
        let help = "Change listener reconnects";
        r.register("pg_listener_reconnects", help, self.listener_reconnects.clone());
        r.register("threads", "OS threads of the process", self.threads.clone());
        let help = "Resident set size";
        r.register_with_unit("resident", help, Unit::Bytes, self.resident_bytes.clone());
        r.register("open_fds", "Open file descriptors", self.open_fds.clone());
        let help = "Refusals of per-client limits (origin, tokens, per-address caps, rates)";
        r.register("limit_refusals", help, self.limit_refusals.clone());
        let help = "LongPoll requests routed to their session's node, by outcome";
        r.register("longpoll_routed", help, self.longpoll_routed.clone());
        self
    }

    /// Seconds since the metrics were first used (about the process's start).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Open connections of every transport.
    pub fn open_connections(&self) -> i64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// Joined channels of every pattern.
    pub fn open_channels(&self) -> i64 {
        self.open_channels.load(Ordering::Relaxed)
    }

    /// REST requests answered.
    pub fn http_total(&self) -> u64 {
        self.http_total.load(Ordering::Relaxed)
    }
}

/// The text exposition, with the `/proc` gauges read now.
pub fn render() -> String {
    let m = get();
    refresh_process_gauges(m);
    let mut out = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &m.registry);
    out
}

/// Threads, RSS and open files from `/proc/self`.
pub fn refresh_process_gauges(m: &Metrics) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(n) = status_field(&status, "Threads:") {
        m.threads.set(n);
    }
    if let Some(kib) = status_field(&status, "VmRSS:") {
        m.resident_bytes.set(kib * 1024);
    }
    let fds = std::fs::read_dir("/proc/self/fd").map(Iterator::count).unwrap_or(0);
    m.open_fds.set(fds as i64);
    refresh_limit_refusals(m);
}

/// Brings each `limit_refusals` counter up to its `limits::REFUSALS` atomic (which the limits
/// count themselves, so that `limits` needs no metrics); a counter only ever moves up.
fn refresh_limit_refusals(m: &Metrics) {
    // Two scrapes at once must not both add the same difference.
    static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock();
    for (kind, total) in crate::limits::REFUSALS.all() {
        let counter = m.limit_refusals.get_or_create(&KindLabel { kind });
        counter.inc_by(total.saturating_sub(counter.get()));
    }
}

/// The first number after `key` in `/proc/<pid>/status` text.
fn status_field(status: &str, key: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

// ---- hooks, one call at each counting point --------------------------------------------

/// Counts an open connection until the guard drops.
pub struct ConnectionGuard(&'static str);

pub fn connection(transport: &'static str) -> ConnectionGuard {
    let label = TransportLabel { transport };
    get().connects.get_or_create(&label).inc();
    get().connections.get_or_create(&label).inc();
    get().open_connections.fetch_add(1, Ordering::Relaxed);
    ConnectionGuard(transport)
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        get().connections.get_or_create(&TransportLabel { transport: self.0 }).dec();
        get().open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a joined channel until the guard drops.
pub struct ChannelGuard(PatternLabel);

pub fn channel_joined(topic: &str) -> ChannelGuard {
    let label = PatternLabel { pattern: pattern_of(topic) };
    get().joins.get_or_create(&label).inc();
    get().channels.get_or_create(&label).inc();
    get().open_channels.fetch_add(1, Ordering::Relaxed);
    ChannelGuard(label)
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        get().channels.get_or_create(&self.0).dec();
        get().open_channels.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Remembers a router pattern, so channels are labelled with it (bounded: patterns come
/// from code).
pub fn register_pattern(pattern: &str) {
    let mut patterns = PATTERNS.write();
    if !patterns.iter().any(|p| p == pattern) {
        patterns.push(pattern.to_owned());
    }
}

/// The most specific registered pattern `topic` matches, or `other`.
pub fn pattern_of(topic: &str) -> String {
    let patterns = PATTERNS.read();
    let fits = |p: &&String| match p.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => p.as_str() == topic,
    };
    let exact = patterns.iter().filter(fits).max_by_key(|p| (!p.ends_with('*'), p.len()));
    exact.cloned().unwrap_or_else(|| "other".to_owned())
}

pub fn refused_connect(reason: &'static str) {
    get().refused_connects.get_or_create(&ReasonLabel { reason }).inc();
}

pub fn refused_join(reason: &'static str) {
    get().refused_joins.get_or_create(&ReasonLabel { reason }).inc();
}

/// The reason label for a refused upgrade's HTTP status.
pub fn upgrade_refusal(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "at_capacity",
        _ => "other",
    }
}

pub fn frame_in(bytes: usize) {
    let m = get();
    m.frames_in.inc();
    m.bytes_in.inc_by(bytes as u64);
}

pub fn frame_out(bytes: usize) {
    let m = get();
    m.frames_out.inc();
    m.bytes_out.inc_by(bytes as u64);
}

/// One broadcast handed to `deliveries` subscribers, `bytes` in all: one add per counter,
/// whatever the fan-out.
pub fn broadcast(deliveries: u64, bytes: u64) {
    let m = get();
    m.broadcasts.inc();
    m.deliveries.inc_by(deliveries);
    m.frames_out.inc_by(deliveries);
    m.bytes_out.inc_by(bytes);
}

/// A LongPoll `op` (poll, send) routed to another node: `answered`, `gone` (the node is not
/// live: 410) or `unreachable` (no answer in time: 500).
pub fn longpoll_routed(op: &'static str, outcome: &'static str) {
    get().longpoll_routed.get_or_create(&RoutedLabel { op, outcome }).inc();
}

pub fn slow_consumer() {
    get().slow_consumers.inc();
}

pub fn listener_reconnect() {
    get().listener_reconnects.inc();
}

/// One answered REST request; `route` is its pattern (`/api/superheroes/{id}`) or `other`.
pub fn http_request(method: &str, route: &'static str, status: u16, elapsed: Duration) {
    let method = static_method(method);
    get().http_requests.get_or_create(&RouteLabel { method, route, status }).inc();
    get().http_total.fetch_add(1, Ordering::Relaxed);
    let timing = RouteTimeLabel { method, route };
    get().http_duration.get_or_create(&timing).observe(elapsed.as_secs_f64());
}

fn static_method(method: &str) -> &'static str {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .unwrap_or("OTHER")
}

/// A pool checkout: immediate if a slot is free, else counted as a wait (and a timeout when
/// `timeout` passes). The slot is counted in use until `pool_released`.
pub fn pool_checkout<T>(
    slots: &crossbeam_channel::Receiver<T>,
    timeout: Duration,
) -> Result<T, crossbeam_channel::RecvTimeoutError> {
    let m = get();
    let slot = slots.try_recv().or_else(|_| {
        m.pool_waits.inc();
        let started = Instant::now();
        let slot = slots.recv_timeout(timeout);
        m.pool_wait_seconds.observe(started.elapsed().as_secs_f64());
        slot
    });
    match &slot {
        Ok(_) => {
            m.pool_in_use.inc();
        }
        Err(_) => {
            m.pool_timeouts.inc();
        }
    }
    slot
}

pub fn pool_released() {
    get().pool_in_use.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_parse() {
        let status = "Name:\tx\nVmRSS:\t  2048 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "Threads:"), Some(7));
        assert_eq!(status_field(status, "VmRSS:"), Some(2048));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }

    #[test]
    fn topics_are_labelled_by_their_pattern() {
        register_pattern("metrics-test:*");
        register_pattern("metrics-test:lobby");
        assert_eq!(pattern_of("metrics-test:42"), "metrics-test:*");
        assert_eq!(pattern_of("metrics-test:lobby"), "metrics-test:lobby");
        assert_eq!(pattern_of("unknown:1"), "other");
    }

    #[test]
    fn rendering_names_every_family() {
        let _c = connection("websocket");
        broadcast(3, 30);
        let text = render();
        for name in
            ["phx_connections{transport=\"websocket\"}", "phx_deliveries_total", "phx_threads"]
        {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
