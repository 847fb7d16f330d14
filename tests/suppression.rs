//! The suppression list end to end: a suppressed recipient is not sent while the others of
//! the same message are; a hard bounce suppresses the next message to that address; and
//! `mxrelay suppression add/remove/list/export/import` change what the next message does,
//! against a running relay and, with none running, on the file. With
//! `--suppression-store redis://...` (a real redis-server), relays share one list, also
//! across the store being down and a relay restarting meanwhile.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::redis_server::RedisServer;
use support::sink::{Message, Script, Sink};
use support::{Relay, TempDir, WAIT, finish, queue_id, sink_on, submit, wait_until};

const MSG: &[u8] = b"Subject: news\r\n\r\nhello\r\n";

/// Runs `mxrelay suppression --spool SPOOL ARGS...` (killed after `WAIT`): success, stdout
/// and stderr.
fn suppression(spool: &Path, args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_mxrelay"))
        .arg("suppression")
        .arg("--spool")
        .arg(spool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mxrelay suppression");
    let out = finish(child, WAIT, &format!("mxrelay suppression {args:?}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `suppression`, which must succeed; its stdout.
fn ok(spool: &Path, args: &[&str]) -> String {
    let (success, out, err) = suppression(spool, args);
    assert!(success, "suppression {args:?} failed: {err}{out}");
    out
}

/// The messages the sink got from the client (not DSNs).
fn mail(sink: &Sink) -> Vec<Message> {
    sink.messages()
        .into_iter()
        .filter(|m| !m.mail_from.starts_with("<>"))
        .collect()
}

fn dsns(sink: &Sink) -> Vec<Message> {
    sink.messages()
        .into_iter()
        .filter(|m| m.mail_from.starts_with("<>"))
        .collect()
}

/// Submits a message to `rcpts` and waits until the relay is done with it.
fn send(relay: &Relay, rcpts: &[&str]) -> String {
    let reply = submit(relay.addr, "a@client.test", rcpts, MSG);
    assert!(reply.starts_with("250"), "{reply}");
    let id = queue_id(&reply);
    relay.wait_log(&format!("{id}: removed"));
    id
}

/// RCPT commands the sink saw for `address`.
fn rcpts_for(sink: &Sink, address: &str) -> usize {
    let cmd = format!("RCPT TO:<{address}>");
    sink.commands()
        .iter()
        .filter(|c| c.starts_with(&cmd))
        .count()
}

#[test]
fn a_suppressed_recipient_is_skipped_and_the_others_delivered() {
    let sink = sink_on("127.0.0.41", 0, Script::default());
    let spool = TempDir::new("suppressed");
    let events = spool.path().join("events.jsonl");
    let relay = Relay::via(
        &sink,
        spool.path(),
        &[
            "--events",
            &events.display().to_string(),
            "--metrics-listen",
            "127.0.0.41:0",
        ],
    );
    let out = ok(
        spool.path(),
        &["add", "Gone@Example.test", "--reason", "unsubscribe"],
    );
    assert!(out.contains("added Gone@Example.test"), "{out}");
    let id = send(
        &relay,
        &["ok@example.test", "Gone@example.TEST", "gone@example.test"],
    );
    let got = mail(&sink);
    assert_eq!(got.len(), 1);
    // The domain's case does not matter; the local part's does.
    assert_eq!(got[0].rcpts, ["ok@example.test", "gone@example.test"]);
    assert_eq!(rcpts_for(&sink, "Gone@example.TEST"), 0);
    relay.wait_log(&format!(
        "{id}: suppressed to=<Gone@example.TEST> reason=unsubscribe"
    ));
    assert!(
        wait_until(WAIT, || std::fs::read_to_string(&events)
            .unwrap_or_default()
            .contains("\"event\":\"suppressed\"")),
        "no suppressed event"
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("\"event\":\"suppressed\""))
        .unwrap();
    for want in [
        format!("\"id\":\"{id}\""),
        "\"recipient\":\"Gone@example.TEST\"".to_string(),
        "\"reason\":\"unsubscribe\"".to_string(),
    ] {
        assert!(line.contains(&want), "{line} lacks {want}");
    }
    // The sender asked for it: no DSN.
    assert!(wait_until(WAIT, || relay.queued() == 0), "{}", relay.log());
    assert!(dsns(&sink).is_empty());

    // Every recipient suppressed: no transaction at all, and no DSN.
    let transactions = || {
        let commands = sink.commands();
        commands.iter().filter(|c| c.starts_with("MAIL")).count()
    };
    let before = transactions();
    let id = send(&relay, &["Gone@example.test"]);
    relay.wait_log(&format!("{id}: suppressed to=<Gone@example.test>"));
    assert_eq!(transactions(), before, "{:?}", sink.commands());
    assert!(wait_until(WAIT, || relay.queued() == 0), "{}", relay.log());
    assert!(dsns(&sink).is_empty());
    let metrics = relay.metrics();
    assert!(
        metrics.contains("\nmxrelay_recipients_suppressed_total 2\n"),
        "{metrics}"
    );
}

#[test]
fn a_hard_bounce_suppresses_the_next_message() {
    let sink = sink_on(
        "127.0.0.42",
        0,
        Script::default().refuse_rcpt("nobody", "550 5.1.1 <nobody@example.test>: user unknown"),
    );
    let spool = TempDir::new("hard-bounce");
    let relay = Relay::via(&sink, spool.path(), &[]);
    send(&relay, &["nobody@example.test", "ok1@example.test"]);
    assert!(wait_until(WAIT, || dsns(&sink).len() == 1), "no DSN");
    relay.wait_log("suppression: <nobody@example.test> added (bounce");
    let listed = ok(spool.path(), &["list"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with("nobody@example.test"))
        .unwrap_or_else(|| panic!("not listed:\n{listed}"));
    assert!(line.contains("bounce"), "{line}");
    assert!(!line.ends_with("never"), "a bounce expires: {line}");

    let id = send(&relay, &["nobody@example.test", "ok2@example.test"]);
    relay.wait_log(&format!(
        "{id}: suppressed to=<nobody@example.test> reason=bounce"
    ));
    assert_eq!(
        rcpts_for(&sink, "nobody@example.test"),
        1,
        "tried once only"
    );
    let got = mail(&sink);
    assert_eq!(got.last().unwrap().rcpts, ["ok2@example.test"]);
    assert!(wait_until(WAIT, || relay.queued() == 0), "{}", relay.log());
    assert_eq!(dsns(&sink).len(), 1, "no second DSN");
}

#[test]
fn hard_bounces_suppress_nothing_with_suppress_bounces_0() {
    let sink = sink_on(
        "127.0.0.43",
        0,
        Script::default().refuse_rcpt("nobody", "550 5.1.1 user unknown"),
    );
    let spool = TempDir::new("bounce-off");
    let relay = Relay::via(&sink, spool.path(), &["--suppress-bounces", "0"]);
    send(&relay, &["nobody@example.test"]);
    send(&relay, &["nobody@example.test"]);
    assert_eq!(rcpts_for(&sink, "nobody@example.test"), 2);
    assert!(ok(spool.path(), &["list"]).contains("empty"));
}

#[test]
fn the_command_changes_what_the_next_message_does() {
    let sink = sink_on("127.0.0.44", 0, Script::default());
    let spool = TempDir::new("suppression-cmd");
    let mut relay = Relay::via(&sink, spool.path(), &[]);
    let import = spool.path().join("import.csv");
    std::fs::write(
        &import,
        "address,reason,added,expires\n\
         a@example.test,unsubscribe,2026-01-01T00:00:00Z,\n\
         # one address per line works too\n\
         b@example.test\n\
         old@example.test,bounce,2020-01-01T00:00:00Z,2020-02-01T00:00:00Z\n",
    )
    .unwrap();
    let out = ok(spool.path(), &["import", &import.display().to_string()]);
    assert!(out.contains("imported 2"), "{out}");
    let listed = ok(spool.path(), &["list"]);
    assert!(
        listed.contains("a@example.test") && listed.contains("b@example.test"),
        "{listed}"
    );
    send(
        &relay,
        &["a@example.test", "b@example.test", "c@example.test"],
    );
    assert_eq!(mail(&sink).last().unwrap().rcpts, ["c@example.test"]);

    let out = ok(spool.path(), &["remove", "a@example.test"]);
    assert!(out.contains("removed a@example.test"), "{out}");
    let (success, _, err) = suppression(spool.path(), &["remove", "a@example.test"]);
    assert!(
        !success && err.contains("not on the suppression list"),
        "{err}"
    );
    send(&relay, &["a@example.test", "b@example.test"]);
    assert_eq!(mail(&sink).last().unwrap().rcpts, ["a@example.test"]);

    let csv = ok(spool.path(), &["export"]);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("address,reason,added,expires"));
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest.len(), 1, "{csv}");
    assert!(rest[0].starts_with("b@example.test,manual,"), "{csv}");
    // An export imports back as it was.
    std::fs::write(&import, &csv).unwrap();
    assert!(ok(spool.path(), &["import", &import.display().to_string()]).contains("imported 1"));
    assert_eq!(ok(spool.path(), &["export"]), csv);

    let (success, _, err) = suppression(spool.path(), &["add", "not an address"]);
    assert!(!success && err.contains("not an address"), "{err}");

    // With no daemon, the command changes the file; the relay reads it at start.
    relay.terminate();
    let out = ok(spool.path(), &["add", "d@example.test", "--expires", "1d"]);
    assert!(out.contains("added d@example.test"), "{out}");
    let relay = Relay::via(&sink, spool.path(), &[]);
    send(
        &relay,
        &["d@example.test", "b@example.test", "e@example.test"],
    );
    assert_eq!(mail(&sink).last().unwrap().rcpts, ["e@example.test"]);
    let listed = ok(spool.path(), &["list"]);
    assert!(listed.contains("-- 2 address(es)"), "{listed}");
}

/// Whether `mxrelay suppression list` on `spool` shows `address`.
fn listed(spool: &Path, address: &str) -> bool {
    ok(spool, &["list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(address))
}

/// Waits until `spool`'s list shows `address` (or no longer does).
fn wait_listed(relay: &Relay, address: &str, want: bool) {
    if !wait_until(WAIT, || listed(&relay.spool, address) == want) {
        panic!(
            "{address} {} on the list of {}:\n{}",
            if want { "never" } else { "still" },
            relay.spool.display(),
            relay.log()
        );
    }
}

/// The value of an unlabelled sample on the relay's /metrics page.
fn metric(relay: &Relay, name: &str) -> u64 {
    let page = relay.metrics();
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}:\n{page}"))
        .parse()
        .unwrap()
}

const HASH: &str = "mxrelay:suppression";

#[test]
fn relays_sharing_a_redis_store_suppress_for_each_other() {
    let redis = RedisServer::start();
    let url = redis.url(3);
    let sink = sink_on("127.0.0.45", 0, Script::default());
    let (spool_a, spool_b) = (TempDir::new("shared-a"), TempDir::new("shared-b"));
    let store = ["--suppression-store", url.as_str()];
    let a = Relay::via(&sink, spool_a.path(), &store);
    let b = Relay::via(&sink, spool_b.path(), &store);
    a.wait_log(&format!("sharing the list through {url}"));

    // Added on A (through its control socket): in Redis, in database 3 only, then on B.
    let out = ok(
        spool_a.path(),
        &["add", "Gone@Example.test", "--reason", "unsubscribe"],
    );
    assert!(out.contains("added Gone@Example.test"), "{out}");
    let field = "Gone@example.test";
    assert!(
        wait_until(WAIT, || redis.db(3).hget(HASH, field).is_some()),
        "not in Redis:\n{}",
        a.log()
    );
    let value = redis.db(3).hget(HASH, field).unwrap();
    assert!(value.ends_with(" unsubscribe Gone@Example.test"), "{value}");
    assert_eq!(redis.db(0).hlen(HASH), 0, "database 0 untouched");
    wait_listed(&b, "Gone@Example.test", true);
    let id = send(&b, &["Gone@example.test", "ok@example.test"]);
    b.wait_log(&format!(
        "{id}: suppressed to=<Gone@example.test> reason=unsubscribe"
    ));
    assert_eq!(rcpts_for(&sink, "Gone@example.test"), 0);
    assert_eq!(mail(&sink).last().unwrap().rcpts, ["ok@example.test"]);

    // Removed on B: gone from Redis and from A, whose next message goes out.
    let out = ok(spool_b.path(), &["remove", "Gone@example.test"]);
    assert!(out.contains("removed"), "{out}");
    assert!(
        wait_until(WAIT, || redis.db(3).hget(HASH, field).is_none()),
        "still in Redis"
    );
    wait_listed(&a, "Gone@Example.test", false);
    send(&a, &["Gone@example.test"]);
    assert_eq!(rcpts_for(&sink, "Gone@example.test"), 1);

    // An import on A, exported from B.
    let csv = spool_a.path().join("import.csv");
    std::fs::write(&csv, "x1@example.test\nx2@example.test,unsubscribe\n").unwrap();
    let out = ok(spool_a.path(), &["import", &csv.display().to_string()]);
    assert!(out.contains("imported 2"), "{out}");
    wait_listed(&b, "x2@example.test", true);
    let exported = ok(spool_b.path(), &["export"]);
    assert!(
        exported.contains("\nx1@example.test,manual,")
            && exported.contains("\nx2@example.test,unsubscribe,"),
        "{exported}"
    );

    // A hard bounce seen by B suppresses on A.
    let bouncer = sink_on(
        "127.0.0.45",
        0,
        Script::default().refuse_rcpt("nobody", "550 5.1.1 <nobody@example.test>: user unknown"),
    );
    drop(b);
    let b = Relay::via(&bouncer, spool_b.path(), &store);
    send(&b, &["nobody@example.test"]);
    b.wait_log("suppression: <nobody@example.test> added (bounce");
    wait_listed(&a, "nobody@example.test", true);
    let id = send(&a, &["nobody@example.test"]);
    a.wait_log(&format!(
        "{id}: suppressed to=<nobody@example.test> reason=bounce"
    ));
}

#[test]
fn changes_made_while_redis_is_down_reach_it_when_it_is_back() {
    let mut redis = RedisServer::start();
    let url = redis.url(0);
    let sink = sink_on("127.0.0.46", 0, Script::default());
    let (spool_a, spool_b) = (TempDir::new("offline-a"), TempDir::new("offline-b"));
    let args = |ip: &'static str| ["--suppression-store", url.as_str(), "--metrics-listen", ip];
    let mut a = Relay::via(&sink, spool_a.path(), &args("127.0.0.46:0"));
    let b = Relay::via(&sink, spool_b.path(), &args("127.0.0.46:0"));
    // Known to both before the store goes down (and loses everything: no persistence).
    ok(spool_b.path(), &["add", "early@example.test"]);
    wait_listed(&a, "early@example.test", true);

    redis.stop();
    let out = ok(
        spool_a.path(),
        &["add", "late@example.test", "--reason", "unsubscribe"],
    );
    assert!(out.contains("added late@example.test"), "{out}");
    let id = send(&a, &["late@example.test", "ok@example.test"]);
    a.wait_log(&format!("{id}: suppressed to=<late@example.test>"));
    assert!(
        wait_until(WAIT, || metric(&a, "mxrelay_suppression_store_pending")
            == 1),
        "{}",
        a.metrics()
    );
    a.wait_log(&format!("suppression: {url} is unreachable"));
    assert!(metric(&a, "mxrelay_suppression_store_errors_total") > 0);

    // A restarts while the store is still down: the change is still waiting, still in force.
    a.terminate();
    let a = Relay::via(&sink, spool_a.path(), &args("127.0.0.46:0"));
    a.wait_log("starting from this spool's copy");
    assert_eq!(metric(&a, "mxrelay_suppression_store_pending"), 1);
    let id = send(&a, &["late@example.test"]);
    a.wait_log(&format!("{id}: suppressed to=<late@example.test>"));
    assert!(!listed(spool_b.path(), "late@example.test"));

    // Back (and empty): A pushes what waited, both merge their lists into it again.
    redis.restart();
    assert!(
        wait_until(WAIT, || redis
            .db(0)
            .hget(HASH, "late@example.test")
            .is_some()),
        "never pushed:\n{}",
        a.log()
    );
    a.wait_log(&format!(
        "suppression: {url} is reachable again; 1 change(s)"
    ));
    assert!(
        wait_until(WAIT, || metric(&a, "mxrelay_suppression_store_pending")
            == 0),
        "{}",
        a.metrics()
    );
    assert!(metric(&a, "mxrelay_suppression_store_pushed_total") >= 1);
    wait_listed(&b, "late@example.test", true);
    let id = send(&b, &["late@example.test"]);
    b.wait_log(&format!("{id}: suppressed to=<late@example.test>"));
    assert!(
        wait_until(WAIT, || redis
            .db(0)
            .hget(HASH, "early@example.test")
            .is_some()),
        "the lists were not merged into the emptied store again"
    );
    assert!(listed(spool_a.path(), "early@example.test"));
    assert_eq!(rcpts_for(&sink, "late@example.test"), 0);
    assert_eq!(rcpts_for(&sink, "early@example.test"), 0);
}
