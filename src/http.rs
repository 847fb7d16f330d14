//! A small HTTP/1.1 endpoint on `std::net`, for `/metrics` and the tracking and unsubscribe
//! links: a thread per connection, at most 16 at once by default (503 beyond), 5 s to send
//! the request head (a total, not per read, so trickling bytes does not extend it) and 5 s per
//! write, the head bounded at 8 KiB (431 beyond), malformed request lines answered 400, and
//! every response closing the connection. A POST may carry a body of at most 1 KiB
//! (Content-Length, read within the same 5 s; 413 beyond), enough for a one-click
//! unsubscribe. One that sends nothing is dropped after the timeout
//! without holding up anyone else. The routes are the caller's (`Handler`). Kept by hand: a
//! well-kept sync crate with these limits and timeouts was not found (tiny_http has no socket
//! timeouts), and it is little code.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Limits of the HTTP endpoint; `serve` uses `HttpLimits::DEFAULT`.
#[derive(Clone, Copy, Debug)]
struct HttpLimits {
    max_connections: usize,
    /// Total time to receive the request head, and the timeout of each write.
    timeout: Duration,
    max_head: usize,
    /// The largest request body read (by Content-Length).
    max_body: usize,
}

impl HttpLimits {
    const DEFAULT: HttpLimits = HttpLimits {
        max_connections: 16,
        timeout: Duration::from_secs(5),
        max_head: 8 * 1024,
        max_body: 1024,
    };
}

/// After answering, unread request bytes are drained for at most this long (and this much)
/// before closing, so the close does not turn into a reset that could destroy the response.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Connection threads only parse a short head and copy a rendered string.
const HTTP_STACK: usize = 128 * 1024;

/// What the endpoint serves: an answer for each well-formed request.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A well-formed request: its line, the headers handlers use, the client and the body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// The client's address (as connected: no proxy headers are trusted).
    pub peer: Option<SocketAddr>,
    /// A POST's body, by Content-Length, at most 1 KiB; empty without one or for other
    /// methods.
    pub body: &'a [u8],
}

pub struct Response {
    pub status: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(content_type: &'static str, body: Vec<u8>) -> Response {
        Response {
            status: "200 OK",
            headers: Vec::new(),
            content_type,
            body,
        }
    }

    pub fn not_found() -> Response {
        text("404 Not Found", "not found")
    }

    /// 405, naming the methods the path takes.
    pub fn method_not_allowed(allow: &'static str) -> Response {
        let mut r = text("405 Method Not Allowed", "method not allowed");
        r.headers.push(("Allow", allow.to_string()));
        r
    }
}

/// A plain-text response with this status.
pub fn text(status: &'static str, body: &str) -> Response {
    Response {
        status,
        headers: Vec::new(),
        content_type: TEXT,
        body: format!("{body}\n").into_bytes(),
    }
}

/// Serves `handler` on `addr` with a thread per connection, at most 16 concurrent connections
/// (503 beyond), 5 s to send the request head and per write, the head bounded at 8 KiB (431
/// beyond), malformed request lines answered 400, `HEAD` answered as `GET` without the body,
/// and `Connection: close`. `name` names the threads and the log lines. Returns the bound
/// address (port 0 allowed). The accept loop stops once `stop` is true and one more connection
/// arrives to wake it: see [`shutdown`], which does both.
pub fn serve(
    addr: SocketAddr,
    name: &'static str,
    handler: Arc<Handler>,
    stop: Arc<AtomicBool>,
) -> io::Result<SocketAddr> {
    serve_with(bind(addr, name)?, name, handler, stop, HttpLimits::DEFAULT)
}

/// Binds `addr` for [`serve_on`] (at start, while the relay may still bind privileged ports).
pub fn bind(addr: SocketAddr, name: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr} for {name}: {e}")))
}

/// As [`serve`], on a bound listener and with its own cap on concurrent connections.
pub fn serve_on(
    listener: TcpListener,
    name: &'static str,
    handler: Arc<Handler>,
    stop: Arc<AtomicBool>,
    max_connections: usize,
) -> io::Result<SocketAddr> {
    let limits = HttpLimits {
        max_connections,
        ..HttpLimits::DEFAULT
    };
    serve_with(listener, name, handler, stop, limits)
}

/// Stops a [`serve`] loop: sets `stop` and connects once to `addr` (loopback if `addr` is a
/// wildcard address) to wake the blocked `accept`. Requests already being answered finish on
/// their own threads, bounded by the timeouts.
pub fn shutdown(addr: SocketAddr, stop: &AtomicBool) {
    stop.store(true, Ordering::SeqCst);
    crate::net::wake_accept(addr);
}

fn serve_with(
    listener: TcpListener,
    name: &'static str,
    handler: Arc<Handler>,
    stop: Arc<AtomicBool>,
    limits: HttpLimits,
) -> io::Result<SocketAddr> {
    let local = listener.local_addr()?;
    thread::Builder::new()
        .name(format!("{name}-{local}"))
        .spawn(move || accept_loop(listener, name, handler, stop, limits))?;
    Ok(local)
}

/// Gives a connection slot back when the connection's thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    name: &'static str,
    handler: Arc<Handler>,
    stop: Arc<AtomicBool>,
    limits: HttpLimits,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("{name}: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            log::debug!(
                "{name}: connection refused, {} already open",
                limits.max_connections
            );
            refuse(stream);
            continue;
        }
        let slot = Slot(active.clone());
        let handler = handler.clone();
        // On failure the closure, and with it the slot, is dropped.
        let spawned = thread::Builder::new()
            .name(format!("{name}-http"))
            .stack_size(HTTP_STACK)
            .spawn(move || {
                let _slot = slot;
                handle(stream, handler.as_ref(), &limits);
            });
        if let Err(e) = spawned {
            log::error!("{name}: cannot start a connection thread: {e}");
        }
    }
    log::info!("{name} endpoint stopped");
}

/// Over the cap: answer 503 without ever blocking the accept thread.
fn refuse(mut stream: TcpStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    // Take whatever request bytes already arrived, so closing is less likely to reset.
    let mut buf = [0u8; 4096];
    let _ = stream.read(&mut buf);
    let _ = stream.write_all(&response(
        "503 Service Unavailable",
        &[("Retry-After", "1".to_string())],
        TEXT,
        b"too many connections\n",
        false,
    ));
    let _ = stream.shutdown(Shutdown::Write);
}

fn handle(mut stream: TcpStream, handler: &Handler, limits: &HttpLimits) {
    if stream.set_write_timeout(Some(limits.timeout)).is_err() {
        return;
    }
    let deadline = Instant::now() + limits.timeout;
    let (mut buf, head_len) = match read_head(&mut stream, limits, deadline) {
        Ok(read) => read,
        Err(HeadError::TooLarge) => {
            let _ = stream.write_all(&response(
                "431 Request Header Fields Too Large",
                &[],
                TEXT,
                b"request head too large\n",
                false,
            ));
            close(stream);
            return;
        }
        // Timed out, reset or closed before a complete head: nothing to answer.
        Err(HeadError::Gone) => return,
    };
    let mut rest = buf.split_off(head_len);
    let reply = match parse(&buf) {
        Some((request, Some(length))) if request.method == "POST" && length > limits.max_body => {
            response(
                "413 Content Too Large",
                &[],
                TEXT,
                b"request body too large\n",
                false,
            )
        }
        Some((mut request, length)) => {
            // Only a POST's body is read; others are left to the drain after the answer.
            let length = if request.method == "POST" {
                length.unwrap_or(0)
            } else {
                0
            };
            if read_body(&mut stream, &mut rest, length, deadline).is_err() {
                return;
            }
            request.body = &rest[..length];
            request.peer = stream.peer_addr().ok();
            let r = handler(&request);
            let head_only = request.method == "HEAD";
            response(r.status, &r.headers, r.content_type, &r.body, head_only)
        }
        None => response("400 Bad Request", &[], TEXT, b"bad request\n", false),
    };
    if stream.write_all(&reply).is_ok() {
        close(stream);
    }
}

/// Ends our side, then drains what the client still sends for a bounded time.
fn close(mut stream: TcpStream) {
    let _ = stream.flush();
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    let mut buf = [0u8; 4096];
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

pub const TEXT: &str = "text/plain; charset=utf-8";

/// A complete response; `head_only` (for HEAD) keeps the body's length but leaves it out.
fn response(
    status: &str,
    headers: &[(&str, String)],
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    TooLarge,
    Gone,
}

/// Reads until the blank line ending the request head, which must arrive by `deadline` and
/// fit in `limits.max_head` bytes. Returns what was read (body bytes that came with the head
/// included) and the head's length.
fn read_head(
    stream: &mut TcpStream,
    limits: &HttpLimits,
    deadline: Instant,
) -> Result<(Vec<u8>, usize), HeadError> {
    let mut buf = vec![0u8; limits.max_head];
    let mut len = 0;
    loop {
        if let Some(end) = head_end(&buf[..len]) {
            buf.truncate(len);
            return Ok((buf, end));
        }
        if len == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Gone);
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Gone),
        }
    }
}

/// Reads the body until `body` holds `length` bytes, by `deadline`; what came beyond it is
/// ignored.
fn read_body(
    stream: &mut TcpStream,
    body: &mut Vec<u8>,
    length: usize,
    deadline: Instant,
) -> Result<(), HeadError> {
    let mut buf = [0u8; 1024];
    while body.len() < length {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Gone);
        }
        let want = (length - body.len()).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Gone),
        }
    }
    Ok(())
}

/// Where the head ends (after its empty line), if it is all there. Empty lines before the
/// request line are skipped, as RFC 9112 allows; a bare LF counts as a line end.
fn head_end(buf: &[u8]) -> Option<usize> {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n')?;
    let mut line_start = start;
    for (i, &b) in buf.iter().enumerate().skip(start) {
        if b != b'\n' {
            continue;
        }
        let line = &buf[line_start..i];
        if line.is_empty() || line == b"\r" {
            return Some(i + 1);
        }
        line_start = i + 1;
    }
    None
}

/// The request, if its line is well formed, and its Content-Length if it gave one; HEAD is
/// passed on as such (the body is left out of the answer). Header lines that are not UTF-8
/// or not fields are skipped; a Content-Length that is not a number makes the request bad.
fn parse(head: &[u8]) -> Option<(Request<'_>, Option<usize>)> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let line = std::str::from_utf8(lines.next()?).ok()?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let mut request = Request {
        method,
        path,
        query,
        ..Request::default()
    };
    let mut length = None;
    for line in lines {
        let Some((name, value)) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("user-agent") {
            request.user_agent = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            if !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            length = Some(value.parse().unwrap_or(usize::MAX));
        }
    }
    Some((request, length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let req = |method, path, query| {
            Some(Request {
                method,
                path,
                query,
                ..Request::default()
            })
        };
        let table: &[(&[u8], Option<Request>)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                req("GET", "/metrics", None),
            ),
            (
                b"GET /metrics?x=1 HTTP/1.0\r\n\r\n",
                req("GET", "/metrics", Some("x=1")),
            ),
            (b"HEAD /metrics HTTP/1.1\n\n", req("HEAD", "/metrics", None)),
            (b"get /other HTTP/1.1\r\n\r\n", req("get", "/other", None)),
            (b"GET /metrics\r\n\r\n", None),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", None),
            (b"GET /metrics HTTP/2.0\r\n\r\n", None),
            (b"GET http://x/metrics HTTP/1.1\r\n\r\n", None),
            (b"GET /metrics HTTP/1.1 x\r\n\r\n", None),
            (b"\xff /metrics HTTP/1.1\r\n\r\n", None),
            (b"", None),
        ];
        for (head, want) in table {
            assert_eq!(
                &parse(head).map(|(r, _)| r),
                want,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    /// Answers every request with the path it asked for.
    fn echo() -> Arc<Handler> {
        Arc::new(|r: &Request| Response::ok(TEXT, r.path.as_bytes().to_vec()))
    }

    #[test]
    fn head_gets_the_length_without_the_body_and_a_bad_line_400() {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = serve("127.0.0.1:0".parse().unwrap(), "test", echo(), stop.clone()).unwrap();
        let get = exchange(addr, b"GET /abc HTTP/1.1\r\n\r\n");
        assert!(
            get.starts_with("HTTP/1.1 200 ") && get.ends_with("\r\n\r\n/abc"),
            "{get}"
        );
        let head = exchange(addr, b"HEAD /abc HTTP/1.1\r\n\r\n");
        assert!(
            head.contains("Content-Length: 4\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let bad = exchange(addr, b"GET abc HTTP/1.1\r\n\r\n");
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
        shutdown(addr, &stop);
    }

    #[test]
    fn a_small_body_the_user_agent_and_the_peer_reach_the_handler() {
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(|r: &Request| {
            let peer = r.peer.map(|p| p.ip().to_string()).unwrap_or_default();
            let ua = r.user_agent.unwrap_or("-");
            let body = String::from_utf8_lossy(r.body);
            Response::ok(
                TEXT,
                format!("{} {ua} {peer} [{body}]", r.method).into_bytes(),
            )
        });
        let any = "127.0.0.1:0".parse().unwrap();
        let addr = serve(any, "test", handler, stop.clone()).unwrap();
        let r = exchange(
            addr,
            b"POST /u/x HTTP/1.1\r\nUser-Agent: UA/1\r\nContent-Length: 26\r\n\r\nList-Unsubscribe=One-Click",
        );
        assert!(
            r.ends_with("\r\n\r\nPOST UA/1 127.0.0.1 [List-Unsubscribe=One-Click]"),
            "{r}"
        );
        let r = exchange(addr, b"GET / HTTP/1.1\r\n\r\n");
        assert!(r.ends_with("\r\n\r\nGET - 127.0.0.1 []"), "{r}");
        let r = exchange(addr, b"POST / HTTP/1.1\r\nContent-Length: 1025\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
        let r = exchange(addr, b"PUT / HTTP/1.1\r\nContent-Length: 1025\r\n\r\n");
        assert!(r.ends_with("\r\n\r\nPUT - 127.0.0.1 []"), "{r}");
        let r = exchange(addr, b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
        shutdown(addr, &stop);
    }

    #[test]
    fn head_end_needs_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\nbody"), Some(24));
        assert_eq!(head_end(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), Some(22));
        assert_eq!(head_end(b"\r\n\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A refusing server may already have closed: read whatever came back.
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// An echo endpoint on a free loopback port, with these limits.
    fn echo_with(limits: HttpLimits, stop: &Arc<AtomicBool>) -> SocketAddr {
        let any = "127.0.0.1:0".parse().unwrap();
        serve_with(
            bind(any, "test").unwrap(),
            "test",
            echo(),
            stop.clone(),
            limits,
        )
        .unwrap()
    }

    #[test]
    fn over_the_cap_gets_503_and_a_freed_slot_is_reused() {
        let stop = Arc::new(AtomicBool::new(false));
        let limits = HttpLimits {
            max_connections: 1,
            timeout: Duration::from_millis(300),
            max_head: 1024,
            max_body: 1024,
        };
        let addr = echo_with(limits, &stop);
        // Holds the only slot until its head times out.
        let mut idle = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let mut refused = String::new();
        while started.elapsed() < Duration::from_millis(250) {
            refused = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
            if refused.starts_with("HTTP/1.1 503 ") {
                break;
            }
        }
        assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
        assert!(refused.contains("\r\nConnection: close\r\n"), "{refused}");
        // The idle client is dropped after the timeout, and its slot comes back.
        idle.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(idle.read(&mut [0u8; 16]).unwrap(), 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
            if r.starts_with("HTTP/1.1 200 ") {
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed: {r}");
            thread::sleep(Duration::from_millis(10));
        }
        shutdown(addr, &stop);
    }

    #[test]
    fn an_oversized_head_gets_431() {
        let stop = Arc::new(AtomicBool::new(false));
        let limits = HttpLimits {
            max_head: 64,
            ..HttpLimits::DEFAULT
        };
        let addr = echo_with(limits, &stop);
        let mut req = b"GET /metrics HTTP/1.1\r\nX-Long: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 100));
        req.extend_from_slice(b"\r\n\r\n");
        let r = exchange(addr, &req);
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        shutdown(addr, &stop);
    }
}
