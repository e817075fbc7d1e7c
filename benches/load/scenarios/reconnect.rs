//! `reconnect`: a rolling restart of a cluster (issue #13 item 8). N clients that behave like
//! phoenix.js after a close (`driver::Redial`: its backoff, each try to the next node of a
//! round-robin list, every channel rejoined on open) are joined on node 0, one Presence-tracked
//! `room:*` topic each (rooms of `ROOM_SIZE`); how long that first join took, and its CPU, is the
//! baseline printed before the steps. The round-robin list is a load balancer: by default the
//! one `deploy/nginx` sets up, which passes a refused connection on to the next node (`--lb
//! plain`: the client sees the refusal). Then each node in turn is sent SIGTERM (it closes every
//! socket with 1012 and says `bye`) and started again on the same port once it has exited.
//!
//! Per step: the time from the SIGTERM until every client of the stopped node is joined again
//! (and p50/p99/max per client), reconnect tries and failed tries; the time until an observer on
//! a node that stays up shows all N members again, each with exactly one meta and the moved
//! ones re-tracked; and, for receivers on the nodes that stay up, the broadcasts a publisher
//! made meanwhile (`--rate` a second) against what each received: gaps must be 0.

mod cpu;
mod witness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{KEEPALIVE, Res, cap, ramp_timeout};
use crate::cluster_env::Nodes;
use crate::driver::{Client, ConnSpec, ConnStatus, Redial, Target};
use crate::fleet::{Fleet, print_errors};
use crate::now_ns;
use crate::opts::Opts;
use crate::report::{Table, lat, ms};
use crate::target::Kind;
use crate::wire::Proto;
use witness::{Placement, Witnesses};

/// Members per chat room: each rejoin gets its room's `presence_state`, so one room of 19,000
/// would make every rejoin a megabyte (the `presence` scenario measures that case).
const ROOM_SIZE: usize = 100;
/// Receivers on each node that stays up.
const RECEIVERS_PER_NODE: usize = 2;
/// Redial bounds per outage: phoenix.js retries forever, a bench must not.
const MAX_TRIES: u32 = 30;
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// The target: every client of a 19,000-client node joined again within 3 s.
const TARGET_S: f64 = 3.0;

const HEADERS: &[&str] = &[
    "clients",
    "step",
    "node",
    "moved",
    "back_all_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "closed_p50_ms",
    "closed_max_ms",
    "not_back",
    "tries",
    "failed_tries",
    "others_dropped",
    "presence_s",
    "presence_low",
    "node_exit_s",
    "node_ready_s",
    "sent",
    "received_min",
    "gaps",
    "late",
    "duplicates",
    "cpu_s",
];

pub fn run(opts: &Opts) -> Res {
    let k = opts.nodes.unwrap_or(3).max(2);
    let title = format!("reconnect: rolling restart of {k} nodes, clients start on node 0");
    let mut table = Table::new(title, HEADERS);
    let mut failures = Vec::new();
    for &n in &opts.clients {
        let n = cap(Kind::Phoenix, n + 64).saturating_sub(64);
        let (steps, broken) = size(opts, k, n)?;
        failures.extend(broken.map(|e| format!("{n} clients: {e}")));
        for s in steps {
            println!("  {}", s.row.join("  "));
            failures
                .extend(s.problems.iter().map(|p| format!("{n} clients, node {}: {p}", s.node)));
            table.row(s.row);
        }
    }
    table.print();
    table.write_csv(&opts.out, "reconnect").map_err(|e| e.to_string())?;
    if failures.is_empty() { Ok(()) } else { Err(failures.join("; ")) }
}

/// One measured step, and what went wrong in it.
struct Step {
    node: usize,
    row: Vec<String>,
    problems: Vec<String>,
}

/// Everything a step needs besides the nodes.
struct Run<'a> {
    opts: &'a Opts,
    n: usize,
    fleet: Fleet,
    addrs: Vec<SocketAddr>,
    rooms: Vec<String>,
}

/// PostgreSQL and `k` nodes, `n` clients on node 0, then one step per node (one with --smoke).
/// A step that cannot be measured ends the size; the steps before it are kept.
fn size(opts: &Opts, k: usize, n: usize) -> Res<(Vec<Step>, Option<String>)> {
    let mut nodes = Nodes::start(opts, k, &format!("reconnect-{n}"))?;
    nodes.wait_peers(Instant::now() + Duration::from_secs(30))?;
    let addrs: Vec<SocketAddr> = (0..k).map(|i| nodes.node(i).ws).collect();
    let target = Target { proto: Proto::Phoenix, addr: addrs[0], path: nodes.node(0).path.clone() };
    let mut run = Run {
        opts,
        n,
        fleet: Fleet::to(target, opts.client_threads, opts.inflight),
        rooms: (0..n.div_ceil(ROOM_SIZE)).map(room).collect(),
        addrs,
    };
    let mut redial = Redial::new(run.addrs.clone(), MAX_TRIES, GIVE_UP_AFTER);
    redial.next_upstream = opts.lb_next_upstream;
    let redial = Arc::new(redial);
    // The first join of every client is the baseline each step's rejoin is compared with.
    let (cpu, t0) = (cpu::CpuWatch::start(cpu_groups(&nodes, None)), Instant::now());
    run.fleet.open_clients((0..n).map(|i| client(i, &redial)).collect());
    wait_ramp(&run.fleet, n)?;
    let (secs, cpu_s) = (t0.elapsed().as_secs_f64(), cpu.finish());
    println!("  [{n}] all {n} clients joined on node 0 in {secs:.2} s; CPU seconds: {cpu_s}");
    run.fleet.heartbeat(Some(KEEPALIVE));
    let steps = if opts.smoke { 1 } else { opts.restarts.unwrap_or(k).min(k) };
    let mut out = Vec::new();
    let mut broken = None;
    for node in 0..steps {
        match step(&mut run, &mut nodes, node) {
            Ok(s) => out.push(s),
            Err(e) => {
                broken = Some(format!("step {}: {e}", node + 1));
                break;
            }
        }
    }
    print_errors(&run.fleet.collect());
    run.fleet.shutdown();
    Ok((out, broken))
}

fn room(r: usize) -> String {
    format!("room:reconnect-{r}")
}

/// Client `i`: presence key `u<i>`, room `i / ROOM_SIZE`, reconnecting like phoenix.js.
fn client(i: usize, redial: &Arc<Redial>) -> Client {
    let spec = ConnSpec { topic: room(i / ROOM_SIZE).into(), small_rcvbuf: false, record: false };
    let mut c = Client::from(spec);
    c.params = Some(format!("user_id={}", key(i)).into());
    c.redial = Some(redial.clone());
    c
}

fn key(i: usize) -> String {
    format!("u{i}")
}

fn wait_ramp(fleet: &Fleet, n: usize) -> Res {
    let deadline = Instant::now() + ramp_timeout(n);
    loop {
        let t = fleet.totals();
        if t.joined as usize == n {
            return Ok(());
        }
        if t.failed > 0 || Instant::now() > deadline {
            print_errors(&fleet.collect());
            return Err(format!("ramp: {} of {n} joined, {} failed", t.joined, t.failed));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Restarts `node` while the witnesses watch from the others.
fn step(run: &mut Run<'_>, nodes: &mut Nodes, node: usize) -> Res<Step> {
    let n = run.n;
    let w = Witnesses::start(&placement(run, node), &format!("{n}-{node}"))?;
    wait_until(Duration::from_secs(30), || w.view.members() == n).map_err(|_| {
        let (shown, odd) = (w.view.members(), w.view.odd(5));
        format!("before the restart the observer shows {shown} of {n}; e.g. {odd:?}")
    })?;
    let before = run.fleet.status();
    let moved: Vec<usize> = (0..before.len())
        .filter(|&i| before[i].joined && before[i].addr == run.addrs[node])
        .collect();
    w.publish(true);
    crate::pause(Duration::from_secs(1));
    w.view.arm(n, &moved.iter().map(|&i| key(i)).collect::<Vec<_>>());
    let totals = run.fleet.totals();
    let cpu = cpu::CpuWatch::start(cpu_groups(nodes, Some(node)));
    let (t0_ns, t0) = (now_ns(), Instant::now());
    println!("  [{n}] SIGTERM node {node} ({} clients on it)", moved.len());
    // The node's stop and restart run beside the wait: with a load balancer that skips it, the
    // clients may all be back before it has even exited.
    let (exit_s, ready_s, cpu_s) = std::thread::scope(|s| -> Res<(f64, f64, String)> {
        let restart = s.spawn(|| stop_and_restart(nodes, node, t0));
        let deadline = GIVE_UP_AFTER + Duration::from_secs(10);
        let _ = wait_until(deadline.saturating_sub(t0.elapsed()), || {
            let t = run.fleet.totals();
            (t.rejoined - totals.rejoined + t.gave_up - totals.gave_up) as usize >= moved.len()
        });
        let back_s = t0.elapsed().as_secs_f64();
        let cpu_s = cpu.finish();
        println!(
            "  [{n}] CPU seconds from SIGTERM until every client was back ({back_s:.2} s): {cpu_s}"
        );
        if w.view.done_ns.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            println!("  [{n}] presence when the last client was back: {}", w.view.lacking());
        }
        let (exit_s, ready_s) =
            restart.join().map_err(|_| "the restart panicked".to_string())??;
        Ok((exit_s, ready_s, cpu_s))
    })?;
    let _ = wait_until(Duration::from_secs(30), || {
        w.check_presence();
        w.view.done_ns.load(std::sync::atomic::Ordering::Relaxed) != 0
    });
    nodes.wait_peers(Instant::now() + Duration::from_secs(30))?;
    crate::pause(Duration::from_secs(1));
    w.publish(false);
    w.drain(Duration::from_secs(15));
    let after = run.fleet.status();
    let m = Measured { t0_ns, exit_s, ready_s, moved, before, after, cpu_s };
    let s = summarize(run, node, &m, &w);
    w.stop();
    Ok(s)
}

/// SIGTERM `node`, wait for it to exit, start it again on its port: (exited, listening) in
/// seconds after `t0`.
fn stop_and_restart(nodes: &mut Nodes, node: usize, t0: Instant) -> Res<(f64, f64)> {
    nodes.stop(node);
    let exit_s = t0.elapsed().as_secs_f64();
    nodes.restart_in_place(node)?;
    Ok((exit_s, t0.elapsed().as_secs_f64()))
}

/// Publisher and observer on nodes that stay up, receivers on each of them.
fn placement(run: &Run<'_>, node: usize) -> Placement {
    let up: Vec<SocketAddr> =
        (0..run.addrs.len()).filter(|&i| i != node).map(|i| run.addrs[i]).collect();
    let receivers = up.iter().flat_map(|&a| [a; RECEIVERS_PER_NODE]).collect();
    Placement {
        publisher: up[0],
        receivers,
        observer: *up.last().expect("two nodes at least"),
        rooms: run.rooms.clone(),
        rate: run.opts.rate.unwrap_or(100.0),
    }
}

/// Polls `done` every 10 ms until it holds (`Ok`) or `max` passes (`Err`).
fn wait_until(max: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let t0 = Instant::now();
    while t0.elapsed() < max {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if done() { Ok(()) } else { Err(()) }
}

/// What a step observed besides the witnesses.
struct Measured {
    t0_ns: u64,
    exit_s: f64,
    ready_s: f64,
    moved: Vec<usize>,
    before: Vec<ConnStatus>,
    after: Vec<ConnStatus>,
    /// CPU seconds per process group from the SIGTERM until every client was back.
    cpu_s: String,
}

/// The stopped node, the nodes that stay up, PostgreSQL and this generator; without a stopped
/// node (the first joins), node 0 as `first` and the others as `up`.
fn cpu_groups(nodes: &Nodes, stopped: Option<usize>) -> Vec<(String, Vec<u32>)> {
    let (label, one) = stopped.map_or(("first", 0), |s| ("stopped", s));
    let up = (0..nodes.len()).filter(|&i| i != one).map(|i| nodes.node(i).pid).collect();
    vec![
        (label.into(), vec![nodes.node(one).pid]),
        ("up".into(), up),
        ("pg".into(), nodes.pg.pids()),
        ("generator".into(), vec![std::process::id()]),
    ]
}

fn summarize(run: &Run<'_>, node: usize, m: &Measured, w: &Witnesses) -> Step {
    let back = |s: &ConnStatus| s.joined && s.joined_at_ns > m.t0_ns;
    let mut back_us: Vec<u32> = m
        .moved
        .iter()
        .map(|&i| &m.after[i])
        .filter(|s| back(s))
        .map(|s| ((s.joined_at_ns - m.t0_ns) / 1000).min(u32::MAX as u64) as u32)
        .collect();
    let not_back = m.moved.len() - back_us.len();
    let l = lat(&mut back_us);
    let mut closed_us: Vec<u32> = m
        .moved
        .iter()
        .map(|&i| m.after[i].dropped_at_ns)
        .filter(|&t| t > m.t0_ns)
        .map(|t| ((t - m.t0_ns) / 1000).min(u32::MAX as u64) as u32)
        .collect();
    let closed = lat(&mut closed_us);
    let sum = |f: fn(&ConnStatus) -> u64| -> u64 {
        m.moved.iter().map(|&i| f(&m.after[i]) - f(&m.before[i])).sum()
    };
    let (tries, failed) = (sum(|s| s.tries), sum(|s| s.failures));
    let moved: std::collections::HashSet<usize> = m.moved.iter().copied().collect();
    let others =
        (0..m.after.len()).filter(|i| !moved.contains(i) && m.after[*i].joined_at_ns > m.t0_ns);
    let others = others.count();
    let done_ns = w.view.done_ns.load(std::sync::atomic::Ordering::Relaxed);
    let presence_s = (done_ns > 0).then(|| (done_ns - m.t0_ns) as f64 / 1e9);
    let feed = w.feed.report();
    let mut problems = Vec::new();
    if not_back > 0 {
        let gave_up = m.moved.iter().filter(|&&i| m.after[i].gave_up).count();
        problems.push(format!("{not_back} clients not joined again ({gave_up} gave up)"));
    }
    if presence_s.is_none() {
        problems.push(format!("presence shows {} of {} members", w.view.members(), run.n));
    }
    if feed.gaps > 0 || feed.late > 0 || feed.sent == 0 {
        let (gaps, late, sent) = (feed.gaps, feed.late, feed.sent);
        let detail = feed.detail.join("; ");
        problems.push(format!(
            "of {sent} broadcasts, {gaps} lost and {late} late at receivers ({detail})"
        ));
    }
    let refused = w.feed.refused.load(std::sync::atomic::Ordering::Relaxed);
    if refused > 0 {
        problems.push(format!("the publisher's node refused {refused} broadcasts"));
    }
    problems.extend(w.feed.broken.lock().iter().map(|e| format!("witness: {e}")));
    if m.moved.len() >= 19_000 && l.max / 1e3 > TARGET_S {
        println!(
            "  target missed: {} clients back in {:.2} s (> {TARGET_S} s)",
            m.moved.len(),
            l.max / 1e3
        );
    }
    let secs = |s: f64| format!("{s:.2}");
    let row = vec![
        run.n.to_string(),
        (node + 1).to_string(),
        node.to_string(),
        m.moved.len().to_string(),
        if not_back == 0 { secs(l.max / 1e3) } else { "never".into() },
        ms(l.p50),
        ms(l.p99),
        ms(l.max),
        ms(closed.p50),
        ms(closed.max),
        not_back.to_string(),
        tries.to_string(),
        failed.to_string(),
        others.to_string(),
        presence_s.map_or("never".into(), secs),
        w.view.low.load(std::sync::atomic::Ordering::Relaxed).to_string(),
        secs(m.exit_s),
        secs(m.ready_s),
        feed.sent.to_string(),
        feed.received_min.to_string(),
        feed.gaps.to_string(),
        feed.late.to_string(),
        feed.duplicates.to_string(),
        m.cpu_s.clone(),
    ];
    Step { node, row, problems }
}
