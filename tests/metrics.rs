//! The metrics endpoint in-process over real sockets: a scrape shows what was counted, other
//! paths and methods are refused, an idle client is dropped after the timeout without
//! holding up others, the output passes `promtool check metrics`, and the accept loop stops.
//! Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread;
use std::time::{Duration, Instant};

use mxrelay::events::category::Category;
use mxrelay::metrics::{self, Metrics, WebhookDrop};
use mxrelay::smtp::session::Refusal;

/// A running endpoint, stopped when dropped.
struct Endpoint {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
}

impl Endpoint {
    fn start() -> Endpoint {
        let metrics = Arc::new(Metrics::new());
        let stop = Arc::new(AtomicBool::new(false));
        let addr = metrics::serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            stop.clone(),
        )
        .expect("serve");
        Endpoint {
            addr,
            metrics,
            stop,
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        metrics::shutdown(self.addr, &self.stop);
    }
}

struct Response {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` as is and reads the response until the server closes.
fn exchange(addr: SocketAddr, request: &str) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Response {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: test\r\n\r\n"),
    )
}

/// The value of one exact series (`name` or `name{labels}`) in an exposition.
fn value_of<'a>(text: &'a str, series: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn a_scrape_shows_what_was_counted() {
    let ep = Endpoint::start();
    let m = &ep.metrics;
    m.connection_accepted();
    m.connection_accepted();
    m.connection_accepted();
    m.message_received(1000);
    m.message_rejected(Refusal::Size);
    m.message_rejected(Refusal::RelayDenied);
    m.message_rejected(Refusal::RelayDenied);
    m.recipient_delivered();
    m.bytes_delivered(1000);
    m.observe_delivery_latency(0.3);
    m.observe_delivery_latency(45.0);
    m.session_opened();
    m.set_queue(7, 120);

    let r = get(ep.addr, "/metrics");
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    let ct = r.header("Content-Type").expect("Content-Type");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body.len().to_string().as_str())
    );
    let t = &r.body;
    assert!(t.contains("# HELP mxrelay_connections_total "), "{t}");
    assert!(
        t.contains("# TYPE mxrelay_connections_total counter\n"),
        "{t}"
    );
    for (series, want) in [
        ("mxrelay_connections_total", "3"),
        ("mxrelay_messages_received_total", "1"),
        ("mxrelay_received_bytes_total", "1000"),
        ("mxrelay_messages_rejected_total{reason=\"size\"}", "1"),
        (
            "mxrelay_messages_rejected_total{reason=\"relay_denied\"}",
            "2",
        ),
        ("mxrelay_messages_rejected_total{reason=\"other\"}", "0"),
        ("mxrelay_recipients_delivered_total", "1"),
        ("mxrelay_recipients_bounced_total", "0"),
        ("mxrelay_delivered_bytes_total", "1000"),
        ("mxrelay_delivery_latency_seconds_bucket{le=\"0.1\"}", "0"),
        ("mxrelay_delivery_latency_seconds_bucket{le=\"0.5\"}", "1"),
        ("mxrelay_delivery_latency_seconds_bucket{le=\"30\"}", "1"),
        ("mxrelay_delivery_latency_seconds_bucket{le=\"60\"}", "2"),
        ("mxrelay_delivery_latency_seconds_bucket{le=\"+Inf\"}", "2"),
        ("mxrelay_delivery_latency_seconds_sum", "45.3"),
        ("mxrelay_delivery_latency_seconds_count", "2"),
        ("mxrelay_open_connections", "1"),
        ("mxrelay_busy_workers", "0"),
        ("mxrelay_queue_messages", "7"),
        ("mxrelay_queue_oldest_message_age_seconds", "120"),
    ] {
        assert_eq!(value_of(t, series), want, "{series}");
    }
    let build = format!(
        "mxrelay_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value_of(t, &build), "1");

    // Later scrapes see later counts; a query string is ignored.
    m.connection_accepted();
    let r = get(ep.addr, "/metrics?debug=1");
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    assert_eq!(value_of(&r.body, "mxrelay_connections_total"), "4");
}

#[test]
fn other_paths_and_methods_are_refused() {
    let ep = Endpoint::start();

    let r = get(ep.addr, "/other");
    assert_eq!(r.status, "HTTP/1.1 404 Not Found");
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(!r.body.contains("mxrelay_"), "{}", r.body);

    let r = exchange(
        ep.addr,
        "POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));
    assert_eq!(r.header("Connection"), Some("close"));

    // A body the server never reads does not cost the client its answer.
    let r = exchange(
        ep.addr,
        &format!(
            "PUT /metrics HTTP/1.1\r\nContent-Length: 20000\r\n\r\n{}",
            "x".repeat(20000)
        ),
    );
    assert_eq!(r.status, "HTTP/1.1 405 Method Not Allowed");

    // HEAD: the headers of a GET, no body.
    let r = exchange(ep.addr, "HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    assert!(r.body.is_empty(), "{}", r.body);
    let length: usize = r.header("Content-Length").unwrap().parse().unwrap();
    assert!(length > 0);

    let r = exchange(ep.addr, "GET /metrics\r\n\r\n");
    assert_eq!(r.status, "HTTP/1.1 400 Bad Request");

    let r = exchange(
        ep.addr,
        &format!(
            "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "y".repeat(9000)
        ),
    );
    assert_eq!(r.status, "HTTP/1.1 431 Request Header Fields Too Large");
}

/// A client that connects and sends nothing holds only its own thread: another client is
/// answered meanwhile, and the idle one is dropped once the 5 s head timeout passes.
#[test]
fn an_idle_client_is_dropped_without_blocking_others() {
    let ep = Endpoint::start();
    let mut idle = TcpStream::connect(ep.addr).unwrap();
    let idle_since = Instant::now();
    // A second client that starts a request and stalls mid-line.
    let mut partial = TcpStream::connect(ep.addr).unwrap();
    partial.write_all(b"GET /metr").unwrap();

    let asked = Instant::now();
    let r = get(ep.addr, "/metrics");
    assert_eq!(r.status, "HTTP/1.1 200 OK");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "answer took {:?}",
        asked.elapsed()
    );

    // No sleeping: block on the idle socket until the server closes it (bounded at 15 s).
    for s in [&mut idle, &mut partial] {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        let n = s
            .read(&mut buf)
            .expect("the server closes the idle connection within the bound");
        assert_eq!(n, 0, "idle client got {:?}", &buf[..n]);
    }
    let waited = idle_since.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(10),
        "dropped after {waited:?}, expected about 5 s"
    );
}

#[test]
fn promtool_accepts_the_output() {
    let ep = Endpoint::start();
    let m = &ep.metrics;
    m.connection_accepted();
    m.connection_refused();
    m.message_received(512);
    for reason in Refusal::ALL {
        m.message_rejected(reason);
    }
    m.recipient_delivered();
    m.recipient_deferred(Category::RateLimited);
    m.recipient_bounced(Category::SpamBlock);
    m.webhook_delivered(3);
    m.webhook_failed();
    m.webhook_dropped(WebhookDrop::BacklogFull, 1);
    m.webhook_backlog(2);
    m.message_expired();
    m.bytes_delivered(512);
    m.auth_failed();
    m.event_dropped();
    for s in [0.05, 0.7, 12.0, 400.0, 90_000.0] {
        m.observe_delivery_latency(s);
    }
    m.session_opened();
    m.worker_busy();
    m.set_queue(3, 60);
    let r = get(ep.addr, "/metrics");
    assert_eq!(r.status, "HTTP/1.1 200 OK");

    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install the Debian package `prometheus` \
             (apt-get install -y prometheus) to run this check"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let mut stdin = child.stdin.take().unwrap();
    let body = r.body.clone();
    // Write from another thread so a chatty promtool cannot deadlock on a full pipe.
    let writer = thread::spawn(move || stdin.write_all(body.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {} {said}\non:\n{}",
        out.status,
        r.body
    );
}

#[test]
fn shutdown_stops_the_accept_loop() {
    let ep = Endpoint::start();
    assert_eq!(get(ep.addr, "/metrics").status, "HTTP/1.1 200 OK");
    metrics::shutdown(ep.addr, &ep.stop);
    // Once the loop has ended the listening socket is closed and connecting fails.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(ep.addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        thread::sleep(Duration::from_millis(10));
    }
}
