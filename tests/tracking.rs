//! Tracking end to end, with the real binary: each recipient of tracked mail gets a copy of
//! its own (links, pixel and unsubscribe link signed for them); following those links on the
//! relay's endpoint (which shares its listener with /metrics) redirects, answers the pixel,
//! and reports `click` and `open` events; a forged token gets 404; a GET of the unsubscribe
//! link changes nothing, a POST puts the recipient on the suppression list, so the next
//! message skips them; control headers turn tracking on and off per message.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use support::sink::{Message, Script};
use support::{Relay, TempDir, WAIT, delivered, queue_id, sink_on, submit, wait_until};

const BASE: &str = "https://t.example";

const HTML: &str = "From: News <news@example.com>\r\nSubject: news\r\nMIME-Version: 1.0\r\n\
    Content-Type: text/html; charset=utf-8\r\n\r\n\
    <html><body><p><a href=\"https://example.com/sale?id=1&amp;x=2\">sale</a>\r\n\
    <a href=\"https://skip.example/\">skip</a></p></body></html>\r\n";

/// A relay sending to `sink`, tracking with a secret in `dir`, its endpoint and /metrics on
/// one loopback listener.
fn relay(sink: &support::sink::Sink, dir: &Path, extra: &[&str]) -> Relay {
    let secret = dir.join("tracking.key");
    support::write_secret(&secret, "a-tracking-secret-of-some-length\n");
    let events = dir.join("events.jsonl");
    let mut args = vec![
        "--tracking-url",
        BASE,
        "--tracking-secret-file",
        secret.to_str().unwrap(),
        "--tracking-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--track-exclude",
        "skip.example",
        "--events",
        events.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Relay::via(sink, &dir.join("spool"), &args)
}

/// The endpoint's address, from the log.
fn endpoint(relay: &Relay) -> SocketAddr {
    let needle = "serving tracking and unsubscribe links on http://";
    relay.wait_log(needle);
    let log = relay.log();
    let rest = log.split(needle).nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// One HTTP request; the status code, the headers (lower-case names) and the body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    agent: &str,
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t.example\r\nUser-Agent: {agent}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let code = head[9..12].parse().unwrap();
    (code, head.to_ascii_lowercase(), body.to_string())
}

/// The path of the first link of `kind` (`c`, `o`, `u`) in a delivered copy.
fn link(m: &Message, kind: &str) -> String {
    let text = String::from_utf8_lossy(&m.data);
    let start = format!("{BASE}/{kind}/");
    let rest = text
        .split(start.as_str())
        .nth(1)
        .unwrap_or_else(|| panic!("no {start} link in:\n{text}"));
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    format!("/{kind}/{token}")
}

fn copy_for<'a>(got: &'a [Message], rcpt: &str) -> &'a Message {
    got.iter()
        .find(|m| m.rcpts == [rcpt])
        .unwrap_or_else(|| panic!("no copy for {rcpt} alone"))
}

/// The event lines of `name`, waiting for at least `n`.
fn events(dir: &Path, name: &str, n: usize) -> Vec<String> {
    let file = dir.join("events.jsonl");
    let needle = format!("\"event\":\"{name}\"");
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(String::from)
            .collect()
    };
    assert!(
        wait_until(WAIT, || lines().len() >= n),
        "fewer than {n} {name} events"
    );
    lines()
}

#[test]
fn links_pixel_and_unsubscribe_work_end_to_end() {
    let tmp = TempDir::new("tracking-e2e");
    let dir = tmp.path();
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let relay = relay(&sink, dir, &["--track", "clicks,opens", "--unsubscribe"]);
    let web = endpoint(&relay);
    let r = submit(
        relay.addr,
        "news@example.com",
        &["bob@example.org", "carol@example.org"],
        HTML.as_bytes(),
    );
    assert!(r.starts_with("250"), "{r}");
    let id = queue_id(&r);
    let got = delivered(&sink, 2, &relay);
    // One transaction per recipient, each with its own links.
    let (bob, carol) = (
        copy_for(&got, "bob@example.org"),
        copy_for(&got, "carol@example.org"),
    );
    assert_ne!(link(bob, "c"), link(carol, "c"));
    let text = String::from_utf8_lossy(&bob.data);
    assert!(
        text.contains("\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
        "{text}"
    );
    assert!(
        text.contains("href=\"https://skip.example/\""),
        "excluded domain tracked: {text}"
    );
    assert!(
        !text.contains("https://example.com/sale"),
        "link left: {text}"
    );

    // A click: 302 to the original URL (HTML-unescaped), and an event.
    let (code, head, _) = http(web, "GET", &link(bob, "c"), "Thunderbird/1", "");
    assert_eq!(code, 302);
    assert!(
        head.contains("\r\nlocation: https://example.com/sale?id=1&x=2"),
        "{head}"
    );
    let click = &events(dir, "click", 1)[0];
    for want in [
        format!("\"id\":\"{id}\""),
        "\"recipient\":\"bob@example.org\"".into(),
        "\"url\":\"https://example.com/sale?id=1&x=2\"".into(),
        "\"user_agent\":\"Thunderbird/1\"".into(),
        "\"client_ip\":\"127.0.0.1\"".into(),
    ] {
        assert!(click.contains(&want), "{want} not in {click}");
    }
    // Opens: the pixel, never cached; Gmail's proxy is marked as such.
    let (code, head, _) = http(
        web,
        "GET",
        &link(carol, "o"),
        "Mozilla/5.0 (via ggpht.com GoogleImageProxy)",
        "",
    );
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: image/gif") && head.contains("no-cache"),
        "{head}"
    );
    http(web, "GET", &link(bob, "o"), "Thunderbird/1", "");
    let opens = events(dir, "open", 2);
    assert!(
        opens
            .iter()
            .any(|l| l.contains("carol@") && l.contains("\"proxy\":true")),
        "{opens:?}"
    );
    assert!(
        opens
            .iter()
            .any(|l| l.contains("bob@") && l.contains("\"proxy\":false")),
        "{opens:?}"
    );

    // Forged or altered tokens: 404, never a redirect.
    let good = link(bob, "c");
    let mut forged = good.clone().into_bytes();
    let at = forged.len() - 5;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    for path in [
        String::from_utf8(forged).unwrap(),
        "/c/aHR0cHM6Ly9ldmlsLmV4YW1wbGUv".into(),
        link(bob, "o").replacen("/o/", "/c/", 1),
    ] {
        let (code, head, _) = http(web, "GET", &path, "x", "");
        assert_eq!(code, 404, "{path}");
        assert!(!head.contains("location:"), "{head}");
    }

    // The unsubscribe link: a GET (a link scanner) only shows the form...
    let unsubscribe = link(bob, "u");
    let (code, _, page) = http(web, "GET", &unsubscribe, "scanner", "");
    assert_eq!(code, 200);
    assert!(page.contains("<form method=\"post\">"), "{page}");
    let again = submit(
        relay.addr,
        "news@example.com",
        &["bob@example.org"],
        HTML.as_bytes(),
    );
    assert!(again.starts_with("250"), "{again}");
    delivered(&sink, 3, &relay);
    // ...the one-click POST suppresses the next message to bob, not to carol.
    let (code, _, page) = http(
        web,
        "POST",
        &unsubscribe,
        "Gmail",
        "List-Unsubscribe=One-Click",
    );
    assert_eq!(code, 200, "{page}");
    let unsub = &events(dir, "unsubscribe", 1)[0];
    assert!(
        unsub.contains("\"recipient\":\"bob@example.org\""),
        "{unsub}"
    );
    let r = submit(
        relay.addr,
        "news@example.com",
        &["bob@example.org", "carol@example.org"],
        HTML.as_bytes(),
    );
    let id = queue_id(&r);
    relay.wait_log(&format!("{id}: removed"));
    let got = sink.messages();
    assert_eq!(got.len(), 4, "bob was sent to after unsubscribing");
    assert_eq!(got[3].rcpts, ["carol@example.org"]);
    relay.wait_log(&format!(
        "{id}: suppressed to=<bob@example.org> reason=unsubscribe"
    ));
    let metrics = relay.metrics();
    for want in [
        "mxrelay_tracking_hits_total{kind=\"click\"} 1",
        "mxrelay_tracking_hits_total{kind=\"open\"} 2",
        "mxrelay_tracking_hits_total{kind=\"unsubscribe\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} not in\n{metrics}");
    }
}

#[test]
fn control_headers_turn_tracking_on_and_off_per_message() {
    let tmp = TempDir::new("tracking-headers");
    let dir = tmp.path();
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let relay = relay(&sink, dir, &["--track", "clicks"]);
    let rcpts = ["bob@example.org", "carol@example.org"];
    // Off for this message: one transaction for both, nothing rewritten, header gone.
    let off = format!("X-MxRelay-Track: none\r\n{HTML}");
    assert!(submit(relay.addr, "news@example.com", &rcpts, off.as_bytes()).starts_with("250"));
    let got = delivered(&sink, 1, &relay);
    assert_eq!(got[0].rcpts, rcpts);
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(
        text.contains("href=\"https://example.com/sale?id=1&amp;x=2\""),
        "{text}"
    );
    assert!(
        !text.contains("X-MxRelay") && !text.contains(BASE),
        "{text}"
    );
    // Opens and an unsubscribe link asked for by headers.
    let on = format!("X-MxRelay-Track: opens\r\nX-MxRelay-Unsubscribe: yes\r\n{HTML}");
    assert!(submit(relay.addr, "news@example.com", &rcpts, on.as_bytes()).starts_with("250"));
    let got = delivered(&sink, 3, &relay);
    for m in &got[1..] {
        assert_eq!(m.rcpts.len(), 1);
        let text = String::from_utf8_lossy(&m.data);
        assert!(text.contains(&format!("{BASE}/o/")), "{text}");
        assert!(
            text.contains(&format!("List-Unsubscribe: <{BASE}/u/")),
            "{text}"
        );
        assert!(
            !text.contains(&format!("{BASE}/c/")) && !text.contains("X-MxRelay"),
            "{text}"
        );
    }
}
