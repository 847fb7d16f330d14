//! The tracking endpoint over a real socket on 127.0.0.1: a click redirects to the signed
//! URL, an open gets the pixel uncached, forged tokens get 404, a GET of the unsubscribe link
//! only shows a page, and the POST unsubscribes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mxrelay::http;
use mxrelay::tracking::{Endpoint, Hit, Keys, Kind, Links};

struct Fixture {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    links: Links,
    hits: Arc<Mutex<Vec<Hit>>>,
    unsubscribed: Arc<Mutex<Vec<Hit>>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        http::shutdown(self.addr, &self.stop);
    }
}

fn start() -> Fixture {
    let keys = Keys::new(&[
        b"new-secret-0123456789".to_vec(),
        b"old-secret-0123456789".to_vec(),
    ])
    .unwrap();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let unsubscribed = Arc::new(Mutex::new(Vec::new()));
    let (h, u) = (hits.clone(), unsubscribed.clone());
    let endpoint = Endpoint::new(
        keys.clone(),
        move |hit| h.lock().unwrap().push(hit),
        move |hit: &Hit| {
            u.lock().unwrap().push(hit.clone());
            Ok(())
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let any = "127.0.0.1:0".parse().unwrap();
    let addr = http::serve(any, "tracking", endpoint.handler(), stop.clone()).unwrap();
    let links = Links::new("https://t.example", keys).unwrap();
    Fixture {
        addr,
        stop,
        links,
        hits,
        unsubscribed,
    }
}

/// Sends `request` and returns (status line, head, body).
fn exchange(addr: SocketAddr, request: &str) -> (String, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(out[..split].to_vec()).unwrap();
    let status = head.lines().next().unwrap().to_string();
    (status, head, out[split + 4..].to_vec())
}

fn path(link: &str) -> &str {
    link.strip_prefix("https://t.example").unwrap()
}

#[test]
fn click_redirects_to_the_signed_url_and_records_the_event() {
    let f = start();
    let url = "https://shop.example/item?a=1&b=2";
    let link = f.links.click("Q1", "bob@example.org", url).unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: t.example\r\nUser-Agent: Firefox/1\r\n\r\n",
        path(&link)
    );
    let (status, head, _) = exchange(f.addr, &req);
    assert_eq!(status, "HTTP/1.1 302 Found");
    assert!(head.contains(&format!("\r\nLocation: {url}\r\n")), "{head}");
    let hits = f.hits.lock().unwrap().clone();
    assert_eq!(
        hits,
        [Hit {
            kind: Kind::Click,
            queue_id: "Q1".into(),
            recipient: "bob@example.org".into(),
            url: Some(url.into()),
            user_agent: Some("Firefox/1".into()),
            client: Some("127.0.0.1".parse().unwrap()),
            proxy: false,
        }]
    );
}

#[test]
fn open_answers_an_uncached_pixel_and_marks_proxies() {
    let f = start();
    let link = f.links.open("Q2", "ann@example.org").unwrap();
    let ua =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    let req = format!("GET {} HTTP/1.1\r\nUser-Agent: {ua}\r\n\r\n", path(&link));
    let (status, head, body) = exchange(f.addr, &req);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("Content-Type: image/gif\r\n"), "{head}");
    assert!(head.contains("Cache-Control: no-store\r\n"), "{head}");
    assert!(head.contains("Pragma: no-cache\r\n"), "{head}");
    assert!(body.starts_with(b"GIF89a"));
    let (_, _, _) = exchange(f.addr, &format!("GET {} HTTP/1.1\r\n\r\n", path(&link)));
    let hits = f.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 2);
    assert!(hits[0].proxy && hits[0].kind == Kind::Open);
    assert!(!hits[1].proxy);
    assert_eq!(hits[1].url, None);
}

#[test]
fn forged_or_misused_tokens_get_404() {
    let f = start();
    let click = f
        .links
        .click("Q3", "bob@example.org", "https://good.example/")
        .unwrap();
    let open = f.links.open("Q3", "bob@example.org").unwrap();
    let token = click.rsplit('/').next().unwrap();
    let mut altered = token.to_string().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let other = Keys::new(&[b"attacker-secret-0123".to_vec()]).unwrap();
    let forged = other
        .click("Q3", "bob@example.org", "https://evil.example/")
        .unwrap();
    let open_token = open.rsplit('/').next().unwrap();
    for p in [
        format!("/c/{altered}"),
        format!("/c/{}", &token[..token.len() - 2]),
        format!("/c/{forged}"),
        // An open token on the click route, a click token on the unsubscribe route.
        format!("/c/{open_token}"),
        format!("/u/{token}"),
        "/c/".to_string(),
        "/x/abc".to_string(),
    ] {
        let (status, head, _) = exchange(f.addr, &format!("GET {p} HTTP/1.1\r\n\r\n"));
        assert_eq!(status, "HTTP/1.1 404 Not Found", "{p}");
        assert!(!head.contains("Location"), "{p}");
    }
    assert!(f.hits.lock().unwrap().is_empty());
}

#[test]
fn get_shows_a_page_and_only_post_unsubscribes() {
    let f = start();
    let link = f.links.unsubscribe("Q4", "carl@example.org").unwrap();
    let (status, _, body) = exchange(f.addr, &format!("GET {} HTTP/1.1\r\n\r\n", path(&link)));
    assert_eq!(status, "HTTP/1.1 200 OK");
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains("<form method=\"post\">"), "{page}");
    assert!(page.contains("carl@example.org"));
    assert!(f.unsubscribed.lock().unwrap().is_empty());

    // RFC 8058's one-click POST.
    let body = "List-Unsubscribe=One-Click";
    let req = format!(
        "POST {} HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        path(&link),
        body.len()
    );
    let (status, _, page) = exchange(f.addr, &req);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(String::from_utf8_lossy(&page).contains("Unsubscribed"));
    let done = f.unsubscribed.lock().unwrap().clone();
    assert_eq!(done.len(), 1);
    assert_eq!(
        (
            done[0].kind,
            done[0].queue_id.as_str(),
            done[0].recipient.as_str()
        ),
        (Kind::Unsubscribe, "Q4", "carl@example.org")
    );
    // Clicks and opens only: no hit event for the page or the POST.
    assert!(f.hits.lock().unwrap().is_empty());
    let (status, _, _) = exchange(f.addr, &format!("PUT {} HTTP/1.1\r\n\r\n", path(&link)));
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
}

#[test]
fn a_failed_unsubscribe_answers_503() {
    let keys = Keys::new(&[b"new-secret-0123456789".to_vec()]).unwrap();
    let endpoint = Endpoint::new(keys.clone(), |_| {}, |_: &Hit| Err("disk full".into()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = http::serve(
        "127.0.0.1:0".parse().unwrap(),
        "t",
        endpoint.handler(),
        stop.clone(),
    )
    .unwrap();
    let token = keys.unsubscribe("Q5", "dan@example.org").unwrap();
    let (status, _, _) = exchange(addr, &format!("POST /u/{token} HTTP/1.1\r\n\r\n"));
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    http::shutdown(addr, &stop);
}
