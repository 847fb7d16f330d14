//! The envelope file: a versioned text record, `key: value` lines, one `rcpt:` line per
//! recipient with its state, and `end` last. A file without `end`, with an unknown version or
//! an unknown key is refused (and quarantined by the spool), never guessed at.

use std::fmt::Write as _;

use crate::tracking::Personal;

pub const VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Mail from a client.
    Message,
    /// A DSN we generated (null sender).
    Bounce,
    /// A copy of an undeliverable bounce for the postmaster (null sender); never reported on.
    DoubleBounce,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Delivered,
    Failed,
    /// On the suppression list when its turn came: not sent, no DSN. (Added after version 1
    /// of the format; older spools never have it, so they read as before.)
    Suppressed,
}

impl RcptState {
    /// As the envelope and `mxrelay queue show` write it.
    pub fn name(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Delivered => "delivered",
            RcptState::Failed => "failed",
            RcptState::Suppressed => "suppressed",
        }
    }

    pub fn parse(s: &str) -> Option<RcptState> {
        [
            RcptState::Pending,
            RcptState::Delivered,
            RcptState::Failed,
            RcptState::Suppressed,
        ]
        .into_iter()
        .find(|r| r.name() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    pub state: RcptState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub id: String,
    pub kind: Kind,
    /// Unix time in milliseconds.
    pub received: u64,
    pub client: String,
    pub helo: String,
    /// Empty for the null sender `<>`.
    pub sender: String,
    pub size: u64,
    /// Of `size`, the bytes of the header section stored after the body (written there by the
    /// transform stage, which ends the header block only after the body has streamed); 0:
    /// the message is stored in order.
    pub head: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub attempts: u32,
    /// Unix time in milliseconds; 0 = as soon as possible.
    pub next_attempt: u64,
    pub last_error: String,
    /// The client's tag (`X-MxRelay-Tag`), copied into the message's events; empty: none.
    pub tag: String,
    /// What each recipient's copy gets (tracking, unsubscribe fields); with any, each
    /// recipient is delivered in a transaction of its own.
    pub personal: Personal,
    /// Put on hold by the operator: not delivered until released.
    pub held: bool,
    pub recipients: Vec<Recipient>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Envelope {
    /// An empty envelope of `kind`, to be filled in.
    pub fn new(id: String, kind: Kind) -> Envelope {
        Envelope {
            id,
            kind,
            received: 0,
            client: String::new(),
            helo: String::new(),
            sender: String::new(),
            size: 0,
            head: 0,
            eight_bit: false,
            smtputf8: false,
            attempts: 0,
            next_attempt: 0,
            last_error: String::new(),
            tag: String::new(),
            personal: Personal::default(),
            held: false,
            recipients: Vec::new(),
        }
    }

    /// A message from a@client.test to `to`, all pending (for tests).
    #[cfg(test)]
    pub fn sample(id: &str, to: &[&str]) -> Envelope {
        let mut e = Envelope::new(id.to_string(), Kind::Message);
        e.received = 1;
        e.client = "127.0.0.1".into();
        e.helo = "client.test".into();
        e.sender = "a@client.test".into();
        e.size = 5;
        e.recipients = to
            .iter()
            .map(|a| Recipient {
                address: a.to_string(),
                state: RcptState::Pending,
            })
            .collect();
        e
    }

    pub fn pending(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RcptState::Pending)
    }

    pub fn pending_addresses(&self) -> Vec<String> {
        self.pending().map(|(_, r)| r.address.clone()).collect()
    }

    pub fn has_pending(&self) -> bool {
        self.pending().next().is_some()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::with_capacity(256 + 64 * self.recipients.len());
        let kind = match self.kind {
            Kind::Message => "message",
            Kind::Bounce => "bounce",
            Kind::DoubleBounce => "double-bounce",
        };
        let yn = |b: bool| if b { "yes" } else { "no" };
        let _ = write!(
            s,
            "version: {VERSION}\nid: {}\nkind: {kind}\nreceived: {}\nclient: {}\nhelo: {}\nsender: {}\nsize: {}\n\
             8bit: {}\nsmtputf8: {}\nattempts: {}\nnext-attempt: {}\nlast-error: {}\nheld: {}\n",
            one_line(&self.id),
            self.received,
            one_line(&self.client),
            one_line(&self.helo),
            one_line(&self.sender),
            self.size,
            yn(self.eight_bit),
            yn(self.smtputf8),
            self.attempts,
            self.next_attempt,
            one_line(&self.last_error),
            yn(self.held),
        );
        if self.head > 0 {
            let _ = writeln!(s, "head-after-body: {}", self.head);
        }
        if !self.tag.is_empty() {
            let _ = writeln!(s, "tag: {}", one_line(&self.tag));
        }
        if self.personal.any() {
            let _ = writeln!(s, "personal: {}", self.personal.name());
        }
        for r in &self.recipients {
            let _ = writeln!(s, "rcpt: {} {}", r.state.name(), one_line(&r.address));
        }
        s.push_str("end\n");
        s.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let err = |m: String| Err(DecodeError(m));
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError("not UTF-8".into()))?;
        let Some(body) = text.strip_suffix("end\n") else {
            return err("no end line (truncated?)".into());
        };
        let mut lines = body.lines();
        match lines.next().and_then(|l| l.strip_prefix("version: ")) {
            Some(v) if v == VERSION.to_string() => {}
            Some(v) => return err(format!("unknown version {v}")),
            None => return err("no version line".into()),
        }
        let mut e = Envelope::new(String::new(), Kind::Message);
        for line in lines {
            let Some((key, value)) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
            else {
                return err(format!("bad line {line:?}"));
            };
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| DecodeError(format!("bad number in {key}")))
            };
            let flag = |v: &str| match v {
                "yes" => Ok(true),
                "no" => Ok(false),
                _ => Err(DecodeError(format!("bad flag in {key}"))),
            };
            match key {
                "id" => e.id = value.to_string(),
                "kind" => {
                    e.kind = match value {
                        "message" => Kind::Message,
                        "bounce" => Kind::Bounce,
                        "double-bounce" => Kind::DoubleBounce,
                        _ => return err(format!("unknown kind {value}")),
                    }
                }
                "received" => e.received = num(value)?,
                "client" => e.client = value.to_string(),
                "helo" => e.helo = value.to_string(),
                "sender" => e.sender = value.to_string(),
                "size" => e.size = num(value)?,
                "head-after-body" => e.head = num(value)?,
                "tag" => e.tag = value.to_string(),
                "personal" => e.personal = Personal::parse(value).map_err(DecodeError)?,
                "8bit" => e.eight_bit = flag(value)?,
                "smtputf8" => e.smtputf8 = flag(value)?,
                "attempts" => e.attempts = num(value)? as u32,
                "next-attempt" => e.next_attempt = num(value)?,
                "last-error" => e.last_error = value.to_string(),
                "held" => e.held = flag(value)?,
                "rcpt" => {
                    let (state, address) = value
                        .split_once(' ')
                        .ok_or_else(|| DecodeError("bad rcpt line".into()))?;
                    let Some(state) = RcptState::parse(state) else {
                        return err(format!("unknown recipient state {state}"));
                    };
                    if address.is_empty() {
                        return err("empty recipient".into());
                    }
                    e.recipients.push(Recipient {
                        address: address.to_string(),
                        state,
                    });
                }
                _ => return err(format!("unknown key {key}")),
            }
        }
        if e.id.is_empty() || e.recipients.is_empty() {
            return err("missing id or recipients".into());
        }
        if e.head > e.size {
            return err("head-after-body longer than the message".into());
        }
        Ok(e)
    }
}

/// Values are single lines: control characters (a CR or LF in a remote reply) become spaces.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: "0006452A1B2C3D4E-0001".into(),
            kind: Kind::Message,
            received: 1_790_000_000_123,
            client: "127.0.0.1".into(),
            helo: "client.test".into(),
            sender: "a@b.test".into(),
            size: 1234,
            head: 200,
            eight_bit: true,
            smtputf8: false,
            attempts: 2,
            next_attempt: 1_790_000_060_000,
            last_error: "451 4.7.1 try later".into(),
            tag: "welcome".into(),
            personal: Personal {
                clicks: true,
                opens: false,
                unsubscribe: true,
            },
            held: true,
            recipients: vec![
                Recipient {
                    address: "x@y.test".into(),
                    state: RcptState::Pending,
                },
                Recipient {
                    address: "\"john doe\"@y.test".into(),
                    state: RcptState::Delivered,
                },
                Recipient {
                    address: "z@w.test".into(),
                    state: RcptState::Failed,
                },
                Recipient {
                    address: "Gone@w.test".into(),
                    state: RcptState::Suppressed,
                },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Envelope::decode(&e.encode()), Ok(e.clone()));
        let null = Envelope {
            sender: String::new(),
            kind: Kind::Bounce,
            last_error: String::new(),
            head: 0,
            tag: String::new(),
            personal: Personal::default(),
            ..e
        };
        let text = String::from_utf8(null.encode()).unwrap();
        assert!(
            !text.contains("head") && !text.contains("tag") && !text.contains("personal"),
            "{text}"
        );
        assert_eq!(Envelope::decode(&null.encode()), Ok(null));
    }

    #[test]
    fn control_characters_cannot_forge_lines() {
        let mut e = sample();
        e.last_error = "550 bad\nrcpt: pending evil@x.test".into();
        let d = Envelope::decode(&e.encode()).unwrap();
        assert_eq!(d.recipients.len(), 4);
        assert_eq!(d.last_error, "550 bad rcpt: pending evil@x.test");
    }

    #[test]
    fn refuses_damaged_files() {
        let good = sample().encode();
        let text = String::from_utf8(good.clone()).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 4].to_vec(), "no end line"),
            (
                text.replace("version: 1", "version: 9").into_bytes(),
                "unknown version",
            ),
            (
                text.replace("8bit: yes", "8bit: maybe").into_bytes(),
                "bad flag",
            ),
            (
                text.replace("size: 1234", "color: red").into_bytes(),
                "unknown key",
            ),
            (
                text.replace("rcpt: pending", "rcpt: lost").into_bytes(),
                "unknown recipient state",
            ),
            (
                text.replace("head-after-body: 200", "head-after-body: 2000")
                    .into_bytes(),
                "longer than the message",
            ),
            (b"end\n".to_vec(), "no version"),
            (vec![0xff, 0xfe], "not UTF-8"),
        ];
        for (bytes, want) in cases {
            let e = Envelope::decode(&bytes).unwrap_err();
            assert!(e.0.contains(want), "{} should contain {want}", e.0);
        }
    }
}
