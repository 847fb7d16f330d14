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

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::smtp::address::{Mailbox, is_valid_domain};
use crate::smtp::data::DotStuffer;
use crate::smtp::reply::parse_line;

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
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_REPLY_LINE: u64 = 4096;
const MAX_REPLY_LINES: usize = 100;

const USAGE: &str = "\
usage: mxrelay sendmail [-t] [-i] [-f SENDER] [-F NAME] [--submit-to HOST:PORT] [--] [RECIPIENT...]
Reads a message from stdin and queues it with the mxrelay daemon (default 127.0.0.1:2525,
or $MXRELAY_SUBMIT_TO). Exits 0 once the message is queued.
  -t            also send to the To:, Cc: and Bcc: addresses (Bcc: is removed)
  -i, -oi       a line with a single \".\" does not end the message
  -f SENDER     envelope sender (-f '<>' for the null sender); default $USER@hostname
  -F NAME       full name for the From: header added when the message has none
";

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

#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    extract: bool,
    ignore_dots: bool,
    sender: Option<String>,
    full_name: Option<String>,
    submit_to: Option<String>,
    recipients: Vec<String>,
    help: bool,
}

/// sendmail's flags, getopt-style: `-ti`, `-oi`, `-fx` and `-f x` all work.
fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            o.recipients.extend(it.cloned());
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            match long.split_once('=') {
                Some(("submit-to", v)) => o.submit_to = Some(v.to_string()),
                None if long == "submit-to" => {
                    let v = it.next().ok_or("--submit-to needs HOST:PORT")?;
                    o.submit_to = Some(v.clone());
                }
                None if long == "help" => o.help = true,
                _ => return Err(format!("unknown flag {arg} (see --help)")),
            }
            continue;
        }
        let Some(flags) = arg.strip_prefix('-') else {
            o.recipients.push(arg.clone());
            continue;
        };
        if flags.is_empty() {
            return Err("unknown flag - (see --help)".into());
        }
        for (i, c) in flags.char_indices() {
            match c {
                't' => o.extract = true,
                'i' => o.ignore_dots = true,
                'v' | 'm' | 'n' | 'U' | 'G' => {}
                'f' | 'r' | 'F' | 'o' | 'b' | 'N' | 'R' | 'V' | 'B' | 'L' | 'h' => {
                    let attached = &flags[i + 1..];
                    let value = if attached.is_empty() {
                        it.next().ok_or(format!("-{c} needs a value"))?.clone()
                    } else {
                        attached.to_string()
                    };
                    match c {
                        'f' | 'r' => o.sender = Some(value),
                        'F' => o.full_name = Some(value),
                        'o' if value == "i" => o.ignore_dots = true,
                        'b' if value == "p" => {
                            return Err("-bp is not supported (use mxrelay queue list)".into());
                        }
                        'b' if value != "m" => {
                            return Err(format!(
                                "-b{value} is not supported (only -bm, sending a message, is)"
                            ));
                        }
                        _ => {} // -oX, -N, -R, -V, -B, -L, -h: tolerated
                    }
                    break;
                }
                _ => return Err(format!("unknown flag -{c} (see --help)")),
            }
        }
    }
    Ok(o)
}

/// A `HOST:PORT` submission target (IPv6 as `[::1]:2525`).
fn valid_target(t: &str) -> bool {
    t.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
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
    submit(&target, &host, sender.as_deref(), &rcpts, &msg)
}

// ---- the message -------------------------------------------------------------------------

/// Reads the message: up to a lone "." line unless `ignore_dots`, at most `max` bytes.
fn read_message(
    input: &mut dyn BufRead,
    ignore_dots: bool,
    max: usize,
) -> Result<Vec<u8>, Failure> {
    let mut input = input.take(max as u64 + 1);
    let mut msg = Vec::new();
    loop {
        let start = msg.len();
        let n = input
            .read_until(b'\n', &mut msg)
            .map_err(|e| fail(EX_IOERR, format!("cannot read the message from stdin: {e}")))?;
        if n == 0 {
            break;
        }
        let line = &msg[start..];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if !ignore_dots && line.strip_suffix(b"\r").unwrap_or(line) == b"." {
            msg.truncate(start);
            return Ok(msg);
        }
    }
    if input.limit() == 0 {
        return Err(fail(
            EX_DATAERR,
            format!("message too large (the limit is {} MiB)", max >> 20),
        ));
    }
    Ok(msg)
}

/// The header fields (each with its continuation lines and line ends) and what follows them
/// (the body, starting with the empty line when `separated`).
struct Head<'a> {
    fields: Vec<&'a [u8]>,
    rest: &'a [u8],
    separated: bool,
}

fn split_head(msg: &[u8]) -> Head<'_> {
    // A leading mbox "From " line (not a header field) is not part of the message.
    let first = msg.split(|&b| b == b'\n').next().unwrap_or_default();
    let msg = if first.starts_with(b"From ") && field_name(first).is_none() {
        msg.get(first.len() + 1..).unwrap_or_default()
    } else {
        msg
    };
    let (mut fields, mut open, mut pos) = (Vec::new(), None, 0);
    let separated = loop {
        let rest = &msg[pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = rest[..len].strip_suffix(b"\n").unwrap_or(&rest[..len]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if rest.is_empty() || line.is_empty() {
            break !rest.is_empty();
        }
        let continuation = open.is_some() && matches!(line[0], b' ' | b'\t');
        if !continuation {
            if field_name(line).is_none() {
                break false;
            }
            if let Some(start) = open.replace(pos) {
                fields.push(&msg[start..pos]);
            }
        }
        pos += len;
    };
    if let Some(start) = open {
        fields.push(&msg[start..pos]);
    }
    Head {
        fields,
        rest: &msg[pos..],
        separated,
    }
}

/// The name of a header field starting `line` (printable ASCII before the colon).
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    (!name.is_empty() && name.iter().all(|b| (33..127).contains(b))).then_some(name)
}

/// The unfolded value of a field, as text.
fn field_value(field: &[u8]) -> String {
    let colon = field.iter().position(|&b| b == b':').map_or(0, |i| i + 1);
    let value: Vec<u8> = field[colon..]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    String::from_utf8_lossy(&value).trim().to_string()
}

fn is_field(field: &[u8], name: &str) -> bool {
    field_name(field).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// The addresses in the To:, Cc: and Bcc: fields.
fn header_recipients(msg: &[u8]) -> Vec<String> {
    split_head(msg)
        .fields
        .iter()
        .filter(|f| ["To", "Cc", "Bcc"].iter().any(|n| is_field(f, n)))
        .flat_map(|f| parse_address_list(&field_value(f)))
        .collect()
}

/// The message without Bcc: fields, plus each `(name, value)` whose name it lacks.
fn rewrite(msg: &[u8], add: &[(&str, String)]) -> Vec<u8> {
    let head = split_head(msg);
    let mut out = Vec::with_capacity(msg.len() + 256);
    for f in head.fields.iter().filter(|f| !is_field(f, "Bcc")) {
        out.extend_from_slice(f);
        if !f.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in add {
        if !head.fields.iter().any(|f| is_field(f, name)) {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    if !head.separated {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(head.rest);
    out
}

/// The addr-specs of an RFC 5322 address list: angle-addrs, bare addr-specs, quoted display
/// names (commas inside are not separators), comments and groups (`team: a@b, c@d;`).
fn parse_address_list(s: &str) -> Vec<String> {
    fn quoted(chars: &mut std::str::Chars, out: &mut String, end: char) {
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '\\' {
                out.extend(chars.next());
            } else if c == end {
                return;
            }
        }
    }
    fn flush(out: &mut Vec<String>, word: &mut String, angle: &mut Option<String>) {
        let addr = match angle.take() {
            // A source route (`@a,@b:user@c`) is dropped.
            Some(a) if a.starts_with('@') => {
                a.split_once(':').map_or(a.clone(), |(_, m)| m.to_string())
            }
            Some(a) => a,
            None => word.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        word.clear();
        if !addr.is_empty() {
            out.push(addr);
        }
    }
    let (mut out, mut word, mut angle) = (Vec::new(), String::new(), None);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                word.push(c);
                quoted(&mut chars, &mut word, '"');
            }
            '[' => {
                word.push(c);
                quoted(&mut chars, &mut word, ']');
            }
            '(' => {
                let mut depth = 1;
                while depth > 0 {
                    match chars.next() {
                        Some('\\') => {
                            chars.next();
                        }
                        Some('(') => depth += 1,
                        Some(')') | None => depth -= 1,
                        Some(_) => {}
                    }
                }
                word.push(' ');
            }
            '<' => {
                let mut a = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '>' => break,
                        '"' => {
                            a.push(c);
                            quoted(&mut chars, &mut a, '"');
                        }
                        c if c.is_whitespace() => {}
                        c => a.push(c),
                    }
                }
                angle = Some(a);
            }
            ':' => word.clear(), // a group's display name
            ',' | ';' => flush(&mut out, &mut word, &mut angle),
            c => word.push(c),
        }
    }
    flush(&mut out, &mut word, &mut angle);
    out
}

fn has_domain(addr: &str) -> bool {
    addr.rfind('@').is_some_and(|i| !addr[i..].contains('"'))
}

/// A recipient as given, qualified with the host name when it has no domain (`root` →
/// `root@host`); a bare `postmaster` stays as is (RFC 5321 4.5.1).
fn recipient(addr: &str, host: &str) -> Result<String, String> {
    if addr.eq_ignore_ascii_case("postmaster") {
        return Ok("postmaster".into());
    }
    let a = if has_domain(addr) {
        addr.to_string()
    } else {
        format!("{addr}@{host}")
    };
    match Mailbox::parse(&a) {
        Ok(_) => Ok(a),
        Err(why) => Err(format!(
            "invalid recipient address {addr:?}: {why}; nothing was queued"
        )),
    }
}

/// `-f`'s value: None for the null sender (`<>` or empty), else one qualified address.
fn parse_sender(raw: &str, host: &str) -> Result<Option<String>, String> {
    let t = raw.trim();
    if t.is_empty() || t == "<>" {
        return Ok(None);
    }
    let bad = |why: &str| format!("invalid sender address -f {raw:?}: {why}");
    if t.chars().any(char::is_control) {
        return Err(bad("control character"));
    }
    let [a] = parse_address_list(t)
        .try_into()
        .map_err(|_| bad("expected one address"))?;
    let a = if has_domain(&a) {
        a
    } else {
        format!("{a}@{host}")
    };
    Mailbox::parse(&a).map_err(bad)?;
    Ok(Some(a))
}

/// `-F`'s value as an RFC 5322 display name: as is when it is atoms, else quoted, else
/// (non-ASCII) RFC 2047 encoded words.
fn display_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let name = name.trim();
    if name.is_empty() {
        return String::new();
    }
    if !name.is_ascii() {
        let mut words = vec![String::new()];
        for c in name.chars() {
            let enc = match c {
                ' ' => "_".to_string(),
                c if c.is_ascii_alphanumeric() || "!*+-/".contains(c) => c.to_string(),
                c => c
                    .encode_utf8(&mut [0; 4])
                    .bytes()
                    .map(|b| format!("={b:02X}"))
                    .collect(),
            };
            // An encoded word is at most 75 characters, 12 of them "=?UTF-8?Q?" and "?=".
            if words.last().unwrap().len() + enc.len() > 63 {
                words.push(String::new());
            }
            words.last_mut().unwrap().push_str(&enc);
        }
        let words: Vec<String> = words.iter().map(|w| format!("=?UTF-8?Q?{w}?=")).collect();
        return words.join(" ");
    }
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    if name
        .split(' ')
        .all(|w| !w.is_empty() && w.bytes().all(atext))
    {
        return name.to_string();
    }
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
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

fn message_id(host: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "<{}.{:09}.{}.{random:016x}@{host}>",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

// ---- submission --------------------------------------------------------------------------

/// A complete reply: its code and its lines' text (enhanced code included) joined by spaces.
struct Reply {
    code: u16,
    text: String,
    lines: Vec<String>,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// The failure for an unexpected reply: 4xx is temporary (75), 5xx permanent (69).
fn refused(target: &str, what: &str, r: &Reply) -> Failure {
    let code = if r.code >= 500 {
        EX_UNAVAILABLE
    } else {
        EX_TEMPFAIL
    };
    fail(
        code,
        format!("the mail daemon at {target} refused {what}: {r}"),
    )
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        _ => e.to_string(),
    }
}

struct Session<'a> {
    target: &'a str,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl<'a> Session<'a> {
    fn connect(target: &'a str) -> Result<Session<'a>, Failure> {
        let unreachable = |why: String| {
            fail(
                EX_TEMPFAIL,
                format!("cannot reach the mail daemon at {target}: {why}"),
            )
        };
        let addrs = target
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    let setup = s
                        .set_read_timeout(Some(IO_TIMEOUT))
                        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
                        .and_then(|_| s.try_clone());
                    let reader = setup.map_err(|e| unreachable(describe(&e)))?;
                    return Ok(Session {
                        target,
                        reader: BufReader::new(reader),
                        writer: s,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(unreachable(describe(&last)))
    }

    fn lost(&self, e: &io::Error) -> Failure {
        let target = self.target;
        fail(
            EX_TEMPFAIL,
            match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    format!("timed out waiting for the mail daemon at {target}")
                }
                _ => format!(
                    "lost the connection to the mail daemon at {target}: {}",
                    describe(e)
                ),
            },
        )
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.writer.write_all(bytes).map_err(|e| self.lost(&e))
    }

    fn reply(&mut self) -> Result<Reply, Failure> {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let read = (&mut self.reader)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut line);
            match read {
                Ok(0) => {
                    let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the daemon");
                    return Err(self.lost(&eof));
                }
                Ok(_) => {}
                Err(e) => return Err(self.lost(&e)),
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let Some((code, last, rest)) =
                parse_line(text).filter(|_| lines.len() < MAX_REPLY_LINES)
            else {
                let e = io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {text:?}"));
                return Err(self.lost(&e));
            };
            lines.push(rest.to_string());
            if last {
                return Ok(Reply {
                    code,
                    text: lines.join(" "),
                    lines,
                });
            }
        }
    }

    fn command(&mut self, line: &str) -> Result<Reply, Failure> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// A command whose reply must be 2xx (or `want`).
    fn expect(&mut self, line: &str, want: u16, what: &str) -> Result<Reply, Failure> {
        let r = self.command(line)?;
        if r.code == want || (want == 250 && (200..300).contains(&r.code)) {
            Ok(r)
        } else {
            let _ = self.command("QUIT");
            Err(refused(self.target, what, &r))
        }
    }
}

fn submit(
    target: &str,
    helo: &str,
    sender: Option<&str>,
    rcpts: &[String],
    msg: &[u8],
) -> Result<(), Failure> {
    let mut s = Session::connect(target)?;
    let greeting = s.reply()?;
    if greeting.code != 220 {
        return Err(refused(target, "the connection", &greeting));
    }
    let ehlo = s.command(&format!("EHLO {helo}"))?;
    let keywords: Vec<String> = if (200..300).contains(&ehlo.code) {
        let words = ehlo.lines.iter().skip(1);
        words
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_ascii_uppercase)
            .collect()
    } else if ehlo.code >= 500 {
        s.expect(&format!("HELO {helo}"), 250, "HELO")?;
        Vec::new()
    } else {
        return Err(refused(target, "EHLO", &ehlo));
    };
    let offers = |k: &str| keywords.iter().any(|x| x == k);

    let mut mail = format!("MAIL FROM:<{}>", sender.unwrap_or(""));
    if offers("SIZE") {
        mail += &format!(
            " SIZE={}",
            msg.len() + msg.iter().filter(|&&b| b == b'\n').count()
        );
    }
    if offers("8BITMIME") && !msg.is_ascii() {
        mail += " BODY=8BITMIME";
    }
    if offers("SMTPUTF8")
        && !(sender.unwrap_or("").is_ascii() && rcpts.iter().all(|r| r.is_ascii()))
    {
        mail += " SMTPUTF8";
    }
    s.expect(&mail, 250, &mail)?;

    let mut refusals = Vec::new();
    for rcpt in rcpts {
        let r = s.command(&format!("RCPT TO:<{rcpt}>"))?;
        if !(200..300).contains(&r.code) {
            refusals.push((rcpt, r));
        }
    }
    if !refusals.is_empty() {
        let _ = s.command("QUIT");
        let permanent = refusals.iter().any(|(_, r)| r.code >= 500);
        let mut text: Vec<String> = refusals
            .iter()
            .map(|(a, r)| format!("the mail daemon at {target} refused the recipient <{a}>: {r}"))
            .collect();
        text.push("nothing was queued".into());
        return Err(fail(
            if permanent { EX_NOUSER } else { EX_TEMPFAIL },
            text.join("\n"),
        ));
    }

    s.expect("DATA", 354, "DATA")?;
    let mut stuffer = DotStuffer::default();
    let mut wire = Vec::with_capacity(64 * 1024 + 1024);
    for chunk in msg.chunks(64 * 1024) {
        wire.clear();
        stuffer.stuff(chunk, &mut wire);
        s.send(&wire)?;
    }
    wire.clear();
    stuffer.finish(&mut wire);
    s.send(&wire)?;
    let r = s.reply()?;
    if !(200..300).contains(&r.code) {
        let _ = s.command("QUIT");
        return Err(refused(target, "the message", &r));
    }
    let _ = s.command("QUIT");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn flags() {
        let o = |f: fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            Ok(o)
        };
        let cases: Vec<(&[&str], Result<Options, String>)> = vec![
            (&["a@b"], o(|o| o.recipients = args(&["a@b"]))),
            (
                &["-t", "-i"],
                o(|o| (o.extract, o.ignore_dots) = (true, true)),
            ),
            (&["-ti"], o(|o| (o.extract, o.ignore_dots) = (true, true))),
            (
                &["-oi", "-oem", "-odb", "-bm", "-v"],
                o(|o| o.ignore_dots = true),
            ),
            (&["-o", "i"], o(|o| o.ignore_dots = true)),
            (
                &["-f", "x@y", "a@b"],
                o(|o| (o.sender, o.recipients) = (Some("x@y".into()), args(&["a@b"]))),
            ),
            (&["-fx@y"], o(|o| o.sender = Some("x@y".into()))),
            (&["-r", "x@y"], o(|o| o.sender = Some("x@y".into()))),
            (&["-f", ""], o(|o| o.sender = Some("".into()))),
            (
                &["-F", "Cron Daemon"],
                o(|o| o.full_name = Some("Cron Daemon".into())),
            ),
            (
                &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
                o(|o| {
                    (o.full_name, o.ignore_dots, o.recipients) =
                        (Some("CronDaemon".into()), true, args(&["root"]))
                }),
            ),
            (
                &["-N", "never", "-R", "hdrs", "-V", "id", "a@b"],
                o(|o| o.recipients = args(&["a@b"])),
            ),
            (
                &["a@b", "-t"],
                o(|o| (o.extract, o.recipients) = (true, args(&["a@b"]))),
            ),
            (
                &["--", "-t", "a@b"],
                o(|o| o.recipients = args(&["-t", "a@b"])),
            ),
            (
                &["--submit-to", "h:1", "a@b"],
                o(|o| (o.submit_to, o.recipients) = (Some("h:1".into()), args(&["a@b"]))),
            ),
            (
                &["--submit-to=h:1"],
                o(|o| o.submit_to = Some("h:1".into())),
            ),
            (&["--help"], o(|o| o.help = true)),
            (
                &["-bs"],
                Err("-bs is not supported (only -bm, sending a message, is)".into()),
            ),
            (
                &["-b", "d"],
                Err("-bd is not supported (only -bm, sending a message, is)".into()),
            ),
            (
                &["-bp"],
                Err("-bp is not supported (use mxrelay queue list)".into()),
            ),
            (&["-x"], Err("unknown flag -x (see --help)".into())),
            (&["-"], Err("unknown flag - (see --help)".into())),
            (&["-tq"], Err("unknown flag -q (see --help)".into())),
            (&["--frob"], Err("unknown flag --frob (see --help)".into())),
            (&["-f"], Err("-f needs a value".into())),
            (&["--submit-to"], Err("--submit-to needs HOST:PORT".into())),
        ];
        for (input, want) in cases {
            assert_eq!(parse_args(&args(input)), want, "{input:?}");
        }
    }

    #[test]
    fn targets() {
        for (t, ok) in [
            ("127.0.0.1:2525", true),
            ("localhost:25", true),
            ("[::1]:2525", true),
            ("127.0.0.1", false),
            (":25", false),
            ("h:0", false),
            ("h:99999", false),
        ] {
            assert_eq!(valid_target(t), ok, "{t}");
        }
    }

    #[test]
    fn reading_stdin() {
        let cases: &[(&[u8], bool, &[u8])] = &[
            (b"a\n.\nb\n", false, b"a\n"),
            (b"a\r\n.\r\nb\r\n", false, b"a\r\n"),
            (b"a\n.", false, b"a\n"),
            (b"a\n.\nb\n", true, b"a\n.\nb\n"),
            (b"a\n..\n.b\n", false, b"a\n..\n.b\n"),
            (b"no newline", false, b"no newline"),
            (b"", false, b""),
        ];
        for &(input, ignore, want) in cases {
            let got = read_message(&mut &input[..], ignore, 1024).unwrap();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
        }
        let big = vec![b'x'; 1025];
        assert_eq!(
            read_message(&mut &big[..], true, 1024).unwrap_err().code,
            EX_DATAERR
        );
        assert!(read_message(&mut &big[..1024], true, 1024).is_ok());
    }

    #[test]
    fn address_lists() {
        let cases: &[(&str, &[&str])] = &[
            ("a@b", &["a@b"]),
            ("a@b, c@d", &["a@b", "c@d"]),
            ("\"Name, Jr.\" <a@b>, c@d", &["a@b", "c@d"]),
            ("Alice <a@b>", &["a@b"]),
            ("a@b (Alice, the boss), c@d", &["a@b", "c@d"]),
            ("(x) <a@b> (y (nested))", &["a@b"]),
            ("team: e@f, \"G\" <g@h>;, i@j", &["e@f", "g@h", "i@j"]),
            ("undisclosed-recipients:;", &[]),
            ("<@relay.x:a@b>", &["a@b"]),
            ("\"john doe\"@b", &["\"john doe\"@b"]),
            ("<\"a>b\"@c>", &["\"a>b\"@c"]),
            ("user@[IPv6:::1]", &["user@[IPv6:::1]"]),
            ("  ", &[]),
            ("<>", &[]),
            ("Bad Name a@b", &["Bad Name a@b"]),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_address_list(input), want, "{input}");
        }
    }

    #[test]
    fn recipients_and_senders() {
        for (input, want) in [
            ("a@b.test", Ok("a@b.test".to_string())),
            ("root", Ok("root@host.test".into())),
            ("Postmaster", Ok("postmaster".into())),
            ("\"x@y\"", Ok("\"x@y\"@host.test".into())),
            (
                "a b@c.test",
                Err(
                    "invalid recipient address \"a b@c.test\": bad local part; nothing was queued"
                        .into(),
                ),
            ),
        ] {
            let got = recipient(input, "host.test");
            assert_eq!(got.is_ok(), want.is_ok(), "{input}: {got:?}");
            if want.is_ok() {
                assert_eq!(got, want, "{input}");
            }
        }
        for (input, want) in [
            ("", Some(None)),
            ("<>", Some(None)),
            ("x@y.test", Some(Some("x@y.test"))),
            ("<x@y.test>", Some(Some("x@y.test"))),
            ("Bounce <x@y.test>", Some(Some("x@y.test"))),
            ("www-data", Some(Some("www-data@host.test"))),
            ("a@b, c@d", None),
            ("x@y.test\r\nRCPT TO:<z@z>", None),
        ] {
            let got = parse_sender(input, "host.test");
            assert_eq!(got.ok(), want.map(|w| w.map(String::from)), "{input}");
        }
    }

    #[test]
    fn display_names() {
        for (input, want) in [
            ("Cron Daemon", "Cron Daemon"),
            ("CronDaemon", "CronDaemon"),
            ("J. Smith", "\"J. Smith\""),
            ("Smith, John", "\"Smith, John\""),
            ("a \"b\" \\c", "\"a \\\"b\\\" \\\\c\""),
            ("evil\r\nBcc: x@y", "\"evil  Bcc: x@y\""),
            ("José Müller", "=?UTF-8?Q?Jos=C3=A9_M=C3=BCller?="),
            (" \t ", ""),
        ] {
            assert_eq!(display_name(input), want, "{input}");
        }
        let long = display_name(&"é".repeat(40));
        assert!(long.split(' ').all(|w| w.len() <= 75), "{long}");
        assert_eq!(long.split(' ').count(), 4, "{long}");
    }

    #[test]
    fn header_scan() {
        let msg =
            b"To: a@b,\n c@d\nCC: \"X, Y\" <e@f>\nBcc: g@h\nSubject: To: no@no\n\nTo: body@no\n";
        assert_eq!(header_recipients(msg), ["a@b", "c@d", "e@f", "g@h"]);
        let cases: &[(&[u8], &str)] = &[
            (
                b"From: x\nBcc: a@b,\n\tc@d\nSubject: s\n\nbody\nBcc: stays\n",
                "From: x\nSubject: s\nD: 1\r\n\nbody\nBcc: stays\n",
            ),
            (
                b"bcc: a@b\r\nD: 0\r\n\r\nbody\r\n",
                "D: 0\r\nFrom: f\r\n\r\nbody\r\n",
            ),
            (b"Subject: s", "Subject: s\r\nFrom: f\r\nD: 1\r\n\r\n"),
            (b"", "From: f\r\nD: 1\r\n\r\n"),
            (
                b"just a body line\n",
                "From: f\r\nD: 1\r\n\r\njust a body line\n",
            ),
            (b" folded first\n", "From: f\r\nD: 1\r\n\r\n folded first\n"),
            (
                b"From: x\nnot a header\nmore\n",
                "From: x\nD: 1\r\n\r\nnot a header\nmore\n",
            ),
            (
                b"From sender@x Mon Jan  1 00:00:00 2024\nFrom: x\nD: 2\n\nb\n",
                "From: x\nD: 2\n\nb\n",
            ),
            (b"Subject : odd\n\n", "Subject : odd\nFrom: f\r\nD: 1\r\n\n"),
        ];
        let add = [("From", "f".to_string()), ("D", "1".to_string())];
        for &(input, want) in cases {
            let got = rewrite(input, &add);
            assert_eq!(
                String::from_utf8_lossy(&got),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn reply_failures() {
        let r = |code, text: &str| Reply {
            code,
            text: text.into(),
            lines: vec![text.into()],
        };
        for (reply, code) in [
            (r(421, "4.3.2 shutting down"), EX_TEMPFAIL),
            (r(554, "5.7.1 no"), EX_UNAVAILABLE),
        ] {
            let f = refused("h:1", "the message", &reply);
            assert_eq!(f.code, code);
            assert_eq!(
                f.message,
                format!("the mail daemon at h:1 refused the message: {reply}")
            );
        }
    }

    #[test]
    fn message_ids_are_unique() {
        let (a, b) = (message_id("h.test"), message_id("h.test"));
        assert_ne!(a, b);
        assert!(a.starts_with('<') && a.ends_with("@h.test>"), "{a}");
    }
}
