//! Rate and concurrency limits, and bounded memory under abuse, with the real binary: the
//! per-address connection cap and the rate limits answer as documented and are logged,
//! counted and evented; a 1 MB command line, an endless header line, 10 000 pipelined
//! commands, a client that reads no replies and hundreds of idle connections leave the
//! relay's memory within a loose bound (RSS, a sanity check, not a measurement).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use support::{Client, Relay, TempDir, WAIT, wait_until};

/// A loose ceiling on the relay's resident memory under every abuse here.
const MAX_RSS_KB: u64 = 100 * 1024;

/// The relay's resident set, in KiB.
fn rss_kb(relay: &Relay) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn assert_rss_bounded(relay: &Relay, after: &str) {
    let rss = rss_kb(relay);
    eprintln!("relay RSS after {after}: {rss} KiB");
    assert!(
        rss < MAX_RSS_KB,
        "{rss} KiB resident after {after} (bound {MAX_RSS_KB} KiB)"
    );
}

fn greeted(relay: &Relay) -> Client {
    let mut c = Client::connect(relay.addr);
    assert!(c.reply().starts_with("220 relay.test"));
    assert!(c.cmd("HELO client.test").starts_with("250"));
    c
}

fn events(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of one series on the relay's metrics page.
fn metric(relay: &Relay, series: &str) -> String {
    let page = relay.metrics();
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
        .to_string()
}

#[test]
fn connections_per_address_get_421_logged_counted_and_evented() {
    let spool = TempDir::new("per-ip");
    let events_file = spool.path().join("events.jsonl");
    let relay = Relay::start(
        spool.path(),
        &[
            // Loopback is not trusted here, so not exempt.
            "--trusted-network",
            "10.255.255.0/24",
            "--max-connections-per-ip",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
            "--events",
            &events_file.display().to_string(),
        ],
    );
    let mut a = Client::connect(relay.addr);
    let mut b = Client::connect(relay.addr);
    assert!(a.reply().starts_with("220") && b.reply().starts_with("220"));
    let mut c = Client::connect(relay.addr);
    assert_eq!(
        c.reply(),
        "421 4.7.0 Too many connections from your address, try again later"
    );
    assert!(c.at_eof());
    relay.wait_log("limit max_connections_per_ip reached by [127.0.0.1]: CONNECT refused");
    assert!(wait_until(WAIT, || events(&events_file).contains(
        "\"reason\":\"max_connections_per_ip\",\"command\":\"CONNECT\""
    )));
    assert_eq!(
        metric(
            &relay,
            "mxrelay_messages_rejected_total{reason=\"max_connections_per_ip\"}"
        ),
        "1"
    );
    assert_eq!(metric(&relay, "mxrelay_connections_refused_total"), "1");
    // A closed connection frees its place.
    a.cmd("QUIT");
    assert!(wait_until(WAIT, || {
        let mut d = Client::connect(relay.addr);
        d.reply().starts_with("220")
    }));
    drop(b);
}

#[test]
fn trusted_clients_are_exempt_by_default() {
    let spool = TempDir::new("exempt");
    let relay = Relay::start(spool.path(), &["--max-connections-per-ip", "2"]);
    // Loopback is a trusted network, and so exempt from the per-address limits.
    let mut clients: Vec<Client> = (0..10).map(|_| Client::connect(relay.addr)).collect();
    for c in &mut clients {
        assert!(c.reply().starts_with("220"));
    }
}

#[test]
fn rate_limits_give_450_and_are_logged_counted_and_evented() {
    let spool = TempDir::new("rate");
    let events_file = spool.path().join("events.jsonl");
    let relay = Relay::start(
        spool.path(),
        &[
            "--limit-exempt",
            "none",
            "--rate-limit-ip",
            "3/h",
            "--max-messages-per-connection",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
            "--events",
            &events_file.display().to_string(),
        ],
    );
    let mut c = greeted(&relay);
    for _ in 0..2 {
        assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
        assert!(c.cmd("RSET").starts_with("250"));
    }
    let r = c.cmd("MAIL FROM:<a@client.test>");
    assert_eq!(
        r,
        "421 4.7.0 Too many messages in this connection (2), reconnect to send more"
    );
    assert!(c.at_eof());
    let mut c = greeted(&relay);
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RSET").starts_with("250"));
    let r = c.cmd("MAIL FROM:<b@client.test>");
    assert!(
        r.starts_with("450 4.7.1 Message rate limit for your address reached, try again in "),
        "{r}"
    );
    // The session goes on.
    assert!(c.cmd("NOOP").starts_with("250"));
    relay.wait_log("limit rate_limit_ip reached by [127.0.0.1]: MAIL refused: 450 4.7.1");
    relay.wait_log("limit max_messages_per_connection reached by [127.0.0.1]: MAIL refused");
    assert!(wait_until(WAIT, || {
        let e = events(&events_file);
        e.contains(
            "\"reason\":\"rate_limit_ip\",\"command\":\"MAIL\",\"argument\":\"<b@client.test>\"",
        ) && e.contains("\"reason\":\"max_messages_per_connection\"")
    }));
    for (reason, want) in [
        ("rate_limit_ip", "1"),
        ("max_messages_per_connection", "1"),
        ("rate_limit_user", "0"),
    ] {
        let series = format!("mxrelay_messages_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&relay, &series), want, "{series}");
    }
}

#[test]
fn user_rates_name_the_user_in_the_log() {
    let spool = TempDir::new("rate-user");
    std::fs::create_dir_all(spool.path()).unwrap();
    let users = spool.path().join("users");
    let hash = mxrelay::auth::hash_password("secret");
    support::write_secret(&users, format!("alice:{hash}\n"));
    let relay = Relay::start(
        spool.path(),
        &[
            "--users",
            &users.display().to_string(),
            "--plaintext-auth-loopback",
            "--rate-limit-rcpt-user",
            "1/d",
        ],
    );
    let mut c = Client::connect(relay.addr);
    c.reply();
    c.cmd("EHLO client.test");
    assert!(c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==").starts_with("235"));
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<c@example.test>");
    assert!(
        r.starts_with("450 4.7.1 Recipient rate limit for your account reached"),
        "{r}"
    );
    relay.wait_log("limit rate_limit_rcpt_user reached by [127.0.0.1] user=alice: RCPT refused");
}

#[test]
fn megabyte_command_lines_are_refused_without_being_held() {
    let spool = TempDir::new("mb-line");
    let relay = Relay::start(spool.path(), &[]);
    let mut c = greeted(&relay);
    let line = format!("MAIL FROM:<{}@client.test>\r\n", "a".repeat(1 << 20));
    // Five of them in one write, with a good command after; the replies are read meanwhile.
    let mut wire = line.repeat(5).into_bytes();
    wire.extend_from_slice(b"NOOP\r\n");
    let mut writer = c.writer();
    let sender = thread::spawn(move || writer.write_all(&wire).is_ok());
    for i in 0..5 {
        assert_eq!(c.reply(), "500 5.5.2 Line too long", "line {i}");
    }
    assert!(
        c.reply().starts_with("250"),
        "the next command is read whole"
    );
    assert!(sender.join().unwrap());
    assert_rss_bounded(&relay, "5 MB of over-long command lines");
}

#[test]
fn an_endless_header_line_is_bounded_by_the_header_limit() {
    let spool = TempDir::new("endless-header");
    let relay = Relay::start(
        spool.path(),
        &["--max-header-size", "64K", "--max-message-size", "100M"],
    );
    let mut c = greeted(&relay);
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    // 20 MB of one header line from a trusted client (whose header section is held for
    // the submission fix-ups), then the end of the message.
    let chunk = vec![b'x'; 1 << 20];
    c.send(b"Subject: ");
    for _ in 0..20 {
        c.send(&chunk);
    }
    c.send(b"\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.reply(), "552 5.3.4 Message header section too large");
    assert_rss_bounded(&relay, "a 20 MB header line");
    assert!(c.cmd("NOOP").starts_with("250"), "the session goes on");
}

#[test]
fn ten_thousand_pipelined_commands_in_one_write_are_all_answered() {
    let spool = TempDir::new("pipelined");
    let relay = Relay::start(spool.path(), &[]);
    let mut c = greeted(&relay);
    let mut writer = c.writer();
    let mut wire = Vec::new();
    for i in 0..10_000 {
        wire.extend_from_slice(if i % 2 == 0 { b"NOOP\r\n" } else { b"RSET\r\n" });
    }
    let sender = thread::spawn(move || writer.write_all(&wire).is_ok());
    for i in 0..10_000 {
        let r = c.reply();
        assert!(r.starts_with("250 2.0.0 Ok"), "reply {i}: {r:?}");
    }
    assert!(sender.join().unwrap());
    assert!(c.cmd("QUIT").starts_with("221"));
    assert_rss_bounded(&relay, "10 000 pipelined commands");
}

#[test]
fn a_client_that_reads_no_replies_is_closed_by_the_write_timeout() {
    let spool = TempDir::new("no-reader");
    let relay = Relay::start(spool.path(), &["--idle-timeout", "2s"]);
    let mut stream = TcpStream::connect(relay.addr).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    // HELP: 6 bytes in, about 90 out. Send until the relay stops reading (its replies fill
    // every buffer on the way back) or gives up on us.
    let chunk = b"HELP\r\n".repeat(10_000);
    let start = Instant::now();
    let mut sent = 0usize;
    while start.elapsed() < WAIT && sent < 200 << 20 {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    relay.wait_log("write timeout to [127.0.0.1]: the client reads no replies; closing");
    assert_rss_bounded(
        &relay,
        &format!("{} MB of commands never answered", sent >> 20),
    );
    // The relay has let go: what is left to read ends (or the connection was reset).
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let ended = match stream.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(ended, "the connection is closed");
}

#[test]
fn hundreds_of_idle_and_slow_connections_hold_bounded_memory() {
    let spool = TempDir::new("idle-many");
    let relay = Relay::start(spool.path(), &["--max-connections", "400"]);
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..300 {
        let mut c = Client::connect(relay.addr);
        assert!(c.reply().starts_with("220"), "client {i}");
        // Every other one is slow: half a command, never finished.
        if i % 2 == 1 {
            c.send(b"MAIL FROM:<a@cli");
        }
        clients.push(c);
    }
    assert_rss_bounded(&relay, "300 idle and slow connections");
    // They are all still served.
    assert!(clients[0].cmd("NOOP").starts_with("250"));
    assert!(
        clients[1].cmd("ent.test>").starts_with("503 5.5.1"),
        "MAIL before HELO"
    );
}
