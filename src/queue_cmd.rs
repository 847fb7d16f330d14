//! `mxrelay queue ...` (and `mailq`): look at and steer the queue of a running daemon.
//! `list` and `show` read the spool directly (read-only, so they work without a daemon);
//! `flush`, `delete`, `hold` and `release` go through the daemon's control socket.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use crate::control::{self, Command};
use crate::delivery::scheduler::{human, now_ms};
use crate::events::{self, rfc3339};
use crate::spool::{self, Envelope, id};

const USAGE: &str = "Usage: mxrelay queue [--spool DIR] list [--json]
       mxrelay queue [--spool DIR] show ID
       mxrelay queue [--spool DIR] flush [ID]
       mxrelay queue [--spool DIR] delete ID|--all
       mxrelay queue [--spool DIR] hold ID|--all
       mxrelay queue [--spool DIR] release ID|--all
";

pub fn main(args: &[String]) -> ExitCode {
    let mut spool = None;
    let mut json = false;
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--spool" => match it.next() {
                Some(dir) => spool = Some(PathBuf::from(dir)),
                None => return usage("--spool needs a directory"),
            },
            "--json" => json = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            w => words.push(w),
        }
    }
    let spool = spool.unwrap_or_else(crate::config::default_spool);
    let target = |w: Option<&&str>| -> Result<Option<String>, String> {
        match w {
            None => Err("needs a queue id".into()),
            Some(&"--all") => Ok(None),
            Some(id) if id::is_valid(id) => Ok(Some(id.to_string())),
            Some(other) => Err(format!("{other:?} is not a queue id")),
        }
    };
    let command = match words.as_slice() {
        [] | ["list"] => return list(&spool, json),
        ["show", id] => return show(&spool, id),
        ["flush"] => Command::Flush(None),
        ["flush", rest @ ..]
        | ["delete", rest @ ..]
        | ["hold", rest @ ..]
        | ["release", rest @ ..]
            if rest.len() <= 1 =>
        {
            let t = match target(rest.first()) {
                Ok(t) => t,
                Err(e) => return usage(&e),
            };
            match words[0] {
                "flush" => Command::Flush(t),
                "delete" => Command::Delete(t),
                "hold" => Command::Hold(t),
                _ => Command::Release(t),
            }
        }
        _ => return usage(&format!("unknown queue command {:?}", words.join(" "))),
    };
    match control::send(&spool, &command) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mxrelay queue: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> ExitCode {
    eprintln!("mxrelay queue: {why}\n{USAGE}");
    ExitCode::from(2)
}

/// Calls `each` with every readable queued message (its slot and envelope) as it is read.
fn each(spool: &Path, each: impl FnMut(spool::Location, Envelope)) -> Result<(), String> {
    let dir = spool.join("queue");
    spool::list_each(&dir, each).map_err(|e| format!("cannot read {}: {e}", dir.display()))
}

/// One queued message as a JSON object (the `--json` form).
pub fn to_json(env: &Envelope, now: u64) -> String {
    let mut s = String::from("{\"id\":");
    events::string(&mut s, &env.id);
    let _ = write!(
        s,
        ",\"age_s\":{},\"size\":{},\"sender\":",
        now.saturating_sub(env.received) / 1000,
        env.size
    );
    events::string(&mut s, &env.sender);
    s.push_str(",\"pending\":[");
    for (i, r) in env.pending_addresses().iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        events::string(&mut s, r);
    }
    let _ = write!(s, "],\"attempts\":{},\"next_try\":", env.attempts);
    if env.held {
        s.push_str("null");
    } else {
        events::string(
            &mut s,
            &rfc3339(UNIX_EPOCH + Duration::from_millis(env.next_attempt)),
        );
    }
    s.push_str(",\"last_error\":");
    events::string(&mut s, &env.last_error);
    let _ = write!(s, ",\"held\":{}}}", env.held);
    s
}

/// Streams the queue: each message is printed as it is read, so a queue of a million
/// messages lists in constant memory (in spool order, not sorted).
fn list(spool: &Path, json: bool) -> ExitCode {
    use std::io::Write as _;
    let now = now_ms();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0u64;
    let listed = each(spool, |_, env| {
        let line = match (json, n) {
            (true, 0) => format!("[{}", to_json(&env, now)),
            (true, _) => format!(",\n {}", to_json(&env, now)),
            (false, 0) => format!("{}\n{}", LIST_HEADING, list_line(&env, now)),
            (false, _) => list_line(&env, now),
        };
        n += 1;
        // A closed pipe (`| head`) ends the listing; nothing else to do about it.
        let _ = out.write_all(line.as_bytes());
    });
    if let Err(e) = listed {
        let _ = out.flush();
        eprintln!("mxrelay queue: {e}");
        return ExitCode::FAILURE;
    }
    let end = match (json, n) {
        (true, 0) => "[]\n".to_string(),
        (true, _) => "]\n".to_string(),
        (false, 0) => "Mail queue is empty\n".to_string(),
        (false, n) => format!("-- {n} message(s)\n"),
    };
    let _ = out.write_all(end.as_bytes());
    let _ = out.flush();
    ExitCode::SUCCESS
}

const LIST_HEADING: &str =
    "ID                        AGE     SIZE  TRY NEXT       SENDER -> PENDING RECIPIENTS";

/// One message of `queue list`, with its last error on a second line.
fn list_line(env: &Envelope, now: u64) -> String {
    let next = if env.held {
        "held".to_string()
    } else if env.next_attempt <= now {
        "now".to_string()
    } else {
        format!(
            "in {}",
            human(Duration::from_secs((env.next_attempt - now).div_ceil(1000)))
        )
    };
    let age = human(Duration::from_secs(now.saturating_sub(env.received) / 1000));
    let rcpts = env.pending_addresses();
    let shown = if rcpts.len() > 3 {
        format!("{} (+{} more)", rcpts[..3].join(", "), rcpts.len() - 3)
    } else {
        rcpts.join(", ")
    };
    let mut line = format!(
        "{:<22} {:>6} {:>8} {:>4} {:<10} <{}> -> {shown}\n",
        env.id, age, env.size, env.attempts, next, env.sender
    );
    if !env.last_error.is_empty() {
        let _ = writeln!(line, "{:<22} last error: {}", "", env.last_error);
    }
    line
}

fn show(spool_dir: &Path, id: &str) -> ExitCode {
    let mut found = None;
    let _ = each(spool_dir, |at, env| {
        if env.id == id {
            found = Some((at, env));
        }
    });
    let Some((slot, env)) = &found else {
        eprintln!("mxrelay queue: {id}: not in the queue");
        return ExitCode::FAILURE;
    };
    println!(
        "id: {}\nreceived: {}\nclient: {} ({})\nsender: <{}>\nsize: {}\nattempts: {}\nheld: {}",
        env.id,
        rfc3339(UNIX_EPOCH + Duration::from_millis(env.received)),
        env.client,
        env.helo,
        env.sender,
        env.size,
        env.attempts,
        env.held
    );
    if !env.held {
        println!(
            "next try: {}",
            rfc3339(UNIX_EPOCH + Duration::from_millis(env.next_attempt))
        );
    }
    if !env.last_error.is_empty() {
        println!("last error: {}", env.last_error);
    }
    for r in &env.recipients {
        println!("recipient: {} <{}>", r.state.name(), r.address);
    }
    // Read-only: opening the spool would create directories.
    let headers = std::fs::File::open(&slot.path).and_then(|f| {
        // The daemon may deliver the message and reuse its slot meanwhile: the slot must
        // hold this message before and after the read.
        let holds_it = || spool::slot::holds(&f, slot.base, id);
        let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, "no longer queued");
        if !holds_it()? {
            return Err(gone());
        }
        let h = spool::slot::read_message_headers(&f, slot.base, (env.size, env.head), 65536)?;
        if holds_it()? { Ok(h) } else { Err(gone()) }
    });
    match headers {
        Ok(h) => print!("\n{}", String::from_utf8_lossy(&h)),
        Err(e) => eprintln!("mxrelay queue: {id}: {e}"),
    }
    ExitCode::SUCCESS
}
