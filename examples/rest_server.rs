//! The REST side alone, until `phx-threads serve` wires it to the WebSocket core:
//! bootstraps the store (a `LocalCluster` in `--data-dir` unless `--database-url` is given),
//! starts `http::start`, logs NOTIFY events, and stops on SIGINT/SIGTERM.
//!
//! `cargo run --example rest_server -- --http-addr 127.0.0.1:4001 --data-dir data/pg`
//! `.ci/schemathesis.sh` runs it.

use std::path::PathBuf;

use phx_threads::http::{self, HttpConfig, HttpDeps};
use phx_threads::store::{self, listener};

fn main() {
    log::set_logger(&LOGGER).map(|()| log::set_max_level(log::LevelFilter::Info)).ok();
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse()?;
    let (store, _cluster) = store::bootstrap(args.database_url.as_deref(), &args.data_dir)?;
    let _listener = listener::spawn_listener(&store.config().url, |event| {
        log::info!("store event: {event:?}");
    })?;
    let config =
        HttpConfig { addr: args.http_addr, static_dir: args.static_dir, ..HttpConfig::default() };
    let http = http::start(config, HttpDeps { store: Some(store) })?;
    println!("listening on http://{}", http.addr);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let signal = signals.forever().next();
    log::info!("signal {signal:?}: shutting down");
    http.shutdown()?;
    Ok(())
}

struct Args {
    http_addr: std::net::SocketAddr,
    database_url: Option<String>,
    data_dir: PathBuf,
    static_dir: Option<PathBuf>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            http_addr: "127.0.0.1:4001".parse().expect("valid default"),
            database_url: std::env::var("DATABASE_URL").ok(),
            data_dir: PathBuf::from("data/pg"),
            static_dir: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--http-addr" => args.http_addr = value()?.parse().map_err(|e| format!("{e}"))?,
                "--database-url" => args.database_url = Some(value()?),
                "--data-dir" => args.data_dir = PathBuf::from(value()?),
                "--static-dir" => args.static_dir = Some(PathBuf::from(value()?)),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(args)
    }
}

struct StderrLogger;
static LOGGER: StderrLogger = StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("{:<5} {}: {}", record.level(), record.target(), record.args());
        }
    }
    fn flush(&self) {}
}
