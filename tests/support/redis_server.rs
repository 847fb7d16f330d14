//! A real `redis-server` (Debian's package) on 127.0.0.1 with a free port, without
//! persistence, in a temp dir; killed on drop. It can be stopped and started again on the same
//! port (empty again, as a server without persistence comes back).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{TempDir, WAIT, dies_with_the_test, free_port, wait_until};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port("127.0.0.1"),
            dir: TempDir::new("redis"),
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        dies_with_the_test(&mut cmd);
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not installed: install the Debian package `redis-server` \
                 (scripts/test does)"
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.child = Some(child);
        let up = wait_until(WAIT, || self.client().ping().is_ok());
        assert!(up, "redis-server did not answer on port {}", self.port);
    }

    /// `redis://127.0.0.1:PORT/db`.
    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the server (kill -9: nothing is saved).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let gone = wait_until(WAIT, || {
            TcpStream::connect_timeout(
                &format!("127.0.0.1:{}", self.port).parse().unwrap(),
                Duration::from_millis(200),
            )
            .is_err()
        });
        assert!(gone, "redis-server still answers");
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn client(&self) -> Db {
        Db::new(&self.url(0))
    }

    /// A connection to database `db`.
    pub fn db(&self, db: u32) -> Db {
        Db::new(&self.url(db))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A few commands on one database, each on a fresh connection with short timeouts.
pub struct Db(redis::Client);

impl Db {
    fn new(url: &str) -> Db {
        Db(redis::Client::open(url).unwrap())
    }

    fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut con = self.0.get_connection_with_timeout(Duration::from_secs(2))?;
        con.set_read_timeout(Some(Duration::from_secs(2)))?;
        cmd.query(&mut con)
    }

    pub fn ping(&self) -> redis::RedisResult<String> {
        self.run(&redis::cmd("PING"))
    }

    /// HGET, `None` when the field is not there (or the server is not).
    pub fn hget(&self, key: &str, field: &str) -> Option<String> {
        self.run(redis::cmd("HGET").arg(key).arg(field))
            .ok()
            .flatten()
    }

    /// HLEN, 0 when the server does not answer.
    pub fn hlen(&self, key: &str) -> usize {
        self.run(redis::cmd("HLEN").arg(key)).unwrap_or(0)
    }

    /// XLEN, 0 when the server does not answer.
    pub fn xlen(&self, key: &str) -> usize {
        self.run(redis::cmd("XLEN").arg(key)).unwrap_or(0)
    }
}
