//! Changes to the list through a running daemon's control socket (`crate::control`), so that
//! its copy in memory and the file stay one truth:
//!
//! - `SUPPRESSION ADD <n>`, then `n` lines, each an entry as `Entry::encode` writes it
//!   (`<added ms> <expires ms|-> <reason> <address>`): `ok added <n>` once all are on disk.
//! - `SUPPRESSION REMOVE <address>`: `ok removed <address>`, or `error` if it is not listed.

use std::io::BufRead;

use super::{Entry, Suppressions, check_address};
use crate::delivery::clock::now_ms;

/// Entries per `ADD` request at most; an import sends several.
pub const MAX_BATCH: usize = 1000;

/// The first word of a request for this module.
pub const VERB: &str = "SUPPRESSION";

/// The request that adds `entries` (at most `MAX_BATCH`).
pub fn add_request(entries: &[Entry]) -> String {
    let mut s = format!("{VERB} ADD {}\n", entries.len());
    for e in entries {
        s.push_str(&e.encode());
        s.push('\n');
    }
    s
}

pub fn remove_request(address: &str) -> String {
    format!("{VERB} REMOVE {address}\n")
}

/// Carries out a request whose first line, after `SUPPRESSION `, is `rest`; the entries of an
/// `ADD` follow in `more`.
pub fn serve(rest: &str, more: &mut impl BufRead, list: &Suppressions) -> Result<String, String> {
    let (verb, arg) = rest.split_once(' ').unwrap_or((rest, ""));
    match verb.to_ascii_uppercase().as_str() {
        "ADD" => {
            let n: usize = arg
                .parse()
                .ok()
                .filter(|n| (1..=MAX_BATCH).contains(n))
                .ok_or_else(|| format!("ADD needs a count from 1 to {MAX_BATCH}"))?;
            let mut entries = Vec::with_capacity(n);
            for i in 0..n {
                let mut line = String::new();
                more.read_line(&mut line)
                    .map_err(|e| format!("entry {}: {e}", i + 1))?;
                let line = line.trim_end_matches(['\r', '\n']);
                let entry = Entry::decode(line)
                    .ok_or_else(|| format!("entry {}: {line:?} is not an entry", i + 1))?;
                entries.push(entry);
            }
            list.add(entries, now_ms())
                .map_err(|e| format!("cannot write the suppression list: {e}"))?;
            Ok(format!("added {n}"))
        }
        "REMOVE" => {
            check_address(arg)?;
            match list.remove(arg, now_ms()) {
                Ok(true) => Ok(format!("removed {arg}")),
                Ok(false) => Err(format!("{arg}: not on the suppression list")),
                Err(e) => Err(format!("cannot write the suppression list: {e}")),
            }
        }
        other => Err(format!("unknown suppression command {other:?}")),
    }
}
