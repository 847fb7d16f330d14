//! End-to-end delivery: the real binary between a test client and recording sinks, with a
//! fake DNS server answering MX/A queries. Everything stays on 127.x addresses.

mod support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::dns::FakeDns;
use support::sink::{Message, Script, Sink};
use support::{Relay, TempDir, WAIT, queue_id, sink_on, submit, submit_numbered, wait_until};

const MSG: &[u8] =
    b"From: a@client.test\r\nTo: b@example.test\r\nSubject: hello\r\n\r\nHello there.\r\n";

/// A fake DNS plus a sink that serves as the MX of every domain registered with `domain`.
struct Mx {
    dns: FakeDns,
    sink: Sink,
}

impl Mx {
    fn new(script: Script) -> Mx {
        let sink = sink_on("127.0.0.2", 0, script);
        Mx {
            dns: FakeDns::start(),
            sink,
        }
    }

    fn domain(&self, d: &str) -> &Self {
        let host = format!("mx.{d}");
        self.dns
            .mx(d, &[(10, &host)])
            .a(&host, Ipv4Addr::new(127, 0, 0, 2));
        self
    }

    fn relay(&self, spool: &TempDir, extra: &[&str]) -> Relay {
        let mut args = vec![
            "--retry",
            "1s",
            "--delivery-timeout",
            "5s",
            "--connect-timeout",
            "2s",
        ];
        args.extend_from_slice(extra);
        Relay::via_dns(&self.dns, self.sink.addr.port(), spool.path(), &args)
    }
}

fn body_after_received(m: &Message) -> Vec<u8> {
    let text = &m.data;
    assert!(
        text.starts_with(
            b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test (mxrelay) with ESMTP id "
        ),
        "{}",
        String::from_utf8_lossy(text)
    );
    // The header ends at the first line break not followed by a continuation tab.
    let end = text
        .windows(3)
        .position(|w| &w[..2] == b"\r\n" && w[2] != b'\t')
        .unwrap();
    text[end + 2..].to_vec()
}

#[test]
fn delivers_through_a_smarthost() {
    let sink = sink_on("127.0.0.3", 0, Script::default());
    let spool = TempDir::new("smarthost");
    let relay = Relay::via(&sink, spool.path(), &[]);
    let reply = submit(
        relay.addr,
        "a@client.test",
        &["b@example.test", "c@other.test"],
        MSG,
    );
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let msgs = sink.wait_for(1, WAIT);
    assert_eq!(
        msgs.len(),
        1,
        "one transaction carries every recipient for the smarthost"
    );
    assert_eq!(msgs[0].rcpts, ["b@example.test", "c@other.test"]);
    assert!(msgs[0].mail_from.starts_with("<a@client.test>"));
    assert_eq!(body_after_received(&msgs[0]), MSG);
    let id = queue_id(&reply);
    relay.wait_log(&format!("{id}: removed"));
    assert!(wait_until(WAIT, || relay.queued() == 0));
}

#[test]
fn falls_back_to_the_second_mx() {
    // mx1 (127.0.0.4) has nothing listening on the sink's port: connection refused.
    let sink = sink_on("127.0.0.5", 0, Script::default());
    let dns = FakeDns::start();
    dns.mx(
        "example.test",
        &[(20, "mx2.example.test"), (10, "mx1.example.test")],
    )
    .a("mx1.example.test", Ipv4Addr::new(127, 0, 0, 4))
    .a("mx2.example.test", Ipv4Addr::new(127, 0, 0, 5));
    let spool = TempDir::new("mxfallback");
    let relay = Relay::via_dns(
        &dns,
        sink.addr.port(),
        spool.path(),
        &["--connect-timeout", "2s"],
    );
    submit(relay.addr, "a@client.test", &["b@example.test"], MSG);
    let msgs = sink.wait_for(1, WAIT);
    assert_eq!(msgs[0].rcpts, ["b@example.test"]);
    relay.wait_log("relay=mx2.example.test[127.0.0.5]");
    let log = relay.log();
    assert!(
        log.contains("mx1.example.test[127.0.0.4]"),
        "mx1 was tried first:\n{log}"
    );
}

#[test]
fn temporary_failure_then_success() {
    let tries = Arc::new(AtomicUsize::new(0));
    let t = tries.clone();
    let mx = Mx::new(Script::default().data(move |_| {
        if t.fetch_add(1, Ordering::SeqCst) == 0 {
            "451 4.3.0 try again".into()
        } else {
            "250 2.0.0 ok".into()
        }
    }));
    mx.domain("example.test");
    let spool = TempDir::new("tempfail");
    let relay = mx.relay(&spool, &[]);
    let id = queue_id(&submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        MSG,
    ));
    let msgs = mx.sink.wait_for(1, WAIT);
    assert_eq!(msgs.len(), 1);
    relay.wait_log(&format!("{id}: removed"));
    let log = relay.log();
    assert!(
        log.contains(&format!("{id}: deferred to=<b@example.test>"))
            && log.contains("451 4.3.0 try again"),
        "{log}"
    );
    assert!(
        log.contains(&format!("{id}: deferred, attempt 1 failed, next try in")),
        "{log}"
    );
    assert_eq!(tries.load(Ordering::SeqCst), 2);
}

fn dsns(sink: &Sink) -> Vec<Message> {
    sink.messages()
        .into_iter()
        .filter(|m| m.mail_from.starts_with("<>"))
        .collect()
}

#[test]
fn permanent_failure_sends_a_dsn_to_the_sender() {
    let mx = Mx::new(
        Script::default().refuse_rcpt("nobody", "550 5.1.1 <nobody@example.test>: user unknown"),
    );
    mx.domain("example.test").domain("client.test");
    let spool = TempDir::new("bounce");
    let relay = mx.relay(&spool, &[]);
    let id = queue_id(&submit(
        relay.addr,
        "alice@client.test",
        &["nobody@example.test"],
        MSG,
    ));
    assert!(
        wait_until(WAIT, || dsns(&mx.sink).len() == 1),
        "no DSN:\n{}",
        relay.log()
    );
    let dsn = &dsns(&mx.sink)[0];
    assert_eq!(dsn.rcpts, ["alice@client.test"]);
    let text = String::from_utf8_lossy(&dsn.data);
    for want in [
        "multipart/report; report-type=delivery-status",
        "Final-Recipient: rfc822; nobody@example.test",
        "Action: failed",
        "Status: 5.1.1",
        "Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.test>: user unknown",
        "Remote-MTA: dns; mx.example.test\r\n",
        "text/rfc822-headers",
        "Subject: hello",
        &id,
    ] {
        assert!(text.contains(want), "DSN lacks {want:?}:\n{text}");
    }
    relay.wait_log(&format!("{id}: removed"));
    // The DSN itself was delivered and removed too.
    assert!(wait_until(WAIT, || relay.queued() == 0), "{}", relay.log());
}

#[test]
fn mixed_results_retry_only_the_pending_recipient() {
    let tmp_tries = Arc::new(AtomicUsize::new(0));
    let t = tmp_tries.clone();
    let mx = Mx::new(Script::default().rcpt(move |a| {
        if a.starts_with("bad") {
            "550 5.1.1 no such user".into()
        } else if a.starts_with("later") && t.fetch_add(1, Ordering::SeqCst) == 0 {
            "450 4.2.1 mailbox busy".into()
        } else {
            "250 2.1.5 ok".into()
        }
    }));
    mx.domain("example.test").domain("client.test");
    let spool = TempDir::new("mixed");
    let relay = mx.relay(&spool, &[]);
    let id = queue_id(&submit(
        relay.addr,
        "a@client.test",
        &["ok@example.test", "later@example.test", "bad@example.test"],
        MSG,
    ));
    relay.wait_log(&format!("{id}: removed"));
    let delivered: Vec<Vec<String>> = mx
        .sink
        .messages()
        .into_iter()
        .filter(|m| !m.mail_from.starts_with("<>"))
        .map(|m| m.rcpts)
        .collect();
    assert_eq!(
        delivered,
        vec![
            vec!["ok@example.test".to_string()],
            vec!["later@example.test".to_string()]
        ]
    );
    let rcpt_cmds: Vec<String> = mx
        .sink
        .commands()
        .into_iter()
        .filter(|c| c.starts_with("RCPT"))
        .collect();
    assert_eq!(
        rcpt_cmds.iter().filter(|c| c.contains("ok@")).count(),
        1,
        "ok@ was not retried: {rcpt_cmds:?}"
    );
    assert_eq!(
        rcpt_cmds.iter().filter(|c| c.contains("bad@")).count(),
        1,
        "bad@ was not retried: {rcpt_cmds:?}"
    );
    assert!(wait_until(WAIT, || dsns(&mx.sink).len() == 1));
    let dsn = String::from_utf8_lossy(&dsns(&mx.sink)[0].data).into_owned();
    assert!(
        dsn.contains("bad@example.test") && !dsn.contains("Final-Recipient: rfc822; ok@"),
        "{dsn}"
    );
}

#[test]
fn one_transaction_per_domain_for_150_recipients() {
    let mx = Mx::new(Script::default());
    mx.domain("one.test")
        .domain("two.test")
        .domain("three.test");
    let spool = TempDir::new("150");
    let relay = mx.relay(&spool, &[]);
    let rcpts: Vec<String> = (0..150)
        .map(|i| format!("user{i}@{}", ["one.test", "two.test", "three.test"][i % 3]))
        .collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let id = queue_id(&submit(relay.addr, "a@client.test", &refs, MSG));
    let msgs = mx.sink.wait_for(3, WAIT);
    assert_eq!(msgs.len(), 3);
    for m in &msgs {
        assert_eq!(m.rcpts.len(), 50);
        let domain = m.rcpts[0].split('@').nth(1).unwrap();
        assert!(
            m.rcpts.iter().all(|r| r.ends_with(domain)),
            "one domain per transaction"
        );
    }
    relay.wait_log(&format!("{id}: removed"));
}

#[test]
fn dot_stuffed_body_arrives_byte_exact() {
    let mx = Mx::new(Script::default());
    mx.domain("example.test");
    let spool = TempDir::new("dots");
    let relay = mx.relay(&spool, &[]);
    let content: &[u8] = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n \t trailing space \r\n\xc3\xa9t\xc3\xa9\r\n\r\n";
    // What the client puts on the wire: every leading dot doubled.
    let mut wire = Vec::new();
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    submit(relay.addr, "a@client.test", &["b@example.test"], &wire);
    let m = &mx.sink.wait_for(1, WAIT)[0];
    assert_eq!(body_after_received(m), content);
    let raw = String::from_utf8_lossy(&m.raw_data);
    assert!(
        raw.contains("\r\n..\r\n...\r\n..leading\r\n"),
        "stuffed on the wire: {raw:?}"
    );
    assert!(m.mail_from.contains("BODY=8BITMIME"), "{}", m.mail_from);
}

#[test]
fn client_pipelines_when_offered_and_not_otherwise() {
    for pipelining in [true, false] {
        let kw: &[&str] = if pipelining {
            &["PIPELINING", "8BITMIME"]
        } else {
            &["8BITMIME"]
        };
        let mx = Mx::new(Script::default().keywords(kw));
        mx.domain("example.test");
        let spool = TempDir::new("pipe");
        let relay = mx.relay(&spool, &[]);
        submit(
            relay.addr,
            "a@client.test",
            &["b@example.test", "c@example.test"],
            MSG,
        );
        mx.sink.wait_for(1, WAIT);
        // The sink records, per command, how many commands were already waiting in its buffer.
        let batches = mx.sink.batches();
        let mail_batch = batches
            .iter()
            .find(|b| b[0].starts_with("MAIL"))
            .expect("MAIL sent");
        if pipelining {
            assert_eq!(
                mail_batch.len(),
                4,
                "MAIL, 2x RCPT and DATA in one write: {batches:?}"
            );
            assert_eq!(mail_batch[3], "DATA");
        } else {
            assert_eq!(mail_batch.len(), 1, "one command per write: {batches:?}");
        }
    }
}

#[test]
fn null_mx_and_nxdomain_bounce_at_once_servfail_defers() {
    let mx = Mx::new(Script::default());
    mx.domain("client.test");
    mx.dns.null_mx("nullmx.test");
    mx.dns.servfail("broken.test");
    let spool = TempDir::new("dnsfail");
    let relay = mx.relay(&spool, &[]);
    submit(
        relay.addr,
        "a@client.test",
        &["x@nullmx.test", "y@nxdomain.test", "z@broken.test"],
        MSG,
    );
    assert!(
        wait_until(WAIT, || !dsns(&mx.sink).is_empty()),
        "{}",
        relay.log()
    );
    let dsn = String::from_utf8_lossy(&dsns(&mx.sink)[0].data).into_owned();
    assert!(
        dsn.contains("Final-Recipient: rfc822; x@nullmx.test") && dsn.contains("Status: 5.1.10"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; y@nxdomain.test") && dsn.contains("Status: 5.1.2"),
        "{dsn}"
    );
    assert!(
        !dsn.contains("z@broken.test"),
        "SERVFAIL is temporary: {dsn}"
    );
    relay.wait_log("deferred to=<z@broken.test>");
    assert!(
        wait_until(WAIT, || relay.queued() == 1),
        "the SERVFAIL recipient stays queued"
    );
}

#[test]
fn expired_mail_bounces_with_4_4_7() {
    let mx = Mx::new(Script::default().refuse_rcpt("slow", "451 4.4.1 not now"));
    mx.domain("example.test").domain("client.test");
    let spool = TempDir::new("expire");
    let relay = mx.relay(&spool, &["--max-queue-lifetime", "2s"]);
    let id = queue_id(&submit(
        relay.addr,
        "a@client.test",
        &["slow@example.test"],
        MSG,
    ));
    assert!(
        wait_until(WAIT, || dsns(&mx.sink).len() == 1),
        "{}",
        relay.log()
    );
    let dsn = String::from_utf8_lossy(&dsns(&mx.sink)[0].data).into_owned();
    assert!(
        dsn.contains("Status: 4.4.7")
            && dsn.contains("Diagnostic-Code: X-mxrelay; message expired after")
            && dsn.contains("451 4.4.1 not now"),
        "{dsn}"
    );
    relay.wait_log(&format!("{id}: expired"));
}

#[test]
fn null_sender_is_never_bounced_but_copied_to_the_postmaster() {
    let mx = Mx::new(Script::default().refuse_rcpt("gone", "550 5.1.1 gone"));
    mx.domain("example.test").domain("admin.test");
    let spool = TempDir::new("nullsender");
    let relay = mx.relay(&spool, &["--postmaster", "pm@admin.test"]);
    let id = queue_id(&submit(relay.addr, "", &["gone@example.test"], MSG));
    relay.wait_log(&format!("{id}: null sender, not bounced"));
    let copies = mx.sink.wait_for(1, WAIT);
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].rcpts, ["pm@admin.test"]);
    assert!(copies[0].mail_from.starts_with("<>"));
    // A double bounce that fails is dropped, not bounced again.
    mx.sink
        .set_script(Script::default().rcpt(|_| "550 5.1.1 nobody here".into()));
    let id2 = queue_id(&submit(relay.addr, "", &["gone@example.test"], MSG));
    relay.wait_log(&format!("{id2}: null sender, not bounced"));
    relay.wait_log("undeliverable double bounce dropped");
    assert!(wait_until(WAIT, || relay.queued() == 0));
}

#[test]
fn eight_bit_mail_to_a_hop_without_8bitmime_bounces() {
    let mx = Mx::new(Script::default().keywords(&["PIPELINING"]));
    mx.domain("example.test").domain("client.test");
    let spool = TempDir::new("8bit");
    let relay = mx.relay(&spool, &[]);
    submit(
        relay.addr,
        "a@client.test",
        &["b@example.test"],
        "Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n".as_bytes(),
    );
    // The 7-bit DSN gets through; the 8-bit message never does.
    assert!(
        wait_until(WAIT, || dsns(&mx.sink).len() == 1),
        "{}",
        relay.log()
    );
    let dsn = String::from_utf8_lossy(&dsns(&mx.sink)[0].data).into_owned();
    assert!(
        dsn.contains("Status: 5.6.3") && dsn.contains("8BITMIME"),
        "{dsn}"
    );
    // Our own verdict about the next hop, not a reply of its own.
    assert!(dsn.contains("Diagnostic-Code: X-mxrelay; "), "{dsn}");
    assert!(!dsn.contains("Diagnostic-Code: smtp;"), "{dsn}");
    assert_eq!(mx.sink.messages().len(), 1);
}

#[test]
fn smtputf8_address_needs_smtputf8_at_the_next_hop() {
    let mx = Mx::new(Script::default());
    mx.domain("example.test");
    let spool = TempDir::new("utf8");
    let relay = mx.relay(&spool, &[]);
    let mut c = support::Client::connect(relay.addr);
    c.reply();
    c.cmd("EHLO client.test");
    assert!(
        c.cmd("MAIL FROM:<j\u{f6}rg@client.test> SMTPUTF8")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    let m = &mx.sink.wait_for(1, WAIT)[0];
    assert!(
        m.mail_from.starts_with("<j\u{f6}rg@client.test>") && m.mail_from.contains("SMTPUTF8"),
        "{}",
        m.mail_from
    );
    assert!(String::from_utf8_lossy(&m.data).contains("with UTF8SMTP"));
}

#[test]
fn static_route_beats_mx() {
    let routed = sink_on("127.0.0.6", 0, Script::default());
    let mx = Mx::new(Script::default());
    mx.domain("example.test").domain("routed.test");
    let spool = TempDir::new("route");
    let relay = mx.relay(
        &spool,
        &["--route", &format!("routed.test={}", routed.addr)],
    );
    submit(
        relay.addr,
        "a@client.test",
        &["x@routed.test", "y@example.test"],
        MSG,
    );
    assert_eq!(routed.wait_for(1, WAIT)[0].rcpts, ["x@routed.test"]);
    assert_eq!(mx.sink.wait_for(1, WAIT)[0].rcpts, ["y@example.test"]);
}

#[test]
fn ipv6_listener_trusted_network_and_aaaa_mx() {
    let sink = match Sink::start("::1", 0, Script::default()) {
        Ok(s) => s,
        Err(e) => panic!("IPv6 loopback is needed for this test: {e}"),
    };
    let dns = FakeDns::start();
    dns.mx("example.test", &[(10, "mx6.example.test")])
        .aaaa("mx6.example.test", "::1".parse().unwrap());
    let spool = TempDir::new("ipv6");
    let relay = Relay::via_dns(
        &dns,
        sink.addr.port(),
        spool.path(),
        &["--listen", "[::1]:0"],
    );
    assert!(relay.addr.is_ipv6());
    let reply = submit(relay.addr, "a@client.test", &["b@example.test"], MSG);
    assert!(reply.starts_with("250"), "{reply}");
    let m = &sink.wait_for(1, WAIT)[0];
    assert!(String::from_utf8_lossy(&m.data).contains("([IPv6:::1])"));
    relay.wait_log("relay=mx6.example.test[::1]");
}

#[test]
fn helo_fallback_when_the_next_hop_lacks_ehlo() {
    let mx = Mx::new(Script::default().no_ehlo());
    mx.domain("example.test");
    let spool = TempDir::new("helo");
    let relay = mx.relay(&spool, &[]);
    submit(relay.addr, "a@client.test", &["b@example.test"], MSG);
    let m = &mx.sink.wait_for(1, WAIT)[0];
    assert_eq!(m.helo, "relay.test");
    let cmds = mx.sink.commands();
    assert!(
        cmds.iter().any(|c| c == "EHLO relay.test") && cmds.iter().any(|c| c == "HELO relay.test"),
        "{cmds:?}"
    );
    assert!(
        m.mail_from.trim_end() == "<a@client.test>",
        "no ESMTP parameters after HELO: {}",
        m.mail_from
    );
}

#[test]
fn a_4xx_greeting_moves_on_to_the_next_mx() {
    let busy = sink_on(
        "127.0.0.9",
        0,
        Script::default().greeting(|| "421 4.3.2 too busy".into()),
    );
    let good = sink_on("127.0.0.10", busy.addr.port(), Script::default());
    let dns = FakeDns::start();
    dns.mx(
        "example.test",
        &[(10, "busy.example.test"), (20, "good.example.test")],
    )
    .a("busy.example.test", Ipv4Addr::new(127, 0, 0, 9))
    .a("good.example.test", Ipv4Addr::new(127, 0, 0, 10));
    let spool = TempDir::new("greet4xx");
    let relay = Relay::via_dns(&dns, busy.addr.port(), spool.path(), &[]);
    submit(relay.addr, "a@client.test", &["b@example.test"], MSG);
    good.wait_for(1, WAIT);
    assert_eq!(busy.connections(), 1);
    assert!(busy.messages().is_empty());
}

#[test]
fn next_hop_size_limit_bounces_with_5_3_4() {
    let mx = Mx::new(Script::default().keywords(&["PIPELINING", "8BITMIME", "SIZE 3000"]));
    mx.domain("example.test").domain("client.test");
    let spool = TempDir::new("size");
    let relay = mx.relay(&spool, &[]);
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.extend(
        std::iter::repeat_n(
            b"0123456789012345678901234567890123456789\r\n".as_slice(),
            100,
        )
        .flatten(),
    );
    submit(relay.addr, "a@client.test", &["b@example.test"], &big);
    assert!(
        wait_until(WAIT, || dsns(&mx.sink).len() == 1),
        "{}",
        relay.log()
    );
    let dsn = String::from_utf8_lossy(&dsns(&mx.sink)[0].data).into_owned();
    assert!(
        dsn.contains("Status: 5.3.4") && dsn.contains("limit of 3000 bytes"),
        "{dsn}"
    );
    assert!(
        !mx.sink
            .commands()
            .iter()
            .any(|c| c.starts_with("MAIL FROM:<a@client.test>")),
        "never offered to the hop"
    );
}

#[test]
fn connections_to_the_next_hop_are_reused_then_closed_when_idle() {
    let sink = sink_on("127.0.0.20", 0, Script::default());
    let spool = TempDir::new("reuse");
    let relay = Relay::via(&sink, spool.path(), &["--workers", "1"]);
    for i in 0..3 {
        submit(
            relay.addr,
            "a@client.test",
            &[&format!("r{i}@example.test")],
            MSG,
        );
        sink.wait_for(i + 1, WAIT);
    }
    assert_eq!(
        sink.connections(),
        1,
        "one connection carried all three messages"
    );
    let cmds = sink.commands();
    assert_eq!(
        cmds.iter().filter(|c| c.starts_with("EHLO")).count(),
        1,
        "{cmds:?}"
    );
    assert_eq!(
        cmds.iter().filter(|c| c.starts_with("MAIL")).count(),
        3,
        "{cmds:?}"
    );
    // Idle for a while, the kept connection is closed politely.
    assert!(
        wait_until(WAIT, || sink.commands().iter().any(|c| c == "QUIT")),
        "{:?}",
        sink.commands()
    );
}

/// A next hop that misbehaves in the given way on every connection.
fn broken_hop(behaviour: &'static str) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.23:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let mut w = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                let mut line = String::new();
                let _ = match behaviour {
                    "garbage greeting" => w.write_all(b"hello there\r\n"),
                    "huge reply line" => {
                        w.write_all(format!("220 {}\r\n", "x".repeat(5000)).as_bytes())
                    }
                    "endless multiline" => (0..1000).try_for_each(|_| w.write_all(b"220-more\r\n")),
                    "close after ehlo" => w
                        .write_all(b"220 hi\r\n")
                        .and_then(|_| r.read_line(&mut line).map(|_| ())),
                    "silent after data" => {
                        let _ = w.write_all(b"220 hi\r\n");
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                break;
                            }
                            let cmd = line.to_ascii_uppercase();
                            let reply: &[u8] = if cmd.starts_with("EHLO") {
                                b"250 hi\r\n"
                            } else if cmd.starts_with("DATA") {
                                b"354 go\r\n"
                            } else if cmd.starts_with(".\r\n") {
                                // Never answer the end of data.
                                std::thread::sleep(std::time::Duration::from_secs(30));
                                b""
                            } else if cmd.starts_with("MAIL") || cmd.starts_with("RCPT") {
                                b"250 ok\r\n"
                            } else {
                                b""
                            };
                            let _ = w.write_all(reply);
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                };
            });
        }
    });
    addr
}

#[test]
fn a_misbehaving_next_hop_defers_and_nothing_else_happens() {
    for behaviour in [
        "garbage greeting",
        "huge reply line",
        "endless multiline",
        "close after ehlo",
        "silent after data",
    ] {
        let hop = broken_hop(behaviour);
        let spool = TempDir::new("broken");
        let relay = Relay::start(
            spool.path(),
            &[
                "--smarthost",
                &hop.to_string(),
                "--smarthost-tls",
                "none",
                "--retry",
                "1h",
                "--delivery-timeout",
                "1s",
            ],
        );
        let id = queue_id(&submit(
            relay.addr,
            "a@client.test",
            &["b@example.test"],
            MSG,
        ));
        relay.wait_log(&format!("{id}: deferred, attempt 1 failed"));
        let why = match behaviour {
            "garbage greeting" => "malformed reply",
            "huge reply line" => "over-long reply line",
            "endless multiline" => "malformed reply: TooLong",
            "close after ehlo" => "closed the connection",
            _ => "timed out",
        };
        let log = relay.log();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("{id}: deferred")) && l.contains(why)),
            "{behaviour}: want {why:?}:\n{log}"
        );
        // Still serving, still queued, no panic.
        assert!(
            submit(relay.addr, "a@client.test", &["c@example.test"], MSG).starts_with("250"),
            "{behaviour}"
        );
        assert!(relay.queued() >= 1, "{behaviour}");
        assert!(
            !relay.log().contains("panicked"),
            "{behaviour}: {}",
            relay.log()
        );
    }
}

#[test]
fn more_messages_than_the_workers_take_at_once_all_arrive_once() {
    // One worker, a slow next hop: the job queue (two jobs per worker) fills, and the
    // scheduler holds the rest back until the worker is free.
    let sink = sink_on("127.0.0.3", 0, Script::default().slow_greeting(150));
    let spool = TempDir::new("job-queue-full");
    let relay = Relay::via(&sink, spool.path(), &["--workers", "1"]);
    let ids = submit_numbered(relay.addr, 6, "n");
    for id in &ids {
        relay.wait_log(&format!("{id}: removed"));
    }
    let msgs = sink.messages();
    let mut subjects: Vec<String> = msgs
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data);
            text[text.find("Subject: ").unwrap()..]
                .lines()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    subjects.sort();
    let expected: Vec<String> = (0..6).map(|i| format!("Subject: n{i}")).collect();
    assert_eq!(subjects, expected, "each message exactly once");
    assert!(wait_until(WAIT, || relay.queued() == 0));
}

#[test]
fn in_flow_control_holds_mail_back_until_delivery_catches_up() {
    // Every delivery takes 1.5 s (the next hop's reply to the end of data), and only one
    // message may wait at a destination known to be quick: the MAIL after two more waits for
    // a delivery to end.
    let slow_data = Script::default().data(|_| {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        "250 2.0.0 ok".into()
    });
    let sink = sink_on("127.0.0.3", 0, slow_data);
    let spool = TempDir::new("in-flow");
    let relay = Relay::via(
        &sink,
        spool.path(),
        &[
            "--workers",
            "1",
            "--in-flow-backlog",
            "1",
            "--in-flow-delay",
            "30s",
        ],
    );
    let send = |i: usize| {
        let body = format!("Subject: n{i}\r\n\r\nx\r\n");
        submit(
            relay.addr,
            "a@client.test",
            &["b@example.test"],
            body.as_bytes(),
        )
    };
    // The first shows how long a delivery there takes; a destination not heard from yet
    // does not hold clients back.
    send(0);
    sink.wait_for(1, WAIT);
    send(1);
    send(2);
    // The third waits at its destination for the one worker (the scheduler queues it
    // there): two messages at a quick destination, one more than the backlog.
    relay.wait_log("attempt 1 in 1 jobs\n");
    assert!(!relay.log().contains("in-flow delay"), "{}", relay.log());
    let mut c = support::Client::connect(relay.addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let start = std::time::Instant::now();
    assert_eq!(c.cmd("MAIL FROM:<a@client.test>"), "250 2.1.0 Sender ok");
    let waited = start.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(500) && waited < WAIT,
        "MAIL answered after {waited:?}"
    );
    relay.wait_log("in-flow delay for [127.0.0.1]: MAIL held back");
    assert!(c.cmd("RCPT TO:<b@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: n3\r\n\r\nx\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as"));
    assert_eq!(sink.wait_for(4, WAIT).len(), 4, "all four delivered");
}
