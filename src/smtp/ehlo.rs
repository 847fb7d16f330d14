//! ESMTP capabilities: what the server offers (rendered into its EHLO reply) and what a next hop
//! offers (parsed from its EHLO reply). One type serves both directions so they round-trip.

use super::reply::Reply;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// `SIZE` with its limit; `Some(0)` means "SIZE offered, no fixed limit".
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub enhanced_status_codes: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth: Vec<String>,
}

impl Extensions {
    /// The EHLO reply: greeting line, then one line per extension.
    pub fn reply(&self, greeting: String) -> Reply {
        let mut lines = vec![greeting];
        if self.pipelining {
            lines.push("PIPELINING".into());
        }
        if let Some(n) = self.size {
            lines.push(if n == 0 {
                "SIZE".into()
            } else {
                format!("SIZE {n}")
            });
        }
        if self.eight_bit_mime {
            lines.push("8BITMIME".into());
        }
        if self.enhanced_status_codes {
            lines.push("ENHANCEDSTATUSCODES".into());
        }
        if self.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if self.starttls {
            lines.push("STARTTLS".into());
        }
        if !self.auth.is_empty() {
            lines.push(format!("AUTH {}", self.auth.join(" ")));
        }
        Reply {
            code: 250,
            enhanced: None,
            lines,
        }
    }

    /// Reads a next hop's EHLO reply (the first line is its greeting and is skipped).
    pub fn parse(reply: &Reply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => e.pipelining = true,
                "SIZE" => e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => e.eight_bit_mime = true,
                "ENHANCEDSTATUSCODES" => e.enhanced_status_codes = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "STARTTLS" => e.starttls = true,
                "AUTH" => e.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let all = Extensions {
            pipelining: true,
            size: Some(1000),
            eight_bit_mime: true,
            enhanced_status_codes: true,
            smtputf8: true,
            starttls: true,
            auth: vec!["PLAIN".into(), "LOGIN".into()],
        };
        for e in [
            all,
            Extensions::default(),
            Extensions {
                size: Some(0),
                ..Default::default()
            },
        ] {
            assert_eq!(Extensions::parse(&e.reply("h greets c".into())), e);
        }
    }

    #[test]
    fn parses_foreign_forms() {
        let r = Reply {
            code: 250,
            enhanced: None,
            lines: vec![
                "mx.test".into(),
                "pipelining".into(),
                "SIZE  52428800".into(),
                "X-FOO bar".into(),
                "".into(),
            ],
        };
        let e = Extensions::parse(&r);
        assert!(e.pipelining);
        assert_eq!(e.size, Some(52428800));
        assert!(!e.eight_bit_mime);
    }
}
