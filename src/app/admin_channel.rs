//! `admin:stats`: the live dashboard's feed (`/dashboard`). `StatsTicker` takes one snapshot of
//! the metrics a second, keeps the last `HISTORY` of them, and broadcasts each on the topic
//! (encoded once, fastlane to every dashboard). A join answers with the history, so a page
//! opened mid-benchmark draws the last minutes at once.
//!
//! Only admins may join: a connection whose connect param `admin_token` equals
//! `--admin-token`, or one from a loopback address that did not come through a proxy (no
//! `x-forwarded-for`/`x-real-ip`; the nginx site of deploy/ sets both), decided in
//! `app::connect_with_admin`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, bounded};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::channel::{Channel, ChannelCtx, JoinResult};
use crate::metrics;
use crate::protocol::Payload;
use crate::pubsub::PubSub;

pub const TOPIC: &str = "admin:stats";
/// Snapshots kept for a joining dashboard: five minutes at one a second.
pub const HISTORY: usize = 300;
const PERIOD: Duration = Duration::from_secs(1);

/// The last `HISTORY` snapshots, oldest first.
pub type History = Arc<Mutex<VecDeque<Value>>>;

pub fn new_history() -> History {
    Arc::new(Mutex::new(VecDeque::with_capacity(HISTORY)))
}

/// One point of the dashboard: gauges as they are, counters as totals (the page derives rates
/// from consecutive points).
pub fn snapshot() -> Value {
    let m = metrics::get();
    metrics::refresh_process_gauges(m);
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    json!({
        "t": ms,
        "connections": m.open_connections(),
        "channels": m.open_channels(),
        "threads": m.threads.get(),
        "rss_bytes": m.resident_bytes.get(),
        "open_fds": m.open_fds.get(),
        "frames_in": m.frames_in.get(),
        "frames_out": m.frames_out.get(),
        "bytes_in": m.bytes_in.get(),
        "bytes_out": m.bytes_out.get(),
        "broadcasts": m.broadcasts.get(),
        "deliveries": m.deliveries.get(),
        "http_requests": m.http_total(),
        "slow_consumer_evictions": m.slow_consumers.get(),
    })
}

/// The `stats-ticker` thread; stops (joined within a period) when dropped.
pub struct StatsTicker {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub history: History,
}

impl StatsTicker {
    /// Starts ticking into `history` (`new_history`, also given to the router).
    pub fn start(pubsub: PubSub, history: History) -> std::io::Result<StatsTicker> {
        let (stop, stopped) = bounded::<()>(1);
        let shared = history.clone();
        let thread = crate::process::spawn("stats-ticker".into(), 256 * 1024, move || {
            // Bounded: ends when the handle drops (the sender disconnects) or sends.
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(PERIOD)
            {
                tick(&pubsub, &shared);
            }
        })?;
        Ok(StatsTicker { stop: Some(stop), thread: Some(thread), history })
    }
}

fn tick(pubsub: &PubSub, history: &History) {
    let point = snapshot();
    {
        let mut h = history.lock();
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(point.clone());
    }
    if let Err(e) = pubsub.broadcast(TOPIC, "stats", point.into()) {
        log::debug!("stats-ticker: broadcast failed: {e}");
    }
}

impl Drop for StatsTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The channel: join checks the `admin` assign and answers `{"history": [...]}`; the stats
/// arrive by fastlane from the ticker's broadcasts.
pub struct AdminChannel {
    history: Option<History>,
}

impl AdminChannel {
    /// `history`: the running ticker's, or `None` (the join then answers the current point).
    pub fn new(history: Option<History>) -> AdminChannel {
        AdminChannel { history }
    }
}

impl Channel for AdminChannel {
    fn join(&mut self, _topic: &str, _payload: Payload, ctx: &mut ChannelCtx) -> JoinResult {
        if ctx.assigns().get("admin") != Some(&Value::Bool(true)) {
            crate::metrics::refused_join("unauthorized");
            return Err(json!({"reason": "unauthorized"}).into());
        }
        let history: Vec<Value> = match &self.history {
            Some(h) => h.lock().iter().cloned().collect(),
            None => vec![snapshot()],
        };
        Ok(json!({ "history": history, "period_ms": PERIOD.as_millis() as u64 }).into())
    }
}
