//! The command parser and the address parsers behind it: never panic, and every mailbox
//! they accept reads back the same from its own text form (as envelopes and flags store it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::smtp::address::{self, ForwardPath, Mailbox};
use mxrelay::smtp::command::{self, Command};

fn round_trips(m: &Mailbox) {
    let text = m.to_string();
    assert_eq!(Mailbox::parse(&text).as_ref(), Ok(m), "{text:?}");
    assert!(address::is_valid_domain(&m.domain), "{text:?}");
}

fuzz_target!(|data: &[u8]| {
    match command::parse(data) {
        Ok(Command::Mail {
            from: Some(m),
            params,
        }) => {
            round_trips(&m);
            assert!(params.iter().all(|p| !p.keyword.is_empty()));
        }
        Ok(Command::Rcpt {
            to: ForwardPath::Mailbox(m),
            ..
        }) => round_trips(&m),
        Ok(Command::Ehlo(name) | Command::Helo(name)) => {
            assert!(!name.is_empty() && !name.contains(' ') && name.len() <= 255);
        }
        _ => {}
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok((Some(m), _)) = address::parse_reverse_path(s) {
            round_trips(&m);
        }
        if let Ok((ForwardPath::Mailbox(m), _)) = address::parse_forward_path(s) {
            round_trips(&m);
        }
        if let Ok(m) = Mailbox::parse(s) {
            assert_eq!(m.to_string(), s);
        }
        let _ = address::is_valid_domain(s);
        let _ = address::domain_key(s);
    }
});
