//! The accept pipeline's transforms end to end over SMTP, with the next hop's copy inspected:
//! header rules, the tag control header, submission fix-ups (a Bcc: never reaches anyone),
//! the header-size limit, and a message larger than that limit stored with its header
//! section after its body, through a kill and a restart.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::sink::{Message, Script};
use support::{Client, Relay, TempDir, WAIT, free_port, sink_on, submit};

fn header_section(m: &Message) -> String {
    let text = String::from_utf8_lossy(&m.data);
    text.split("\r\n\r\n").next().unwrap_or("").to_string()
}

fn names(m: &Message) -> Vec<String> {
    header_section(m)
        .split("\r\n")
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_ascii_lowercase()))
        .collect()
}

fn events(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn header_rules_and_the_tag_shape_what_the_next_hop_gets() {
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let spool = TempDir::new("headers-rules");
    let log = spool.path().join("events.jsonl");
    let log_arg = log.display().to_string();
    let relay = Relay::via(
        &sink,
        spool.path(),
        &[
            "--add-header",
            "X-Relay-Env: production",
            "--remove-header",
            "X-Originating-IP",
            "--remove-header",
            "user-agent",
            "--events",
            &log_arg,
        ],
    );
    let body = b"From: app@client.test\r\nX-Originating-IP: 10.9.8.7\r\nUser-Agent: app/1.0\r\n \
        (folded)\r\nX-MxRelay-Tag: welcome-7\r\nSubject: hello\r\n\r\nline one\r\n..dotted\r\n";
    let r = submit(relay.addr, "app@client.test", &["b@example.test"], body);
    assert!(r.starts_with("250"), "{r}");
    let got = sink.wait_for(1, WAIT).remove(0);
    assert_eq!(
        names(&got),
        ["received", "from", "subject", "x-relay-env"],
        "{}",
        header_section(&got)
    );
    assert!(header_section(&got).contains("X-Relay-Env: production"));
    assert!(got.data.ends_with(b"\r\n\r\nline one\r\n.dotted\r\n"));
    // The tag is in every event of the message, and only there.
    assert!(support::wait_until(WAIT, || {
        events(&log).iter().any(|e| e.contains("\"delivered\""))
    }));
    for e in events(&log) {
        assert!(e.contains("\"tag\":\"welcome-7\""), "{e}");
    }
}

#[test]
fn a_bcc_never_reaches_any_recipient_from_the_submission_port() {
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let spool = TempDir::new("headers-bcc");
    let users = spool.path().join("users");
    support::write_secret(
        &users,
        format!("app:{}\n", mxrelay::auth::hash_password("secret")),
    );
    let users_arg = users.display().to_string();
    let relay = Relay::via(
        &sink,
        spool.path(),
        &[
            "--listen",
            "127.0.0.1:0/submission",
            "--users",
            &users_arg,
            "--plaintext-auth-loopback",
        ],
    );
    let mut c = Client::connect(relay.addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO app.test").starts_with("250"));
    // AUTH PLAIN "\0app\0secret"
    assert!(c.cmd("AUTH PLAIN AGFwcABzZWNyZXQ=").starts_with("235"));
    assert!(c.cmd("MAIL FROM:<app@client.test>").starts_with("250"));
    for rcpt in ["to@example.test", "boss@example.test", "audit@example.test"] {
        assert!(c.cmd(&format!("RCPT TO:<{rcpt}>")).starts_with("250"));
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        b"From: app@client.test\r\nTo: to@example.test\r\nBcc: boss@example.test,\r\n \
          audit@example.test\r\nSubject: report\r\n\r\nsee attached\r\n.\r\n",
    );
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    let got = sink.wait_for(1, WAIT);
    let all_rcpts: usize = got.iter().map(|m| m.rcpts.len()).sum();
    assert_eq!(all_rcpts, 3, "every recipient gets the message");
    for m in &got {
        let head = header_section(m);
        assert!(!head.to_ascii_lowercase().contains("bcc"), "{head}");
        assert!(!head.contains("audit@"), "{head}");
        assert!(head.contains("\r\nDate: "), "{head}");
        assert!(head.contains("\r\nMessage-ID: <"), "{head}");
    }
}

#[test]
fn a_header_section_over_the_limit_is_refused_when_transforms_run() {
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let spool = TempDir::new("headers-limit");
    let relay = Relay::via(
        &sink,
        spool.path(),
        &["--add-header", "X-A: b", "--max-header-size", "4k"],
    );
    let mut big = String::new();
    while big.len() < 8192 {
        big.push_str("X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    big.push_str("\r\nbody\r\n");
    let r = submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        big.as_bytes(),
    );
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The session goes on: a message within the limit is taken.
    let r = submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        b"Subject: small\r\n\r\nbody\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(sink.wait_for(1, WAIT).len(), 1);
}

#[test]
fn a_large_message_keeps_its_order_through_the_spool_and_a_restart() {
    let port = free_port("127.0.0.1");
    let spool = TempDir::new("headers-large");
    let hop = format!("127.0.0.1:{port}");
    let args = [
        "--smarthost",
        hop.as_str(),
        "--smarthost-tls",
        "none",
        "--add-header",
        "X-Signed-Off: relay",
        "--max-header-size",
        "1k",
    ];
    // Nothing listens on the next hop yet: the message stays queued.
    let mut relay = Relay::start(spool.path(), &args);
    let mut body = b"From: a@client.test\r\nSubject: large\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while body.len() < 3 << 20 {
        body.extend_from_slice(line);
    }
    let r = submit(relay.addr, "a@client.test", &["b@example.test"], &body);
    assert!(r.starts_with("250"), "{r}");
    relay.wait_log("deferred");
    relay.kill9();
    let sink = sink_on("127.0.0.1", port, Script::default());
    let relay = Relay::start(spool.path(), &args);
    relay.wait_log("messages recovered from the spool");
    let out = Command::new(env!("CARGO_BIN_EXE_mxrelay"))
        .args(["queue", "--spool"])
        .arg(spool.path())
        .arg("flush")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = sink.wait_for(1, Duration::from_secs(60)).remove(0);
    assert_eq!(
        names(&got),
        ["received", "from", "subject", "x-signed-off"],
        "{}",
        header_section(&got)
    );
    let sent_body = &body[body.windows(4).position(|w| w == b"\r\n\r\n").unwrap()..];
    assert!(got.data.ends_with(sent_body), "the body arrives whole");
    assert_eq!(got.data.len(), header_section(&got).len() + sent_body.len());
}
