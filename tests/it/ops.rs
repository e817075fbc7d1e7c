//! Issue #15, the binary as an operator runs it: `phx-threads doctor` on this machine, JSON
//! logs with the per-connection close summary and no secrets, and the `admin:stats` channel.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crossbeam_channel::{Receiver, unbounded};
use serde_json::{Value, json};

use crate::support::ws::WsClient;
use crate::support::{TestServer, WAIT, test_config};
use phx_threads::app::{self, admin_channel};

const BIN: &str = env!("CARGO_BIN_EXE_phx-threads");

#[test]
fn doctor_names_every_limit_and_the_first_to_stop_the_server() {
    let out = Command::new(BIN).args(["doctor", "--max-connections", "19000"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for limit in [
        "open files (soft)",
        "open files (hard)",
        "user processes (ulimit -u)",
        "kernel.threads-max",
        "kernel.pid_max",
        "vm.max_map_count",
        "cgroup pids.max",
        "cgroup memory.max",
        "available memory",
    ] {
        assert!(text.lines().any(|l| l.starts_with(limit)), "{limit} missing:\n{text}");
    }
    assert!(text.contains("limits for --max-connections 19000"), "{text}");
    assert!(text.contains("first to stop it: "), "{text}");
    // The child inherits our open-files limit: the doctor must show exactly it.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let soft = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let soft = soft.split_whitespace().nth(3).unwrap();
    let line = text.lines().find(|l| l.starts_with("open files (soft)")).unwrap();
    assert!(line.split_whitespace().any(|w| w == soft), "{line} vs soft limit {soft}");
}

/// The binary, with its stderr lines on a channel.
struct Served {
    child: Child,
    lines: Receiver<String>,
    ws: std::net::SocketAddr,
    http: std::net::SocketAddr,
    /// Kept open: the binary prints a second line, and a closed pipe would make it panic.
    _stdout: BufReader<std::process::ChildStdout>,
}

fn serve(extra: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--no-database", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = unbounded();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    let field = |key: &str| {
        let start = ready.find(key).unwrap_or_else(|| panic!("no {key} in {ready:?}")) + key.len();
        ready[start..].split_whitespace().next().unwrap().parse().unwrap()
    };
    Served { ws: field("ws="), http: field("http="), child, lines, _stdout: stdout }
}

/// Stderr lines until one satisfies `pred` (returned last), within `WAIT`.
fn lines_until(lines: &Receiver<String>, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_deadline(deadline) {
        let done = pred(&line);
        seen.push(line);
        if done {
            return seen;
        }
    }
    panic!("no such line within {WAIT:?}; saw:\n{}", seen.join("\n"));
}

#[test]
fn json_logs_are_one_object_per_line_with_a_close_summary_and_no_secrets() {
    let mut served = serve(&["--log-format", "json", "--log-closes", "info"]);
    let mut client = WsClient::connect(served.ws, "vsn=2.0.0&token=SECRET-TOKEN-1").unwrap();
    client.join_ok("room:logs");
    client.close();
    let mut seen = lines_until(&served.lines, |l| l.contains("connection closed"));
    let http = crate::support::http::connect(served.http, WAIT);
    let mut http = http;
    use std::io::Write;
    http.write_all(b"GET /api/superheroes?api_key=SECRET-QUERY-2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    crate::support::http::read_until_closed(&mut http);
    seen.extend(lines_until(&served.lines, |l| l.contains("/api/superheroes")));
    Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().unwrap();
    let status = served.child.wait().unwrap();
    assert!(status.success(), "exit on SIGTERM: {status:?}");
    seen.extend(served.lines.iter());

    for line in &seen {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(v[key].is_string(), "{key} missing in {line}");
        }
        assert!(!line.contains("SECRET"), "a secret reached the log: {line}");
    }
    let closed = seen.iter().map(|l| serde_json::from_str::<Value>(l).unwrap());
    let closed: Vec<Value> = closed.filter(|v| v["msg"] == "connection closed").collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0]["level"], "INFO");
    assert!(closed[0]["conn"].is_u64(), "{}", closed[0]);
    assert_eq!(closed[0]["reason"], "ClientClosed");
    let rest = seen.iter().find(|l| l.contains("/api/superheroes")).unwrap();
    assert!(rest.contains("GET /api/superheroes 503"), "{rest}");
}

#[test]
fn close_summaries_stay_below_info_by_default() {
    let mut served = serve(&[]);
    let mut client = WsClient::connect(served.ws, "vsn=2.0.0").unwrap();
    client.join_ok("room:quiet");
    client.close();
    // A REST request after the close: its line comes after any close line would have.
    let mut http = crate::support::http::connect(served.http, WAIT);
    use std::io::Write;
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    crate::support::http::read_until_closed(&mut http);
    let seen = lines_until(&served.lines, |l| l.contains("/healthz"));
    assert!(seen.iter().all(|l| !l.contains("connection closed")), "{seen:?}");
    assert!(seen.iter().any(|l| l.contains(" INFO ")), "text format by default: {seen:?}");
    let _ = served.child.kill();
    let _ = served.child.wait();
}

#[test]
fn admin_stats_is_for_loopback_or_the_token_and_pushes_snapshots() {
    let router = app::router_with_stats(None, Some(admin_channel::new_history()));
    let connect = app::connect_with_admin(None, Some("tok-123".into()));
    let ws = TestServer::with(test_config(), router, connect);
    let mut local = ws.client();
    let (_, reply) = local.join(admin_channel::TOPIC, json!({}));
    assert_eq!(reply["status"], "ok", "{reply}");
    assert!(reply["response"]["history"].is_array(), "{reply}");

    let proxied = [("x-forwarded-for", "203.0.113.9")];
    let path = "/socket/websocket?vsn=2.0.0";
    let mut remote = WsClient::connect_with(ws.addr(), path, &proxied).unwrap();
    let (_, refused) = remote.join(admin_channel::TOPIC, json!({}));
    assert_eq!(refused["response"]["reason"], "unauthorized", "{refused}");
    let wrong = "/socket/websocket?vsn=2.0.0&admin_token=tok-124";
    let mut guess = WsClient::connect_with(ws.addr(), wrong, &proxied).unwrap();
    let (_, refused) = guess.join(admin_channel::TOPIC, json!({}));
    assert_eq!(refused["response"]["reason"], "unauthorized", "{refused}");
    let right = "/socket/websocket?vsn=2.0.0&admin_token=tok-123";
    let mut admin = WsClient::connect_with(ws.addr(), right, &proxied).unwrap();
    let (_, ok) = admin.join(admin_channel::TOPIC, json!({}));
    assert_eq!(ok["status"], "ok", "{ok}");

    let history = admin_channel::new_history();
    let _ticker = admin_channel::StatsTicker::start(ws.handle().pubsub(), history.clone()).unwrap();
    let stats = admin.expect(|m| m[3] == "stats");
    // This test's own four clients are open (other tests may add theirs).
    assert!(stats[4]["connections"].as_i64().unwrap() >= 4, "{stats}");
    assert!(stats[4]["threads"].as_i64().unwrap() > 4, "{stats}");
    assert!(stats[4]["rss_bytes"].as_i64().unwrap() > 1 << 20, "{stats}");
    assert!(!history.lock().is_empty(), "the ticker keeps its history");
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// deploy/phx-threads.env is where an operator configures the service: every variable of
/// `--help` must be there (an option added without it fails here).
#[test]
fn the_deploy_environment_file_names_every_variable_of_help() {
    let env = repo_file("deploy/phx-threads.env");
    let help = phx_threads::cli::HELP;
    let vars = help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    let vars: Vec<&str> = vars.filter(|w| w.starts_with("PHX_") || *w == "DATABASE_URL").collect();
    assert!(vars.len() > 20, "{vars:?}");
    for var in vars {
        assert!(env.contains(&format!("{var}=")), "{var} is not in deploy/phx-threads.env");
    }
}

/// systemd must not SIGKILL the drain: the stop timeout outlasts the WebSocket shutdown
/// and the REST workers' bound together.
#[test]
fn the_unit_waits_longer_than_the_drain() {
    let unit = repo_file("deploy/phx-threads.service");
    let line = unit.lines().find(|l| l.starts_with("TimeoutStopSec=")).unwrap();
    let stop: u64 = line["TimeoutStopSec=".len()..].trim().parse().unwrap();
    let drain = phx_threads::Config::default().shutdown_timeout.as_secs() + 15 + 1;
    assert!(stop > drain, "TimeoutStopSec={stop} vs a drain of up to {drain} s");
    for key in ["LimitNOFILE=", "TasksMax=infinity", "Restart=on-failure", "KillSignal=SIGTERM"] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "{key} missing");
    }
}

#[test]
fn serve_warns_at_start_when_max_connections_cannot_be_reached() {
    // 100 million connections: more than any limit of this machine allows.
    let mut served = serve(&["--max-connections", "100000000", "--log-format", "json"]);
    let seen = lines_until(&served.lines, |l| l.contains("cannot be reached"));
    let warning: Value = serde_json::from_str(seen.last().unwrap()).unwrap();
    assert_eq!(warning["level"], "WARN");
    let msg = warning["msg"].as_str().unwrap();
    assert!(msg.starts_with("--max-connections 100000000 cannot be reached: "), "{msg}");
    assert!(msg.contains("phx-threads doctor"), "{msg}");
    let _ = served.child.kill();
    let _ = served.child.wait();
}
