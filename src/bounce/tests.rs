//! Tests of the DSN: who gets it, its structure and fields, and that hostile input stays harmless.

use super::report::{MAX_DIAGNOSTIC, mta_name};
use super::wire::{MAX_LINE, quoted_printable};
use super::*;

#[test]
fn reports_go_to_the_sender_the_postmaster_or_nobody() {
    let mut env = Envelope::sample("0006452A1B2C3D4E-0001", &["x@y.test"]);
    let table = [
        (
            Kind::Message,
            "a@client.test",
            Addressee::Sender("a@client.test".into()),
        ),
        (
            Kind::Message,
            "",
            Addressee::Postmaster("pm@relay.test".into()),
        ),
        (
            Kind::Bounce,
            "",
            Addressee::Postmaster("pm@relay.test".into()),
        ),
        (Kind::DoubleBounce, "", Addressee::Nobody),
    ];
    for (kind, sender, want) in table {
        env.kind = kind;
        env.sender = sender.into();
        assert_eq!(
            addressee(&env, "pm@relay.test"),
            want,
            "{kind:?} from <{sender}>"
        );
    }
    let to = "pöstmaster@relay.test";
    let dsn = envelope(
        "0006452A1B2C3D4E-0002".into(),
        to,
        true,
        "relay.test",
        "é".as_bytes(),
        7,
    );
    assert_eq!(dsn.kind, Kind::DoubleBounce);
    assert!(dsn.sender.is_empty(), "from the null sender");
    assert_eq!((dsn.size, dsn.received), (2, 7));
    assert!(dsn.eight_bit && dsn.smtputf8);
    assert_eq!(dsn.recipients[0].address, "pöstmaster@relay.test");
}

#[test]
fn quoted_printable_table() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"plain\r\n", b"plain\r\n"),
        (b"Subject: caf\xc3\xa9\r\n", b"Subject: caf=C3=A9\r\n"),
        (b"a=b \r\nend\t\r\n", b"a=3Db=20\r\nend=09\r\n"),
    ];
    for (input, want) in cases {
        assert_eq!(
            quoted_printable(input),
            *want,
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
    let long = quoted_printable(&[0xffu8; 100]);
    assert!(
        long.split(|&b| b == b'\n').all(|l| l.len() <= 77),
        "{}",
        String::from_utf8_lossy(&long)
    );
}
use proptest::prelude::*;
use std::time::{Duration, UNIX_EPOCH};

const NOW: u64 = 1_795_707_297; // Thu, 26 Nov 2026 15:34:57 +0000
const HEADERS: &[u8] = b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n\
    Subject: hello\r\n  world\r\nMessage-ID: <m1@example.org>\r\n";

fn rcpt(
    address: &str,
    status: &str,
    mta: Option<&str>,
    diag: Option<Diagnostic>,
) -> FailedRecipient {
    FailedRecipient {
        address: address.into(),
        status: status.into(),
        remote_mta: mta.map(Into::into),
        diagnostic: diag,
    }
}

fn smtp(reply: &str) -> Option<Diagnostic> {
    Some(Diagnostic::Smtp(reply.into()))
}

fn local(reason: &str) -> Option<Diagnostic> {
    Some(Diagnostic::Local(reason.into()))
}

fn two() -> Vec<FailedRecipient> {
    vec![
        rcpt(
            "bob@example.net",
            "5.1.1",
            Some("mx.example.net[192.0.2.1]:25"),
            smtp("550-5.1.1 <bob@example.net>: user unknown\n550 5.1.1 see https://example.net/"),
        ),
        rcpt(
            "carol@example.com",
            "4.4.7",
            None,
            local("message expired after 5d"),
        ),
    ]
}

fn bounce(headers: &[u8], failed: &[FailedRecipient], unique: &str) -> String {
    bounce_to("alice@example.org", headers, failed, unique)
}

fn bounce_to(sender: &str, headers: &[u8], failed: &[FailedRecipient], unique: &str) -> String {
    let original = Original {
        queue_id: "Q1234",
        sender,
        arrival: UNIX_EPOCH + Duration::from_secs(NOW - 5 * 86_400),
        headers,
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let out = build(
        "relay.example.org",
        "postmaster@example.org",
        &original,
        failed,
        now,
        unique,
    );
    String::from_utf8(out).expect("test inputs are UTF-8")
}

/// (top-level headers, boundary, [(part headers, part body)]) of a well-formed output.
fn split(msg: &str) -> (String, String, Vec<(String, String)>) {
    let (head, body) = msg.split_once("\r\n\r\n").unwrap();
    let boundary = head
        .rsplit("boundary=\"")
        .next()
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let delimiter = format!("\r\n--{boundary}");
    let (rest, epilogue) = body.rsplit_once(&format!("{delimiter}--")).unwrap();
    assert_eq!(epilogue, "\r\n");
    let parts = rest.split(&delimiter).skip(1).map(|p| {
        let (h, b) = p
            .strip_prefix("\r\n")
            .unwrap()
            .split_once("\r\n\r\n")
            .unwrap();
        (h.to_string(), b.to_string())
    });
    (head.to_string(), boundary.to_string(), parts.collect())
}

fn assert_wire_safe(msg: &[u8]) {
    assert!(msg.ends_with(b"\r\n"));
    assert!(!msg.contains(&0));
    for (i, &b) in msg.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(msg.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && msg[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    for line in msg.split(|&b| b == b'\n') {
        assert!(line.len() <= MAX_LINE + 1, "line of {} bytes", line.len());
    }
}

/// Every header line in `block` starts a known field or continues the previous one.
fn assert_only_fields(block: &str, known: &[&str]) {
    for line in block.split("\r\n").filter(|l| !l.is_empty()) {
        let ok = line.starts_with(' ')
            || known
                .iter()
                .any(|k| line.split_once(':').is_some_and(|(n, _)| n == *k));
        assert!(ok, "unexpected line {line:?}");
    }
}

const TOP_FIELDS: &[&str] = &[
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Auto-Submitted",
    "MIME-Version",
    "Content-Type",
];
const DSN_FIELDS: &[&str] = &[
    "Reporting-MTA",
    "X-Mxrelay-Queue-ID",
    "Arrival-Date",
    "Final-Recipient",
    "Action",
    "Status",
    "Remote-MTA",
    "Diagnostic-Code",
    "Last-Attempt-Date",
];

#[test]
fn structure() {
    let msg = bounce(HEADERS, &two(), "Q1234.1795707297");
    let (head, boundary, parts) = split(&msg);
    assert_eq!(boundary, "=_Q1234.1795707297");
    assert!(head.starts_with(
        "From: Mail Delivery System <MAILER-DAEMON@relay.example.org>\r\n\
         To: <alice@example.org>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: Thu, 26 Nov 2026 15:34:57 +0000\r\n\
         Message-ID: <Q1234.1795707297@relay.example.org>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=\""
    ));
    assert_only_fields(&head, TOP_FIELDS);
    let delimiters: Vec<&str> = msg.lines().filter(|l| l.contains(&boundary)).collect();
    let b = format!("--{boundary}");
    assert_eq!(delimiters[1..], [&b, &b, &b, &format!("{b}--")]);
    let types: Vec<&str> = parts
        .iter()
        .map(|(h, _)| h.lines().next().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "Content-Type: text/plain; charset=us-ascii",
            "Content-Type: message/delivery-status",
            "Content-Type: text/rfc822-headers",
        ]
    );
    let text = &parts[0].1;
    for needle in [
        "Q1234",
        "<bob@example.net>",
        "550 5.1.1 see",
        "Remote server: mx.example.net[192.0.2.1]:25",
        "<carol@example.com>",
        "message expired after 5d",
        "postmaster@example.org",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert_eq!(parts[2].1.as_bytes(), HEADERS);
    assert!(msg.ends_with(&format!("\r\n\r\n--{boundary}--\r\n")));
}

#[test]
fn per_recipient_fields() {
    let msg = bounce(HEADERS, &two(), "u1");
    let (_, _, parts) = split(&msg);
    assert_eq!(
        parts[1].1,
        "Reporting-MTA: dns; relay.example.org\r\n\
         X-Mxrelay-Queue-ID: Q1234\r\n\
         Arrival-Date: Sat, 21 Nov 2026 15:34:57 +0000\r\n\
         \r\n\
         Final-Recipient: rfc822; bob@example.net\r\n\
         Action: failed\r\n\
         Status: 5.1.1\r\n\
         Remote-MTA: dns; mx.example.net\r\n\
         Diagnostic-Code: smtp; 550-5.1.1 <bob@example.net>: user unknown\r\n \
         550 5.1.1 see https://example.net/\r\n\
         Last-Attempt-Date: Thu, 26 Nov 2026 15:34:57 +0000\r\n\
         \r\n\
         Final-Recipient: rfc822; carol@example.com\r\n\
         Action: failed\r\n\
         Status: 4.4.7\r\n\
         Diagnostic-Code: X-mxrelay; message expired after 5d\r\n\
         Last-Attempt-Date: Thu, 26 Nov 2026 15:34:57 +0000\r\n"
    );
}

#[test]
fn header_injection_adds_no_field() {
    let failed = [rcpt(
        "eve@example.com\r\nBcc: a@evil",
        "5.1.1\r\nBcc: b@evil",
        Some("mx\nBcc: c@evil"),
        smtp("550 no\r\nBcc: x@y\r\n\r\nInjected body\n\rBcc: z@evil"),
    )];
    let msg = bounce(HEADERS, &failed, "u\r\nBcc: d@evil");
    assert_wire_safe(msg.as_bytes());
    assert!(!msg.lines().any(|l| l.starts_with("Bcc:")), "{msg}");
    let (head, _, parts) = split(&msg);
    assert_only_fields(&head, TOP_FIELDS);
    assert_eq!(parts.len(), 3);
    for block in parts[1].1.split("\r\n\r\n") {
        assert_only_fields(block, DSN_FIELDS);
    }
    assert!(parts[1].1.contains("Status: 5.0.0\r\n"));
    assert!(
        parts[1]
            .1
            .contains("Diagnostic-Code: smtp; 550 no\r\n Bcc: x@y\r\n Injected")
    );
}

#[test]
fn long_lines_are_folded() {
    let spaced: String = (0..400).map(|i| format!("w{i} ")).collect();
    let solid = "x".repeat(2500);
    let headers = format!("X-Spaced: {spaced}\r\nX-Solid: {solid}\r\nX-Short: y\r\n");
    let diag = format!("550 {}", "z".repeat(5000));
    let failed = [rcpt(
        &"r".repeat(1200),
        "5.1.1",
        Some(&"h".repeat(1100)),
        smtp(&diag),
    )];
    let msg = bounce(headers.as_bytes(), &failed, "u1");
    assert_wire_safe(msg.as_bytes());
    let (_, _, parts) = split(&msg);
    let unfolded = parts[2].1.replace("\r\n ", " ");
    let spaced_line = unfolded
        .lines()
        .find(|l| l.starts_with("X-Spaced"))
        .unwrap();
    assert_eq!(
        spaced_line,
        format!("X-Spaced: {spaced}"),
        "folding at whitespace is lossless"
    );
    let solid_line = unfolded.lines().find(|l| l.starts_with("X-Solid")).unwrap();
    assert_eq!(solid_line.replace(' ', ""), format!("X-Solid:{solid}"));
    let code = parts[1].1.split("Diagnostic-Code: smtp; ").nth(1).unwrap();
    let code = code
        .split("\r\nLast-Attempt-Date")
        .next()
        .unwrap()
        .replace("\r\n", "");
    // Hard breaks inserted spaces, so compare without any.
    assert_eq!(
        code.replace(' ', ""),
        diag[..MAX_DIAGNOSTIC].replace(' ', "")
    );
}

#[test]
fn boundary_avoids_content() {
    let headers = b"X-A: --=_abc\r\nX-B: =_abc.2\r\n";
    let failed = [rcpt("a@b", "5.1.1", None, smtp("550 =_abc.1"))];
    let msg = bounce(headers, &failed, "abc");
    let (_, boundary, parts) = split(&msg);
    assert_eq!(boundary, "=_abc.3");
    assert_eq!(parts.len(), 3);
    assert!(
        parts
            .iter()
            .all(|(h, b)| !h.contains(&boundary) && !b.contains(&boundary))
    );
    let odd = bounce(HEADERS, &failed, "x y\"<>;\u{e9}");
    assert_eq!(split(&odd).1, "=_xy");
}

/// The `Diagnostic-Code:` line of the only recipient.
fn diagnostic_code(failed: FailedRecipient) -> String {
    let msg = bounce(HEADERS, &[failed], "u1");
    let report = split(&msg).2.swap_remove(1).1;
    let line = report.lines().find(|l| l.starts_with("Diagnostic-Code:"));
    line.expect("a Diagnostic-Code field").to_string()
}

#[test]
fn diagnostic_type_says_who_wrote_the_reason() {
    let relay = Some("mx.example.net[192.0.2.1]:25".to_string());
    let cases = [
        (
            FailedRecipient::failure(
                "a@x".into(),
                "5.1.1".into(),
                relay.clone(),
                "550 5.1.1 unknown".into(),
            ),
            "Diagnostic-Code: smtp; 550 5.1.1 unknown",
        ),
        (
            FailedRecipient::failure(
                "a@x".into(),
                "5.1.2".into(),
                None,
                "x has no MX and no address records".into(),
            ),
            "Diagnostic-Code: X-mxrelay; x has no MX and no address records",
        ),
        (
            rcpt(
                "a@x",
                "4.4.7",
                None,
                local("message expired after 5d in the queue"),
            ),
            "Diagnostic-Code: X-mxrelay; message expired after 5d in the queue",
        ),
        (
            rcpt(
                "a@x",
                "5.6.3",
                relay.as_deref(),
                local("the next hop does not support 8BITMIME"),
            ),
            "Diagnostic-Code: X-mxrelay; the next hop does not support 8BITMIME",
        ),
        (
            rcpt("a@x", "5.7.1", None, smtp("554 5.7.1 relay denied")),
            "Diagnostic-Code: smtp; 554 5.7.1 relay denied",
        ),
    ];
    for (failed, want) in cases {
        assert_eq!(diagnostic_code(failed), want);
    }
}

#[test]
fn remote_mta_is_a_host_name() {
    let cases: &[(&str, Option<&str>)] = &[
        ("mx.example.net[192.0.2.1]:25", Some("mx.example.net")),
        ("mx.example.net[2001:db8::1]:587", Some("mx.example.net")),
        ("mx.example.net", Some("mx.example.net")),
        ("mx.example.net:2525", Some("mx.example.net")),
        ("192.0.2.1[192.0.2.1]:25", None),
        ("[192.0.2.1]:25", None),
        ("192.0.2.1", None),
        ("2001:db8::1[2001:db8::1]:25", None),
        ("2001:db8::1", None),
        ("", None),
        ("mxBcc: c@evil", None),
    ];
    for (relay, want) in cases {
        assert_eq!(mta_name(relay).as_deref(), *want, "{relay}");
    }
    let remote_mta = |relay: &str| {
        let msg = bounce(HEADERS, &[rcpt("a@x", "5.1.1", Some(relay), None)], "u1");
        let (_, _, parts) = split(&msg);
        assert!(parts[0].1.contains(&format!("Remote server: {relay}\r\n")));
        let report = &parts[1].1;
        report
            .lines()
            .find(|l| l.starts_with("Remote-MTA:"))
            .map(str::to_string)
    };
    assert_eq!(
        remote_mta("mx.example.net[192.0.2.1]:25").as_deref(),
        Some("Remote-MTA: dns; mx.example.net")
    );
    assert_eq!(remote_mta("192.0.2.1[192.0.2.1]:25"), None);
}

/// A part's Content-Type and Content-Transfer-Encoding.
type PartType<'a> = (&'a str, &'a str);

fn part_types(parts: &[(String, String)]) -> Vec<PartType<'_>> {
    parts
        .iter()
        .map(|(h, _)| {
            let field = |name: &str| {
                h.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .expect("part field")
            };
            (
                field("Content-Type: "),
                field("Content-Transfer-Encoding: "),
            )
        })
        .collect()
}

#[test]
fn ascii_report_is_delivery_status() {
    let headers = b"Subject: caf\xc3\xa9\r\n";
    let msg = bounce(headers, &two(), "u1");
    assert!(msg.contains("\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n"));
    assert!(!msg.contains("global"), "{msg}");
    let (_, _, parts) = split(&msg);
    assert_eq!(
        part_types(&parts),
        [
            ("text/plain; charset=us-ascii", "7bit"),
            ("message/delivery-status", "7bit"),
            ("text/rfc822-headers", "quoted-printable"),
        ]
    );
    assert!(
        parts[1]
            .1
            .contains("Final-Recipient: rfc822; bob@example.net\r\n")
    );
    assert_eq!(parts[2].1, "Subject: caf=C3=A9\r\n");
}

#[test]
fn utf8_recipient_makes_a_global_report() {
    let headers = "Subject: gr\u{fc}\u{df}e\r\nTo: j\u{f6}rg@b\u{fc}cher.example\r\n";
    let failed = [
        rcpt(
            "j\u{f6}rg@b\u{fc}cher.example",
            "5.1.1",
            Some("mx.b\u{fc}cher.example[192.0.2.7]:25"),
            smtp("550 5.1.1 unknown"),
        ),
        rcpt("bob@example.net", "5.1.1", None, local("no MX")),
    ];
    let msg = bounce(headers.as_bytes(), &failed, "u1");
    assert_wire_safe(msg.as_bytes());
    let (head, _, parts) = split(&msg);
    assert!(
        head.contains(
            "\r\nContent-Type: multipart/report; report-type=global-delivery-status;\r\n"
        )
    );
    assert_eq!(
        part_types(&parts),
        [
            ("text/plain; charset=utf-8", "quoted-printable"),
            ("message/global-delivery-status", "8bit"),
            ("message/global-headers", "8bit"),
        ]
    );
    let report = &parts[1].1;
    assert!(report.contains("\r\nFinal-Recipient: utf-8; j\u{f6}rg@b\u{fc}cher.example\r\n"));
    assert!(report.contains("\r\nFinal-Recipient: rfc822; bob@example.net\r\n"));
    // A U-label is no "dns" name of RFC 3464; the text still names the server.
    assert!(!report.contains("Remote-MTA"), "{report}");
    assert!(
        parts[0]
            .1
            .contains("Remote server: mx.b=C3=BCcher.example[192.0.2.7]:25")
    );
    assert_eq!(parts[2].1, headers);
    for block in report.split("\r\n\r\n") {
        assert_only_fields(block, DSN_FIELDS);
    }
}

#[test]
fn global_report_keeps_7bit_parts_where_it_can() {
    let cases: &[(&str, &[u8], &str, PartType)] = &[
        // A UTF-8 sender alone: the report is ASCII but global, headers stay text.
        (
            "j\u{f6}rg@b\u{fc}cher.example",
            HEADERS,
            "550 5.1.1 unknown",
            ("text/rfc822-headers", "7bit"),
        ),
        // A UTF-8 remote reply is no ASCII report either.
        (
            "alice@example.org",
            HEADERS,
            "550 5.1.1 Empf\u{e4}nger unbekannt",
            ("text/rfc822-headers", "7bit"),
        ),
        // Header bytes that are not UTF-8 cannot be message/global-headers.
        (
            "j\u{f6}rg@b\u{fc}cher.example",
            b"Subject: caf\xe9\r\n",
            "550 5.1.1 unknown",
            ("text/rfc822-headers", "quoted-printable"),
        ),
    ];
    for (sender, headers, reply, headers_part) in cases {
        let failed = [rcpt("bob@example.net", "5.1.1", None, smtp(reply))];
        let out = bounce_to(sender, headers, &failed, "u1");
        let (head, _, parts) = split(&out);
        assert!(
            head.contains("report-type=global-delivery-status;"),
            "{sender} {reply}"
        );
        let types = part_types(&parts);
        assert_eq!(types[1].0, "message/global-delivery-status");
        assert_eq!(types[2], *headers_part, "{sender} {reply}");
        assert!(
            parts[1]
                .1
                .contains(&format!("Diagnostic-Code: smtp; {reply}\r\n"))
        );
    }
}

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![4 => 0x20u8..0x7f, 1 => Just(b'\r'), 1 => Just(b'\n'), 1 => any::<u8>()];
    (prop::collection::vec(byte, 0..1500), "[ -~]{0,2100}").prop_map(|(mut v, long)| {
        v.extend_from_slice(long.as_bytes());
        v
    })
}

fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "(\r|\n|\r\n|[ -~]{0,300}|\u{85}|\u{e9}){0,40}"
    ]
}

proptest! {
    #[test]
    fn output_is_always_wire_safe(
        headers in hostile_bytes(),
        diags in prop::collection::vec(prop::option::of(hostile_text()), 0..4),
        address in hostile_text(),
        host in prop::option::of(hostile_text()),
        unique in "[ -~]{0,80}",
    ) {
        let failed: Vec<FailedRecipient> = diags.into_iter().enumerate().map(|(i, d)| FailedRecipient {
            address: address.clone(), status: "5.7.1".into(), remote_mta: host.clone(),
            diagnostic: d.map(if i % 2 == 0 { Diagnostic::Smtp } else { Diagnostic::Local }),
        }).collect();
        let original = Original { queue_id: "Q", sender: &address, arrival: UNIX_EPOCH, headers: &headers };
        let out = build("relay.example", "postmaster@relay.example", &original, &failed, UNIX_EPOCH, &unique);
        assert_wire_safe(&out);
        let text = String::from_utf8_lossy(&out);
        let (head, boundary, parts) = split(&text);
        assert_only_fields(&head, TOP_FIELDS);
        prop_assert!(boundary.len() <= 70);
        prop_assert_eq!(parts.len(), 3);
        let body = text.split_once("\r\n\r\n").unwrap().1;
        prop_assert_eq!(body.matches(boundary.as_str()).count(), 4);
        for block in parts[1].1.split("\r\n\r\n") {
            assert_only_fields(block, DSN_FIELDS);
        }
        // message/delivery-status is ASCII only; anything else goes global.
        let ascii = parts[1].0.starts_with("Content-Type: message/delivery-status\r\n");
        prop_assert_eq!(ascii, parts[1].1.is_ascii() && address.is_ascii(), "{}", parts[1].0);
    }
}
