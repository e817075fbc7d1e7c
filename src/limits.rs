//! Per-client limits that are not tied to one protocol: the per-address connection cap (the
//! WebSocket acceptor and the REST accept thread each hold one `PerAddress`), the per-address
//! token bucket of REST writes (`RateLimiter`), which address a request comes from behind a
//! trusted proxy (`TrustedProxies`), and the count of every refusal (`REFUSALS`, atomics an
//! exporter can read).
//!
//! **Invariant:** every map here is bounded: an address is in `PerAddress` only while it has a
//! connection, and `RateLimiter` forgets full buckets when it holds `MAX_TRACKED` addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Every refusal of a per-client limit, by kind, since the process started.
#[derive(Debug, Default)]
pub struct Refusals {
    /// WebSocket connections refused: their address had `ws_max_per_address` open.
    pub ws_per_address: AtomicU64,
    /// REST connections refused: their address had `http_max_per_address` open.
    pub http_per_address: AtomicU64,
    /// REST writes answered 429.
    pub rest_writes: AtomicU64,
    /// Socket requests refused by the origin rule.
    pub origin: AtomicU64,
    /// Connects refused by the connect callback (a missing or invalid token).
    pub connect: AtomicU64,
    /// Client messages (and joins) answered `{"reason":"rate limited"}`.
    pub rate_limited: AtomicU64,
    /// Connections closed (1008) for sending over their rate limit regardless.
    pub rate_limit_closes: AtomicU64,
    /// Messages with a binary payload not sent to a client whose serializer or transport
    /// cannot carry binary (V1 JSON, LongPoll). A reply gets an error reply instead.
    pub binary_to_text: AtomicU64,
}

/// The process's refusal counters.
pub static REFUSALS: Refusals = Refusals {
    ws_per_address: AtomicU64::new(0),
    http_per_address: AtomicU64::new(0),
    rest_writes: AtomicU64::new(0),
    origin: AtomicU64::new(0),
    connect: AtomicU64::new(0),
    rate_limited: AtomicU64::new(0),
    rate_limit_closes: AtomicU64::new(0),
    binary_to_text: AtomicU64::new(0),
};

impl Refusals {
    /// Every counter with the name it is exported under (`phx_limit_refusals_total{kind}`).
    pub fn all(&self) -> [(&'static str, u64); 8] {
        let read = |c: &AtomicU64| c.load(Relaxed);
        [
            ("ws_per_address", read(&self.ws_per_address)),
            ("http_per_address", read(&self.http_per_address)),
            ("rest_writes", read(&self.rest_writes)),
            ("origin", read(&self.origin)),
            ("connect", read(&self.connect)),
            ("rate_limited", read(&self.rate_limited)),
            ("rate_limit_closes", read(&self.rate_limit_closes)),
            ("binary_to_text", read(&self.binary_to_text)),
        ]
    }
}

/// Counts one refusal.
pub fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

/// A binary message a client cannot be sent (`Refusals::binary_to_text`): counted, and logged
/// at 1, 2, 4, 8… so a channel that keeps doing it is seen without flooding the log.
pub fn refuse_binary(conn: u64, topic: &str) {
    let n = REFUSALS.binary_to_text.fetch_add(1, Relaxed) + 1;
    if n.is_power_of_two() {
        log::warn!(
            "conn {conn}: a binary message on {topic} was not sent: this client's serializer \
             or transport carries only JSON text ({n} so far)"
        );
    }
}

/// Open connections per remote address, at most `max` each. Addresses in `exempt` (trusted
/// proxies, which carry many clients) are not limited.
pub struct PerAddress {
    max: usize,
    exempt: TrustedProxies,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// An address's place, freed on drop.
pub struct AddressPlace {
    owner: Arc<PerAddress>,
    addr: IpAddr,
}

impl PerAddress {
    pub fn new(max: usize, exempt: TrustedProxies) -> Arc<PerAddress> {
        Arc::new(PerAddress { max, exempt, open: Mutex::new(HashMap::new()) })
    }

    /// A place for one more connection from `addr`, or `None` when it has `max` open.
    /// Exempt addresses get `Some` without being counted.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<Option<AddressPlace>> {
        if self.exempt.contains(addr) {
            return Some(None);
        }
        let mut open = self.open.lock();
        let n = open.entry(addr).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Some(AddressPlace { owner: self.clone(), addr }))
    }

    /// Connections `addr` has open.
    pub fn open(&self, addr: IpAddr) -> usize {
        self.open.lock().get(&addr).copied().unwrap_or(0)
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock();
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// Addresses tracked by a `RateLimiter` before full buckets are forgotten.
pub const MAX_TRACKED: usize = 100_000;

/// A token bucket per address: `burst` requests at once, refilled at `per_second`.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        RateLimiter { per_second, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes a token for `addr`, or says how long until one is there.
    pub fn take(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&addr) {
            self.forget_full(&mut buckets, now);
        }
        let bucket = buckets.entry(addr).or_insert(Bucket { tokens: self.burst, at: now });
        *bucket = self.refilled(*bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.per_second.max(f64::MIN_POSITIVE);
        Err(Duration::from_secs_f64(wait.min(86_400.0)))
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> Bucket {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        Bucket { tokens: (bucket.tokens + elapsed * self.per_second).min(self.burst), at: now }
    }

    /// A full bucket is the same as no bucket: forgetting it changes nothing. If every bucket
    /// is in use, the map is cleared (rather than growing without bound).
    fn forget_full(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.refilled(*b, now).tokens < self.burst);
        if buckets.len() >= MAX_TRACKED {
            log::warn!("rate limiter: {MAX_TRACKED} addresses busy at once; forgetting them all");
            buckets.clear();
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed (`--trusted-proxies`): addresses or CIDR
/// blocks (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let entries = list.split(',').map(str::trim).filter(|e| !e.is_empty());
        entries.map(parse_block).collect::<Result<_, _>>().map(TrustedProxies)
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|&(block, bits)| in_block(addr, block, bits))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy; then the
    /// right-most `X-Forwarded-For` entry that is not a trusted proxy (entries left of it
    /// were written by the client and prove nothing). Unparsable entries end the walk.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let hops = forwarded_for.unwrap_or("").rsplit(',').map(str::trim);
        let mut client = peer;
        for hop in hops {
            match hop.parse::<IpAddr>() {
                Ok(addr) if self.contains(addr) => client = addr,
                Ok(addr) => return addr,
                Err(_) => break,
            }
        }
        client
    }
}

fn parse_block(entry: &str) -> Result<(IpAddr, u8), String> {
    let bad = || format!("--trusted-proxies: not an address or CIDR block: {entry}");
    let (addr, bits) = entry.split_once('/').unwrap_or((entry, ""));
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let bits = if bits.is_empty() { max } else { bits.parse().map_err(|_| bad())? };
    if bits > max {
        return Err(bad());
    }
    Ok((addr, bits))
}

fn in_block(addr: IpAddr, block: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (addr, block) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_address_places_are_freed() {
        let caps = PerAddress::new(2, TrustedProxies::parse("10.0.0.1").unwrap());
        let a = caps.admit(ip("127.0.0.1")).unwrap();
        let b = caps.admit(ip("127.0.0.1")).unwrap();
        assert!(caps.admit(ip("127.0.0.1")).is_none());
        assert!(caps.admit(ip("127.0.0.2")).is_some());
        drop(a);
        assert_eq!(caps.open(ip("127.0.0.1")), 1);
        drop(b);
        assert!(caps.open.lock().is_empty(), "no entry outlives its connections");
        let proxies: Vec<_> = (0..5).map(|_| caps.admit(ip("10.0.0.1")).unwrap()).collect();
        assert!(proxies.iter().all(Option::is_none), "proxies are not counted");
    }

    #[test]
    fn token_bucket() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        let a = ip("127.0.0.1");
        for _ in 0..3 {
            assert!(limiter.take(a, t0).is_ok());
        }
        let wait = limiter.take(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(450) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limiter.take(ip("127.0.0.2"), t0).is_ok(), "per address");
        assert!(limiter.take(a, t0 + Duration::from_millis(500)).is_ok(), "refilled");
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, ::1").unwrap();
        let xff = Some("6.6.6.6, 203.0.113.7, 10.1.2.3");
        assert_eq!(trusted.client(ip("10.0.0.1"), xff), ip("203.0.113.7"));
        assert_eq!(trusted.client(ip("127.0.0.1"), xff), ip("127.0.0.1"), "untrusted peer");
        assert_eq!(trusted.client(ip("::1"), Some("198.51.100.1")), ip("198.51.100.1"));
        assert_eq!(trusted.client(ip("10.0.0.1"), None), ip("10.0.0.1"));
        assert_eq!(trusted.client(ip("10.0.0.1"), Some("junk")), ip("10.0.0.1"));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
        assert!(TrustedProxies::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
    }
}
