//! The client side of the protocol, without I/O: the connection and transaction state
//! machine (`machine`), whether a next hop can take a message at all, the MAIL/RCPT command
//! lines, and the status a reply stands for.

mod machine;

pub use machine::{
    Action, Client, Config, Credentials, Ending, Envelope, Failure, Report, Tls, Wait, accepted,
};

use super::ehlo::Extensions;
use super::reply::Reply;

/// What the next hop must support for one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    pub size: u64,
    pub eight_bit: bool,
    /// Non-ASCII sender or recipient addresses (RFC 6531).
    pub smtputf8: bool,
}

/// A reason the next hop cannot take the message, with its RFC 3463 status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsendable {
    pub status: &'static str,
    pub reason: String,
}

/// RFC 6152 and 6531 leave two choices when the next hop lacks an extension: convert or
/// return. We never alter the message, so we return it with a clear reason.
pub fn check_next_hop(ext: &Extensions, needs: &Needs) -> Result<(), Unsendable> {
    if let Some(limit) = ext.size.filter(|&l| l > 0 && needs.size > l) {
        return Err(Unsendable {
            status: "5.3.4",
            reason: format!(
                "message size {} exceeds the next hop's limit of {limit} bytes",
                needs.size
            ),
        });
    }
    if needs.smtputf8 && !ext.smtputf8 {
        return Err(Unsendable {
            status: "5.6.7",
            reason: "the next hop does not support SMTPUTF8, needed for non-ASCII addresses".into(),
        });
    }
    if needs.eight_bit && !ext.eight_bit_mime {
        return Err(Unsendable {
            status: "5.6.3",
            reason: "the message has 8-bit content and the next hop does not support 8BITMIME"
                .into(),
        });
    }
    Ok(())
}

pub fn mail_from(sender: &str, ext: &Extensions, needs: &Needs, declared_smtputf8: bool) -> String {
    let mut s = format!("MAIL FROM:<{sender}>");
    if ext.size.is_some() {
        s.push_str(&format!(" SIZE={}", needs.size));
    }
    if needs.eight_bit && ext.eight_bit_mime {
        s.push_str(" BODY=8BITMIME");
    }
    if (needs.smtputf8 || declared_smtputf8) && ext.smtputf8 {
        s.push_str(" SMTPUTF8");
    }
    s.push_str("\r\n");
    s
}

pub fn rcpt_to(address: &str) -> String {
    format!("RCPT TO:<{address}>\r\n")
}

/// The RFC 3463 status a reply stands for: its own enhanced code, else the class default.
pub fn status_of(reply: &Reply) -> String {
    match reply.enhanced {
        Some(e) => e.to_string(),
        None => format!("{}.0.0", reply.code / 100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::Enhanced;

    fn ext(size: Option<u64>, eight: bool, utf8: bool) -> Extensions {
        Extensions {
            size,
            eight_bit_mime: eight,
            smtputf8: utf8,
            ..Default::default()
        }
    }

    #[test]
    fn next_hop_checks() {
        let n = |size, eight_bit, smtputf8| Needs {
            size,
            eight_bit,
            smtputf8,
        };
        let cases: &[(Extensions, Needs, Option<&str>)] = &[
            (ext(None, false, false), n(10, false, false), None),
            (
                ext(Some(100), true, true),
                n(101, false, false),
                Some("5.3.4"),
            ),
            (ext(Some(0), true, true), n(u64::MAX, false, false), None),
            (ext(None, false, true), n(1, true, false), Some("5.6.3")),
            (ext(None, true, false), n(1, true, true), Some("5.6.7")),
            (ext(None, true, true), n(1, true, true), None),
        ];
        for (e, needs, want) in cases {
            assert_eq!(
                check_next_hop(e, needs).err().map(|u| u.status),
                *want,
                "{e:?} {needs:?}"
            );
        }
    }

    #[test]
    fn command_lines() {
        let needs = Needs {
            size: 42,
            eight_bit: true,
            smtputf8: false,
        };
        assert_eq!(
            mail_from("a@b.test", &ext(Some(0), true, true), &needs, false),
            "MAIL FROM:<a@b.test> SIZE=42 BODY=8BITMIME\r\n"
        );
        assert_eq!(
            mail_from("", &Extensions::default(), &needs, true),
            "MAIL FROM:<>\r\n"
        );
        assert_eq!(
            mail_from(
                "ü@b.test",
                &ext(None, false, true),
                &Needs {
                    smtputf8: true,
                    ..needs
                },
                true
            ),
            "MAIL FROM:<ü@b.test> SMTPUTF8\r\n"
        );
        assert_eq!(rcpt_to("x@y.test"), "RCPT TO:<x@y.test>\r\n");
        assert_eq!(
            status_of(&Reply::new(550, Some(Enhanced(5, 1, 1)), "x")),
            "5.1.1"
        );
        assert_eq!(status_of(&Reply::new(451, None, "x")), "4.0.0");
    }
}
