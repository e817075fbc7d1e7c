//! `LocalCluster`: a private PostgreSQL server in a data directory of ours, for development
//! (`phx-threads` without `--database-url`) and for the tests.
//!
//! Threads: runs on the caller's thread; it spawns `initdb`/`pg_ctl` and waits for each with
//! a deadline (a helper thread waits for the child, the caller waits on a channel). With
//! `supervise`, a `pg-supervisor` thread watches the postmaster and restarts it when it dies.
//!
//! The server listens only on a Unix socket in a directory of ours
//! (`listen_addresses=''`), so there are no port clashes and nothing is reachable over TCP.
//! Authentication is `trust` for the `postgres` role, which is safe only because the socket
//! directory is private to this machine; do not point it at a shared directory.
//!
//! `initdb` refuses to run as root, so when we are root every command runs as the
//! `postgres` user (or `nobody`) through `runuser`, and our directories are chowned to it.

use std::fmt::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use postgres::NoTls;

use crate::store::Error;

/// PostgreSQL's default port; it only names the socket file (`.s.PGSQL.5432`) since we
/// never listen on TCP.
const PORT: u16 = 5432;
/// `sun_path` holds 108 bytes on Linux; the socket file name adds 13.
const MAX_SOCKET_DIR_LEN: usize = 90;
const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not \
     found on PATH or in /usr/lib/postgresql/*/bin; install them, e.g. \
     `apt-get install postgresql` on Debian/Ubuntu";

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub data_dir: PathBuf,
    /// `false` trades crash safety for speed; the tests use it, development does not.
    pub fsync: bool,
    pub max_connections: u32,
    pub shared_buffers: &'static str,
    /// Bound for `initdb`, `pg_ctl start` and `pg_ctl stop` each.
    pub command_timeout: Duration,
}

impl ClusterOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> ClusterOptions {
        ClusterOptions {
            data_dir: data_dir.into(),
            fsync: true,
            max_connections: 200,
            shared_buffers: "32MB",
            command_timeout: Duration::from_secs(60),
        }
    }
}

/// A running private cluster; stopped (`pg_ctl stop -m fast`) on drop.
pub struct LocalCluster {
    options: ClusterOptions,
    bin_dir: PathBuf,
    socket_dir: PathBuf,
    /// The unprivileged user commands run as, when we are root.
    run_as: Option<User>,
    running: bool,
    watchdog: Option<(Child, ChildStdin)>,
    supervisor: Option<Supervisor>,
}

/// The `pg-supervisor` thread (`LocalCluster::supervise`).
struct Supervisor {
    /// Dropping it tells the thread to stop.
    stop: crossbeam_channel::Sender<()>,
    /// Disconnected when the thread has exited (it drops the sender as its last act).
    exited: crossbeam_channel::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

/// How often the supervisor looks at the postmaster: two small file reads.
const SUPERVISE_POLL: Duration = Duration::from_millis(250);
/// Restart backoff: the first attempt waits this long, each failure doubles it up to the cap.
const RESTART_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A server that stayed up this long after a restart is healthy again: the backoff resets.
/// One that dies sooner is crash-looping, and the backoff keeps growing.
const RESTART_STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl LocalCluster {
    /// `start_with` with the default options.
    ///
    /// # Errors
    /// See `start_with`.
    pub fn start(data_dir: &Path) -> Result<LocalCluster, Error> {
        LocalCluster::start_with(ClusterOptions::new(data_dir))
    }

    /// Initialises `options.data_dir` if it holds no cluster yet, then starts the server (or
    /// adopts it if one is already running there, e.g. after we were killed) and waits until
    /// it accepts connections.
    ///
    /// # Errors
    /// Missing binaries (the message says what to install), a failing `initdb`/`pg_ctl`
    /// (the message includes their output), or a deadline passing.
    pub fn start_with(mut options: ClusterOptions) -> Result<LocalCluster, Error> {
        options.data_dir = absolute(&options.data_dir)?;
        let bin_dir = find_bin_dir()?;
        let run_as = if is_root() { Some(unprivileged_user()?) } else { None };
        let socket_dir = socket_dir_for(&options.data_dir);
        let mut cluster = LocalCluster {
            options,
            bin_dir,
            socket_dir,
            run_as,
            running: false,
            watchdog: None,
            supervisor: None,
        };
        // initdb wants an empty data directory, so the socket directory (possibly inside it)
        // comes after.
        cluster.prepare_dir(&cluster.options.data_dir)?;
        cluster.init_if_needed()?;
        cluster.prepare_dir(&cluster.socket_dir)?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// A connection URL for `dbname`, e.g. `postgresql://postgres@%2Ftmp%2Fx:5432/dbname`.
    pub fn url(&self, dbname: &str) -> String {
        let host = percent_encode(&self.socket_dir.to_string_lossy());
        format!("postgresql://postgres@{host}:{PORT}/{dbname}")
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Creates database `name` unless it exists. `name` must be `[a-z0-9_]+`.
    ///
    /// # Errors
    /// A config error for a bad name; database errors.
    pub fn create_database(&self, name: &str) -> Result<(), Error> {
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(Error::config(format!("invalid database name {name:?}")));
        }
        let mut client = self.admin_client()?;
        let exists = "SELECT 1 FROM pg_database WHERE datname = $1";
        if client.query_opt(exists, &[&name])?.is_none() {
            client.batch_execute(&format!("CREATE DATABASE {name}"))?;
        }
        Ok(())
    }

    /// Starts the server again after `stop()`.
    ///
    /// # Errors
    /// As for `start_with`.
    pub fn start_server(&mut self) -> Result<(), Error> {
        if self.pg_ctl_status()? {
            self.adopt_running()?;
        } else {
            let settings = self.server_settings()?;
            let timeout_secs = self.options.command_timeout.as_secs().to_string();
            let data = self.options.data_dir.to_string_lossy().into_owned();
            let log = self.options.data_dir.join("server.log").to_string_lossy().into_owned();
            let args = ["start", "-w", "-s", "-t", &timeout_secs, "-D", &data, "-l", &log];
            self.pg_ctl(&[&args[..], &["-o", &settings]].concat())?;
        }
        self.running = true;
        self.wait_ready()
    }

    /// Stops the server (`pg_ctl stop -m fast`): open connections are terminated.
    ///
    /// # Errors
    /// If `pg_ctl` fails or times out.
    pub fn stop(&mut self) -> Result<(), Error> {
        self.stop_supervising();
        // Someone else (another `LocalCluster` that adopted it, an operator) may have
        // stopped it already.
        if !self.running || !self.pg_ctl_status()? {
            self.running = false;
            return Ok(());
        }
        let timeout_secs = self.options.command_timeout.as_secs().to_string();
        let data = self.options.data_dir.to_string_lossy().into_owned();
        self.pg_ctl(&["stop", "-w", "-s", "-m", "fast", "-t", &timeout_secs, "-D", &data])?;
        self.running = false;
        Ok(())
    }

    /// Makes sure the server stops even if this process dies without running destructors
    /// (a test binary's statics, SIGKILL): a watchdog child blocks reading a pipe from us;
    /// when our end closes, which the kernel does at our exit, it runs `pg_ctl stop -m fast`.
    ///
    /// # Errors
    /// If the watchdog cannot be spawned.
    pub fn stop_on_exit(&mut self) -> Result<(), Error> {
        self.spawn_watchdog(None)
    }

    /// Like `stop_on_exit`, and then deletes `dir` (which should contain the data directory):
    /// for throwaway clusters such as the tests'.
    ///
    /// # Errors
    /// If the watchdog cannot be spawned.
    pub fn stop_on_exit_and_remove(&mut self, dir: &Path) -> Result<(), Error> {
        self.spawn_watchdog(Some(dir))
    }

    /// Restarts the server whenever its postmaster exits (a crash, `kill -9`, the OOM killer),
    /// from a `pg-supervisor` thread that looks every `SUPERVISE_POLL`, with exponential
    /// backoff between attempts (1 s doubling to 30 s) and a log line for each. Until `stop`
    /// or drop. For the binary's own cluster (`store::bootstrap`); the pool and the listener
    /// reconnect on their own once the server is back.
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn supervise(&mut self) -> Result<(), Error> {
        if self.supervisor.is_some() {
            return Ok(());
        }
        let (stop, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (alive, exited) = crossbeam_channel::bounded::<()>(0);
        let copy = self.restarter();
        let thread = std::thread::Builder::new()
            .name("pg-supervisor".to_owned())
            .spawn(move || {
                supervise(copy, &stop_rx);
                drop(alive);
            })
            .map_err(|e| Error::cluster("cannot spawn the cluster supervisor", Some(e)))?;
        self.supervisor = Some(Supervisor { stop, exited, thread });
        Ok(())
    }

    /// A copy of this cluster for the supervisor: it can start the server, but never stops
    /// it (it is never `running`, so its drop does nothing); the owner does.
    fn restarter(&self) -> LocalCluster {
        LocalCluster {
            options: self.options.clone(),
            bin_dir: self.bin_dir.clone(),
            socket_dir: self.socket_dir.clone(),
            run_as: self.run_as.clone(),
            running: false,
            watchdog: None,
            supervisor: None,
        }
    }

    /// Ends supervision, waiting for a restart in progress (bounded by `command_timeout`).
    fn stop_supervising(&mut self) {
        let Some(Supervisor { stop, exited, thread }) = self.supervisor.take() else { return };
        drop(stop);
        // A restart is a `pg_ctl start` and a readiness wait, each bounded by command_timeout.
        let deadline = Instant::now() + self.options.command_timeout * 2 + SUPERVISE_POLL;
        if exited.recv_deadline(deadline) == Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        {
            let _ = thread.join();
        } else {
            log::warn!("the PostgreSQL supervisor did not stop in time");
        }
    }

    /// One restart attempt: a postmaster killed with SIGKILL leaves `postmaster.pid` and the
    /// socket's lock file behind, which are removed when the pid in them is not a live
    /// postmaster (PostgreSQL itself trusts any pid that `kill(pid, 0)` accepts, a zombie's
    /// too, and refuses to start); shared memory still attached by its dying backends makes the
    /// start fail, and the backoff retries once they are gone.
    fn restart(&mut self) -> Result<(), Error> {
        if !postmaster_alive(&self.options.data_dir) {
            let socket_lock = self.socket_dir.join(format!(".s.PGSQL.{PORT}.lock"));
            for stale in [self.options.data_dir.join("postmaster.pid"), socket_lock] {
                match std::fs::remove_file(&stale) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        let what = format!("cannot remove stale {}", stale.display());
                        return Err(Error::cluster(what, Some(e)));
                    }
                    _ => {}
                }
            }
        }
        let started = self.start_server();
        self.running = false; // see `restarter`
        started.map_err(|e| Error::cluster(format!("{e}; server.log: {}", self.log_tail()), None))
    }

    /// The server log's last FATAL line (else its last line), which says why a start failed;
    /// pg_ctl does not.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.options.data_dir.join("server.log"));
        let log = log.unwrap_or_default();
        let fatal = log.lines().rev().find(|l| l.contains("FATAL"));
        fatal.or_else(|| log.lines().last()).unwrap_or_default().to_owned()
    }

    fn spawn_watchdog(&mut self, remove: Option<&Path>) -> Result<(), Error> {
        let data = self.options.data_dir.to_string_lossy().into_owned();
        let stop = ["stop", "-s", "-m", "fast", "-D", &data];
        let command = self.command(&self.bin_dir.join("pg_ctl"), &stop);
        let script = "cat >/dev/null; \"$@\" >/dev/null 2>&1; \
                      if [ -n \"$REMOVE_DIR\" ]; then rm -rf -- \"$REMOVE_DIR\"; fi";
        let mut watchdog = Command::new("sh");
        watchdog.args(["-c", script, "watchdog"]).arg(command.get_program());
        watchdog.args(command.get_args()).env("REMOVE_DIR", remove.unwrap_or(Path::new("")));
        watchdog.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = watchdog
            .current_dir("/")
            .spawn()
            .map_err(|e| Error::cluster("cannot spawn the cluster watchdog", Some(e)))?;
        let stdin = child.stdin.take().expect("stdin was piped");
        self.watchdog = Some((child, stdin));
        Ok(())
    }

    fn admin_client(&self) -> Result<postgres::Client, Error> {
        let mut config: postgres::Config = self.url("postgres").parse().expect("our url parses");
        config.connect_timeout(Duration::from_secs(5));
        config.connect(NoTls).map_err(Error::connect)
    }

    /// `pg_ctl -w` already waited for startup; this proves we can connect through the URL
    /// we hand out, retrying briefly in case the server is still finishing recovery.
    fn wait_ready(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.options.command_timeout;
        loop {
            match self.admin_client() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                // A pause between attempts, bounded by the deadline: nothing signals
                // readiness except a successful connection.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Creates `dir` and, when we are root, hands it to the unprivileged user.
    fn prepare_dir(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::cluster(format!("cannot create {}", dir.display()), Some(e)))?;
        let Some(user) = &self.run_as else { return Ok(()) };
        check_traversable(dir, user)?;
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(|e| {
            Error::cluster(format!("cannot chown {} to {}", dir.display(), user.name), Some(e))
        })
    }

    fn init_if_needed(&self) -> Result<(), Error> {
        if self.options.data_dir.join("PG_VERSION").exists() {
            return Ok(());
        }
        let data = self.options.data_dir.to_string_lossy().into_owned();
        let mut args = vec!["-D", &data, "-A", "trust", "-U", "postgres", "-E", "UTF8"];
        args.push("--no-locale");
        if !self.options.fsync {
            args.push("--no-sync");
        }
        let initdb = self.bin_dir.join("initdb");
        run(self.command(&initdb, &args), self.options.command_timeout)?;
        Ok(())
    }

    /// The `-o` options for the postmaster. pg_ctl passes them through `sh`, hence the
    /// single quotes and the refusal of paths containing one.
    fn server_settings(&self) -> Result<String, Error> {
        let dir = self.socket_dir.to_string_lossy();
        if dir.contains('\'') || dir.contains(',') {
            return Err(Error::config(format!("socket directory {dir:?} contains ' or ,")));
        }
        let o = &self.options;
        let fsync = if o.fsync { "on" } else { "off" };
        Ok(format!(
            "-c listen_addresses='' -c unix_socket_directories='{dir}' -c port={PORT} \
             -c max_connections={} -c shared_buffers={} -c fsync={fsync} \
             -c full_page_writes={fsync}",
            o.max_connections, o.shared_buffers
        ))
    }

    /// A server already running on our data directory (we were killed earlier) is reused;
    /// its socket directory is line 5 of `postmaster.pid`.
    fn adopt_running(&mut self) -> Result<(), Error> {
        let pid_file = self.options.data_dir.join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .map_err(|e| Error::cluster(format!("cannot read {}", pid_file.display()), Some(e)))?;
        match text.lines().nth(4).filter(|l| !l.trim().is_empty()) {
            Some(dir) => self.socket_dir = PathBuf::from(dir.trim()),
            None => return Err(Error::cluster("running server has no unix socket", None)),
        }
        log::info!("reusing the PostgreSQL server already running in {pid_file:?}");
        Ok(())
    }

    /// `pg_ctl status`: exit code 0 means running, 3 means not running.
    fn pg_ctl_status(&self) -> Result<bool, Error> {
        let data = self.options.data_dir.to_string_lossy().into_owned();
        let command = self.command(&self.bin_dir.join("pg_ctl"), &["status", "-D", &data]);
        let output = wait_output(command, self.options.command_timeout)?;
        Ok(output.status.success())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, Error> {
        run(self.command(&self.bin_dir.join("pg_ctl"), args), self.options.command_timeout)
    }

    /// A command for a PostgreSQL binary, wrapped in `runuser` when we are root.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new(find_runuser());
                c.args(["-u", &user.name, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        // The unprivileged user may not be able to enter our working directory.
        command.args(args).current_dir("/");
        command
    }
}

/// The supervisor loop (`LocalCluster::supervise`): every wait is on `stop`, so it ends
/// within `SUPERVISE_POLL` (or after the restart in progress).
fn supervise(mut cluster: LocalCluster, stop: &crossbeam_channel::Receiver<()>) {
    use crossbeam_channel::RecvTimeoutError::Timeout;
    let data_dir = cluster.options.data_dir.clone();
    let mut backoff = RESTART_BACKOFF_FIRST;
    let mut up_since = Instant::now();
    let mut attempt = 0u32;
    loop {
        if stop.recv_timeout(SUPERVISE_POLL) != Err(Timeout) {
            return;
        }
        if postmaster_alive(&data_dir) {
            continue;
        }
        if attempt == 0 && up_since.elapsed() >= RESTART_STABLE_AFTER {
            backoff = RESTART_BACKOFF_FIRST;
        }
        attempt += 1;
        log::warn!("PostgreSQL is not running; restart attempt {attempt} in {backoff:?}");
        if stop.recv_timeout(backoff) != Err(Timeout) {
            return;
        }
        backoff = (backoff * 2).min(RESTART_BACKOFF_MAX);
        match cluster.restart() {
            Ok(()) => {
                log::info!("PostgreSQL restarted (attempt {attempt})");
                (attempt, up_since) = (0, Instant::now());
            }
            Err(e) => log::error!("PostgreSQL restart attempt {attempt} failed: {e}"),
        }
    }
}

/// True if `postmaster.pid` in `data_dir` names a live (not zombie) `postgres` process.
/// Reads `/proc`, which works whichever user the server runs as.
fn postmaster_alive(data_dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else { return false };
    let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else {
        return false;
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let is_postgres = std::fs::read_to_string(proc_dir.join("comm"))
        .is_ok_and(|comm| comm.trim_end() == "postgres");
    // The state follows the last ')' of `stat` (the command name may contain one).
    let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    is_postgres && matches!(state, Some(s) if s != 'Z' && s != 'X')
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_supervising();
        if let Err(e) = self.stop() {
            log::error!("stopping the local PostgreSQL: {e}");
        }
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            // The watchdog now runs `pg_ctl stop` on a stopped server, which returns at once;
            // reap it so it does not linger as a zombie.
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion within `timeout` and requires success.
fn run(command: Command, timeout: Duration) -> Result<Output, Error> {
    let program = format!("{:?}", command.get_program());
    let output = wait_output(command, timeout)?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    Err(Error::cluster(
        format!("{program} failed ({}): {}{}", output.status, stderr.trim(), stdout.trim()),
        None,
    ))
}

/// Spawns the command and waits for it on a helper thread, giving up after `timeout` (the
/// child is then killed by its pid, which we own).
fn wait_output(mut command: Command, timeout: Duration) -> Result<Output, Error> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = format!("{:?}", command.get_program());
    let child =
        command.spawn().map_err(|e| Error::cluster(format!("cannot run {what}"), Some(e)))?;
    let pid = child.id();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("cluster-wait".to_owned())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })
        .map_err(|e| Error::cluster("cannot spawn a waiter thread", Some(e)))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result.map_err(|e| Error::cluster(format!("waiting for {what}"), Some(e))),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            Err(Error::cluster(format!("{what} did not finish within {timeout:?}"), None))
        }
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: first via `pg_ctl` on PATH
/// (following symlinks), then the newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Result<PathBuf, Error> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_bin_dir_in(&path, Path::new("/usr/lib/postgresql"))
}

fn find_bin_dir_in(path: &std::ffi::OsStr, versions_root: &Path) -> Result<PathBuf, Error> {
    let complete =
        |dir: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|b| dir.join(b).is_file());
    for dir in std::env::split_paths(path) {
        let Ok(real) = std::fs::canonicalize(dir.join("pg_ctl")) else { continue };
        if let Some(bin) = real.parent().filter(|d| complete(d)) {
            return Ok(bin.to_path_buf());
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(versions_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| complete(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| Error::cluster(INSTALL_HINT, None))
}

fn find_runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// The owner of `/proc/self` is our effective uid; this avoids `unsafe` `geteuid()`.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// `postgres` if that user exists, else `nobody`, read from `/etc/passwd`.
fn unprivileged_user() -> Result<User, Error> {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| Error::cluster("cannot read /etc/passwd", Some(e)))?;
    let users: Vec<User> = passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let (uid, gid) = (fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?);
            Some(User { name: fields[0].to_owned(), uid, gid })
        })
        .collect();
    ["postgres", "nobody"]
        .iter()
        .find_map(|name| users.iter().find(|u| u.name == *name).cloned())
        .ok_or_else(|| {
            let msg = "running as root, but neither a `postgres` nor a `nobody` user exists \
                       to run PostgreSQL as (initdb refuses root)";
            Error::cluster(msg, None)
        })
}

/// initdb, run as `user`, fails with a bare "Permission denied" if any ancestor of our
/// directories is closed to it (`mktemp -d` makes 0700 directories); say which one.
fn check_traversable(dir: &Path, user: &User) -> Result<(), Error> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else { continue };
        let mode = meta.mode();
        let searchable = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !searchable {
            let message = format!(
                "PostgreSQL runs as user {} (initdb refuses root) but cannot enter {}; \
                 make it searchable (chmod o+x) or use a data directory elsewhere",
                user.name,
                ancestor.display()
            );
            return Err(Error::cluster(message, None));
        }
    }
    Ok(())
}

/// `<data_dir>/sock` when short enough for a Unix socket path, else a directory under the
/// system temp dir named after the data directory (stable, so restarts find it again).
fn socket_dir_for(data_dir: &Path) -> PathBuf {
    let inside = data_dir.join("sock");
    if inside.as_os_str().len() <= MAX_SOCKET_DIR_LEN {
        return inside;
    }
    let hash =
        data_dir.as_os_str().as_encoded_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
    std::env::temp_dir().join(format!("phx-pg-{hash:016x}"))
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(path)
        .map_err(|e| Error::cluster(format!("bad data directory {}", path.display()), Some(e)))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_the_socket_directory() {
        assert_eq!(percent_encode("/tmp/a b"), "%2Ftmp%2Fa%20b");
        let config: postgres::Config =
            "postgresql://postgres@%2Ftmp%2Fx:5432/db".parse().expect("parses");
        assert_eq!(config.get_dbname(), Some("db"));
        assert!(
            matches!(config.get_hosts(), [postgres::config::Host::Unix(p)] if p == Path::new("/tmp/x"))
        );
    }

    #[test]
    fn missing_binaries_say_what_to_install() {
        let nowhere = Path::new("/nonexistent/phx-threads");
        let err = find_bin_dir_in(std::ffi::OsStr::new(""), nowhere).unwrap_err();
        assert!(err.to_string().contains("apt-get install postgresql"), "{err}");
    }

    #[test]
    fn long_data_dirs_get_a_short_socket_dir() {
        let long = PathBuf::from(format!("/{}", "d".repeat(120)));
        assert!(socket_dir_for(&long).as_os_str().len() <= MAX_SOCKET_DIR_LEN);
        assert_eq!(socket_dir_for(Path::new("/tmp/x")), PathBuf::from("/tmp/x/sock"));
    }
}
