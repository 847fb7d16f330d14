//! Transcript tests: each `tests/transcripts/*.smtp` file pins one SMTP rule as a dialogue. Every
//! file runs twice: against the pure `smtp::Session` (what the protocol core decides) and over a
//! real socket against an in-process relay (proving the driver adds nothing).
//!
//! One item per line:
//!
//! | line                  | meaning                                                             |
//! |-----------------------|---------------------------------------------------------------------|
//! | `# text`              | comment; the first one says which rule the file pins                |
//! | `! config k=v ...`    | `relay=allowed\|denied`, `max-recipients=N`, `max-errors=N`, `max-size=N`, `auth=on` (account alice/secret, AUTH allowed without TLS from loopback); the limits `max-messages=N`, `rate-limit-ip=N/PERIOD`, `rate-limit-user=N/PERIOD`, `rate-limit-rcpt-user=N/PERIOD` (the client is then not exempt) |
//! | `! socket-only`       | skipped by the pure run (the rule needs the real DATA reader)       |
//! | `C: line`             | one command, sent with CRLF                                         |
//! | `P: a\|b\|c`          | a pipelined group, sent in one write                                |
//! | `D: line`             | message content after 354, then "." (the pure run reads it with the DATA reader and asks the session for its verdict) |
//! | `S: text`, `S: text*` | one reply line, exact or by prefix                                  |
//! | `S: <EOF>`            | the server has closed the connection                                |

mod support;

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use mxrelay::config::{Parsed, parse_args, parse_rate};
use mxrelay::delivery::clock::FakeClock;
use mxrelay::limits;
use mxrelay::relay::Relay;
use mxrelay::smtp::address::Mailbox;
use mxrelay::smtp::data::DataReader;
use mxrelay::smtp::reply::Reply;
use mxrelay::smtp::session::{Effect, Session, SessionConfig};

const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The one account of `! config auth=on` transcripts.
const ACCOUNT: (&str, &str) = ("alice", "secret");

#[derive(Clone, Debug)]
struct Limits {
    relay_allowed: bool,
    max_recipients: usize,
    max_errors: u32,
    max_size: u64,
    auth: bool,
    /// Flags of the rate and concurrency limits, as given.
    limit_flags: Vec<(String, String)>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            relay_allowed: true,
            max_recipients: 1000,
            max_errors: 10,
            max_size: 10 << 20,
            auth: false,
            limit_flags: Vec::new(),
        }
    }
}

enum Item {
    Send(Vec<String>),
    Data(Vec<String>),
    Expect(String),
    Eof,
}

struct Transcript {
    name: String,
    limits: Limits,
    socket_only: bool,
    /// Each item with its 1-based line number in the file.
    items: Vec<(usize, Item)>,
}

fn parse(path: &Path) -> Result<Transcript, String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let mut t = Transcript {
        name: name.clone(),
        limits: Limits::default(),
        socket_only: false,
        items: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let bad = |why: &str| format!("{name}:{n}: {why}: {line:?}");
        let (kind, rest) = line.split_at(line.find(':').unwrap_or(0));
        // "C: x" → "x"; "C:" (an empty line) → "".
        let arg = rest
            .strip_prefix(": ")
            .or(rest.strip_prefix(':'))
            .unwrap_or("");
        let item = match kind {
            _ if line.trim().is_empty() || line.starts_with('#') => continue,
            _ if line.starts_with('!') => {
                directive(&mut t, line[1..].trim()).map_err(|e| bad(&e))?;
                continue;
            }
            "C" => Item::Send(vec![arg.to_string()]),
            "P" => Item::Send(arg.split('|').map(str::to_string).collect()),
            "S" if arg == "<EOF>" => Item::Eof,
            "S" => Item::Expect(arg.to_string()),
            "D" => {
                if let Some((_, Item::Data(lines))) = t.items.last_mut() {
                    lines.push(arg.to_string());
                    continue;
                }
                Item::Data(vec![arg.to_string()])
            }
            _ => return Err(bad("unknown line type")),
        };
        t.items.push((n, item));
    }
    Ok(t)
}

fn directive(t: &mut Transcript, d: &str) -> Result<(), String> {
    let words: Vec<&str> = d.split_whitespace().collect();
    match words.as_slice() {
        ["socket-only"] => t.socket_only = true,
        ["config", settings @ ..] => {
            for s in settings {
                let l = &mut t.limits;
                let num = |v: &str| v.parse::<u64>().map_err(|_| format!("bad number in {s}"));
                match s.split_once('=') {
                    Some(("relay", "allowed")) => l.relay_allowed = true,
                    Some(("relay", "denied")) => l.relay_allowed = false,
                    Some(("max-recipients", v)) => l.max_recipients = num(v)? as usize,
                    Some(("max-errors", v)) => l.max_errors = num(v)? as u32,
                    Some(("max-size", v)) => l.max_size = num(v)?,
                    Some(("auth", "on")) => l.auth = true,
                    Some((k @ "max-messages", v)) => {
                        num(v)?;
                        l.limit_flags
                            .push((format!("{k}-per-connection"), v.into()));
                    }
                    Some((
                        k @ ("rate-limit-ip" | "rate-limit-user" | "rate-limit-rcpt-user"),
                        v,
                    )) => {
                        parse_rate(v)?;
                        l.limit_flags.push((k.into(), v.into()));
                    }
                    _ => return Err(format!("unknown setting {s}")),
                }
            }
        }
        _ => return Err("unknown directive".into()),
    }
    Ok(())
}

/// The client side of a run: the pure session or a socket.
trait Peer {
    fn send(&mut self, commands: &[String]) -> Result<(), String>;
    fn send_data(&mut self, lines: &[String]) -> Result<(), String>;
    /// The next reply line without CRLF, or `None` once the server has closed.
    fn next_line(&mut self) -> Result<Option<String>, String>;
    /// Checks run after the last item.
    fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }
}

fn run(t: &Transcript, peer: &mut dyn Peer) -> Result<(), String> {
    for (n, item) in &t.items {
        let result = match item {
            Item::Send(commands) => peer.send(commands),
            Item::Data(lines) => peer.send_data(lines),
            Item::Expect(want) => match peer.next_line() {
                Ok(Some(got)) if line_matches(want, &got) => Ok(()),
                Ok(got) => Err(format!(
                    "expected {want:?}, got {:?}",
                    got.as_deref().unwrap_or("<EOF>")
                )),
                Err(e) => Err(format!("expected {want:?}, got {e}")),
            },
            Item::Eof => match peer.next_line() {
                Ok(None) => Ok(()),
                Ok(Some(got)) => Err(format!("expected <EOF>, got {got:?}")),
                Err(e) => Err(format!("expected <EOF>, got {e}")),
            },
        };
        result.map_err(|e| format!("{}:{n}: {e}", t.name))?;
    }
    peer.finish()
        .map_err(|e| format!("{}: at the end: {e}", t.name))
}

fn line_matches(want: &str, got: &str) -> bool {
    match want.strip_suffix('*') {
        Some(prefix) => got.starts_with(prefix),
        None => got == want,
    }
}

// ---- the pure run ------------------------------------------------------------------------

#[derive(PartialEq)]
enum PureState {
    Commands,
    InData,
    Closed { eof_seen: bool },
}

/// D: lines as they go on the wire: dot-stuffed, then the end marker.
fn data_wire(lines: &[String]) -> String {
    let mut wire = String::new();
    for l in lines {
        if l.starts_with('.') {
            wire.push('.');
        }
        wire.push_str(l);
        wire.push_str("\r\n");
    }
    wire.push_str(".\r\n");
    wire
}

/// The client's address in both runs.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The limits of a transcript, as the relay reads them from its flags (no client exempt).
fn limits_config(l: &Limits) -> limits::LimitsConfig {
    let mut args = vec!["--limit-exempt".to_string(), "none".into()];
    for (k, v) in &l.limit_flags {
        args.extend([format!("--{k}"), v.clone()]);
    }
    let Ok(Parsed::Run(cfg)) = parse_args(&args) else {
        panic!("bad limit flags {args:?}");
    };
    cfg.server.limits
}

struct Pure {
    session: Session,
    limits: limits::Limits,
    max_size: u64,
    pending: VecDeque<String>,
    state: PureState,
}

impl Pure {
    fn new(l: &Limits) -> Pure {
        // The time stands still: rates refill only between transcripts.
        let limits = limits::Limits::new(limits_config(l), Arc::new(FakeClock::at(1 << 40)));
        let session = Session::new(SessionConfig {
            hostname: "relay.test".into(),
            max_message_size: l.max_size,
            // The relay's default, as in the socket run.
            max_hops: 50,
            max_recipients: l.max_recipients,
            max_errors: l.max_errors,
            relay_allowed: l.relay_allowed,
            postmaster: Mailbox::parse("postmaster@relay.test").unwrap(),
            tls_available: false,
            implicit_tls: false,
            auth_available: l.auth,
            require_auth: false,
            plaintext_auth: l.auth,
            limits: limits.for_session(CLIENT),
        });
        let mut pure = Pure {
            limits,
            max_size: l.max_size,
            pending: VecDeque::new(),
            state: PureState::Commands,
            session,
        };
        pure.push(&pure.session.greeting());
        pure
    }

    fn push(&mut self, r: &Reply) {
        let wire = r.render();
        self.pending
            .extend(wire.split_terminator("\r\n").map(str::to_string));
    }
}

impl Peer for Pure {
    fn send(&mut self, commands: &[String]) -> Result<(), String> {
        for c in commands {
            match self.state {
                PureState::Commands => {}
                PureState::InData => return Err(format!("{c:?} sent during DATA (want D: lines)")),
                PureState::Closed { .. } => return Err(format!("{c:?} sent after the close")),
            }
            let step = self.session.feed(c.as_bytes());
            // The rate limits answer right away, as the driver does.
            let step = match step.effect {
                Effect::Admit(what) if step.reply.is_none() => {
                    let verdict = self.limits.admit(CLIENT, self.session.auth_user(), what);
                    self.session.admitted(verdict)
                }
                _ => step,
            };
            if step.refused.is_some() != step.reply.as_ref().is_some_and(|r| r.code >= 400) {
                return Err(format!("refused is not set exactly for refusals: {step:?}"));
            }
            if let Some(r) = &step.reply {
                self.push(r);
            }
            self.state = match step.effect {
                Effect::Admit(_) => return Err(format!("a reply with Admit: {step:?}")),
                Effect::None | Effect::MailAccepted => PureState::Commands,
                Effect::BeginData => PureState::InData,
                Effect::Close => PureState::Closed { eof_seen: false },
                Effect::StartTls => return Err("STARTTLS cannot be scripted in transcripts".into()),
                Effect::Authenticate { user, password } => {
                    let ok = user == ACCOUNT.0 && password.as_deref() == Some(ACCOUNT.1.as_bytes());
                    let step = self.session.auth_result(ok, Vec::new());
                    self.push(step.reply.as_ref().expect("AUTH is answered"));
                    PureState::Commands
                }
            };
        }
        Ok(())
    }

    fn send_data(&mut self, lines: &[String]) -> Result<(), String> {
        if self.state != PureState::InData {
            return Err("D: lines, but the session is not reading DATA".into());
        }
        let mut reader = DataReader::new(self.max_size);
        let mut content = Vec::new();
        if reader
            .feed(data_wire(lines).as_bytes(), &mut content)
            .is_none()
        {
            return Err("the DATA reader missed the end of the message".into());
        }
        let verdict = self.session.data_verdict(reader.summary());
        let step = self
            .session
            .data_done(verdict.map(|()| "TESTID".to_string()));
        if step.refused.is_some() != step.reply.as_ref().is_some_and(|r| r.code >= 400) {
            return Err(format!("refused is not set exactly for refusals: {step:?}"));
        }
        self.push(step.reply.as_ref().expect("DATA is answered"));
        self.state = PureState::Commands;
        Ok(())
    }

    fn next_line(&mut self) -> Result<Option<String>, String> {
        if let Some(line) = self.pending.pop_front() {
            return Ok(Some(line));
        }
        match &mut self.state {
            PureState::Closed { eof_seen } => {
                *eof_seen = true;
                Ok(None)
            }
            _ => Err("nothing (the session is waiting for input)".into()),
        }
    }

    fn finish(&mut self) -> Result<(), String> {
        if !self.pending.is_empty() {
            return Err(format!("unexpected reply lines {:?}", self.pending));
        }
        if self.state == (PureState::Closed { eof_seen: false }) {
            return Err("the session closed, but the transcript lacks `S: <EOF>`".into());
        }
        Ok(())
    }
}

// ---- the socket run ----------------------------------------------------------------------

struct Socket {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Socket {
    fn connect(relay: &Relay) -> Socket {
        let stream = TcpStream::connect(relay.local_addrs()[0]).expect("connect to the relay");
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        Socket {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(bytes)
            .map_err(|e| format!("write failed: {e}"))
    }
}

impl Peer for Socket {
    fn send(&mut self, commands: &[String]) -> Result<(), String> {
        let wire: String = commands.iter().map(|c| format!("{c}\r\n")).collect();
        self.write(wire.as_bytes())
    }

    fn send_data(&mut self, lines: &[String]) -> Result<(), String> {
        self.write(data_wire(lines).as_bytes())
    }

    fn next_line(&mut self) -> Result<Option<String>, String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(format!("no reply within {REPLY_TIMEOUT:?}"))
            }
            Err(e) => Err(format!("read failed: {e}")),
            Ok(_) => match buf.strip_suffix(b"\r\n") {
                Some(line) => Ok(Some(String::from_utf8_lossy(line).into_owned())),
                None => Err(format!("{:?} (no CRLF)", String::from_utf8_lossy(&buf))),
            },
        }
    }
}

/// A spool directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn start_relay(t: &Transcript, spool: &Path) -> Relay {
    let l = &t.limits;
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "relay.test",
        // Queued mail meets a closed port and just defers: nothing leaves loopback.
        "--smarthost",
        "127.0.0.1:9",
        "--retry",
        "1h",
        "--workers",
        "1",
    ]
    .map(String::from)
    .into();
    args.extend([
        "--spool".into(),
        spool.display().to_string(),
        "--max-recipients".into(),
        l.max_recipients.to_string(),
        "--max-errors".into(),
        l.max_errors.to_string(),
        "--max-message-size".into(),
        l.max_size.to_string(),
    ]);
    if l.auth {
        fs::create_dir_all(spool).unwrap();
        let users = spool.join("users");
        support::write_secret(
            &users,
            format!(
                "{}:{}\n",
                ACCOUNT.0,
                mxrelay::auth::hash_password(ACCOUNT.1)
            ),
        );
        args.extend([
            "--users".into(),
            users.display().to_string(),
            "--plaintext-auth-loopback".into(),
        ]);
        args.extend(["--auth-fail-delay".into(), "0s".into()]);
    }
    if !l.limit_flags.is_empty() {
        // Loopback is trusted, and so exempt: not here.
        args.extend(["--limit-exempt".into(), "none".into()]);
        for (k, v) in &l.limit_flags {
            args.extend([format!("--{k}"), v.clone()]);
        }
    }
    if !l.relay_allowed {
        // 127.0.0.1 is outside this network, so the test client is untrusted.
        args.extend(["--trusted-network".into(), "10.255.255.0/24".into()]);
    }
    let Ok(Parsed::Run(cfg)) = parse_args(&args) else {
        panic!("{}: bad relay flags {args:?}", t.name);
    };
    Relay::start(&cfg).unwrap_or_else(|e| panic!("{}: relay start: {e}", t.name))
}

// ---- the tests ---------------------------------------------------------------------------

fn transcripts() -> Vec<Transcript> {
    support::smtp_files("tests/transcripts")
        .iter()
        .map(|p| parse(p).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn report(kind: &str, ran: usize, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} of {ran} transcripts failed against the {kind}:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn transcripts_against_session() {
    let all = transcripts();
    let pure: Vec<&Transcript> = all.iter().filter(|t| !t.socket_only).collect();
    let failures = pure
        .iter()
        .filter_map(|t| run(t, &mut Pure::new(&t.limits)).err())
        .collect();
    report("session", pure.len(), failures);
}

#[test]
fn transcripts_over_socket() {
    let all = transcripts();
    let root =
        TempDir(std::env::temp_dir().join(format!("mxrelay-transcripts-{}", std::process::id())));
    let mut failures = Vec::new();
    for (i, t) in all.iter().enumerate() {
        let relay = start_relay(t, &root.0.join(i.to_string()));
        let mut socket = Socket::connect(&relay);
        if let Err(e) = run(t, &mut socket) {
            failures.push(e);
        }
        drop(socket);
        relay.stop(Duration::from_secs(5));
    }
    report("relay over a socket", all.len(), failures);
}
