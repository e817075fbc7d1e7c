//! The `phx-threads` binary: parse the command line, start PostgreSQL (or use `DATABASE_URL`),
//! the WebSocket server, the change listener and the HTTP server; wait for SIGINT or SIGTERM;
//! shut down in reverse order; exit 0.

use std::process::ExitCode;

use phx_threads::app::{self, lobby::Lobby, superheroes_channel};
use phx_threads::cli::{self, Args, Command};
use phx_threads::http::{self, HttpConfig, HttpDeps};
use phx_threads::store::{self, Store, cluster::LocalCluster, listener};
use phx_threads::{logger, server};

fn main() -> ExitCode {
    logger::init();
    let args = match cli::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("phx-threads: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command {
        Command::Help => {
            println!("{}", cli::HELP);
            Ok(())
        }
        Command::Migrate => database(&args).map(|_| ()),
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
    let (store, cluster) = match args.no_database {
        true => (None, None),
        false => database(&args).map(|(s, c)| (Some(s), c))?,
    };
    let lobby = store.clone().map(Lobby::new);
    let verifier = phx_threads::auth::Verifier::new(&args.auth)?.map(std::sync::Arc::new);
    let ws = server::start(args.ws.clone(), app::router(lobby.clone()), app::connect(verifier))
        .map_err(|e| format!("cannot listen on {}: {e}", args.ws.ws_addr))?;
    let pubsub = ws.pubsub();
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
    let http = http::start(http_config, HttpDeps { store })
        .map_err(|e| format!("cannot listen on {}: {e}", args.http_addr))?;
    println!("phx-threads listening ws={} http={}", ws.ws_addr(), http.addr);
    println!("open http://{}/", http.addr);
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal}: shutting down");
    }
    shutdown(http, listener, ws, cluster)
}

/// Reverse start order: no new requests, no new change events, close every socket (1012),
/// then stop PostgreSQL if we own it.
fn shutdown(
    http: http::HttpHandle,
    listener: Option<listener::ListenerHandle>,
    ws: server::ServerHandle,
    cluster: Option<LocalCluster>,
) -> Result<(), String> {
    let http_result = http.shutdown().map_err(|e| format!("http shutdown: {e}"));
    if let Some(listener) = listener {
        let _ = listener.shutdown();
    }
    let report = ws.shutdown();
    drop(cluster);
    http_result?;
    match report.clean {
        true => Ok(()),
        false => Err(format!("shutdown timed out with {} connections", report.connections)),
    }
}
