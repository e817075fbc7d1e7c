//! `slowbody`: REST latency for a few well-behaved keep-alive clients (closed loop: GET
//! `/api/superheroes`, and POST a hero, then DELETE it unmeasured so the list stays the same
//! size) while 0, 8 and 100 other connections trickle request bodies: each declares
//! `Content-Length: 2000` and sends one byte every 2 s (issue #11: 8 of them used to hold all
//! 8 REST workers). Needs the server's database, like `rest`; skipped with a message without.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Res;
use super::rest::Http;
use crate::opts::Opts;
use crate::report::{Table, lat, ms};
use crate::target::{PhoenixStart, Server};

/// Bytes each slow body declares, and the pause between the bytes it sends.
const SLOW_DECLARED: usize = 2000;
const SLOW_EVERY: Duration = Duration::from_secs(2);
/// A well-behaved request that takes longer than this is counted as an error (timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const OPS: [&str; 2] = ["GET /api/superheroes", "POST /api/superheroes"];

pub fn run(opts: &Opts) -> Res {
    let mut server = match start(opts) {
        Ok(s) => s,
        Err(e) => {
            println!("slowbody: SKIPPED: {e}");
            return Ok(());
        }
    };
    let http = server.http.expect("start checked the http address");
    let phases: &[usize] = if opts.smoke { &[0, 8] } else { &[0, 8, 100] };
    let duration = opts.duration.unwrap_or(Duration::from_secs(10));
    let clients = opts.rest_clients.clamp(1, 4);
    let mut table = Table::new(
        format!(
            "slowbody: {clients} well-behaved REST clients for {} s per phase, while N bodies trickle (1 byte / {} s)",
            duration.as_secs(),
            SLOW_EVERY.as_secs()
        ),
        &["slow_bodies", "op", "requests", "errors", "p50_ms", "p99_ms", "max_ms"],
    );
    for &slow in phases {
        let trickler = std::thread::spawn(move || trickle(http, slow, duration));
        let results = load(http, clients, duration);
        let _ = trickler.join();
        for (op, name) in OPS.iter().enumerate() {
            let mut us: Vec<u32> = results.iter().flat_map(|r| r.lat[op].iter().copied()).collect();
            let errors: u64 = results.iter().map(|r| r.errors[op]).sum();
            let l = lat(&mut us);
            let row =
                [slow.to_string(), name.to_string(), us.len().to_string(), errors.to_string()];
            table.row(row.into_iter().chain([ms(l.p50), ms(l.p99), ms(l.max)]).collect());
        }
        super::check_alive(&mut server)?;
    }
    table.print();
    table.write_csv(&opts.out, "slowbody").map_err(|e| e.to_string())?;
    server.stop();
    Ok(())
}

/// The server with its own PostgreSQL, answering REST.
fn start(opts: &Opts) -> Result<Server, String> {
    let start = PhoenixStart { opts, database: true, log_name: "slowbody-phx-threads", args: &[] };
    let server = Server::phoenix(start).map_err(|e| format!("no server with a database: {e}"))?;
    let http = server.http.ok_or("the server printed no http= address")?;
    println!("phx-threads: pid {} http={http}", server.pid);
    Http::new(http)
        .request("GET", "/api/superheroes", None)
        .map_err(|e| format!("GET /api/superheroes failed: {e}"))?;
    Ok(server)
}

/// Keeps `n` slow bodies open for `duration`, reopening any the server closes.
fn trickle(addr: SocketAddr, n: usize, duration: Duration) {
    let until = Instant::now() + duration;
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| open_slow(addr)).collect();
    while Instant::now() < until {
        for conn in &mut conns {
            let alive = conn.as_mut().is_some_and(|s| s.write_all(b" ").is_ok());
            if !alive {
                *conn = open_slow(addr);
            }
        }
        std::thread::sleep(SLOW_EVERY.min(until.saturating_duration_since(Instant::now())));
    }
}

/// A POST whose head and first body byte are sent; the rest trickles.
fn open_slow(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    let head = format!(
        "POST /api/superheroes HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {SLOW_DECLARED}\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).ok()?;
    Some(s)
}

#[derive(Default)]
struct ClientResult {
    /// Latencies in µs of the successful GETs and POSTs.
    lat: [Vec<u32>; 2],
    errors: [u64; 2],
}

fn load(addr: SocketAddr, clients: usize, duration: Duration) -> Vec<ClientResult> {
    let handles: Vec<_> =
        (0..clients).map(|c| std::thread::spawn(move || client(addr, c, duration))).collect();
    handles.into_iter().filter_map(|h| h.join().ok()).collect()
}

/// Alternates GET and POST (each POST followed by an unmeasured DELETE) until `duration`.
fn client(addr: SocketAddr, c: usize, duration: Duration) -> ClientResult {
    let mut r = ClientResult::default();
    let mut http = Http::with_timeout(addr, REQUEST_TIMEOUT);
    let t0 = Instant::now();
    let mut i = c;
    while t0.elapsed() < duration {
        i += 1;
        let op = i % 2;
        let body = format!(
            r#"{{"superhero":{{"name":"slowbody:{c}:{i}","location":"Loopback","power":"patience"}}}}"#
        );
        let t = Instant::now();
        let res = match op {
            0 => http.request("GET", "/api/superheroes", None),
            _ => http.request("POST", "/api/superheroes", Some(&body)),
        };
        match res {
            Ok((status, resp)) if (200..300).contains(&status) => {
                r.lat[op].push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if let Some(id) = (op == 1).then(|| super::rest::hero_id(&resp)).flatten() {
                    let _ = http.request("DELETE", &format!("/api/superheroes/{id}"), None);
                }
            }
            _ => r.errors[op] += 1,
        }
    }
    r
}
