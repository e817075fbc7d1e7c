//! Generator processes for the `cluster` scenario: a process may hold at most 20,000 files, so
//! 90,000 clients take several. The coordinator starts this binary again as
//! `load gen` (`Gen::spawn`), and drives its one `Fleet` with a line protocol: one command a
//! line on stdin, one reply a line on stdout (`ok ...`, `err ...`, or a JSON object).
//!
//! ```text
//! fleet <ws-addr> <threads> <inflight>   a Fleet on that node (replaces the previous one)
//! open <n> <prefix> <groups>             n more clients; client j of them joins <prefix>,
//!                                        or <prefix><j * groups / n> when groups > 0
//!                                        -> ok <first> <end> (global indices)
//! hb <secs>                              heartbeat every <secs> (0 stops)
//! push <seq> <i,j,...>                   one timed push from each listed client
//! pace <rate> <secs> <seq0> <i,j,...>    pushes at <rate>/s round-robin over the clients for
//!                                        <secs>, seq counting from <seq0> -> ok <sent>
//! totals                                 -> the Fleet's Totals as JSON
//! collect                                -> {"seq":[..],"lat_us":[..],"hb_rtt_us":[..],"errors":{..}}
//! quit
//! ```
//!
//! Latencies are comparable across processes because every body's stamp is `now_ns()`, which
//! all processes on this host share (see `main.rs`).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use serde_json::{Value, json};

use crate::driver::{ConnSpec, Target};
use crate::fleet::{Fleet, Totals};
use crate::scenarios::Res;
use crate::wire::Proto;

/// The first argument that makes this binary a generator.
pub const ARG: &str = "gen";

/// The child's side: serves commands until `quit` or the end of stdin (the coordinator gone).
pub fn main() -> i32 {
    let mut fleet: Option<Fleet> = None;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "quit" {
            break;
        }
        let reply = command(&mut fleet, &line).unwrap_or_else(|e| format!("err {e}"));
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    if let Some(f) = fleet {
        f.shutdown();
    }
    0
}

fn command(fleet: &mut Option<Fleet>, line: &str) -> Res<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let arg = |i: usize| words.get(i).copied().ok_or(format!("{line:?}: missing argument {i}"));
    if words.first() == Some(&"fleet") {
        let addr: SocketAddr = arg(1)?.parse().map_err(|e| format!("address: {e}"))?;
        let path = "/socket/websocket?vsn=2.0.0".to_string();
        let target = Target { proto: Proto::Phoenix, addr, path };
        *fleet = Some(Fleet::to(target, num(arg(2)?)?, num(arg(3)?)?));
        return Ok("ok".into());
    }
    let f = fleet.as_mut().ok_or("no fleet yet")?;
    match words.first().copied().unwrap_or("") {
        "open" => {
            let range = open(f, num(arg(1)?)?, arg(2)?, num(arg(3)?)?);
            Ok(format!("ok {} {}", range.start, range.end))
        }
        "hb" => {
            let secs: f64 = num(arg(1)?)?;
            f.heartbeat((secs > 0.0).then(|| Duration::from_secs_f64(secs)));
            Ok("ok".into())
        }
        "push" => {
            let seq = num(arg(1)?)?;
            for i in indices(arg(2)?)? {
                f.push(i, seq, 0);
            }
            Ok("ok".into())
        }
        "pace" => {
            let rate: f64 = num(arg(1)?)?;
            let secs = Duration::from_secs_f64(num(arg(2)?)?);
            let sent = pace(f, rate, secs, num(arg(3)?)?, &indices(arg(4)?)?);
            Ok(format!("ok {sent}"))
        }
        "totals" => serde_json::to_string(&f.totals()).map_err(|e| e.to_string()),
        "collect" => Ok(collect(f).to_string()),
        other => Err(format!("unknown command {other:?}")),
    }
}

fn open(f: &mut Fleet, n: usize, prefix: &str, groups: usize) -> std::ops::Range<usize> {
    let topic = |j: usize| -> Arc<str> {
        if groups == 0 {
            Arc::from(prefix)
        } else {
            Arc::from(format!("{prefix}{}", j * groups / n))
        }
    };
    let specs = (0..n).map(|j| ConnSpec { topic: topic(j), small_rcvbuf: false, record: true });
    f.open(specs.collect())
}

/// Pushes at `rate` per second for `secs`, in bursts of what is due every millisecond.
fn pace(f: &Fleet, rate: f64, secs: Duration, seq0: u64, senders: &[usize]) -> u64 {
    let t0 = Instant::now();
    let mut sent = 0u64;
    while t0.elapsed() < secs && !senders.is_empty() {
        let due = (t0.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            f.push(senders[sent as usize % senders.len()], seq0 + sent, 0);
            sent += 1;
        }
        // The pacing tick, not a synchronisation.
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}

fn collect(f: &Fleet) -> Value {
    let s = f.collect();
    let (seq, lat): (Vec<u32>, Vec<u32>) = s.deliveries.into_iter().unzip();
    json!({ "seq": seq, "lat_us": lat, "hb_rtt_us": s.hb_rtt_us, "errors": s.errors })
}

fn num<T: std::str::FromStr>(s: &str) -> Res<T> {
    s.parse().map_err(|_| format!("not a number: {s:?}"))
}

fn indices(s: &str) -> Res<Vec<usize>> {
    s.split(',').filter(|p| !p.is_empty()).map(num).collect()
}

/// What a generator's `collect` returned.
#[derive(Default)]
pub struct Collected {
    /// (seq, latency µs) per timed delivery.
    pub deliveries: Vec<(u32, u32)>,
    pub hb_rtt_us: Vec<u32>,
    pub errors: Vec<(String, u64)>,
}

/// The coordinator's handle on one generator process.
pub struct Gen {
    pub pid: u32,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Gen {
    /// Starts `load gen` (this executable), its stderr in `out/<log_name>.log`.
    pub fn spawn(out: &str, log_name: &str) -> Res<Gen> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let log_path = std::path::Path::new(out).join(format!("{log_name}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut child = Command::new(exe)
            .arg(ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn generator: {e}"))?;
        crate::target::adopt_child(child.id());
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = crossbeam_channel::bounded(16);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Gen { pid: child.id(), child, stdin, lines })
    }

    /// Sends one command and waits at most `timeout` for its reply (`err ...` is an error).
    pub fn call(&mut self, cmd: &str, timeout: Duration) -> Res<String> {
        writeln!(self.stdin, "{cmd}").map_err(|e| format!("generator {}: {e}", self.pid))?;
        self.reply(cmd, timeout)
    }

    fn reply(&mut self, cmd: &str, timeout: Duration) -> Res<String> {
        let reply = self.lines.recv_timeout(timeout).map_err(|_| {
            format!("generator {}: no reply to {cmd:.40?} within {timeout:?}", self.pid)
        })?;
        match reply.strip_prefix("err ") {
            Some(e) => Err(format!("generator {}: {cmd:.40?}: {e}", self.pid)),
            None => Ok(reply),
        }
    }

    pub fn totals(&mut self) -> Res<Totals> {
        let reply = self.call("totals", Duration::from_secs(30))?;
        serde_json::from_str(&reply).map_err(|e| format!("totals: {e}"))
    }

    pub fn collect(&mut self) -> Res<Collected> {
        let v: Value = serde_json::from_str(&self.call("collect", Duration::from_secs(60))?)
            .map_err(|e| format!("collect: {e}"))?;
        let list = |k: &str| -> Vec<u32> {
            let items = v[k].as_array().map(Vec::as_slice).unwrap_or_default();
            items.iter().map(|x| x.as_u64().unwrap_or(0) as u32).collect()
        };
        let errors = v["errors"].as_object().into_iter().flatten();
        Ok(Collected {
            deliveries: list("seq").into_iter().zip(list("lat_us")).collect(),
            hb_rtt_us: list("hb_rtt_us"),
            errors: errors.map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect(),
        })
    }
}

impl Drop for Gen {
    /// `quit` (the generator closes its clients and exits), SIGKILL after 10 s.
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return crate::target::forget_child(self.pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::target::forget_child(self.pid);
    }
}

/// Several generators, generator `g` driving clients of node `node_of[g]`.
pub struct Gens {
    pub gens: Vec<Gen>,
    pub node_of: Vec<usize>,
}

impl Gens {
    /// `count` generators, generator `g` with a fleet on `addrs[g % addrs.len()]`.
    pub fn start(
        opts: &crate::opts::Opts,
        addrs: &[SocketAddr],
        count: usize,
        label: &str,
    ) -> Res<Gens> {
        let inflight = opts.inflight.div_ceil(count).max(16);
        let mut gens = Vec::with_capacity(count);
        for g in 0..count {
            let mut child = Gen::spawn(&opts.out, &format!("{label}-gen-{g}"))?;
            let addr = addrs[g % addrs.len()];
            child.call(&format!("fleet {addr} {} {inflight}", opts.client_threads), SHORT)?;
            gens.push(child);
        }
        Ok(Gens { gens, node_of: (0..count).map(|g| g % addrs.len()).collect() })
    }

    /// Every generator's totals, in generator order.
    pub fn totals(&mut self) -> Res<Vec<Totals>> {
        self.gens.iter_mut().map(Gen::totals).collect()
    }

    /// The sum of `totals()` over the generators `which` selects.
    pub fn sum(&mut self, which: impl Fn(usize) -> bool) -> Res<Totals> {
        let mut s = Totals::default();
        for (_, t) in self.totals()?.into_iter().enumerate().filter(|(g, _)| which(*g)) {
            s += t;
        }
        Ok(s)
    }

    /// Sends `cmd(g)` to every generator (those for which it is `Some`), then waits for
    /// their replies (so they work in parallel).
    pub fn each(
        &mut self,
        cmd: impl Fn(usize) -> Option<String>,
        timeout: Duration,
    ) -> Res<Vec<Option<String>>> {
        let cmds: Vec<Option<String>> = (0..self.gens.len()).map(cmd).collect();
        for (child, c) in self.gens.iter_mut().zip(&cmds) {
            if let Some(c) = c {
                writeln!(child.stdin, "{c}")
                    .map_err(|e| format!("generator {}: {e}", child.pid))?;
            }
        }
        let mut replies = Vec::with_capacity(cmds.len());
        for (child, c) in self.gens.iter_mut().zip(&cmds) {
            replies.push(match c {
                Some(c) => Some(child.reply(c, timeout)?),
                None => None,
            });
        }
        Ok(replies)
    }

    /// Waits until `want` more clients (than `before`) joined or failed, printing progress
    /// every second; an error after `timeout`.
    pub fn wait_joined(
        &mut self,
        before: Totals,
        want: u64,
        label: &str,
        timeout: Duration,
    ) -> Res<Totals> {
        let t0 = Instant::now();
        let mut last_print = Instant::now();
        loop {
            let t = self.sum(|_| true)?;
            let (joined, failed) = (t.joined - before.joined, t.failed - before.failed);
            let done = joined + failed >= want;
            if done || last_print.elapsed() >= Duration::from_secs(1) {
                let el = t0.elapsed().as_secs_f64();
                println!(
                    "  [{label}] {:>6}/{want}: joined {joined}, failed {failed}, {:.0}/s, {el:.1} s",
                    joined + failed,
                    joined as f64 / el.max(1e-9)
                );
                last_print = Instant::now();
            }
            if done {
                return Ok(t);
            }
            crate::target::check_memory()?;
            if t0.elapsed() > timeout {
                return Err(format!(
                    "{label}: {} of {want} joined or failed after {timeout:?}",
                    joined + failed
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Bound on a reply to a command that does no waiting of its own.
pub const SHORT: Duration = Duration::from_secs(30);
