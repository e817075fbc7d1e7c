//! `phx-threads doctor`: the OS limits that bound how many connections this process can hold,
//! which one stops it first, and the exact lines that raise each one too low. `serve` runs
//! the same check at start and logs a warning when `--max-connections` cannot be reached.
//!
//! `Limits::read` is the only I/O (`/proc`, `/sys/fs/cgroup`); `assess` and `report` are pure
//! and unit-tested. Costs per joined connection (ARCHITECTURE.md, "Threads and memory";
//! BENCHMARKS.md): 2 threads (socket + channel), 1 file descriptor, about 4 memory mappings per
//! thread, and 83 KiB of system memory measured at 19k idle joined connections.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Threads a joined connection costs.
pub const THREADS_PER_CONN: u64 = 2;
/// Memory mappings per thread (stack, guard page, and their neighbours).
pub const MAPS_PER_THREAD: u64 = 4;
/// System memory per idle joined connection, measured at 19k (BENCHMARKS.md).
pub const BYTES_PER_CONN: u64 = 83 * 1024;
/// What the process needs besides its connections: workers, listeners, PostgreSQL clients,
/// the registry, the writers; files for listeners, logs, the pool; mappings for the binary
/// and its libraries.
const BASE_THREADS: u64 = 64;
const BASE_FDS: u64 = 128;
const BASE_MAPS: u64 = 2048;
const BASE_BYTES: u64 = 64 << 20;

/// The limits as read; `None` is "unlimited" (or, for a cgroup, not in one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub nofile_soft: Option<u64>,
    pub nofile_hard: Option<u64>,
    pub nproc_soft: Option<u64>,
    pub threads_max: Option<u64>,
    pub pid_max: Option<u64>,
    pub max_map_count: Option<u64>,
    pub cgroup_pids_max: Option<u64>,
    pub cgroup_memory_max: Option<u64>,
    pub mem_available: Option<u64>,
}

/// One limit against what `max_connections` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    /// The limit's value as shown (`unlimited` when absent).
    pub value: String,
    /// How many joined connections it allows (`None`: no bound).
    pub allows: Option<u64>,
    /// What it takes for `max_connections`, in the limit's unit.
    pub needed: u64,
    /// The lines that raise it far enough.
    pub fix: Vec<String>,
}

impl Check {
    pub fn ok(&self, max_connections: u64) -> bool {
        self.allows.is_none_or(|a| a >= max_connections)
    }
}

/// What `max_connections` joined connections need, in each limit's unit.
struct Need {
    fds: u64,
    threads: u64,
    maps: u64,
    bytes: u64,
}

fn need(n: u64) -> Need {
    let threads = n * THREADS_PER_CONN + BASE_THREADS;
    let maps = threads * MAPS_PER_THREAD + BASE_MAPS;
    Need { fds: n + BASE_FDS, threads, maps, bytes: n * BYTES_PER_CONN + BASE_BYTES }
}

/// One limit: `base` of it goes to the process itself, `per` to each connection.
fn check(name: &'static str, value: String, limit: Option<u64>, cost: (u64, u64)) -> Check {
    let (base, per) = cost;
    let allows = limit.map(|v| v.saturating_sub(base) / per);
    Check { name, value, allows, needed: 0, fix: Vec::new() }
}

impl Check {
    fn needs(mut self, needed: u64, fix: Vec<String>) -> Check {
        self.needed = needed;
        self.fix = fix;
        self
    }
}

fn sysctl(key: &str, v: u64) -> Vec<String> {
    vec![
        format!("sysctl -w {key}={v}"),
        format!("echo '{key} = {v}' >> /etc/sysctl.d/90-phx-threads.conf"),
    ]
}

fn unit_line(line: String) -> String {
    format!("{line}    # systemd unit, [Service]")
}

/// Every limit, checked against `max_connections`.
pub fn assess(l: &Limits, max_connections: u64) -> Vec<Check> {
    let n = need(max_connections);
    let (files, threads) = ((BASE_FDS, 1), (BASE_THREADS, THREADS_PER_CONN));
    let maps = (BASE_MAPS, THREADS_PER_CONN * MAPS_PER_THREAD);
    let memory = (BASE_BYTES, BYTES_PER_CONN);
    let nofile = unit_line(format!("LimitNOFILE={}", n.fds));
    vec![
        check("open files (soft)", shown(l.nofile_soft), l.nofile_soft, files).needs(
            n.fds,
            vec![
                format!("ulimit -n {}    # in the shell that starts phx-threads", n.fds),
                nofile.clone(),
            ],
        ),
        check("open files (hard)", shown(l.nofile_hard), l.nofile_hard, files).needs(
            n.fds,
            vec![format!("echo '* hard nofile {}' >> /etc/security/limits.conf", n.fds), nofile],
        ),
        check("user processes (ulimit -u)", shown(l.nproc_soft), l.nproc_soft, threads).needs(
            n.threads,
            vec!["ulimit -u unlimited".into(), unit_line("LimitNPROC=infinity".into())],
        ),
        check("kernel.threads-max", shown(l.threads_max), l.threads_max, threads)
            .needs(n.threads, sysctl("kernel.threads-max", n.threads.max(4_194_304))),
        // 4,194,304 is the kernel's maximum pid_max.
        check("kernel.pid_max", shown(l.pid_max), l.pid_max, threads)
            .needs(n.threads, sysctl("kernel.pid_max", 4_194_304)),
        check("vm.max_map_count", shown(l.max_map_count), l.max_map_count, maps)
            .needs(n.maps, sysctl("vm.max_map_count", n.maps.max(1_048_576))),
        check("cgroup pids.max", shown(l.cgroup_pids_max), l.cgroup_pids_max, threads).needs(
            n.threads,
            vec![
                unit_line("TasksMax=infinity".into()),
                "systemctl set-property phx-threads.service TasksMax=infinity".into(),
            ],
        ),
        check("cgroup memory.max", shown_bytes(l.cgroup_memory_max), l.cgroup_memory_max, memory)
            .needs(n.bytes, vec![unit_line(format!("MemoryMax={}M", n.bytes >> 20))]),
        check("available memory", shown_bytes(l.mem_available), l.mem_available, memory).needs(
            n.bytes,
            vec![format!(
                "# add RAM (about {} MiB needed), or lower --max-connections",
                n.bytes >> 20
            )],
        ),
    ]
}

/// The check that stops the process first, if any bounds it.
pub fn first_bound(checks: &[Check]) -> Option<&Check> {
    checks.iter().filter(|c| c.allows.is_some()).min_by_key(|c| c.allows)
}

/// The doctor's printout.
pub fn report(checks: &[Check], max_connections: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "phx-threads doctor: limits for --max-connections {max_connections}");
    let _ = writeln!(
        out,
        "(each joined connection: {THREADS_PER_CONN} threads, 1 open file, \
         {MAPS_PER_THREAD} mappings per thread, ~{} KiB of memory)\n",
        BYTES_PER_CONN / 1024
    );
    let _ =
        writeln!(out, "{:<28} {:>14} {:>12} {:>12}  status", "limit", "value", "needed", "allows");
    for c in checks {
        let allows = c.allows.map_or("no bound".to_owned(), |a| a.to_string());
        let status = if c.ok(max_connections) { "ok" } else { "TOO LOW" };
        let _ =
            writeln!(out, "{:<28} {:>14} {:>12} {allows:>12}  {status}", c.name, c.value, c.needed);
    }
    out.push('\n');
    match first_bound(checks) {
        Some(c) => {
            let allows = c.allows.unwrap_or(u64::MAX);
            let _ = writeln!(out, "first to stop it: {} (about {allows} connections)", c.name);
        }
        None => out.push_str("first to stop it: nothing found; no limit bounds it\n"),
    }
    let low: Vec<&Check> = checks.iter().filter(|c| !c.ok(max_connections)).collect();
    if low.is_empty() {
        let _ = writeln!(out, "every limit allows {max_connections} connections");
    }
    for c in low {
        let _ = writeln!(out, "\nraise {}:", c.name);
        for line in &c.fix {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// The warning `serve` logs when `max_connections` cannot be reached, if it cannot.
pub fn warning(checks: &[Check], max_connections: u64) -> Option<String> {
    let c = first_bound(checks).filter(|c| !c.ok(max_connections))?;
    Some(format!(
        "--max-connections {max_connections} cannot be reached: {} ({}) allows about {} \
         joined connections; run `phx-threads doctor` for the fix",
        c.name,
        c.value,
        c.allows.unwrap_or(0)
    ))
}

fn shown(v: Option<u64>) -> String {
    v.map_or("unlimited".to_owned(), |v| v.to_string())
}

fn shown_bytes(v: Option<u64>) -> String {
    v.map_or("unlimited".to_owned(), |v| format!("{} MiB", v >> 20))
}

// ---- reading the limits (the only I/O) -------------------------------------------------

impl Limits {
    /// This process's limits, from `/proc` and `/sys/fs/cgroup` (v1 or v2).
    pub fn read() -> Limits {
        let limits = read("/proc/self/limits");
        let cgroup = read("/proc/self/cgroup");
        let (nofile_soft, nofile_hard) = rlimit(&limits, "Max open files");
        Limits {
            nofile_soft,
            nofile_hard,
            nproc_soft: rlimit(&limits, "Max processes").0,
            threads_max: number(&read("/proc/sys/kernel/threads-max")),
            pid_max: number(&read("/proc/sys/kernel/pid_max")),
            max_map_count: number(&read("/proc/sys/vm/max_map_count")),
            cgroup_pids_max: cgroup_limit(&cgroup, "pids", &["pids.max"]),
            cgroup_memory_max: cgroup_limit(
                &cgroup,
                "memory",
                &["memory.max", "memory.limit_in_bytes"],
            ),
            mem_available: meminfo_bytes(&read("/proc/meminfo"), "MemAvailable:"),
        }
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A number, `None` for `max`, `unlimited`, a missing file, or a value so large it means "no
/// limit" (cgroup v1 writes 2^63 rounded to pages).
pub fn number(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok().filter(|&v| v < 1 << 62)
}

/// (soft, hard) of one line of `/proc/<pid>/limits`.
pub fn rlimit(limits: &str, name: &str) -> (Option<u64>, Option<u64>) {
    let Some(line) = limits.lines().find(|l| l.starts_with(name)) else { return (None, None) };
    let mut fields = line[name.len()..].split_whitespace();
    let soft = fields.next().and_then(number);
    let hard = fields.next().and_then(number);
    (soft, hard)
}

/// A `/proc/meminfo` field in bytes.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The cgroup directories that may hold `controller`'s files for this process: v1 (its own
/// hierarchy) and v2 (the unified one), each at our path and at the root (in a container the
/// path may not be visible).
pub fn cgroup_dirs(cgroup: &str, controller: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = Vec::new();
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == controller) {
            dirs.push(root.join(controller).join(rel));
            dirs.push(root.join(controller));
        } else if controllers.is_empty() {
            dirs.push(root.join(rel));
        }
    }
    dirs
}

/// The tightest of `files` found in our cgroup directories; `None` when unlimited or absent.
fn cgroup_limit(cgroup: &str, controller: &str, files: &[&str]) -> Option<u64> {
    let dirs = cgroup_dirs(cgroup, controller);
    let values = dirs.iter().flat_map(|d| files.iter().map(move |f| d.join(f)));
    values.filter_map(|p| std::fs::read_to_string(p).ok()).filter_map(|t| number(&t)).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock_debian() -> Limits {
        Limits {
            nofile_soft: Some(1024),
            nofile_hard: Some(524_288),
            nproc_soft: Some(63_000),
            threads_max: Some(126_000),
            pid_max: Some(32_768),
            max_map_count: Some(65_530),
            cgroup_pids_max: None,
            cgroup_memory_max: None,
            mem_available: Some(8 << 30),
        }
    }

    #[test]
    fn the_tightest_limit_is_named_with_its_fix() {
        let checks = assess(&stock_debian(), 19_000);
        let first = first_bound(&checks).unwrap();
        assert_eq!(first.name, "open files (soft)");
        assert_eq!(first.allows, Some(1024 - BASE_FDS));
        let text = report(&checks, 19_000);
        assert!(text.contains("first to stop it: open files (soft) (about 896 connections)"));
        assert!(text.contains("ulimit -n 19128"), "{text}");
        assert!(text.contains("sysctl -w kernel.pid_max=4194304"), "{text}");
        assert!(text.contains("sysctl -w vm.max_map_count=1048576"), "{text}");
        assert!(!text.contains("raise open files (hard)"), "the hard limit is high enough");
        let warning = warning(&checks, 19_000).unwrap();
        assert!(warning.starts_with("--max-connections 19000 cannot be reached: open files"));
    }

    #[test]
    fn threads_and_mappings_bound_once_files_are_raised() {
        let limits = Limits { nofile_soft: Some(1 << 20), ..stock_debian() };
        let checks = assess(&limits, 19_000);
        // 65,530 mappings / 8 per connection ≈ 7.9k; pid_max 32,768 / 2 ≈ 16.3k.
        let first = first_bound(&checks).unwrap();
        assert_eq!(first.name, "vm.max_map_count");
        assert_eq!(first.allows, Some((65_530 - BASE_MAPS) / 8));
        let pid = checks.iter().find(|c| c.name == "kernel.pid_max").unwrap();
        assert_eq!(pid.allows, Some((32_768 - BASE_THREADS) / 2));
        assert!(warning(&assess(&limits, 5_000), 5_000).is_none());
    }

    #[test]
    fn unlimited_limits_never_bound() {
        let limits = Limits::default();
        let checks = assess(&limits, 1_000_000);
        assert!(first_bound(&checks).is_none());
        assert!(report(&checks, 1_000_000).contains("every limit allows 1000000 connections"));
    }

    #[test]
    fn proc_texts_parse() {
        let limits = "Limit  Soft Limit  Hard Limit  Units\n\
                      Max processes             unlimited            unlimited            processes\n\
                      Max open files            20000                40000                files\n";
        assert_eq!(rlimit(limits, "Max open files"), (Some(20_000), Some(40_000)));
        assert_eq!(rlimit(limits, "Max processes"), (None, None));
        assert_eq!(number("max\n"), None);
        assert_eq!(number("9223372036854771712\n"), None, "cgroup v1's unlimited");
        assert_eq!(number("4194304\n"), Some(4_194_304));
        let meminfo = "MemTotal:  16000 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(meminfo_bytes(meminfo, "MemAvailable:"), Some(2048 * 1024));
        let v1 = "8:pids:/user.slice\n4:memory:/docker/abc\n0::/\n";
        let dirs = cgroup_dirs(v1, "pids");
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/pids/user.slice")), "{dirs:?}");
        let v2 = cgroup_dirs("0::/system.slice/phx-threads.service\n", "memory");
        assert_eq!(v2, vec![PathBuf::from("/sys/fs/cgroup/system.slice/phx-threads.service")]);
    }
}
