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
use crate::net::{Line, LineReader, Stream, TakePlain};
use crate::smtp::client::{self, Needs};
use crate::smtp::data::DotStuffer;
use crate::smtp::ehlo::Extensions;
use crate::smtp::reply::{Reply, ReplyParser};
use crate::smtp::sasl;
use crate::spool::Stored;

/// RFC 5321 4.5.3.2 timeouts (minimums): 5 minutes for the greeting, MAIL and RCPT, 3 per
/// data block, 10 for the reply to the end of data. DATA initiation may be as short as 2
/// minutes; it waits 5 like the other commands, which saves a socket option change per
/// message.
const GREETING: Duration = Duration::from_secs(300);
const MAIL: Duration = Duration::from_secs(300);
const RCPT: Duration = MAIL;
const DATA_INIT: Duration = MAIL;
const DATA_BLOCK: Duration = Duration::from_secs(180);
const DATA_END: Duration = Duration::from_secs(600);

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
}

impl From<String> for HostError {
    fn from(reason: String) -> Self {
        HostError {
            reason,
            tls: false,
            connect: false,
        }
    }
}

pub fn deliver(job: &Job, body: &Stored, ctx: &Context, cache: &mut Cache) -> Attempt {
    cache.expire(false);
    if let Some(mut conn) = cache.0.take_if(|c| c.dest == job.dest) {
        match transaction(&mut conn, job, body) {
            Ok((results, reusable)) => {
                keep_or_close(conn, reusable, ctx, cache);
                return Attempt::new(results, Feedback::Reached);
            }
            // The kept connection went stale (closed by the server): start afresh.
            Err(e) => log::debug!("{}: kept connection unusable: {}", job.id, e.reason),
        }
    }
    let all = |r: RcptResult| {
        job.rcpts
            .iter()
            .map(|(i, _)| (*i, r.clone()))
            .collect::<Results>()
    };
    let neutral = |r: RcptResult| Attempt::new(all(r), Feedback::Neutral);
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
    let smarthost = matches!(job.dest, Destination::Smarthost(_));
    if smarthost {
        ctx.hosts.order(&mut hosts);
    }
    let mx_site = match &job.dest {
        Destination::Mx(_) => {
            let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
            names.sort_unstable();
            Some(format!("mx {}", names.join(",")))
        }
        _ => None,
    };
    let implicit_mx =
        matches!(&job.dest, Destination::Mx(d) if hosts.len() == 1 && &hosts[0].name == d);
    let mode = tls_mode(&job.dest, ctx);
    let mut last_error = String::from("no usable host");
    // What the hosts tried said about the site: none answered, or some pushed back.
    let mut feedback = Feedback::Neutral;
    for host in &hosts {
        let addrs = match route::addresses(host, ctx.resolver.as_ref()) {
            Ok(a) if a.is_empty() && implicit_mx => {
                return neutral(RcptResult::Failed {
                    status: "5.1.2".into(),
                    relay: None,
                    reason: format!("{} has no MX and no address records", host.name),
                });
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
                Err(e) => {
                    log::debug!("{}: {}[{}]: {}", job.id, host.name, addr, e.reason);
                    feedback = match (feedback, e.connect) {
                        (Feedback::Throttled, _) | (_, false) => Feedback::Throttled,
                        _ => Feedback::Unreachable,
                    };
                    last_error = e.reason;
                }
            }
        }
    }
    let mut attempt = Attempt::new(
        all(RcptResult::Deferred {
            reason: last_error.clone(),
        }),
        feedback,
    );
    attempt.error = last_error;
    attempt.mx_site = mx_site;
    attempt
}

/// Keeps a connection for the next job, unless it is not clean or carried its share.
fn keep_or_close(mut conn: Connection, reusable: bool, ctx: &Context, cache: &mut Cache) {
    conn.sent += 1;
    if reusable && conn.sent < ctx.messages_per_connection {
        conn.idle_since = Instant::now();
        cache.expire(true);
        cache.0 = Some(conn);
    } else {
        conn.client.quit();
    }
}

struct Client {
    reader: LineReader<Stream>,
    cap: Option<Duration>,
    relay: String,
    /// The read timeout currently set on the socket.
    timeout: Option<Duration>,
}

impl Client {
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

    fn read_reply(&mut self, timeout: Duration) -> Result<Reply, String> {
        let t = self.cap.map_or(timeout, |c| c.min(timeout));
        if self.timeout != Some(t) {
            self.reader
                .get_ref()
                .tcp()
                .set_read_timeout(Some(t))
                .map_err(|e| e.to_string())?;
            self.timeout = Some(t);
        }
        let mut parser = ReplyParser::default();
        loop {
            let line = match self.reader.read_line(1000) {
                Ok(Line::Line(l)) => String::from_utf8_lossy(l).into_owned(),
                Ok(Line::TooLong) => {
                    return Err(format!("{} sent an over-long reply line", self.relay));
                }
                Ok(Line::Eof) => return Err(format!("{} closed the connection", self.relay)),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!(
                        "{} timed out: no reply within {}s",
                        self.relay,
                        t.as_secs()
                    ));
                }
                Err(e) => return Err(format!("reading from {} failed: {e}", self.relay)),
            };
            match parser.feed(&line) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(format!("{} sent a malformed reply: {e:?}", self.relay)),
            }
        }
    }

    fn command(&mut self, line: &str, timeout: Duration) -> Result<Reply, String> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.read_reply(timeout)
    }

    fn ehlo(&mut self, hostname: &str) -> Result<Extensions, String> {
        let mut ehlo = self.command(&format!("EHLO {hostname}"), MAIL)?;
        if ehlo.code >= 500 {
            ehlo = self.command(&format!("HELO {hostname}"), MAIL)?;
            ehlo.lines.truncate(1);
        }
        if ehlo.code != 250 {
            return Err(format!(
                "{} refused EHLO/HELO: {}",
                self.relay,
                ehlo.summary()
            ));
        }
        Ok(Extensions::parse(&ehlo))
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
        let connector = ctx.tls.connector(verify).map_err(|e| HostError {
            reason: e,
            tls: true,
            connect: false,
        })?;
        let tls = connector.connect(name, tcp).map_err(|e| HostError {
            reason: format!("TLS handshake with {} failed: {e}", self.relay),
            tls: true,
            connect: false,
        })?;
        self.reader = LineReader::new(Stream::Client(Box::new(tls)), 8192);
        Ok(())
    }

    fn quit(mut self) {
        let _ = self.send(b"QUIT\r\n");
        let _ = self.read_reply(Duration::from_secs(5));
        self.reader.get_mut().close();
    }
}

/// An open, greeted (and, as policy wants, encrypted and logged-in) connection, ready for
/// MAIL. Workers keep one between jobs for the same destination (`Cache`).
pub struct Connection {
    client: Client,
    ext: Extensions,
    tls: bool,
    dest: Destination,
    idle_since: Instant,
    /// Transactions carried so far (see `--dest-messages-per-connection`).
    sent: usize,
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
            c.client.quit();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// `Ok` when the transaction reached a verdict per recipient; `Err` to try the next host.
fn try_host(
    job: &Job,
    body: &Stored,
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
    })?;
    let _ = tcp.set_nodelay(true);
    let write_timeout = ctx
        .delivery_timeout
        .map_or(DATA_BLOCK, |c| c.min(DATA_BLOCK));
    tcp.set_write_timeout(Some(write_timeout))
        .map_err(|e| e.to_string())?;
    let mut c = Client {
        reader: LineReader::new(Stream::Plain(tcp), 8192),
        cap: ctx.delivery_timeout,
        relay: relay.clone(),
        timeout: None,
    };
    if let TlsMode::Implicit { verify } = mode {
        c.start_tls(ctx, &host.name, verify)?;
    }

    let greeting = c.read_reply(GREETING)?;
    if greeting.code != 220 {
        c.quit();
        return Err(format!("{relay} greeted with {}", greeting.summary()).into());
    }
    let mut ext = c.ehlo(&ctx.hostname)?;
    match mode {
        TlsMode::Opportunistic | TlsMode::Required { .. } if ext.starttls => {
            let r = c.command("STARTTLS", MAIL)?;
            if r.code != 220 {
                c.quit();
                return Err(HostError {
                    reason: format!("{relay} refused STARTTLS: {}", r.summary()),
                    tls: true,
                    connect: false,
                });
            }
            let verify = matches!(mode, TlsMode::Required { verify: true });
            c.start_tls(ctx, &host.name, verify)?;
            ext = c.ehlo(&ctx.hostname)?;
        }
        TlsMode::Required { .. } => {
            c.quit();
            return Err(format!("TLS is required but {relay} does not offer STARTTLS").into());
        }
        _ => {}
    }
    let tls = c.reader.get_ref().is_tls();
    if let (Destination::Smarthost(_), Some((user, password))) = (&job.dest, &ctx.smarthost_auth) {
        if !tls && !addr.ip().is_loopback() {
            c.quit();
            return Err(format!("not sending credentials to {relay} without TLS").into());
        }
        login(&mut c, &ext, user, password)?;
    }
    Ok(Connection {
        client: c,
        ext,
        tls,
        dest: job.dest.clone(),
        idle_since: Instant::now(),
        sent: 0,
    })
}

/// One mail transaction on an open connection. Returns the results and whether the
/// connection is back in a clean state for another transaction.
fn transaction(
    conn: &mut Connection,
    job: &Job,
    body: &Stored,
) -> Result<(Results, bool), HostError> {
    let (c, ext, tls) = (&mut conn.client, &conn.ext, conn.tls);
    let relay = c.relay.clone();
    let needs = Needs {
        size: job.size,
        eight_bit: job.eight_bit,
        smtputf8: !job.sender.is_ascii() || job.rcpts.iter().any(|(_, a)| !a.is_ascii()),
    };
    let fail_all = |status: String, reason: String| {
        job.rcpts
            .iter()
            .map(|(i, _)| {
                (
                    *i,
                    RcptResult::Failed {
                        status: status.clone(),
                        relay: Some(relay.clone()),
                        reason: reason.clone(),
                    },
                )
            })
            .collect::<Results>()
    };
    if let Err(u) = client::check_next_hop(ext, &needs) {
        // Our own verdict, not the server's reply: no relay, so the DSN does not present it
        // as an SMTP diagnostic (RFC 3464 2.3.6).
        let failed = RcptResult::Failed {
            status: u.status.into(),
            relay: None,
            reason: format!("{relay}: {}", u.reason),
        };
        let results = job.rcpts.iter().map(|(i, _)| (*i, failed.clone()));
        return Ok((results.collect(), true));
    }

    // MAIL, every RCPT and DATA: in one write when the next hop pipelines (RFC 2920).
    let mail = client::mail_from(&job.sender, ext, &needs, job.smtputf8);
    let rcpts: Vec<String> = job.rcpts.iter().map(|(_, a)| client::rcpt_to(a)).collect();
    if ext.pipelining {
        let mut batch = mail.into_bytes();
        rcpts
            .iter()
            .for_each(|r| batch.extend_from_slice(r.as_bytes()));
        batch.extend_from_slice(b"DATA\r\n");
        c.send(&batch)?;
    } else {
        c.send(mail.as_bytes())?;
    }
    let mail_reply = c.read_reply(MAIL)?;
    if !mail_reply.is_positive() {
        if mail_reply.is_transient() {
            return Err(format!("{relay} said to MAIL: {}", mail_reply.summary()).into());
        }
        return Ok((
            fail_all(client::status_of(&mail_reply), mail_reply.summary()),
            false,
        ));
    }
    let mut results = Results::new();
    let mut accepted = Vec::new();
    for (n, (idx, _)) in job.rcpts.iter().enumerate() {
        if !ext.pipelining {
            c.send(rcpts[n].as_bytes())?;
        }
        let r = c.read_reply(RCPT)?;
        if r.is_positive() {
            accepted.push(*idx);
        } else if r.is_transient() {
            results.push((
                *idx,
                RcptResult::Deferred {
                    reason: format!("{relay} said: {}", r.summary()),
                },
            ));
        } else {
            results.push((
                *idx,
                RcptResult::Failed {
                    status: client::status_of(&r),
                    relay: Some(relay.clone()),
                    reason: r.summary(),
                },
            ));
        }
    }
    if accepted.is_empty() {
        if ext.pipelining {
            // The DATA we pipelined is answered with an error; read it before leaving.
            let _ = c.read_reply(DATA_INIT);
        }
        return Ok((results, false));
    }
    if !ext.pipelining {
        c.send(b"DATA\r\n")?;
    }
    let data_reply = c.read_reply(DATA_INIT)?;
    if data_reply.code != 354 {
        let verdict = verdict(&data_reply, &relay, tls);
        results.extend(accepted.iter().map(|i| (*i, verdict.clone())));
        return Ok((results, false));
    }
    send_body(c, job, body).map_err(|e| format!("sending the message to {relay} failed: {e}"))?;
    let end = c.read_reply(DATA_END)?;
    let verdict = verdict(&end, &relay, tls);
    results.extend(accepted.iter().map(|i| (*i, verdict.clone())));
    // After the reply to the end of data the server is ready for the next MAIL.
    Ok((results, true))
}

/// AUTH PLAIN (or LOGIN when that is all the smarthost offers). A refusal defers: a wrong
/// password is an operator's problem, not a reason to bounce the mail.
fn login(c: &mut Client, ext: &Extensions, user: &str, password: &str) -> Result<(), String> {
    let reply = if ext.auth.iter().any(|m| m == "PLAIN") {
        let token = sasl::encode(format!("\0{user}\0{password}").as_bytes());
        c.command(&format!("AUTH PLAIN {token}"), MAIL)?
    } else if ext.auth.iter().any(|m| m == "LOGIN") {
        let r = c.command("AUTH LOGIN", MAIL)?;
        if r.code != 334 {
            return Err(format!("{} refused AUTH LOGIN: {}", c.relay, r.summary()));
        }
        let r = c.command(&sasl::encode(user.as_bytes()), MAIL)?;
        if r.code != 334 {
            return Err(format!(
                "{} refused the user name: {}",
                c.relay,
                r.summary()
            ));
        }
        c.command(&sasl::encode(password.as_bytes()), MAIL)?
    } else {
        return Err(format!("{} offers no AUTH PLAIN or LOGIN", c.relay));
    };
    if reply.code != 235 {
        return Err(format!(
            "authentication as {user} at {} failed: {}",
            c.relay,
            reply.summary()
        ));
    }
    Ok(())
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
fn send_body(c: &mut Client, job: &Job, body: &Stored) -> io::Result<()> {
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
    let mut file = body.reader(job.size, job.head);
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
                c.reader.get_mut().write_all(wire)?;
                wire.clear();
            }
        }
        stuffer.finish(wire);
        c.reader.get_mut().write_all(wire)
    })
}
