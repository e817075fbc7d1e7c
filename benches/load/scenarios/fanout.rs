//! `fanout`: one broadcast at a time to N subscribers of one room, `--rounds` rounds per size:
//! delivery latency over all receipts, and how many receipts never came.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{KEEPALIVE, Res, cap, check_alive, kinds, ramp_timeout, room_topic, start};
use crate::fleet::{Fleet, print_errors};
use crate::opts::Opts;
use crate::report::{Table, lat, ms, ratio};
use crate::target::{self, Kind};

const HEADERS: &[&str] = &[
    "server",
    "subscribers",
    "rounds",
    "receipts",
    "lost",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "round_p50_ms",
    "round_max_ms",
    "server_cpu_s",
];

pub fn run(opts: &Opts) -> Res {
    let mut table = Table::new("fanout: one broadcast to N subscribers", HEADERS);
    let mut result = Ok(());
    for kind in kinds(opts) {
        if let Err(e) = run_one(kind, opts, &mut table) {
            eprintln!("fanout[{}]: {e}", kind.name());
            result = Err(e);
        }
    }
    table.print();
    table.write_csv(&opts.out, "fanout").map_err(|e| e.to_string())?;
    if opts.scrape {
        scrape_ratios(&table, opts)?;
    }
    if opts.peer {
        let mut t = Table::new(
            "fanout: phx-threads / socketio latency",
            &["subscribers", "p50", "p99", "max"],
        );
        for r in table.rows.iter().filter(|r| r[0] == "phx-threads") {
            let peer = table.rows.iter().find(|p| p[0] == "socketio" && p[1] == r[1]);
            let f = |i: usize| {
                ratio(
                    r[i].parse().unwrap_or(f64::NAN),
                    peer.and_then(|p| p[i].parse().ok()).unwrap_or(f64::NAN),
                )
            };
            t.row(vec![r[1].clone(), f(5), f(6), f(7)]);
        }
        t.print();
        t.write_csv(&opts.out, "fanout_ratios").map_err(|e| e.to_string())?;
    }
    result
}

/// p99 with the scraper over p99 without it, per size (means of the alternating runs).
fn scrape_ratios(table: &Table, opts: &Opts) -> Res {
    let mut t = Table::new(
        "fanout: p99 with / without a /metrics scrape every second",
        &["subscribers", "p99_ms_without", "p99_ms_with", "ratio"],
    );
    let mean_p99 = |name: &str, subs: &str| {
        let v: Vec<f64> = (table.rows.iter())
            .filter(|r| r[0] == name && r[1] == subs)
            .filter_map(|r| r[6].parse().ok())
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let mut sizes: Vec<&String> = table.rows.iter().map(|r| &r[1]).collect();
    sizes.dedup();
    for subs in sizes {
        let (off, on) = (mean_p99("phx-threads", subs), mean_p99("phx-threads+scrape", subs));
        t.row(vec![subs.clone(), format!("{off:.1}"), format!("{on:.1}"), ratio(on, off)]);
    }
    t.print();
    t.write_csv(&opts.out, "fanout_scrape").map_err(|e| e.to_string())
}

fn run_one(kind: Kind, opts: &Opts, table: &mut Table) -> Res {
    let top = cap(kind, *opts.sizes.iter().max().ok_or("no sizes")?);
    let mut sizes: Vec<usize> = opts.sizes.iter().map(|&s| s.min(top)).collect();
    sizes.dedup();
    let mut server = start(kind, opts, &format!("fanout-{}", kind.name()))?;
    let mut fleet = Fleet::new(&server, opts.client_threads, opts.inflight);
    fleet.heartbeat(Some(KEEPALIVE));
    let topic = room_topic(1);
    let mut seq = 0u64;
    for &n in &sizes {
        let ramp = fleet.ramp_to(n, &topic, &format!("{} {n}", kind.name()), ramp_timeout(n));
        print_errors(&fleet.collect());
        check_alive(&mut server)?;
        let subs = (fleet.totals().joined - fleet.totals().dropped) as usize;
        if ramp.failed > 0 {
            println!("  {} connections failed to join; measuring with {subs}", ramp.failed);
        }
        crate::pause(Duration::from_secs(1));
        for scraping in scrape_phases(kind, opts) {
            let scraper = scraping.then(|| server.http.map(crate::scrape::Scraper::start));
            let name =
                if scraping { format!("{}+scrape", kind.name()) } else { kind.name().into() };
            let cpu0 = target::proc_stat(server.pid).unwrap_or_default().cpu_s;
            let pad = opts.pad.unwrap_or(0);
            let r = rounds(&fleet, subs, n, &mut seq, opts.rounds, pad, opts.smoke);
            let cpu = target::proc_stat(server.pid).unwrap_or_default().cpu_s - cpu0;
            if let Some(Some(s)) = scraper {
                println!("  scrapes during the rounds: {}", s.done.load(Ordering::Relaxed));
            }
            row(table, name, subs, opts, &r, cpu);
        }
        check_alive(&mut server)?;
    }
    fleet.shutdown();
    server.stop();
    Ok(())
}

/// Without `--scrape`, one measurement; with it, off/on twice, alternating, so drift in the
/// machine's load shows as the spread between the pairs.
fn scrape_phases(kind: Kind, opts: &Opts) -> Vec<bool> {
    match opts.scrape && kind == Kind::Phoenix {
        true => vec![false, true, false, true],
        false => vec![false],
    }
}

fn row(table: &mut Table, name: String, subs: usize, opts: &Opts, r: &Rounds, cpu: f64) {
    table.row(vec![
        name,
        subs.to_string(),
        opts.rounds.to_string(),
        r.receipts.to_string(),
        r.lost.to_string(),
        ms(r.lat.p50),
        ms(r.lat.p99),
        ms(r.lat.max),
        ms(r.round.p50),
        ms(r.round.max),
        format!("{cpu:.2}"),
    ]);
    println!("  {}", table.rows.last().unwrap().join("  "));
}

pub struct Rounds {
    pub receipts: u64,
    pub lost: u64,
    pub lat: crate::report::Lat,
    /// Per round: latency of the last receipt.
    pub round: crate::report::Lat,
}

/// `count` broadcasts, one at a time, each sent by a different one of the first `senders`
/// connections and awaited (up to a timeout) at all `subs` subscribers before the next.
pub fn rounds(
    fleet: &Fleet,
    subs: usize,
    senders: usize,
    seq: &mut u64,
    count: usize,
    pad: usize,
    smoke: bool,
) -> Rounds {
    fleet.collect();
    let mut want = fleet.totals().delivered;
    let first = *seq;
    let timeout = if smoke { Duration::from_secs(3) } else { Duration::from_secs(10) };
    for r in 0..count {
        fleet.push(r % senders.max(1), *seq, pad);
        *seq += 1;
        want += subs as u64;
        let got = fleet.wait_delivered(want, timeout);
        if got < want {
            println!(
                "  round {r}: {} of {subs} receipts after {} s",
                subs as u64 - (want - got),
                timeout.as_secs()
            );
            want = got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Stragglers of rounds that timed out still count (by sequence number) if they come.
    fleet.wait_quiet(want, Duration::from_secs(2), Duration::from_secs(60));
    let s = fleet.collect();
    print_errors(&s);
    summarize(&s.deliveries, first, *seq, subs)
}

/// Latency and loss for broadcasts `first..end`, each due at `subs` subscribers.
pub fn summarize(deliveries: &[(u32, u32)], first: u64, end: u64, subs: usize) -> Rounds {
    let mut us = Vec::with_capacity(deliveries.len());
    let mut last: HashMap<u32, u32> = HashMap::new();
    for &(s, l) in deliveries {
        if (s as u64) < first || (s as u64) >= end {
            continue;
        }
        us.push(l);
        let e = last.entry(s).or_default();
        *e = (*e).max(l);
    }
    let expected = (end - first) * subs as u64;
    let receipts = us.len() as u64;
    let mut round: Vec<u32> = last.into_values().collect();
    Rounds {
        receipts,
        lost: expected.saturating_sub(receipts),
        lat: lat(&mut us),
        round: lat(&mut round),
    }
}
