//! The client state machine that delivery and `mxrelay sendmail` drive, against a next hop
//! that answers anything (the replies are the input, line by line): never panics, ends within
//! a bounded number of steps, and keeps its promises: a transaction's report has one reply per
//! recipient at most, credentials never go out before TLS unless allowed, and the extensions
//! the EHLO reply announced decide what can be sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::smtp::client::{
    Action, Client, Config, Credentials, Envelope, Needs, Tls, check_next_hop, mail_from,
};
use mxrelay::smtp::ehlo::Extensions;
use mxrelay::smtp::reply::{Reply, ReplyParser};

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let tls = [Tls::Off, Tls::Opportunistic, Tls::Required, Tls::Implicit][knobs as usize & 3];
    let auth_in_clear = knobs & 0x10 != 0;
    let config = Config {
        helo: "relay.test".into(),
        tls,
        auth: (knobs & 4 != 0).then(|| Credentials {
            user: "user".into(),
            password: "secret".into(),
        }),
        auth_in_clear,
        pipelining: knobs & 8 != 0,
        all_recipients: knobs & 0x20 != 0,
    };
    let env = Envelope {
        sender: if knobs & 0x40 != 0 {
            String::new()
        } else {
            "a@b.test".into()
        },
        rcpts: vec!["x@y.test".into(), "z@y.test".into()],
        needs: Needs {
            size: 1000,
            eight_bit: knobs & 0x80 != 0,
            smtputf8: false,
        },
        smtputf8: false,
    };

    // The replies, in order; a malformed line or reply is skipped, as the driver would fail
    // the connection instead.
    let text = String::from_utf8_lossy(rest);
    let mut parser = ReplyParser::default();
    let mut replies: Vec<Reply> = Vec::new();
    for line in text.split('\n') {
        match parser.feed(line.trim_end_matches('\r')) {
            Ok(Some(r)) => replies.push(r),
            Ok(None) => {}
            Err(_) => parser = ReplyParser::default(),
        }
    }
    for r in &replies {
        if r.code == 250 {
            let ext = Extensions::parse(r);
            let _ = check_next_hop(&ext, &env.needs);
            let _ = mail_from(&env.sender, &ext, &env.needs, false);
        }
    }

    let mut client = Client::new(config);
    let mut replies = replies.into_iter();
    let mut action = client.start();
    let mut sent = 0;
    let mut tls_up = tls == Tls::Implicit;
    for _ in 0..10_000 {
        action = match action {
            Action::Send(lines, _) => {
                if lines.starts_with("AUTH") && !tls_up {
                    assert!(auth_in_clear, "credentials without TLS: {lines:?}");
                }
                match replies.next() {
                    Some(r) => client.on_reply(r),
                    None => return,
                }
            }
            Action::Read(_) => match replies.next() {
                Some(r) => client.on_reply(r),
                None => return,
            },
            Action::Skip(_) => {
                let _ = replies.next();
                client.skipped()
            }
            Action::StartTls => {
                tls_up = true;
                client.tls_done()
            }
            Action::SendBody => client.body_sent(),
            Action::Ready if sent < 2 => {
                sent += 1;
                client.send(&env)
            }
            Action::Ready => client.quit(),
            Action::Done(report) => {
                assert!(report.rcpts.len() <= env.rcpts.len(), "{report:?}");
                if client.is_ready() && sent < 2 {
                    sent += 1;
                    client.send(&env)
                } else {
                    client.quit()
                }
            }
            Action::Failed(_) => client.quit(),
            Action::Closed => return,
        };
    }
    panic!("no end after 10000 steps");
});
