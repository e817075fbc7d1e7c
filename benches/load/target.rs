//! The process under test: starting phx-threads or the Node peer, stopping them, reading their
//! RSS, threads and CPU time from /proc, and the OS limits that bound how many threads the
//! server can have.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::opts::Opts;

/// Pids this process started, stopped on exit, on SIGINT/SIGTERM and at the deadline.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Which server a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Phoenix,
    SocketIo,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Phoenix => "phx-threads",
            Kind::SocketIo => "socketio",
        }
    }
}

pub struct Server {
    pub kind: Kind,
    pub pid: u32,
    pub ws: SocketAddr,
    /// Request path for the WebSocket upgrade.
    pub path: String,
    pub http: Option<SocketAddr>,
    /// `MemAvailable` and our own RSS just before the server was spawned (after any build).
    pub avail_before_kib: u64,
    pub self_rss_before_kib: u64,
    child: Option<Child>,
    _data_dir: Option<TempDir>,
}

/// Options for starting phx-threads.
pub struct PhoenixStart<'a> {
    pub opts: &'a Opts,
    /// With a database (the `rest` scenario): the server starts its own PostgreSQL in a temp dir.
    pub database: bool,
    pub log_name: &'a str,
    /// Appended to the command line (the cluster nodes: `--cluster --database-url ...`; with
    /// `--database-url` among them the server uses that database instead of none).
    pub args: &'a [String],
}

impl Server {
    /// `--target`/`--pid`, else a freshly built and started phx-threads.
    pub fn phoenix(s: PhoenixStart<'_>) -> Result<Server, String> {
        if let (Some(url), Some(pid)) = (&s.opts.target, s.opts.pid) {
            let (ws, path) = parse_ws_url(url)?;
            let http = s.opts.http.as_deref().map(parse_http_url).transpose()?;
            return Ok(Server {
                kind: Kind::Phoenix,
                pid,
                ws,
                path: with_vsn(&path),
                http,
                avail_before_kib: mem_available_kib(),
                self_rss_before_kib: self_stat().rss_kib,
                child: None,
                _data_dir: None,
            });
        }
        let bin = build_server()?;
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
        // The default connection cap (16,000) is below the top scaling step.
        cmd.args(["--max-connections", "25000"]);
        // The load comes from loopback addresses on one host, and `rest` measures throughput:
        // the per-address caps and the REST write budget (issue #14) are for real clients.
        cmd.args(["--ws-max-per-address", "25000", "--http-max-per-address", "4096"]);
        cmd.args(["--rest-write-rate", "0"]);
        let data_dir = if s.database {
            let d = TempDir::new("phx-bench-db")?;
            cmd.arg("--data-dir").arg(&d.0);
            Some(d)
        } else {
            if !s.args.iter().any(|a| a == "--database-url") {
                cmd.arg("--no-database");
            }
            None
        };
        cmd.args(s.args);
        let (avail_before_kib, self_rss_before_kib) = settle();
        let (child, line) = spawn_and_wait(cmd, &s.opts.out, s.log_name, "listening", 120)?;
        let ws = field(&line, "ws=").ok_or(format!("no ws= in {line:?}"))?;
        let http = field(&line, "http=");
        let pid = child.id();
        Ok(Server {
            kind: Kind::Phoenix,
            pid,
            ws,
            path: "/socket/websocket?vsn=2.0.0".into(),
            http,
            avail_before_kib,
            self_rss_before_kib,
            child: Some(child),
            _data_dir: data_dir,
        })
    }

    /// The Node Socket.IO peer from benches/peer (runs `npm ci` if node_modules is missing).
    pub fn socketio(opts: &Opts, log_name: &str) -> Result<Server, String> {
        let dir = peer_dir();
        if !dir.join("node_modules/socket.io").exists() {
            println!("peer: npm ci in {}", dir.display());
            let st = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .status()
                .map_err(|e| format!("npm: {e}"))?;
            if !st.success() {
                return Err("npm ci failed".into());
            }
        }
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("server.js")).env("PORT", "0");
        let (avail_before_kib, self_rss_before_kib) = settle();
        let (child, line) = spawn_and_wait(cmd, &opts.out, log_name, "listening", 60)?;
        let ws = field(&line, "ws=").ok_or(format!("no ws= in {line:?}"))?;
        let pid = child.id();
        Ok(Server {
            kind: Kind::SocketIo,
            pid,
            ws,
            path: "/socket.io/?EIO=4&transport=websocket".into(),
            http: None,
            avail_before_kib,
            self_rss_before_kib,
            child: Some(child),
            _data_dir: None,
        })
    }

    /// Still running (always true for a server we did not start, while its pid exists).
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => Path::new(&format!("/proc/{}", self.pid)).exists(),
        }
    }

    /// SIGKILL, no goodbye (a crashed node).
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = child.kill();
        let _ = child.wait();
        CHILDREN.lock().unwrap().retain(|&p| p != child.id());
    }

    /// SIGTERM without waiting (`stop` waits), so several servers shut down at once.
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            signal(child.id(), "TERM");
        }
    }

    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        signal(child.id(), "TERM");
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(child.try_wait(), Ok(None)) {
            eprintln!("{}: did not stop on SIGTERM in 15 s; SIGKILL", self.kind.name());
            let _ = child.kill();
            let _ = child.wait();
        }
        CHILDREN.lock().unwrap().retain(|&p| p != child.id());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Lets memory freed by a build settle, then reads the baseline for system memory per
/// connection.
fn settle() -> (u64, u64) {
    crate::pause(Duration::from_secs(2));
    (mem_available_kib(), self_stat().rss_kib)
}

fn with_vsn(path: &str) -> String {
    if path.contains("vsn=") {
        path.to_string()
    } else if path.contains('?') {
        format!("{path}&vsn=2.0.0")
    } else {
        format!("{path}?vsn=2.0.0")
    }
}

fn parse_ws_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url.strip_prefix("ws://").ok_or("--target must be a ws:// URL")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr =
        host.parse().map_err(|_| format!("--target host {host:?}: use IP:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err("--target must be a loopback address".into());
    }
    Ok((addr, if path.is_empty() { "/socket/websocket".into() } else { path.into() }))
}

fn parse_http_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url.strip_prefix("http://").ok_or("--http must be an http:// URL")?;
    let host = rest.split('/').next().unwrap_or("");
    let addr: SocketAddr =
        host.parse().map_err(|_| format!("--http host {host:?}: use IP:PORT"))?;
    if !addr.ip().is_loopback() {
        return Err("--http must be a loopback address".into());
    }
    Ok(addr)
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn peer_dir() -> PathBuf {
    repo_root().join("benches/peer")
}

/// `cargo build --release`, then the binary's path. Cargo has already built it for this bench
/// (benches get `CARGO_BIN_EXE_*`), so the build is normally a no-op.
fn build_server() -> Result<PathBuf, String> {
    let st = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["build", "--release", "--bin", "phx-threads"])
        .current_dir(repo_root())
        .status();
    let built = repo_root().join("target/release/phx-threads");
    match st {
        Ok(s) if s.success() && built.exists() => Ok(built),
        _ => {
            let fallback = PathBuf::from(env!("CARGO_BIN_EXE_phx-threads"));
            eprintln!("cargo build --release failed; using {}", fallback.display());
            Ok(fallback)
        }
    }
}

/// Spawns `cmd` in its own log file under `out/`, and waits for a stdout line containing
/// `ready` (which it returns).
fn spawn_and_wait(
    mut cmd: Command,
    out: &str,
    log_name: &str,
    ready: &str,
    timeout_s: u64,
) -> Result<(Child, String), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{out}: {e}"))?;
    let log_path = Path::new(out).join(format!("{log_name}.log"));
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    let mut child = cmd.spawn().map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
    CHILDREN.lock().unwrap().push(child.id());
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = crossbeam_channel::bounded(1);
    let ready_s = ready.to_string();
    let mut copy = std::fs::OpenOptions::new()
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(copy, "{line}");
            if line.contains(&ready_s) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(timeout_s)) {
        Ok(line) => Ok((child, line)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            Err(format!(
                "{:?} did not print {ready:?} in {timeout_s} s; log {}:\n  {}",
                cmd.get_program(),
                log_path.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            ))
        }
    }
}

/// A child started elsewhere (the `cluster` generators): stopped with the others on exit.
pub fn adopt_child(pid: u32) {
    CHILDREN.lock().unwrap().push(pid);
}

/// A child that has exited and been reaped: its pid may be reused, so no signals to it.
pub fn forget_child(pid: u32) {
    CHILDREN.lock().unwrap().retain(|&p| p != pid);
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Kills whatever we started (SIGTERM, then SIGKILL after 5 s).
pub fn cleanup_children() {
    let pids: Vec<u32> = std::mem::take(&mut *CHILDREN.lock().unwrap());
    for &p in &pids {
        signal(p, "TERM");
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) && pids.iter().any(|p| running(*p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &p in &pids {
        if running(p) {
            signal(p, "KILL");
        }
    }
}

fn running(pid: u32) -> bool {
    // A zombie child (exited, not reaped) counts as stopped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// Stops children on SIGINT/SIGTERM and at the hard deadline, then exits.
pub fn install_cleanup(deadline: Duration) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!("load: signal {sig}; stopping servers");
                cleanup_children();
                std::process::exit(130);
            }
        });
    }
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("load: hard deadline of {} s reached; stopping", deadline.as_secs());
        cleanup_children();
        std::process::exit(3);
    });
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir, String> {
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            crate::now_ns()
        ));
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One reading of a process from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStat {
    pub rss_kib: u64,
    pub threads: u64,
    pub cpu_s: f64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    proc_stat_at(&format!("/proc/{pid}"))
}

/// One thread's reading (`/proc/<pid>/task/<tid>`: `/proc/<tid>` would be the whole process).
pub fn thread_stat(pid: u32, tid: u32) -> Option<ProcStat> {
    proc_stat_at(&format!("/proc/{pid}/task/{tid}"))
}

/// The CPU seconds (user + system) of process `pid` so far, from `/proc/<pid>/stat` alone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_cpu_ticks(&stat)? as f64 / clk_tck() as f64)
}

/// utime + stime (fields 14 and 15, 1-based; counted after the ")" that ends the name).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

fn proc_stat_at(dir: &str) -> Option<ProcStat> {
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let kv = |k: &str| -> Option<u64> {
        let l = status.lines().find(|l| l.starts_with(k))?;
        l[k.len()..].split_whitespace().next()?.parse().ok()
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    Some(ProcStat {
        rss_kib: kv("VmRSS:").unwrap_or(0),
        threads: kv("Threads:").unwrap_or(0),
        cpu_s: ticks as f64 / clk_tck() as f64,
    })
}

/// CPU seconds the whole machine has spent busy (not idle, not waiting for I/O), all cores.
pub fn machine_busy_s() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // Guest time is already counted in user time.
    let total: u64 = ticks.iter().take(8).sum();
    (total - idle) as f64 / clk_tck() as f64
}

fn clk_tck() -> u64 {
    static T: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

pub fn mem_available_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Below this much `MemAvailable` a run stops rather than wake the OOM killer on a shared
/// machine.
const MIN_AVAILABLE_KIB: u64 = 1536 * 1024;

/// An error once the machine is nearly out of memory.
pub fn check_memory() -> Result<(), String> {
    match mem_available_kib() {
        kib if kib < MIN_AVAILABLE_KIB => {
            Err(format!("only {} MiB of memory left; stopping the run", kib / 1024))
        }
        _ => Ok(()),
    }
}

/// `ListenOverflows` + `ListenDrops` from /proc/net/netstat: SYNs dropped because a listen
/// backlog was full (each costs the client a 1 s retransmit).
pub fn listen_drops() -> u64 {
    let s = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(h), Some(v)) = (lines.next(), lines.next()) else { return 0 };
    h.split_whitespace()
        .zip(v.split_whitespace())
        .filter(|(k, _)| *k == "ListenOverflows" || *k == "ListenDrops")
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

pub fn self_stat() -> ProcStat {
    proc_stat(std::process::id()).unwrap_or_default()
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn is_root() -> bool {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .is_some_and(|euid| euid == "0")
}

/// Threads the server needs for `conns` joined connections, with headroom.
pub fn threads_needed(conns: usize) -> u64 {
    2 * conns as u64 + 200
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, checks (as root: raises) the kernel
/// limits on threads, and returns the largest connection count this machine can hold.
pub fn prepare_limits(want_conns: usize, threads_per_conn: bool) -> usize {
    let nofile = raise_nofile();
    let max_conns = (nofile as usize).saturating_sub(64);
    if !threads_per_conn {
        return want_conns.min(max_conns);
    }
    let max_conns = max_conns.min(raise_thread_limits(threads_needed(want_conns)));
    if max_conns < want_conns {
        println!("limits: capping connections at {max_conns} (wanted {want_conns})");
    }
    want_conns.min(max_conns)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (children inherit it) and returns it.
pub fn raise_nofile() -> u64 {
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    println!("limits: RLIMIT_NOFILE soft = {nofile} (the server inherits it)");
    nofile
}

/// Checks (as root: raises) the kernel limits for `need` more threads, printing what it did;
/// returns how many connections (at two threads each) the limits it could not raise allow.
pub fn raise_thread_limits(need: u64) -> usize {
    let mut max_conns = usize::MAX;
    let used = count_threads();
    let root = is_root();
    let wanted = [
        ("kernel.pid_max", "/proc/sys/kernel/pid_max", 4_194_304u64.max(used + need + 10_000)),
        ("kernel.threads-max", "/proc/sys/kernel/threads-max", (used + need) * 2),
        ("vm.max_map_count", "/proc/sys/vm/max_map_count", 1_048_576.max(4 * need)),
    ];
    for (name, path, want) in wanted {
        let Some(cur) = read_u64(path) else { continue };
        let enough = match name {
            "vm.max_map_count" => cur >= 2 * need + 10_000,
            _ => cur >= used + need + 1_000,
        };
        if enough {
            println!("limits: {name} = {cur} (enough for {need} server threads)");
            continue;
        }
        if root && std::fs::write(path, want.to_string()).is_ok() {
            println!("limits: raised {name} {cur} -> {want}");
            continue;
        }
        println!("limits: {name} = {cur} is too low for {need} server threads; as root run:");
        println!("    sysctl -w {name}={want}");
        let fits = match name {
            "vm.max_map_count" => cur.saturating_sub(10_000) / 2,
            _ => cur.saturating_sub(used + 1_000),
        };
        max_conns = max_conns.min((fits / 3) as usize);
    }
    if let Some(pids_max) = cgroup_pids_max() {
        println!("limits: cgroup pids.max = {pids_max}");
        max_conns = max_conns.min((pids_max.saturating_sub(used + 500) / 3) as usize);
    }
    max_conns
}

fn count_threads() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| {
            let s = std::fs::read_to_string(e.path().join("status")).ok()?;
            s.lines()
                .find(|l| l.starts_with("Threads:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn cgroup_pids_max() -> Option<u64> {
    let cg = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cg.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctl, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = match ctl {
            "pids" => format!("/sys/fs/cgroup/pids{path}/pids.max"),
            "" => format!("/sys/fs/cgroup{path}/pids.max"),
            _ => continue,
        };
        if let Some(v) = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse().ok()) {
            return Some(v);
        }
    }
    None
}

/// The OS limits that bound the server's thread count, for the report.
pub fn limits_summary() -> Vec<(String, String)> {
    let f =
        |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or("?".into());
    let nproc = rlimit::getrlimit(rlimit::Resource::NPROC)
        .map(|(s, h)| format!("{s} / {h}"))
        .unwrap_or("?".into());
    let nofile = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(s, h)| format!("{s} / {h}"))
        .unwrap_or("?".into());
    vec![
        ("kernel.threads-max".into(), f("/proc/sys/kernel/threads-max")),
        ("kernel.pid_max".into(), f("/proc/sys/kernel/pid_max")),
        ("vm.max_map_count".into(), f("/proc/sys/vm/max_map_count")),
        ("RLIMIT_NPROC (ulimit -u) soft/hard".into(), nproc),
        ("RLIMIT_NOFILE (ulimit -n) soft/hard".into(), nofile),
        ("cgroup pids.max".into(), cgroup_pids_max().map_or("max".into(), |v| v.to_string())),
    ]
}
