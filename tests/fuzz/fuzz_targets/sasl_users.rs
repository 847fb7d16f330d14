//! The AUTH decoders and the users file.
//!
//! SASL: an exchange fed arbitrary lines never panics; PLAIN and LOGIN responses encoded
//! from arbitrary identities and passwords decode back to exactly them (or to the refusal
//! the rules call for). Users file: `user:hash[:domains]` lines never panic the parser, and
//! what it accepts is consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::auth::Users;
use mxrelay::smtp::sasl::{self, Exchange, SaslError, Step};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(users) = Users::parse(&text) {
        for line in text.lines() {
            let Some((user, _)) = line.trim().split_once(':') else {
                continue;
            };
            let user = user.trim();
            if let Some(a) = users.get(user) {
                assert_eq!(a.user, user);
                assert!(!user.is_empty() && !user.chars().any(char::is_whitespace));
                for d in &a.sender_domains {
                    assert!(d.is_ascii() && *d == d.to_ascii_lowercase());
                    assert!(users.sender_allowed(user, &d.to_ascii_uppercase()));
                }
            }
        }
    }

    // An exchange as a client drives it: `AUTH mechanism [initial]`, then response lines.
    let mut lines = text.lines();
    let mut words = lines.next().unwrap_or("").split_ascii_whitespace();
    if let Some((mut ex, mut step)) = Exchange::start(words.next().unwrap_or(""), words.next()) {
        for line in lines {
            match step {
                Step::Challenge(_) => step = ex.respond(line),
                _ => break,
            }
        }
        if let Step::Done { user, .. } = &step {
            assert!(!user.is_empty());
            assert_eq!(ex.user(), Some(user.as_str()));
        }
    }

    // PLAIN: authzid NUL authcid NUL password.
    let (_, step) = Exchange::start("PLAIN", Some(&sasl::encode(data))).unwrap();
    let mut parts = data.splitn(3, |&b| b == 0);
    let want = match (parts.next(), parts.next(), parts.next()) {
        (Some(authz), Some(authc), Some(password)) => match std::str::from_utf8(authc) {
            Err(_) => Step::Failed(SaslError::Malformed("user name is not UTF-8")),
            Ok("") => Step::Failed(SaslError::Malformed("empty user name")),
            Ok(_) if !authz.is_empty() && authz != authc => Step::Failed(SaslError::IdentitySwitch),
            Ok(user) => Step::Done {
                user: user.to_string(),
                password: password.to_vec(),
            },
        },
        _ => Step::Failed(SaslError::Malformed(
            "PLAIN needs authzid NUL authcid NUL password",
        )),
    };
    assert_eq!(step, want);

    // LOGIN: the user name (up to the first NUL), then the password (the rest).
    let (user, password) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let (mut ex, first) = Exchange::start("login", None).unwrap();
    assert!(matches!(first, Step::Challenge(_)));
    let step = ex.respond(&sasl::encode(user));
    match std::str::from_utf8(user) {
        Ok(u) if !u.is_empty() => {
            assert!(matches!(step, Step::Challenge(_)));
            let done = ex.respond(&sasl::encode(password));
            assert_eq!(
                done,
                Step::Done {
                    user: u.to_string(),
                    password: password.to_vec()
                }
            );
        }
        _ => assert_eq!(step, Step::Failed(SaslError::Malformed("bad user name"))),
    }
});
