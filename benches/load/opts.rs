//! Command-line options (hand-parsed: a dozen flags do not need a parser crate).

use std::time::Duration;

pub const USAGE: &str = "\
usage: cargo bench --bench load -- <scenario> [options]

scenarios:
  scaling     ramp joined connections through --steps; connect+join rate, server threads,
              RSS/conn, system memory/conn, heartbeat RTT p50/p99 per step; --hold the top step
  fanout      one broadcast to N subscribers (--sizes), --rounds rounds: delivery latency, lost
  sustained   --rate broadcasts/s to --subscribers for --duration: deliveries/s, p50/p99, lost, late
  slow        fan-out with and without one client that stops reading: eviction, others' p99
  rest        closed-loop GET/POST/PUT /api/superheroes with --subscribers on superheroes:lobby
              (starts the server with its own PostgreSQL; skipped with a message if that fails)
  slowbody    REST GET/POST p50/p99 from a few clients while 0, 8 and 100 request bodies
              trickle (1 byte / 2 s) for --duration each (default 10; database as for rest)
  presence    join storm: N members (1k, 5k, 10k; PRESENCE_SIZES=...) join one room at once;
              time until all hold N presence keys, frames and bytes per member, CPU, RSS
  cluster     --nodes phx-threads nodes (--cluster) on one throwaway PostgreSQL, --conns clients
              from --generators processes in rooms of --room-size: held --hold-secs with 30 s
              heartbeats; a broadcast round to all (--rounds, default 5); cross-node latency
              at --probe-rate/s; the NOTIFY ceiling (--ceiling rates; batch window 5 and 1 ms)
  all         every scenario above in turn (what benches/smoke.sh runs with --smoke)
  reconnect   rolling restart of --nodes clustered nodes (own PostgreSQL) with --clients LIST
              phoenix.js-like clients starting on node 0: per SIGTERMed node, time until every
              client is joined again (p50/p99/max), until Presence shows all again, and the
              broadcasts (--rate, default 100/s) lost by receivers on the nodes that stay up
  plot        redraw bench-results/scaling.svg from bench-results/scaling.csv

options:
  --smoke               a few hundred connections and a few rounds per scenario (CI)
  --scrape              fanout: measure each size without, then with, a scraper fetching
                        GET /metrics every second (twice, alternating); prints the p99 ratio
  --peer socketio       also run scaling/fanout against the Node Socket.IO peer (benches/peer)
  --peer-only           scaling/fanout against the peer alone
  --target URL --pid N  use a running server (ws://127.0.0.1:PORT/socket/websocket) instead
  --http URL            its REST base URL for `rest` with --target (http://127.0.0.1:PORT)
  --steps LIST          scaling steps (default 1000,2000,5000,10000,19000)
  --restarts N          reconnect: restart only the first N nodes (default: all)
  --lb nginx|plain      reconnect: the load balancer; nginx (default) as deploy/nginx sets it
                        up, passing a refused connection on to the next node and skipping the
                        refusing one for 5 s; plain round-robin lets the client see the refusal
  --rooms N             spread scaling connections over N room:* topics (default 1)
  --hold SECS           hold the top scaling step this long, sampling every 30 s (default 0)
  --hb-interval SECS    heartbeat period per connection in measurement windows (default 5)
  --window SECS         heartbeat measurement window per step (default 10)
  --sizes LIST          fanout subscriber counts (default 1000,10000,19000)
  --rounds N            fanout rounds per size (default 50)
  --subscribers N       sustained/slow/rest subscribers (defaults 10000/100/1000)
  --rate N              broadcasts per second (sustained: default 10; slow: 200)
  --duration SECS       sustained/slow-phase/rest duration (defaults 30/30/20)
  --pad BYTES           extra bytes in each broadcast body (default 0; slow: 2048)
  --rest-clients N      rest: concurrent HTTP clients (default 8)
  --clients LIST        reconnect: clients per size (default 1000,10000,19000; --smoke: 200,
                        one step)
  --client-threads N    generator event-loop threads (default 2)
  --inflight N          connections being opened at once, in all (default 256)
  --out DIR             results directory (default bench-results)
  --deadline SECS       hard stop for the whole run (default: computed from the scenario)
  --nodes K             cluster: nodes (default 5); reconnect: nodes (default 3)
  --conns N             cluster: clients in all (default 90000)
  --generators G        cluster: generator processes, client i of generator g on node g % K
                        (default: one per node)
  --room-size N         cluster: clients per room (default 1000; every room spans all nodes)
  --hold-secs SECS      cluster: hold time (default 600)
  --probe-rate N        cluster: cross-node broadcasts/s for the latency probe (default 200)
  --probe-secs SECS     cluster: its duration (default 30)
  --ceiling LIST        cluster: cross-node broadcast rates to step through until delivery
                        falls behind (default 500,1k,2k,5k,10k,20k,50k,100k)
  --step-secs SECS      cluster: each ceiling step (default 5)
  --node-arg ARG        cluster: append ARG to every node's command line (repeat for more,
                        e.g. --node-arg --cluster-node-timeout-ms --node-arg 10000)
";

#[derive(Clone, Debug)]
pub struct Opts {
    pub scenario: String,
    pub help: bool,
    pub smoke: bool,
    pub scrape: bool,
    pub peer: bool,
    pub peer_only: bool,
    pub target: Option<String>,
    pub pid: Option<u32>,
    pub http: Option<String>,
    pub steps: Vec<usize>,
    /// `reconnect`: restart only the first N nodes (default: every node).
    pub restarts: Option<usize>,
    /// reconnect: the load balancer passes refused connections on (`--lb nginx`, default).
    pub lb_next_upstream: bool,
    pub rooms: usize,
    pub hold: Duration,
    pub hb_interval: Duration,
    pub window: Duration,
    pub sizes: Vec<usize>,
    pub rounds: usize,
    pub subscribers: Option<usize>,
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub pad: Option<usize>,
    pub rest_clients: usize,
    pub nodes: Option<usize>,
    pub clients: Vec<usize>,
    pub client_threads: usize,
    pub inflight: usize,
    pub out: String,
    pub deadline: Option<Duration>,
    pub cluster: ClusterOpts,
}

/// The `cluster` scenario's options.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub nodes: usize,
    pub conns: usize,
    pub generators: Option<usize>,
    pub room_size: usize,
    pub hold: Duration,
    pub rounds: Option<usize>,
    pub probe_rate: f64,
    pub probe: Duration,
    pub ceiling: Vec<usize>,
    pub step: Duration,
    pub node_args: Vec<String>,
}

impl Default for ClusterOpts {
    fn default() -> ClusterOpts {
        ClusterOpts {
            nodes: 5,
            conns: 90_000,
            generators: None,
            room_size: 1000,
            hold: Duration::from_secs(600),
            rounds: None,
            probe_rate: 200.0,
            probe: Duration::from_secs(30),
            ceiling: vec![500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000],
            step: Duration::from_secs(5),
            node_args: Vec::new(),
        }
    }
}

impl Opts {
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Opts, String> {
        let mut o = Opts {
            scenario: String::new(),
            help: false,
            smoke: false,
            scrape: false,
            peer: false,
            peer_only: false,
            target: None,
            pid: None,
            http: None,
            steps: vec![1000, 2000, 5000, 10000, 19000],
            restarts: None,
            lb_next_upstream: true,
            rooms: 1,
            hold: Duration::ZERO,
            hb_interval: Duration::from_secs(5),
            window: Duration::from_secs(10),
            sizes: vec![1000, 10000, 19000],
            rounds: 50,
            subscribers: None,
            rate: None,
            duration: None,
            pad: None,
            rest_clients: 8,
            nodes: None,
            clients: vec![1000, 10_000, 19_000],
            client_threads: 2,
            inflight: 256,
            out: "bench-results".into(),
            deadline: None,
            cluster: ClusterOpts::default(),
        };
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match a.as_str() {
                // `cargo bench` passes --bench to harness = false targets.
                "--bench" => {}
                "-h" | "--help" => o.help = true,
                "--smoke" => o.smoke = true,
                "--scrape" => o.scrape = true,
                "--peer" => match val("--peer")?.as_str() {
                    "socketio" => o.peer = true,
                    other => return Err(format!("unknown peer {other:?} (only socketio)")),
                },
                "--peer-only" => {
                    o.peer = true;
                    o.peer_only = true;
                }
                "--target" => o.target = Some(val(&a)?),
                "--pid" => o.pid = Some(num(&val(&a)?)?),
                "--http" => o.http = Some(val(&a)?),
                "--steps" => o.steps = list(&val(&a)?)?,
                "--restarts" => o.restarts = Some(num(&val(&a)?)?),
                "--lb" => o.lb_next_upstream = lb(&val(&a)?)?,
                "--rooms" => o.rooms = num(&val(&a)?)?,
                "--hold" => o.hold = secs(&val(&a)?)?,
                "--hb-interval" => o.hb_interval = secs(&val(&a)?)?,
                "--window" => o.window = secs(&val(&a)?)?,
                "--sizes" => o.sizes = list(&val(&a)?)?,
                "--rounds" => {
                    o.rounds = num(&val(&a)?)?;
                    o.cluster.rounds = Some(o.rounds);
                }
                "--subscribers" => o.subscribers = Some(num(&val(&a)?)?),
                "--rate" => o.rate = Some(num(&val(&a)?)?),
                "--duration" => o.duration = Some(secs(&val(&a)?)?),
                "--pad" => o.pad = Some(num(&val(&a)?)?),
                "--rest-clients" => o.rest_clients = num(&val(&a)?)?,
                "--clients" => o.clients = list(&val(&a)?)?,
                "--client-threads" => o.client_threads = num(&val(&a)?)?,
                "--inflight" => o.inflight = num(&val(&a)?)?,
                "--out" => o.out = val(&a)?,
                "--deadline" => o.deadline = Some(secs(&val(&a)?)?),
                "--nodes" => {
                    let k = num(&val(&a)?)?;
                    (o.cluster.nodes, o.nodes) = (k, Some(k));
                }
                "--conns" => o.cluster.conns = num(&val(&a)?)?,
                "--generators" => o.cluster.generators = Some(num(&val(&a)?)?),
                "--room-size" => o.cluster.room_size = num(&val(&a)?)?,
                "--hold-secs" => o.cluster.hold = secs(&val(&a)?)?,
                "--probe-rate" => o.cluster.probe_rate = num(&val(&a)?)?,
                "--probe-secs" => o.cluster.probe = secs(&val(&a)?)?,
                "--ceiling" => o.cluster.ceiling = list(&val(&a)?)?,
                "--step-secs" => o.cluster.step = secs(&val(&a)?)?,
                "--node-arg" => o.cluster.node_args.push(val(&a)?),
                s if s.starts_with('-') => return Err(format!("unknown option {s}")),
                s if o.scenario.is_empty() => o.scenario = s.to_string(),
                s => return Err(format!("unexpected argument {s}")),
            }
        }
        if o.help {
            return Ok(o);
        }
        if o.scenario.is_empty() {
            return Err("no scenario given".into());
        }
        if o.target.is_some() != o.pid.is_some() {
            return Err("--target and --pid go together".into());
        }
        if o.smoke {
            o.apply_smoke();
        }
        o.rooms = o.rooms.max(1);
        o.cluster.nodes = o.cluster.nodes.max(2);
        o.cluster.room_size = o.cluster.room_size.max(1);
        o.client_threads = o.client_threads.max(1);
        Ok(o)
    }

    fn apply_smoke(&mut self) {
        self.steps = vec![100, 300];
        self.sizes = vec![100, 300];
        self.rounds = 3;
        self.window = Duration::from_secs(1);
        self.hb_interval = Duration::from_secs(1);
        self.hold = self.hold.min(Duration::from_secs(2));
        self.subscribers.get_or_insert(200);
        self.duration.get_or_insert(Duration::from_secs(2));
        self.rest_clients = self.rest_clients.min(2);
        self.clients = vec![200];
        let c = &mut self.cluster;
        c.nodes = c.nodes.min(3);
        c.conns = c.conns.min(300);
        c.room_size = c.room_size.min(100);
        c.hold = c.hold.min(Duration::from_secs(3));
        c.probe = c.probe.min(Duration::from_secs(3));
        c.ceiling.truncate(2);
        c.step = c.step.min(Duration::from_secs(2));
        c.rounds = Some(c.rounds.unwrap_or(3).min(3));
    }

    /// Hard stop for the whole process: generous, but bounded.
    pub fn deadline(&self) -> Duration {
        if let Some(d) = self.deadline {
            return d;
        }
        let peer = if self.peer { 2 } else { 1 };
        let one = |s: &str| -> u64 {
            if self.smoke {
                // The cluster smoke starts PostgreSQL and three nodes three times.
                return if s == "cluster" { 240 } else { 120 };
            }
            match s {
                "scaling" => 600 + self.hold.as_secs() + 60 * self.steps.len() as u64,
                "fanout" => 300 + 120 * self.sizes.len() as u64,
                "sustained" => 400 + 2 * self.duration.map_or(30, |d| d.as_secs()),
                "slow" => 300 + 4 * self.duration.map_or(30, |d| d.as_secs()),
                "rest" => 500 + 2 * self.duration.map_or(20, |d| d.as_secs()),
                "slowbody" => 300 + 3 * (self.duration.map_or(10, |d| d.as_secs()) + 5),
                "presence" => 900,
                // Per size: the ramp, then per node a restart (≤ 15 s to exit), the redial
                // bound (70 s), presence and peers (≤ 60 s).
                "reconnect" => {
                    let nodes = self.nodes.unwrap_or(3) as u64;
                    let ramps: u64 = self.clients.iter().map(|&c| 60 + c as u64 / 100).sum();
                    120 + ramps + self.clients.len() as u64 * nodes * 160
                }
                "cluster" => self.cluster.deadline_secs(),
                _ => 120,
            }
        };
        let total = match self.scenario.as_str() {
            "all" => {
                let all =
                    ["scaling", "fanout", "sustained", "slow", "rest", "slowbody", "presence"];
                all.iter().map(|s| one(s)).sum()
            }
            s => one(s),
        };
        Duration::from_secs(total * peer)
    }
}

impl ClusterOpts {
    pub fn generators(&self) -> usize {
        self.generators.unwrap_or(self.nodes).max(1)
    }

    /// Ramp, hold, fan-out, probe and two ceilings (each node start and step bounded).
    fn deadline_secs(&self) -> u64 {
        let ramp = 120 + self.conns as u64 / 200;
        let steps = self.ceiling.len() as u64 * (self.step.as_secs() + 15);
        let ceilings = 2 * (60 + 30 * self.nodes as u64 + steps);
        300 + ramp
            + self.hold.as_secs()
            + 20 * self.rounds.unwrap_or(5) as u64
            + self.probe.as_secs()
            + 60
            + ceilings
    }
}

fn lb(s: &str) -> Result<bool, String> {
    match s {
        "nginx" => Ok(true),
        "plain" => Ok(false),
        _ => Err(format!("--lb: expected nginx or plain, got {s:?}")),
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("not a number: {s:?}"))
}

fn secs(s: &str) -> Result<Duration, String> {
    num::<f64>(s).map(Duration::from_secs_f64)
}

fn list(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            num(p.trim_end_matches(['k', 'K']))
                .map(|n: usize| if p.ends_with(['k', 'K']) { n * 1000 } else { n })
        })
        .collect()
}
