//! A fleet of client connections spread over a few driver threads, addressed by a global index
//! (connection `i` lives on driver `i % threads` at local index `i / threads`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::driver::{self, Client, Cmd, ConnReport, ConnSpec, ConnStatus, Handle, Samples, Target};
use crate::target::Server;
use crate::wire::Proto;

pub struct Fleet {
    drivers: Vec<Handle>,
    /// Connections asked for so far (the next global index).
    pub opened: usize,
}

/// Sum of all drivers' counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub joined: u64,
    pub failed: u64,
    pub dropped: u64,
    pub hb_sent: u64,
    pub hb_replies: u64,
    pub hb_skipped: u64,
    pub delivered: u64,
    pub pushes: u64,
    pub push_replies: u64,
    pub redials: u64,
    pub redial_failed: u64,
    pub rejoined: u64,
    pub gave_up: u64,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, t: Totals) {
        self.joined += t.joined;
        self.failed += t.failed;
        self.dropped += t.dropped;
        self.hb_sent += t.hb_sent;
        self.hb_replies += t.hb_replies;
        self.hb_skipped += t.hb_skipped;
        self.delivered += t.delivered;
        self.pushes += t.pushes;
        self.push_replies += t.push_replies;
    }
}

/// Result of opening connections.
pub struct Ramp {
    pub joined: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

impl Fleet {
    pub fn new(server: &Server, threads: usize, inflight: usize) -> Fleet {
        let proto = match server.kind {
            crate::target::Kind::Phoenix => Proto::Phoenix,
            crate::target::Kind::SocketIo => Proto::SocketIo,
        };
        Fleet::to(Target { proto, addr: server.ws, path: server.path.clone() }, threads, inflight)
    }

    /// A fleet whose connections open to `target` (a server this process did not start: the
    /// `cluster` generators; redialling connections may move elsewhere: `reconnect`).
    pub fn to(target: Target, threads: usize, inflight: usize) -> Fleet {
        let per = inflight.div_ceil(threads);
        let drivers = (0..threads).map(|i| driver::spawn(i, target.clone(), per)).collect();
        Fleet { drivers, opened: 0 }
    }

    fn locate(&self, global: usize) -> (&Handle, usize) {
        let n = self.drivers.len();
        (&self.drivers[global % n], global / n)
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for d in &self.drivers {
            let c = &d.counters;
            t.joined += c.joined.load(Relaxed);
            t.failed += c.failed.load(Relaxed);
            t.dropped += c.dropped.load(Relaxed);
            t.hb_sent += c.hb_sent.load(Relaxed);
            t.hb_replies += c.hb_replies.load(Relaxed);
            t.hb_skipped += c.hb_skipped.load(Relaxed);
            t.delivered += c.delivered.load(Relaxed);
            t.pushes += c.pushes.load(Relaxed);
            t.push_replies += c.push_replies.load(Relaxed);
            t.redials += c.redials.load(Relaxed);
            t.redial_failed += c.redial_failed.load(Relaxed);
            t.rejoined += c.rejoined.load(Relaxed);
            t.gave_up += c.gave_up.load(Relaxed);
        }
        t
    }

    /// Asks for `specs.len()` more connections (global indices from `self.opened` on), without
    /// waiting.
    pub fn open(&mut self, specs: Vec<ConnSpec>) -> std::ops::Range<usize> {
        self.open_with(specs, Cmd::Connect)
    }

    /// `open` for clients with several topics, connect params or phoenix.js's reconnects.
    pub fn open_clients(&mut self, clients: Vec<Client>) -> std::ops::Range<usize> {
        self.open_with(clients, Cmd::Clients)
    }

    fn open_with<T: Clone>(
        &mut self,
        items: Vec<T>,
        cmd: fn(Vec<T>) -> Cmd,
    ) -> std::ops::Range<usize> {
        let start = self.opened;
        let n = self.drivers.len();
        let mut per: Vec<Vec<T>> = vec![Vec::new(); n];
        for (i, s) in items.into_iter().enumerate() {
            per[(start + i) % n].push(s);
        }
        self.opened += per.iter().map(Vec::len).sum::<usize>();
        for (d, items) in self.drivers.iter().zip(per) {
            if !items.is_empty() {
                d.send(cmd(items));
            }
        }
        start..self.opened
    }

    /// Every connection's status, by global index.
    pub fn status(&self) -> Vec<ConnStatus> {
        let n = self.drivers.len();
        let mut per: Vec<Vec<ConnStatus>> = Vec::with_capacity(n);
        for d in &self.drivers {
            let (tx, rx) = crossbeam_channel::bounded(1);
            d.send(Cmd::Status(tx));
            per.push(rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default());
        }
        let mut all = Vec::with_capacity(self.opened);
        for g in 0..self.opened {
            match per[g % n].get(g / n) {
                Some(s) => all.push(s.clone()),
                None => break, // a driver that did not answer: the rest is unknown
            }
        }
        all
    }

    /// Opens connections up to `total`, topic of connection `i` from `topic(i)`, and waits until
    /// each is joined or failed (or `timeout`), printing progress every second.
    pub fn ramp_to(
        &mut self,
        total: usize,
        topic: impl Fn(usize) -> Arc<str>,
        label: &str,
        timeout: Duration,
    ) -> Ramp {
        let before = self.totals();
        let start = self.opened;
        let specs: Vec<ConnSpec> = (start..total.max(start))
            .map(|i| ConnSpec { topic: topic(i), small_rcvbuf: false, record: true })
            .collect();
        let want = specs.len() as u64;
        self.open(specs);
        let t0 = Instant::now();
        let mut last_print = Instant::now();
        loop {
            let t = self.totals();
            let (joined, failed) = (t.joined - before.joined, t.failed - before.failed);
            let done = joined + failed >= want;
            if done || t0.elapsed() > timeout || last_print.elapsed() >= Duration::from_secs(1) {
                let el = t0.elapsed().as_secs_f64();
                println!(
                    "  [{label}] ramp {:>6}/{want}: joined {joined}, failed {failed}, {:.0}/s, {:.1} s",
                    joined + failed,
                    joined as f64 / el.max(1e-9),
                    el
                );
                last_print = Instant::now();
            }
            if done || t0.elapsed() > timeout {
                return Ramp { joined, failed, elapsed: t0.elapsed() };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn heartbeat(&self, interval: Option<Duration>) {
        for d in &self.drivers {
            d.send(Cmd::Heartbeat(interval));
        }
    }

    pub fn push(&self, global: usize, seq: u64, pad: usize) {
        let (d, local) = self.locate(global);
        d.send(Cmd::Push { local, seq, pad });
    }

    pub fn reading(&self, global: usize, on: bool) {
        let (d, local) = self.locate(global);
        d.send(Cmd::Reading { local, on });
    }

    pub fn inspect(&self, global: usize) -> Option<ConnReport> {
        let (d, local) = self.locate(global);
        let (tx, rx) = crossbeam_channel::bounded(1);
        d.send(Cmd::Inspect { local, reply: tx });
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Takes every driver's samples since the last collect.
    pub fn collect(&self) -> Samples {
        let mut all = Samples::default();
        for d in &self.drivers {
            let (tx, rx) = crossbeam_channel::bounded(1);
            d.send(Cmd::Collect(tx));
            if let Ok(s) = rx.recv_timeout(Duration::from_secs(30)) {
                all.hb_rtt_us.extend(s.hb_rtt_us);
                all.deliveries.extend(s.deliveries);
                all.join_us.extend(s.join_us);
                for (k, v) in s.errors {
                    *all.errors.entry(k).or_default() += v;
                }
            }
        }
        all
    }

    /// Waits until `delivered` reaches `want` or `timeout` passes; returns the count reached.
    pub fn wait_delivered(&self, want: u64, timeout: Duration) -> u64 {
        let t0 = Instant::now();
        loop {
            let d = self.totals().delivered;
            if d >= want || t0.elapsed() > timeout {
                return d;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// After a run: waits until `want` deliveries, or until none arrived for `quiet`, or `max`.
    /// Deliveries still queued in the server when a run ends are late, not lost; this tells
    /// the two apart.
    pub fn wait_quiet(&self, want: u64, quiet: Duration, max: Duration) -> u64 {
        let t0 = Instant::now();
        let mut last = self.totals().delivered;
        let mut since = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let d = self.totals().delivered;
            if d >= want || t0.elapsed() > max {
                return d;
            }
            if d != last {
                last = d;
                since = Instant::now();
            } else if since.elapsed() > quiet {
                return d;
            }
        }
    }

    /// Closes every connection and stops the driver threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for d in &self.drivers {
            d.send(Cmd::Shutdown);
        }
        for d in &mut self.drivers {
            if let Some(t) = d.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prints the most common errors seen by the drivers.
pub fn print_errors(s: &Samples) {
    let mut errs: Vec<_> = s.errors.iter().collect();
    errs.sort_by(|a, b| b.1.cmp(a.1));
    for (k, v) in errs.iter().take(8) {
        println!("    client saw {v} x {k}");
    }
}
