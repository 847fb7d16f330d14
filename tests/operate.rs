//! Operating the relay: queue commands against a live daemon (and read-only without one),
//! SIGUSR1, the event log with every event type, metrics counters, mailq, and --user.

mod support;

use std::process::{Command, Output};

use support::sink::Script;
use support::{
    Client, Relay, TempDir, WAIT, delivered, free_port, queue_id, sink_on, submit, wait_until,
};

const MSG: &[u8] =
    b"From: a@client.test\r\nSubject: queued thing\r\nMessage-ID: <m1@client.test>\r\n\r\nbody\r\n";

fn queue(spool: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mxrelay"))
        .arg("queue")
        .arg("--spool")
        .arg(spool)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn queue_commands_against_a_live_daemon() {
    let port = free_port("127.0.0.17");
    let spool = TempDir::new("queuecmd");
    let hop = format!("127.0.0.17:{port}");
    let mut relay = Relay::start(
        spool.path(),
        &[
            "--smarthost",
            &hop,
            "--smarthost-tls",
            "none",
            "--retry",
            "1h",
            "--connect-timeout",
            "1s",
        ],
    );
    let ids: Vec<String> = (0..3)
        .map(|_| {
            queue_id(&submit(
                relay.addr,
                "a@client.test",
                &["b@example.test"],
                MSG,
            ))
        })
        .collect();
    relay.wait_log_n("deferred, attempt 1 failed", 3);

    let list = queue(spool.path(), &["list"]);
    assert!(list.status.success());
    let text = stdout(&list);
    for id in &ids {
        assert!(text.contains(id.as_str()), "{text}");
    }
    assert!(
        text.contains("<a@client.test> -> b@example.test")
            && text.contains("last error: connect to 127.0.0.17"),
        "{text}"
    );
    assert!(text.contains("-- 3 message(s)"), "{text}");
    let json = stdout(&queue(spool.path(), &["list", "--json"]));
    assert!(
        json.starts_with('[') && json.matches("\"pending\":[\"b@example.test\"]").count() == 3,
        "{json}"
    );
    let show = stdout(&queue(spool.path(), &["show", &ids[0]]));
    assert!(
        show.contains("recipient: pending <b@example.test>")
            && show.contains("Subject: queued thing")
            && show.contains("attempts: 1"),
        "{show}"
    );

    assert_eq!(
        stdout(&queue(spool.path(), &["hold", &ids[0]])).trim(),
        "held 1 message(s)"
    );
    assert_eq!(
        stdout(&queue(spool.path(), &["delete", &ids[1]])).trim(),
        "deleted 1 message(s)"
    );
    let bad = queue(spool.path(), &["delete", "0000000000000000-0000"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not in the queue")
    );

    // The next hop comes up; a flush delivers what is not held.
    let sink = sink_on("127.0.0.17", port, Script::default());
    assert_eq!(
        stdout(&queue(spool.path(), &["flush"])).trim(),
        "flushed 1 message(s)"
    );
    let msgs = delivered(&sink, 1, &relay);
    assert!(String::from_utf8_lossy(&msgs[0].data).contains(&format!("id {}", ids[2])));
    relay.wait_log(&format!("{}: removed", ids[2]));
    // A delivered message's slot is marked free on disk a moment after its removal.
    let mut list = String::new();
    let listed = wait_until(WAIT, || {
        list = stdout(&queue(spool.path(), &["list"]));
        !list.contains(&ids[2])
    });
    assert!(
        listed && list.contains(&ids[0]) && list.contains("held") && !list.contains(&ids[1]),
        "{list}"
    );

    assert_eq!(
        stdout(&queue(spool.path(), &["release", &ids[0]])).trim(),
        "released 1 message(s)"
    );
    delivered(&sink, 2, &relay);
    relay.wait_log(&format!("{}: removed", ids[0]));
    assert_eq!(
        sink.messages().len(),
        2,
        "the deleted message never went out"
    );

    // Without a daemon: list works read-only, steering fails clearly.
    submit(relay.addr, "a@client.test", &["c@example.test"], MSG);
    relay.kill9();
    drop(sink);
    let list = queue(spool.path(), &["list"]);
    assert!(list.status.success() && stdout(&list).contains("c@example.test"));
    let flush = queue(spool.path(), &["flush"]);
    assert_eq!(flush.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&flush.stderr).contains("no mxrelay daemon answers"),
        "{:?}",
        flush
    );
}

#[test]
fn sigusr1_retries_the_queue_now() {
    let port = free_port("127.0.0.17");
    let spool = TempDir::new("usr1");
    let relay = Relay::start(
        spool.path(),
        &[
            "--smarthost",
            &format!("127.0.0.17:{port}"),
            "--smarthost-tls",
            "none",
            "--retry",
            "1h",
        ],
    );
    submit(relay.addr, "a@client.test", &["b@example.test"], MSG);
    relay.wait_log("deferred, attempt 1 failed");
    let sink = sink_on("127.0.0.17", port, Script::default());
    relay.signal("USR1");
    delivered(&sink, 1, &relay);
}

#[test]
fn mailq_symlink_lists_the_queue() {
    let dir = TempDir::new("mailq");
    let link = dir.path().join("mailq");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mxrelay"), &link).unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(spool.join("queue")).unwrap();
    let out = Command::new(&link)
        .arg("--spool")
        .arg(&spool)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), "Mail queue is empty");
}

/// Field names of one JSON object line (top level only; values here have no nested braces).
fn keys(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("\":") {
        let start = rest[..i].rfind('"').unwrap();
        let before = rest[..start].trim_end();
        if before.ends_with('{') || before.ends_with(',') {
            out.push(rest[start + 1..i].to_string());
        }
        rest = &rest[i + 2..];
    }
    out
}

#[test]
fn event_log_has_every_event_type_with_its_fields() {
    let sink = sink_on(
        "127.0.0.18",
        0,
        Script::default().rcpt(|a| match a {
            a if a.starts_with("bad") => "550 5.1.1 no such user".into(),
            a if a.starts_with("slow") => "451 4.3.0 later".into(),
            _ => "250 ok".into(),
        }),
    );
    let spool = TempDir::new("events");
    let events = spool.path().join("events.jsonl");
    let relay = Relay::via(
        &sink,
        spool.path(),
        &[
            "--events",
            &events.display().to_string(),
            "--retry",
            "1s",
            "--max-queue-lifetime",
            "2s",
            "--max-message-size",
            "10K",
        ],
    );
    submit(
        relay.addr,
        "a@client.test",
        &["ok@example.test", "bad@example.test"],
        MSG,
    );
    let slow = queue_id(&submit(
        relay.addr,
        "a@client.test",
        &["slow@example.test"],
        MSG,
    ));
    // deleted: a message held back and removed by the operator.
    let port = free_port("127.0.0.17");
    let spool2 = TempDir::new("events-deleted");
    let relay2 = Relay::start(
        spool2.path(),
        &[
            "--smarthost",
            &format!("127.0.0.17:{port}"),
            "--smarthost-tls",
            "none",
            "--retry",
            "1h",
            "--events",
            &events.display().to_string(),
        ],
    );
    let doomed = queue_id(&submit(
        relay2.addr,
        "a@client.test",
        &["x@example.test"],
        MSG,
    ));
    assert!(queue(spool2.path(), &["delete", &doomed]).status.success());
    // rejected: an oversize message.
    let mut c = Client::connect(relay.addr);
    c.reply();
    c.cmd("EHLO client.test");
    assert!(
        c.cmd("MAIL FROM:<a@client.test> SIZE=99999999")
            .starts_with("552")
    );
    relay.wait_log(&format!("{slow}: expired"));
    let wanted: &[(&str, &[&str])] = &[
        (
            "received",
            &[
                "id",
                "client_ip",
                "auth_user",
                "tls",
                "sender",
                "recipients",
                "size",
                "message_id",
            ],
        ),
        (
            "delivered",
            &["id", "recipient", "relay", "reply", "tls", "delay_s"],
        ),
        (
            "deferred",
            &[
                "id",
                "recipients",
                "reason",
                "category",
                "attempt",
                "next_try",
            ],
        ),
        (
            "bounced",
            &[
                "id",
                "recipient",
                "status",
                "reason",
                "category",
                "relay",
                "dsn_id",
            ],
        ),
        ("expired", &["id", "recipients", "age_s"]),
        ("deleted", &["id", "recipients"]),
        (
            "rejected",
            &[
                "client_ip",
                "auth_user",
                "reason",
                "command",
                "argument",
                "reply",
            ],
        ),
    ];
    let ok = wait_until(WAIT, || {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        wanted
            .iter()
            .all(|(kind, _)| text.contains(&format!("\"event\":\"{kind}\"")))
    });
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(ok, "missing event types:\n{text}");
    for (kind, fields) in wanted {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("\"event\":\"{kind}\"")))
            .unwrap();
        let got = keys(line);
        assert_eq!(&got[..3], ["v", "event", "time"], "{line}");
        for f in *fields {
            assert!(got.iter().any(|k| k == f), "{kind} lacks {f}: {line}");
        }
    }
    assert!(
        text.contains("\"message_id\":\"<m1@client.test>\""),
        "{text}"
    );
    assert!(
        text.contains("\"status\":\"5.1.1\",\"reason\":\"550 5.1.1 no such user\",\"category\":\"invalid_recipient\""),
        "{text}"
    );
    assert!(
        text.contains("\"command\":\"MAIL\",\"argument\":\"<a@client.test> SIZE=99999999\""),
        "{text}"
    );
    // Every line is valid JSON (checked by an independent parser).
    let check = Command::new("python3")
        .args([
            "-c",
            "import json,sys\nfor l in open(sys.argv[1]): json.loads(l)",
            &events.display().to_string(),
        ])
        .status()
        .expect("python3 is needed for this test");
    assert!(check.success());
}

#[test]
fn metrics_count_what_happened() {
    let sink = sink_on("127.0.0.19", 0, Script::default());
    let spool = TempDir::new("metrics-e2e");
    let relay = Relay::via(&sink, spool.path(), &["--metrics-listen", "127.0.0.1:0"]);
    submit(
        relay.addr,
        "a@client.test",
        &["b@example.test", "c@example.test"],
        MSG,
    );
    delivered(&sink, 1, &relay);
    assert!(
        wait_until(WAIT, || relay
            .metrics()
            .contains("mxrelay_recipients_delivered_total 2")),
        "{}",
        relay.metrics()
    );
    let text = relay.metrics();
    assert!(text.contains("mxrelay_messages_received_total 1"), "{text}");
    assert!(
        text.contains("mxrelay_delivery_latency_seconds_count 2"),
        "{text}"
    );
}

#[test]
fn drops_privileges_with_user() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: --user cannot be exercised here (CI runs as root)");
        return;
    }
    let spool = TempDir::new("user");
    let nobody = mxrelay::privileges::lookup("nobody").expect("user nobody");
    std::os::unix::fs::chown(spool.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    let relay = Relay::start(
        spool.path(),
        &[
            "--user",
            "nobody",
            "--smarthost",
            "127.0.0.1:9",
            "--retry",
            "1h",
        ],
    );
    relay.wait_log("running as user nobody");
    let status = std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == nobody.uid.to_string()),
        "{uid_line}"
    );
    // It still works: a message is accepted into the spool it owns.
    assert!(submit(relay.addr, "a@client.test", &["b@example.test"], MSG).starts_with("250"));
    // Everything it created there is its own alone.
    let mut dirs = vec![spool.path().to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            assert_eq!(
                mode & 0o077,
                0,
                "{} has mode {mode:o}",
                entry.path().display()
            );
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), nobody.uid);
            seen += 1;
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    assert!(seen >= 3, "the spool holds files: {seen}");
}

#[test]
fn root_refuses_a_spool_that_belongs_to_another_user_and_a_readable_secret() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("not root: the spool owner check cannot be exercised here (CI runs as root)");
        return;
    }
    let spool = TempDir::new("owner");
    let nobody = mxrelay::privileges::lookup("nobody").expect("user nobody");
    std::os::unix::fs::chown(spool.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mxrelay"))
            .args([
                "--hostname",
                "relay.test",
                "--listen",
                "127.0.0.1:0",
                "--spool",
            ])
            .arg(spool.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[]);
    assert!(
        err.contains(&format!("belongs to uid {}", nobody.uid)) && err.contains("--user"),
        "{err}"
    );
    // A secret every user can read stops the start, whoever runs it, saying how to fix it.
    let key = spool.path().join("webhook.key");
    std::fs::write(&key, "0123456789abcdef0123").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let key = key.display().to_string();
    let err = run(&[
        "--webhook",
        "http://127.0.0.1:9/",
        "--webhook-secret-file",
        &key,
    ]);
    assert!(
        err.contains("is readable by every user (mode 0644)"),
        "{err}"
    );
    assert!(err.contains(&format!("chmod 600 {key}")), "{err}");
    // Nothing was created in the other user's spool.
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        1,
        "only the key"
    );
}

#[test]
fn deleting_a_message_while_it_is_being_delivered() {
    // The next hop holds its greeting back, so the delivery is in flight during the delete.
    let sink = sink_on("127.0.0.21", 0, Script::default().slow_greeting(1500));
    let spool = TempDir::new("delete-inflight");
    let relay = Relay::via(&sink, spool.path(), &[]);
    let id = queue_id(&submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        MSG,
    ));
    relay.wait_log(&format!("{id}: attempt 1 in 1 jobs"));
    assert_eq!(
        stdout(&queue(spool.path(), &["delete", &id])).trim(),
        "deleted 1 message(s)"
    );
    assert!(wait_until(WAIT, || relay.queued() == 0));
    assert!(!stdout(&queue(spool.path(), &["list"])).contains(&id));
    // The worker checks that the body is still queued only when the next hop is ready for
    // it: the deleted message never goes out, and the next one (which may get a recycled
    // file) arrives intact.
    let next = queue_id(&submit(
        relay.addr,
        "a@client.test",
        &["c@example.test"],
        b"Subject: second\r\n\r\nother\r\n",
    ));
    relay.wait_log(&format!("{next}: removed"));
    let msgs = delivered(&sink, 1, &relay);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, ["c@example.test"]);
    assert!(String::from_utf8_lossy(&msgs[0].data).contains("Subject: second\r\n\r\nother\r\n"));
}
