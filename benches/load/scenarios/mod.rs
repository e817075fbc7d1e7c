//! The workloads. Each starts the server(s) it needs, drives a `Fleet`, prints a table and
//! writes a CSV under the results directory.

mod cluster;
mod fanout;
mod presence;
mod reconnect;
mod rest;
mod scaling;
mod slow;
mod slowbody;
mod sustained;

use std::sync::Arc;
use std::time::Duration;

use crate::opts::Opts;
use crate::target::{self, Kind, PhoenixStart, Server};

pub type Res<T = ()> = Result<T, String>;

pub fn run(opts: &Opts) -> Res {
    println!("load: scenario {} (smoke: {}, peer: {})", opts.scenario, opts.smoke, opts.peer);
    if opts.scenario != "all" {
        machine();
    }
    match opts.scenario.as_str() {
        "scaling" => scaling::run(opts),
        "fanout" => fanout::run(opts),
        "sustained" => sustained::run(opts),
        "slow" => slow::run(opts),
        "rest" => rest::run(opts),
        "slowbody" => slowbody::run(opts),
        "presence" => presence::run(opts),
        "cluster" => cluster::run(opts),
        "reconnect" => reconnect::run(opts),
        "plot" => crate::plot::scaling(&opts.out),
        "all" => {
            let mut failed = Vec::new();
            for s in ["scaling", "fanout", "sustained", "slow", "rest", "slowbody", "presence"] {
                let mut o = opts.clone();
                o.scenario = s.into();
                if let Err(e) = run(&o) {
                    eprintln!("load: {s} failed: {e}");
                    failed.push(s);
                }
            }
            if failed.is_empty() { Ok(()) } else { Err(format!("failed: {}", failed.join(", "))) }
        }
        other => Err(format!("unknown scenario {other:?}")),
    }
}

/// What the numbers were measured on, and the OS limits that bound the thread count.
fn machine() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = mem.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    println!("machine: {cpus} CPUs ({model}), MemTotal {total} kB, Linux {}", kernel.trim());
    for (k, v) in target::limits_summary() {
        println!("  {k} = {v}");
    }
}

/// The servers a scenario runs against: phx-threads, then the peer if asked for.
pub fn kinds(opts: &Opts) -> Vec<Kind> {
    let mut k = if opts.peer_only { vec![] } else { vec![Kind::Phoenix] };
    if opts.peer {
        if which("node") {
            k.push(Kind::SocketIo);
        } else {
            println!("peer: node not found; skipping the Socket.IO peer");
        }
    }
    k
}

pub fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

pub fn start(kind: Kind, opts: &Opts, log_name: &str) -> Res<Server> {
    let s = match kind {
        Kind::Phoenix => {
            Server::phoenix(PhoenixStart { opts, database: false, log_name, args: &[] })?
        }
        Kind::SocketIo => Server::socketio(opts, log_name)?,
    };
    println!("{}: pid {} ws={}{}", kind.name(), s.pid, s.ws, s.path);
    Ok(s)
}

/// Caps `want` connections to what the OS limits allow for this server kind.
pub fn cap(kind: Kind, want: usize) -> usize {
    target::prepare_limits(want, kind == Kind::Phoenix)
}

/// The chat topic for room `i % rooms`.
pub fn room_topic(rooms: usize) -> impl Fn(usize) -> Arc<str> {
    let topics: Vec<Arc<str>> = if rooms <= 1 {
        vec![Arc::from("room:bench")]
    } else {
        (0..rooms).map(|r| Arc::from(format!("room:bench-{r}"))).collect()
    };
    move |i| topics[i % topics.len()].clone()
}

/// Ramp timeout: generous but bounded (a stuck server must not hang the bench).
pub fn ramp_timeout(conns: usize) -> Duration {
    Duration::from_secs(60 + conns as u64 / 100)
}

/// Keepalive heartbeat period outside measurement windows (phoenix.js's default).
pub const KEEPALIVE: Duration = Duration::from_secs(30);

pub fn check_alive(server: &mut Server) -> Res {
    if server.alive() {
        Ok(())
    } else {
        Err(format!("{} (pid {}) exited", server.kind.name(), server.pid))
    }
}
