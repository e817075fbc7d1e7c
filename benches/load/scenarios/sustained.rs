//! `sustained`: `--rate` broadcasts per second to `--subscribers` for `--duration`:
//! deliveries/s, latency p50/p99, lost, late (> 1 s).

use std::time::{Duration, Instant};

use super::{KEEPALIVE, Res, cap, check_alive, ramp_timeout, room_topic, start};
use crate::fleet::{Fleet, print_errors};
use crate::opts::Opts;
use crate::report::{Table, ms};
use crate::target::{self, Kind};

pub fn run(opts: &Opts) -> Res {
    let subs = cap(Kind::Phoenix, opts.subscribers.unwrap_or(10_000));
    let duration = opts.duration.unwrap_or(Duration::from_secs(30));
    let rate = opts.rate.unwrap_or(10.0);
    let mut table = Table::new(
        format!(
            "sustained: {rate} broadcasts/s to {subs} subscribers for {} s",
            duration.as_secs_f64()
        ),
        &[
            "server",
            "subscribers",
            "rate",
            "sent",
            "expected",
            "delivered",
            "deliveries_per_s",
            "wall_s",
            "lost",
            "late_1s",
            "p50_ms",
            "p99_ms",
            "max_ms",
            "server_cpu_pct",
            "client_cpu_pct",
        ],
    );
    let mut server = start(Kind::Phoenix, opts, "sustained-phx-threads")?;
    let mut fleet = Fleet::new(&server, opts.client_threads, opts.inflight);
    fleet.heartbeat(Some(KEEPALIVE));
    let ramp = fleet.ramp_to(subs, room_topic(1), "sustained", ramp_timeout(subs));
    print_errors(&fleet.collect());
    check_alive(&mut server)?;
    let subs = ramp.joined as usize;
    crate::pause(Duration::from_secs(1));
    let r = drive(&fleet, &server, subs, rate, duration, opts.pad.unwrap_or(0), 0);
    check_alive(&mut server)?;
    table.row(vec![
        "phx-threads".into(),
        subs.to_string(),
        format!("{rate}"),
        r.sent.to_string(),
        r.expected.to_string(),
        r.delivered.to_string(),
        format!("{:.0}", r.delivered as f64 / r.wall_s.max(duration.as_secs_f64())),
        format!("{:.1}", r.wall_s),
        r.lost.to_string(),
        r.late.to_string(),
        ms(r.lat.p50),
        ms(r.lat.p99),
        ms(r.lat.max),
        format!("{:.0}", r.server_cpu_pct),
        format!("{:.0}", r.client_cpu_pct),
    ]);
    table.print();
    table.write_csv(&opts.out, "sustained").map_err(|e| e.to_string())?;
    fleet.shutdown();
    server.stop();
    Ok(())
}

pub struct Drive {
    pub sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub late: u64,
    pub lat: crate::report::Lat,
    pub server_cpu_pct: f64,
    pub client_cpu_pct: f64,
    /// From the first send to the last delivery (or the end of the wait).
    pub wall_s: f64,
}

/// Sends `rate` broadcasts per second for `duration` from rotating senders among the first
/// `subs` connections, then waits (up to 90 s, or 3 s without progress) for stragglers. Sequence numbers start at `seq0`.
pub fn drive(
    fleet: &Fleet,
    server: &target::Server,
    subs: usize,
    rate: f64,
    duration: Duration,
    pad: usize,
    seq0: u64,
) -> Drive {
    fleet.collect();
    let d0 = fleet.totals().delivered;
    let cpu0 = target::proc_stat(server.pid).unwrap_or_default().cpu_s;
    let me0 = target::self_stat().cpu_s;
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        fleet.push(i as usize % subs.max(1), seq0 + i, pad);
        if last_print.elapsed() >= Duration::from_secs(5) {
            let got = fleet.totals().delivered - d0;
            println!("  {:.0} s: sent {}, delivered {got}", t0.elapsed().as_secs_f64(), i + 1);
            last_print = Instant::now();
        }
    }
    let expected = total * subs as u64;
    // Whatever the server still has queued is late, not lost: wait for it (bounded).
    fleet.wait_quiet(d0 + expected, Duration::from_secs(3), Duration::from_secs(90));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = target::proc_stat(server.pid).unwrap_or_default().cpu_s - cpu0;
    let me = target::self_stat().cpu_s - me0;
    let s = fleet.collect();
    print_errors(&s);
    let r = super::fanout::summarize(&s.deliveries, seq0, seq0 + total, subs);
    let late = s.deliveries.iter().filter(|d| d.1 > 1_000_000).count() as u64;
    Drive {
        sent: total,
        expected,
        delivered: r.receipts,
        lost: r.lost,
        late,
        lat: r.lat,
        server_cpu_pct: 100.0 * cpu / wall,
        client_cpu_pct: 100.0 * me / wall,
        wall_s: wall,
    }
}
