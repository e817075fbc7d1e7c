//! Where a step's CPU went: the CPU time of a set of processes from /proc at the start and the
//! end, and every `SAMPLE` between, so a node that exits mid-step still counts up to its last
//! reading.
//!
//! Why not more often: the kernel sums a process's CPU time over all its threads under a lock
//! for each reading (`thread_group_cputime`). Every 50 ms, over nodes of 20,000 to 38,000
//! threads, that was 9% of the machine's CPU in `perf`, charged to the generator, and it held
//! up the nodes' own thread exits and creations.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::target;

const SAMPLE: Duration = Duration::from_secs(1);

/// CPU seconds per labelled group of processes since `CpuWatch::start`.
pub struct CpuWatch {
    groups: Vec<(String, Vec<u32>)>,
    first: HashMap<u32, f64>,
    last: Arc<Mutex<HashMap<u32, f64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CpuWatch {
    pub fn start(groups: Vec<(String, Vec<u32>)>) -> CpuWatch {
        let pids: Vec<u32> = groups.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let first = read(&pids);
        let last = Arc::new(Mutex::new(first.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (last.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: `finish` sets `stop`, and a reading is a few files.
            while !s.load(Relaxed) {
                sleep_unless(&s, SAMPLE);
                l.lock().extend(read(&pids));
            }
        });
        CpuWatch { groups, first, last, stop, thread: Some(thread) }
    }

    /// `label=seconds` per group, e.g. `stopped=3.1 up=4.2 pg=0.8 generator=1.9`.
    pub fn finish(mut self) -> String {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let pids: Vec<u32> = self.groups.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let mut last = self.last.lock();
        last.extend(read(&pids));
        let used = |pids: &[u32]| -> f64 {
            pids.iter()
                .map(|p| last.get(p).unwrap_or(&0.0) - self.first.get(p).unwrap_or(&0.0))
                .sum()
        };
        let parts: Vec<String> =
            self.groups.iter().map(|(label, pids)| format!("{label}={:.1}", used(pids))).collect();
        parts.join(" ")
    }
}

fn read(pids: &[u32]) -> HashMap<u32, f64> {
    pids.iter().filter_map(|&p| Some((p, target::cpu_seconds(p)?))).collect()
}

/// Sleeps `d` in 50 ms naps, returning early once `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let nap = Duration::from_millis(50);
    for _ in 0..d.as_millis().div_ceil(nap.as_millis()) {
        if stop.load(Relaxed) {
            return;
        }
        std::thread::sleep(nap);
    }
}
