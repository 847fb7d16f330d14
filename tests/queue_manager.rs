//! The queue manager on the bad days, end to end: a slow next hop beside a healthy one, a dead
//! next hop with thousands of messages and then a flush, a restart in the middle of a drain,
//! and smarthost failover.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use support::sink::{Script, Sink};
use support::{Relay, TempDir, free_port, sink_on, submit};

fn flush(spool: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mxrelay"))
        .args(["queue", "--spool"])
        .arg(spool)
        .arg("flush")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Submits `n` messages to `rcpt`, `threads` clients at a time; subjects `<tag><i>`.
fn submit_many(relay: &Relay, n: usize, threads: usize, rcpt: &str, tag: &str) {
    let addr = relay.addr;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (rcpt, tag) = (rcpt.to_string(), tag.to_string());
            thread::spawn(move || {
                for i in (t..n).step_by(threads) {
                    let body = format!("Subject: {tag}{i}\r\n\r\nbody {i}\r\n");
                    let r = submit(addr, "a@client.test", &[&rcpt], body.as_bytes());
                    assert!(r.starts_with("250"), "{r}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// How many times each subject arrived at `sink`.
fn subjects(sink: &Sink) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in sink.messages() {
        let text = String::from_utf8_lossy(&m.data);
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string();
        *seen.entry(subject).or_default() += 1;
    }
    seen
}

/// A relay whose smarthost is `port`, with nothing there yet, and `n` messages queued
/// behind it, each deferred once.
fn relay_behind_a_dead_hop(spool: &std::path::Path, port: u16, n: usize) -> (Relay, Vec<String>) {
    let hop = format!("127.0.0.1:{port}");
    let args: Vec<String> = [
        "--smarthost",
        &hop,
        "--smarthost-tls",
        "none",
        "--retry",
        "1h",
        "--workers",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let relay = Relay::start(spool, &args.iter().map(String::as_str).collect::<Vec<_>>());
    submit_many(&relay, n, 8, "b@example.test", "m");
    assert!(
        support::wait_until(support::WAIT, || {
            relay.log().matches(": deferred, attempt 1 failed").count() >= n
        }),
        "every message deferred"
    );
    (relay, args)
}

#[test]
fn a_slow_next_hop_does_not_hold_up_a_healthy_one() {
    // Every command of the slow one waits two seconds; a message there takes several.
    let slow = sink_on(
        "127.0.0.1",
        0,
        Script::default().slow_greeting(2000).mail(|_| {
            thread::sleep(Duration::from_secs(2));
            "250 2.1.0 ok".into()
        }),
    );
    let fast = sink_on("127.0.0.1", 0, Script::default());
    let spool = TempDir::new("slow-beside");
    let (to_slow, to_fast) = (
        format!("slow.test={}", slow.addr),
        format!("fast.test={}", fast.addr),
    );
    let relay = Relay::start(
        spool.path(),
        &["--workers", "4", "--route", &to_slow, "--route", &to_fast],
    );
    submit_many(&relay, 12, 4, "x@slow.test", "slow");
    let start = Instant::now();
    submit_many(&relay, 60, 4, "y@fast.test", "fast");
    fast.wait_for(60, Duration::from_secs(20));
    // The healthy site got its share of the workers: all of its mail went through while
    // the slow one still had most of its own to do.
    assert!(
        slow.messages().len() < 8,
        "{} slow ones delivered",
        slow.messages().len()
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(subjects(&fast).values().all(|&n| n == 1));
}

#[test]
fn a_dead_next_hop_defers_at_once_and_a_flush_delivers_everything_once() {
    let port = free_port("127.0.0.1");
    let spool = TempDir::new("dead-hop");
    let n = 2000;
    let (relay, _) = relay_behind_a_dead_hop(spool.path(), port, n);
    relay.wait_log("site smarthost is unreachable");
    // A dead site is not tried once per message.
    let tries = relay.log().matches("]: connect to ").count();
    assert!(
        tries < n / 10,
        "{tries} connection attempts for {n} messages"
    );
    assert_eq!(relay.queued(), n);
    // The next hop comes back; the operator flushes.
    let sink = sink_on("127.0.0.1", port, Script::default());
    assert!(flush(spool.path()).contains(&format!("flushed {n} message(s)")));
    sink.wait_for(n, Duration::from_secs(60));
    let seen = subjects(&sink);
    assert_eq!(seen.len(), n);
    assert!(seen.values().all(|&c| c == 1), "no duplicates");
    assert!(support::wait_until(support::WAIT, || relay.queued() == 0));
}

#[test]
fn a_restart_in_the_middle_of_a_drain_loses_nothing() {
    let port = free_port("127.0.0.1");
    let spool = TempDir::new("restart-drain");
    let n = 600;
    let (mut relay, args) = relay_behind_a_dead_hop(spool.path(), port, n);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A next hop that takes a moment per message, so the drain is under way when killed.
    let sink = sink_on(
        "127.0.0.1",
        port,
        Script::default().data(|_| {
            thread::sleep(Duration::from_millis(5));
            "250 2.0.0 ok".into()
        }),
    );
    flush(spool.path());
    assert!(support::wait_until(support::WAIT, || sink.messages().len() >= 100));
    relay.kill9();
    let before = sink.messages().len();
    assert!(before < n, "killed mid-drain");
    let relay = Relay::start(spool.path(), &args);
    relay.wait_log("messages recovered from the spool");
    flush(spool.path());
    sink.wait_for(n, Duration::from_secs(60));
    assert!(support::wait_until(support::WAIT, || relay.queued() == 0));
    let seen = subjects(&sink);
    assert_eq!(seen.len(), n, "every message arrived");
    // At most the messages delivered but not yet recorded when it was killed arrive twice:
    // the transactions in flight, and outcomes a worker handed to the scheduler before going
    // on to its next message, not yet written when the kill came (a few under load).
    let twice = seen.values().filter(|&&c| c > 1).count();
    assert!(twice <= 12, "{twice} duplicates");
}

#[test]
fn smarthosts_are_tried_in_order_and_a_dead_one_is_skipped_for_a_while() {
    let dead = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let spool = TempDir::new("failover");
    let second = sink.addr.to_string();
    let relay = Relay::start(
        spool.path(),
        &[
            "--smarthost",
            &dead,
            "--smarthost",
            &second,
            "--smarthost-tls",
            "none",
            "--workers",
            "1",
        ],
    );
    submit_many(&relay, 5, 1, "b@example.test", "f");
    sink.wait_for(5, Duration::from_secs(20));
    // The first refused once; the rest went straight to the second.
    let refused = relay.log().matches("]: connect to ").count();
    assert_eq!(refused, 1, "{}", relay.log());
    // One that answers 4xx at the greeting is passed over too.
    let busy = sink_on(
        "127.0.0.1",
        0,
        Script::default().greeting(|| "421 4.3.2 busy".into()),
    );
    let spool = TempDir::new("failover-421");
    let first = busy.addr.to_string();
    let relay = Relay::start(
        spool.path(),
        &[
            "--smarthost",
            &first,
            "--smarthost",
            &second,
            "--smarthost-tls",
            "none",
        ],
    );
    submit_many(&relay, 2, 1, "b@example.test", "g");
    sink.wait_for(7, Duration::from_secs(20));
    assert!(busy.messages().is_empty());
}

#[test]
fn a_connection_carries_at_most_its_share_of_messages() {
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let spool = TempDir::new("per-connection");
    let relay = Relay::via(
        &sink,
        spool.path(),
        &["--workers", "1", "--dest-messages-per-connection", "2"],
    );
    // One at a time, so that the one worker's kept connection carries the next.
    for i in 0..5 {
        let body = format!("Subject: c{i}\r\n\r\nx\r\n");
        submit(
            relay.addr,
            "a@client.test",
            &["b@example.test"],
            body.as_bytes(),
        );
        sink.wait_for(i + 1, Duration::from_secs(20));
    }
    // Five messages, two to a connection.
    assert_eq!(sink.connections(), 3);
}
