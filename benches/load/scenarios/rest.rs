//! `rest`: closed-loop HTTP load on `/api/superheroes` (GET list, POST create, PUT update)
//! while `--subscribers` WebSocket clients joined to `superheroes:lobby` receive the `create`
//! and `update` pushes. Needs the server's database: it is started without `--no-database` and
//! with `--data-dir <tmp>` so it runs its own PostgreSQL; if that fails the scenario is skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::{KEEPALIVE, Res, check_alive, ramp_timeout};
use crate::fleet::{Fleet, print_errors};
use crate::opts::Opts;
use crate::report::{Table, lat, ms};
use crate::target::{self, PhoenixStart, Server};

/// Creates stop (and become updates) once this many heroes exist, so GET stays comparable.
const MAX_HEROES: u64 = 500;
const SEQ0: u64 = 1 << 30;

pub fn run(opts: &Opts) -> Res {
    let subs = opts.subscribers.unwrap_or(1000);
    let subs = super::cap(target::Kind::Phoenix, subs);
    let duration = opts.duration.unwrap_or(Duration::from_secs(20));
    let mut server = match Server::phoenix(PhoenixStart {
        opts,
        database: true,
        log_name: "rest-phx-threads",
        args: &[],
    }) {
        Ok(s) => s,
        Err(e) => {
            println!("rest: SKIPPED: the server could not start with its own database: {e}");
            return Ok(());
        }
    };
    let Some(http) = server.http else {
        println!("rest: SKIPPED: the server printed no http= address");
        return Ok(());
    };
    println!("phx-threads: pid {} ws={} http={http}", server.pid, server.ws);
    if let Err(e) = Http::new(http).request("GET", "/api/superheroes", None) {
        println!("rest: SKIPPED: GET /api/superheroes failed: {e}");
        return Ok(());
    }
    let mut fleet = Fleet::new(&server, opts.client_threads, opts.inflight);
    fleet.heartbeat(Some(KEEPALIVE));
    let lobby: Arc<str> = Arc::from("superheroes:lobby");
    let ramp = fleet.ramp_to(subs, |_| lobby.clone(), "rest", ramp_timeout(subs));
    print_errors(&fleet.collect());
    check_alive(&mut server)?;
    let subs = ramp.joined as usize;
    crate::pause(Duration::from_secs(1));
    fleet.collect();
    let cpu0 = target::proc_stat(server.pid).unwrap_or_default().cpu_s;
    let d0 = fleet.totals().delivered;
    let t0 = Instant::now();
    let results = load(http, opts.rest_clients, duration);
    let wall = t0.elapsed().as_secs_f64();
    let writes: u64 = results.iter().map(|r| r.writes_ok).sum();
    fleet.wait_quiet(d0 + writes * subs as u64, Duration::from_secs(3), Duration::from_secs(90));
    // CPU and push throughput over everything, including the time the pushes took to drain.
    let total = t0.elapsed().as_secs_f64();
    let cpu = target::proc_stat(server.pid).unwrap_or_default().cpu_s - cpu0;
    let s = fleet.collect();
    print_errors(&s);
    check_alive(&mut server)?;

    let mut table = Table::new(
        format!(
            "rest: {} closed-loop HTTP clients for {} s, {subs} lobby subscribers",
            opts.rest_clients,
            duration.as_secs()
        ),
        &["op", "requests", "errors", "req_per_s", "p50_ms", "p99_ms", "max_ms"],
    );
    for (i, op) in ["GET /api/superheroes", "POST /api/superheroes", "PUT /api/superheroes/:id"]
        .iter()
        .enumerate()
    {
        let mut us: Vec<u32> = results.iter().flat_map(|r| r.lat[i].iter().copied()).collect();
        let errors: u64 = results.iter().map(|r| r.errors[i]).sum();
        let n = us.len();
        let l = lat(&mut us);
        table.row(vec![
            op.to_string(),
            n.to_string(),
            errors.to_string(),
            format!("{:.0}", n as f64 / wall),
            ms(l.p50),
            ms(l.p99),
            ms(l.max),
        ]);
    }
    let mut us: Vec<u32> =
        s.deliveries.iter().filter(|d| d.0 as u64 >= SEQ0).map(|d| d.1).collect();
    let expected = writes * subs as u64;
    let l = lat(&mut us);
    table.row(vec![
        "push create/update".into(),
        us.len().to_string(),
        expected.saturating_sub(us.len() as u64).to_string() + " lost",
        format!("{:.0}", us.len() as f64 / total),
        ms(l.p50),
        ms(l.p99),
        ms(l.max),
    ]);
    table.print();
    println!(
        "server CPU {:.0}% over {total:.1} s (requests for {wall:.1} s, then the pushes drained)",
        100.0 * cpu / total
    );
    table.write_csv(&opts.out, "rest").map_err(|e| e.to_string())?;
    fleet.shutdown();
    server.stop();
    Ok(())
}

#[derive(Default)]
struct ClientResult {
    /// Latencies in µs for GET, POST, PUT.
    lat: [Vec<u32>; 3],
    errors: [u64; 3],
    writes_ok: u64,
}

fn load(addr: SocketAddr, clients: usize, duration: Duration) -> Vec<ClientResult> {
    let seq = Arc::new(AtomicU64::new(SEQ0));
    let created = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..clients.max(1))
        .map(|c| {
            let (seq, created) = (seq.clone(), created.clone());
            std::thread::spawn(move || client(addr, c, duration, &seq, &created))
        })
        .collect();
    handles.into_iter().filter_map(|h| h.join().ok()).collect()
}

fn client(
    addr: SocketAddr,
    c: usize,
    duration: Duration,
    seq: &AtomicU64,
    created: &AtomicU64,
) -> ClientResult {
    let mut r = ClientResult::default();
    let mut http = Http::new(addr);
    let mut mine: Vec<String> = Vec::new();
    let t0 = Instant::now();
    let mut i = c;
    while t0.elapsed() < duration {
        i += 1;
        let mut op = match i % 10 {
            0..=5 => 0,
            6 | 7 => 1,
            _ => 2,
        };
        if op == 1 && created.load(Relaxed) >= MAX_HEROES && !mine.is_empty() {
            op = 2;
        }
        if op == 2 && mine.is_empty() {
            op = 1;
        }
        let s = seq.fetch_add(1, Relaxed);
        let body = format!(
            r#"{{"superhero":{{"name":"bench:{s}:{}","location":"Loopback","power":"load"}}}}"#,
            crate::now_ns()
        );
        let t = Instant::now();
        let fresh = http.conn.is_none();
        let res = match op {
            0 => http.request("GET", "/api/superheroes", None),
            1 => http.request("POST", "/api/superheroes", Some(&body)),
            _ => {
                let id = &mine[i % mine.len()];
                http.request("PUT", &format!("/api/superheroes/{id}"), Some(&body))
            }
        };
        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
        if us > 2_000_000 {
            eprintln!(
                "rest: client {c}: {} took {:.1} s, started at {:.1} s{}",
                ["GET", "POST", "PUT"][op],
                us as f64 / 1e6,
                (t - t0).as_secs_f64(),
                if fresh { " on a new connection" } else { "" }
            );
        }
        match res {
            Ok((status, resp)) if (200..300).contains(&status) => {
                r.lat[op].push(us);
                if op > 0 {
                    r.writes_ok += 1;
                }
                if op == 1 {
                    created.fetch_add(1, Relaxed);
                    if let Some(id) = hero_id(&resp) {
                        mine.push(id);
                    }
                }
            }
            Ok((status, resp)) => {
                r.errors[op] += 1;
                if r.errors[op] <= 2 {
                    eprintln!(
                        "rest: {} -> {status}: {}",
                        ["GET", "POST", "PUT"][op],
                        String::from_utf8_lossy(&resp[..resp.len().min(200)])
                    );
                }
            }
            Err(e) => {
                r.errors[op] += 1;
                if r.errors[op] <= 2 {
                    eprintln!("rest: {}: {e}", ["GET", "POST", "PUT"][op]);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    r
}

pub(super) fn hero_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = v.get("data").and_then(|d| d.get("id")).or(v.get("id"))?;
    Some(match id {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// A minimal keep-alive HTTP/1.1 client (Content-Length or chunked bodies).
pub(super) struct Http {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    /// For any one read of a response.
    timeout: Duration,
}

impl Http {
    pub(super) fn new(addr: SocketAddr) -> Http {
        Http::with_timeout(addr, Duration::from_secs(30))
    }

    pub(super) fn with_timeout(addr: SocketAddr, timeout: Duration) -> Http {
        Http { addr, conn: None, timeout }
    }

    pub(super) fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let r = self.try_request(method, path, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().unwrap();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        conn.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&line))?;
        let (mut len, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').ok_or_else(|| bad(l))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => len = v.parse().ok(),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad(&line))?;
                let mut chunk = vec![0; n + 2];
                conn.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = len {
            out.resize(n, 0);
            conn.read_exact(&mut out)?;
        } else {
            conn.read_to_end(&mut out)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, out))
    }
}

fn bad(s: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad HTTP response: {s:?}"))
}
