//! A small, independent, recording SMTP server with scriptable replies: the
//! "next hop" in integration tests.
//!
//! Deliberately written from scratch (std only, no mxrelay code) so that it can
//! act as an oracle for what the relay put on the wire.
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

// Each integration-test crate uses only part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted command line, not counting the CRLF.
const MAX_LINE: usize = 4096;
const HOSTNAME: &str = "sink.test";
/// The reply that makes the sink hang up instead of answering.
const DROP: &str = "DROP";

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
        }
    }
}

impl Script {
    pub fn rcpt(mut self, f: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.rcpt = Arc::new(f);
        self
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
            format!(
                "  #{i}: MAIL FROM:{} to {:?}, {} bytes, from {} (helo {:?})",
                m.mail_from,
                m.rcpts,
                m.data.len(),
                m.peer,
                m.helo
            )
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
            out: BufWriter::new(stream.try_clone()?),
            input: stream.try_clone()?,
            buf: Vec::new(),
            helo: None,
            mail_from: None,
            rcpts: Vec::new(),
            read_no: 0,
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
            let _ = conn.out.flush();
            let _ = conn.input.shutdown(Shutdown::Both);
        });
}

enum Flow {
    Continue,
    Close,
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
    input: TcpStream,
    out: BufWriter<TcpStream>,
    /// Received but not yet consumed bytes.
    buf: Vec<u8>,
    peer: SocketAddr,
    local: SocketAddr,
    helo: Option<String>,
    mail_from: Option<String>,
    rcpts: Vec<String>,
    read_no: u64,
}

impl Conn {
    fn script(&self) -> Script {
        lock(&self.shared.script).clone()
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpts.clear();
    }

    /// Flush pending replies, then wait for more input.
    fn fill(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let mut tmp = [0u8; 8192];
        let n = self.input.read(&mut tmp)?;
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
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\r\n")?;
        Ok(Flow::Continue)
    }

    fn run(&mut self) -> io::Result<()> {
        let greeting = (self.script().greeting)();
        if let Flow::Close = self.reply(&greeting)? {
            return Ok(());
        }
        loop {
            let Some(line) = self.read_line()? else {
                self.reply("500 5.5.2 line too long")?;
                continue;
            };
            let line = String::from_utf8_lossy(&line).into_owned();
            lock(&self.shared.commands).push(line.clone());
            lock(&self.shared.reads).push((self.read_no, line.clone()));
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
                let Some(from) = strip_prefix_ci(line, "MAIL FROM:") else {
                    return self.reply("501 5.5.4 syntax: MAIL FROM:<address>");
                };
                if self.helo.is_none() {
                    return self.reply("503 5.5.1 send EHLO/HELO first");
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
                Ok(Flow::Close)
            }
            _ => self.reply("502 5.5.1 command not implemented"),
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
