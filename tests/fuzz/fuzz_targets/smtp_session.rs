//! The server session state machine, driven as the connection driver drives it: command
//! lines, the verdicts its effects ask for (credentials, rate limits, TLS), and DATA read by
//! the DATA reader. Input: a configuration byte, a byte seeding the verdicts, then lines.
//! Never panics, and keeps its promises whatever the client sends.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use mxrelay::smtp::address::Mailbox;
use mxrelay::smtp::data::DataReader;
use mxrelay::smtp::reply;
use mxrelay::smtp::session::{
    Effect, Limited, RateLimit, Refusal, Session, SessionConfig, SessionLimits,
};

const MAX_RECIPIENTS: usize = 4;
const MAX_MESSAGES: u32 = 3;

fuzz_target!(|data: &[u8]| {
    let [flags, seed, rest @ ..] = data else {
        return;
    };
    let bit = |n: u8| flags & (1 << n) != 0;
    let cfg = SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 200,
        max_hops: 3,
        max_recipients: MAX_RECIPIENTS,
        max_errors: 20,
        relay_allowed: bit(0),
        postmaster: Mailbox::parse("postmaster@relay.test").unwrap(),
        tls_available: bit(1),
        implicit_tls: bit(2),
        auth_available: bit(3),
        require_auth: bit(4),
        plaintext_auth: bit(5),
        limits: SessionLimits {
            max_messages: bit(6).then_some(MAX_MESSAGES),
            ip_messages: bit(7),
            user_messages: bit(7),
            user_recipients: bit(6),
        },
    };
    let (relay, require_auth) = (cfg.relay_allowed, cfg.require_auth);
    let mut verdicts = (u32::from(*seed) * 0x0101_0101) | 1;
    let mut verdict = move || {
        verdicts ^= verdicts << 13;
        verdicts ^= verdicts >> 17;
        verdicts ^= verdicts << 5;
        verdicts & 1 == 1
    };
    let mut s = Session::new(cfg);
    let mut lines = rest
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut started = 0;
    while let Some(line) = lines.next() {
        let mut step = if line.len() > 1000 {
            s.line_too_long()
        } else {
            s.feed(line)
        };
        if let Effect::Admit(_) = step.effect {
            assert!(step.reply.is_none());
            let before = s.transaction().map(|t| t.recipients.len());
            let limited = verdict();
            step = s.admitted(if limited {
                Err(Limited {
                    limit: RateLimit::Ip,
                    retry_after: Duration::from_millis(1500),
                })
            } else {
                Ok(())
            });
            if limited {
                assert_eq!(step.reply.as_ref().map(|r| r.code), Some(450));
                assert_eq!(s.transaction().map(|t| t.recipients.len()), before);
            }
        }
        if step.effect == Effect::MailAccepted {
            started += 1;
        }
        // A refusal, and only a refusal, says why.
        assert_eq!(
            step.refused.is_some(),
            step.reply.as_ref().is_some_and(|r| r.code >= 400),
            "{step:?}"
        );
        match step.effect {
            Effect::BeginData => {
                // DATA is only ever started with at least one accepted recipient.
                assert!(!s.transaction().unwrap().recipients.is_empty());
                // The message is the lines up to the end marker, read by the DATA reader.
                let mut reader = DataReader::new(200);
                let mut content = Vec::new();
                let mut ended = false;
                for l in lines.by_ref() {
                    let mut wire = l.to_vec();
                    wire.extend_from_slice(b"\r\n");
                    if reader.feed(&wire, &mut content).is_some() {
                        ended = true;
                        break;
                    }
                }
                if !ended {
                    break;
                }
                let result = match s.data_verdict(reader.summary()) {
                    Ok(()) if verdict() => Ok("0006452A1B2C3D4E-0001".to_string()),
                    Ok(()) => Err((Refusal::Other, reply::local_error())),
                    Err(refused) => Err(refused),
                };
                let done = s.data_done(result);
                assert!(s.transaction().is_none());
                assert_eq!(
                    done.refused.is_some(),
                    done.reply.as_ref().is_some_and(|r| r.code >= 400)
                );
            }
            Effect::Authenticate { password, .. } => {
                // The driver refuses an exchange that named another identity (no password).
                let ok = password.is_some() && verdict();
                let step = s.auth_result(ok, Vec::new());
                let code = step.reply.map(|r| r.code);
                assert_eq!(code, Some(if ok { 235 } else { 535 }));
                assert_eq!(s.auth_user().is_some(), ok);
            }
            Effect::StartTls => {
                s.tls_started();
                assert!(s.is_tls() && s.transaction().is_none() && s.auth_user().is_none());
            }
            Effect::Close => break,
            Effect::None | Effect::MailAccepted => {}
            Effect::Admit(_) => panic!("admitted answers with a reply"),
        }
        assert!(s.auth_user().is_none() || !s.in_auth_exchange());
        if s.transaction().is_some() {
            assert!(!require_auth || s.auth_user().is_some());
        }
        if let Some(tx) = s.transaction() {
            assert!(tx.recipients.len() <= MAX_RECIPIENTS);
            // Without relay permission or a login, only the postmaster is accepted.
            if !relay && s.auth_user().is_none() {
                assert!(
                    tx.recipients
                        .iter()
                        .all(|r| r.to_string() == "postmaster@relay.test")
                );
            }
        }
    }
    // --max-messages-per-connection, when set (the same flag bit as user_recipients).
    if flags & (1 << 6) != 0 {
        assert!(started <= MAX_MESSAGES);
    }
});
