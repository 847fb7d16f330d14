//! Delivery status notifications: an RFC 6522 multipart/report carrying an RFC 3464
//! message/delivery-status, sent from the null sender to the envelope sender when
//! recipients fail permanently or expire. When a recipient, a reason or the sender is not
//! ASCII, the report is RFC 6533's message/global-delivery-status instead.
//!
//! Pure: no I/O and no clock. Everything taken from clients and remote servers is
//! treated as hostile: control characters never reach a header field, every line ends
//! in CRLF and stays within 998 bytes, and the MIME boundary never occurs in the content.

//!
//! `report` builds the message (RFC 3464 fields, the notification text, the multipart
//! layout); `wire` keeps its lines safe (folding, quoted-printable, the boundary).

mod report;
#[cfg(test)]
mod tests;
mod wire;

use std::time::SystemTime;

use crate::spool::{Envelope, Kind, RcptState, Recipient};

pub use report::build;

/// Where the report on a message's failures goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Addressee {
    /// To the sender, as a bounce.
    Sender(String),
    /// A null-sender message's failure: a copy to the postmaster, as a double bounce.
    Postmaster(String),
    /// A double bounce that failed: dropped (and logged), or bounces would never end.
    Nobody,
}

pub fn addressee(env: &Envelope, postmaster: &str) -> Addressee {
    match (env.kind, env.sender.is_empty()) {
        (Kind::DoubleBounce, _) => Addressee::Nobody,
        (_, true) => Addressee::Postmaster(postmaster.to_string()),
        (_, false) => Addressee::Sender(env.sender.clone()),
    }
}

/// The envelope of a DSN with `body` to `to` (from the null sender, received `now_ms`), to
/// be spooled like any message: a bounce, or a double bounce when it reports on a message
/// from the null sender.
pub fn envelope(
    id: String,
    to: &str,
    double: bool,
    hostname: &str,
    body: &[u8],
    now_ms: u64,
) -> Envelope {
    let kind = if double {
        Kind::DoubleBounce
    } else {
        Kind::Bounce
    };
    let address = to.to_string();
    let mut env = Envelope::new(id, kind);
    env.received = now_ms;
    env.client = "127.0.0.1".into();
    env.helo = hostname.to_string();
    env.size = body.len() as u64;
    env.eight_bit = body.iter().any(|&b| b >= 0x80);
    env.smtputf8 = !address.is_ascii();
    env.recipients = vec![Recipient {
        address,
        state: RcptState::Pending,
    }];
    env
}

pub struct FailedRecipient {
    /// The envelope recipient as given by the client.
    pub address: String,
    /// RFC 3463 code, e.g. "5.1.1", or "4.4.7" for expiry; anything malformed becomes "5.0.0".
    pub status: String,
    /// The server that refused it, as delivery names it: `mx.example.net[192.0.2.1]:25`.
    pub remote_mta: Option<String>,
    pub diagnostic: Option<Diagnostic>,
}

impl FailedRecipient {
    /// A failure as delivery reports it: with a relay, the reason is that server's reply;
    /// without one, no server answered and the reason is our own (DNS, routing).
    pub fn failure(address: String, status: String, relay: Option<String>, reason: String) -> Self {
        let diagnostic = if relay.is_some() {
            Diagnostic::Smtp(reason)
        } else {
            Diagnostic::Local(reason)
        };
        FailedRecipient {
            address,
            status,
            remote_mta: relay,
            diagnostic: Some(diagnostic),
        }
    }
}

/// Why a recipient failed. RFC 3464 2.3.6 types the `Diagnostic-Code:` field, and "smtp"
/// promises an SMTP reply, so our own reasons carry a private type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    /// A remote server's reply verbatim (lines joined with "\n").
    Smtp(String),
    /// A reason mxrelay gives itself: expiry, DNS, a next hop's missing extension...
    Local(String),
}

impl Diagnostic {
    pub fn text(&self) -> &str {
        match self {
            Diagnostic::Smtp(t) | Diagnostic::Local(t) => t,
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Diagnostic::Smtp(_) => "smtp",
            Diagnostic::Local(_) => "X-mxrelay",
        }
    }
}

pub struct Original<'a> {
    pub queue_id: &'a str,
    /// Envelope sender; never empty, the null sender is never bounced.
    pub sender: &'a str,
    pub arrival: SystemTime,
    /// The header section without the blank line after it, CRLF line ends, maybe truncated.
    pub headers: &'a [u8],
}
