//! TLS and authentication end to end: STARTTLS and implicit TLS sessions with AUTH, the
//! STARTTLS injection case, AUTH refused in plaintext, brute-force lockout, relay refusal on
//! every role, and outbound TLS (opportunistic to MX, required and authenticated to a
//! smarthost). Certificates come from scripts/test-certs.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use support::dns::FakeDns;
use support::sink::{Script, SinkTls};
use support::{Relay, TempDir, WAIT, certs, sink_on};

const PLAIN_ALICE: &str = "AGFsaWNlAHNlY3JldA=="; // \0alice\0secret

enum Conn {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(b),
            Conn::Tls(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(b),
            Conn::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An SMTP client that can switch to TLS, verifying the relay against the test CA.
struct TlsClient {
    r: BufReader<Conn>,
    peer_cert_subject: String,
}

fn connector() -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(certs().join("ca.pem")).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    b.build()
}

fn tls_wrap(tcp: TcpStream) -> (Conn, String) {
    let s = connector()
        .connect("localhost", tcp)
        .expect("TLS handshake with the relay");
    let subject = s
        .ssl()
        .peer_certificate()
        .map(|c| format!("{:?}", c.subject_name()))
        .unwrap_or_default();
    (Conn::Tls(Box::new(s)), subject)
}

impl TlsClient {
    fn connect(addr: SocketAddr, implicit: bool) -> TlsClient {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let (conn, subject) = if implicit {
            tls_wrap(tcp)
        } else {
            (Conn::Plain(tcp), String::new())
        };
        let mut c = TlsClient {
            r: BufReader::new(conn),
            peer_cert_subject: subject,
        };
        assert!(c.reply().starts_with("220"));
        c
    }

    fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                return out;
            }
            out.push_str(line.trim_end());
            if line.as_bytes().get(3) != Some(&b'-') {
                return out;
            }
            out.push('\n');
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.r
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    fn starttls(&mut self) {
        assert!(self.cmd("STARTTLS").starts_with("220 2.0.0"));
        let dummy = Conn::Plain(TcpStream::connect(self.local_dummy()).unwrap());
        let Conn::Plain(tcp) = std::mem::replace(self.r.get_mut(), dummy) else {
            panic!("already TLS")
        };
        let (conn, subject) = tls_wrap(tcp);
        self.r = BufReader::new(conn);
        self.peer_cert_subject = subject;
    }

    /// A throwaway socket to fill the slot while the real one is being wrapped.
    fn local_dummy(&self) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        std::mem::forget(l);
        a
    }

    fn at_eof(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_))
    }

    fn send_message(&mut self, from: &str, to: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        if !r.starts_with("250") {
            return r;
        }
        let r = self.cmd(&format!("RCPT TO:<{to}>"));
        if !r.starts_with("250") {
            return r;
        }
        assert!(self.cmd("DATA").starts_with("354"));
        self.r
            .get_mut()
            .write_all(b"Subject: tls\r\n\r\nsecret stuff\r\n.\r\n")
            .unwrap();
        self.reply()
    }
}

fn users_file(dir: &Path, extra: &str) -> String {
    let path = dir.join("users");
    support::write_secret(
        &path,
        format!("alice:{}{extra}\n", mxrelay::auth::hash_password("secret")),
    );
    path.display().to_string()
}

struct Setup {
    _spool: TempDir,
    relay: Relay,
    sink: support::sink::Sink,
}

/// A relay with a smtp, a submission and an smtps listener, real certificates, one account,
/// and a plain smarthost sink.
fn setup(extra: &[&str]) -> Setup {
    let sink = sink_on("127.0.0.11", 0, Script::default());
    let spool = TempDir::new("tls");
    let users = users_file(spool.path(), "");
    let c = certs();
    let mut args = vec![
        "--listen".to_string(),
        "127.0.0.1:0/smtp".into(),
        "--listen".into(),
        "127.0.0.1:0/submission".into(),
        "--listen".into(),
        "127.0.0.1:0/smtps".into(),
        "--tls-cert".into(),
        c.join("server-chain.pem").display().to_string(),
        "--tls-key".into(),
        c.join("server.key").display().to_string(),
        "--users".into(),
        users,
        "--smarthost".into(),
        sink.addr.to_string(),
        "--smarthost-tls".into(),
        "none".into(),
        "--auth-fail-delay".into(),
        "50ms".into(),
        "--trusted-network".into(),
        "10.0.0.0/8".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let relay = Relay::start(
        spool.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    Setup {
        _spool: spool,
        relay,
        sink,
    }
}

fn addr(relay: &Relay, role: &str) -> SocketAddr {
    // Listeners are logged one after another: the relay counts as started at the first.
    let is_it = |l: &str| l.contains("listening on") && l.ends_with(&format!("({role})"));
    support::wait_until(WAIT, || relay.log().lines().any(is_it));
    let log = relay.log();
    let line = log.lines().find(|l| is_it(l)).expect("listener");
    line.split("listening on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn submission_needs_starttls_then_auth_and_records_esmtpsa() {
    let s = setup(&[]);
    let mut c = TlsClient::connect(addr(&s.relay, "submission"), false);
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}"))
            .starts_with("538 5.7.11")
    );
    assert!(
        c.cmd("MAIL FROM:<alice@client.test>")
            .starts_with("530 5.7.0")
    );
    c.starttls();
    assert!(c.peer_cert_subject.contains("localhost") || !c.peer_cert_subject.is_empty());
    assert!(
        c.cmd("MAIL FROM:<alice@client.test>").starts_with("503"),
        "EHLO again after STARTTLS"
    );
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(
        c.cmd("MAIL FROM:<alice@client.test>")
            .starts_with("530 5.7.0")
    );
    assert!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}"))
            .starts_with("235 2.7.0")
    );
    let r = c.send_message("alice@client.test", "bob@elsewhere.test");
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    let m = &s.sink.wait_for(1, WAIT)[0];
    let text = String::from_utf8_lossy(&m.data);
    assert!(text.contains("with ESMTPSA id"), "{text}");
    assert!(
        text.contains("(using TLSv1.3 ") && text.contains("(Authenticated sender: alice)"),
        "{text}"
    );
    s.relay
        .wait_log("authenticated user=alice from [127.0.0.1]");
    assert!(
        !s.relay.log().contains(PLAIN_ALICE),
        "AUTH payloads never reach the log"
    );
}

#[test]
fn smtps_is_implicit_tls_with_auth_login() {
    let s = setup(&[]);
    let mut c = TlsClient::connect(addr(&s.relay, "smtps"), true);
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(
        c.cmd("MAIL FROM:<alice@client.test>")
            .starts_with("530 5.7.0")
    );
    assert!(c.cmd("AUTH LOGIN").starts_with("334 VXNlcm5hbWU6"));
    assert!(c.cmd("YWxpY2U=").starts_with("334 UGFzc3dvcmQ6"));
    assert!(c.cmd("c2VjcmV0").starts_with("235"));
    assert!(
        c.send_message("alice@client.test", "x@elsewhere.test")
            .starts_with("250")
    );
    s.sink.wait_for(1, WAIT);
}

#[test]
fn plaintext_pipelined_after_starttls_is_never_answered() {
    let s = setup(&[]);
    let mut tcp = TcpStream::connect(addr(&s.relay, "smtp")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(tcp.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    tcp.write_all(b"EHLO client.test\r\n").unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with("250 ") {
            break;
        }
    }
    // CVE-2011-0411: commands smuggled in the same packet as STARTTLS.
    tcp.write_all(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\n")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("220 2.0.0"), "{line}");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "nothing answered after the 220: {:?}",
        String::from_utf8_lossy(&rest)
    );
    s.relay.wait_log("pipelined commands after STARTTLS");
}

#[test]
fn auth_is_refused_in_plaintext_on_the_relay_port() {
    let s = setup(&[]);
    let mut c = TlsClient::connect(addr(&s.relay, "smtp"), false);
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}"))
            .starts_with("538 5.7.11")
    );
    c.starttls();
    c.cmd("EHLO client.test");
    assert!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}"))
            .starts_with("235")
    );
}

#[test]
fn repeated_failures_lock_the_address_out() {
    let s = setup(&["--auth-max-failures", "3"]);
    let mut c = TlsClient::connect(addr(&s.relay, "smtps"), true);
    c.cmd("EHLO client.test");
    let bad = "AGFsaWNlAHdyb25n"; // \0alice\0wrong
    // Asking to act as someone else counts as a failure too (root\0alice\0secret).
    assert!(
        c.cmd("AUTH PLAIN cm9vdABhbGljZQBzZWNyZXQ=")
            .starts_with("535 5.7.8")
    );
    assert!(c.cmd(&format!("AUTH PLAIN {bad}")).starts_with("535 5.7.8"));
    let last = c.cmd(&format!("AUTH PLAIN {bad}"));
    assert!(last.starts_with("535 5.7.8"), "{last}");
    assert!(c.reply().starts_with("421 4.7.0"));
    assert!(c.at_eof());
    // Even the right password is refused from this address now.
    let mut c = TlsClient::connect(addr(&s.relay, "smtps"), true);
    c.cmd("EHLO client.test");
    assert!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}"))
            .starts_with("535")
    );
    s.relay.wait_log("locked out after repeated failures");
    let log = s.relay.log();
    assert_eq!(
        log.matches("authentication failed for user=alice from [127.0.0.1]")
            .count(),
        3,
        "{log}"
    );
    s.relay.wait_log("locked out after repeated failures");
}

#[test]
fn no_role_relays_without_auth() {
    let s = setup(&[]);
    let rcpts = [
        "<b@elsewhere.test>",
        "<user%other.test@relay.test>",
        "<@a.test,@b.test:user@c.test>",
        "<\"x@y\"@elsewhere.test>",
        "<host!user@elsewhere.test>",
    ];
    // The relay port, from an untrusted address: refused at RCPT.
    let mut c = TlsClient::connect(addr(&s.relay, "smtp"), false);
    c.cmd("EHLO client.test");
    c.starttls();
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    for r in rcpts {
        assert!(
            c.cmd(&format!("RCPT TO:{r}")).starts_with("554 5.7.1"),
            "{r}"
        );
    }
    assert!(c.cmd("DATA").starts_with("554"));
    // Submission and smtps: refused at MAIL, before any recipient.
    for (role, implicit) in [("submission", false), ("smtps", true)] {
        let mut c = TlsClient::connect(addr(&s.relay, role), implicit);
        c.cmd("EHLO client.test");
        if !implicit {
            c.starttls();
            c.cmd("EHLO client.test");
        }
        assert!(
            c.cmd("MAIL FROM:<a@client.test>").starts_with("530 5.7.0"),
            "{role}"
        );
        assert!(
            c.cmd("RCPT TO:<b@elsewhere.test>").starts_with("503"),
            "{role}"
        );
        assert!(c.cmd("DATA").starts_with("503"), "{role}");
    }
    assert!(s.sink.messages().is_empty());
}

#[test]
fn sender_domain_restriction() {
    let s = setup(&["--sender-domain", "alice=client.test"]);
    let mut c = TlsClient::connect(addr(&s.relay, "smtps"), true);
    c.cmd("EHLO client.test");
    assert!(
        c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}"))
            .starts_with("235")
    );
    assert!(
        c.cmd("MAIL FROM:<alice@other.test>")
            .starts_with("553 5.7.1")
    );
    assert!(c.cmd("MAIL FROM:<alice@Client.Test>").starts_with("250"));
}

#[test]
fn self_signed_certificate_is_generated_once_and_rsa_keys_load() {
    let spool = TempDir::new("selfsigned");
    let relay = Relay::start(spool.path(), &["--listen", "127.0.0.1:0/submission"]);
    relay.wait_log("generated a self-signed certificate for relay.test");
    assert!(spool.path().join("tls/cert.pem").exists());
    drop(relay);
    let relay = Relay::start(spool.path(), &["--listen", "127.0.0.1:0/submission"]);
    relay.wait_log("using the self-signed certificate");
    // A PKCS#1 ("BEGIN RSA PRIVATE KEY") key works as well as PKCS#8.
    let spool2 = TempDir::new("rsakey");
    let c = certs();
    let relay = Relay::start(
        spool2.path(),
        &[
            "--listen",
            "127.0.0.1:0/smtps",
            "--tls-cert",
            &c.join("server-chain.pem").display().to_string(),
            "--tls-key",
            &c.join("server-rsa.key").display().to_string(),
        ],
    );
    let mut client = TlsClient::connect(relay.addr, true);
    assert!(client.cmd("EHLO x.test").starts_with("250"));
}

/// An smtps relay serving a certificate the test CA did not sign, from files in the spool
/// that the test may replace.
fn smtps_relay_with_untrusted_cert(
    spool: &TempDir,
) -> (Relay, std::path::PathBuf, std::path::PathBuf) {
    let c = certs();
    let (cert, key) = (spool.path().join("cert.pem"), spool.path().join("key.pem"));
    std::fs::copy(c.join("other.pem"), &cert).unwrap();
    std::fs::copy(c.join("other.key"), &key).unwrap();
    let relay = Relay::start(
        spool.path(),
        &[
            "--listen",
            "127.0.0.1:0/smtps",
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    );
    (relay, cert, key)
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections() {
    let spool = TempDir::new("reload");
    let c = certs();
    let (relay, cert, key) = smtps_relay_with_untrusted_cert(&spool);
    // The first certificate is not signed by the test CA: a verifying client refuses it.
    let tcp = TcpStream::connect(relay.addr).unwrap();
    assert!(connector().connect("localhost", tcp).is_err());
    let mut open = TlsSessionKeeper::open(relay.addr);
    std::fs::copy(c.join("server-chain.pem"), &cert).unwrap();
    std::fs::copy(c.join("server.key"), &key).unwrap();
    relay.signal("HUP");
    relay.wait_log("certificate reloaded");
    let mut client = TlsClient::connect(relay.addr, true);
    assert!(client.cmd("EHLO x.test").starts_with("250"));
    assert!(
        open.still_works(),
        "the session opened before the reload is not dropped"
    );
}

/// A TLS session made with verification off, kept open across a reload.
struct TlsSessionKeeper(BufReader<SslStream<TcpStream>>);

impl TlsSessionKeeper {
    fn open(addr: SocketAddr) -> TlsSessionKeeper {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let s = b.build().connect("localhost", tcp).unwrap();
        let mut k = TlsSessionKeeper(BufReader::new(s));
        let mut line = String::new();
        k.0.read_line(&mut line).unwrap();
        k
    }

    fn still_works(&mut self) -> bool {
        self.0.get_mut().write_all(b"NOOP\r\n").unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).is_ok() && line.starts_with("250")
    }
}

// ---- outbound ----------------------------------------------------------------------------

#[test]
fn delivers_through_a_tls_smarthost_that_demands_auth() {
    let c = certs();
    let tls = SinkTls::from_files(&c.join("server-chain.pem"), &c.join("server.key"));
    // The test certificate names 127.0.0.1 (and localhost), so the smarthost listens there.
    let sink = sink_on(
        "127.0.0.1",
        0,
        Script::default()
            .tls(tls)
            .require_tls()
            .auth("relayuser", "api-key-123"),
    );
    let spool = TempDir::new("smarthost-auth");
    let pw = spool.path().join("smarthost.pw");
    support::write_secret(&pw, "api-key-123\n");
    let relay = Relay::start(
        spool.path(),
        &[
            "--smarthost",
            &sink.addr.to_string(),
            "--smarthost-user",
            "relayuser",
            "--smarthost-password-file",
            &pw.display().to_string(),
            "--tls-ca-file",
            &c.join("ca.pem").display().to_string(),
        ],
    );
    support::submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        b"Subject: via smarthost\r\n\r\nhi\r\n",
    );
    let m = &support::delivered(&sink, 1, &relay)[0];
    assert!(m.tls.is_some(), "delivered under TLS");
    assert_eq!(m.auth_user.as_deref(), Some("relayuser"));
    relay.wait_log(&format!(
        "relay=127.0.0.1[127.0.0.1]:{} tls",
        sink.addr.port()
    ));
    assert!(!relay.log().contains("api-key-123"));
}

#[test]
fn smarthost_certificate_is_verified_by_default() {
    let c = certs();
    let tls = SinkTls::from_files(&c.join("other.pem"), &c.join("other.key"));
    let sink = sink_on("127.0.0.13", 0, Script::default().tls(tls));
    let spool = TempDir::new("smarthost-verify");
    let relay = Relay::start(
        spool.path(),
        &[
            "--smarthost",
            &sink.addr.to_string(),
            "--tls-ca-file",
            &c.join("ca.pem").display().to_string(),
            "--retry",
            "1h",
        ],
    );
    support::submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    relay.wait_log("TLS handshake with 127.0.0.13");
    relay.wait_log("deferred, attempt 1 failed");
    assert!(sink.messages().is_empty());
}

#[test]
fn implicit_tls_smarthost() {
    let c = certs();
    let tls = SinkTls::from_files(&c.join("server-chain.pem"), &c.join("server.key"));
    let sink = sink_on("127.0.0.1", 0, Script::default().tls(tls).implicit());
    let spool = TempDir::new("smarthost-implicit");
    let relay = Relay::start(
        spool.path(),
        &[
            "--smarthost",
            &sink.addr.to_string(),
            "--smarthost-tls",
            "implicit",
            "--tls-ca-file",
            &c.join("ca.pem").display().to_string(),
        ],
    );
    support::submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    assert!(support::delivered(&sink, 1, &relay)[0].tls.is_some());
}

#[test]
fn opportunistic_starttls_to_mx_and_encrypt_policy() {
    let c = certs();
    // An MX with STARTTLS (self-signed, unrelated name: opportunistic TLS does not verify).
    let tls = SinkTls::from_files(&c.join("other.pem"), &c.join("other.key"));
    let with_tls = sink_on("127.0.0.15", 0, Script::default().tls(tls));
    let without = sink_on("127.0.0.16", with_tls.addr.port(), Script::default());
    let dns = FakeDns::start();
    dns.mx("tls.test", &[(10, "mx.tls.test")])
        .a("mx.tls.test", Ipv4Addr::new(127, 0, 0, 15));
    dns.mx("plain.test", &[(10, "mx.plain.test")])
        .a("mx.plain.test", Ipv4Addr::new(127, 0, 0, 16));
    let spool = TempDir::new("mx-tls");
    let relay = Relay::via_dns(&dns, with_tls.addr.port(), spool.path(), &[]);
    support::submit(
        relay.addr,
        "a@client.test",
        &["x@tls.test", "y@plain.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    assert!(
        with_tls.wait_for(1, WAIT)[0].tls.is_some(),
        "STARTTLS used when offered"
    );
    assert!(
        without.wait_for(1, WAIT)[0].tls.is_none(),
        "plaintext when not offered"
    );
    // With --tls-outbound encrypt, the MX without STARTTLS gets nothing.
    let spool2 = TempDir::new("mx-encrypt");
    let relay2 = Relay::via_dns(
        &dns,
        with_tls.addr.port(),
        spool2.path(),
        &["--tls-outbound", "encrypt", "--retry", "1h"],
    );
    support::submit(
        relay2.addr,
        "a@client.test",
        &["y@plain.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    relay2.wait_log("does not offer STARTTLS");
    relay2.wait_log("deferred, attempt 1 failed");
    assert_eq!(
        without.messages().len(),
        1,
        "only the first relay's message arrived in plaintext"
    );
}

#[test]
fn hash_password_output_verifies() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mxrelay"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$2y$"), "{hash}");
    let users = mxrelay::auth::Users::parse(&format!("bob:{}", hash.trim())).unwrap();
    assert!(users.verify("bob", b"s3cret") && !users.verify("bob", b"nope"));
}

#[test]
fn certificate_files_replaced_on_disk_are_picked_up_without_a_signal() {
    let spool = TempDir::new("watch");
    let c = certs();
    let (relay, cert, key) = smtps_relay_with_untrusted_cert(&spool);
    // Renewal as an ACME client does it: new files moved into place.
    std::fs::copy(c.join("server.key"), spool.path().join("key.new")).unwrap();
    std::fs::copy(c.join("server-chain.pem"), spool.path().join("cert.new")).unwrap();
    std::fs::rename(spool.path().join("key.new"), &key).unwrap();
    std::fs::rename(spool.path().join("cert.new"), &cert).unwrap();
    relay.wait_log("certificate reloaded");
    let mut client = TlsClient::connect(relay.addr, true);
    assert!(client.cmd("EHLO x.test").starts_with("250"));
}

#[test]
fn sighup_reloads_the_users_file() {
    let s = setup(&[]);
    let users = s._spool.path().join("users");
    let mut c = TlsClient::connect(addr(&s.relay, "smtps"), true);
    c.cmd("EHLO client.test");
    // dave does not exist yet.
    let dave = "AGRhdmUAZGF2ZXB3"; // \0dave\0davepw
    assert!(c.cmd(&format!("AUTH PLAIN {dave}")).starts_with("535"));
    let mut text = std::fs::read_to_string(&users).unwrap();
    text.push_str(&format!(
        "dave:{}\n",
        mxrelay::auth::hash_password("davepw")
    ));
    support::write_secret(&users, text);
    s.relay.signal("HUP");
    s.relay.wait_log("accounts reloaded");
    assert!(
        c.cmd(&format!("AUTH PLAIN {dave}")).starts_with("235"),
        "the open session sees the new account"
    );
}

/// Over a connection limit, an implicit-TLS client gets the connection closed, not a
/// plaintext 421 that its TLS stack would read as a broken handshake; the smtp listener of
/// the same relay still says 421.
#[test]
fn smtps_over_the_limit_is_closed_without_plaintext() {
    let s = setup(&["--max-connections-per-ip", "1"]);
    let smtps = addr(&s.relay, "smtps");
    let held = TlsClient::connect(smtps, true);
    let mut raw = std::net::TcpStream::connect(smtps).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut raw, &mut got);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    s.relay
        .wait_log("limit max_connections_per_ip reached by [127.0.0.1]: CONNECT refused");
    drop(held);

    // Once the TLS session's place is free, a plain client takes it and the next gets 421.
    let plain = addr(&s.relay, "smtp");
    let mut first = None;
    assert!(support::wait_until(WAIT, || {
        let mut c = support::Client::connect(plain);
        let greeted = c.reply().starts_with("220");
        first = greeted.then_some(c);
        greeted
    }));
    let mut second = support::Client::connect(plain);
    assert!(second.reply().starts_with("421 4.7.0"));
    drop(first);
}

/// A client that drips its handshake, a byte at a time inside the per-read timeout, is cut
/// off when --tls-handshake-timeout has passed in all, not after one timeout per byte.
#[test]
fn a_dripped_handshake_is_cut_off_at_the_handshake_timeout() {
    let s = setup(&["--tls-handshake-timeout", "1s"]);
    let mut c = TcpStream::connect(addr(&s.relay, "smtps")).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // A TLS record header announcing a 512-byte ClientHello, then its body byte by byte.
    c.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = loop {
        if started.elapsed() > Duration::from_secs(8) {
            break None;
        }
        if c.write_all(&[0x01]).is_err() {
            break Some(started.elapsed());
        }
        match c.read(&mut buf) {
            Ok(_) => break Some(started.elapsed()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break Some(started.elapsed()),
        }
    };
    let closed = closed.expect("the relay kept a dripped handshake open for 8 s");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
    assert!(closed >= Duration::from_millis(800), "{closed:?}");
    s.relay
        .wait_log("tls handshake with [127.0.0.1] failed: not finished in time");
}
