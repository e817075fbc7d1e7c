//! Command line: `phx-threads [serve|migrate] [options]`, each option also settable through
//! the environment variable shown in `--help`. Flags win over the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::ClusterConfig;
use crate::config::Config;
use crate::http::HttpConfig;
use crate::limits::TrustedProxies;
use crate::presence::ReplicationConfig;

/// The binary's shutdown timeout: at 19,000 connections, with the nodes taking over its clients
/// on the same cores, the teardown took 11–15 s (BENCHMARKS.md, `reconnect`); the library's
/// default (10 s) is for an embedding program. Below the units' `TimeoutStopSec` (45 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

pub const HELP: &str = "\
phx-threads: a Phoenix Channels server on OS threads

USAGE:
    phx-threads [serve] [OPTIONS]     run the server (default)
    phx-threads migrate [OPTIONS]     apply database migrations and exit
    phx-threads doctor [OPTIONS]      print the OS limits that bound --max-connections, which
                                      one stops it first, and how to raise it

OPTIONS (environment variable in brackets):
    --ws-addr ADDR            WebSocket listener [PHX_WS_ADDR, default 127.0.0.1:4080]
    --http-addr ADDR          REST/static listener [PHX_HTTP_ADDR, default 127.0.0.1:4001]
    --database-url URL        PostgreSQL to use [DATABASE_URL]; without it a private
                              cluster is started in DATA_DIR/pg
    --no-database             run without PostgreSQL (chat only; REST answers 503)
    --data-dir DIR            where the private cluster lives [PHX_DATA_DIR, default ./data]
    --static-dir DIR          built React client to serve at / [PHX_STATIC_DIR,
                              default ./superheroes-react/dist]
    --public-ws-url URL       socket URL given to the browser [PHX_PUBLIC_WS_URL]
    --max-connections N       [PHX_MAX_CONNECTIONS, default 16000]
    --max-handshakes N        upgrades in progress; the oldest is dropped for a new one
                              [PHX_MAX_HANDSHAKES, default 1024]
    --handshake-grace-ms N    a handshake younger than this is not dropped: the acceptor
                              waits instead [PHX_HANDSHAKE_GRACE_MS, default 1000]
    --ws-max-per-address N    open WebSocket connections from one address; more get 503
                              [PHX_WS_MAX_PER_ADDRESS, default 1024]
    --max-channels N          per connection [PHX_MAX_CHANNELS, default 100]
    --max-frame-bytes N       [PHX_MAX_FRAME_BYTES, default 1048576]
    --messages-per-sec N      client messages per connection and second; over budget
                              they get the error 'rate limited'; 0 = off
                              [PHX_MESSAGES_PER_SEC, default 100]
    --message-burst N         messages allowed at once above that rate
                              [PHX_MESSAGE_BURST, default 200]
    --joins-per-sec N         joins per connection and second; 0 = off
                              [PHX_JOINS_PER_SEC, default 10]
    --join-burst N            [PHX_JOIN_BURST, default 100]
    --max-rate-refusals N     rate-limited messages within 10 s before the connection
                              is closed with 1008 [PHX_MAX_RATE_REFUSALS, default 50]
    --idle-timeout-ms N       [PHX_IDLE_TIMEOUT_MS, default 60000]
    --shutdown-timeout-ms N   on SIGTERM, how long the connections get to end once every
                              client has its 1012; past it the process exits with status 1
                              [PHX_SHUTDOWN_TIMEOUT_MS, default 30000]
    --longpoll-window-ms N    a LongPoll poll answers 204 after N ms without messages; a
                              session not polled for 1.5 N ends
                              [PHX_LONGPOLL_WINDOW_MS, default 10000]
    --longpoll-secret KEY     signs LongPoll session tokens (>= 32 bytes); the nodes of a
                              cluster share one, so a poll reaching any node finds its
                              session [PHX_LONGPOLL_SECRET, default: derived from
                              --secret-key-base, else with --cluster a random key kept in
                              the database, else random per process]
    --longpoll-route-timeout-ms N   a LongPoll request routed to the session's node may
                              take N ms beyond its window before it is answered 500
                              [PHX_LONGPOLL_ROUTE_TIMEOUT_MS, default 5000]
    --check-origin LIST       origins allowed besides the request's own host (compared by
                              hostname): example.com, //*.example.com, https://x.com:8443;
                              `any` turns the check off [PHX_CHECK_ORIGIN, default: none]
    --cors-origins LIST       comma-separated origins (https://app.example.com) whose pages
                              may call the REST API [PHX_CORS_ORIGINS, default: none, CORS
                              off; the bundled client is same-origin]
    --secret-key-base KEY     verify Phoenix.Token tokens signed with this key base (the
                              Phoenix app's secret_key_base, >= 20 bytes); connects then
                              need a valid token [PHX_SECRET_KEY_BASE]
    --token-salt SALT         Phoenix.Token salt [PHX_TOKEN_SALT, default: user socket]
    --token-max-age-s N       Phoenix tokens older than N s are expired
                              [PHX_TOKEN_MAX_AGE_S, default 86400]
    --jwt-secret KEY          verify JWT HS256 tokens with this key (>= 32 bytes); connects
                              then need a valid token [PHX_JWT_SECRET]
    --http-max-connections N  open REST connections; more get 503
                              [PHX_HTTP_MAX_CONNECTIONS, default 1024]
    --http-max-per-address N  open REST connections from one address; more get 503
                              [PHX_HTTP_MAX_PER_ADDRESS, default 256]
    --rest-write-rate N       REST writes (POST/PUT/PATCH/DELETE) per second per client
                              address, beyond the burst; more get 429 with Retry-After;
                              0 turns it off [PHX_REST_WRITE_RATE, default 10]
    --rest-write-burst N      writes a client may send at once [PHX_REST_WRITE_BURST,
                              default 100]
    --trusted-proxies LIST    proxy addresses or CIDR blocks whose X-Forwarded-For names
                              the client; they are exempt from the per-address caps
                              [PHX_TRUSTED_PROXIES, default: none]
    --http-head-timeout-ms N  a REST request head, and a keep-alive wait, must end within
                              this (408) [PHX_HTTP_HEAD_TIMEOUT_MS, default 10000]
    --http-body-timeout-ms N  a REST request body must arrive within this (408)
                              [PHX_HTTP_BODY_TIMEOUT_MS, default 30000]
    --presence-window-ms N    presence changes to a topic within N ms go out as one
                              presence_diff, per thousand members of the topic
                              [PHX_PRESENCE_WINDOW_MS, default 50]
    --presence-max-window-ms N    longest diff window; windows double up to it while a
                              topic's changes keep coming [PHX_PRESENCE_MAX_WINDOW_MS,
                              default 1000]
    --presence-max-meta-bytes N   [PHX_PRESENCE_MAX_META_BYTES, default 1024]
    --presence-max-metas-per-key N   [PHX_PRESENCE_MAX_METAS_PER_KEY, default 64]
    --presence-max-per-topic N    [PHX_PRESENCE_MAX_PER_TOPIC, default 100000]
    --max-superheroes N       creates beyond N rows get 422 [PHX_MAX_SUPERHEROES,
                              default 10000]
    --log-format FORMAT       text or json (one object per line) [PHX_LOG_FORMAT,
                              default text]
    --log-closes LEVEL        level of the one-line summary per closed connection
                              [PHX_LOG_CLOSES, default debug]
    --admin-token TOKEN       lets a client join admin:stats (the /dashboard) with the
                              connect param admin_token; without it only loopback clients
                              not behind a proxy may [PHX_ADMIN_TOKEN]
    --cluster                 join the other nodes on the same database: broadcasts reach
                              every node (LISTEN/NOTIFY) [PHX_CLUSTER=1]
    --node-name NAME          unique per node [PHX_NODE_NAME, default <host>-<pid>]
    --cluster-batch-ms N      broadcasts within N ms go out as one NOTIFY
                              [PHX_CLUSTER_BATCH_MS, default 5]
    --cluster-heartbeat-ms N  [PHX_CLUSTER_HEARTBEAT_MS, default 5000]
    --cluster-node-timeout-ms N   a node silent this long is down and its presences
                              leave; more than the heartbeat
                              [PHX_CLUSTER_NODE_TIMEOUT_MS, default 8000]
    --cluster-mailbox N       broadcasts waiting for the relay; more are counted and logged,
                              and reach this node only [PHX_CLUSTER_MAILBOX, default 65536]
    -h, --help                this text

Log level: RUST_LOG=error|warn|info|debug|trace (default info).";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve,
    Migrate,
    Doctor,
    Help,
}

#[derive(Debug, Clone)]
pub struct Args {
    pub command: Command,
    pub ws: Config,
    pub http_addr: SocketAddr,
    pub database_url: Option<String>,
    pub no_database: bool,
    pub data_dir: PathBuf,
    pub static_dir: PathBuf,
    pub public_ws_url: Option<String>,
    // The REST port's limits (see `HttpConfig`).
    pub http_max_connections: usize,
    pub http_head_timeout: Duration,
    pub http_body_timeout: Duration,
    /// Bound on the superheroes table (`store::StoreConfig::max_superheroes`).
    pub max_superheroes: usize,
    // Operations (issue #15): log format, close-summary level, dashboard token.
    pub log_format: crate::logger::Format,
    pub log_closes: log::Level,
    pub admin_token: Option<String>,
    pub cluster: ClusterConfig,
    /// `HttpConfig::max_connections_per_address`, `write_rate_per_s`, `write_burst`.
    pub http_max_per_address: usize,
    pub rest_write_rate: u32,
    pub rest_write_burst: u32,
    /// `HttpConfig::cors_origins`.
    pub cors_origins: Vec<String>,
    /// Token secrets for the connect callback (`auth::AuthConfig`).
    pub auth: crate::auth::AuthConfig,
    /// `--longpoll-secret`; turned into `ws.longpoll_key` once every option is read.
    pub longpoll_secret: Option<String>,
}

/// Parses `argv[1..]` with `env` as the fallback for every option.
pub fn parse(
    argv: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Args, String> {
    let mut args = defaults(&env)?;
    let mut argv = argv.into_iter().peekable();
    match argv.peek().map(String::as_str) {
        Some("serve") => {
            argv.next();
        }
        Some("migrate") => {
            argv.next();
            args.command = Command::Migrate;
        }
        Some("doctor") => {
            argv.next();
            args.command = Command::Doctor;
        }
        _ => {}
    }
    while let Some(flag) = argv.next() {
        if flag == "-h" || flag == "--help" {
            args.command = Command::Help;
            continue;
        }
        if flag == "--no-database" {
            args.no_database = true;
            continue;
        }
        if flag == "--cluster" {
            args.cluster.enabled = true;
            continue;
        }
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        apply(&mut args, &flag, &value)?;
    }
    if args.cluster.node_timeout <= args.cluster.heartbeat {
        return Err("--cluster-node-timeout-ms must exceed --cluster-heartbeat-ms".to_string());
    }
    if args.cluster.enabled {
        let (heartbeat, timeout) = (args.cluster.heartbeat, args.cluster.node_timeout);
        args.ws.presence.replication = Some(ReplicationConfig { heartbeat, timeout });
    }
    longpoll_keys(&mut args);
    Ok(args)
}

fn defaults(env: &impl Fn(&str) -> Option<String>) -> Result<Args, String> {
    let mut args = Args {
        command: Command::Serve,
        ws: Config {
            shutdown_yields_cpu: true,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
            ..Config::default()
        },
        http_addr: "127.0.0.1:4001".parse().expect("valid address"),
        database_url: None,
        no_database: false,
        data_dir: PathBuf::from("data"),
        static_dir: PathBuf::from("superheroes-react/dist"),
        public_ws_url: None,
        http_max_connections: HttpConfig::default().max_connections,
        http_head_timeout: HttpConfig::default().head_timeout,
        http_body_timeout: HttpConfig::default().body_timeout,
        max_superheroes: crate::store::superheroes::MAX_ROWS,
        log_format: crate::logger::Format::Text,
        log_closes: log::Level::Debug,
        admin_token: None,
        cluster: ClusterConfig::default(),
        http_max_per_address: HttpConfig::default().max_connections_per_address,
        rest_write_rate: HttpConfig::default().write_rate_per_s,
        rest_write_burst: HttpConfig::default().write_burst,
        cors_origins: Vec::new(),
        auth: crate::auth::AuthConfig::default(),
        longpoll_secret: None,
    };
    for (var, flag) in [
        ("PHX_WS_ADDR", "--ws-addr"),
        ("PHX_HTTP_ADDR", "--http-addr"),
        ("DATABASE_URL", "--database-url"),
        ("PHX_DATA_DIR", "--data-dir"),
        ("PHX_STATIC_DIR", "--static-dir"),
        ("PHX_PUBLIC_WS_URL", "--public-ws-url"),
        ("PHX_MAX_CONNECTIONS", "--max-connections"),
        ("PHX_MAX_HANDSHAKES", "--max-handshakes"),
        ("PHX_HANDSHAKE_GRACE_MS", "--handshake-grace-ms"),
        ("PHX_MAX_CHANNELS", "--max-channels"),
        ("PHX_MAX_FRAME_BYTES", "--max-frame-bytes"),
        ("PHX_MESSAGES_PER_SEC", "--messages-per-sec"),
        ("PHX_MESSAGE_BURST", "--message-burst"),
        ("PHX_JOINS_PER_SEC", "--joins-per-sec"),
        ("PHX_JOIN_BURST", "--join-burst"),
        ("PHX_MAX_RATE_REFUSALS", "--max-rate-refusals"),
        ("PHX_IDLE_TIMEOUT_MS", "--idle-timeout-ms"),
        ("PHX_SHUTDOWN_TIMEOUT_MS", "--shutdown-timeout-ms"),
        ("PHX_LONGPOLL_WINDOW_MS", "--longpoll-window-ms"),
        ("PHX_LONGPOLL_SECRET", "--longpoll-secret"),
        ("PHX_LONGPOLL_ROUTE_TIMEOUT_MS", "--longpoll-route-timeout-ms"),
        ("PHX_CHECK_ORIGIN", "--check-origin"),
        ("PHX_HTTP_MAX_CONNECTIONS", "--http-max-connections"),
        ("PHX_HTTP_HEAD_TIMEOUT_MS", "--http-head-timeout-ms"),
        ("PHX_HTTP_BODY_TIMEOUT_MS", "--http-body-timeout-ms"),
        ("PHX_PRESENCE_WINDOW_MS", "--presence-window-ms"),
        ("PHX_PRESENCE_MAX_WINDOW_MS", "--presence-max-window-ms"),
        ("PHX_PRESENCE_MAX_META_BYTES", "--presence-max-meta-bytes"),
        ("PHX_PRESENCE_MAX_METAS_PER_KEY", "--presence-max-metas-per-key"),
        ("PHX_PRESENCE_MAX_PER_TOPIC", "--presence-max-per-topic"),
        ("PHX_MAX_SUPERHEROES", "--max-superheroes"),
        ("PHX_LOG_FORMAT", "--log-format"),
        ("PHX_LOG_CLOSES", "--log-closes"),
        ("PHX_ADMIN_TOKEN", "--admin-token"),
        ("PHX_CLUSTER", "--cluster"),
        ("PHX_NODE_NAME", "--node-name"),
        ("PHX_CLUSTER_BATCH_MS", "--cluster-batch-ms"),
        ("PHX_CLUSTER_HEARTBEAT_MS", "--cluster-heartbeat-ms"),
        ("PHX_CLUSTER_NODE_TIMEOUT_MS", "--cluster-node-timeout-ms"),
        ("PHX_CLUSTER_MAILBOX", "--cluster-mailbox"),
        ("PHX_CORS_ORIGINS", "--cors-origins"),
        ("PHX_WS_MAX_PER_ADDRESS", "--ws-max-per-address"),
        ("PHX_HTTP_MAX_PER_ADDRESS", "--http-max-per-address"),
        ("PHX_REST_WRITE_RATE", "--rest-write-rate"),
        ("PHX_REST_WRITE_BURST", "--rest-write-burst"),
        ("PHX_TRUSTED_PROXIES", "--trusted-proxies"),
        ("PHX_SECRET_KEY_BASE", "--secret-key-base"),
        ("PHX_TOKEN_SALT", "--token-salt"),
        ("PHX_TOKEN_MAX_AGE_S", "--token-max-age-s"),
        ("PHX_JWT_SECRET", "--jwt-secret"),
    ] {
        if let Some(value) = env(var).filter(|v| !v.is_empty()) {
            apply(&mut args, flag, &value).map_err(|e| format!("{var}: {e}"))?;
        }
    }
    Ok(args)
}

fn apply(args: &mut Args, flag: &str, value: &str) -> Result<(), String> {
    let number = || value.parse::<usize>().map_err(|_| format!("{flag}: not a number: {value}"));
    let rate = || value.parse::<u32>().map_err(|_| format!("{flag}: not a number: {value}"));
    let addr =
        || value.parse::<SocketAddr>().map_err(|_| format!("{flag}: not an address: {value}"));
    match flag {
        "--ws-addr" => args.ws.ws_addr = addr()?,
        "--http-addr" => args.http_addr = addr()?,
        "--database-url" => args.database_url = Some(value.to_string()),
        "--data-dir" => args.data_dir = PathBuf::from(value),
        "--static-dir" => args.static_dir = PathBuf::from(value),
        "--public-ws-url" => args.public_ws_url = Some(value.to_string()),
        "--max-connections" => args.ws.max_connections = number()?,
        "--max-handshakes" => args.ws.max_handshakes = number()?,
        "--handshake-grace-ms" => {
            args.ws.handshake_grace = std::time::Duration::from_millis(number()? as u64)
        }
        "--max-channels" => args.ws.max_channels_per_connection = number()?,
        "--max-frame-bytes" => args.ws.max_frame_bytes = number()?,
        "--messages-per-sec" => args.ws.messages_per_sec = rate()?,
        "--message-burst" => args.ws.message_burst = rate()?,
        "--joins-per-sec" => args.ws.joins_per_sec = rate()?,
        "--join-burst" => args.ws.join_burst = rate()?,
        "--max-rate-refusals" => args.ws.max_rate_refusals = rate()?,
        "--idle-timeout-ms" => {
            args.ws.idle_timeout = std::time::Duration::from_millis(number()? as u64)
        }
        "--shutdown-timeout-ms" => args.ws.shutdown_timeout = millis(number()?),
        "--longpoll-window-ms" => args.ws.longpoll_window = millis(number()?),
        "--max-superheroes" => args.max_superheroes = number()?,
        "--check-origin" => args.ws.check_origin = origins(value)?,
        "--cors-origins" => args.cors_origins = list(value),
        "--ws-max-per-address" => args.ws.max_connections_per_address = number()?,
        "--http-max-per-address" => args.http_max_per_address = number()?,
        "--rest-write-rate" => args.rest_write_rate = small(number()?, flag)?,
        "--rest-write-burst" => args.rest_write_burst = small(number()?, flag)?,
        "--trusted-proxies" => args.ws.trusted_proxies = TrustedProxies::parse(value)?,
        "--secret-key-base" => args.auth.secret_key_base = Some(value.to_string()),
        "--token-salt" => args.auth.token_salt = value.to_string(),
        "--token-max-age-s" => args.auth.token_max_age = Duration::from_secs(number()? as u64),
        "--jwt-secret" => args.auth.jwt_secret = Some(value.to_string()),
        "--longpoll-secret" if value.len() < crate::auth::MIN_LONGPOLL_SECRET => {
            return Err(format!("{flag}: at least {} bytes", crate::auth::MIN_LONGPOLL_SECRET));
        }
        "--longpoll-secret" => args.longpoll_secret = Some(value.to_string()),
        "--longpoll-route-timeout-ms" => args.ws.longpoll_route_timeout = millis(number()?),
        "--http-max-connections" => args.http_max_connections = number()?,
        "--http-head-timeout-ms" => args.http_head_timeout = millis(number()?),
        "--http-body-timeout-ms" => args.http_body_timeout = millis(number()?),
        "--presence-window-ms" => {
            args.ws.presence.window = std::time::Duration::from_millis(number()? as u64)
        }
        "--presence-max-window-ms" => {
            args.ws.presence.max_window = std::time::Duration::from_millis(number()? as u64)
        }
        "--presence-max-meta-bytes" => args.ws.presence.max_meta_bytes = number()?,
        "--presence-max-metas-per-key" => args.ws.presence.max_metas_per_key = number()?,
        "--presence-max-per-topic" => args.ws.presence.max_per_topic = number()?,
        "--log-format" | "--log-closes" | "--admin-token" => apply_ops(args, flag, value)?,
        flag if flag.starts_with("--cluster") || flag == "--node-name" => {
            apply_cluster(&mut args.cluster, flag, value)?
        }
        _ => return Err(format!("unknown option {flag} (see --help)")),
    }
    Ok(())
}

/// The LongPoll key from the secrets given; a cluster without one takes the secret its
/// database holds (`main.rs`), so that tokens verify on every node.
fn longpoll_keys(args: &mut Args) {
    args.ws.longpoll_key = crate::auth::longpoll_key(args.longpoll_secret.as_deref(), &args.auth);
    if args.cluster.enabled {
        args.ws.node_name = args.cluster.node_name.clone();
    }
}

/// The cluster's options (`ClusterConfig`); `--cluster` takes a value only from PHX_CLUSTER.
fn apply_cluster(c: &mut ClusterConfig, flag: &str, value: &str) -> Result<(), String> {
    let number = || match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag}: not a positive number: {value}")),
    };
    match flag {
        "--cluster" => {
            c.enabled = match value {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => return Err(format!("{flag}: expected 1 or 0, got {value}")),
            }
        }
        "--node-name" if value.is_empty() || value.len() > 200 => {
            return Err(format!("{flag}: 1 to 200 bytes"));
        }
        "--node-name" => c.node_name = value.to_string(),
        "--cluster-batch-ms" => c.batch_window = millis(number()?),
        "--cluster-heartbeat-ms" => c.heartbeat = millis(number()?),
        "--cluster-node-timeout-ms" => c.node_timeout = millis(number()?),
        "--cluster-mailbox" => c.mailbox = number()?,
        _ => return Err(format!("unknown option {flag} (see --help)")),
    }
    Ok(())
}

/// The operations options (issue #15).
fn apply_ops(args: &mut Args, flag: &str, value: &str) -> Result<(), String> {
    match flag {
        "--log-format" => args.log_format = value.parse().map_err(|e| format!("{flag}: {e}"))?,
        "--log-closes" => {
            args.log_closes = value.parse().map_err(|_| format!("{flag}: not a level: {value}"))?
        }
        _ => args.admin_token = Some(value.to_string()).filter(|t| !t.is_empty()),
    }
    Ok(())
}

fn small(n: usize, flag: &str) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("{flag}: too large: {n}"))
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect()
}

fn origins(value: &str) -> Result<Vec<String>, String> {
    let entries = list(value);
    entries.iter().try_for_each(|e| crate::origin::validate_entry(e))?;
    Ok(entries)
}

fn millis(n: usize) -> Duration {
    Duration::from_millis(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(argv: &[&str], env: &[(&str, &str)]) -> Result<Args, String> {
        let env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse(argv.iter().map(|s| s.to_string()), move |k| {
            env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn flags_override_environment() {
        let args = parse_with(
            &["serve", "--ws-addr", "127.0.0.1:0", "--no-database"],
            &[
                ("PHX_WS_ADDR", "127.0.0.1:9"),
                ("PHX_MAX_CONNECTIONS", "7"),
                ("PHX_MAX_HANDSHAKES", "9"),
            ],
        )
        .unwrap();
        assert_eq!(args.ws.max_handshakes, 9);
        assert_eq!(args.ws.ws_addr.port(), 0);
        assert_eq!(args.ws.max_connections, 7);
        assert!(args.no_database);
        assert_eq!(args.command, Command::Serve);
    }

    #[test]
    fn errors_are_clear() {
        assert_eq!(
            parse_with(&["--bogus", "1"], &[]).unwrap_err(),
            "unknown option --bogus (see --help)"
        );
        assert_eq!(parse_with(&["--ws-addr"], &[]).unwrap_err(), "--ws-addr needs a value");
        assert!(
            parse_with(&[], &[("PHX_MAX_CHANNELS", "x")])
                .unwrap_err()
                .starts_with("PHX_MAX_CHANNELS")
        );
        assert_eq!(parse_with(&["migrate"], &[]).unwrap().command, Command::Migrate);
    }

    #[test]
    fn the_shutdown_timeout_is_30_s_unless_set() {
        assert_eq!(parse_with(&[], &[]).unwrap().ws.shutdown_timeout, Duration::from_secs(30));
        let env = [("PHX_SHUTDOWN_TIMEOUT_MS", "2500")];
        assert_eq!(parse_with(&[], &env).unwrap().ws.shutdown_timeout, Duration::from_millis(2500));
        let flag = parse_with(&["--shutdown-timeout-ms", "700"], &env).unwrap();
        assert_eq!(flag.ws.shutdown_timeout, Duration::from_millis(700));
    }

    #[test]
    fn http_limits() {
        let args = parse_with(
            &["--http-max-connections", "5", "--http-head-timeout-ms", "1500"],
            &[("PHX_HTTP_BODY_TIMEOUT_MS", "2500"), ("PHX_HTTP_MAX_CONNECTIONS", "9")],
        )
        .unwrap();
        assert_eq!(args.http_max_connections, 5);
        assert_eq!(args.http_head_timeout, Duration::from_millis(1500));
        assert_eq!(args.http_body_timeout, Duration::from_millis(2500));
        assert_eq!(parse_with(&[], &[]).unwrap().http_max_connections, 1024);
    }

    #[test]
    fn operations_options() {
        let args = parse_with(
            &["doctor", "--log-format", "json", "--max-connections", "5"],
            &[("PHX_LOG_CLOSES", "info"), ("PHX_ADMIN_TOKEN", "s3cret")],
        )
        .unwrap();
        assert_eq!(args.command, Command::Doctor);
        assert_eq!(args.log_format, crate::logger::Format::Json);
        assert_eq!(args.log_closes, log::Level::Info);
        assert_eq!(args.admin_token.as_deref(), Some("s3cret"));
        let bad = parse_with(&["--log-format", "xml"], &[]).unwrap_err();
        assert_eq!(bad, "--log-format: not a log format: xml (text or json)");
        assert!(parse_with(&["--log-closes", "loud"], &[]).is_err());
    }

    #[test]
    fn cluster_options() {
        let args = parse_with(
            &["--cluster", "--node-name", "n1", "--cluster-heartbeat-ms", "200"],
            &[
                ("PHX_CLUSTER_NODE_TIMEOUT_MS", "500"),
                ("PHX_CLUSTER_BATCH_MS", "2"),
                ("PHX_LONGPOLL_SECRET", SECRET),
            ],
        )
        .unwrap();
        assert!(args.cluster.enabled);
        assert_eq!(args.cluster.node_name, "n1");
        assert_eq!(args.cluster.heartbeat, Duration::from_millis(200));
        assert_eq!(args.cluster.node_timeout, Duration::from_millis(500));
        assert_eq!(args.cluster.batch_window, Duration::from_millis(2));
        let env = [("PHX_CLUSTER", "1"), ("PHX_SECRET_KEY_BASE", SECRET)];
        assert!(parse_with(&[], &env).unwrap().cluster.enabled);
        assert!(!parse_with(&[], &[]).unwrap().cluster.enabled);
        assert!(parse_with(&[], &[("PHX_CLUSTER", "maybe")]).unwrap_err().contains("1 or 0"));
        assert!(
            parse_with(&["--cluster-heartbeat-ms", "8000"], &[]).unwrap_err().contains("exceed")
        );
        assert!(parse_with(&["--cluster-mailbox", "0"], &[]).unwrap_err().contains("positive"));
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn longpoll_keys_come_from_the_secrets_given() {
        let key = |argv: &[&str], env: &[(&str, &str)]| parse_with(argv, env).unwrap().ws;
        // The same secret gives every node the same key; a different one, another.
        let a = key(&["--longpoll-secret", SECRET], &[]).longpoll_key.unwrap();
        assert_eq!(Some(&a), key(&[], &[("PHX_LONGPOLL_SECRET", SECRET)]).longpoll_key.as_ref());
        let other = "x".repeat(40);
        assert_ne!(Some(a.clone()), key(&["--longpoll-secret", &other], &[]).longpoll_key);
        // Derived from the Phoenix.Token secret, never equal to it.
        let from_base = key(&["--secret-key-base", SECRET], &[]).longpoll_key.unwrap();
        assert_ne!(&from_base.0[..], SECRET.as_bytes());
        assert_eq!(from_base, a, "one secret, through either flag, is one key");
        assert!(key(&[], &[]).longpoll_key.is_none());
        assert_eq!(format!("{a:?}"), "LongPollKey(<set>)");
        let short = parse_with(&["--longpoll-secret", "short"], &[]).unwrap_err();
        assert!(short.contains("at least 32 bytes"), "{short}");
        // A cluster without a secret takes its database's (main.rs): none from the options.
        assert!(key(&["--cluster"], &[]).longpoll_key.is_none());
        let ws = key(&["--cluster", "--node-name", "n7"], &[("PHX_LONGPOLL_SECRET", SECRET)]);
        assert_eq!((ws.node_name.as_str(), ws.longpoll_key.is_some()), ("n7", true));
        assert_eq!(
            key(&["--longpoll-route-timeout-ms", "750"], &[]).longpoll_route_timeout,
            Duration::from_millis(750)
        );
    }

    #[test]
    fn rate_limits_and_longpoll_window() {
        let args = parse_with(
            &["--messages-per-sec", "5", "--join-burst", "3", "--longpoll-window-ms", "700"],
            &[
                ("PHX_MESSAGE_BURST", "11"),
                ("PHX_JOINS_PER_SEC", "2"),
                ("PHX_MAX_RATE_REFUSALS", "4"),
                ("PHX_MESSAGES_PER_SEC", "99"),
            ],
        )
        .unwrap();
        let ws = &args.ws;
        assert_eq!((ws.messages_per_sec, ws.message_burst), (5, 11));
        assert_eq!((ws.joins_per_sec, ws.join_burst, ws.max_rate_refusals), (2, 3, 4));
        assert_eq!(ws.longpoll_window, Duration::from_millis(700));
        let defaults = parse_with(&[], &[]).unwrap().ws;
        assert_eq!((defaults.messages_per_sec, defaults.message_burst), (100, 200));
        assert!(parse_with(&["--joins-per-sec", "-1"], &[]).is_err());
    }

    #[test]
    fn security_options() {
        let args = parse_with(
            &["--rest-write-rate", "0", "--trusted-proxies", "10.0.0.0/8", "--jwt-secret", "s"],
            &[("PHX_WS_MAX_PER_ADDRESS", "3"), ("PHX_CHECK_ORIGIN", "any")],
        )
        .unwrap();
        assert_eq!(args.rest_write_rate, 0);
        assert_eq!(args.ws.max_connections_per_address, 3);
        assert!(args.ws.trusted_proxies.contains("10.1.1.1".parse().unwrap()));
        assert_eq!(args.ws.check_origin, ["any"]);
        assert_eq!(args.auth.jwt_secret.as_deref(), Some("s"));
        let defaults = parse_with(&[], &[]).unwrap();
        assert_eq!((defaults.rest_write_rate, defaults.rest_write_burst), (10, 100));
        assert_eq!(defaults.auth.token_salt, "user socket");
        let bad = parse_with(&["--trusted-proxies", "proxy.local"], &[]).unwrap_err();
        assert_eq!(bad, "--trusted-proxies: not an address or CIDR block: proxy.local");
        assert!(parse_with(&["--check-origin", "a b"], &[]).is_err());
    }
}
