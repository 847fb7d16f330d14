//! Hostile next hops: the real relay, with one delivery worker and short timeouts, against a
//! next hop that misbehaves in one way (tests/support/hostile.rs), while a second, healthy
//! destination on another route waits for that same worker. Each case must end in a
//! deferral with a reason and a category (never a bounce, never a panic), the worker must
//! come free (the healthy destination gets its mail while the hostile one goes on
//! misbehaving), the relay's memory must stay bounded during huge replies, and a broken
//! STARTTLS falls back to plaintext only where the TLS policy allows it.

mod support;

use std::time::Duration;

use support::hostile::{Behaviour, Hostile, Received};
use support::sink::{Script, Sink, SinkTls};
use support::{Relay, TempDir, WAIT, delivered, queue_id, sink_on, submit, wait_until};

const MSG: &[u8] = b"From: a@client.test\r\nSubject: hostile\r\n\r\nHello there.\r\n";

/// The relay between a hostile next hop (`x@hostile.test`) and a healthy one
/// (`y@healthy.test`), both static routes.
struct Case {
    hostile: Hostile,
    healthy: Sink,
    relay: Relay,
    _spool: TempDir,
}

impl Case {
    fn new(name: &str, behaviour: Behaviour, tls_outbound: &str) -> Case {
        let hostile = Hostile::start("127.0.0.1", behaviour);
        // Under `encrypt`, the healthy hop must offer STARTTLS too.
        let script = if tls_outbound == "may" {
            Script::default()
        } else {
            Script::default().tls(SinkTls::test())
        };
        let healthy = sink_on("127.0.0.1", 0, script);
        let spool = TempDir::new(name);
        let routes = [
            format!("hostile.test={}", hostile.addr),
            format!("healthy.test={}", healthy.addr),
        ];
        let relay = Relay::start(
            spool.path(),
            &[
                "--workers",
                "1",
                "--delivery-timeout",
                "2s",
                "--connect-timeout",
                "2s",
                "--retry",
                "1s",
                "--tls-outbound",
                tls_outbound,
                "--route",
                &routes[0],
                "--route",
                &routes[1],
            ],
        );
        Case {
            hostile,
            healthy,
            relay,
            _spool: spool,
        }
    }

    /// Sends one message to the hostile hop and, once the one worker is busy with it, one
    /// to the healthy hop, which must arrive while the hostile one misbehaves. Returns the
    /// first message's queue id.
    fn send_both(&self) -> String {
        let id = self.send_both_queued();
        self.healthy_arrives();
        id
    }

    /// As `send_both`, without waiting for the healthy hop's message.
    fn send_both_queued(&self) -> String {
        let reply = submit(self.relay.addr, "a@client.test", &["x@hostile.test"], MSG);
        assert!(reply.starts_with("250"), "{reply}");
        let id = queue_id(&reply);
        assert!(
            wait_until(WAIT, || self.hostile.connections() >= 1),
            "the hostile hop was never tried:\n{}",
            self.relay.log()
        );
        let reply = submit(self.relay.addr, "a@client.test", &["y@healthy.test"], MSG);
        assert!(reply.starts_with("250"), "{reply}");
        id
    }

    fn healthy_arrives(&self) {
        let got = delivered(&self.healthy, 1, &self.relay);
        assert_eq!(got[0].rcpts, ["y@healthy.test"]);
    }

    /// A case where the hostile hop's message is deferred (see `assert_deferred`) while the
    /// healthy one's goes out; the hostile message's queue id.
    fn deferring(
        name: &str,
        behaviour: Behaviour,
        reasons: &[&str],
        category: &str,
    ) -> (Case, String) {
        let case = Case::new(name, behaviour, "may");
        let id = case.send_both();
        case.assert_deferred(&id, reasons, category);
        (case, id)
    }

    /// Waits for the deferral of `id` to the hostile hop; its (category, reason).
    fn deferral(&self, id: &str) -> (String, String) {
        let needle = format!("{id}: deferred to=<x@hostile.test> category=");
        self.relay.wait_log(&needle);
        let log = self.relay.log();
        let line = log.lines().find(|l| l.contains(&needle)).unwrap();
        let rest = line.split(&needle).nth(1).unwrap();
        let (category, reason) = rest.split_once(" reason=").unwrap();
        (category.to_string(), reason.to_string())
    }

    /// Deferred (with one of `reasons` and `category`), and nothing worse happened.
    fn assert_deferred(&self, id: &str, reasons: &[&str], category: &str) {
        let (got_category, reason) = self.deferral(id);
        eprintln!("deferred: category={got_category} reason={reason}");
        assert!(
            reasons.iter().any(|r| reason.contains(r)),
            "want one of {reasons:?}, got {reason}"
        );
        assert_eq!(got_category, category, "{reason}");
        self.assert_no_harm(id);
    }

    /// No bounce, no panic, and the message still queued.
    fn assert_no_harm(&self, id: &str) {
        let log = self.relay.log();
        assert!(
            !log.contains(&format!("{id}: failed")) && !log.contains("panicked"),
            "{log}"
        );
        assert!(self.relay.queued() >= 1, "{log}");
    }
}

/// The relay's resident memory, from /proc (kB).
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The largest RSS seen while `until` is false (sampled every few ms, bounded by WAIT).
fn peak_rss_kb(pid: u32, mut until: impl FnMut() -> bool) -> u64 {
    let mut peak = 0;
    wait_until(WAIT, || {
        peak = peak.max(rss_kb(pid));
        until()
    });
    peak
}

#[test]
fn random_bytes_without_a_line_end_time_out() {
    // An endless stream: without a deadline per reply the worker would read it for as long
    // as the hop sends (the hop's own cap: a minute), and the healthy hop would wait.
    Case::deferring(
        "hostile-garbage",
        Behaviour::Garbage,
        &["timed out"],
        "connection",
    );
}

#[test]
fn a_multi_megabyte_reply_line_is_drained_in_bounded_memory() {
    const LINE: usize = 32 << 20;
    let case = Case::new("hostile-hugeline", Behaviour::HugeLine(LINE), "may");
    let pid = case.relay.pid();
    let before = rss_kb(pid);
    let id = case.send_both_queued();
    let needle = format!("{id}: deferred to=<x@hostile.test>");
    let peak = peak_rss_kb(pid, || case.relay.log().contains(&needle));
    eprintln!("relay RSS: {before} kB before, {peak} kB at most during a {LINE}-byte line");
    assert!(
        peak < before + (LINE as u64 >> 10) / 2,
        "RSS {before} kB before, {peak} kB at most during a {LINE}-byte reply line"
    );
    case.healthy_arrives();
    // Either it ended (too long) or, on a slow box, the reply's deadline passed first.
    let (category, reason) = case.deferral(&id);
    assert!(
        (reason.contains("over-long reply line") && category == "other")
            || (reason.contains("timed out") && category == "connection"),
        "{category} {reason}"
    );
    case.assert_no_harm(&id);
}

#[test]
fn a_reply_with_100_000_continuation_lines_is_refused_in_bounded_memory() {
    let case = Case::new(
        "hostile-continuations",
        Behaviour::Continuations(100_000),
        "may",
    );
    let pid = case.relay.pid();
    let before = rss_kb(pid);
    let id = case.send_both_queued();
    let needle = format!("{id}: deferred to=<x@hostile.test>");
    let peak = peak_rss_kb(pid, || case.relay.log().contains(&needle));
    eprintln!("relay RSS: {before} kB before, {peak} kB at most during 100 000 lines");
    case.healthy_arrives();
    // The lines come to about 3 MB; the reader keeps 200 at most.
    assert!(
        peak < before + 16 * 1024,
        "RSS {before} kB before, {peak} kB at most"
    );
    case.assert_deferred(&id, &["malformed reply: TooLong"], "other");
}

#[test]
fn a_next_hop_that_never_greets_times_out() {
    Case::deferring(
        "hostile-silent",
        Behaviour::Silent,
        &["timed out: no reply within 2s"],
        "connection",
    );
}

#[test]
fn a_stall_after_the_final_dot_defers_and_sends_once_per_attempt() {
    let (case, id) = Case::deferring(
        "hostile-stall",
        Behaviour::StallAfterData,
        &["timed out"],
        "connection",
    );
    case.relay
        .wait_log(&format!("{id}: no verdict after the end of data"));
    // A second attempt, then count: the hop got the complete data once per attempt (the one
    // transaction in flight), never twice in one.
    case.relay
        .wait_log(&format!("{id}: deferred, attempt 2 failed"));
    let attempts = case
        .relay
        .log()
        .matches(&format!("{id}: deferred, attempt "))
        .count();
    let received = case.hostile.received();
    assert!(
        !received.is_empty() && received.len() <= attempts + 1,
        "{} complete copies in {attempts} finished attempts",
        received.len()
    );
    assert!(received.iter().all(|r| !r.accepted));
    // One connection per attempt: no fresh connection after the unanswered dot.
    assert!(case.hostile.connections() <= attempts + 1);
}

#[test]
fn a_421_greeting_defers() {
    Case::deferring(
        "hostile-421",
        Behaviour::Greeting421,
        &["greeted with 421 4.3.2"],
        "other",
    );
}

#[test]
fn a_451_to_mail_rcpt_or_data_defers() {
    for command in ["MAIL", "RCPT", "DATA"] {
        let case = Case::new("hostile-451", Behaviour::Tempfail(command), "may");
        let id = case.send_both();
        let (category, reason) = case.deferral(&id);
        assert!(
            reason.contains("451 4.3.0 Try again later"),
            "{command}: {reason}"
        );
        assert_eq!(category, "other", "{command}: {reason}");
        case.assert_no_harm(&id);
        assert!(case.hostile.received().is_empty(), "{command}");
    }
}

#[test]
fn a_broken_starttls_falls_back_to_plaintext_when_tls_is_opportunistic() {
    for garbage in [true, false] {
        let case = Case::new("hostile-tls-may", Behaviour::BrokenTls { garbage }, "may");
        let reply = submit(case.relay.addr, "a@client.test", &["x@hostile.test"], MSG);
        let id = queue_id(&reply);
        // Handshake failed, then the same host again without TLS, in the same attempt.
        case.relay
            .wait_log(&format!("{id}: delivered to=<x@hostile.test>"));
        let log = case.relay.log();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{id}: TLS handshake with"))
                    && l.ends_with("retrying 127.0.0.1 without TLS")),
            "{log}"
        );
        let cmds = case.hostile.commands();
        assert_eq!(
            cmds.iter().filter(|c| *c == "STARTTLS").count(),
            1,
            "{cmds:?}"
        );
        let received = case.hostile.received();
        assert_eq!(received.len(), 1, "garbage={garbage}");
        assert_eq!(received[0].connection, 2);
        assert!(!log.contains(&format!("{id}: deferred")), "{log}");
    }
}

#[test]
fn a_broken_starttls_defers_when_tls_is_required() {
    for garbage in [true, false] {
        let case = Case::new(
            "hostile-tls-encrypt",
            Behaviour::BrokenTls { garbage },
            "encrypt",
        );
        let id = case.send_both();
        case.assert_deferred(&id, &["TLS handshake with"], "tls");
        case.relay
            .wait_log(&format!("{id}: deferred, attempt 2 failed"));
        // Never in plaintext: no MAIL ever reached the hop.
        let cmds = case.hostile.commands();
        assert!(!cmds.iter().any(|c| c.starts_with("MAIL")), "{cmds:?}");
        assert!(case.hostile.received().is_empty());
        assert!(!case.relay.log().contains("without TLS"));
    }
}

#[test]
fn a_hop_that_closes_after_every_command_defers() {
    let (case, id) = Case::deferring(
        "hostile-close",
        Behaviour::CloseAfterEveryCommand,
        &["closed the connection"],
        "connection",
    );
    case.relay
        .wait_log(&format!("{id}: deferred, attempt 2 failed"));
    assert!(case.hostile.received().is_empty());
}

/// Each connection gets one step further before the hop hangs up: the message is deferred
/// at every step, goes out complete twice (once unanswered, once answered 250) and is
/// never sent again after the 250.
#[test]
fn a_hop_that_hangs_up_later_each_time_gets_the_message_once_with_250() {
    let case = Case::new("hostile-progressive", Behaviour::Progressive, "may");
    let id = case.send_both();
    case.relay
        .wait_log(&format!("{id}: delivered to=<x@hostile.test>"));
    case.relay.wait_log(&format!("{id}: removed"));
    // Give a wrong retry time to show itself.
    std::thread::sleep(Duration::from_secs(2));
    let log = case.relay.log();
    for attempt in 1..=5 {
        assert!(
            log.contains(&format!("{id}: deferred, attempt {attempt} failed")),
            "attempt {attempt}:\n{log}"
        );
    }
    let received: Vec<Received> = case.hostile.received();
    let accepted: Vec<&Received> = received.iter().filter(|r| r.accepted).collect();
    assert_eq!(accepted.len(), 1, "{received:?}");
    assert_eq!(
        received.len(),
        2,
        "once unanswered (connection 5), once with 250 (6)"
    );
    assert_eq!(
        received.iter().map(|r| r.connection).collect::<Vec<_>>(),
        [5, 6]
    );
    assert!(received[0].data == received[1].data);
    assert_eq!(case.hostile.connections(), 6, "nothing after the 250");
    assert!(!log.contains(&format!("{id}: failed")), "{log}");
}
