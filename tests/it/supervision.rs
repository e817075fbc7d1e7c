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

/// The `phx-threads` binary with its own private cluster; SIGTERM, then SIGKILL, on drop.
struct Binary {
    child: Child,
    http: SocketAddr,
}

impl Binary {
    fn start(data_dir: &Path) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_phx-threads"))
            .args(["serve", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn phx-threads");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = crossbeam_channel::bounded(1);
        // The one line the binary prints when it serves: "phx-threads listening ws=.. http=..".
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let line = lines.find_map(|l| l.ok().filter(|l| l.contains(" http=")));
            let _ = tx.send(line);
            lines.for_each(drop);
        });
        let mut binary = Binary { child, http: "127.0.0.1:0".parse().unwrap() };
        let line = rx.recv_timeout(START_TIMEOUT).ok().flatten().expect("the binary serves");
        let http = line.rsplit("http=").next().unwrap().trim();
        binary.http = http.parse().expect("an http address");
        binary
    }

    fn request(&self, method: &str, path: &str, body: &str) -> Response {
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
