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
mod opts;
mod plot;
mod report;
mod scenarios;
mod scrape;
mod target;
mod wire;

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();
static SMOKE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `d`, or a tenth of it in `--smoke` runs (settling pauses only, never measurements).
pub fn pause(d: std::time::Duration) {
    let smoke = SMOKE.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(if smoke { d / 10 } else { d });
}

/// Nanoseconds since the process-wide epoch: the clock every timestamp in a body uses, so send
/// and receive times compare within the one process.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn main() {
    now_ns();
    wire::selftest();
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
