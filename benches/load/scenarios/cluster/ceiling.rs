//! The NOTIFY ceiling: cross-node broadcasts per second stepped through `--ceiling` until the
//! other nodes fall behind, once with the default batch window (5 ms) and once with the
//! smallest the server takes, `--cluster-batch-ms 1` (it refuses 0; and even a zero window
//! would still send what queued while the previous NOTIFY ran as one), on fresh clusters that hold only the probe clients (node 0: one
//! sender per probe room; every other node: one receiver per room, so each broadcast is one
//! delivery per remote node and the clients cost little next to the relay).
//!
//! Each step records where the CPU went, from /proc: PostgreSQL as a whole and its relay and
//! listen backends (told apart by `application_name` in `pg_stat_activity`), node 0 and its
//! `cluster-relay` thread, the other nodes and their `cluster-listen` threads, the
//! generators; plus WAL syncs per second (`pg_stat_wal`: each NOTIFY commits a transaction)
//! and the NOTIFY queue's fill (`pg_notification_queue_usage()`).

use std::time::{Duration, Instant};

use super::{PROBE_PREFIX, PROBE_ROOMS, cpu_of, join, latencies, sent_of};
use crate::cluster_env::Nodes;
use crate::fleet::Totals;
use crate::generator::{Gens, SHORT};
use crate::opts::Opts;
use crate::report::{Table, lat, ms};
use crate::scenarios::Res;
use crate::target;

const SEQ0: u64 = 1 << 26;
/// A step falls behind when the other nodes get fewer than this share of what was offered.
const KEEP_UP: f64 = 0.95;
const P99_LIMIT_MS: f64 = 1000.0;

const HEADERS: &[&str] = &[
    "batch",
    "target_per_s",
    "offered_per_s",
    "notifies_per_s",
    "per_notify",
    "delivered_per_s_per_node",
    "p50_ms",
    "p99_ms",
    "lost",
    "pg_cores",
    "pg_relay_backend_cores",
    "pg_listen_backends_cores",
    "node0_cores",
    "relay_thread_cores",
    "other_nodes_cores",
    "listen_thread_cores_per_node",
    "gens_cores",
    "machine_busy_cores",
    "wal_syncs_per_s",
    "queue_usage",
    "behind",
];

pub fn run(opts: &Opts, summary: &mut Table) -> Res {
    let mut t = Table::new("cluster: cross-node broadcast ceiling (NOTIFY)", HEADERS);
    let mut res = Ok(());
    for batch in [None, Some(1)] {
        if let Err(e) = one(opts, batch, &mut t, summary) {
            eprintln!("cluster ceiling: {e}");
            res = Err(e);
        }
    }
    t.print();
    t.write_csv(&opts.out, "cluster_ceiling").map_err(|e| e.to_string())?;
    res
}

/// Whose CPU a step records: the PostgreSQL backends of the nodes' cluster connections, node
/// 0's relay thread and the other nodes' listener threads.
struct Backends {
    relay: Vec<u32>,
    listen: Vec<u32>,
    /// (pid, tid) of each.
    relay_thread: Option<(u32, u32)>,
    listen_threads: Vec<(u32, u32)>,
}

/// One cluster: start, step up, stop.
fn one(opts: &Opts, batch: Option<u32>, t: &mut Table, summary: &mut Table) -> Res {
    let c = &opts.cluster;
    let label = batch.map_or("default".to_string(), |b| format!("{b}ms"));
    let b = batch.map(|b| b.to_string());
    let extra = b.as_deref().map_or(vec![], |b| vec!["--cluster-batch-ms", b]);
    let args = super::node_args(c, &extra);
    let mut nodes = Nodes::start_with(opts, c.nodes, &format!("cluster-ceiling-{label}"), &args)?;
    nodes.wait_peers(Instant::now() + Duration::from_secs(60))?;
    let addrs: Vec<_> = (0..c.nodes).map(|i| nodes.node(i).ws).collect();
    let mut gens = Gens::start(opts, &addrs, c.nodes, &format!("cluster-ceiling-{label}"))?;
    let cmd = format!("open {PROBE_ROOMS} {PROBE_PREFIX} {PROBE_ROOMS}");
    let replies = gens.each(|_| Some(cmd.clone()), SHORT)?;
    let senders = super::range(replies[0].as_deref())?;
    let senders: Vec<usize> = (senders.0..senders.1).collect();
    let want = (PROBE_ROOMS * c.nodes) as u64;
    gens.wait_joined(Totals::default(), want, "ceiling clients", Duration::from_secs(60))?;
    let backends = backends(&nodes)?;
    let mut reached = None;
    let mut best = 0.0f64;
    for (i, &rate) in c.ceiling.iter().enumerate() {
        let seq0 = SEQ0 + ((i as u64) << 21);
        let s = Step { nodes: &nodes, gens: &mut gens, backends: &backends, senders: &senders };
        let (row, delivered, behind) = s.run(rate as f64, c.step, seq0)?;
        println!("  ceiling {label} {rate}/s: {}", row.join(" "));
        t.row([vec![label.clone()], row].concat());
        if behind {
            reached = Some(rate);
            break;
        }
        best = best.max(delivered);
    }
    let v = match reached {
        Some(r) if best > 0.0 => {
            format!("kept up to {best:.0}/s on every other node; fell behind at {r}/s")
        }
        Some(r) => format!("fell behind at the first step, {r}/s"),
        None => format!("kept up at every step ({best:.0}/s); the ceiling is higher"),
    };
    summary.row(vec![
        format!("NOTIFY ceiling, batch {label}"),
        v,
        "measured and explained".into(),
        "-".into(),
    ]);
    Ok(())
}

fn backends(nodes: &Nodes) -> Res<Backends> {
    let sql = "SELECT pid, application_name FROM pg_stat_activity \
               WHERE application_name LIKE 'phx-threads-cluster-%'";
    let rows = nodes.pg.client()?.query(sql, &[]).map_err(|e| e.to_string())?;
    let of = |name: &str| -> Vec<u32> {
        let hit = rows.iter().filter(|r| r.get::<_, Option<String>>(1).as_deref() == Some(name));
        hit.map(|r| r.get::<_, i32>(0) as u32).collect()
    };
    let others = (1..nodes.len()).filter_map(|i| thread_named(nodes.node(i).pid, "cluster-listen"));
    let b = Backends {
        relay: of("phx-threads-cluster-relay"),
        listen: of("phx-threads-cluster-listen"),
        relay_thread: thread_named(nodes.node(0).pid, "cluster-relay"),
        listen_threads: others.collect(),
    };
    println!("  postgres backends: relay {:?}, listen {:?}", b.relay, b.listen);
    Ok(b)
}

/// CPU seconds so far, per part, and the WAL sync count.
struct Cpu {
    at: Instant,
    pg: f64,
    relay_backend: f64,
    listen_backends: f64,
    node0: f64,
    relay_thread: f64,
    others: f64,
    listen_threads: f64,
    gens: f64,
    machine: f64,
    wal_syncs: f64,
}

struct Step<'a> {
    nodes: &'a Nodes,
    gens: &'a mut Gens,
    backends: &'a Backends,
    senders: &'a [usize],
}

impl Step<'_> {
    /// Pushes at `rate` for `secs`, then waits for the tail; returns the table row, the
    /// deliveries per second and node, and whether the other nodes fell behind.
    fn run(mut self, rate: f64, secs: Duration, seq0: u64) -> Res<(Vec<String>, f64, bool)> {
        let remote = |g: usize| g != 0;
        let before = self.gens.sum(remote)?.delivered;
        let relay0 = relay_counters(self.nodes)?;
        let cpu0 = self.cpu()?;
        let cmd = format!("pace {rate} {} {seq0} {}", secs.as_secs_f64(), join(self.senders));
        let sent = sent_of(&self.gens.gens[0].call(&cmd, secs + SHORT)?)?;
        let in_window = self.gens.sum(remote)?.delivered - before;
        let cpu1 = self.cpu()?;
        let relay1 = relay_counters(self.nodes)?;
        let others = (self.nodes.len() - 1) as u64;
        self.wait_tail(before + sent * others)?;
        let usage = queue_usage(self.nodes)?;
        let all = self.gens.gens.iter_mut().map(|g| g.collect()).collect::<Res<Vec<_>>>()?;
        let mut us = latencies(all, remote, &(seq0..seq0 + sent));
        let l = lat(&mut us);
        let dt = cpu1.at.duration_since(cpu0.at).as_secs_f64();
        let offered = sent as f64 / dt;
        let delivered = in_window as f64 / others as f64 / dt;
        let lost = (sent * others).saturating_sub(l.n as u64);
        let behind = delivered < KEEP_UP * offered || l.p99 > P99_LIMIT_MS || lost > 0;
        let cores = |f: fn(&Cpu) -> f64| format!("{:.2}", (f(&cpu1) - f(&cpu0)) / dt);
        let notifies = (relay1.1 - relay0.1) as f64;
        let row = vec![
            format!("{rate:.0}"),
            format!("{offered:.0}"),
            format!("{:.0}", notifies / dt),
            format!("{:.1}", (relay1.0 - relay0.0) as f64 / notifies.max(1.0)),
            format!("{delivered:.0}"),
            ms(l.p50),
            ms(l.p99),
            lost.to_string(),
            cores(|c| c.pg),
            cores(|c| c.relay_backend),
            cores(|c| c.listen_backends),
            cores(|c| c.node0),
            cores(|c| c.relay_thread),
            cores(|c| c.others),
            format!("{:.2}", (cpu1.listen_threads - cpu0.listen_threads) / dt / others as f64),
            cores(|c| c.gens),
            cores(|c| c.machine),
            format!("{:.0}", (cpu1.wal_syncs - cpu0.wal_syncs) / dt),
            format!("{usage:.4}"),
            if behind { "yes" } else { "no" }.into(),
        ];
        Ok((row, delivered, behind))
    }

    fn cpu(&self) -> Res<Cpu> {
        let n = self.nodes;
        let others: Vec<u32> = (1..n.len()).map(|i| n.node(i).pid).collect();
        let b = self.backends;
        let busiest_relay = self.backends.relay.iter().map(|&p| cpu_of(&[p])).fold(0.0, f64::max);
        Ok(Cpu {
            at: Instant::now(),
            pg: cpu_of(&n.pg.pids()),
            relay_backend: busiest_relay,
            listen_backends: cpu_of(&b.listen),
            node0: cpu_of(&[n.node(0).pid]),
            relay_thread: b.relay_thread.map_or(0.0, threads_cpu),
            others: cpu_of(&others),
            listen_threads: b.listen_threads.iter().copied().map(threads_cpu).sum(),
            gens: cpu_of(&self.gens.gens.iter().map(|g| g.pid).collect::<Vec<_>>()),
            machine: target::machine_busy_s(),
            wal_syncs: wal_syncs(n)?,
        })
    }

    /// Until the other nodes have every broadcast, or none arrived for 2 s, or 15 s.
    fn wait_tail(&mut self, want: u64) -> Res {
        let t0 = Instant::now();
        let (mut last, mut since) = (0, Instant::now());
        while t0.elapsed() < Duration::from_secs(15) {
            let d = self.gens.sum(|g| g != 0)?.delivered;
            if d >= want || since.elapsed() > Duration::from_secs(2) {
                break;
            }
            if d != last {
                (last, since) = (d, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

/// Node 0's relay counters: (broadcasts relayed, notifications sent).
fn relay_counters(nodes: &Nodes) -> Res<(u64, u64)> {
    let s = nodes.status(0)?;
    Ok((s["relayed"].as_u64().unwrap_or(0), s["notifications"].as_u64().unwrap_or(0)))
}

fn queue_usage(nodes: &Nodes) -> Res<f64> {
    let row = (nodes.pg.client()?).query_one("SELECT pg_notification_queue_usage()", &[]);
    row.map(|r| r.get(0)).map_err(|e| e.to_string())
}

fn wal_syncs(nodes: &Nodes) -> Res<f64> {
    let row = (nodes.pg.client()?).query_one("SELECT wal_sync::float8 FROM pg_stat_wal", &[]);
    row.map(|r| r.get(0)).map_err(|e| e.to_string())
}

/// The thread of `pid` called `name`, as (pid, tid).
fn thread_named(pid: u32, name: &str) -> Option<(u32, u32)> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let tid = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|tid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"));
        comm.is_ok_and(|c| c.trim() == name)
    });
    tid.map(|tid| (pid, tid))
}

fn threads_cpu((pid, tid): (u32, u32)) -> f64 {
    target::thread_stat(pid, tid).map_or(0.0, |s| s.cpu_s)
}
