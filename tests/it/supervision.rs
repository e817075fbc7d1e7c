//! The binary supervises its private PostgreSQL: after `kill -9` of the postmaster, `/healthz`
//! answers 503 while the database is down, the server is restarted, and REST writes work
//! again, without restarting phx-threads.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::http::{Response, read_response};
use crate::support::{EVENT_TIMEOUT, TempDir};

/// Deadline for the binary to start: initdb and the first start of the cluster.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline for the supervisor to bring PostgreSQL back (first backoff 1 s, then a start).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `phx-threads` binary on loopback ports; SIGTERM, then SIGKILL, on drop.
pub struct Binary {
    child: Child,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    /// Its stderr, when captured: everything it logged, read to the end (`stop`).
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Binary {
    /// With its own private cluster in `data_dir`; its log goes to ours.
    fn start(data_dir: &Path) -> Binary {
        let data_dir = data_dir.to_str().expect("a UTF-8 temp dir");
        Binary::start_with(&["--data-dir", data_dir], false)
    }

    /// With extra command-line `args`; `capture_stderr` keeps its log for `stop`.
    pub fn start_with(args: &[&str], capture_stderr: bool) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_phx-threads"))
            .args(["serve", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(if capture_stderr { Stdio::piped() } else { Stdio::inherit() })
            .spawn()
            .expect("spawn phx-threads");
        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut log = Vec::new();
                let _ = std::io::Read::read_to_end(&mut pipe, &mut log);
                log
            })
        });
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = crossbeam_channel::bounded(1);
        // The one line the binary prints when it serves: "phx-threads listening ws=.. http=..".
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let line = lines.find_map(|l| l.ok().filter(|l| l.contains(" http=")));
            let _ = tx.send(line);
            lines.for_each(drop);
        });
        let unbound: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut binary = Binary { child, ws: unbound, http: unbound, stderr };
        let line = rx.recv_timeout(START_TIMEOUT).ok().flatten().expect("the binary serves");
        let addr = |key: &str| line.split(key).nth(1)?.split_whitespace().next()?.parse().ok();
        binary.ws = addr("ws=").expect("a websocket address");
        binary.http = addr("http=").expect("an http address");
        binary
    }

    /// SIGTERM, waits for the exit, and returns what it logged (if captured).
    pub fn stop(mut self) -> String {
        self.terminate();
        let log = self.stderr.take().map(|t| t.join().expect("stderr reader"));
        String::from_utf8_lossy(&log.unwrap_or_default()).into_owned()
    }

    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) with kill(1): a node frozen without dying.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([&format!("-{signal}"), &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
    }

    /// SIGKILL: no shutdown code runs (the cluster tests' crashed node).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn request(&self, method: &str, path: &str, body: &str) -> Response {
        let mut tcp = TcpStream::connect_timeout(&self.http, EVENT_TIMEOUT).expect("connect");
        tcp.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(head.as_bytes()).unwrap();
        read_response(&mut tcp, false)
    }

    fn healthz(&self) -> u16 {
        self.request("GET", "/healthz", "").status
    }

    /// Polls `/healthz` until it answers `status`; each answer is a fresh observation.
    fn wait_healthz(&self, status: u16, timeout: Duration) -> Duration {
        let started = Instant::now();
        while self.healthz() != status {
            assert!(started.elapsed() < timeout, "/healthz not {status} within {timeout:?}");
            std::thread::park_timeout(Duration::from_millis(20));
        }
        started.elapsed()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn postmaster_pid(pg_data: &Path) -> String {
    let text = std::fs::read_to_string(pg_data.join("postmaster.pid")).expect("postmaster.pid");
    text.lines().next().expect("a pid line").trim().to_string()
}

#[test]
fn a_killed_private_postgres_is_restarted_and_healthz_says_503_meanwhile() {
    let dir = TempDir::new("phx-it-supervise");
    let binary = Binary::start(dir.path());
    assert_eq!(binary.healthz(), 200);
    let old_pid = postmaster_pid(&dir.path().join("pg"));

    let killed = Command::new("kill").args(["-KILL", &old_pid]).status().unwrap();
    assert!(killed.success());
    binary.wait_healthz(503, EVENT_TIMEOUT);
    let down_for = binary.wait_healthz(200, RECOVERY_TIMEOUT);
    eprintln!("PostgreSQL back {down_for:?} after /healthz first said 503");
    assert_ne!(postmaster_pid(&dir.path().join("pg")), old_pid, "a new postmaster");

    let body = r#"{"superhero":{"name":"Phoenix","location":"Lab","power":"Rebirth"}}"#;
    let created = binary.request("POST", "/api/superheroes", body);
    assert_eq!(created.status, 201, "{}", created.text());
}

/// A process stopped (SIGSTOP: a debugger, `docker pause`) and continued: its sockets' reads,
/// which have timeouts, fail with EINTR (signal(7)), which is no reason to drop a client.
#[test]
fn a_stopped_and_continued_server_keeps_its_websocket_clients() {
    let db = crate::support::pg::TestDb::new();
    let node = Binary::start_with(&["--database-url", &db.url], false);
    let topic = crate::support::unique_topic("room:sigstop");
    let mut c = crate::support::ws::WsClient::connect(node.ws, "vsn=2.0.0").expect("connect");
    let join_ref = c.join_ok(&topic);
    node.signal("STOP");
    node.signal("CONT");
    let body = serde_json::json!({ "body": "after a stop" });
    let reply = c.call(Some(&join_ref), &topic, "new_msg", body);
    assert_eq!(reply["status"], "ok", "{reply}");
}

/// SIGTERM: every client has its 1012 before any connection thread is woken, and the binary
/// then tears down at a lower priority, leaving the CPU to whoever takes its clients over
/// (the `reconnect` bench's rolling restart). The log says both.
#[test]
fn sigterm_tells_every_client_first_then_tears_down_at_a_lower_priority() {
    let node = Binary::start_with(&["--no-database"], true);
    let mut clients: Vec<_> = (0..3)
        .map(|_| crate::support::ws::WsClient::connect(node.ws, "vsn=2.0.0").expect("connect"))
        .collect();
    for c in &mut clients {
        c.join_ok(&crate::support::unique_topic("room:sigterm"));
    }
    let log = node.stop();
    for c in &mut clients {
        loop {
            match c.recv(crate::support::WAIT) {
                crate::support::ws::Event::Closed(code, _) => break assert_eq!(code, Some(1012)),
                crate::support::ws::Event::Json(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(log.contains("sent 1012 to 3 of 3 connections"), "{log}");
    let teardown = log.lines().find(|l| l.contains("teardown at nice 10")).expect(&log);
    assert!(!teardown.contains("(0 threads)"), "{teardown}");
}
