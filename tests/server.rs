//! The SMTP server side end to end with the real binary: smuggling, limits, relay policy,
//! crash safety (kill -9 after 250), graceful stop, and the command line itself.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::sink::Script;
use support::{
    Client, Relay, TempDir, WAIT, queue_id, sink_on, submit, submit_numbered, wait_until,
};

fn greeted(relay: &Relay) -> Client {
    let mut c = Client::connect(relay.addr);
    assert!(c.reply().starts_with("220 relay.test"));
    assert!(c.cmd("EHLO client.test").starts_with("250-relay.test"));
    c
}

/// Every way of hiding an end-of-data inside a message (SMTP smuggling): none may end the
/// message early, here or at the next hop.
#[test]
fn smuggling_variants_never_split_a_message() {
    let sink = sink_on("127.0.0.7", 0, Script::default());
    let spool = TempDir::new("smuggle");
    let relay = Relay::via(&sink, spool.path(), &[]);
    let variants: &[&[u8]] = &[
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\n",
        b"\r.\r",
        b"\n.\r",
        b"\r\n.\r",
        b"\r.\n",
        b"\n..\n",
        b"\r\n.\r\r\n",
    ];
    for (n, v) in variants.iter().enumerate() {
        let mut c = greeted(&relay);
        assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<b@example.test>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        let mut body = format!("Subject: variant {n}\r\n\r\nhello").into_bytes();
        body.extend_from_slice(v);
        body.extend_from_slice(b"MAIL FROM:<evil@smuggle.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n");
        c.send(&body);
        let r = c.reply();
        assert!(r.starts_with("250 2.0.0 Ok: queued"), "variant {v:?}: {r}");
        // Whatever the relay read as the end, the next reply must answer our NOOP, not a
        // smuggled command.
        assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok", "variant {v:?}");
        c.cmd("QUIT");
    }
    let msgs = sink.wait_for(variants.len(), WAIT);
    assert_eq!(msgs.len(), variants.len());
    for m in &msgs {
        assert_eq!(m.rcpts, ["b@example.test"]);
        assert!(
            !m.data.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
            "bare LF passed on"
        );
        assert!(
            !m.data
                .iter()
                .zip(m.data.iter().skip(1))
                .any(|(&a, &b)| a == b'\r' && b != b'\n'),
            "bare CR passed on"
        );
    }
    assert!(
        !sink
            .commands()
            .iter()
            .any(|c| c.contains("evil@smuggle.test")),
        "smuggled command reached the next hop"
    );
}

#[test]
fn oversize_message_gets_552_and_the_session_goes_on() {
    let spool = TempDir::new("oversize");
    let relay = Relay::start(
        spool.path(),
        &[
            "--max-message-size",
            "2K",
            "--smarthost",
            "127.0.0.1:9",
            "--retry",
            "1h",
        ],
    );
    let mut c = greeted(&relay);
    assert!(
        c.cmd("MAIL FROM:<a@client.test> SIZE=999999")
            .starts_with("552 5.3.4")
    );
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: big\r\n\r\n");
    for _ in 0..100 {
        c.send(&[b'x'; 100]);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    assert!(c.reply().starts_with("552 5.3.4"));
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok");
    assert_eq!(relay.queued(), 0, "the refused body is not queued");
}

#[test]
fn relaying_is_refused_to_untrusted_clients() {
    let spool = TempDir::new("openrelay");
    let relay = Relay::start(
        spool.path(),
        &[
            "--trusted-network",
            "10.0.0.0/8",
            "--smarthost",
            "127.0.0.1:9",
            "--retry",
            "1h",
        ],
    );
    let mut c = greeted(&relay);
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    for rcpt in [
        "<b@example.test>",
        "<user%other.test@relay.test>",
        "<@a.test,@b.test:user@c.test>",
        "<\"x@y\"@elsewhere.test>",
        "<host!user@elsewhere.test>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(r.starts_with("554 5.7.1"), "{rcpt}: {r}");
    }
    assert!(
        c.cmd("DATA").starts_with("554 5.5.1"),
        "no recipients, no DATA"
    );
    assert!(c.cmd("RCPT TO:<postmaster>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<Postmaster@relay.test>").starts_with("250"));
}

#[test]
fn killed_right_after_250_still_delivers_exactly_once() {
    // The next hop holds its greeting back, so the kill lands while delivery is under way.
    let greetings = Arc::new(AtomicUsize::new(0));
    let g = greetings.clone();
    let sink = sink_on(
        "127.0.0.8",
        0,
        Script::default().greeting(move || {
            if g.fetch_add(1, Ordering::SeqCst) == 0 {
                thread::sleep(Duration::from_millis(1500));
            }
            "220 sink.test ESMTP".into()
        }),
    );
    let spool = TempDir::new("crash");
    let args = [
        "--smarthost",
        &sink.addr.to_string(),
        "--smarthost-tls",
        "none",
        "--retry",
        "1s",
        "--delivery-timeout",
        "5s",
    ];
    let mut relay = Relay::start(spool.path(), &args);
    let id = queue_id(&submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        b"Subject: crash\r\n\r\nsurvive\r\n",
    ));
    relay.kill9();
    assert_eq!(sink.messages().len(), 0);
    let relay = Relay::start(spool.path(), &args);
    relay.wait_log("messages recovered from the spool");
    let msgs = sink.wait_for(1, WAIT);
    relay.wait_log(&format!("{id}: removed"));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.messages().len(), 1, "delivered exactly once");
    assert!(String::from_utf8_lossy(&msgs[0].data).contains("survive"));
}

#[test]
fn small_and_large_messages_survive_a_kill() {
    // A small message lives in a cell of the shared cells file, a large one in a slot file
    // of its own: both come back after a SIGKILL and go out whole.
    let spool = TempDir::new("kill-both");
    let dead = ["--smarthost", "127.0.0.1:9", "--retry", "1s"];
    let mut relay = Relay::start(spool.path(), &dead);
    let small = b"Subject: small\r\n\r\ncell\r\n".to_vec();
    let mut large = b"Subject: large\r\n\r\n".to_vec();
    for i in 0..3000 {
        large.extend_from_slice(format!("{i:06} {}\r\n", "l".repeat(90)).as_bytes());
    }
    for body in [&small, &large] {
        assert!(submit(relay.addr, "a@client.test", &["b@example.test"], body).starts_with("250"));
    }
    relay.kill9();
    let sink = sink_on("127.0.0.18", 0, Script::default());
    let relay = Relay::via(&sink, spool.path(), &[]);
    relay.wait_log("2 messages recovered");
    let msgs = sink.wait_for(2, WAIT);
    for body in [&small, &large] {
        assert_eq!(
            msgs.iter().filter(|m| m.data.ends_with(body)).count(),
            1,
            "{}",
            relay.log()
        );
    }
}

#[test]
fn unfinished_data_is_never_queued() {
    let spool = TempDir::new("halfdata");
    let mut relay = Relay::start(
        spool.path(),
        &["--smarthost", "127.0.0.1:9", "--retry", "1h"],
    );
    let mut c = greeted(&relay);
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<b@example.test>");
    c.cmd("DATA");
    c.send(b"Subject: cut\r\n\r\npartial");
    thread::sleep(Duration::from_millis(200));
    relay.kill9();
    let relay = Relay::start(
        spool.path(),
        &["--smarthost", "127.0.0.1:9", "--retry", "1h"],
    );
    assert_eq!(relay.queued(), 0);
    assert!(!relay.log().contains("recovered"), "{}", relay.log());
    assert_eq!(
        std::fs::read_dir(spool.path().join("corrupt"))
            .unwrap()
            .count(),
        0,
        "an unfinished message is a free slot, not damage"
    );
}

#[test]
fn connection_cap_answers_421() {
    let spool = TempDir::new("cap");
    let relay = Relay::start(spool.path(), &["--max-connections", "2"]);
    let mut a = Client::connect(relay.addr);
    let mut b = Client::connect(relay.addr);
    assert!(a.reply().starts_with("220") && b.reply().starts_with("220"));
    let mut c = Client::connect(relay.addr);
    assert!(c.reply().starts_with("421 4.7.0"));
    a.cmd("QUIT");
    assert!(wait_until(WAIT, || {
        let mut d = Client::connect(relay.addr);
        d.reply().starts_with("220")
    }));
}

#[test]
fn idle_client_gets_421_after_the_timeout() {
    let spool = TempDir::new("idle");
    let relay = Relay::start(spool.path(), &["--idle-timeout", "1s"]);
    let mut c = Client::connect(relay.addr);
    let start = Instant::now();
    assert!(c.reply().starts_with("220"));
    assert!(c.reply().starts_with("421 4.4.2"));
    assert!(c.at_eof());
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn delivered_mail_does_not_come_back_after_a_graceful_stop() {
    // Stopped right after the deliveries, before the freed cells' marks would be due.
    let sink = sink_on("127.0.0.19", 0, Script::default());
    let spool = TempDir::new("stop-after-delivery");
    let mut relay = Relay::via(&sink, spool.path(), &[]);
    for id in &submit_numbered(relay.addr, 3, "done ") {
        relay.wait_log(&format!("{id}: removed"));
    }
    assert!(relay.terminate().success());
    let relay = Relay::via(&sink, spool.path(), &[]);
    assert_eq!(relay.queued(), 0);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.messages().len(), 3, "{}", relay.log());
}

#[test]
fn sigterm_stops_gracefully_and_keeps_the_queue() {
    let spool = TempDir::new("sigterm");
    let mut relay = Relay::start(
        spool.path(),
        &[
            "--smarthost",
            "127.0.0.1:9",
            "--retry",
            "1h",
            "--shutdown-grace",
            "1s",
        ],
    );
    submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        b"Subject: keep\r\n\r\nme\r\n",
    );
    let mut idle = greeted(&relay);
    let status = relay.terminate();
    assert!(status.success(), "{status:?}");
    assert!(relay.log().contains("shutting down"));
    assert!(idle.at_eof() || idle.cmd("NOOP").starts_with("421"));
    let relay = Relay::start(
        spool.path(),
        &["--smarthost", "127.0.0.1:9", "--retry", "1h"],
    );
    assert_eq!(relay.queued(), 1);
    relay.wait_log("1 messages recovered");
}

#[test]
fn corrupt_envelope_is_quarantined_at_start() {
    let spool = TempDir::new("corrupt");
    let relay = Relay::start(
        spool.path(),
        &["--smarthost", "127.0.0.1:9", "--retry", "1h"],
    );
    let id = queue_id(&submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        b"Subject: x\r\n\r\nx\r\n",
    ));
    drop(relay);
    std::fs::write(
        spool.path().join(format!("queue/{id}.env")),
        format!("version: 1\nid: {id}\n"),
    )
    .unwrap();
    let relay = Relay::start(
        spool.path(),
        &["--smarthost", "127.0.0.1:9", "--retry", "1h"],
    );
    relay.wait_log(&format!("quarantining {id}"));
    // The log line comes first; the move and the .reason file follow.
    let reason_file = spool.path().join(format!("corrupt/{id}.reason"));
    assert!(wait_until(WAIT, || relay.queued() == 0 && reason_file.exists()));
    let reason = std::fs::read_to_string(&reason_file).unwrap();
    assert!(reason.contains("no end line"), "{reason}");
    let kept = std::fs::read(spool.path().join(format!("corrupt/{id}.msg"))).unwrap();
    assert!(
        kept.windows(10).any(|w| w == b"Subject: x"),
        "the message is kept"
    );
}

#[test]
fn hop_limit_refuses_looping_mail() {
    let spool = TempDir::new("loop");
    let relay = Relay::start(
        spool.path(),
        &[
            "--smarthost",
            "127.0.0.1:9",
            "--retry",
            "1h",
            "--max-hops",
            "5",
        ],
    );
    let mut body = Vec::new();
    for i in 0..5 {
        body.extend_from_slice(
            format!(
                "Received: from hop{i}.test by hop{}.test; Thu, 26 Nov 2026 10:00:00 +0000\r\n",
                i + 1
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(b"Subject: loop\r\n\r\nround and round\r\n");
    let mut c = greeted(&relay);
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<b@example.test>");
    c.cmd("DATA");
    c.send(&body);
    c.send(b".\r\n");
    assert!(c.reply().starts_with("554 5.4.6"));
    assert_eq!(relay.queued(), 0);
}

#[test]
fn help_documents_every_flag_and_bad_flags_exit_2() {
    let bin = env!("CARGO_BIN_EXE_mxrelay");
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--listen",
        "--hostname",
        "--spool",
        "--smarthost",
        "--route",
        "--trusted-network",
        "--workers",
        "--max-connections",
        "--max-message-size",
        "--max-recipients",
        "--retry",
        "--max-queue-lifetime",
        "--dns-server",
        "--mx-port",
        "--postmaster",
        "--verbose",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    assert!(text.contains("[default: 127.0.0.1:2525]") && text.contains("[default: 5d]"));
    for (args, flag) in [
        (&["--workers", "many"][..], "--workers"),
        (&["--listen", "localhost"], "--listen"),
        (&["--nope"], "nope"),
    ] {
        let out = Command::new(bin).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(flag), "{err}");
    }
}

#[test]
fn starts_with_no_flags_but_a_home() {
    // No flags at all: default listener 127.0.0.1:2525 and spool under $HOME. Skipped only
    // if something else already holds the default port.
    if std::net::TcpListener::bind("127.0.0.1:2525").is_err() {
        eprintln!("127.0.0.1:2525 is busy; skipping");
        return;
    }
    let home = TempDir::new("home");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxrelay"))
        .env("HOME", home.path())
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ok = wait_until(WAIT, || {
        std::net::TcpStream::connect("127.0.0.1:2525").is_ok()
    });
    let spool_made = home.path().join(".local/state/mxrelay/queue").is_dir() || is_root();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "default listener not up");
    assert!(spool_made, "default spool not created");
}

/// As root the default spool is /var/spool/mxrelay; the test then only checks the listener.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn an_over_long_command_line_is_refused_and_the_session_goes_on() {
    let spool = TempDir::new("longline");
    let events = spool.path().join("events.jsonl");
    let relay = Relay::start(
        spool.path(),
        &[
            "--max-line-length",
            "1000",
            "--events",
            &events.display().to_string(),
        ],
    );
    let mut c = greeted(&relay);
    let long = format!("MAIL FROM:<{}@client.test>", "a".repeat(3000));
    assert!(c.cmd(&long).starts_with("500 5.5.2 Line too long"));
    assert!(
        c.cmd("MAIL FROM:<a@client.test>").starts_with("250"),
        "the rest of the long line was not read as a command"
    );
    // The refusal is logged as what it was, not as the command before it.
    assert!(wait_until(WAIT, || std::fs::read_to_string(&events)
        .unwrap_or_default()
        .contains("\"command\":\"(line too long)\"")));
    assert!(
        !std::fs::read_to_string(&events)
            .unwrap()
            .contains("\"command\":\"EHLO\"")
    );
}

#[test]
fn a_client_that_never_finishes_the_tls_handshake_is_dropped() {
    let spool = TempDir::new("tlstimeout");
    let relay = Relay::start(
        spool.path(),
        &[
            "--listen",
            "127.0.0.1:0/smtps",
            "--tls-handshake-timeout",
            "1s",
        ],
    );
    let start = Instant::now();
    let mut c = Client::connect(relay.addr);
    // Say nothing: no ClientHello.
    assert!(c.at_eof(), "closed by the relay");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    relay.wait_log("tls handshake with [127.0.0.1] failed");
}

/// One message over a fresh connection; the queue id if the relay answered 250 to its end.
/// Any failure (the relay killed mid-dialogue) gives `None`.
fn try_submit(addr: std::net::SocketAddr, subject: &str) -> Option<String> {
    let mut c = Client::try_connect(addr)?;
    let expect = |c: &mut Client, code: &str| Some(c.reply()).filter(|r| r.starts_with(code));
    expect(&mut c, "220")?;
    c.try_send(
        b"EHLO load.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n",
    )?;
    for code in ["250", "250", "250", "354"] {
        expect(&mut c, code)?;
    }
    let msg = format!(
        "Subject: {subject}\r\n\r\n{}\r\n.\r\nQUIT\r\n",
        "x".repeat(3000)
    );
    c.try_send(msg.as_bytes())?;
    let done = expect(&mut c, "250")?;
    Some(done.rsplit(' ').next()?.to_string())
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_message() {
    // A next hop that takes a moment per message and one worker for six clients: delivery
    // lags, so the kill leaves messages queued however fast the machine.
    let sink = sink_on(
        "127.0.0.15",
        0,
        Script::default().data(|_| {
            thread::sleep(Duration::from_millis(5));
            "250 2.0.0 ok".into()
        }),
    );
    let spool = TempDir::new("kill-under-load");
    let mut relay = Relay::via(&sink, spool.path(), &["--workers", "1"]);
    let addr = relay.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0..200 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let subject = format!("load-{c}-{n}");
                    match try_submit(addr, &subject) {
                        Some(_) => acked.push(subject),
                        None => break,
                    }
                }
                acked
            })
        })
        .collect();
    // Kill it in the middle: some messages delivered, some queued, some half received.
    assert!(wait_until(WAIT, || sink.messages().len() >= 60));
    relay.kill9();
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<String> = clients
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let delivered_before = sink.messages().len();
    assert!(
        acked.len() > delivered_before,
        "the kill left acknowledged messages queued ({} acknowledged, {delivered_before} delivered)",
        acked.len()
    );
    let relay = Relay::via(&sink, spool.path(), &[]);
    let subject_of = |m: &support::sink::Message| {
        let text = String::from_utf8_lossy(&m.data).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
            .unwrap_or_default()
    };
    let all_in = wait_until(WAIT, || {
        let got: std::collections::HashSet<String> =
            sink.messages().iter().map(subject_of).collect();
        acked.iter().all(|s| got.contains(s))
    });
    let got: Vec<String> = sink.messages().iter().map(subject_of).collect();
    let missing: Vec<&String> = acked.iter().filter(|s| !got.contains(s)).collect();
    assert!(
        all_in,
        "acknowledged but never delivered: {missing:?}\n{}",
        relay.log()
    );
    // Whatever arrived is whole: nothing cut off or mixed from two messages.
    for m in sink.messages() {
        assert!(
            m.data
                .ends_with(format!("{}\r\n", "x".repeat(3000)).as_bytes()),
            "{}",
            String::from_utf8_lossy(&m.data)
        );
    }
    assert!(
        std::fs::read_dir(spool.path().join("corrupt"))
            .unwrap()
            .count()
            == 0,
        "nothing was quarantined"
    );
}

#[test]
fn a_spool_that_cannot_take_the_message_gives_451_and_the_session_goes_on() {
    let spool = TempDir::new("no-queue-dir");
    let relay = Relay::start(
        spool.path(),
        &["--smarthost", "127.0.0.1:9", "--retry", "1h"],
    );
    // No directory to make a slot file in: a message too large for a cell cannot be stored.
    std::fs::remove_dir_all(spool.path().join("queue")).unwrap();
    let mut c = greeted(&relay);
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    // A body larger than any buffer, so that it is read on to the end without a file.
    c.send(b"Subject: nowhere\r\n\r\n");
    for _ in 0..3000 {
        c.send(&[b'n'; 98]);
        c.send(b"\r\n");
    }
    c.send(b".\r\n");
    assert_eq!(
        c.reply(),
        "451 4.3.0 Local error in processing, try again later"
    );
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok", "the end of DATA was found");
    relay.wait_log("spool write failed");
    // A small message, bound for a cell, cannot be committed either.
    assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: small\r\n\r\nnowhere either\r\n.\r\n");
    assert_eq!(
        c.reply(),
        "451 4.3.0 Local error in processing, try again later"
    );
    relay.wait_log("spool commit failed");
}
