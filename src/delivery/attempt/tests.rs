//! Unit tests of the delivery attempt: the pure decisions as tables, and the driver against
//! a small scripted SMTP server on loopback (reuse, closing, moving on between hosts).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use super::*;
use crate::dns::{DnsError, MxLookup, Resolver};
use crate::smtp::reply::Enhanced;

impl Body for &[u8] {
    fn open(&self, size: u64, head: u64) -> impl Read + '_ {
        assert_eq!(head, 0, "test bodies are stored in order");
        &self[..size as usize]
    }
}

fn job(dest: Destination, rcpts: &[&str]) -> Job {
    Job {
        id: "J1".into(),
        sender: "a@src.test".into(),
        rcpts: rcpts
            .iter()
            .enumerate()
            .map(|(i, r)| (i, r.to_string()))
            .collect(),
        dest,
        site: String::new(),
        started: 0,
        place: crate::spool::test_place(),
        received: 0,
        cancelled: Arc::new(AtomicBool::new(false)),
        tag: String::new(),
        size: BODY.len() as u64,
        head: 0,
        eight_bit: false,
        smtputf8: false,
        personal: Default::default(),
    }
}

const BODY: &[u8] = b"Subject: t\r\n\r\n.dot\r\n";

fn reply(code: u16, text: &str) -> Reply {
    let enhanced = Enhanced::parse_prefix(text);
    let text = text.split_once(' ').filter(|_| enhanced.is_some());
    Reply::new(code, enhanced, text.map_or("", |t| t.1))
}

#[test]
fn replies_map_to_per_recipient_results() {
    let j = job(
        Destination::Literal(Ipv4Addr::LOCALHOST.into()),
        &["b", "c", "d"],
    );
    let relay = "mx.test[127.0.0.1]:25";
    let delivered = |reply: &str| RcptResult::Delivered {
        relay: relay.into(),
        reply: reply.into(),
        tls: true,
    };
    let failed = |status: &str, reason: &str| RcptResult::Failed {
        status: status.into(),
        relay: Some(relay.into()),
        reason: reason.into(),
    };
    let deferred = |reason: &str| RcptResult::Deferred {
        reason: format!("{relay} said: {reason}"),
    };
    let rcpts = vec![
        reply(250, "2.1.5 ok"),
        reply(550, "5.1.1 unknown"),
        reply(451, "4.3.0 later"),
    ];
    let cases: Vec<(Ending, Result<Results, String>)> = vec![
        (
            Ending::Sent(reply(250, "2.0.0 queued")),
            Ok(vec![
                (1, failed("5.1.1", "550 5.1.1 unknown")),
                (2, deferred("451 4.3.0 later")),
                (0, delivered("250 2.0.0 queued")),
            ]),
        ),
        (
            Ending::DataRefused(reply(554, "")),
            Ok(vec![
                (1, failed("5.1.1", "550 5.1.1 unknown")),
                (2, deferred("451 4.3.0 later")),
                (0, failed("5.0.0", "554 ")),
            ]),
        ),
        (
            Ending::Sent(reply(452, "4.3.1 full")),
            Ok(vec![
                (1, failed("5.1.1", "550 5.1.1 unknown")),
                (2, deferred("451 4.3.0 later")),
                (0, deferred("452 4.3.1 full")),
            ]),
        ),
        (
            Ending::MailRefused(reply(553, "5.7.1 sender refused")),
            Ok((0..3)
                .map(|i| (i, failed("5.7.1", "553 5.7.1 sender refused")))
                .collect()),
        ),
        (
            Ending::MailRefused(reply(421, "4.3.2 bye")),
            Err(format!("{relay} said to MAIL: 421 4.3.2 bye")),
        ),
    ];
    for (ending, want) in cases {
        let report = Report {
            rcpts: if matches!(ending, Ending::MailRefused(_)) {
                Vec::new()
            } else {
                rcpts.clone()
            },
            ending: ending.clone(),
        };
        assert_eq!(results(&j, &report, relay, true), want, "{ending:?}");
    }
    // Every recipient refused: only their own replies count.
    let report = Report {
        rcpts: vec![reply(550, "5.1.1 a"), reply(550, "5.1.1 b"), reply(550, "")],
        ending: Ending::RecipientsRefused,
    };
    let got = results(&j, &report, relay, false).unwrap();
    assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn connections_are_kept_while_clean_and_under_their_share() {
    for (reusable, sent, per_connection, want) in [
        (true, 1, 100, true),
        (true, 99, 100, true),
        (true, 100, 100, false),
        (true, 1, 1, false),
        (false, 1, 100, false),
    ] {
        assert_eq!(
            keep(reusable, sent, per_connection),
            want,
            "{reusable} {sent} {per_connection}"
        );
    }
}

#[test]
fn feedback_and_site_names() {
    use Feedback::*;
    for (so_far, connect_failed, want) in [
        (Neutral, true, Unreachable),
        (Unreachable, true, Unreachable),
        (Neutral, false, Throttled),
        (Unreachable, false, Throttled),
        (Throttled, true, Throttled),
    ] {
        assert_eq!(feedback(so_far, connect_failed), want);
    }
    let host = |name: &str| Candidate {
        name: name.into(),
        port: 25,
        lookup: route::Lookup::Dns,
    };
    let hosts = [host("mx2.d.test"), host("mx1.d.test")];
    assert_eq!(
        mx_site(&Destination::Mx("d.test".into()), &hosts).as_deref(),
        Some("mx mx1.d.test,mx2.d.test")
    );
    assert_eq!(
        mx_site(&Destination::Literal(Ipv4Addr::LOCALHOST.into()), &hosts),
        None
    );
}

// ---- the driver against a scripted server -------------------------------------------------

/// Answers MX queries for `d.test` with two hosts: `down.test` (preference 10, an address
/// where nothing listens) and `up.test` (20, the test server).
struct Dns;

impl Resolver for Dns {
    fn mx(&self, domain: &str) -> Result<MxLookup, DnsError> {
        match domain {
            "d.test" => Ok(MxLookup::Hosts(vec![
                (20, "up.test".into()),
                (10, "down.test".into()),
            ])),
            _ => Err(DnsError::NoSuchDomain),
        }
    }

    fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        match host {
            "up.test" => Ok(vec![Ipv4Addr::LOCALHOST.into()]),
            "down.test" => Ok(vec![Ipv4Addr::new(127, 0, 0, 2).into()]),
            _ => Err(DnsError::NoSuchDomain),
        }
    }
}

fn context(port: u16, per_connection: usize) -> Context {
    Context {
        cfg: crate::delivery::DeliveryConfig {
            workers: 1,
            hostname: "relay.test".into(),
            mx_port: port,
            connect_timeout: Duration::from_secs(2),
            delivery_timeout: Some(Duration::from_secs(5)),
            tls_outbound: TlsOutbound::May,
            smarthost_tls: SmarthostTls::None,
            smarthost_insecure: false,
            smarthost_login: None,
            tls_ca_file: None,
            messages_per_connection: per_connection,
        },
        resolver: Arc::new(Dns),
        tls: crate::tls::Outbound::new(None).unwrap(),
        smarthost_auth: None,
        hosts: Default::default(),
        metrics: Arc::new(crate::metrics::Metrics::new()),
    }
}

/// A server on 127.0.0.1 that offers PIPELINING, answers RCPT with `rcpt(address)` and
/// everything else with 250 (354 to DATA). Records each connection's commands.
struct Server {
    port: u16,
    log: Arc<Mutex<Vec<Vec<String>>>>,
}

fn server(rcpt: fn(&str) -> &'static str) -> Server {
    server_on("127.0.0.1:0", rcpt, |_| true)
}

/// As `server`, on `addr`, answering the end of the connection's `n`th message (from 0)
/// only if `answers(n)`; else it keeps reading, and never answers again.
fn server_on(addr: &str, rcpt: fn(&str) -> &'static str, answers: fn(usize) -> bool) -> Server {
    let listener = TcpListener::bind(addr).unwrap();
    let port = listener.local_addr().unwrap().port();
    let log: Arc<Mutex<Vec<Vec<String>>>> = Default::default();
    let shared = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut out) = stream else { return };
            let n = {
                let mut log = shared.lock().unwrap();
                log.push(Vec::new());
                log.len() - 1
            };
            let mut lines = BufReader::new(out.try_clone().unwrap()).lines();
            let _ = out.write_all(b"220 up.test ESMTP\r\n");
            let mut recipients = false;
            let mut messages = 0;
            while let Some(Ok(line)) = lines.next() {
                shared.lock().unwrap()[n].push(line.clone());
                let answer = match line.split(':').next().unwrap_or("") {
                    "EHLO relay.test" => "250-up.test\r\n250 PIPELINING",
                    "MAIL FROM" => {
                        recipients = false;
                        "250 ok"
                    }
                    "RCPT TO" => {
                        let answer = rcpt(&line);
                        recipients |= answer.starts_with('2');
                        answer
                    }
                    "DATA" if !recipients => "554 5.5.1 no valid recipients",
                    "DATA" => "354 go ahead",
                    "QUIT" => "221 bye",
                    _ => "250 ok",
                };
                let _ = out.write_all(format!("{answer}\r\n").as_bytes());
                if line == "QUIT" {
                    break;
                }
                if answer.starts_with("354") {
                    for body in lines.by_ref() {
                        if body.map_or(true, |l| l == ".") {
                            break;
                        }
                    }
                    shared.lock().unwrap()[n].push(".".into());
                    messages += 1;
                    if !answers(messages - 1) {
                        lines.by_ref().for_each(drop);
                        break;
                    }
                    let _ = out.write_all(b"250 2.0.0 queued\r\n");
                }
            }
        }
    });
    Server { port, log }
}

impl Server {
    fn connections(&self) -> Vec<Vec<String>> {
        // The server thread may still be writing its log after our last read.
        std::thread::sleep(Duration::from_millis(50));
        self.log.lock().unwrap().clone()
    }
}

fn literal(rcpts: &[&str]) -> Job {
    job(Destination::Literal(Ipv4Addr::LOCALHOST.into()), rcpts)
}

#[test]
fn a_kept_connection_carries_jobs_until_its_share() {
    let s = server(|_| "250 ok");
    let ctx = context(s.port, 2);
    let mut cache = Cache::default();
    for _ in 0..3 {
        let a = deliver(&literal(&["b@d.test"]), &BODY, &ctx, &mut cache);
        assert!(
            matches!(a.results[..], [(0, RcptResult::Delivered { .. })]),
            "{:?}",
            a.results
        );
        assert_eq!(a.feedback, Feedback::Reached);
    }
    // Two messages on the first connection, then QUIT; the third on a new one, kept.
    assert!(!cache.is_empty());
    cache.expire(true);
    let conns = s.connections();
    assert_eq!(conns.len(), 2, "{conns:?}");
    let ehlos = |c: &[String]| c.iter().filter(|l| l.starts_with("EHLO")).count();
    assert_eq!(ehlos(&conns[0]), 1);
    assert_eq!(conns[0].iter().filter(|l| *l == "DATA").count(), 2);
    assert_eq!(conns[0].last().map(String::as_str), Some("QUIT"));
    assert_eq!(conns[1].last().map(String::as_str), Some("QUIT"));
}

#[test]
fn a_transaction_that_ended_early_closes_the_connection() {
    let s = server(|rcpt| {
        if rcpt.contains("bad") {
            "550 5.1.1 unknown"
        } else {
            "250 ok"
        }
    });
    let ctx = context(s.port, 100);
    let mut cache = Cache::default();
    let a = deliver(&literal(&["bad@d.test"]), &BODY, &ctx, &mut cache);
    assert!(
        matches!(&a.results[..], [(0, RcptResult::Failed { status, .. })] if status == "5.1.1"),
        "{:?}",
        a.results
    );
    assert!(cache.is_empty());
    let conns = s.connections();
    let want = [
        "EHLO relay.test",
        "MAIL FROM:<a@src.test>",
        "RCPT TO:<bad@d.test>",
        "DATA",
        "QUIT",
    ];
    assert_eq!(conns, [want.map(String::from).to_vec()]);
}

#[test]
fn mx_hosts_are_tried_in_order_of_preference() {
    let s = server(|_| "250 ok");
    let ctx = context(s.port, 1);
    let mut cache = Cache::default();
    let a = deliver(
        &job(Destination::Mx("d.test".into()), &["b@d.test"]),
        &BODY,
        &ctx,
        &mut cache,
    );
    // down.test (preference 10) refuses the connection; up.test takes the message.
    let relay = format!("up.test[127.0.0.1]:{}", s.port);
    assert!(
        matches!(&a.results[..], [(0, RcptResult::Delivered { relay: r, tls: false, .. })] if *r == relay),
        "{:?}",
        a.results
    );
    assert_eq!(a.mx_site.as_deref(), Some("mx down.test,up.test"));
    assert_eq!(s.connections().len(), 1);
    // Nobody answers at all: deferred, and the site looks unreachable.
    let ctx = context(1, 1);
    let a = deliver(
        &job(Destination::Mx("d.test".into()), &["b@d.test"]),
        &BODY,
        &ctx,
        &mut cache,
    );
    assert!(matches!(a.results[..], [(0, RcptResult::Deferred { .. })]));
    assert_eq!(a.feedback, Feedback::Unreachable);
    assert!(a.error.starts_with("connect to up.test"), "{}", a.error);
}

/// A job whose end of data went out without a verdict coming back is deferred at once: no
/// fresh connection (for a kept one) and no other host gets it in the same attempt, since
/// the next hop may have taken it.
#[test]
fn no_verdict_after_the_end_of_data_defers_without_sending_again() {
    let once = |n: usize| n == 0;
    let s = server_on("127.0.0.1:0", |_| "250 ok", once);
    let mut ctx = context(s.port, 100);
    ctx.cfg.delivery_timeout = Some(Duration::from_millis(500));
    let mut cache = Cache::default();
    let a = deliver(&literal(&["b@d.test"]), &BODY, &ctx, &mut cache);
    assert!(matches!(a.results[..], [(0, RcptResult::Delivered { .. })]));
    assert!(!cache.is_empty());
    // The second message goes over the kept connection, and its end of data is never
    // answered.
    let a = deliver(&literal(&["c@d.test"]), &BODY, &ctx, &mut cache);
    assert!(
        matches!(&a.results[..], [(0, RcptResult::Deferred { reason })] if reason.contains("timed out")),
        "{:?}",
        a.results
    );
    assert_eq!(a.feedback, Feedback::Throttled);
    assert!(cache.is_empty());
    let conns = s.connections();
    assert_eq!(
        conns.len(),
        1,
        "not sent again on a fresh connection: {conns:?}"
    );
    assert_eq!(conns[0].iter().filter(|l| *l == ".").count(), 2);

    // MX delivery: the first host (down.test, 127.0.0.2) never answers the end of data; the
    // second (up.test) is not tried.
    let up = server(|_| "250 ok");
    let down = server_on(&format!("127.0.0.2:{}", up.port), |_| "250 ok", |_| false);
    let mut ctx = context(up.port, 100);
    ctx.cfg.delivery_timeout = Some(Duration::from_millis(500));
    let a = deliver(
        &job(Destination::Mx("d.test".into()), &["b@d.test"]),
        &BODY,
        &ctx,
        &mut cache,
    );
    assert!(
        matches!(&a.results[..], [(0, RcptResult::Deferred { reason })] if reason.contains("down.test")),
        "{:?}",
        a.results
    );
    assert_eq!(a.mx_site.as_deref(), Some("mx down.test,up.test"));
    assert_eq!(down.connections().len(), 1);
    assert!(up.connections().is_empty(), "{:?}", up.connections());
}
