//! The `phx-threads` binary: parse the command line, start the server, wait for SIGINT or
//! SIGTERM, shut down in order, exit 0.

use std::process::ExitCode;

use phx_threads::cli::{self, Command};
use phx_threads::{app, logger, server};

fn main() -> ExitCode {
    logger::init();
    let args = match cli::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("phx-threads: {e}");
            return ExitCode::from(2);
        }
    };
    match args.command {
        Command::Help => {
            println!("{}", cli::HELP);
            ExitCode::SUCCESS
        }
        Command::Migrate => run_migrate(&args),
        Command::Serve => run_serve(args),
    }
}

fn run_migrate(_args: &cli::Args) -> ExitCode {
    eprintln!("phx-threads: migrate needs the database support");
    ExitCode::FAILURE
}

fn run_serve(args: cli::Args) -> ExitCode {
    let signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("phx-threads: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match server::start(args.ws.clone(), app::router(), server::accept_all()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("phx-threads: cannot listen on {}: {e}", args.ws.ws_addr);
            return ExitCode::FAILURE;
        }
    };
    println!("phx-threads listening ws={} http={}", server.ws_addr(), args.http_addr);
    wait_for_signal(signals);
    let report = server.shutdown();
    if report.clean { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn wait_for_signal(mut signals: signal_hook::iterator::Signals) {
    if let Some(signal) = signals.forever().next() {
        log::info!("signal {signal}: shutting down");
    }
}
