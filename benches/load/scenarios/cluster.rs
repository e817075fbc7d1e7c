//! `cluster` (issue #13): K phx-threads nodes on one throwaway PostgreSQL (`cluster_env`),
//! driven by G generator processes (`gen`), generator `g` holding its share of the clients on
//! node `g % K`.
//!
//! 1. Ramp: `--conns` clients join rooms of `--room-size`; every room spans all nodes (each
//!    generator fills room r at the same time as the others), so every broadcast crosses nodes.
//!    Why rooms and not one room of 90,000: every `room:*` member is tracked in Presence and
//!    is sent the room's state on join, so one room of N costs O(N²) bytes (about 400 GB at
//!    90,000); Phoenix's 2M-connection run had no Presence.
//! 2. Hold for `--hold-secs` with phoenix.js's 30 s heartbeats, sampling every node's RSS,
//!    threads and CPU; nothing may drop.
//! 3. Fan-out to all: each round, one member per room on node 0 pushes at the same moment,
//!    and every member of every room (all clients, on every node) times its delivery.
//! 4. Cross-node latency: `--probe-rate` broadcasts/s from node 0 on four probe rooms that
//!    have one member on every other node; latency measured there.
//! 5. The NOTIFY ceiling (`ceiling`): on fresh clusters without the held clients, with the
//!    default batch window and with the smallest, `--cluster-batch-ms 1`.

mod ceiling;

use std::time::{Duration, Instant};

use super::{KEEPALIVE, Res};
use crate::cluster_env::Nodes;
use crate::fleet::Totals;
use crate::generator::{Collected, Gens, SHORT};
use crate::opts::{ClusterOpts, Opts};
use crate::report::{Lat, Table, lat, ms};
use crate::target::{self, ProcStat};

const ROOM_PREFIX: &str = "room:c-";
pub const PROBE_PREFIX: &str = "room:probe-";
/// Probe rooms: node 0 has one sender in each, every other node one receiver.
pub const PROBE_ROOMS: usize = 4;
/// Sequence numbers per phase, so a late delivery is never counted in the wrong one.
const FANOUT_SEQ0: u64 = 1 << 20;
const PROBE_SEQ0: u64 = 1 << 24;
/// How long a fan-out round may take before the next starts (its missing receipts are lost).
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(opts: &Opts) -> Res {
    let c = &opts.cluster;
    check_limits(c)?;
    let mut summary =
        Table::new("cluster: against the targets", &["metric", "value", "target", "met"]);
    let held = held_phases(opts, &mut summary);
    if let Err(e) = &held {
        eprintln!("cluster: {e}");
    }
    let ceil = ceiling::run(opts, &mut summary);
    summary.print();
    summary.write_csv(&opts.out, "cluster").map_err(|e| e.to_string())?;
    held.and(ceil)
}

/// Fails early, and says why, when one process would need more files than it may open or
/// the kernel cannot have the threads (raising what root may raise, and printing it).
fn check_limits(c: &ClusterOpts) -> Res {
    let nofile = target::raise_nofile() as usize;
    let per_node = c.conns.div_ceil(c.nodes) + PROBE_ROOMS + 200;
    let per_gen = c.conns.div_ceil(c.generators()) + PROBE_ROOMS + 64;
    if per_node > nofile || per_gen > nofile {
        return Err(format!(
            "{} clients need {per_node} files per node and {per_gen} per generator, more than the \
             {nofile} a process may open here: use more --nodes / --generators",
            c.conns
        ));
    }
    let fits = target::raise_thread_limits(target::threads_needed(c.conns));
    if fits < c.conns {
        return Err(format!(
            "the kernel's thread limits allow {fits} connections, not {}",
            c.conns
        ));
    }
    for (k, v) in target::limits_summary() {
        println!("  {k} = {v}");
    }
    Ok(())
}

/// The running cluster with its held clients.
struct Held {
    nodes: Nodes,
    gens: Gens,
    idle: Vec<ProcStat>,
    /// Generator 0's client for each room (the fan-out senders), and for each probe room.
    room_senders: Vec<usize>,
    probe_senders: Vec<usize>,
    /// Probe clients in all (senders and receivers).
    probes: usize,
    rooms: usize,
    hb_rtt_us: Vec<u32>,
}

fn held_phases(opts: &Opts, summary: &mut Table) -> Res {
    let c = &opts.cluster;
    let mut h = start(opts)?;
    let t = ramp(&mut h, opts, summary)?;
    let mut hold = Table::new("cluster: hold (every sample)", HOLD_HEADERS);
    let res = hold_for(&mut h, c.hold, &mut hold, t);
    hold.print();
    hold.write_csv(&opts.out, "cluster_hold").map_err(|e| e.to_string())?;
    res?;
    hold_summary(&mut h, summary, t)?;
    node_table(&mut h, opts)?;
    fan_out(&mut h, c.rounds.unwrap_or(5), summary)?;
    probe(&mut h, c, summary)?;
    let end = h.gens.sum(|_| true)?;
    let dropped = end.dropped.to_string();
    summary.row(vec!["dropped, whole run".into(), dropped, "0".into(), met(end.dropped == 0)]);
    let peers =
        (0..h.nodes.len()).map(|i| h.nodes.peers(i).map(|p| p.len())).collect::<Res<Vec<_>>>()?;
    let all = peers.iter().all(|&n| n + 1 == h.nodes.len());
    summary.row(vec![
        "peers seen at the end".into(),
        format!("{peers:?}"),
        "K-1 each".into(),
        met(all),
    ]);
    let (down, silent) = flaps(&opts.out, "cluster", c.nodes);
    let v = format!("{down} 'node is down' and {silent} 'replica silent' log lines over all nodes");
    summary.row(vec!["live nodes taken for dead".into(), v, "0".into(), met(down + silent == 0)]);
    Ok(())
}

/// Times a node took another, live one for dead (membership, and Presence's replicas), from
/// the nodes' logs: no node stops during the held phases, so every one is false.
fn flaps(out: &str, prefix: &str, k: usize) -> (usize, usize) {
    let logs = (0..k).map(|i| std::fs::read_to_string(format!("{out}/{prefix}-node-{i}.log")));
    let logs: Vec<String> = logs.map(Result::unwrap_or_default).collect();
    let count = |what: &str| logs.iter().map(|l| l.matches(what).count()).sum::<usize>();
    (count("is down (silent for"), count("; its presences leave"))
}

fn start(opts: &Opts) -> Res<Held> {
    let c = &opts.cluster;
    let mut nodes = Nodes::start_with(opts, c.nodes, "cluster", &node_args(c, &[]))?;
    nodes.wait_peers(Instant::now() + Duration::from_secs(60))?;
    let idle =
        (0..c.nodes).map(|i| target::proc_stat(nodes.node(i).pid).unwrap_or_default()).collect();
    let addrs: Vec<_> = (0..c.nodes).map(|i| nodes.node(i).ws).collect();
    let gens = Gens::start(opts, &addrs, c.generators(), "cluster")?;
    let rooms = (c.conns / c.room_size).max(1);
    let h = Held {
        nodes,
        gens,
        idle,
        room_senders: Vec::new(),
        probe_senders: Vec::new(),
        probes: 0,
        rooms,
        hb_rtt_us: Vec::new(),
    };
    Ok(h)
}

/// What every node gets besides `--cluster`: no per-client message budget (probes and
/// ceilings push thousands a second from a few clients; the budget is for real users), then
/// `extra`, then `--node-arg`s.
pub fn node_args<'a>(c: &'a ClusterOpts, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--messages-per-sec", "0"];
    args.extend(extra);
    args.extend(c.node_args.iter().map(String::as_str));
    args
}

/// Clients per generator: `total` split as evenly as it goes.
fn shares(total: usize, gens: usize) -> Vec<usize> {
    (0..gens).map(|g| total / gens + usize::from(g < total % gens)).collect()
}

fn ramp(h: &mut Held, opts: &Opts, summary: &mut Table) -> Res<Totals> {
    let c = &opts.cluster;
    let shares = shares(c.conns, h.gens.gens.len());
    h.gens.each(|_| Some(format!("hb {}", KEEPALIVE.as_secs())), SHORT)?;
    let syn0 = target::listen_drops();
    let t0 = Instant::now();
    let rooms = h.rooms;
    let replies =
        h.gens.each(|g| Some(format!("open {} {ROOM_PREFIX} {rooms}", shares[g])), SHORT)?;
    let first = range(replies[0].as_deref())?.0;
    // Generator 0's client j is in room j * rooms / share: the first of each room sends.
    h.room_senders = (0..rooms).map(|r| first + (r * shares[0]).div_ceil(rooms)).collect();
    let timeout = super::ramp_timeout(c.conns) + Duration::from_secs(60);
    let t = h.gens.wait_joined(Totals::default(), c.conns as u64, "ramp", timeout)?;
    let secs = t0.elapsed().as_secs_f64();
    print_errors(h)?;
    let rate = format!(
        "{:.0}/s over {secs:.0} s; {} SYNs dropped",
        t.joined as f64 / secs,
        target::listen_drops() - syn0
    );
    summary.row(vec![
        "joined".into(),
        format!("{} of {} ({rate})", t.joined, c.conns),
        c.conns.to_string(),
        met(t.joined == c.conns as u64),
    ]);
    open_probes(h, t)
}

/// Generator 0 opens one sender per probe room; every generator on another node one receiver.
fn open_probes(h: &mut Held, before: Totals) -> Res<Totals> {
    let on_zero: Vec<bool> = h.gens.node_of.iter().map(|&n| n == 0).collect();
    let cmd = format!("open {PROBE_ROOMS} {PROBE_PREFIX} {PROBE_ROOMS}");
    let replies = h.gens.each(|g| (g == 0 || !on_zero[g]).then(|| cmd.clone()), SHORT)?;
    let (a, b) = range(replies[0].as_deref())?;
    h.probe_senders = (a..b).collect();
    let want = replies.iter().flatten().count() * PROBE_ROOMS;
    h.probes = want;
    h.gens.wait_joined(before, want as u64, "probes", Duration::from_secs(60))
}

fn range(reply: Option<&str>) -> Res<(usize, usize)> {
    let mut w = reply.unwrap_or("").split_whitespace().skip(1);
    let mut next =
        || w.next().and_then(|v| v.parse().ok()).ok_or(format!("bad open reply {reply:?}"));
    Ok((next()?, next()?))
}

fn print_errors(h: &mut Held) -> Res {
    for c in collect_all(h)? {
        let mut errs = c.errors;
        errs.sort_by_key(|e| std::cmp::Reverse(e.1));
        for (k, v) in errs.iter().take(5) {
            println!("    client saw {v} x {k}");
        }
    }
    Ok(())
}

/// Every generator's samples; heartbeat round trips are kept for the hold's summary.
fn collect_all(h: &mut Held) -> Res<Vec<Collected>> {
    let mut all = Vec::new();
    for g in &mut h.gens.gens {
        let mut c = g.collect()?;
        h.hb_rtt_us.append(&mut c.hb_rtt_us);
        all.push(c);
    }
    Ok(all)
}

const HOLD_HEADERS: &[&str] = &[
    "t_s",
    "joined",
    "dropped",
    "hb_sent",
    "hb_replies",
    "hb_skipped",
    "rss_mib_total",
    "rss_mib_max_node",
    "threads_total",
    "nodes_cpu_cores",
    "pg_cpu_cores",
    "load1",
];

/// Holds for `hold`, sampling every 30 s (every second in smoke runs); a node that exits
/// ends it with an error.
fn hold_for(h: &mut Held, hold: Duration, table: &mut Table, at_ramp: Totals) -> Res {
    let every = if hold < Duration::from_secs(60) {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(30)
    };
    let t0 = Instant::now();
    let mut prev = (cpu_of(&nodes_pids(&h.nodes)), cpu_of(&h.nodes.pg.pids()), Instant::now());
    loop {
        let due = t0.elapsed() >= hold;
        std::thread::sleep(
            every.min(hold.saturating_sub(t0.elapsed())).max(Duration::from_millis(100)),
        );
        target::check_memory()?;
        for i in 0..h.nodes.len() {
            if !h.nodes.alive(i) {
                return Err(format!("node-{i} exited during the hold"));
            }
        }
        let t = h.gens.sum(|_| true)?;
        let stats: Vec<ProcStat> = nodes_pids(&h.nodes)
            .iter()
            .map(|&p| target::proc_stat(p).unwrap_or_default())
            .collect();
        let (cpu, pg) = (cpu_of(&nodes_pids(&h.nodes)), cpu_of(&h.nodes.pg.pids()));
        let dt = prev.2.elapsed().as_secs_f64();
        let rss: Vec<f64> = stats.iter().map(|s| s.rss_kib as f64 / 1024.0).collect();
        table.row(vec![
            format!("{:.0}", t0.elapsed().as_secs_f64()),
            t.joined.to_string(),
            (t.dropped - at_ramp.dropped).to_string(),
            t.hb_sent.to_string(),
            t.hb_replies.to_string(),
            t.hb_skipped.to_string(),
            format!("{:.0}", rss.iter().sum::<f64>()),
            format!("{:.0}", rss.iter().cloned().fold(0.0, f64::max)),
            stats.iter().map(|s| s.threads).sum::<u64>().to_string(),
            format!("{:.2}", (cpu - prev.0) / dt),
            format!("{:.2}", (pg - prev.1) / dt),
            load1(),
        ]);
        println!("  hold: {}", table.rows.last().unwrap().join(" "));
        prev = (cpu, pg, Instant::now());
        if due || t0.elapsed() >= hold {
            return Ok(());
        }
    }
}

fn nodes_pids(nodes: &Nodes) -> Vec<u32> {
    (0..nodes.len()).map(|i| nodes.node(i).pid).collect()
}

/// CPU seconds of `pids` together.
pub fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| target::proc_stat(p)).map(|s| s.cpu_s).sum()
}

fn load1() -> String {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    s.split_whitespace().next().unwrap_or("?").to_string()
}

fn hold_summary(h: &mut Held, summary: &mut Table, at_ramp: Totals) -> Res {
    let t = h.gens.sum(|_| true)?;
    collect_all(h)?;
    let hb = lat(&mut h.hb_rtt_us);
    let dropped = t.dropped - at_ramp.dropped;
    // A heartbeat with no reply by the time the next is due is skipped: that is a failure.
    let failed = t.hb_skipped;
    summary.row(vec![
        "dropped during the hold".into(),
        dropped.to_string(),
        "0".into(),
        met(dropped == 0),
    ]);
    let hbs = format!(
        "{} sent, {} replies, {failed} unanswered; RTT p50 {} p99 {} max {} ms",
        t.hb_sent,
        t.hb_replies,
        ms(hb.p50),
        ms(hb.p99),
        ms(hb.max)
    );
    summary.row(vec![
        "heartbeats during the hold".into(),
        hbs,
        "0 unanswered".into(),
        met(failed == 0),
    ]);
    Ok(())
}

/// Per node: clients, RSS (and KiB per client above the idle node), threads, CPU.
fn node_table(h: &mut Held, opts: &Opts) -> Res {
    let headers =
        &["node", "clients", "rss_mib", "idle_rss_mib", "kib_per_conn", "threads", "cpu_s"];
    let mut t = Table::new("cluster: per node after the hold", headers);
    let totals = h.gens.totals()?;
    for i in 0..h.nodes.len() {
        let clients: u64 = totals
            .iter()
            .zip(&h.gens.node_of)
            .filter(|(_, n)| **n == i)
            .map(|(t, _)| t.joined - t.dropped)
            .sum();
        let s = target::proc_stat(h.nodes.node(i).pid).unwrap_or_default();
        let idle = h.idle[i];
        let per = (s.rss_kib.saturating_sub(idle.rss_kib)) as f64 / clients.max(1) as f64;
        t.row(vec![
            format!("node-{i}"),
            clients.to_string(),
            format!("{:.0}", s.rss_kib as f64 / 1024.0),
            format!("{:.0}", idle.rss_kib as f64 / 1024.0),
            format!("{per:.1}"),
            s.threads.to_string(),
            format!("{:.1}", s.cpu_s),
        ]);
    }
    t.print();
    t.write_csv(&opts.out, "cluster_nodes").map_err(|e| e.to_string())
}

/// `rounds` rounds of one push per room from node 0 at once: every client times its receipt.
fn fan_out(h: &mut Held, rounds: usize, summary: &mut Table) -> Res {
    let receivers = h.gens.sum(|_| true)?;
    let want = receivers.joined - receivers.dropped - h.probes as u64;
    let senders = join(&h.room_senders);
    let mut round_ms = Vec::new();
    for r in 0..rounds as u64 {
        let before = h.gens.sum(|_| true)?.delivered;
        let t0 = Instant::now();
        h.gens.gens[0].call(&format!("push {} {senders}", FANOUT_SEQ0 + r), SHORT)?;
        while h.gens.sum(|_| true)?.delivered < before + want && t0.elapsed() < ROUND_TIMEOUT {
            std::thread::sleep(Duration::from_millis(10));
        }
        round_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        println!("  fan-out round {r}: {:.0} ms", round_ms.last().unwrap());
    }
    let seqs = FANOUT_SEQ0..FANOUT_SEQ0 + rounds as u64;
    let mut us = latencies(collect_all(h)?, |g| g < usize::MAX, &seqs);
    let l = lat(&mut us);
    let lost = (want * rounds as u64).saturating_sub(l.n as u64);
    let round_max = round_ms.iter().cloned().fold(0.0, f64::max);
    let v = format!(
        "{} receipts of {} ({lost} lost) in {rounds} rounds, {} rooms: p50 {} p99 {} max {} ms; slowest round {} ms",
        l.n,
        want * rounds as u64,
        h.rooms,
        ms(l.p50),
        ms(l.p99),
        ms(l.max),
        ms(round_max)
    );
    summary.row(vec![
        "fan-out to all clients".into(),
        v,
        "p99 < 2000 ms".into(),
        met(l.p99 < 2000.0 && lost == 0),
    ]);
    Ok(())
}

/// Latencies (µs) of the deliveries with a sequence number in `seqs`, on generators `which`
/// selects.
pub fn latencies(
    all: Vec<Collected>,
    which: impl Fn(usize) -> bool,
    seqs: &std::ops::Range<u64>,
) -> Vec<u32> {
    let in_range = |s: u32| seqs.contains(&u64::from(s));
    all.into_iter()
        .enumerate()
        .filter(|(g, _)| which(*g))
        .flat_map(|(_, c)| c.deliveries.into_iter().filter(|d| in_range(d.0)).map(|d| d.1))
        .collect()
}

pub fn join(ids: &[usize]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// `--probe-rate` broadcasts/s from node 0 for `--probe-secs`; latency on the other nodes.
fn probe(h: &mut Held, c: &ClusterOpts, summary: &mut Table) -> Res {
    let node_of = h.gens.node_of.clone();
    let remote = |g: usize| node_of[g] != 0;
    let (rate, secs) = (c.probe_rate, c.probe.as_secs_f64());
    let cmd = format!("pace {rate} {secs} {PROBE_SEQ0} {}", join(&h.probe_senders));
    let before = h.gens.sum(remote)?.delivered;
    let sent = sent_of(&h.gens.gens[0].call(&cmd, c.probe + SHORT)?)?;
    let receivers = node_of.iter().filter(|&&n| n != 0).count() as u64;
    let want = sent * receivers;
    let t0 = Instant::now();
    while h.gens.sum(remote)?.delivered < before + want && t0.elapsed() < ROUND_TIMEOUT {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("  probe: {sent} broadcasts sent at {rate}/s");
    let mut us = latencies(collect_all(h)?, remote, &(PROBE_SEQ0..PROBE_SEQ0 + sent));
    let l: Lat = lat(&mut us);
    let lost = want.saturating_sub(l.n as u64);
    let v = format!(
        "{sent} sent at {rate}/s, {} receipts of {want} on other nodes ({lost} lost): p50 {} p99 {} max {} ms",
        l.n,
        ms(l.p50),
        ms(l.p99),
        ms(l.max)
    );
    summary.row(vec![
        format!("cross-node latency at {rate}/s"),
        v,
        "p99 < 50 ms".into(),
        met(l.p99 < 50.0 && lost == 0),
    ]);
    Ok(())
}

pub fn sent_of(reply: &str) -> Res<u64> {
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or(format!("bad pace reply {reply:?}"))
}

pub fn met(ok: bool) -> String {
    if ok { "yes".into() } else { "**no**".into() }
}
