//! Shared helpers for the integration tests: temp spools, the real `mxrelay` binary as a
//! child process (log captured), a raw SMTP client, plus the fake DNS server, the recording
//! sink and a real Redis server. Every wait is bounded.
#![allow(dead_code)]

pub mod dns;
pub mod dnsmasq;
pub mod haproxy;
pub mod hostile;
pub mod redis_server;
pub mod sink;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("mxrelay-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a file that holds a secret (a key, a users file) owner-only, as mxrelay wants.
pub fn write_secret(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes.
/// The `*.smtp` transcript files in `dir` (relative to the crate), sorted; never none.
pub fn smtp_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "smtp"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no transcripts in {}", dir.display());
    paths
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit and collects its output; kills it and panics after `timeout`.
pub fn finish(mut child: Child, timeout: Duration, what: &str) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish in {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// If the test process dies without running destructors, the child started by `cmd` is
/// killed with it.
pub fn dies_with_the_test(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The real binary, started with a temp spool on 127.0.0.1:0; its log is captured.
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    pub spool: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Relay {
    pub fn start(spool: &Path, args: &[&str]) -> Relay {
        Relay::start_binary(Path::new(env!("CARGO_BIN_EXE_mxrelay")), spool, args)
    }

    /// As `start`, with another build of mxrelay (the static one).
    pub fn start_binary(binary: &Path, spool: &Path, args: &[&str]) -> Relay {
        let mut cmd = Command::new(binary);
        cmd.args(["--hostname", "relay.test", "--spool"]).arg(spool);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        dies_with_the_test(&mut cmd);
        let mut child = cmd.spawn().expect("start mxrelay");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut addr = None;
        let found = wait_until(WAIT, || {
            let l = log.lock().unwrap();
            addr = l
                .lines()
                .find_map(|line| {
                    line.split("listening on ")
                        .nth(1)?
                        .split_whitespace()
                        .next()
                })
                .and_then(|a| a.trim().parse().ok());
            addr.is_some() || l.contains("cannot start")
        });
        let relay = Relay {
            child,
            addr: addr.unwrap_or_else(|| "127.0.0.1:1".parse().unwrap()),
            spool: spool.to_path_buf(),
            log,
        };
        assert!(
            found && addr.is_some(),
            "relay did not start:\n{}",
            relay.log()
        );
        relay
    }

    /// A relay that sends everything to `sink` as its smarthost, in plaintext.
    pub fn via(sink: &sink::Sink, spool: &Path, extra: &[&str]) -> Relay {
        let hop = sink.addr.to_string();
        let mut args = vec!["--smarthost", hop.as_str(), "--smarthost-tls", "none"];
        args.extend_from_slice(extra);
        Relay::start(spool, &args)
    }

    /// A relay that finds its next hops through `dns`, on port `mx_port` (MX delivery).
    pub fn via_dns(dns: &dns::FakeDns, mx_port: u16, spool: &Path, extra: &[&str]) -> Relay {
        let (server, port) = (dns.addr.to_string(), mx_port.to_string());
        let mut args = vec!["--dns-server", server.as_str(), "--mx-port", port.as_str()];
        args.extend_from_slice(extra);
        Relay::start(spool, &args)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The relay's /metrics page (it runs with `--metrics-listen`).
    pub fn metrics(&self) -> String {
        self.wait_log("serving metrics on http://");
        let log = self.log();
        let addr = log
            .split("serving metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap();
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        stream.read_to_string(&mut page).unwrap();
        page
    }

    /// Waits until the log contains `needle` `count` times; panics with the log otherwise.
    pub fn wait_log_n(&self, needle: &str, count: usize) {
        if !wait_until(WAIT, || self.log().matches(needle).count() >= count) {
            panic!("log never had {count}x {needle:?}:\n{}", self.log());
        }
    }

    pub fn wait_log(&self, needle: &str) {
        self.wait_log_n(needle, 1)
    }

    /// Queued messages in the spool, as `mxrelay queue list` reads them.
    pub fn queued(&self) -> usize {
        let mut n = 0;
        let _ = mxrelay::spool::list_each(&self.spool.join("queue"), |_, _| n += 1);
        n
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name ("HUP", "USR1", ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), 15);
        let mut status = None;
        wait_until(WAIT, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap_or_else(|| panic!("relay did not stop on SIGTERM:\n{}", self.log()))
    }
}

fn signal(pid: u32, sig: i32) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw SMTP client for driving the relay.
pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).expect("connect")
    }

    /// `None` when the relay cannot be reached (for tests that kill it).
    pub fn try_connect(addr: SocketAddr) -> Option<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
        Client::over(stream)
    }

    /// A client connecting from `source` (any 127.x address works on loopback).
    pub fn connect_from(source: &str, addr: SocketAddr) -> Client {
        Client::over(connect_from(source, addr)).expect("connect")
    }

    fn over(stream: TcpStream) -> Option<Client> {
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .ok()?;
        Some(Client {
            reader: BufReader::new(stream.try_clone().ok()?),
            stream,
        })
    }

    /// Reads one (possibly multi-line) reply; lines joined with "\n". Empty string on EOF.
    pub fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return out;
            }
            let done = line.as_bytes().get(3) != Some(&b'-');
            out.push_str(line.trim_end());
            if done {
                return out;
            }
            out.push('\n');
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("send");
    }

    /// Another handle on the socket, to write from a second thread while replies are read.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone the socket")
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> Option<()> {
        self.stream.write_all(bytes).ok()
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// True when the server closed the connection.
    pub fn at_eof(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

/// A TCP connection to `addr` from the address `source` (any port).
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let source: SocketAddr = (source.parse::<std::net::IpAddr>().unwrap(), 0).into();
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    s.bind(&source.into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    s.connect_timeout(&addr.into(), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"));
    s.into()
}

/// One whole transaction; returns the reply to the end of DATA. `body` is raw wire content
/// (already dot-stuffed as the caller wants) without the final ".".
pub fn submit(addr: SocketAddr, from: &str, rcpts: &[&str], body: &[u8]) -> String {
    let mut c = Client::connect(addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    assert!(r.starts_with("250"), "MAIL: {r}");
    for rcpt in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(r.starts_with("250"), "RCPT {rcpt}: {r}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(body);
    c.send(b".\r\n");
    let r = c.reply();
    c.cmd("QUIT");
    r
}

/// Submits `n` messages, each `Subject: <subject><i>` and one per connection; their queue ids.
pub fn submit_numbered(addr: SocketAddr, n: usize, subject: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let body = format!("Subject: {subject}{i}\r\n\r\nbody {i}\r\n");
            queue_id(&submit(
                addr,
                "a@client.test",
                &["b@example.test"],
                body.as_bytes(),
            ))
        })
        .collect()
}

/// The queue id from "250 2.0.0 Ok: queued as ID".
pub fn queue_id(reply: &str) -> String {
    reply.rsplit(' ').next().unwrap().to_string()
}

/// A port on `ip` with nothing listening (yet).
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sink on `ip` with a free port, retrying ports already taken there.
pub fn sink_on(ip: &str, port: u16, script: sink::Script) -> sink::Sink {
    sink::Sink::start(ip, port, script).unwrap_or_else(|e| panic!("sink on {ip}:{port}: {e}"))
}

/// Test certificates made by `scripts/test-certs` (a CA, a server certificate for
/// localhost/127.0.0.1/*.test, and an unrelated self-signed one), made once per run.
pub fn certs() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/test-certs");
        let status = Command::new(root.join("scripts/test-certs"))
            .arg(&dir)
            .status()
            .expect("run scripts/test-certs");
        assert!(status.success(), "scripts/test-certs failed");
        dir
    })
    .clone()
}

/// `sink.wait_for(n)`, but a timeout shows the relay's log too.
pub fn delivered(sink: &sink::Sink, n: usize, relay: &Relay) -> Vec<sink::Message> {
    if !wait_until(WAIT, || sink.messages().len() >= n) {
        panic!(
            "{} message(s) expected at {}; relay log:\n{}",
            n,
            sink.addr,
            relay.log()
        );
    }
    sink.messages()
}
