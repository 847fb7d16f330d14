//! Why a recipient bounced or was deferred, in one word a sender can act on: the `category`
//! of `bounced` and `deferred` events, of the `failed` and `deferred` log lines, and the label
//! of the per-category metrics.
//!
//! The category comes from the reply text and the RFC 3463 enhanced status code, by the one
//! ordered table [`RULES`]: the first rule that matches wins. Phrases are matched first,
//! because receivers put the real reason in the text and use the codes loosely (Gmail and
//! Outlook answer spam blocks, policy refusals and unknown users all with `5.7.1` or
//! `5.5.0`); the code decides only when no phrase does.
//!
//! Before matching, words that name a host, a domain, an address or a URL are blanked out
//! (`mx.spamexperts.com[192.0.2.7]:25 said: 550 5.1.1 user unknown` is `invalid_recipient`,
//! not `spam_block`): the reason texts mxrelay writes name the relay or the domain, and
//! receivers quote addresses.

/// The categories; the set is fixed (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    /// The address or its domain does not exist or takes no mail (user unknown, account
    /// disabled, domain without MX or address, null MX).
    InvalidRecipient,
    /// The mailbox is over its quota.
    MailboxFull,
    /// Refused as spam, or the sending IP or domain is on a block list or has a bad
    /// reputation.
    SpamBlock,
    /// The receiver wants SPF, DKIM or DMARC to pass for the sender's domain.
    SenderAuth,
    /// Refused by the receiver's policy: relaying denied, sender refused, content or
    /// security policy, missing reverse DNS.
    Policy,
    /// Too many messages or connections: throttled, try later.
    RateLimited,
    /// Greylisting: the receiver defers first attempts on purpose.
    Greylisted,
    /// Logging in to the next hop failed, or it requires a login.
    Auth,
    /// The next hop's name could not be looked up (timeout, SERVFAIL, no address records).
    Dns,
    /// STARTTLS missing or refused, the handshake or the certificate check failed.
    Tls,
    /// Connection refused, reset, closed or timed out.
    Connection,
    /// The message is too large for the next hop.
    MessageSize,
    Other,
}

impl Category {
    pub const ALL: [Category; 13] = [
        Category::InvalidRecipient,
        Category::MailboxFull,
        Category::SpamBlock,
        Category::SenderAuth,
        Category::Policy,
        Category::RateLimited,
        Category::Greylisted,
        Category::Auth,
        Category::Dns,
        Category::Tls,
        Category::Connection,
        Category::MessageSize,
        Category::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Category::InvalidRecipient => "invalid_recipient",
            Category::MailboxFull => "mailbox_full",
            Category::SpamBlock => "spam_block",
            Category::SenderAuth => "sender_auth",
            Category::Policy => "policy",
            Category::RateLimited => "rate_limited",
            Category::Greylisted => "greylisted",
            Category::Auth => "auth",
            Category::Dns => "dns",
            Category::Tls => "tls",
            Category::Connection => "connection",
            Category::MessageSize => "message_size",
            Category::Other => "other",
        }
    }

    /// Its position in [`Category::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a rule looks at.
enum Match {
    /// Any of these phrases, in the lower-cased text (hosts and addresses blanked).
    Text(&'static [&'static str]),
    /// The enhanced code's subject and detail, whatever its class: `"1.1"` is X.1.1; `"1"`
    /// is any X.1.Y.
    Code(&'static str),
}

use Category::*;
use Match::{Code, Text};

/// The rules, in order; the first match decides, `other` when none does.
#[rustfmt::skip]
static RULES: &[(Match, Category)] = &[
    // Our own reasons about TLS and logging in (relay and host names are blanked).
    (Text(&["tls handshake", "starttls", "without tls", "start tls", "before the tls",
            "certificate verify failed", "tls required", "encryption required"]), Tls),
    // Sender authentication before anything that says "blocked" or "policy".
    (Text(&["dmarc", "spf", "dkim", "sender is unauthenticated", "unauthenticated email",
            "authentication level", "anti-spoofing", "not authenticated with spf"]), SenderAuth),
    (Text(&["delivery restriction"]), Policy),
    (Text(&["authentication as", "auth plain or login", "refused auth login",
            "refused the user name", "authentication credentials invalid",
            "authentication required", "authentication failed", "authentication unsuccessful",
            "must authenticate", "client was not authenticated"]), Auth),
    (Text(&["greylist", "graylist", "grey-list", "gray-list", "greylisted"]), Greylisted),
    // Throttling before quota (Mimecast: "Throttling failure: Daily message quota exceeded")
    // and before spam (Gmail 4.7.28: "... unsolicited mail ... temporarily rate limited").
    (Text(&["rate limit", "ratelimit", "rate-limit", "too many connections",
            "too many concurrent", "too many messages", "too many recipients",
            "too many mails", "throttl", "slow down", "server busy", "unexpected volume",
            "[tss04]", "receiving mail at a rate", "exceeded the rate", "connection rate",
            "temporarily deferred due to", "try again later, closing connection"]), RateLimited),
    (Text(&["spam", "unsolicited", "blocklist", "block list", "blacklist", "black list",
            "blocked using", "dnsbl", "reputation", "banned sending ip", "blocked - see",
            "bulk mail", "junk", "is listed", "was listed", "listed at", "listed on", "listing in",
            "(s3150)",
            "virus", "malware", "phish", "[bl21]", "[bl22]", "[bl23]", "not accepted from this ip",
            "traffic not accepted", "connections will not be accepted"]), SpamBlock),
    // About the sender, before the address rules ("Sender address rejected: Domain not
    // found", Exim's "Sender verify failed" after "Unrouteable address").
    (Text(&["sender address rejected", "sender verify", "domain of sender",
            "sender domain", "invalid sender", "sender rejected", "sender denied",
            "reverse dns", "ptr record", "cannot find your hostname",
            "cannot find your reverse hostname", "helo command rejected",
            "client host rejected"]), Policy),
    (Text(&["user unknown", "unknown user", "no such user", "no such recipient",
            "no such mailbox", "no such address", "mailbox not found", "mailbox unavailable",
            "mailbox does not exist", "does not exist", "doesn't have a", "recipient not found",
            "recipientnotfound", "invalid recipient", "invalid mailbox", "unrouteable address",
            "unroutable address", "not a valid mailbox", "recipient unknown",
            "unknown recipient", "user not found", "address not found", "no mailbox here",
            "bad destination mailbox", "is disabled", "has been disabled", "is inactive",
            "account disabled", "account is disabled", "as(201806281)", "null mx",
            "no mx and no address records", "address rejected: user", "not our customer",
            "no longer available", "mailbox is disabled", "not listed in"]), InvalidRecipient),
    (Text(&["over quota", "quota exceeded", "exceeded storage", "exceeds quota",
            "mailbox full", "mailbox is full", "mailbox has exceeded", "quotaexceeded",
            "storage quota", "full mailbox", "out of storage space", "mailbox quota",
            "over its quota", "insufficient storage in the mailbox"]), MailboxFull),
    (Text(&["too large", "too big", "size exceeds", "message size", "size limit",
            "exceeds the next hop's limit", "exceeds maximum size", "message length exceeds"]),
            MessageSize),
    (Text(&["relay access denied", "relaying denied", "relay not permitted",
            "not permitted to relay", "relay not allowed", "unable to relay", "relaying not",
            "administrative prohibition", "polic", "access denied", "prohibited",
            "not allowed", "rejected by", "envelope blocked", "blocked senders",
            "not authorized", "denied", "refused by", "message rejected"]), Policy),
    // Our own reasons about name lookups and connections.
    (Text(&["dns", "mx lookup", "address lookup", "cannot resolve", "has no address records",
            "name or service not known", "name resolution", "nodename nor servname"]), Dns),
    (Text(&["connect to", "connection refused", "connection reset", "connection timed out",
            "closed the connection", "timed out", "broken pipe", "network is unreachable",
            "no route to host", "host is unreachable", "reading from", "write to",
            "sending the message to", "lost connection", "connection dropped",
            "is unreachable"]), Connection),
    // The codes, when no phrase decided.
    (Code("1.7"), Policy),
    (Code("1.8"), Policy),
    (Code("1"), InvalidRecipient),
    (Code("2.1"), InvalidRecipient),
    (Code("2.2"), MailboxFull),
    (Code("2.3"), MessageSize),
    (Code("3.4"), MessageSize),
    // X.4.3 directory server failure, X.4.4 unable to route, X.4.7 expired (its reason
    // names the last error, matched above).
    (Code("4.3"), Dns),
    (Code("4.4"), Dns),
    (Code("4.7"), Other),
    (Code("4"), Connection),
    (Code("5.3"), RateLimited),
    (Code("7.8"), Auth),
    (Code("7.10"), Tls),
    (Code("7.11"), Tls),
    (Code("7.20"), SenderAuth),
    (Code("7.21"), SenderAuth),
    (Code("7.22"), SenderAuth),
    (Code("7.23"), SenderAuth),
    (Code("7.24"), SenderAuth),
    (Code("7.26"), SenderAuth),
    (Code("7.5"), Other),
    (Code("7.6"), Other),
    (Code("7.7"), Other),
    (Code("7"), Policy),
];

/// The category of a failure: `status` is its enhanced code when known (`5.1.1`), else the
/// first one in `text` counts; `text` is the reply or the reason.
pub fn categorize(status: Option<&str>, text: &str) -> Category {
    let code = status
        .and_then(subject_detail)
        .or_else(|| text.split_whitespace().find_map(subject_detail));
    let text = blank_names(text);
    for (rule, category) in RULES {
        let hit = match rule {
            Text(phrases) => phrases.iter().any(|p| text.contains(p)),
            Code(prefix) => code.is_some_and(|c| {
                c == *prefix || (c.starts_with(prefix) && c[prefix.len()..].starts_with('.'))
            }),
        };
        if hit {
            return *category;
        }
    }
    Other
}

/// `4.7.1` → `7.1`: an enhanced code of class 2, 4 or 5, without its class.
fn subject_detail(word: &str) -> Option<&str> {
    let word = word.trim_end_matches([',', ';', ':', ')']);
    let (class, rest) = word.split_once('.')?;
    let (subject, detail) = rest.split_once('.')?;
    let number = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    (matches!(class, "2" | "4" | "5") && number(subject) && number(detail)).then_some(rest)
}

/// The text lower-cased, with words that name a host, domain, address or URL replaced by a
/// space.
fn blank_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !is_name(word) {
            out.push_str(&word.to_lowercase());
        }
        out.push(' ');
    }
    out
}

/// `mx.example.com[192.0.2.1]:25`, `<a@b.example>`, `https://...`, `example.com`: a word
/// with `[`, `@` or `://`, or with a dot between two characters of which one is a letter.
/// `5.1.1`, `1.2.3.4` and a sentence's last word stay.
fn is_name(word: &str) -> bool {
    if word.contains('[') && word.contains(']') && !word.starts_with('[')
        || word.contains('@')
        || word.contains("://")
    {
        return true;
    }
    let b = word
        .trim_end_matches(['.', ',', ';', ':', ')', '>'])
        .as_bytes();
    b.windows(3).any(|w| {
        w[1] == b'.'
            && w[0].is_ascii_alphanumeric()
            && w[2].is_ascii_alphanumeric()
            && (w[0].is_ascii_alphabetic() || w[2].is_ascii_alphabetic())
    })
}

#[cfg(test)]
mod tests;
