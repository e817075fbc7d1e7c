//! `scaling`: ramp joined connections through the steps; per step, connect+join rate, server
//! threads, RSS and system memory per connection, heartbeat RTT; optionally hold the top step.

use std::time::{Duration, Instant};

use super::{KEEPALIVE, Res, cap, check_alive, kinds, ramp_timeout, room_topic, start};
use crate::fleet::{Fleet, print_errors};
use crate::opts::Opts;
use crate::report::{Table, lat, ms, ratio};
use crate::target::{self, Kind};

pub const HEADERS: &[&str] = &[
    "server",
    "conns",
    "joined",
    "failed",
    "dropped",
    "join_per_s",
    "join_p99_ms",
    "syn_drops",
    "threads",
    "rss_mib",
    "rss_kib_per_conn",
    "sys_kib_per_conn",
    "cpu_s",
    "hb_n",
    "hb_p50_ms",
    "hb_p99_ms",
    "hb_max_ms",
];

pub fn run(opts: &Opts) -> Res {
    let mut table = Table::new("scaling: joined connections per step", HEADERS);
    let mut hold = Table::new(
        "scaling: hold at the top step (every 30 s)",
        &[
            "server",
            "t_s",
            "alive",
            "dropped",
            "threads",
            "rss_mib",
            "cpu_s",
            "hb_n",
            "hb_p50_ms",
            "hb_p99_ms",
            "hb_max_ms",
        ],
    );
    let mut result = Ok(());
    for kind in kinds(opts) {
        if let Err(e) = run_one(kind, opts, &mut table, &mut hold) {
            eprintln!("scaling[{}]: {e}", kind.name());
            result = Err(e);
        }
    }
    table.print();
    table.write_csv(&opts.out, "scaling").map_err(|e| e.to_string())?;
    if !hold.rows.is_empty() {
        hold.print();
        hold.write_csv(&opts.out, "scaling_hold").map_err(|e| e.to_string())?;
    }
    if opts.peer {
        ratios(&table, &opts.out);
    }
    if let Err(e) = crate::plot::scaling(&opts.out) {
        eprintln!("plot: {e}");
    }
    result
}

fn run_one(kind: Kind, opts: &Opts, table: &mut Table, hold: &mut Table) -> Res {
    let top = *opts.steps.iter().max().ok_or("no steps")?;
    let top = cap(kind, top);
    let mut steps: Vec<usize> = opts.steps.iter().map(|&s| s.min(top)).collect();
    steps.dedup();
    let mut server = start(kind, opts, &format!("scaling-{}", kind.name()))?;
    let (avail0, me0) = (server.avail_before_kib, server.self_rss_before_kib);
    crate::pause(Duration::from_millis(500));
    let base = target::proc_stat(server.pid).ok_or("cannot read the server's /proc")?;
    println!("{}: idle RSS {} KiB, {} threads", kind.name(), base.rss_kib, base.threads);
    let mut fleet = Fleet::new(&server, opts.client_threads, opts.inflight);
    fleet.heartbeat(Some(KEEPALIVE));
    let topic = room_topic(opts.rooms);
    for &n in &steps {
        let label = format!("{} {n}", kind.name());
        let drops0 = target::listen_drops();
        let ramp = fleet.ramp_to(n, &topic, &label, ramp_timeout(n));
        let ramp_samples = fleet.collect();
        print_errors(&ramp_samples);
        let mut join_us = ramp_samples.join_us;
        let new = ramp.joined + ramp.failed;
        let drops = target::listen_drops() - drops0;
        check_alive(&mut server)?;
        crate::pause(Duration::from_secs(2));
        let st = target::proc_stat(server.pid).ok_or("server gone")?;
        let avail = target::mem_available_kib();
        let me = target::self_stat();
        let (hb, t) = measure_heartbeats(&fleet, opts);
        let joined = t.joined - t.dropped;
        let per = |kib: i64| {
            if joined > 0 { format!("{:.1}", kib as f64 / joined as f64) } else { "-".into() }
        };
        let sys = avail0 as i64 - avail as i64 - (me.rss_kib as i64 - me0 as i64);
        table.row(vec![
            kind.name().into(),
            n.to_string(),
            joined.to_string(),
            t.failed.to_string(),
            t.dropped.to_string(),
            format!("{:.0}", new as f64 / ramp.elapsed.as_secs_f64().max(1e-3)),
            ms(lat(&mut join_us).p99),
            drops.to_string(),
            st.threads.to_string(),
            format!("{:.1}", st.rss_kib as f64 / 1024.0),
            per(st.rss_kib as i64 - base.rss_kib as i64),
            per(sys),
            format!("{:.1}", st.cpu_s),
            hb.n.to_string(),
            ms(hb.p50),
            ms(hb.p99),
            ms(hb.max),
        ]);
        println!("  {}", table.rows.last().unwrap().join("  "));
        check_alive(&mut server)?;
    }
    if opts.hold > Duration::ZERO {
        hold_top(kind, opts, &fleet, &mut server, hold)?;
    }
    fleet.shutdown();
    server.stop();
    Ok(())
}

/// One heartbeat window at `--hb-interval`, then back to the keepalive period.
fn measure_heartbeats(fleet: &Fleet, opts: &Opts) -> (crate::report::Lat, crate::fleet::Totals) {
    fleet.collect();
    fleet.heartbeat(Some(opts.hb_interval));
    std::thread::sleep(opts.window);
    fleet.heartbeat(Some(KEEPALIVE));
    std::thread::sleep(Duration::from_millis(300));
    let mut s = fleet.collect();
    print_errors(&s);
    (lat(&mut s.hb_rtt_us), fleet.totals())
}

fn hold_top(
    kind: Kind,
    opts: &Opts,
    fleet: &Fleet,
    server: &mut crate::target::Server,
    hold: &mut Table,
) -> Res {
    println!("{}: holding for {} s", kind.name(), opts.hold.as_secs());
    let period = if opts.smoke { Duration::from_secs(1) } else { Duration::from_secs(30) };
    fleet.collect();
    fleet.heartbeat(Some(opts.hb_interval));
    let t0 = Instant::now();
    let mut next = period;
    while t0.elapsed() < opts.hold {
        let wait = next.min(opts.hold).saturating_sub(t0.elapsed());
        std::thread::sleep(wait);
        next += period;
        check_alive(server)?;
        let st = target::proc_stat(server.pid).unwrap_or_default();
        let mut s = fleet.collect();
        print_errors(&s);
        let hb = lat(&mut s.hb_rtt_us);
        let t = fleet.totals();
        hold.row(vec![
            kind.name().into(),
            format!("{:.0}", t0.elapsed().as_secs_f64()),
            (t.joined - t.dropped).to_string(),
            t.dropped.to_string(),
            st.threads.to_string(),
            format!("{:.1}", st.rss_kib as f64 / 1024.0),
            format!("{:.1}", st.cpu_s),
            hb.n.to_string(),
            ms(hb.p50),
            ms(hb.p99),
            ms(hb.max),
        ]);
        println!("  hold {}", hold.rows.last().unwrap().join("  "));
    }
    fleet.heartbeat(Some(KEEPALIVE));
    Ok(())
}

/// phx-threads vs the peer, per step both reached.
fn ratios(table: &Table, out: &str) {
    let col = |name: &str| HEADERS.iter().position(|h| *h == name).unwrap();
    let get = |server: &str, conns: &str, c: &str| -> f64 {
        table
            .rows
            .iter()
            .find(|r| r[0] == server && r[1] == conns)
            .and_then(|r| r[col(c)].parse().ok())
            .unwrap_or(f64::NAN)
    };
    let mut t = Table::new(
        "scaling: phx-threads / socketio (below 1 = phx-threads uses less / is faster)",
        &["conns", "rss_per_conn", "sys_mem_per_conn", "threads", "join_per_s", "hb_p50", "hb_p99"],
    );
    let steps: Vec<String> =
        table.rows.iter().filter(|r| r[0] == "phx-threads").map(|r| r[1].clone()).collect();
    for s in steps {
        let r = |c: &str| ratio(get("phx-threads", &s, c), get("socketio", &s, c));
        t.row(vec![
            s.clone(),
            r("rss_kib_per_conn"),
            r("sys_kib_per_conn"),
            r("threads"),
            r("join_per_s"),
            r("hb_p50_ms"),
            r("hb_p99_ms"),
        ]);
    }
    t.print();
    let _ = t.write_csv(out, "scaling_ratios");
}
