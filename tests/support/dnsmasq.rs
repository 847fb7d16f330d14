//! A real dnsmasq on 127.0.0.1 serving only the records a test gives it (its own flags:
//! `--txt-record`, `--mx-host`, `--host-record`, `--ptr-record`), authoritative for `.test`
//! and the reverse zones, with no upstream: every other name is refused. Stopped on drop,
//! and killed with the test process.

use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simple_dns::{CLASS, Name, Packet, Question, TYPE};

pub fn path_with_sbin() -> String {
    format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Fails (never skips) when dnsmasq is missing, saying what to install.
pub fn require() {
    let dnsmasq = Command::new("dnsmasq")
        .arg("--version")
        .env("PATH", path_with_sbin())
        .output();
    assert!(
        dnsmasq.is_ok_and(|o| o.status.success()),
        "dnsmasq is missing: apt-get install dnsmasq-base (scripts/test installs it)"
    );
}

pub struct Dnsmasq {
    child: Child,
    pub port: u16,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 for both UDP and TCP");
}

/// A TXT query to the server: whether it answered with a record.
fn answers_txt(port: u16, name: &str) -> bool {
    let ask = || -> Option<bool> {
        let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .ok()?;
        let mut p = Packet::new_query(4711);
        p.questions.push(Question::new(
            Name::new(name).ok()?,
            TYPE::TXT.into(),
            CLASS::IN.into(),
            false,
        ));
        sock.send_to(&p.build_bytes_vec().ok()?, ("127.0.0.1", port))
            .ok()?;
        let mut buf = [0u8; 4096];
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        Some(!Packet::parse(&buf[..n]).ok()?.answers.is_empty())
    };
    ask().unwrap_or(false)
}

impl Dnsmasq {
    /// Starts dnsmasq with the record flags `records`; ready once `ready` (a name with a TXT
    /// record among them) answers. Its log goes to `dir`.
    pub fn start(dir: &Path, records: &[String], ready: &str) -> Dnsmasq {
        for attempt in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.join(format!("dnsmasq-{attempt}.log"))).unwrap();
            let mut cmd = Command::new("dnsmasq");
            cmd.env("PATH", path_with_sbin()).args([
                "--conf-file=/dev/null",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--log-facility=-",
                "--log-queries",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--local=/test/",
                "--local=/in-addr.arpa/",
                "--local=/ip6.arpa/",
            ]);
            cmd.arg(format!("--port={port}")).args(records);
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
            // SAFETY: prctl is async-signal-safe; dnsmasq dies with the test process.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("start dnsmasq");
            let mut d = Dnsmasq { child, port };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if answers_txt(port, ready) {
                    return d;
                }
                if d.child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile, or a flag was refused
                }
            }
            drop(d);
        }
        panic!(
            "dnsmasq did not answer on 127.0.0.1; logs in {}",
            dir.display()
        );
    }
}
