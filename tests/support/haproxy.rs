//! A real HAProxy (Debian's package) in TCP mode on 127.0.0.1, in front of relay listeners:
//! one frontend per backend, each forwarding to one server with the options given
//! (`send-proxy`, `send-proxy-v2`; `check` for SMTP health checks, EHLO and QUIT). Runs in the foreground (`-db`) with its
//! configuration and output in a temp dir; killed on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use super::{TempDir, WAIT, dies_with_the_test, free_port, wait_until};

pub struct HaProxy {
    child: Child,
    dir: TempDir,
    /// The frontends, in the order of the backends given.
    pub fronts: Vec<SocketAddr>,
}

impl HaProxy {
    /// `backends`: (server address, options of its `server` line).
    pub fn start(backends: &[(SocketAddr, &str)]) -> HaProxy {
        let dir = TempDir::new("haproxy");
        let mut cfg = String::from(
            "global\n    maxconn 256\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 30s\n    timeout server 30s\n    timeout check 5s\n",
        );
        let mut fronts = Vec::new();
        for (i, (server, options)) in backends.iter().enumerate() {
            let front: SocketAddr = ([127, 0, 0, 1], free_port("127.0.0.1")).into();
            cfg.push_str(&format!(
                "\nfrontend f{i}\n    bind {front}\n    default_backend b{i}\n\n\
                 backend b{i}\n    option smtpchk EHLO haproxy.test\n    \
                 server relay{i} {server} source 127.0.0.1 {options}\n"
            ));
            fronts.push(front);
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, &cfg).unwrap();
        let out = std::fs::File::create(dir.path().join("output")).unwrap();
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let sbin = std::path::Path::new("/usr/sbin/haproxy");
        let mut cmd = Command::new(if sbin.exists() {
            sbin
        } else {
            "haproxy".as_ref()
        });
        cmd.arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        dies_with_the_test(&mut cmd);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "haproxy is not installed: install the Debian package `haproxy` (scripts/test does)"
            ),
            Err(e) => panic!("cannot run haproxy: {e}"),
        };
        let mut h = HaProxy { child, dir, fronts };
        let up = wait_until(WAIT, || {
            h.child.try_wait().unwrap().is_none() && h.fronts.iter().all(|f| listening(*f))
        });
        assert!(up, "haproxy did not start:\n{cfg}\n{}", h.output());
        h
    }

    /// What haproxy printed.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output")).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something listens on the IPv4 address `addr`, from /proc/net/tcp (connecting to
/// find out would open a session through to the relay).
fn listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(a) = addr else {
        panic!("IPv4 only")
    };
    // /proc/net/tcp shows the address as the u32 in host (little-endian) order.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(a.ip().octets()),
        a.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == want && f[3] == "0A"
    })
}
