//! One delivery attempt for one job: tries the destination's hosts in order and runs the SMTP
//! client transaction. Failures are sorted by scope, as Postfix does: a host problem
//! (connect, greeting, EHLO, MAIL 4xx, I/O) moves on to the next host; a 5xx to MAIL or DATA
//! fails the message; RCPT replies decide each recipient. Remote replies are kept verbatim.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::route::{self, Candidate, Destination, RouteError};
use super::sites::Feedback;
use super::{Context, Job, RcptResult};
use crate::config::{SmarthostTls, TlsOutbound};
use crate::net::{LineReader, ReplyError, Stream, TakePlain};
use crate::smtp::client::{self, Action, Ending, Envelope, Failure, Needs, Report, Tls, Wait};
use crate::smtp::data::DotStuffer;
use crate::smtp::reply::Reply;
use crate::spool::Stored;
use crate::tracking::{PersonalCopy, Source};

/// RFC 5321 4.5.3.2 timeouts (minimums): 5 minutes for the greeting, MAIL and RCPT, 3 per
/// data block, 10 for the reply to the end of data. DATA initiation may be as short as 2
/// minutes; it waits 5 like the other commands, which saves a socket option change per
/// message.
const GREETING: Duration = Duration::from_secs(300);
const COMMAND: Duration = Duration::from_secs(300);
const DATA_BLOCK: Duration = Duration::from_secs(180);
const DATA_END: Duration = Duration::from_secs(600);
const QUIT: Duration = Duration::from_secs(5);
/// The longest reply line read.
const MAX_REPLY_LINE: usize = 1000;

pub type Results = Vec<(usize, RcptResult)>;

/// What one delivery attempt of a job came to.
pub struct Attempt {
    pub results: Results,
    /// What it says about the destination site.
    pub feedback: Feedback,
    /// The last host error, when no host took the mail.
    pub error: String,
    /// For MX delivery: the site the domain's MX hosts make (`Sites`).
    pub mx_site: Option<String>,
}

impl Attempt {
    fn new(results: Results, feedback: Feedback) -> Attempt {
        Attempt {
            results,
            feedback,
            error: String::new(),
            mx_site: None,
        }
    }

    /// No recipient left to try (all suppressed): no results, nothing learnt.
    pub fn nothing() -> Attempt {
        Attempt::new(Vec::new(), Feedback::Neutral)
    }

    /// Every recipient deferred for `reason`, with nothing learnt about the site.
    pub fn deferred(job: &Job, reason: String) -> Attempt {
        let results = job
            .rcpts
            .iter()
            .map(|(i, _)| {
                (
                    *i,
                    RcptResult::Deferred {
                        reason: reason.clone(),
                    },
                )
            })
            .collect();
        Attempt::new(results, Feedback::Neutral)
    }
}

/// How this destination wants TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    Off,
    /// STARTTLS when offered, certificate not checked; plaintext if the handshake fails.
    Opportunistic,
    /// STARTTLS or nothing.
    Required {
        verify: bool,
    },
    /// TLS from the first byte (port 465 style).
    Implicit {
        verify: bool,
    },
}

fn tls_mode(dest: &Destination, ctx: &Context) -> TlsMode {
    match dest {
        Destination::Smarthost(_) => match ctx.smarthost_tls {
            SmarthostTls::StartTls => TlsMode::Required {
                verify: !ctx.smarthost_insecure,
            },
            SmarthostTls::Implicit => TlsMode::Implicit {
                verify: !ctx.smarthost_insecure,
            },
            SmarthostTls::None => TlsMode::Off,
        },
        _ => match ctx.tls_outbound {
            TlsOutbound::May => TlsMode::Opportunistic,
            TlsOutbound::Encrypt => TlsMode::Required { verify: false },
            TlsOutbound::Verify => TlsMode::Required { verify: true },
        },
    }
}

/// Why a host did not work out; `tls` marks a failed handshake, after which opportunistic
/// TLS tries the same host again in plaintext.
struct HostError {
    reason: String,
    tls: bool,
    /// The TCP connection itself failed.
    connect: bool,
    /// The end of data went out and no verdict came back (timeout, lost connection): the
    /// next hop may have taken the message, so the attempt ends here, deferred. Trying a
    /// fresh connection or the next host at once would send it again in the same attempt.
    sent: bool,
}

impl From<String> for HostError {
    fn from(reason: String) -> Self {
        HostError {
            reason,
            tls: false,
            connect: false,
            sent: false,
        }
    }
}

impl TlsMode {
    /// What the client machine does, and whether the certificate is checked.
    fn client(self) -> (Tls, bool) {
        match self {
            TlsMode::Off => (Tls::Off, false),
            TlsMode::Opportunistic => (Tls::Opportunistic, false),
            TlsMode::Required { verify } => (Tls::Required, verify),
            TlsMode::Implicit { verify } => (Tls::Implicit, verify),
        }
    }
}

/// A message body as the attempt reads it: the spooled message, or bytes in tests.
pub trait Body {
    /// The message's `size` bytes, in order (`head`: see `Envelope::head`).
    fn open(&self, size: u64, head: u64) -> impl Read + '_;
}

impl Body for Stored {
    fn open(&self, size: u64, head: u64) -> impl Read + '_ {
        self.reader(size, head)
    }
}

/// A stored message with its lengths, as the source of recipients' own copies.
pub struct StoredMessage<'a> {
    pub stored: &'a Stored,
    pub size: u64,
    pub head: u64,
}

impl Source for StoredMessage<'_> {
    fn open(&self) -> impl Read + '_ {
        self.stored.reader(self.size, self.head)
    }
}

/// A recipient's own copy is sent as it is made (the job carries its size).
impl<S: Source> Body for PersonalCopy<'_, S> {
    fn open(&self, _size: u64, _head: u64) -> impl Read + '_ {
        self.bytes()
    }
}

pub fn deliver(job: &Job, body: &impl Body, ctx: &Context, cache: &mut Cache) -> Attempt {
    cache.expire(false);
    if let Some(mut conn) = cache.0.take_if(|c| c.dest == job.dest) {
        match transaction(&mut conn, job, body) {
            Ok((results, reusable)) => {
                keep_or_close(conn, reusable, ctx, cache);
                return Attempt::new(results, Feedback::Reached);
            }
            Err(e) if e.sent => return unknown_outcome(job, e.reason),
            // The kept connection went stale (closed by the server): start afresh.
            Err(e) => log::debug!("{}: kept connection unusable: {}", job.id, e.reason),
        }
    }
    let neutral = |r: RcptResult| Attempt::new(all(job, r), Feedback::Neutral);
    let mut hosts = match route::candidates(
        &job.dest,
        ctx.resolver.as_ref(),
        ctx.mx_port,
        super::random_below,
    ) {
        Ok(h) => h,
        Err(RouteError::Permanent { status, reason }) => {
            return neutral(RcptResult::Failed {
                status: status.into(),
                relay: None,
                reason,
            });
        }
        Err(RouteError::Temporary(reason)) => return neutral(RcptResult::Deferred { reason }),
    };
    if matches!(job.dest, Destination::Smarthost(_)) {
        ctx.hosts.order(&mut hosts);
    }
    try_hosts(job, body, ctx, &hosts, cache)
}

/// The end of data went out and no verdict came: deferred (the next hop may have the
/// message, and may get it again at the next attempt: the one transaction in flight).
fn unknown_outcome(job: &Job, reason: String) -> Attempt {
    log::info!(
        "{}: no verdict after the end of data ({reason}): deferred, not sent elsewhere now; \
         the message may arrive twice",
        job.id
    );
    let deferred = RcptResult::Deferred {
        reason: reason.clone(),
    };
    let mut attempt = Attempt::new(all(job, deferred), Feedback::Throttled);
    attempt.error = reason;
    attempt
}

/// Every recipient of the job with the same result.
fn all(job: &Job, r: RcptResult) -> Results {
    job.rcpts.iter().map(|(i, _)| (*i, r.clone())).collect()
}

/// For MX delivery: the site the domain's MX hosts make, named after them.
fn mx_site(dest: &Destination, hosts: &[Candidate]) -> Option<String> {
    let Destination::Mx(_) = dest else {
        return None;
    };
    let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    names.sort_unstable();
    Some(format!("mx {}", names.join(",")))
}

/// What a failed host adds to what the hosts tried so far said about the site: none
/// answered, or some pushed back.
fn feedback(so_far: Feedback, connect_failed: bool) -> Feedback {
    match (so_far, connect_failed) {
        (Feedback::Throttled, _) | (_, false) => Feedback::Throttled,
        _ => Feedback::Unreachable,
    }
}

/// Tries each address of each host in order until one reaches a verdict per recipient.
fn try_hosts(
    job: &Job,
    body: &impl Body,
    ctx: &Context,
    hosts: &[Candidate],
    cache: &mut Cache,
) -> Attempt {
    let smarthost = matches!(job.dest, Destination::Smarthost(_));
    let mx_site = mx_site(&job.dest, hosts);
    let implicit_mx =
        matches!(&job.dest, Destination::Mx(d) if hosts.len() == 1 && &hosts[0].name == d);
    let mode = tls_mode(&job.dest, ctx);
    let mut last_error = String::from("no usable host");
    let mut feedback_so_far = Feedback::Neutral;
    for host in hosts {
        let addrs = match route::addresses(host, ctx.resolver.as_ref()) {
            Ok(a) if a.is_empty() && implicit_mx => {
                let failed = RcptResult::Failed {
                    status: "5.1.2".into(),
                    relay: None,
                    reason: format!("{} has no MX and no address records", host.name),
                };
                return Attempt::new(all(job, failed), Feedback::Neutral);
            }
            Ok(a) if a.is_empty() => {
                last_error = format!("{} has no address records", host.name);
                continue;
            }
            Ok(a) => a,
            Err(e) => {
                last_error = e;
                continue;
            }
        };
        for addr in addrs {
            let mut result = try_host(job, body, ctx, host, addr, mode, cache);
            if let Err(HostError {
                tls: true, reason, ..
            }) = &result
                && mode == TlsMode::Opportunistic
            {
                log::info!("{}: {reason}; retrying {} without TLS", job.id, host.name);
                result = try_host(job, body, ctx, host, addr, TlsMode::Off, cache);
            }
            if smarthost {
                match &result {
                    Ok(_) => ctx.hosts.worked(host),
                    Err(_) => ctx.hosts.failed(host),
                }
            }
            match result {
                Ok(results) => {
                    let mut attempt = Attempt::new(results, Feedback::Reached);
                    attempt.mx_site = mx_site;
                    return attempt;
                }
                Err(e) if e.sent => {
                    let mut attempt = unknown_outcome(job, e.reason);
                    attempt.mx_site = mx_site;
                    return attempt;
                }
                Err(e) => {
                    log::debug!("{}: {}[{}]: {}", job.id, host.name, addr, e.reason);
                    feedback_so_far = feedback(feedback_so_far, e.connect);
                    last_error = e.reason;
                }
            }
        }
    }
    let deferred = RcptResult::Deferred {
        reason: last_error.clone(),
    };
    let mut attempt = Attempt::new(all(job, deferred), feedback_so_far);
    attempt.error = last_error;
    attempt.mx_site = mx_site;
    attempt
}

/// Whether a connection that carried `sent` transactions takes another.
fn keep(reusable: bool, sent: usize, per_connection: usize) -> bool {
    reusable && sent < per_connection
}

/// Keeps a connection for the next job, unless it is not clean or carried its share.
fn keep_or_close(mut conn: Connection, reusable: bool, ctx: &Context, cache: &mut Cache) {
    conn.sent += 1;
    if keep(reusable, conn.sent, ctx.messages_per_connection) {
        conn.idle_since = Instant::now();
        cache.expire(true);
        cache.0 = Some(conn);
    } else {
        conn.quit();
    }
}

/// The socket side of a connection: writes commands, reads replies, upgrades to TLS.
struct Wire {
    reader: LineReader<Stream>,
    cap: Option<Duration>,
    relay: String,
}

impl Wire {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    format!("{} timed out: it stopped reading", self.relay)
                }
                _ => format!("write to {} failed: {e}", self.relay),
            })
    }

    fn read_reply(&mut self, wait: Wait) -> Result<Reply, String> {
        let timeout = match wait {
            Wait::Greeting => GREETING,
            Wait::Command => COMMAND,
            Wait::DataEnd => DATA_END,
            Wait::Quit => QUIT,
        };
        let t = self.cap.map_or(timeout, |c| c.min(timeout));
        let relay = &self.relay;
        self.reader
            .read_reply(MAX_REPLY_LINE, t)
            .map_err(|e| match e {
                ReplyError::TooLong => format!("{relay} sent an over-long reply line"),
                ReplyError::Closed => format!("{relay} closed the connection"),
                ReplyError::Timeout => {
                    format!("{relay} timed out: no reply within {}s", t.as_secs())
                }
                ReplyError::Io(e) => format!("reading from {relay} failed: {e}"),
                ReplyError::Malformed(e) => format!("{relay} sent a malformed reply: {e:?}"),
            })
    }

    /// Does the I/O a `Send`, `Read` or `Skip` asks for and passes the reply on.
    fn exchange(&mut self, m: &mut client::Client, action: Action) -> Result<Action, String> {
        Ok(match action {
            Action::Send(command, wait) => {
                self.send(command.as_bytes())?;
                m.on_reply(self.read_reply(wait)?)
            }
            Action::Read(wait) => m.on_reply(self.read_reply(wait)?),
            Action::Skip(wait) => {
                let _ = self.read_reply(wait);
                m.skipped()
            }
            other => unreachable!("not an exchange: {other:?}"),
        })
    }

    /// Wraps the connection in TLS; `name` is checked against the certificate when verifying.
    fn start_tls(&mut self, ctx: &Context, name: &str, verify: bool) -> Result<(), HostError> {
        let tcp = match self.reader.take_plain() {
            Ok(tcp) => tcp,
            Err(TakePlain::ReadAhead) => {
                return Err(format!("{} sent data before the TLS handshake", self.relay).into());
            }
            Err(TakePlain::Unavailable) => {
                return Err(format!("cannot start TLS with {}", self.relay).into());
            }
        };
        let tls_error = |reason| HostError {
            reason,
            tls: true,
            connect: false,
            sent: false,
        };
        let connector = ctx.tls.connector(verify).map_err(tls_error)?;
        let tls = connector
            .connect(name, tcp)
            .map_err(|e| tls_error(format!("TLS handshake with {} failed: {e}", self.relay)))?;
        self.reader = LineReader::new(Stream::Client(Box::new(tls)), 8192);
        Ok(())
    }
}

/// An open, greeted (and, as policy wants, encrypted and logged-in) connection, ready for
/// MAIL. Workers keep one between jobs for the same destination (`Cache`).
pub struct Connection {
    wire: Wire,
    client: client::Client,
    dest: Destination,
    idle_since: Instant,
    /// Transactions carried so far (see `--dest-messages-per-connection`).
    sent: usize,
}

impl Connection {
    fn quit(mut self) {
        if let Action::Send(command, wait) = self.client.quit() {
            let _ = self.wire.send(command.as_bytes());
            let _ = self.wire.read_reply(wait);
        }
        self.wire.reader.get_mut().close();
    }
}

/// One kept connection per worker: the next job for the same destination skips the
/// connect, greeting, EHLO, TLS and login.
#[derive(Default)]
pub struct Cache(Option<Connection>);

/// How long a kept connection may sit unused; servers drop idle clients after minutes, so
/// a few seconds is safe.
pub const KEEP_IDLE: Duration = Duration::from_secs(5);

impl Cache {
    /// Closes the kept connection if it has been idle too long (or `force`).
    pub fn expire(&mut self, force: bool) {
        if self
            .0
            .as_ref()
            .is_some_and(|c| force || c.idle_since.elapsed() >= KEEP_IDLE)
            && let Some(c) = self.0.take()
        {
            c.quit();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// `Ok` when the transaction reached a verdict per recipient; `Err` to try the next host.
fn try_host(
    job: &Job,
    body: &impl Body,
    ctx: &Context,
    host: &Candidate,
    addr: SocketAddr,
    mode: TlsMode,
    cache: &mut Cache,
) -> Result<Results, HostError> {
    let mut conn = open(job, ctx, host, addr, mode)?;
    let (results, reusable) = transaction(&mut conn, job, body)?;
    keep_or_close(conn, reusable, ctx, cache);
    Ok(results)
}

fn open(
    job: &Job,
    ctx: &Context,
    host: &Candidate,
    addr: SocketAddr,
    mode: TlsMode,
) -> Result<Connection, HostError> {
    let relay = format!("{}[{}]:{}", host.name, addr.ip(), addr.port());
    let tcp = TcpStream::connect_timeout(&addr, ctx.connect_timeout).map_err(|e| HostError {
        reason: format!("connect to {relay} failed: {e}"),
        tls: false,
        connect: true,
        sent: false,
    })?;
    let _ = tcp.set_nodelay(true);
    let write_timeout = ctx
        .delivery_timeout
        .map_or(DATA_BLOCK, |c| c.min(DATA_BLOCK));
    tcp.set_write_timeout(Some(write_timeout))
        .map_err(|e| e.to_string())?;
    let (tls, verify) = mode.client();
    let auth = match (&job.dest, &ctx.smarthost_auth) {
        (Destination::Smarthost(_), Some((user, password))) => Some(client::Credentials {
            user: user.clone(),
            password: password.clone(),
        }),
        _ => None,
    };
    let mut conn = Connection {
        wire: Wire {
            reader: LineReader::new(Stream::Plain(tcp), 8192),
            cap: ctx.delivery_timeout,
            relay,
        },
        client: client::Client::new(client::Config {
            helo: ctx.hostname.clone(),
            tls,
            auth,
            auth_in_clear: addr.ip().is_loopback(),
            pipelining: true,
            all_recipients: false,
        }),
        dest: job.dest.clone(),
        idle_since: Instant::now(),
        sent: 0,
    };
    let mut action = conn.client.start();
    loop {
        action = match action {
            Action::StartTls => {
                conn.wire.start_tls(ctx, &host.name, verify)?;
                conn.client.tls_done()
            }
            Action::Ready => return Ok(conn),
            Action::Failed(f) => return Err(setup_failed(conn, f)),
            other => conn.wire.exchange(&mut conn.client, other)?,
        };
    }
}

/// The error for a connection that could not be set up; some say QUIT first.
fn setup_failed(conn: Connection, f: Failure) -> HostError {
    let relay = conn.wire.relay.clone();
    let user = conn
        .client
        .config()
        .auth
        .as_ref()
        .map(|c| c.user.clone())
        .unwrap_or_default();
    let (reason, quit) = match f {
        Failure::Greeting(r) => (format!("{relay} greeted with {}", r.summary()), true),
        Failure::Ehlo(r) | Failure::Helo(r) => {
            (format!("{relay} refused EHLO/HELO: {}", r.summary()), false)
        }
        Failure::StartTls(r) => {
            conn.quit();
            return HostError {
                reason: format!("{relay} refused STARTTLS: {}", r.summary()),
                tls: true,
                connect: false,
                sent: false,
            };
        }
        Failure::NoStartTls => (
            format!("TLS is required but {relay} does not offer STARTTLS"),
            true,
        ),
        Failure::AuthNeedsTls => (
            format!("not sending credentials to {relay} without TLS"),
            true,
        ),
        Failure::NoAuthMechanism => (format!("{relay} offers no AUTH PLAIN or LOGIN"), false),
        Failure::AuthLogin(r) => (
            format!("{relay} refused AUTH LOGIN: {}", r.summary()),
            false,
        ),
        Failure::AuthUser(r) => (
            format!("{relay} refused the user name: {}", r.summary()),
            false,
        ),
        Failure::Auth(r) => (
            format!(
                "authentication as {user} at {relay} failed: {}",
                r.summary()
            ),
            false,
        ),
        Failure::Rset(r) => (format!("{relay} refused RSET: {}", r.summary()), true),
    };
    if quit {
        conn.quit();
    }
    reason.into()
}

/// What the next hop must support for the job.
fn needs(job: &Job) -> Needs {
    Needs {
        size: job.size,
        eight_bit: job.eight_bit,
        smtputf8: !job.sender.is_ascii() || job.rcpts.iter().any(|(_, a)| !a.is_ascii()),
    }
}

/// One mail transaction on an open connection. Returns the results and whether the
/// connection is back in a clean state for another transaction.
fn transaction(
    conn: &mut Connection,
    job: &Job,
    body: &impl Body,
) -> Result<(Results, bool), HostError> {
    let needs = needs(job);
    if let Err(u) = client::check_next_hop(conn.client.extensions(), &needs) {
        // Our own verdict, not the server's reply: no relay, so the DSN does not present it
        // as an SMTP diagnostic (RFC 3464 2.3.6).
        let failed = RcptResult::Failed {
            status: u.status.into(),
            relay: None,
            reason: format!("{}: {}", conn.wire.relay, u.reason),
        };
        return Ok((all(job, failed), true));
    }
    let envelope = Envelope {
        sender: job.sender.clone(),
        rcpts: job.rcpts.iter().map(|(_, a)| a.clone()).collect(),
        needs,
        smtputf8: job.smtputf8,
    };
    let mut action = conn.client.send(&envelope);
    // Whether the end of data went out: from then on a failure leaves the outcome unknown.
    let mut sent = false;
    let report = loop {
        let next = match action {
            Action::SendBody => match send_body(&mut conn.wire, job, body) {
                Ok(()) => {
                    sent = true;
                    Ok(conn.client.body_sent())
                }
                Err(e) => Err(format!(
                    "sending the message to {} failed: {e}",
                    conn.wire.relay
                )),
            },
            Action::Done(report) => break report,
            other => conn.wire.exchange(&mut conn.client, other),
        };
        action = next.map_err(|reason| HostError {
            sent,
            ..HostError::from(reason)
        })?;
    };
    let results = results(job, &report, &conn.wire.relay, conn.client.is_tls())?;
    Ok((results, conn.client.is_ready()))
}

/// Per-recipient results of a transaction: the refused recipients first, then those the
/// final reply decides. A 4xx to MAIL is the host's problem (`Err`): try the next one.
fn results(job: &Job, report: &Report, relay: &str, tls: bool) -> Result<Results, String> {
    if let Ending::MailRefused(r) = &report.ending {
        if r.is_transient() {
            return Err(format!("{relay} said to MAIL: {}", r.summary()));
        }
        let failed = RcptResult::Failed {
            status: client::status_of(r),
            relay: Some(relay.to_string()),
            reason: r.summary(),
        };
        return Ok(all(job, failed));
    }
    let replies = job.rcpts.iter().map(|(i, _)| *i).zip(&report.rcpts);
    let (taken, refused): (Vec<_>, Vec<_>) = replies.partition(|(_, r)| client::accepted(r));
    let last = match &report.ending {
        Ending::DataRefused(r) | Ending::Sent(r) => Some(r),
        Ending::MailRefused(_) | Ending::RecipientsRefused => None,
    };
    let taken = taken.into_iter().filter_map(|(i, _)| Some((i, last?)));
    Ok(refused
        .into_iter()
        .chain(taken)
        .map(|(i, r)| (i, verdict(r, relay, tls)))
        .collect())
}

fn verdict(r: &Reply, relay: &str, tls: bool) -> RcptResult {
    if r.is_positive() {
        RcptResult::Delivered {
            relay: relay.to_string(),
            reply: r.summary(),
            tls,
        }
    } else if r.is_transient() {
        RcptResult::Deferred {
            reason: format!("{relay} said: {}", r.summary()),
        }
    } else {
        RcptResult::Failed {
            status: client::status_of(r),
            relay: Some(relay.to_string()),
            reason: r.summary(),
        }
    }
}

/// Streams the spooled body with dot-stuffing; the end marker goes out with the last chunk.
fn send_body(w: &mut Wire, job: &Job, body: &impl Body) -> io::Result<()> {
    // Buffers kept per worker thread: allocating and freeing ~130 KB per message made
    // glibc hand the memory back to the kernel (madvise) every time.
    thread_local! {
        static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = Default::default();
    }
    const CHUNK: usize = 64 * 1024;
    // Deleted from the queue while this delivery waited for the next hop: leave the
    // transaction unfinished, so the message never goes out.
    if job.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "deleted from the queue",
        ));
    }
    let mut file = body.open(job.size, job.head);
    BUFFERS.with_borrow_mut(|(chunk, wire)| {
        chunk.resize(CHUNK, 0);
        wire.clear();
        wire.reserve(CHUNK + CHUNK / 16 + 8);
        let mut stuffer = DotStuffer::default();
        loop {
            let n = file.read(chunk)?;
            if n == 0 {
                break;
            }
            stuffer.stuff(&chunk[..n], wire);
            if wire.len() >= CHUNK {
                w.reader.get_mut().write_all(wire)?;
                wire.clear();
            }
        }
        stuffer.finish(wire);
        w.reader.get_mut().write_all(wire)
    })
}

#[cfg(test)]
mod tests;
