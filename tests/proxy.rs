//! `+proxy` listeners behind a real HAProxy (`send-proxy` and `send-proxy-v2`), and raw
//! PROXY headers: the client the balancer names is the one relaying is decided for, and the
//! one `Received:`, events, logs and the AUTH lockout record; only `--proxy-from` may
//! connect, and a connection without a good header is closed having done nothing.
//!
//! Clients pick their source address: 127.0.0.77 is a trusted network, 127.0.0.78 is not,
//! and HAProxy connects to the relay from 127.0.0.1, the only `--proxy-from` address.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use support::haproxy::HaProxy;
use support::sink::Script;
use support::{Client, Relay, TempDir, WAIT, certs, connect_from, delivered, sink_on, wait_until};

const TRUSTED: &str = "127.0.0.77";
const UNTRUSTED: &str = "127.0.0.78";

/// The relay's flags for one `+proxy` listener of `role` behind balancers on 127.0.0.1.
fn proxy_args(role: &str, events: &str) -> Vec<String> {
    [
        "--listen",
        &format!("127.0.0.1:0/{role}+proxy"),
        "--proxy-from",
        "127.0.0.1/32",
        "--trusted-network",
        &format!("{TRUSTED}/32"),
        "--events",
        events,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn events(spool: &TempDir) -> String {
    std::fs::read_to_string(spool.path().join("events.jsonl")).unwrap_or_default()
}

/// MAIL, RCPT and DATA from a greeted and EHLO'd client: the reply to RCPT if refused, else
/// the reply to the end of DATA.
fn transaction(c: &mut Client, subject: &str) -> String {
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<b@example.test>");
    if !r.starts_with("250") {
        return r;
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    c.reply()
}

fn greeted_from(source: &str, addr: SocketAddr) -> Client {
    let mut c = Client::connect_from(source, addr);
    let greeting = c.reply();
    assert!(greeting.starts_with("220"), "greeting: {greeting:?}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    c
}

#[test]
fn behind_haproxy_the_real_client_relays_and_is_recorded_v1_and_v2() {
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let spool = TempDir::new("proxy-haproxy");
    let ev = spool.path().join("events.jsonl").display().to_string();
    let relay = Relay::via(&sink, spool.path(), &strs(&proxy_args("smtp", &ev)));
    let haproxy = HaProxy::start(&[(relay.addr, "send-proxy"), (relay.addr, "send-proxy-v2")]);
    for (front, version) in haproxy.fronts.iter().zip(["V1", "V2"]) {
        // Trusted by its real address, though the balancer is not.
        let mut c = greeted_from(TRUSTED, *front);
        let r = transaction(&mut c, version);
        assert!(
            r.starts_with("250 2.0.0"),
            "{version}: {r}\n{}",
            relay.log()
        );
        c.cmd("QUIT");
        // Untrusted by its real address: relaying is denied.
        let mut c = greeted_from(UNTRUSTED, *front);
        let r = transaction(&mut c, version);
        assert!(r.starts_with("554 5.7.1"), "{version}: {r}");
        c.cmd("QUIT");
        relay.wait_log(&format!(
            "PROXY {version} header from [127.0.0.1]: client [{TRUSTED}:"
        ));
        relay.wait_log(&format!(
            "PROXY {version} header from [127.0.0.1]: client [{UNTRUSTED}:"
        ));
    }
    let messages = delivered(&sink, 2, &relay);
    for m in &messages {
        let data = String::from_utf8_lossy(&m.data);
        assert!(
            data.starts_with(&format!("Received: from client.test ([{TRUSTED}])")),
            "{data}"
        );
    }
    assert!(wait_until(WAIT, || {
        let e = events(&spool);
        e.matches("\"event\":\"received\"").count() == 2
            && e.matches("\"event\":\"rejected\"").count() == 2
    }));
    let e = events(&spool);
    for line in e.lines() {
        let want = if line.contains("\"event\":\"received\"") {
            TRUSTED
        } else if line.contains("\"event\":\"rejected\"") {
            UNTRUSTED
        } else {
            continue;
        };
        assert!(
            line.contains(&format!("\"client_ip\":\"{want}\"")),
            "{line}"
        );
    }
    let log = relay.log();
    assert!(log.contains(&format!("connect from [{TRUSTED}]")), "{log}");
    assert!(
        log.contains(&format!("received from client.test[{TRUSTED}]")),
        "{log}"
    );
    assert!(!log.contains("connect from [127.0.0.1]"), "{log}");
}

#[test]
fn only_proxy_from_may_connect_and_only_with_a_good_header() {
    let spool = TempDir::new("proxy-raw");
    let ev = spool.path().join("events.jsonl").display().to_string();
    let mut args = proxy_args("smtp", &ev);
    args.extend(["--tls-handshake-timeout".into(), "1s".into()]);
    args.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
    let relay = Relay::start(spool.path(), &strs(&args));
    let read_all = |mut s: TcpStream| {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    };
    // Not a balancer: closed before a byte is read or written.
    let direct = connect_from(UNTRUSTED, relay.addr);
    assert_eq!(read_all(direct), b"");
    relay.wait_log(&format!(
        "connection from [{UNTRUSTED}] to a +proxy listener refused: not in --proxy-from"
    ));
    let refused = relay
        .metrics()
        .lines()
        .any(|l| l == "mxrelay_connections_refused_total 1");
    assert!(refused, "{}", relay.metrics());
    // A balancer's address, but SMTP instead of a header.
    let mut s = connect_from("127.0.0.1", relay.addr);
    s.write_all(b"EHLO client.test\r\n").unwrap();
    assert_eq!(read_all(s), b"");
    relay.wait_log("closing connection from [127.0.0.1]: not a PROXY protocol header");
    // Garbled.
    let mut s = connect_from("127.0.0.1", relay.addr);
    s.write_all(b"PROXY TCP4 127.0.0.77 127.0.0.1 5555\r\n")
        .unwrap();
    assert_eq!(read_all(s), b"");
    relay.wait_log("bad PROXY v1 header: wants PROXY TCP4|TCP6 SRC DST SPORT DPORT");
    // Silence: closed after --tls-handshake-timeout.
    let started = Instant::now();
    assert_eq!(read_all(connect_from("127.0.0.1", relay.addr)), b"");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(started.elapsed() < Duration::from_secs(10));
    relay.wait_log("closing connection from [127.0.0.1]: no PROXY header within 1s");
    assert!(!relay.log().contains("connect from ["), "{}", relay.log());

    // A header with the client's first commands in the same packet: they are read as SMTP.
    let mut s = connect_from("127.0.0.1", relay.addr);
    s.write_all(b"PROXY TCP4 127.0.0.77 127.0.0.1 5555 25\r\nEHLO client.test\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 "), "{line}");
    let mut ehlo = String::new();
    while !ehlo.contains("250 ") {
        assert!(r.read_line(&mut ehlo).unwrap() > 0, "{ehlo}");
    }
    s.write_all(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nQUIT\r\n")
        .unwrap();
    let mut rest = String::new();
    r.read_to_string(&mut rest).unwrap();
    assert!(
        rest.starts_with("250 2.1.0") && rest.contains("\r\n250 2.1.5"),
        "relaying allowed for the real client 127.0.0.77: {rest}"
    );
    // A v2 LOCAL header (a balancer's health check): the balancer itself is the client,
    // and it may not relay.
    let mut s = connect_from("127.0.0.1", relay.addr);
    s.write_all(&[&mxrelay::proxy::V2_SIGNATURE[..], &[0x20, 0x00, 0, 0]].concat())
        .unwrap();
    let mut c = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 "), "{line}");
    s.write_all(b"HELO check\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nQUIT\r\n")
        .unwrap();
    let mut rest = String::new();
    c.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("\r\n554 5.7.1"), "{rest}");
    relay.wait_log("PROXY V2 header from [127.0.0.1] names no client");
    relay.wait_log("connect from [127.0.0.1]");
    // Nothing of the refused connections reached the event log.
    assert!(wait_until(WAIT, || events(&spool)
        .contains("\"client_ip\":\"127.0.0.1\"")));
    let e = events(&spool);
    assert_eq!(
        e.lines().count(),
        1,
        "only the LOCAL session's refusal: {e}"
    );
}

#[test]
fn haproxy_health_checks_are_sessions_of_the_balancer_itself() {
    let spool = TempDir::new("proxy-checks");
    let ev = spool.path().join("events.jsonl").display().to_string();
    let relay = Relay::start(spool.path(), &strs(&proxy_args("smtp", &ev)));
    // HAProxy's SMTP check (EHLO, QUIT) through the PROXY protocol: v2 sends LOCAL, v1
    // names HAProxy's own connection.
    let _haproxy = HaProxy::start(&[
        (relay.addr, "send-proxy check inter 200ms"),
        (relay.addr, "send-proxy-v2 check inter 200ms"),
    ]);
    relay.wait_log("PROXY V2 header from [127.0.0.1] names no client");
    relay.wait_log("PROXY V1 header from [127.0.0.1]: client [127.0.0.1:");
    relay.wait_log_n("disconnect from [127.0.0.1] after 2 commands", 2);
    let log = relay.log();
    assert!(!log.contains("closing connection"), "{log}");
}

/// An SMTP client over TLS from the start (smtps), through `front`, from `source`.
struct Smtps(BufReader<SslStream<TcpStream>>);

impl Smtps {
    fn connect(source: &str, front: SocketAddr) -> Smtps {
        let tcp = connect_from(source, front);
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_ca_file(certs().join("ca.pem")).unwrap();
        b.set_verify(SslVerifyMode::PEER);
        let tls = b.build().connect("localhost", tcp).expect("TLS handshake");
        let mut c = Smtps(BufReader::new(tls));
        assert!(c.reply().starts_with("220"));
        assert!(c.cmd("EHLO client.test").starts_with("250"));
        c
    }

    fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).unwrap_or(0) == 0 {
                return out;
            }
            out.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return out;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }
}

#[test]
fn smtps_behind_haproxy_takes_the_header_before_tls_and_locks_out_only_the_real_client() {
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let spool = TempDir::new("proxy-smtps");
    let users = spool.path().join("users");
    let hash = mxrelay::auth::hash_password("secret");
    support::write_secret(&users, format!("alice:{hash}\n"));
    let ev = spool.path().join("events.jsonl").display().to_string();
    let c = certs();
    let mut args = proxy_args("smtps", &ev);
    for a in [
        "--tls-cert",
        &c.join("server-chain.pem").display().to_string(),
        "--tls-key",
        &c.join("server.key").display().to_string(),
        "--users",
        &users.display().to_string(),
        "--auth-max-failures",
        "1",
        "--auth-fail-delay",
        "10ms",
    ] {
        args.push(a.to_string());
    }
    let relay = Relay::via(&sink, spool.path(), &strs(&args));
    let haproxy = HaProxy::start(&[(relay.addr, "send-proxy-v2")]);
    let front = haproxy.fronts[0];
    // \0alice\0wrong, then \0alice\0secret.
    let (bad, good) = ("AGFsaWNlAHdyb25n", "AGFsaWNlAHNlY3JldA==");
    let mut attacker = Smtps::connect(UNTRUSTED, front);
    assert!(
        attacker
            .cmd(&format!("AUTH PLAIN {bad}"))
            .starts_with("535 5.7.8")
    );
    assert!(attacker.reply().starts_with("421 4.7.0"));
    relay.wait_log(&format!(
        "authentication failed for user=alice from [{UNTRUSTED}]"
    ));
    // Locked out: that client, not the balancer every client comes through.
    let mut again = Smtps::connect(UNTRUSTED, front);
    assert!(again.cmd(&format!("AUTH PLAIN {good}")).starts_with("535"));
    let mut user = Smtps::connect(TRUSTED, front);
    let r = user.cmd(&format!("AUTH PLAIN {good}"));
    assert!(r.starts_with("235"), "{r}\n{}", relay.log());
    assert!(user.cmd("MAIL FROM:<alice@client.test>").starts_with("250"));
    assert!(user.cmd("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(user.cmd("DATA").starts_with("354"));
    let r = user.cmd("Subject: smtps\r\n\r\nbody\r\n.");
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let m = &delivered(&sink, 1, &relay)[0];
    let data = String::from_utf8_lossy(&m.data);
    assert!(
        data.starts_with(&format!("Received: from client.test ([{TRUSTED}])")),
        "{data}"
    );
    assert!(data.contains("with ESMTPSA"), "{data}");
    relay.wait_log(&format!("tls from [{TRUSTED}]"));
    relay.wait_log(&format!("authenticated user=alice from [{TRUSTED}]"));
    let log = relay.log();
    assert!(!log.contains("connect from [127.0.0.1]"), "{log}");
    assert!(!log.contains("alice from [127.0.0.1]"), "{log}");
}
