//! A cluster under test: a throwaway PostgreSQL and K phx-threads nodes joined through it
//! (`--cluster`, issue #13), for the `cluster` and `reconnect` scenarios.
//!
//! PostgreSQL is the server's own `LocalCluster` (the binaries found as the tests find them:
//! PATH, then /usr/lib/postgresql/*/bin), in a temp dir, listening only on a Unix socket in a
//! directory of its own. It stops when `Nodes` drops, and, since the bench's deadline and
//! signal handlers end the process without destructors, also through the cluster's watchdog
//! child, which stops it and deletes the directory when this process exits however it exits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use phx_threads::store::cluster::{ClusterOptions, LocalCluster};

use crate::opts::Opts;
use crate::scenarios::Res;
use crate::target::{PhoenixStart, Server, TempDir};

/// The database the nodes share.
const DATABASE: &str = "phx_cluster_bench";
/// PostgreSQL connections one node opens: the REST pool (8), the superheroes change listener,
/// the cluster's listener and relay, with headroom.
const PG_CONNS_PER_NODE: u32 = 16;

/// The throwaway PostgreSQL.
pub struct Pg {
    cluster: LocalCluster,
    pub url: String,
    // Dropped after `cluster`, which must stop first.
    _dir: TempDir,
}

impl Pg {
    /// Boots a fresh cluster sized for `nodes` nodes and creates the shared database.
    pub fn start(nodes: usize) -> Res<Pg> {
        let dir = TempDir::new("phx-bench-pg")?;
        let mut options = ClusterOptions::new(dir.0.join("data"));
        options.max_connections = PG_CONNS_PER_NODE * nodes as u32 + 20;
        let mut cluster =
            LocalCluster::start_with(options).map_err(|e| format!("PostgreSQL: {e}"))?;
        cluster.stop_on_exit_and_remove(&dir.0).map_err(|e| format!("PostgreSQL watchdog: {e}"))?;
        cluster.create_database(DATABASE).map_err(|e| format!("create database: {e}"))?;
        let url = cluster.url(DATABASE);
        println!("postgres: {} (max_connections {})", url, PG_CONNS_PER_NODE * nodes as u32 + 20);
        Ok(Pg { cluster, url, _dir: dir })
    }

    /// The postmaster and its backends (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        let pid_file = self.cluster.data_dir().join("postmaster.pid");
        let Some(master) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        else {
            return Vec::new();
        };
        let mut pids = vec![master];
        pids.extend(children_of(master));
        pids
    }

    /// A client on the shared database (for queries such as `pg_notification_queue_usage()`).
    pub fn client(&self) -> Res<postgres::Client> {
        postgres::Client::connect(&self.url, postgres::NoTls).map_err(|e| format!("connect: {e}"))
    }
}

/// Pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4 (ppid) is the second after the ")" that closes the command name.
            let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1));
            ppid.and_then(|p| p.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

/// K nodes on one `Pg`. `start`, `stop`, `kill` and `restart` are for the `reconnect`
/// scenario (rolling restarts); `cluster` only starts them.
/// Node `i` is named `node-<i>`; a stopped or killed node keeps its
/// slot (its `Server` is no longer `alive`) until `restart`.
pub struct Nodes {
    // Field order: the nodes stop before PostgreSQL does.
    servers: Vec<Server>,
    pub pg: Pg,
    opts: Opts,
    log_prefix: String,
    extra: Vec<String>,
}

impl Nodes {
    /// PostgreSQL, then `k` nodes started one after the other (each migrates the database on
    /// start; in turn, they need not race for it). Does not wait for them to see each other:
    /// `wait_peers` does.
    #[allow(dead_code)]
    pub fn start(opts: &Opts, k: usize, log_prefix: &str) -> Res<Nodes> {
        Nodes::start_with(opts, k, log_prefix, &[])
    }

    /// `start`, with `extra` appended to every node's command line (e.g.
    /// `["--cluster-batch-ms", "0"]`).
    pub fn start_with(opts: &Opts, k: usize, log_prefix: &str, extra: &[&str]) -> Res<Nodes> {
        let pg = Pg::start(k)?;
        let mut nodes = Nodes {
            servers: Vec::with_capacity(k),
            pg,
            opts: opts.clone(),
            log_prefix: log_prefix.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..k {
            let s = nodes.spawn(i)?;
            nodes.servers.push(s);
        }
        Ok(nodes)
    }

    fn spawn(&self, i: usize) -> Res<Server> {
        self.spawn_with(i, &[])
    }

    fn spawn_with(&self, i: usize, more: &[String]) -> Res<Server> {
        let mut args: Vec<String> = ["--cluster", "--database-url", &self.pg.url, "--node-name"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(node_name(i));
        args.extend(self.extra.iter().cloned());
        args.extend(more.iter().cloned());
        let log_name = format!("{}-node-{i}", self.log_prefix);
        let start =
            PhoenixStart { opts: &self.opts, database: false, log_name: &log_name, args: &args };
        let s = Server::phoenix(start)?;
        println!("node-{i}: pid {} ws={} http={:?}", s.pid, s.ws, s.http);
        Ok(s)
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn node(&self, i: usize) -> &Server {
        &self.servers[i]
    }

    /// Node `i` still runs.
    pub fn alive(&mut self, i: usize) -> bool {
        self.servers[i].alive()
    }

    /// Node `i`'s REST address.
    pub fn http(&self, i: usize) -> SocketAddr {
        self.servers[i].http.expect("a phx-threads node has an http address")
    }

    /// SIGTERM (an orderly shutdown: the node says `bye`), waiting at most 15 s, then SIGKILL.
    #[allow(dead_code)]
    pub fn stop(&mut self, i: usize) {
        self.servers[i].stop();
    }

    /// SIGKILL: the others find out by its missed heartbeats.
    #[allow(dead_code)]
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts node `i` again under the same name (stopping it first if it still runs). It
    /// listens on new ports: read them from `node(i)` afterwards.
    #[allow(dead_code)]
    pub fn restart(&mut self, i: usize) -> Res<&Server> {
        self.servers[i].stop();
        let s = self.spawn(i)?;
        self.servers[i] = s;
        Ok(&self.servers[i])
    }

    /// `restart`, but on the WebSocket address it had: a load balancer's list of upstreams
    /// stays valid across a rolling restart (the listener sets SO_REUSEADDR, so the port is
    /// free again as soon as the old process has exited).
    pub fn restart_in_place(&mut self, i: usize) -> Res<&Server> {
        let ws = self.servers[i].ws;
        self.servers[i].stop();
        // Keep the stopped process's log (its shutdown) beside the new one.
        let log = |n: &str| std::path::Path::new(&self.opts.out).join(format!("{n}.log"));
        let name = format!("{}-node-{i}", self.log_prefix);
        let _ = std::fs::rename(log(&name), log(&format!("{name}-before-{}", crate::now_ns())));
        let s = self.spawn_with(i, &["--ws-addr".to_string(), ws.to_string()])?;
        self.servers[i] = s;
        Ok(&self.servers[i])
    }

    /// Waits until every running node's `GET /cluster` lists every other running node, or
    /// `deadline` passes (an error naming who sees whom).
    pub fn wait_peers(&mut self, deadline: Instant) -> Res {
        let running: Vec<usize> = (0..self.len()).filter(|&i| self.servers[i].alive()).collect();
        loop {
            let views: Vec<(usize, Vec<String>)> =
                running.iter().map(|&i| (i, self.peers(i).unwrap_or_default())).collect();
            let complete = views.iter().all(|(i, seen)| {
                running.iter().filter(|j| *j != i).all(|&j| seen.contains(&node_name(j)))
            });
            if complete {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("nodes do not all see each other: {views:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The other live nodes that node `i` knows of (`GET /cluster`).
    pub fn peers(&self, i: usize) -> Res<Vec<String>> {
        let view = self.status(i)?;
        let nodes = view["nodes"].as_array().ok_or("GET /cluster: no node list")?;
        Ok(nodes.iter().filter_map(|n| n["name"].as_str().map(str::to_string)).collect())
    }

    /// Node `i`'s `GET /cluster` (peers and the relay's counters).
    pub fn status(&self, i: usize) -> Res<serde_json::Value> {
        let res = crate::scrape::get(self.http(i), "/cluster").map_err(|e| e.to_string())?;
        let body = res.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).map_err(|e| format!("GET /cluster: {e}: {body:?}"))
    }
}

impl Drop for Nodes {
    /// Every node at once (each may take seconds to close its clients), then PostgreSQL.
    fn drop(&mut self) {
        for s in &self.servers {
            s.terminate();
        }
        for s in &mut self.servers {
            s.stop();
        }
    }
}

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}
