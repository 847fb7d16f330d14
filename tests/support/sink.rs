//! A small, independent, recording SMTP server with scriptable replies: the
//! "next hop" in integration tests.
//!
//! Deliberately written from scratch (std, plus openssl for TLS; no mxrelay code)
//! so that it can act as an oracle for what the relay put on the wire.
//!
//! * one thread per connection, 10 s read/write timeouts on every socket;
//! * command lines are bounded (more than 4096 bytes before the CRLF → 500);
//! * pipelining: commands are parsed out of one input buffer and answered in
//!   order; replies are buffered and flushed whenever the sink is about to wait
//!   for more input (like real servers do);
//! * DATA is read with a byte state machine: only CRLF "." CRLF ends it, and a
//!   leading dot is removed from every line that starts with one.
//!
//! Every reply hook returns the complete reply text (several lines joined with
//! "\r\n"; the sink appends the final CRLF). The reply "DROP" closes the
//! connection without replying.
//!
//! TLS and AUTH (all off by default, so plain sessions behave as they always did):
//!
//! * `Script::tls(SinkTls)` offers STARTTLS (RFC 3207): "220", the handshake, then
//!   everything learnt before is forgotten (EHLO name, transaction, AUTH) and a new
//!   EHLO is expected. Bytes pipelined after the STARTTLS line are discarded unread.
//!   STARTTLS is advertised only while the session is still plain;
//! * `Script::implicit()` does the handshake right after accept instead (port 465);
//! * `Script::require_tls()` refuses MAIL and AUTH with 530 until TLS is active;
//! * `Script::auth(user, pass)` advertises "AUTH PLAIN LOGIN" (once TLS is active when
//!   TLS is required) and refuses MAIL with 530 until AUTH succeeded. AUTH lines are
//!   recorded with their payload masked ("AUTH PLAIN ***"); the base64 responses to
//!   "334" challenges are not recorded at all;
//! * `test_certs()` runs scripts/test-certs once per process and `SinkTls::test()`
//!   serves its `server-chain.pem`/`server.key`; clients verify it with `ca.pem`.

// Each integration-test crate uses only part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslStream};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted command line, not counting the CRLF.
const MAX_LINE: usize = 4096;
const HOSTNAME: &str = "sink.test";
/// The reply that makes the sink hang up instead of answering.
const DROP: &str = "DROP";
const MUST_STARTTLS: &str = "530 5.7.0 Must issue a STARTTLS command first";

/// One message whose DATA got a 2xx reply.
#[derive(Debug, Clone)]
pub struct Message {
    /// EHLO/HELO argument.
    pub helo: String,
    /// The whole argument after "MAIL FROM:" as sent, e.g. "<a@b> BODY=8BITMIME SIZE=123".
    pub mail_from: String,
    /// Addresses (inside <>) whose RCPT got a 2xx reply.
    pub rcpts: Vec<String>,
    /// Content after dot-unstuffing, otherwise exactly as on the wire, ending
    /// with the CRLF before the final "." (the "." line is not included).
    pub data: Vec<u8>,
    /// Bytes received between the 354 and the terminating ".\r\n", not unstuffed.
    pub raw_data: Vec<u8>,
    pub peer: SocketAddr,
    /// Which listener got it.
    pub local: SocketAddr,
    /// Negotiated TLS protocol version ("TLSv1.3", "TLSv1.2"); None on a plain session.
    pub tls: Option<String>,
    /// The user that authenticated on this session, if any.
    pub auth_user: Option<String>,
}

/// Server-side TLS settings for the sink (cheap to clone).
#[derive(Clone)]
pub struct SinkTls {
    acceptor: Arc<SslAcceptor>,
}

impl SinkTls {
    /// Serve the certificate chain in `cert_chain_pem` (leaf first; a leaf alone works
    /// too) with the PEM key in `key_pem` (PKCS#8 or PKCS#1). TLS 1.2 and 1.3 are
    /// accepted (Mozilla "intermediate" settings). Panics if the files are unusable.
    pub fn from_files(cert_chain_pem: &Path, key_pem: &Path) -> SinkTls {
        let fail = |what: &str, e: openssl::error::ErrorStack| -> ! {
            panic!(
                "sink TLS: {what} (cert {}, key {}): {e}",
                cert_chain_pem.display(),
                key_pem.display()
            )
        };
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .unwrap_or_else(|e| fail("cannot create an acceptor", e));
        b.set_certificate_chain_file(cert_chain_pem)
            .unwrap_or_else(|e| fail("bad certificate chain", e));
        b.set_private_key_file(key_pem, SslFiletype::PEM)
            .unwrap_or_else(|e| fail("bad private key", e));
        b.check_private_key()
            .unwrap_or_else(|e| fail("key does not match the certificate", e));
        SinkTls::from_acceptor(b.build())
    }

    /// Any acceptor, e.g. one limited to TLS 1.2 or asking for client certificates.
    pub fn from_acceptor(acceptor: SslAcceptor) -> SinkTls {
        SinkTls {
            acceptor: Arc::new(acceptor),
        }
    }

    /// The certificate made by scripts/test-certs (see `test_certs()`): a leaf for
    /// localhost, relay.test, sink.test, 127.0.0.1 and ::1, sent with its CA.
    pub fn test() -> SinkTls {
        let dir = test_certs();
        SinkTls::from_files(&dir.join("server-chain.pem"), &dir.join("server.key"))
    }
}

/// Directory with the test certificates (`ca.pem`, `server.pem`, `server-chain.pem`,
/// `server.key`, `server-rsa.key`, `other.pem`, `other.key`): runs
/// `scripts/test-certs $CARGO_TARGET_TMPDIR/test-certs` once per test process (the
/// script does nothing when they exist and is safe to run concurrently).
pub fn test_certs() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-certs");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-certs");
        let out = Command::new(&script)
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} {} failed ({}):\n{}",
            script.display(),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .clone()
}

/// What the sink answers.
#[derive(Clone)]
pub struct Script {
    /// Default "220 sink.test ESMTP".
    pub greeting: Arc<dyn Fn() -> String + Send + Sync>,
    /// Default ["PIPELINING", "SIZE 100000000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"].
    pub ehlo_keywords: Vec<String>,
    /// Default true; false → EHLO gets "502 5.5.1 not implemented", HELO works.
    pub ehlo_supported: bool,
    /// Gets the argument after "MAIL FROM:"; default "250 2.1.0 ok".
    pub mail: Arc<dyn Fn(&str) -> String + Send + Sync>,
    /// Gets the address inside <>; default "250 2.1.5 ok".
    pub rcpt: Arc<dyn Fn(&str) -> String + Send + Sync>,
    /// Called after the end marker; default "250 2.0.0 ok".
    pub data: Arc<dyn Fn(&Message) -> String + Send + Sync>,
    /// Default None: no STARTTLS offered.
    pub tls: Option<SinkTls>,
    /// TLS handshake right after accept (port-465 style), no STARTTLS; needs `tls`
    /// (without it every connection is closed at once).
    pub implicit_tls: bool,
    /// MAIL and AUTH before STARTTLS get "530 5.7.0 Must issue a STARTTLS command first"
    /// (always, if `tls` is None).
    pub require_tls: bool,
    /// Some((user, pass)): advertise "AUTH PLAIN LOGIN" (only once TLS is active when
    /// `require_tls`, always otherwise) and refuse MAIL before a successful AUTH
    /// ("530 5.7.0 Authentication required").
    pub auth: Option<(String, String)>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: Arc::new(|| format!("220 {HOSTNAME} ESMTP")),
            ehlo_keywords: [
                "PIPELINING",
                "SIZE 100000000",
                "8BITMIME",
                "SMTPUTF8",
                "ENHANCEDSTATUSCODES",
            ]
            .iter()
            .map(|k| k.to_string())
            .collect(),
            ehlo_supported: true,
            mail: Arc::new(|_| "250 2.1.0 ok".to_string()),
            rcpt: Arc::new(|_| "250 2.1.5 ok".to_string()),
            data: Arc::new(|_| "250 2.0.0 ok".to_string()),
            tls: None,
            implicit_tls: false,
            require_tls: false,
            auth: None,
        }
    }
}

impl Script {
    pub fn rcpt(mut self, f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.rcpt = Arc::new(f);
        self
    }

    /// Answers `reply` to recipients whose address starts with `prefix`, 250 to the rest.
    pub fn refuse_rcpt(self, prefix: &'static str, reply: &'static str) -> Self {
        self.rcpt(move |a| {
            if a.starts_with(prefix) {
                reply.to_string()
            } else {
                "250 ok".to_string()
            }
        })
    }

    pub fn data(mut self, f: impl Fn(&Message) -> String + Send + Sync + 'static) -> Self {
        self.data = Arc::new(f);
        self
    }

    pub fn mail(mut self, f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.mail = Arc::new(f);
        self
    }

    pub fn greeting(mut self, f: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.greeting = Arc::new(f);
        self
    }

    /// A next hop that is slow to greet: every connection waits `ms` for its 220.
    pub fn slow_greeting(self, ms: u64) -> Self {
        self.greeting(move || {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            "220 sink.test ESMTP".into()
        })
    }

    /// Replace the EHLO keywords (an empty list gives a one-line 250).
    pub fn keywords(mut self, kw: &[&str]) -> Self {
        self.ehlo_keywords = kw.iter().map(|k| k.to_string()).collect();
        self
    }

    /// Refuse EHLO with 502 so that the client has to fall back to HELO.
    pub fn no_ehlo(mut self) -> Self {
        self.ehlo_supported = false;
        self
    }

    /// Offer STARTTLS with these settings.
    pub fn tls(mut self, t: SinkTls) -> Self {
        self.tls = Some(t);
        self
    }

    /// Handshake right after accept instead of offering STARTTLS (set `tls` too).
    pub fn implicit(mut self) -> Self {
        self.implicit_tls = true;
        self
    }

    /// Refuse MAIL and AUTH until TLS is active.
    pub fn require_tls(mut self) -> Self {
        self.require_tls = true;
        self
    }

    /// Offer AUTH PLAIN and LOGIN with these credentials and require it before MAIL.
    pub fn auth(mut self, user: &str, pass: &str) -> Self {
        self.auth = Some((user.to_string(), pass.to_string()));
        self
    }
}

struct Shared {
    script: Mutex<Script>,
    messages: Mutex<Vec<Message>>,
    commands: Mutex<Vec<String>>,
    /// (read number, command): commands that arrived in the same read share the number.
    reads: Mutex<Vec<(u64, String)>>,
    next_read: AtomicU64,
    connections: AtomicUsize,
    stop: AtomicBool,
    /// Open connections (clones of their sockets), so Drop can hang up on them.
    live: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
    /// Failed TLS handshakes, as OpenSSL described them.
    tls_failures: Mutex<Vec<String>>,
}

/// Lock, ignoring poisoning (a panicking hook must not break the whole sink).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running sink. Dropping it stops the listener and hangs up on open connections.
pub struct Sink {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Sink {
    /// Listen on ip:port (port 0 = any free port). Returns Err if the bind fails.
    pub fn start(ip: &str, port: u16, script: Script) -> io::Result<Sink> {
        let listener = TcpListener::bind((ip, port))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            messages: Mutex::new(Vec::new()),
            commands: Mutex::new(Vec::new()),
            reads: Mutex::new(Vec::new()),
            next_read: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            tls_failures: Mutex::new(Vec::new()),
        });
        let sh = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("sink-accept-{addr}"))
            .spawn(move || accept_loop(listener, sh))?;
        Ok(Sink {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Messages whose DATA got a 2xx reply from the sink, in order.
    pub fn messages(&self) -> Vec<Message> {
        lock(&self.shared.messages).clone()
    }

    /// Wait (polling every 20 ms, bounded by `timeout`) until at least `n`
    /// accepted messages are recorded and return them all; panics listing what
    /// arrived otherwise.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            let msgs = self.messages();
            if msgs.len() >= n {
                return msgs;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "sink {}: waited {:?} for {} accepted message(s), got {}:\n{}\n\
                     {} connection(s); commands received:\n{}",
                    self.addr,
                    timeout,
                    n,
                    msgs.len(),
                    describe_messages(&msgs),
                    self.connections(),
                    describe_commands(&self.commands()),
                );
            }
            thread::sleep(Duration::from_millis(20).min(deadline - now));
        }
    }

    /// Every command line received, across all connections, in order (without
    /// the CRLF; over-long refused lines are not included).
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared.commands).clone()
    }

    /// Commands grouped by the read that brought them in: a pipelining client's MAIL, RCPTs
    /// and DATA arrive as one group.
    pub fn batches(&self) -> Vec<Vec<String>> {
        let mut out: Vec<(u64, Vec<String>)> = Vec::new();
        for (n, cmd) in lock(&self.shared.reads).iter() {
            match out.last_mut() {
                Some((m, group)) if m == n => group.push(cmd.clone()),
                _ => out.push((*n, vec![cmd.clone()])),
            }
        }
        out.into_iter().map(|(_, g)| g).collect()
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Replace the script while running (applies to new commands).
    pub fn set_script(&self, script: Script) {
        *lock(&self.shared.script) = script;
    }

    /// Server-side errors of failed TLS handshakes, in order (e.g. "... tlsv1 alert
    /// unknown ca ..." when the client refused the certificate).
    pub fn tls_failures(&self) -> Vec<String> {
        lock(&self.shared.tls_failures).clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept() call so the thread sees the flag and drops the listener.
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let woke = TcpStream::connect_timeout(
            &SocketAddr::new(ip, self.addr.port()),
            Duration::from_secs(2),
        )
        .is_ok();
        if let Some(handle) = self.accept.take()
            && woke
        {
            let _ = handle.join();
        }
        // Hang up on connections still open; their threads then end promptly.
        for (_, stream) in lock(&self.shared.live).drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn describe_messages(msgs: &[Message]) -> String {
    if msgs.is_empty() {
        return "  (none)".to_string();
    }
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let mut line = format!(
                "  #{i}: MAIL FROM:{} to {:?}, {} bytes, from {} (helo {:?})",
                m.mail_from,
                m.rcpts,
                m.data.len(),
                m.peer,
                m.helo
            );
            if let Some(v) = &m.tls {
                line.push_str(&format!(" over {v}"));
            }
            if let Some(u) = &m.auth_user {
                line.push_str(&format!(" as {u:?}"));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe_commands(cmds: &[String]) -> String {
    const LAST: usize = 200;
    if cmds.is_empty() {
        return "  (none)".to_string();
    }
    let skip = cmds.len().saturating_sub(LAST);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("  ... {skip} earlier command(s)\n"));
    }
    let lines: Vec<String> = cmds[skip..].iter().map(|c| format!("  {c}")).collect();
    out.push_str(&lines.join("\n"));
    out
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                spawn_connection(stream, &shared);
            }
            // E.g. EMFILE or ECONNABORTED: keep serving.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Removes a connection from `Shared::live` when its thread ends (even by a
/// panicking hook), so the socket is really closed.
struct LiveGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        lock(&self.shared.live).remove(&self.id);
    }
}

fn spawn_connection(stream: TcpStream, shared: &Arc<Shared>) {
    let setup = || -> io::Result<Conn> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            shared: Arc::clone(shared),
            peer: stream.peer_addr()?,
            local: stream.local_addr()?,
            stream: Stream::Plain(stream.try_clone()?),
            tcp: stream.try_clone()?,
            out: Vec::new(),
            buf: Vec::new(),
            helo: None,
            mail_from: None,
            rcpts: Vec::new(),
            read_no: 0,
            tls: None,
            auth_user: None,
        })
    };
    let Ok(mut conn) = setup() else {
        return;
    };
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    if let Ok(clone) = stream.try_clone() {
        lock(&shared.live).insert(id, clone);
    }
    let guard = LiveGuard {
        shared: Arc::clone(shared),
        id,
    };
    let _ = thread::Builder::new()
        .name(format!("sink-conn-{}", conn.peer))
        .spawn(move || {
            let _guard = guard;
            let _ = conn.run();
            let _ = conn.flush();
            let _ = conn.tcp.shutdown(Shutdown::Both);
        });
}

enum Flow {
    Continue,
    Close,
}

/// The connection's byte stream, before and after the TLS handshake.
enum Stream {
    Plain(TcpStream),
    Tls(SslStream<TcpStream>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// States of the DATA reader. "Line start" means just after a CRLF (or the
/// CRLF of the DATA command itself).
#[derive(Clone, Copy)]
enum DataState {
    LineStart,
    Mid,
    MidCr,
    /// "." at a line start (not copied to `data`).
    Dot,
    /// "." CR at a line start.
    DotCr,
}

struct Conn {
    shared: Arc<Shared>,
    stream: Stream,
    /// The socket itself, for the final shutdown.
    tcp: TcpStream,
    /// Replies not yet sent.
    out: Vec<u8>,
    /// Received but not yet consumed bytes.
    buf: Vec<u8>,
    peer: SocketAddr,
    local: SocketAddr,
    helo: Option<String>,
    mail_from: Option<String>,
    rcpts: Vec<String>,
    read_no: u64,
    /// Negotiated protocol version once TLS is active.
    tls: Option<String>,
    auth_user: Option<String>,
}

impl Conn {
    fn script(&self) -> Script {
        lock(&self.shared.script).clone()
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpts.clear();
    }

    /// Send the pending replies.
    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.stream.write_all(&out)?;
        }
        self.stream.flush()
    }

    /// Flush pending replies, then wait for more input.
    fn fill(&mut self) -> io::Result<()> {
        self.flush()?;
        let mut tmp = [0u8; 8192];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        self.read_no = self.shared.next_read.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// One line without its CRLF (or bare LF); `None` if it was too long.
    fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut scanned = 0;
        let mut too_long = false;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=scanned + pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok((!too_long && line.len() <= MAX_LINE).then_some(line));
            }
            if self.buf.len() > MAX_LINE + 1 {
                // Already too long: discard what we have, keep reading to the LF.
                too_long = true;
                self.buf.clear();
            }
            scanned = self.buf.len();
            self.fill()?;
        }
    }

    /// Queue a reply; "DROP" means hang up instead.
    fn reply(&mut self, text: &str) -> io::Result<Flow> {
        let text = text.trim_end_matches(['\r', '\n']);
        if text == DROP {
            return Ok(Flow::Close);
        }
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        Ok(Flow::Continue)
    }

    /// Server side of the TLS handshake on the raw socket; failures are recorded.
    fn handshake(&mut self, tls: &SinkTls) -> io::Result<()> {
        match tls.acceptor.accept(self.tcp.try_clone()?) {
            Ok(s) => {
                self.tls = Some(s.ssl().version_str().to_string());
                self.stream = Stream::Tls(s);
                Ok(())
            }
            Err(e) => {
                let e = e.to_string();
                lock(&self.shared.tls_failures).push(e.clone());
                Err(io::Error::other(e))
            }
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let script = self.script();
        if script.implicit_tls {
            let Some(tls) = &script.tls else {
                return Ok(()); // implicit TLS without a certificate: just hang up
            };
            self.handshake(tls)?;
        }
        let greeting = (script.greeting)();
        if let Flow::Close = self.reply(&greeting)? {
            return Ok(());
        }
        loop {
            let Some(line) = self.read_line()? else {
                self.reply("500 5.5.2 line too long")?;
                continue;
            };
            let line = String::from_utf8_lossy(&line).into_owned();
            let recorded = mask_auth(&line);
            lock(&self.shared.commands).push(recorded.clone());
            lock(&self.shared.reads).push((self.read_no, recorded));
            if let Flow::Close = self.command(&line)? {
                return Ok(());
            }
        }
    }

    fn command(&mut self, line: &str) -> io::Result<Flow> {
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                let script = self.script();
                if !script.ehlo_supported {
                    return self.reply("502 5.5.1 not implemented");
                }
                if arg.trim().is_empty() {
                    return self.reply("501 5.5.4 EHLO needs a domain");
                }
                self.helo = Some(arg.trim().to_string());
                self.reset();
                let mut lines = vec![HOSTNAME.to_string()];
                lines.extend(script.ehlo_keywords.iter().cloned());
                if script.tls.is_some() && self.tls.is_none() {
                    lines.push("STARTTLS".to_string());
                }
                if script.auth.is_some() && (self.tls.is_some() || !script.require_tls) {
                    lines.push("AUTH PLAIN LOGIN".to_string());
                }
                let last = lines.len() - 1;
                let text: Vec<String> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
                    .collect();
                self.reply(&text.join("\r\n"))
            }
            "HELO" => {
                if arg.trim().is_empty() {
                    return self.reply("501 5.5.4 HELO needs a domain");
                }
                self.helo = Some(arg.trim().to_string());
                self.reset();
                self.reply(&format!("250 {HOSTNAME}"))
            }
            "MAIL" => {
                let script = self.script();
                if script.require_tls && self.tls.is_none() {
                    return self.reply(MUST_STARTTLS);
                }
                let Some(from) = strip_prefix_ci(line, "MAIL FROM:") else {
                    return self.reply("501 5.5.4 syntax: MAIL FROM:<address>");
                };
                if self.helo.is_none() {
                    return self.reply("503 5.5.1 send EHLO/HELO first");
                }
                if script.auth.is_some() && self.auth_user.is_none() {
                    return self.reply("530 5.7.0 Authentication required");
                }
                if self.mail_from.is_some() {
                    return self.reply("503 5.5.1 nested MAIL command");
                }
                let answer = (self.script().mail)(from);
                if answer.starts_with('2') {
                    self.mail_from = Some(from.to_string());
                }
                self.reply(&answer)
            }
            "RCPT" => {
                let Some(to) = strip_prefix_ci(line, "RCPT TO:") else {
                    return self.reply("501 5.5.4 syntax: RCPT TO:<address>");
                };
                if self.mail_from.is_none() {
                    return self.reply("503 5.5.1 need MAIL before RCPT");
                }
                let Some(addr) = angle_addr(to) else {
                    return self.reply("501 5.5.4 syntax: RCPT TO:<address>");
                };
                let answer = (self.script().rcpt)(addr);
                if answer.starts_with('2') {
                    self.rcpts.push(addr.to_string());
                }
                self.reply(&answer)
            }
            "DATA" => {
                let Some(mail_from) = self.mail_from.clone() else {
                    return self.reply("503 5.5.1 need MAIL before DATA");
                };
                if self.rcpts.is_empty() {
                    return self.reply("554 5.5.1 no valid recipients");
                }
                self.reply("354 end data with <CR><LF>.<CR><LF>")?;
                let (raw_data, data) = self.read_data()?;
                let msg = Message {
                    helo: self.helo.clone().unwrap_or_default(),
                    mail_from,
                    rcpts: std::mem::take(&mut self.rcpts),
                    data,
                    raw_data,
                    peer: self.peer,
                    local: self.local,
                    tls: self.tls.clone(),
                    auth_user: self.auth_user.clone(),
                };
                self.reset();
                let answer = (self.script().data)(&msg);
                if answer.starts_with('2') {
                    // Recorded before the client can see the reply.
                    lock(&self.shared.messages).push(msg);
                }
                self.reply(&answer)
            }
            "RSET" => {
                self.reset();
                self.reply("250 2.0.0 ok")
            }
            "NOOP" => self.reply("250 2.0.0 ok"),
            "QUIT" => {
                self.reply(&format!("221 2.0.0 {HOSTNAME} closing connection"))?;
                self.flush()?;
                if let Stream::Tls(s) = &mut self.stream {
                    // close_notify; the client's own is not awaited.
                    let _ = s.shutdown();
                }
                Ok(Flow::Close)
            }
            "STARTTLS" => self.starttls(arg),
            "AUTH" => self.auth(arg),
            _ => self.reply("502 5.5.1 command not implemented"),
        }
    }

    /// RFC 3207.
    fn starttls(&mut self, arg: &str) -> io::Result<Flow> {
        let script = self.script();
        let Some(tls) = script.tls.as_ref().filter(|_| !script.implicit_tls) else {
            return self.reply("502 5.5.1 command not implemented");
        };
        if self.tls.is_some() {
            return self.reply("503 5.5.1 TLS already active");
        }
        if !arg.trim().is_empty() {
            return self.reply("501 5.5.4 syntax: STARTTLS");
        }
        self.reply("220 2.0.0 Ready to start TLS")?;
        self.flush()?;
        // Anything the client pipelined after STARTTLS came in the clear: never act on it.
        self.buf.clear();
        self.handshake(tls)?;
        self.helo = None;
        self.auth_user = None;
        self.reset();
        Ok(Flow::Continue)
    }

    /// RFC 4954 with the PLAIN (RFC 4616) and LOGIN mechanisms.
    fn auth(&mut self, arg: &str) -> io::Result<Flow> {
        let script = self.script();
        let Some((user, pass)) = script.auth.clone() else {
            return self.reply("502 5.5.1 command not implemented");
        };
        if script.require_tls && self.tls.is_none() {
            return self.reply(MUST_STARTTLS);
        }
        if self.helo.is_none() {
            return self.reply("503 5.5.1 send EHLO first");
        }
        if self.auth_user.is_some() {
            return self.reply("503 5.5.1 already authenticated");
        }
        if self.mail_from.is_some() {
            return self.reply("503 5.5.1 AUTH not permitted during a mail transaction");
        }
        let (mech, initial) = match arg.trim().split_once(' ') {
            Some((m, i)) => (m, Some(i.trim())),
            None => (arg.trim(), None),
        };
        let ok = match mech.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let response = match initial {
                    Some(r) => r.to_string(),
                    None => match self.challenge("")? {
                        Some(r) => r,
                        None => return Ok(Flow::Continue),
                    },
                };
                let Some(bytes) = self.decode(&response)? else {
                    return Ok(Flow::Continue);
                };
                // authzid NUL authcid NUL passwd; an authzid must be empty or the user.
                let parts: Vec<&[u8]> = bytes.split(|&b| b == 0).collect();
                matches!(parts[..], [z, u, p]
                    if (z.is_empty() || z == user.as_bytes())
                        && u == user.as_bytes()
                        && p == pass.as_bytes())
            }
            "LOGIN" => {
                let name = match initial {
                    Some(r) => r.to_string(),
                    None => match self.challenge("VXNlcm5hbWU6")? {
                        Some(r) => r,
                        None => return Ok(Flow::Continue),
                    },
                };
                let Some(name) = self.decode(&name)? else {
                    return Ok(Flow::Continue);
                };
                let Some(password) = self.challenge("UGFzc3dvcmQ6")? else {
                    return Ok(Flow::Continue);
                };
                let Some(password) = self.decode(&password)? else {
                    return Ok(Flow::Continue);
                };
                name == user.as_bytes() && password == pass.as_bytes()
            }
            _ => return self.reply("504 5.5.4 Unrecognized authentication type"),
        };
        if ok {
            self.auth_user = Some(user);
            self.reply("235 2.7.0 Authentication successful")
        } else {
            self.reply("535 5.7.8 Authentication credentials invalid")
        }
    }

    /// Send "334 {text}" and read the client's response line. None when the exchange
    /// already ended (cancelled by "*" or an over-long line; the reply is queued).
    fn challenge(&mut self, text: &str) -> io::Result<Option<String>> {
        self.reply(&format!("334 {text}"))?;
        let Some(line) = self.read_line()? else {
            self.reply("500 5.5.6 authentication exchange line is too long")?;
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&line).trim().to_string();
        if line == "*" {
            self.reply("501 5.0.0 authentication cancelled")?;
            return Ok(None);
        }
        Ok(Some(line))
    }

    /// Base64 of an AUTH response ("=" and "" are the empty string); None (with a 501
    /// queued) when it does not decode.
    fn decode(&mut self, b64: &str) -> io::Result<Option<Vec<u8>>> {
        if b64 == "=" || b64.is_empty() {
            return Ok(Some(Vec::new()));
        }
        match openssl::base64::decode_block(b64) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(_) => {
                self.reply("501 5.5.2 cannot decode the base64 response")?;
                Ok(None)
            }
        }
    }

    /// Read the message content after the 354: returns (raw, unstuffed).
    /// Bytes after the end marker stay in `buf` (pipelined commands).
    fn read_data(&mut self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        use DataState::*;
        let mut raw = Vec::new();
        let mut data = Vec::new();
        let mut state = LineStart;
        loop {
            for i in 0..self.buf.len() {
                let b = self.buf[i];
                raw.push(b);
                state = match (state, b) {
                    (DotCr, b'\n') => {
                        self.buf.drain(..=i);
                        raw.truncate(raw.len() - 3); // the ".\r\n"
                        return Ok((raw, data));
                    }
                    (LineStart, b'.') => Dot,
                    (Dot, b'\r') => DotCr,
                    // A stuffed (or otherwise dotted) line: the leading dot goes.
                    (Dot, b) => {
                        data.push(b);
                        Mid
                    }
                    // ".\r" then something other than LF: the CR is content.
                    (DotCr, b) => {
                        data.extend_from_slice(&[b'\r', b]);
                        if b == b'\r' { MidCr } else { Mid }
                    }
                    (MidCr, b'\n') => {
                        data.push(b);
                        LineStart
                    }
                    (_, b'\r') => {
                        data.push(b);
                        MidCr
                    }
                    (_, b) => {
                        data.push(b);
                        Mid
                    }
                };
            }
            self.buf.clear();
            self.fill()?;
        }
    }
}

/// An AUTH command line as recorded: anything after the mechanism becomes "***".
fn mask_auth(line: &str) -> String {
    let Some((verb, rest)) = line.split_once(' ') else {
        return line.to_string();
    };
    if !verb.eq_ignore_ascii_case("AUTH") {
        return line.to_string();
    }
    match rest.trim_start().split_once(' ') {
        Some((mech, payload)) if !payload.trim().is_empty() => format!("{verb} {mech} ***"),
        _ => line.to_string(),
    }
}

/// `s` without `prefix` (compared ASCII case-insensitively).
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The address inside "<...>" (leading spaces tolerated, parameters after ">" ignored).
fn angle_addr(arg: &str) -> Option<&str> {
    let rest = arg.trim_start().strip_prefix('<')?;
    rest.find('>').map(|end| &rest[..end])
}
