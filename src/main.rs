//! The `mxrelay` command: flags → config, logger, start the relay, stop on SIGTERM/SIGINT.

use std::process::ExitCode;

use mxrelay::config::{self, Parsed};
use mxrelay::relay::Relay;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match config::parse_args(&args) {
        Ok(Parsed::Run(c)) => c,
        Ok(Parsed::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("mxrelay {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mxrelay: {e}");
            return ExitCode::from(2);
        }
    };
    let default_level = if cfg.verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_millis()
        .init();

    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let relay = match Relay::start(&cfg) {
        Ok(r) => r,
        Err(e) => {
            log::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "mxrelay {} started as {} (spool {})",
        env!("CARGO_PKG_VERSION"),
        cfg.hostname,
        cfg.spool.display()
    );
    if let Some(sig) = signals.forever().next() {
        log::info!(
            "signal {sig}: shutting down (grace {:?})",
            cfg.shutdown_grace
        );
    }
    relay.stop(cfg.shutdown_grace);
    log::info!("stopped");
    ExitCode::SUCCESS
}
