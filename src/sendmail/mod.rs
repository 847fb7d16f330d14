//! `mxrelay sendmail` (also run as `sendmail` through a symlink): the classic local submission
//! command that cron, PHP's `mail()` and monitoring scripts call. It reads one message from
//! stdin and hands it to the local daemon over plain SMTP, exiting 0 only once the daemon has
//! answered `250` to the end of DATA (the message is then durably queued). Otherwise it prints
//! a clear message and exits with a sysexits code; nothing is queued unless it exits 0.
//!
//! Flags follow sendmail's (getopt-like, values attached or separate): `-t` (recipients from
//! To:/Cc:/Bcc:, added to those given as arguments), `-f SENDER` (`-r` too; `<>` or `""` for
//! the null sender), `-F NAME`, `-i`/`-oi` (a lone "." line does not end the message),
//! `-bm`, `-v`, other `-o...` options, and `-N`/`-R`/`-V`/`-B`/`-L`/`-h` with their value are
//! tolerated; other modes (`-bs`, `-bp`, ...) and unknown flags exit 64. `--submit-to
//! HOST:PORT` (else `$MXRELAY_SUBMIT_TO`, else 127.0.0.1:2525) names the daemon.
//!
//! The message gets `From:`, `Date:` and `Message-ID:` when it lacks them, Bcc: fields are
//! removed, bare LF becomes CRLF and leading dots are doubled on the wire.
//!
//! This file is the command itself (flags → message → submission, exit codes) and what it
//! learns from the environment; `args` parses the flags, `address` the addresses, `message`
//! reads the message and fixes its header, `submit` hands it to the daemon.

mod address;
mod args;
mod message;
mod submit;

use std::io::{self, BufRead};
use std::process::ExitCode;
use std::time::SystemTime;

use crate::smtp::address::{Mailbox, is_valid_domain};
use address::{display_name, parse_address_list, parse_sender, recipient};
use args::{USAGE, parse_args, valid_target};
use message::{header_recipients, message_id, read_message, rewrite};

/// sysexits.h codes.
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_NOUSER: u8 = 67;
pub const EX_UNAVAILABLE: u8 = 69;
pub const EX_IOERR: u8 = 74;
pub const EX_TEMPFAIL: u8 = 75;

pub const DEFAULT_SUBMIT_TO: &str = "127.0.0.1:2525";
pub const SUBMIT_TO_ENV: &str = "MXRELAY_SUBMIT_TO";
/// Largest message read from stdin.
pub const MAX_MESSAGE: usize = 64 << 20;

/// Runs the sendmail command. `args` excludes argv[0]. Reads stdin, writes diagnostics to stderr.
pub fn main(args: &[String]) -> ExitCode {
    match run(args, &mut io::stdin().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            for line in f.message.lines() {
                eprintln!("mxrelay sendmail: {line}");
            }
            ExitCode::from(f.code)
        }
    }
}

/// Why the command fails: the exit code and the message for stderr.
#[derive(Debug, PartialEq, Eq)]
struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn run(args: &[String], stdin: &mut dyn BufRead) -> Result<(), Failure> {
    let opts = parse_args(args).map_err(|m| fail(EX_USAGE, m))?;
    if opts.help {
        print!("{USAGE}");
        return Ok(());
    }
    let (target, source) = match &opts.submit_to {
        Some(t) => (t.clone(), "--submit-to"),
        None => match std::env::var(SUBMIT_TO_ENV) {
            Ok(t) if !t.is_empty() => (t, SUBMIT_TO_ENV),
            _ => (DEFAULT_SUBMIT_TO.to_string(), "default"),
        },
    };
    if !valid_target(&target) {
        return Err(fail(
            EX_USAGE,
            format!("{source} {target:?}: expected HOST:PORT"),
        ));
    }
    if !opts.extract && opts.recipients.is_empty() {
        return Err(fail(
            EX_USAGE,
            "no recipients (give them as arguments, or use -t to take them from the message)",
        ));
    }
    let host = hostname();
    let sender = match &opts.sender {
        Some(f) => parse_sender(f, &host).map_err(|m| fail(EX_USAGE, m))?,
        None => Some(format!("{}@{host}", login_name())),
    };
    let raw = read_message(stdin, opts.ignore_dots, MAX_MESSAGE)?;

    let mut wanted: Vec<String> = opts
        .recipients
        .iter()
        .flat_map(|a| parse_address_list(a))
        .collect();
    if opts.extract {
        wanted.extend(header_recipients(&raw));
    }
    let mut rcpts: Vec<String> = Vec::new();
    for a in &wanted {
        let r = recipient(a, &host).map_err(|m| fail(EX_NOUSER, m))?;
        if !rcpts.iter().any(|x| x.eq_ignore_ascii_case(&r)) {
            rcpts.push(r);
        }
    }
    if rcpts.is_empty() {
        return Err(fail(
            EX_USAGE,
            "no recipients (none given, none found in To:, Cc: or Bcc:)",
        ));
    }

    let from_addr = sender
        .clone()
        .unwrap_or_else(|| format!("{}@{host}", login_name()));
    let from = match opts.full_name.as_deref().map(display_name) {
        Some(name) if !name.is_empty() => format!("{name} <{from_addr}>"),
        _ => format!("<{from_addr}>"),
    };
    let msg = rewrite(
        &raw,
        &[
            ("From", from),
            ("Date", crate::date::rfc5322(SystemTime::now())),
            ("Message-ID", message_id(&host)),
        ],
    );
    submit::submit(&target, &host, sender.as_deref(), &rcpts, &msg)
}

// ---- the environment ---------------------------------------------------------------------

fn hostname() -> String {
    dns_lookup::get_hostname()
        .ok()
        .filter(|h| is_valid_domain(h))
        .unwrap_or_else(|| "localhost".into())
}

/// `$USER`, `$LOGNAME`, the uid's name, or "root"/the uid.
fn login_name() -> String {
    let usable = |n: &str| Mailbox::parse(&format!("{n}@localhost")).is_ok();
    for var in ["USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var)
            && usable(&v)
        {
            return v;
        }
    }
    // SAFETY: getuid cannot fail; getpwuid_r writes only into `pw` and `buf`, whose sizes it
    // is given, and the name is read before `buf` goes away.
    unsafe {
        let uid = libc::getuid();
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) == 0
            && !result.is_null()
            && !pw.pw_name.is_null()
            && let Ok(name) = std::ffi::CStr::from_ptr(pw.pw_name).to_str()
            && usable(name)
        {
            return name.to_string();
        }
        if uid == 0 {
            "root".into()
        } else {
            uid.to_string()
        }
    }
}
