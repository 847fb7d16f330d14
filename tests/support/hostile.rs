//! A hostile next hop: an SMTP server that misbehaves in one scripted way on every
//! connection (one `Behaviour` per instance), for the relay's delivery side to survive.
//!
//! Written from scratch on std (openssl is not needed: a broken handshake is just bytes), so
//! it shares no code with the relay. It records what a test needs to judge the relay: the
//! connections, the command lines, and every message whose complete data (up to the final
//! dot) arrived, with whether it was answered 250. Every socket has a timeout and every
//! misbehaviour a bound, so a test ends even when the relay under test does not give up.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long any misbehaviour goes on at most (the relay should give up long before).
const CAP: Duration = Duration::from_secs(60);
const HOSTNAME: &str = "hostile.test";

/// What the next hop does on every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Random bytes with no line end, as fast as the relay reads them, until it hangs up.
    Garbage,
    /// A greeting line of this many bytes ("220 xxx..."), sent in pieces over about a
    /// second, then CRLF.
    HugeLine(usize),
    /// A greeting with this many continuation lines ("220-...") before its last line.
    Continuations(usize),
    /// Accepts the connection and never says anything.
    Silent,
    /// A normal session up to the final dot: reads the body, never answers it.
    StallAfterData,
    /// 421 as the greeting, then hangs up.
    Greeting421,
    /// 451 to this command ("MAIL", "RCPT" or "DATA"); everything else as usual.
    Tempfail(&'static str),
    /// Offers STARTTLS and answers it with 220, then breaks the handshake: random bytes
    /// (`garbage`) or a hang-up. A session that does not ask for STARTTLS is served
    /// normally, and its mail taken.
    BrokenTls { garbage: bool },
    /// Answers the first command (EHLO) and hangs up: no session gets further.
    CloseAfterEveryCommand,
    /// Connection n answers n commands and hangs up, so each gets one step further: EHLO,
    /// MAIL, RCPT, DATA (354, then gone before the body); the fifth reads the whole message
    /// and hangs up without a reply (an outcome the relay cannot know); the sixth and later
    /// answer the final dot with 250 and hang up at once.
    Progressive,
}

/// A message whose data arrived complete (up to the final dot).
#[derive(Clone, Debug)]
pub struct Received {
    /// Which connection (from 1).
    pub connection: usize,
    /// The raw data between the 354 and the final dot.
    pub data: Vec<u8>,
    /// Whether it was answered with 250.
    pub accepted: bool,
}

struct Shared {
    behaviour: Behaviour,
    connections: AtomicUsize,
    commands: Mutex<Vec<String>>,
    received: Mutex<Vec<Received>>,
    /// While a huge reply is going out (for tests that watch the relay meanwhile).
    sending: AtomicBool,
    stop: AtomicBool,
    live: Mutex<Vec<TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running hostile next hop; dropping it stops the listener and hangs up on everyone.
pub struct Hostile {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Hostile {
    /// Listens on `ip` (any free port).
    pub fn start(ip: &str, behaviour: Behaviour) -> Hostile {
        let listener = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            behaviour,
            connections: AtomicUsize::new(0),
            commands: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
            sending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            live: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let n = sh.connections.fetch_add(1, Ordering::SeqCst) + 1;
                if let Ok(clone) = stream.try_clone() {
                    lock(&sh.live).push(clone);
                }
                let sh = sh.clone();
                thread::spawn(move || {
                    let _ = serve(&stream, &sh, n);
                    let _ = stream.shutdown(Shutdown::Both);
                });
            }
        });
        Hostile { addr, shared }
    }

    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every command line received, in order, without the CRLF.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared.commands).clone()
    }

    /// Every message whose data arrived complete.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Whether a huge reply is going out right now.
    pub fn sending(&self) -> bool {
        self.shared.sending.load(Ordering::SeqCst)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for s in lock(&self.shared.live).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A small seeded generator (splitmix64): random enough for garbage and test schedules.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Random bytes, none of them CR or LF.
    pub fn garbage(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| match self.next() as u8 {
                b'\r' | b'\n' => 0xff,
                b => b,
            })
            .collect()
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads until the peer hangs up (or the cap passes), ignoring what comes.
fn drain(mut r: impl Read) {
    let start = Instant::now();
    let mut buf = [0u8; 8192];
    while start.elapsed() < CAP {
        match r.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(_) => return,
        }
    }
}

fn serve(stream: &TcpStream, sh: &Shared, n: usize) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut w = stream.try_clone()?;
    let start = Instant::now();
    match sh.behaviour {
        Behaviour::Garbage => {
            let mut rng = Rng(n as u64);
            while start.elapsed() < CAP {
                w.write_all(&rng.garbage(16 * 1024))?;
            }
            return Ok(());
        }
        Behaviour::HugeLine(len) => {
            sh.sending.store(true, Ordering::SeqCst);
            let chunk = vec![b'x'; (len / 50).max(1)];
            let sent = (|| {
                w.write_all(b"220 ")?;
                let mut left = len;
                while left > 0 {
                    let k = left.min(chunk.len());
                    w.write_all(&chunk[..k])?;
                    left -= k;
                    thread::sleep(Duration::from_millis(20));
                }
                w.write_all(b"\r\n")
            })();
            sh.sending.store(false, Ordering::SeqCst);
            sent?;
            drain(stream);
            return Ok(());
        }
        Behaviour::Continuations(lines) => {
            sh.sending.store(true, Ordering::SeqCst);
            let sent = (|| {
                let mut batch = Vec::new();
                for i in 0..lines {
                    batch.extend_from_slice(format!("220-{HOSTNAME} line {i}\r\n").as_bytes());
                    if batch.len() >= 64 * 1024 {
                        w.write_all(&batch)?;
                        batch.clear();
                    }
                }
                batch.extend_from_slice(b"220 that was all\r\n");
                w.write_all(&batch)
            })();
            sh.sending.store(false, Ordering::SeqCst);
            sent?;
            drain(stream);
            return Ok(());
        }
        Behaviour::Silent => {
            drain(stream);
            return Ok(());
        }
        Behaviour::Greeting421 => {
            return w.write_all(
                format!("421 4.3.2 {HOSTNAME} Service not available, closing channel\r\n")
                    .as_bytes(),
            );
        }
        _ => {}
    }
    session(stream, &mut w, sh, n)
}

/// A plain SMTP session, with the behaviour's twists.
fn session(stream: &TcpStream, w: &mut TcpStream, sh: &Shared, n: usize) -> io::Result<()> {
    let b = sh.behaviour;
    let mut r = BufReader::new(stream.try_clone()?);
    w.write_all(format!("220 {HOSTNAME} ESMTP\r\n").as_bytes())?;
    let mut answered = 0;
    let start = Instant::now();
    loop {
        let Some(line) = read_line(&mut r, start)? else {
            return Ok(());
        };
        lock(&sh.commands).push(line.clone());
        let verb = line
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let tempfail = |cmd: &str| matches!(b, Behaviour::Tempfail(c) if c == cmd);
        let reply: String = match verb.as_str() {
            "EHLO" => {
                let tls = if matches!(b, Behaviour::BrokenTls { .. }) {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                format!("250-{HOSTNAME}\r\n250-8BITMIME\r\n{tls}250 ENHANCEDSTATUSCODES")
            }
            "HELO" => format!("250 {HOSTNAME}"),
            "STARTTLS" => {
                let Behaviour::BrokenTls { garbage } = b else {
                    return w.write_all(b"502 5.5.1 not here\r\n");
                };
                w.write_all(b"220 2.0.0 Ready to start TLS\r\n")?;
                if garbage {
                    // Whatever the client's hello says, an answer that is not TLS.
                    let mut rng = Rng(n as u64);
                    let _ = w.write_all(&rng.garbage(4096));
                    drain(stream);
                }
                return Ok(());
            }
            "MAIL" if tempfail("MAIL") => "451 4.3.0 Try again later".into(),
            "RCPT" if tempfail("RCPT") => "451 4.3.0 Try again later".into(),
            "DATA" if tempfail("DATA") => "451 4.3.0 Try again later".into(),
            "MAIL" | "RCPT" | "RSET" | "NOOP" => "250 2.0.0 ok".into(),
            "QUIT" => return w.write_all(b"221 2.0.0 bye\r\n"),
            "DATA" => {
                w.write_all(b"354 go ahead\r\n")?;
                answered += 1;
                if b == Behaviour::Progressive && answered == n {
                    return Ok(());
                }
                let Some(data) = read_data(&mut r, start)? else {
                    return Ok(());
                };
                let accepted = match b {
                    Behaviour::StallAfterData => false,
                    Behaviour::Progressive => n > 5,
                    _ => true,
                };
                lock(&sh.received).push(Received {
                    connection: n,
                    data,
                    accepted,
                });
                if !accepted {
                    if b == Behaviour::StallAfterData {
                        drain(&mut r);
                    }
                    return Ok(());
                }
                w.write_all(b"250 2.0.0 queued\r\n")?;
                answered += 1;
                if b == Behaviour::Progressive {
                    return Ok(());
                }
                continue;
            }
            _ => "502 5.5.2 unknown command".into(),
        };
        w.write_all(format!("{reply}\r\n").as_bytes())?;
        answered += 1;
        let close = match b {
            Behaviour::CloseAfterEveryCommand => true,
            Behaviour::Progressive => answered >= n,
            _ => false,
        };
        if close {
            return Ok(());
        }
    }
}

/// The next command line without its CRLF; `None` when the peer hung up or the cap passed.
fn read_line(r: &mut impl BufRead, start: Instant) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        if start.elapsed() > CAP {
            return Ok(None);
        }
        match r.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(None),
            Ok(_) if line.ends_with(b"\n") => break,
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&line);
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
}

/// The data up to the final dot line (raw, still dot-stuffed); `None` if it never came.
fn read_data(r: &mut impl BufRead, start: Instant) -> io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    loop {
        let Some(line) = read_line(r, start)? else {
            return Ok(None);
        };
        if line == "." {
            return Ok(Some(data));
        }
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
    }
}
