//! Load generator for phx-threads (and a Socket.IO peer for comparison).
//!
//! `cargo bench --bench load -- <scenario> [options]`; `--help` lists both. See BENCHMARKS.md
//! for what each scenario measures and the numbers from the last full run.
//!
//! Layout: `wire` (frames and messages, pure), `driver` (a mio event loop per client thread),
//! `target` (starting the servers, /proc readings, OS limits), `report` (percentiles, tables,
//! CSV), `scenarios/*` (one file per workload), `plot` (the SVG).

mod cluster_env;
mod driver;
mod fleet;
mod generator;
mod opts;
mod plot;
mod report;
mod scenarios;
mod scrape;
mod target;
mod wire;

use std::sync::OnceLock;
use std::time::Instant;

/// The process's first reading of the monotonic clock, and the wall clock at that moment.
static EPOCH: OnceLock<(Instant, u64)> = OnceLock::new();
static SMOKE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `d`, or a tenth of it in `--smoke` runs (settling pauses only, never measurements).
pub fn pause(d: std::time::Duration) {
    let smoke = SMOKE.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(if smoke { d / 10 } else { d });
}

/// Nanoseconds since the Unix epoch: the clock every timestamp in a body uses.
///
/// Why this clock: the `cluster` scenario's generators are separate processes (one may hold
/// only 20,000 files), and a message stamped in one is timed in another, so the clock must be
/// shared by every process on this host. The wall clock (CLOCK_REALTIME) is, but NTP may step
/// it; so each process reads it once and counts on from there with its monotonic clock. Two
/// processes then disagree only by how far the wall clock was slewed between their starts
/// (microseconds over a run), and within one process time never goes back.
pub fn now_ns() -> u64 {
    let (t0, wall0) = EPOCH.get_or_init(|| {
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        (Instant::now(), wall.map_or(0, |d| d.as_nanos() as u64))
    });
    wall0 + t0.elapsed().as_nanos() as u64
}

fn main() {
    now_ns();
    wire::selftest();
    if std::env::args().nth(1).as_deref() == Some(generator::ARG) {
        std::process::exit(generator::main());
    }
    let opts = match opts::Opts::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}\n\n{}", opts::USAGE);
            std::process::exit(2);
        }
    };
    if opts.help {
        println!("{}", opts::USAGE);
        return;
    }
    SMOKE.store(opts.smoke, std::sync::atomic::Ordering::Relaxed);
    target::install_cleanup(opts.deadline());
    let code = match scenarios::run(&opts) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("load: {} failed: {e}", opts.scenario);
            1
        }
    };
    target::cleanup_children();
    std::process::exit(code);
}
