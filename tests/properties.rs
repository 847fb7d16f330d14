//! Property tests: the parsers and the session never panic on arbitrary input, and what
//! they render parses back to the same thing.

use mxrelay::proxy;
use mxrelay::smtp::address::{self, Mailbox};
use mxrelay::smtp::command;
use mxrelay::smtp::data::DataReader;
use mxrelay::smtp::reply::{Enhanced, Reply, ReplyParser};
use mxrelay::smtp::session::{
    Admission, Effect, Limited, RateLimit, Session, SessionConfig, SessionLimits,
};
use mxrelay::spool::Envelope;
use proptest::prelude::*;

fn session(relay_allowed: bool, auth: bool) -> Session {
    Session::new(SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 1000,
        max_hops: 50,
        max_recipients: 5,
        max_errors: 1000,
        relay_allowed,
        postmaster: Mailbox::parse("postmaster@relay.test").unwrap(),
        tls_available: true,
        implicit_tls: false,
        auth_available: auth,
        require_auth: false,
        plaintext_auth: auth,
        limits: SessionLimits {
            max_messages: Some(3),
            ip_messages: true,
            user_messages: true,
            user_recipients: true,
        },
    })
}

/// Bytes that look like SMTP often enough to get past the verb.
fn smtp_line() -> impl Strategy<Value = Vec<u8>> {
    let verbs = prop_oneof![
        Just(&b"EHLO "[..]),
        Just(&b"HELO "[..]),
        Just(&b"MAIL FROM:"[..]),
        Just(&b"RCPT TO:"[..]),
        Just(&b"DATA"[..]),
        Just(&b"RSET"[..]),
        Just(&b"AUTH PLAIN "[..]),
        Just(&b"AUTH LOGIN"[..]),
        Just(&b"STARTTLS"[..]),
        Just(&b""[..]),
    ];
    (verbs, proptest::collection::vec(any::<u8>(), 0..80)).prop_map(|(v, rest)| [v, &rest].concat())
}

/// The DATA reader's rules, one byte at a time: only CR LF . CR LF ends the message, a
/// leading dot is dropped, and a bare CR or LF becomes CR LF. Returns the content, where the
/// input ended (if it did), the bare line ends and whether a byte was 8-bit.
fn data_reference(input: &[u8]) -> (Vec<u8>, Option<usize>, u64, bool) {
    #[derive(Clone, Copy, PartialEq)]
    enum S {
        LineStart,
        Mid,
        Cr,
        Dot,
        DotCr,
    }
    let (mut out, mut bare, mut state, mut i) = (Vec::new(), 0, S::LineStart, 0);
    while i < input.len() {
        let c = input[i];
        match state {
            S::LineStart if c == b'.' => state = S::Dot,
            S::Dot if c == b'\r' => state = S::DotCr,
            S::DotCr if c == b'\n' => {
                let eight = out.iter().any(|&b| b >= 0x80);
                return (out, Some(i + 1), bare, eight);
            }
            S::Cr if c == b'\n' => {
                out.extend_from_slice(b"\r\n");
                state = S::LineStart;
            }
            S::Mid if c == b'\r' => state = S::Cr,
            S::Mid if c == b'\n' => {
                out.extend_from_slice(b"\r\n");
                bare += 1;
            }
            S::Mid => out.push(c),
            S::LineStart | S::Dot => {
                state = S::Mid;
                continue;
            }
            S::Cr | S::DotCr => {
                out.extend_from_slice(b"\r\n");
                bare += 1;
                state = S::Mid;
                continue;
            }
        }
        i += 1;
    }
    let eight = out.iter().any(|&b| b >= 0x80);
    (out, None, bare, eight)
}

/// Message-like bytes: lines of letters with dots, CRs, LFs and 8-bit bytes mixed in.
fn data_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        6 => Just(b'a'),
        2 => Just(b'.'),
        3 => Just(b'\r'),
        3 => Just(b'\n'),
        1 => Just(0xc3u8),
    ];
    proptest::collection::vec(byte, 0..300)
}

proptest! {
    #[test]
    fn command_parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = command::parse(&line);
    }

    #[test]
    fn address_parsers_never_panic(s in "\\PC{0,120}") {
        let _ = address::parse_reverse_path(&s);
        let _ = address::parse_forward_path(&s);
        let _ = Mailbox::parse(&s);
    }

    #[test]
    fn session_never_panics_and_keeps_its_promises(lines in proptest::collection::vec(smtp_line(), 1..40), relay in any::<bool>(), auth in any::<bool>(), limited in proptest::collection::vec(any::<bool>(), 40)) {
        let mut s = session(relay, auth);
        let mut started = 0;
        for (i, line) in lines.iter().enumerate() {
            let mut step = s.feed(line);
            if let Effect::Admit(what) = step.effect {
                // The rate limits answer: a refusal is a 450 that changes nothing.
                let before = s.transaction().map(|t| t.recipients.len());
                prop_assert!(step.reply.is_none());
                let verdict = if limited[i] {
                    Err(Limited { limit: RateLimit::Ip, retry_after: std::time::Duration::from_millis(1500) })
                } else {
                    Ok(())
                };
                step = s.admitted(verdict);
                if limited[i] {
                    let r = step.reply.as_ref().unwrap();
                    prop_assert_eq!((r.code, r.render().contains("in 2 seconds")), (450, true));
                    prop_assert_eq!(s.transaction().map(|t| t.recipients.len()), before);
                    prop_assert!(what == Admission::Recipient || before.is_none());
                }
            }
            if step.effect == Effect::MailAccepted {
                started += 1;
                // --max-messages-per-connection: 3 here.
                prop_assert!(started <= 3);
            }
            // A refusal, and only a refusal, says why.
            prop_assert_eq!(
                step.refused.is_some(),
                step.reply.as_ref().is_some_and(|r| r.code >= 400),
                "{:?}", &step
            );
            match step.effect {
                Effect::BeginData => {
                    // DATA is only ever started with at least one accepted recipient.
                    prop_assert!(!s.transaction().unwrap().recipients.is_empty());
                    let r = s.data_done(Ok("ID".into())).reply.unwrap();
                    prop_assert_eq!(r.code, 250);
                }
                Effect::Authenticate { .. } => {
                    let step = s.auth_result(false, Vec::new());
                    prop_assert_eq!(step.reply.unwrap().code, 535);
                    prop_assert_eq!(step.refused.map(|r| r.command), Some("AUTH".to_string()));
                }
                Effect::StartTls => s.tls_started(),
                Effect::Close => break,
                Effect::None | Effect::MailAccepted => {}
                Effect::Admit(_) => prop_assert!(false, "admitted answers with a reply"),
            }
            if let Some(tx) = s.transaction() {
                prop_assert!(tx.recipients.len() <= 5);
                // Without relay permission or a login, only the postmaster is accepted.
                if !relay && s.auth_user().is_none() {
                    prop_assert!(tx.recipients.iter().all(|r| r.to_string() == "postmaster@relay.test"));
                }
            }
        }
    }

    #[test]
    fn reply_parser_never_panics(lines in proptest::collection::vec("\\PC{0,60}", 1..10)) {
        let mut p = ReplyParser::default();
        for l in &lines {
            if p.feed(l).is_err() {
                p = ReplyParser::default();
            }
        }
    }

    #[test]
    fn replies_round_trip(code in 200u16..560, text in proptest::collection::vec("[ -~]{0,40}", 1..4), enh in any::<bool>()) {
        let class = (code / 100) as u8;
        prop_assume!(matches!(class, 2..=5));
        let lines: Vec<String> = text.into_iter().map(|t| t.trim().to_string()).collect();
        prop_assume!(lines.iter().all(|l| Enhanced::parse_prefix(l).is_none()));
        let r = Reply { code, enhanced: (enh && class != 3).then_some(Enhanced(class, 1, 2)), lines };
        let mut p = ReplyParser::default();
        let mut got = None;
        for line in r.render().trim_end_matches("\r\n").split("\r\n") {
            got = p.feed(line).unwrap();
        }
        prop_assert_eq!(got.unwrap(), r);
    }

    /// The PROXY header parser never panics, a header does not depend on what follows it,
    /// and a prefix of anything incomplete is incomplete too (so the server may consume it).
    #[test]
    fn proxy_parser_never_panics_nor_reads_past_a_header(
        start in prop_oneof![
            Just(&b""[..]),
            Just(&b"PROXY "[..]),
            Just(&b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"[..]),
            Just(&proxy::V2_SIGNATURE[..]),
        ],
        rest in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let input = [start, &rest[..]].concat();
        match proxy::parse(&input) {
            Ok(proxy::Parsed::Header(h)) => {
                prop_assert!(h.len <= input.len() && h.len <= proxy::MAX_HEADER);
                prop_assert_eq!(proxy::parse(&input[..h.len]), Ok(proxy::Parsed::Header(h)));
            }
            Ok(proxy::Parsed::Incomplete) => {
                prop_assert!(input.len() < proxy::MAX_HEADER);
                for cut in 0..input.len() {
                    prop_assert_eq!(proxy::parse(&input[..cut]), Ok(proxy::Parsed::Incomplete));
                }
            }
            Err(_) => {}
        }
    }

    #[test]
    fn envelope_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Envelope::decode(&bytes);
    }

    #[test]
    fn data_reader_matches_the_byte_at_a_time_rules(
        input in data_bytes(),
        cuts in proptest::collection::vec(0usize..300, 0..6),
    ) {
        let (want, want_end, want_bare, want_eight) = data_reference(&input);
        // Fed in pieces cut at arbitrary points, as reads from a socket arrive.
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= input.len()).collect();
        cuts.push(input.len());
        cuts.sort_unstable();
        let mut reader = DataReader::new(1 << 20);
        let (mut out, mut end, mut from) = (Vec::new(), None, 0);
        for cut in cuts {
            if let Some(n) = reader.feed(&input[from..cut], &mut out) {
                end = Some(from + n);
                break;
            }
            from = cut;
        }
        prop_assert_eq!(&out, &want);
        prop_assert_eq!(end, want_end);
        let summary = reader.summary();
        prop_assert_eq!(summary.bare_line_ends, want_bare);
        prop_assert_eq!(summary.eight_bit, want_eight);
        prop_assert_eq!(summary.size, want.len() as u64);
    }
}
