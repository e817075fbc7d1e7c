//! Where a step's CPU went: a thread reads the CPU time of a set of processes from /proc every
//! 50 ms, so a node that exits mid-step still counts (up to its last reading).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::target;

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
            while !s.load(Relaxed) {
                l.lock().extend(read(&pids));
                std::thread::sleep(Duration::from_millis(50));
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
        let last = self.last.lock();
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
    pids.iter().filter_map(|&p| Some((p, target::proc_stat(p)?.cpu_s))).collect()
}
