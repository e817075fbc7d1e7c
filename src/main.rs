//! The `phx-threads` binary: parse the command line, start PostgreSQL (or use `DATABASE_URL`),
//! the WebSocket server, the change listener and the HTTP server; wait for SIGINT or SIGTERM;
//! shut down in reverse order; exit 0.

use std::process::ExitCode;

use phx_threads::app::{self, admin_channel, lobby::Lobby, superheroes_channel};
use phx_threads::cli::{self, Args, Command};
use phx_threads::cluster::Cluster;
use phx_threads::http::{self, HttpConfig, HttpDeps};
use phx_threads::store::{self, Store, cluster::LocalCluster, listener};
use phx_threads::{doctor, logger, server};

fn main() -> ExitCode {
    logger::init();
    let args = match cli::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("phx-threads: {e}");
            return ExitCode::from(2);
        }
    };
    logger::set_format(args.log_format);
    logger::set_close_level(args.log_closes);
    let result = match args.command {
        Command::Help => {
            println!("{}", cli::HELP);
            Ok(())
        }
        Command::Migrate => database(&args).map(|_| ()),
        Command::Doctor => {
            let checks = doctor::assess(&doctor::Limits::read(), args.ws.max_connections as u64);
            print!("{}", doctor::report(&checks, args.ws.max_connections as u64));
            Ok(())
        }
        Command::Serve => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phx-threads: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Connects (starting the private cluster if needed), migrates and seeds.
fn database(args: &Args) -> Result<(Store, Option<LocalCluster>), String> {
    let data_dir = args.data_dir.join("pg");
    store::bootstrap_with(args.database_url.as_deref(), &data_dir, args.max_superheroes)
        .map_err(|e| format!("database: {e}"))
}

fn serve(args: Args) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let checks = doctor::assess(&doctor::Limits::read(), args.ws.max_connections as u64);
    if let Some(warning) = doctor::warning(&checks, args.ws.max_connections as u64) {
        log::warn!("{warning}");
    }
    let (store, cluster) = match args.no_database {
        true => (None, None),
        false => database(&args).map(|(s, c)| (Some(s), c))?,
    };
    let mut args = args;
    if let (true, None, Some(store)) = (args.cluster.enabled, &args.ws.longpoll_key, &store) {
        args.ws.longpoll_key = Some(shared_longpoll_key(store)?);
    }
    let lobby = store.clone().map(Lobby::new);
    let verifier = phx_threads::auth::Verifier::new(&args.auth)?.map(std::sync::Arc::new);
    let connect = app::connect_with_admin(verifier, args.admin_token.clone());
    let history = admin_channel::new_history();
    let router = app::router_with_stats(lobby.clone(), Some(history.clone()));
    let ws = server::start(args.ws.clone(), router, connect)
        .map_err(|e| format!("cannot listen on {}: {e}", args.ws.ws_addr))?;
    let pubsub = ws.pubsub();
    let stats = admin_channel::StatsTicker::start(ws.pubsub(), history)
        .map_err(|e| format!("cannot start the stats ticker: {e}"))?;
    let listener = match (&store, lobby) {
        (Some(store), Some(lobby)) => Some(
            listener::spawn_listener(&store.config().url, move |event| {
                superheroes_channel::publish_store_event(&lobby, &pubsub, event)
            })
            .map_err(|e| format!("change listener: {e}"))?,
        ),
        _ => None,
    };
    let http_config = HttpConfig {
        addr: args.http_addr,
        static_dir: Some(args.static_dir.clone()),
        public_ws_url: args.public_ws_url.clone(),
        ws_port: ws.ws_addr().port(),
        max_connections: args.http_max_connections,
        head_timeout: args.http_head_timeout,
        body_timeout: args.http_body_timeout,
        cors_origins: args.cors_origins.clone(),
        max_connections_per_address: args.http_max_per_address,
        write_rate_per_s: args.rest_write_rate,
        write_burst: args.rest_write_burst,
        trusted_proxies: args.ws.trusted_proxies.clone(),
        ..HttpConfig::default()
    };
    let cluster_node = start_cluster(&args, store.as_ref(), &ws.pubsub())?;
    if let Some(node) = &cluster_node {
        ws.route_longpoll(node.view(), args.cluster.node_timeout)
            .map_err(|e| format!("cannot route LongPoll requests: {e}"))?;
    }
    let deps = HttpDeps { store, cluster: cluster_node.as_ref().map(Cluster::view) };
    let http = http::start(http_config, deps)
        .map_err(|e| format!("cannot listen on {}: {e}", args.http_addr))?;
    // Not println!: with stdout closed (a reader that went away) it would panic the server.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "phx-threads listening ws={} http={}", ws.ws_addr(), http.addr);
    let _ = writeln!(out, "open http://{}/", http.addr);
    drop(out);
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal}: shutting down");
    }
    drop(stats);
    shutdown(http, listener, cluster_node, ws, cluster)
}

/// With `--cluster` and no secret given: the LongPoll key every node derives from the random
/// secret their database holds (`sql/004_cluster_secrets.sql`), so tokens verify on every node
/// with nothing to configure. Whoever reads that database could sign tokens, but could equally
/// send the cluster's notifications: the database is already what the nodes trust.
fn shared_longpoll_key(store: &Store) -> Result<phx_threads::auth::LongPollKey, String> {
    let query = "SELECT secret FROM cluster_secrets WHERE name = 'longpoll'";
    let row = store
        .client()
        .and_then(|mut client| client.query_one(query, &[]).map_err(Into::into))
        .map_err(|e| format!("cluster: cannot read the shared LongPoll secret: {e}"))?;
    let secret: Vec<u8> = row.get(0);
    Ok(phx_threads::auth::longpoll_key_from_shared(&secret))
}

/// With `--cluster`: joins the other nodes on the same database.
fn start_cluster(
    args: &Args,
    store: Option<&Store>,
    pubsub: &phx_threads::pubsub::PubSub,
) -> Result<Option<Cluster>, String> {
    match (args.cluster.enabled, store) {
        (false, _) => Ok(None),
        (true, None) => Err("--cluster needs a database (not --no-database)".to_string()),
        (true, Some(store)) => Cluster::start(args.cluster.clone(), &store.config().url, pubsub)
            .map(Some)
            .map_err(|e| format!("cluster: {e}")),
    }
}

/// Reverse start order: no new requests, no new change events, close every socket (1012),
/// then stop PostgreSQL if we own it.
fn shutdown(
    http: http::HttpHandle,
    listener: Option<listener::ListenerHandle>,
    cluster_node: Option<Cluster>,
    ws: server::ServerHandle,
    cluster: Option<LocalCluster>,
) -> Result<(), String> {
    let http_result = http.shutdown().map_err(|e| format!("http shutdown: {e}"));
    if let Some(listener) = listener {
        let _ = listener.shutdown();
    }
    let report = ws.shutdown();
    // After the sockets: their presences' leaves and the tracker's `bye` are relayed first;
    // then the relay says `bye` for the node.
    if let Some(node) = cluster_node {
        node.stop();
    }
    drop(cluster);
    http_result?;
    match report.clean {
        true => Ok(()),
        false => Err(format!(
            "shutdown timed out: {} of {} connections had not ended",
            report.unfinished, report.connections
        )),
    }
}
