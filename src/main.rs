//! The `mxrelay` command: flags → config, logger, start the relay, stop on SIGTERM/SIGINT.

use std::process::ExitCode;

use mxrelay::config::{self, Parsed};
use mxrelay::relay::Relay;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    mxrelay::privileges::owner_only_files();
    let argv0 = std::env::args().next().unwrap_or_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Invoked through a symlink, as the MTA programs other software expects.
    match std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
    {
        Some("sendmail") => return mxrelay::sendmail::main(&args),
        Some("mailq") => return mxrelay::queue_cmd::main(&args),
        _ => {}
    }
    match args.first().map(String::as_str) {
        Some("hash-password") => return hash_password(),
        Some("queue") => return mxrelay::queue_cmd::main(&args[1..]),
        Some("suppression") => return mxrelay::suppression::cmd::main(&args[1..]),
        Some("check") => return mxrelay::doctor::main(&args[1..]),
        Some("sendmail") => return mxrelay::sendmail::main(&args[1..]),
        Some("dkim-keygen") => return mxrelay::transform::dkim::keygen::main(&args[1..]),
        _ => {}
    }
    let cfg = match config::parse_args(&args) {
        Ok(Parsed::Run(c)) => c,
        Ok(Parsed::Help(text) | Parsed::Print(text)) => {
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
        .format(|out, record| {
            use std::io::Write;
            let now = mxrelay::events::rfc3339(std::time::SystemTime::now());
            let (level, target) = (record.level(), record.target());
            writeln!(out, "[{now} {level:<5} {target}] {}", record.args())
        })
        .init();

    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1]) {
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
    for sig in signals.forever() {
        if sig == SIGHUP {
            log::info!("SIGHUP: reloading");
            relay.reload();
            continue;
        }
        if sig == SIGUSR1 {
            log::info!("SIGUSR1: retrying the whole queue now");
            relay.flush();
            continue;
        }
        log::info!(
            "signal {sig}: shutting down (grace {:?})",
            cfg.shutdown_grace
        );
        break;
    }
    relay.stop(cfg.shutdown_grace);
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// `mxrelay hash-password`: reads a password (one line on stdin) and prints a bcrypt hash
/// for the users file, in the `$2y$` form htpasswd -B writes.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("mxrelay hash-password: cannot read the password from stdin");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!(
            "mxrelay hash-password: empty password (give it on stdin, e.g. echo secret | mxrelay hash-password)"
        );
        return ExitCode::from(2);
    }
    println!("{}", mxrelay::auth::hash_password(password));
    ExitCode::SUCCESS
}
