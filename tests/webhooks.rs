//! Webhooks end to end: a receiver written here (std and openssl, no mxrelay code) checks
//! each POST's HMAC-SHA256 signature and records the events. Signed batches arrive with the
//! event log's schema; a receiver that is down at first (connection refused, then 503) still
//! gets every event once it comes up, across a relay killed in between; events older than
//! --webhook-max-age are dropped; a wrong secret fails verification. 127.0.0.60-69 only.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

use support::sink::Script;
use support::{
    Relay, TempDir, WAIT, free_port, queue_id, sink_on, submit, submit_numbered, wait_until,
};

const MSG: &[u8] = b"From: a@client.test\r\nSubject: hook\r\n\r\nbody\r\n";

/// One POST as the receiver saw it.
#[derive(Clone, Debug)]
struct Post {
    path: String,
    content_type: String,
    timestamp: String,
    /// The signature checked out with the receiver's key and the timestamp is recent.
    verified: bool,
    /// The status the receiver answered.
    answered: u16,
    signature: String,
    body: Vec<u8>,
    /// The JSON objects of the array, as text.
    events: Vec<String>,
}

/// A webhook receiver on `addr`: verifies, records, and answers with `status`.
struct Receiver {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(addr: SocketAddr, key: &[u8], status: u16) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let r = Receiver {
            addr,
            posts: Arc::default(),
            status: Arc::new(AtomicU16::new(status)),
            stop: Arc::default(),
        };
        let (posts, answer, stop, key) = (
            r.posts.clone(),
            r.status.clone(),
            r.stop.clone(),
            key.to_vec(),
        );
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        if let Some(mut post) = read_post(&conn, &key) {
                            post.answered = answer.load(Ordering::SeqCst);
                            let _ = respond(&conn, post.answered);
                            posts.lock().unwrap().push(post);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        r
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// The events of the POSTs it took (verified and answered 200).
    fn accepted(&self) -> Vec<String> {
        self.posts()
            .into_iter()
            .filter(|p| p.verified && p.answered == 200)
            .flat_map(|p| p.events)
            .collect()
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn respond(mut conn: &TcpStream, status: u16) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Service Unavailable",
    };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

fn read_post(conn: &TcpStream, key: &[u8]) -> Option<Post> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    if parts.next()? != "POST" {
        return None;
    }
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    let header = |n: &str| headers.get(n).cloned().unwrap_or_default();
    let timestamp = header("x-mxrelay-timestamp");
    let signature = header("x-mxrelay-signature");
    let verified = verify(key, &signature, &timestamp, &body);
    Some(Post {
        path,
        content_type: header("content-type"),
        timestamp,
        verified,
        answered: 0,
        events: objects(std::str::from_utf8(&body).ok()?),
        signature,
        body,
    })
}

/// What a receiver does: `t=` matches the timestamp header, is within 5 minutes of now
/// (replays of old requests fail), and `v1=` is HMAC-SHA256(key, t + "." + body).
fn verify(key: &[u8], signature: &str, timestamp: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in signature.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x),
            Some(("v1", x)) => v1 = Some(x),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Ok(secs) = t.parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if t != timestamp || now.abs_diff(secs) > 300 {
        return false;
    }
    let pkey = PKey::hmac(key).unwrap();
    let mut s = Signer::new(MessageDigest::sha256(), &pkey).unwrap();
    s.update(format!("{t}.").as_bytes()).unwrap();
    s.update(body).unwrap();
    let mac: String = s
        .sign_to_vec()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // A real receiver compares in constant time (hmac.compare_digest).
    mac.len() == v1.len() && openssl::memcmp::eq(mac.as_bytes(), v1.as_bytes())
}

/// The top-level objects of a JSON array of objects (strings are skipped correctly).
fn objects(body: &str) -> Vec<String> {
    let b = body.trim();
    assert!(
        b.starts_with('[') && b.ends_with(']'),
        "not a JSON array: {b}"
    );
    let mut out = Vec::new();
    let (mut depth, mut start, mut in_str, mut esc) = (0, 0, false, false);
    for (i, c) in b.char_indices() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' => {
                if depth == 0 {
                    start = i;
                }
                depth += 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    out.push(b[start..=i].to_string());
                }
            }
            _ => {}
        }
    }
    out
}

/// The value of a string field in an event object.
fn field<'a>(event: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let at = event.find(&key)? + key.len();
    event[at..].split('"').next()
}

fn secret(dir: &Path, key: &str) -> String {
    let path = dir.join("hook.key");
    support::write_secret(&path, format!("{key}\n"));
    path.display().to_string()
}

/// The (event, id) pairs, sorted.
fn kinds(events: &[String]) -> Vec<(String, String)> {
    let mut k: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                field(e, "event").unwrap_or("?").to_string(),
                field(e, "id").unwrap_or("?").to_string(),
            )
        })
        .collect();
    k.sort();
    k
}

#[test]
fn events_arrive_signed_in_batches_with_the_event_log_schema() {
    let sink = sink_on("127.0.0.60", 0, Script::default());
    let hook = Receiver::start(
        format!("127.0.0.61:{}", free_port("127.0.0.61"))
            .parse()
            .unwrap(),
        b"s3cret",
        200,
    );
    let spool = TempDir::new("hook-signed");
    let key = secret(spool.path(), "s3cret");
    let log = spool.path().join("events.jsonl");
    let url = hook.url();
    let relay = Relay::via(
        &sink,
        spool.path(),
        &[
            "--webhook",
            &url,
            "--webhook-secret-file",
            &key,
            "--events",
            &log.display().to_string(),
        ],
    );
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = submit(
            relay.addr,
            "a@client.test",
            &["b@example.test", "c@example.test"],
            MSG,
        );
        ids.push(queue_id(&r));
    }
    // 3 received, 6 delivered.
    if !wait_until(WAIT, || hook.accepted().len() >= 9) {
        panic!(
            "webhook got {:?}\nrelay log:\n{}",
            hook.posts(),
            relay.log()
        );
    }
    for p in hook.posts() {
        assert!(p.verified, "bad signature: {p:?}");
        assert_eq!(p.path, "/hook");
        assert_eq!(p.content_type, "application/json");
        assert!(!p.timestamp.is_empty());
    }
    // The same objects as the event log's lines.
    let mut from_log: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut got = hook.accepted();
    from_log.sort();
    got.sort();
    assert_eq!(got, from_log);
    for id in &ids {
        assert!(got.iter().any(|e| e.contains(&format!("\"id\":\"{id}\""))));
    }
    // The README's Python verification accepts a real request and refuses a changed one.
    let post = &hook.posts()[0];
    assert_eq!(readme_verify(&key, post, &post.body), "ok");
    let mut forged = post.body.clone();
    forged[1] ^= 1;
    assert_eq!(readme_verify(&key, post, &forged), "bad signature");
}

/// Runs the README's `verify` (from its Webhooks section) on a request, with `body`.
fn readme_verify(key_file: &str, post: &Post, body: &[u8]) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("### Webhooks").expect("a Webhooks section")..];
    let code = section
        .split("```python\n")
        .nth(1)
        .and_then(|c| c.split("```").next())
        .expect("a Python example");
    let code = code.replace("/etc/mxrelay/webhook.key", key_file);
    let script = format!(
        "{code}\nimport sys\nbody = sys.stdin.buffer.read()\n\
         try:\n    verify({{'X-MxRelay-Signature': sys.argv[1]}}, body)\n    print('ok')\n\
         except ValueError as e:\n    print(e)\n"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script, &post.signature])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test");
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_receiver_down_at_first_gets_every_event_across_a_relay_restart() {
    let sink = sink_on("127.0.0.62", 0, Script::default());
    let addr: SocketAddr = format!("127.0.0.63:{}", free_port("127.0.0.63"))
        .parse()
        .unwrap();
    let spool = TempDir::new("hook-down");
    let key = secret(spool.path(), "k");
    let url = format!("http://{addr}/hook");
    let args = [
        "--webhook",
        url.as_str(),
        "--webhook-secret-file",
        key.as_str(),
        "--webhook-retry",
        "100ms,500ms",
    ];
    let mut relay = Relay::via(&sink, spool.path(), &args);
    let first = submit_numbered(relay.addr, 2, "hook");
    // Nothing listens: connection refused, retried, the four events wait on disk.
    relay.wait_log("4 events wait");
    relay.kill9();
    let killed = relay;
    let hook = Receiver::start(addr, b"k", 503);
    let relay = Relay::via(&sink, spool.path(), &args);
    relay.wait_log("4 events waiting from before");
    let last = submit_numbered(relay.addr, 1, "last").remove(0);
    assert!(
        wait_until(WAIT, || hook.posts().len() >= 2),
        "no retries:\n{}",
        relay.log()
    );
    assert!(hook.accepted().is_empty(), "503 is not taken");
    hook.set_status(200);
    if !wait_until(WAIT, || hook.accepted().len() >= 6) {
        panic!("got {:?}\nrelay log:\n{}", hook.posts(), relay.log());
    }
    // Every event exactly once: the POSTs answered 503 were not taken and nothing was
    // in flight when the relay was killed. (A message delivered just before the kill may
    // be delivered again after it, as the spool promises: that is a second event.)
    thread::sleep(Duration::from_millis(300));
    let logs = killed.log() + &relay.log();
    let mut want: Vec<(String, String)> = Vec::new();
    for id in first.iter().chain([&last]) {
        want.push(("received".to_string(), id.clone()));
        for _ in 0..logs.matches(&format!("{id}: delivered to=")).count() {
            want.push(("delivered".to_string(), id.clone()));
        }
    }
    want.sort();
    assert!(want.len() >= 6);
    assert_eq!(kinds(&hook.accepted()), want, "{logs}");
    assert!(hook.posts().iter().all(|p| p.verified));
}

#[test]
fn events_older_than_the_maximum_age_are_dropped() {
    let sink = sink_on("127.0.0.64", 0, Script::default());
    let addr: SocketAddr = format!("127.0.0.65:{}", free_port("127.0.0.65"))
        .parse()
        .unwrap();
    let spool = TempDir::new("hook-age");
    let key = secret(spool.path(), "k");
    let url = format!("http://{addr}/hook");
    let relay = Relay::via(
        &sink,
        spool.path(),
        &[
            "--webhook",
            &url,
            "--webhook-secret-file",
            &key,
            "--webhook-max-age",
            "1s",
            "--webhook-retry",
            "100ms,300ms",
            "--metrics-listen",
            "127.0.0.65:0",
        ],
    );
    let old = submit_numbered(relay.addr, 1, "old").remove(0);
    let dropped = "mxrelay_webhook_dropped_total{reason=\"max_age\"} 2\n";
    assert!(
        wait_until(WAIT, || relay.metrics().contains(dropped)),
        "{}",
        relay.log()
    );
    relay.wait_log("older than --webhook-max-age dropped");
    let hook = Receiver::start(addr, b"k", 200);
    let new = submit_numbered(relay.addr, 1, "new").remove(0);
    assert!(
        wait_until(WAIT, || hook.accepted().len() >= 2),
        "{}",
        relay.log()
    );
    thread::sleep(Duration::from_millis(300));
    let got = kinds(&hook.accepted());
    assert_eq!(
        got,
        [
            ("delivered".to_string(), new.clone()),
            ("received".to_string(), new.clone())
        ],
        "{old} must not arrive"
    );
    let metrics = relay.metrics();
    assert!(metrics.contains(dropped), "{metrics}");
    assert!(
        metrics.contains("mxrelay_webhook_delivered_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mxrelay_webhook_backlog_events 0\n"),
        "{metrics}"
    );
}

#[test]
fn a_wrong_secret_fails_verification() {
    let sink = sink_on("127.0.0.66", 0, Script::default());
    let hook = Receiver::start(
        format!("127.0.0.67:{}", free_port("127.0.0.67"))
            .parse()
            .unwrap(),
        b"the right key",
        401,
    );
    let spool = TempDir::new("hook-wrong");
    let key = secret(spool.path(), "a wrong key");
    let url = hook.url();
    let relay = Relay::via(
        &sink,
        spool.path(),
        &[
            "--webhook",
            &url,
            "--webhook-secret-file",
            &key,
            "--webhook-retry",
            "100ms,200ms",
        ],
    );
    submit(relay.addr, "a@client.test", &["b@example.test"], MSG);
    assert!(
        wait_until(WAIT, || hook.posts().len() >= 2),
        "{}",
        relay.log()
    );
    assert!(hook.posts().iter().all(|p| !p.verified));
    // Refused, so kept and retried.
    relay.wait_log("the receiver answered 401");
}
