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
  --nodes N             reconnect: cluster nodes (default 3)
  --clients LIST        reconnect: clients per size (default 1000,10000,19000; --smoke: 200,
                        one step)
  --client-threads N    generator event-loop threads (default 2)
  --inflight N          connections being opened at once, in all (default 256)
  --out DIR             results directory (default bench-results)
  --deadline SECS       hard stop for the whole run (default: computed from the scenario)
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
                "--rooms" => o.rooms = num(&val(&a)?)?,
                "--hold" => o.hold = secs(&val(&a)?)?,
                "--hb-interval" => o.hb_interval = secs(&val(&a)?)?,
                "--window" => o.window = secs(&val(&a)?)?,
                "--sizes" => o.sizes = list(&val(&a)?)?,
                "--rounds" => o.rounds = num(&val(&a)?)?,
                "--subscribers" => o.subscribers = Some(num(&val(&a)?)?),
                "--rate" => o.rate = Some(num(&val(&a)?)?),
                "--duration" => o.duration = Some(secs(&val(&a)?)?),
                "--pad" => o.pad = Some(num(&val(&a)?)?),
                "--rest-clients" => o.rest_clients = num(&val(&a)?)?,
                "--nodes" => o.nodes = Some(num(&val(&a)?)?),
                "--clients" => o.clients = list(&val(&a)?)?,
                "--client-threads" => o.client_threads = num(&val(&a)?)?,
                "--inflight" => o.inflight = num(&val(&a)?)?,
                "--out" => o.out = val(&a)?,
                "--deadline" => o.deadline = Some(secs(&val(&a)?)?),
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
    }

    /// Hard stop for the whole process: generous, but bounded.
    pub fn deadline(&self) -> Duration {
        if let Some(d) = self.deadline {
            return d;
        }
        let peer = if self.peer { 2 } else { 1 };
        let one = |s: &str| -> u64 {
            if self.smoke {
                return 120;
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
