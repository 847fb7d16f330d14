//! `mxrelay suppression ...`: look at and change the suppression list of a spool.
//!
//! `list` and `export` read the list file directly (without a lock: they change nothing), so
//! they work with or without a daemon. `add`, `remove` and `import` go through the running
//! daemon's control socket, which writes the file and its own copy together; when no daemon
//! runs, they lock the list and change the file themselves.
//!
//! With a list shared through `--suppression-store`, the file is this instance's copy: `list`
//! and `export` show it, and a change made without a daemon is queued in the spool as the
//! daemon's are (`super::pending`), for the daemon to push when it starts.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::csv::{HEADING, export_line, import_line};
use super::file::{self, FileStore, OpenError};
use super::remote::{self, MAX_BATCH};
use super::{Entry, Reason, SuppressionConfig, Suppressions, check_address, format_time};
use crate::config::parse_duration;
use crate::control::{self, SendError};
use crate::delivery::clock::now_ms;

const USAGE: &str = "Usage: mxrelay suppression [--spool DIR] list
       mxrelay suppression [--spool DIR] add ADDRESS [--reason unsubscribe|bounce|manual] [--expires DURATION]
       mxrelay suppression [--spool DIR] remove ADDRESS
       mxrelay suppression [--spool DIR] import FILE|-
       mxrelay suppression [--spool DIR] export

export writes CSV (address,reason,added,expires); import reads the same, or one address per line.
";

/// How long a change waits for a daemon that holds the list but does not answer yet (one
/// that is starting).
const WAIT_FOR_DAEMON: Duration = Duration::from_secs(10);

pub fn main(args: &[String]) -> ExitCode {
    let mut spool = None;
    let mut reason = Reason::Manual;
    let mut expires = None;
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let parsed = match a.as_str() {
            "--spool" => value("--spool").map(|d| spool = Some(PathBuf::from(d))),
            "--reason" => value("--reason").and_then(|r| {
                reason = Reason::parse(&r)
                    .ok_or_else(|| format!("{r:?} is not unsubscribe, bounce or manual"))?;
                Ok(())
            }),
            "--expires" => value("--expires").and_then(|d| {
                let d = parse_duration(&d)?;
                if d.is_zero() {
                    return Err("--expires must be longer than zero".into());
                }
                expires = Some(d);
                Ok(())
            }),
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            w => {
                words.push(w.to_string());
                Ok(())
            }
        };
        if let Err(e) = parsed {
            return usage(&e);
        }
    }
    let spool = spool.unwrap_or_else(crate::config::default_spool);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let result = match words.as_slice() {
        [] | ["list"] => list(&spool),
        ["export"] => export(&spool),
        ["add", address] => {
            let now = now_ms();
            let entry = Entry {
                address: address.to_string(),
                reason,
                added: now,
                expires: expires.map(|d| now + d.as_millis() as u64),
            };
            match check_address(address) {
                Ok(()) => {
                    change(&spool, Change::Add(vec![entry])).map(|_| format!("added {address}"))
                }
                Err(e) => return usage(&e),
            }
        }
        ["remove", address] => match check_address(address) {
            Ok(()) => change(&spool, Change::Remove(address.to_string())),
            Err(e) => return usage(&e),
        },
        ["import", from] => import(&spool, from),
        _ => return usage(&format!("unknown command {:?}", words.join(" "))),
    };
    match result {
        Ok(text) if text.is_empty() => ExitCode::SUCCESS,
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mxrelay suppression: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("mxrelay suppression: {why}\n{USAGE}");
    ExitCode::from(2)
}

fn read(spool: &Path) -> Result<Vec<Entry>, String> {
    let mut entries = file::read(spool, now_ms())
        .map_err(|e| format!("cannot read {}: {e}", spool.join(file::FILE).display()))?;
    entries.sort_by_cached_key(|e| super::key(&e.address));
    Ok(entries)
}

fn list(spool: &Path) -> Result<String, String> {
    let entries = read(spool)?;
    if entries.is_empty() {
        return Ok("The suppression list is empty".into());
    }
    let width = entries.iter().map(|e| e.address.len()).max().unwrap_or(0);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(
        out,
        "{:<width$}  {:<11}  {:<24}  EXPIRES",
        "ADDRESS", "REASON", "ADDED"
    );
    for e in &entries {
        let expires = e.expires.map_or("never".to_string(), format_time);
        let _ = writeln!(
            out,
            "{:<width$}  {:<11}  {:<24}  {expires}",
            e.address,
            e.reason.name(),
            format_time(e.added)
        );
    }
    let _ = out.flush();
    Ok(format!("-- {} address(es)", entries.len()))
}

fn export(spool: &Path) -> Result<String, String> {
    let entries = read(spool)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let _ = writeln!(out, "{HEADING}");
    for e in &entries {
        let _ = writeln!(out, "{}", export_line(e));
    }
    out.flush().map_err(|e| format!("cannot write: {e}"))?;
    Ok(String::new())
}

/// Reads every line first: a file with a bad line imports nothing.
fn import(spool: &Path, from: &str) -> Result<String, String> {
    let reader: Box<dyn BufRead> = if from == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(from).map_err(|e| format!("{from}: {e}"))?;
        Box::new(std::io::BufReader::new(f))
    };
    let now = now_ms();
    let (mut entries, mut errors, mut expired) = (Vec::new(), Vec::new(), 0);
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("{from}: {e}"))?;
        match import_line(&line, now) {
            Ok(Some(e)) if !e.live(now) => expired += 1,
            Ok(Some(e)) => entries.push(e),
            Ok(None) => {}
            Err(e) => errors.push(format!("{from}:{}: {e}", n + 1)),
        }
    }
    if !errors.is_empty() {
        let shown = errors.len().min(10);
        let more = match errors.len() - shown {
            0 => String::new(),
            n => format!("\n(and {n} more)"),
        };
        return Err(format!(
            "nothing imported:\n{}{more}",
            errors[..shown].join("\n")
        ));
    }
    let n = entries.len();
    if n > 0 {
        change(spool, Change::Add(entries))?;
    }
    let skipped = match expired {
        0 => String::new(),
        e => format!(" ({e} already expired, skipped)"),
    };
    Ok(format!("imported {n} address(es){skipped}"))
}

enum Change {
    Add(Vec<Entry>),
    Remove(String),
}

/// Through the daemon when one runs; otherwise on the file, under its lock.
fn change(spool: &Path, change: Change) -> Result<String, String> {
    let deadline = Instant::now() + WAIT_FOR_DAEMON;
    loop {
        match through_daemon(spool, &change) {
            Err(SendError::NoDaemon(_)) => {}
            answer => return answer.map_err(|e| e.to_string()),
        }
        if !spool.is_dir() {
            return Err(format!(
                "{} is not a spool directory (give --spool, or start mxrelay once)",
                spool.display()
            ));
        }
        match FileStore::open(spool, Duration::ZERO) {
            Ok(store) => return on_file(store, change),
            // A daemon holds the list but does not answer yet: it is starting.
            Err(OpenError::Locked) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(OpenError::Locked) => {
                return Err("the suppression list is locked, but no daemon answers on \
                            control.sock"
                    .into());
            }
            Err(OpenError::Io(e)) => return Err(format!("{}: {e}", spool.display())),
        }
    }
}

fn through_daemon(spool: &Path, change: &Change) -> Result<String, SendError> {
    match change {
        Change::Add(entries) => {
            let mut text = String::new();
            for batch in entries.chunks(MAX_BATCH) {
                text = control::request(spool, &remote::add_request(batch))?;
            }
            Ok(text)
        }
        Change::Remove(address) => control::request(spool, &remote::remove_request(address)),
    }
}

fn on_file(store: FileStore, change: Change) -> Result<String, String> {
    let now = now_ms();
    let list = Suppressions::open(Box::new(store), SuppressionConfig::default(), now)
        .map_err(|e| format!("cannot read the suppression list: {e}"))?;
    let write_error = |e: std::io::Error| format!("cannot write the suppression list: {e}");
    match change {
        Change::Add(entries) => {
            let n = entries.len();
            list.add(entries, now).map_err(write_error)?;
            Ok(format!("added {n}"))
        }
        Change::Remove(address) => match list.remove(&address, now).map_err(write_error)? {
            true => Ok(format!("removed {address}")),
            false => Err(format!("{address}: not on the suppression list")),
        },
    }
}
