//! `slow`: the same broadcast stream twice, first to healthy subscribers only, then with one
//! extra subscriber that stops reading. Reports whether the server closed (evicted) the slow
//! one, and the healthy subscribers' latency with and without it.
//!
//! Sizing: the server evicts when a connection's outbox holds 1,024 frames, but only after the
//! kernel buffers between it and the client are full (the server's send buffer autotunes up to
//! `tcp_wmem` max, 4 MiB here). At 200 broadcasts/s of ~2 KiB that is about 15 s, so each
//! phase lasts 30 s by default.

use std::sync::Arc;
use std::time::Duration;

use super::sustained::{Drive, drive};
use super::{KEEPALIVE, Res, cap, check_alive, ramp_timeout, room_topic, start};
use crate::driver::ConnSpec;
use crate::fleet::{Fleet, print_errors};
use crate::opts::Opts;
use crate::report::{Table, ms};
use crate::target::{self, Kind};

pub fn run(opts: &Opts) -> Res {
    let subs = cap(Kind::Phoenix, opts.subscribers.unwrap_or(100));
    let rate = opts.rate.unwrap_or(200.0);
    let duration = opts.duration.unwrap_or(Duration::from_secs(30));
    let pad = opts.pad.unwrap_or(2048);
    let mut server = start(Kind::Phoenix, opts, "slow-phx-threads")?;
    let mut fleet = Fleet::new(&server, opts.client_threads, opts.inflight);
    fleet.heartbeat(Some(KEEPALIVE));
    let topic = room_topic(1);
    let ramp = fleet.ramp_to(subs, &topic, "slow", ramp_timeout(subs));
    print_errors(&fleet.collect());
    check_alive(&mut server)?;
    let subs = ramp.joined as usize;
    crate::pause(Duration::from_secs(1));

    println!(
        "slow: phase A, {rate}/s with {pad}-byte bodies to {subs} subscribers, no slow client"
    );
    let a = drive(&fleet, &server, subs, rate, duration, pad, 0);
    check_alive(&mut server)?;

    let slow = open_slow(&mut fleet, topic(0))?;
    fleet.reading(slow, false);
    let threads_before = target::proc_stat(server.pid).unwrap_or_default().threads;
    println!(
        "slow: phase B, the same with client #{slow} not reading (server threads {threads_before})"
    );
    let seq0 = a.sent + 1_000;
    let b = drive(&fleet, &server, subs, rate, duration, pad, seq0);
    check_alive(&mut server)?;
    let threads_after = target::proc_stat(server.pid).unwrap_or_default().threads;
    fleet.reading(slow, true);
    std::thread::sleep(Duration::from_secs(3));
    let rep = fleet.inspect(slow).ok_or("slow client did not report")?;
    let evicted = !rep.open;
    let frame = pad as u64 + 80;
    println!(
        "slow: client #{slow} {}; read {} KiB of ~{} KiB sent in phase B{}; server threads {threads_before} -> {threads_after}",
        if evicted { "was closed" } else { "is still open" },
        rep.bytes_read / 1024,
        b.sent * frame / 1024,
        rep.closed_by.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
    );

    let mut table = Table::new(
        format!(
            "slow: {rate}/s, {pad}-byte bodies, {subs} healthy subscribers, {} s per phase",
            duration.as_secs()
        ),
        &[
            "phase",
            "subscribers",
            "sent",
            "delivered",
            "lost",
            "late_1s",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "slow_evicted",
            "slow_closed_by",
            "p99_change_pct",
        ],
    );
    let change =
        if a.lat.p99 > 0.0 { 100.0 * (b.lat.p99 - a.lat.p99) / a.lat.p99 } else { f64::NAN };
    let row = |name: &str, d: &Drive, ev: String, by: String, ch: String| {
        vec![
            name.to_string(),
            subs.to_string(),
            d.sent.to_string(),
            d.delivered.to_string(),
            d.lost.to_string(),
            d.late.to_string(),
            ms(d.lat.p50),
            ms(d.lat.p99),
            ms(d.lat.max),
            ev,
            by,
            ch,
        ]
    };
    table.row(row("without", &a, "-".into(), "-".into(), "-".into()));
    let by = rep.closed_by.clone().unwrap_or("-".into()).replace(',', ";");
    table.row(row("with_slow", &b, evicted.to_string(), by, format!("{change:+.0}")));
    table.print();
    table.write_csv(&opts.out, "slow").map_err(|e| e.to_string())?;
    fleet.shutdown();
    server.stop();
    Ok(())
}

/// Opens the slow subscriber (small receive buffer, not counted in deliveries) and waits for it
/// to join.
fn open_slow(fleet: &mut Fleet, topic: Arc<str>) -> Res<usize> {
    let before = fleet.totals();
    let idx = fleet.open(vec![ConnSpec { topic, small_rcvbuf: true, record: false }]).start;
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        let t = fleet.totals();
        if t.joined > before.joined {
            return Ok(idx);
        }
        if t.failed > before.failed {
            return Err("slow client failed to join".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err("slow client did not join in 30 s".into())
}
