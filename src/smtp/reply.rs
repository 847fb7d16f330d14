//! SMTP replies: the `Reply` type, rendering, parsing (for the client side) and every canned
//! reply the server sends, each with its RFC 3463 enhanced status code, in one place.

use std::fmt;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Enhanced {
    /// Parses `d.ddd.ddd` at the start of `text` (as servers put it after the reply code).
    pub fn parse_prefix(text: &str) -> Option<Enhanced> {
        let word = text.split_whitespace().next()?;
        let mut parts = word.split('.');
        let class = parts.next()?.parse::<u8>().ok()?;
        let subject = parts.next()?.parse::<u16>().ok()?;
        let detail = parts.next()?.parse::<u16>().ok()?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
            return None;
        }
        Some(Enhanced(class, subject, detail))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: Option<Enhanced>, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    fn enh(code: u16, (s, d): (u16, u16), text: impl Into<String>) -> Reply {
        Reply::new(code, Some(Enhanced((code / 100) as u8, s, d)), text)
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Wire form: every line but the last uses `code-`, the last `code `; each ends in CRLF.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.push_str(&self.code.to_string());
            out.push(sep);
            if let Some(e) = self.enhanced {
                out.push_str(&e.to_string());
                if !text.is_empty() {
                    out.push(' ');
                }
            }
            out.push_str(text);
            out.push_str("\r\n");
        }
        out
    }

    /// One-line form for logs, DSNs and events: "550 5.1.1 text / more text".
    pub fn summary(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(e) = self.enhanced {
            s.push(' ');
            s.push_str(&e.to_string());
        }
        for (i, l) in self.lines.iter().enumerate() {
            s.push_str(if i == 0 { " " } else { " / " });
            s.push_str(l);
        }
        s
    }
}

/// Parses one reply line: `(code, is_last, text)`. Text keeps any enhanced code.
pub fn parse_line(line: &str) -> Option<(u16, bool, &str)> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
        return None;
    }
    let code = line[..3].parse().ok()?;
    match b.get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        _ => None,
    }
}

/// Accumulates reply lines (client side) into a `Reply`; the enhanced code is lifted out of the
/// text when the first line carries one.
#[derive(Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Malformed(String),
    CodeChanged,
    TooLong,
}

pub const MAX_REPLY_LINES: usize = 200;

impl ReplyParser {
    /// Feeds one line (without CRLF). Returns the complete reply after its last line.
    pub fn feed(&mut self, line: &str) -> Result<Option<Reply>, ParseError> {
        let (code, last, text) = parse_line(line)
            .ok_or_else(|| ParseError::Malformed(line.chars().take(80).collect()))?;
        if *self.code.get_or_insert(code) != code {
            return Err(ParseError::CodeChanged);
        }
        if self.lines.len() >= MAX_REPLY_LINES {
            return Err(ParseError::TooLong);
        }
        self.lines.push(text.to_string());
        if !last {
            return Ok(None);
        }
        let mut lines = std::mem::take(&mut self.lines);
        self.code = None;
        let enhanced = Enhanced::parse_prefix(&lines[0]).filter(|e| e.0 as u16 == code / 100);
        if enhanced.is_some() {
            for l in lines.iter_mut() {
                if Enhanced::parse_prefix(l).is_some() {
                    // Drop the code as written (`4.03.1` is 4.3.1) and the spaces around it.
                    let text = l.trim_start();
                    let word = text.find(char::is_whitespace).unwrap_or(text.len());
                    *l = text[word..].trim_start().to_string();
                }
            }
        }
        Ok(Some(Reply {
            code,
            enhanced,
            lines,
        }))
    }
}

// ---- the canned replies ----------------------------------------------------------------

pub fn greeting(hostname: &str) -> Reply {
    Reply::new(220, None, format!("{hostname} ESMTP mxrelay"))
}
pub fn ok() -> Reply {
    Reply::enh(250, (0, 0), "Ok")
}
pub fn sender_ok() -> Reply {
    Reply::enh(250, (1, 0), "Sender ok")
}
pub fn recipient_ok() -> Reply {
    Reply::enh(250, (1, 5), "Recipient ok")
}
pub fn queued(id: &str) -> Reply {
    Reply::enh(250, (0, 0), format!("Ok: queued as {id}"))
}
pub fn helo_ok(hostname: &str, client: &str) -> Reply {
    Reply::new(250, None, format!("{hostname} greets {client}"))
}
pub fn vrfy() -> Reply {
    Reply::enh(
        252,
        (5, 0),
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}
pub fn help() -> Reply {
    Reply::enh(
        214,
        (0, 0),
        "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
    )
}
pub fn start_data() -> Reply {
    Reply::new(354, None, "End data with <CR><LF>.<CR><LF>")
}
pub fn bye() -> Reply {
    Reply::enh(221, (0, 0), "Bye")
}
pub fn shutting_down(hostname: &str) -> Reply {
    Reply::enh(
        421,
        (3, 2),
        format!("{hostname} Service shutting down, closing transmission channel"),
    )
}
pub fn too_many_connections() -> Reply {
    Reply::enh(421, (7, 0), "Too many connections, try again later")
}
pub fn too_many_connections_from_address() -> Reply {
    Reply::enh(
        421,
        (7, 0),
        "Too many connections from your address, try again later",
    )
}
pub fn too_many_messages(max: u32) -> Reply {
    Reply::enh(
        421,
        (7, 0),
        format!("Too many messages in this connection ({max}), reconnect to send more"),
    )
}
/// A rate limit reached at MAIL or RCPT: `what` names it, and the client may try again
/// after `retry_after_secs`.
pub fn rate_limited(what: &str, retry_after_secs: u64) -> Reply {
    Reply::enh(
        450,
        (7, 1),
        format!(
            "{what} reached, try again in {retry_after_secs} second{}",
            if retry_after_secs == 1 { "" } else { "s" }
        ),
    )
}
pub fn too_many_errors() -> Reply {
    Reply::enh(421, (7, 0), "Too many errors, closing connection")
}
pub fn timeout() -> Reply {
    Reply::enh(421, (4, 2), "Timeout exceeded, closing connection")
}
pub fn local_error() -> Reply {
    Reply::enh(451, (3, 0), "Local error in processing, try again later")
}
/// The spool cannot take a message now (full, or short of `--min-free-space`): RFC 3463 4.3.1,
/// as Postfix and Exim answer; clients retry later.
pub fn insufficient_storage() -> Reply {
    Reply::enh(452, (3, 1), "Insufficient system storage")
}
pub fn too_many_recipients() -> Reply {
    Reply::enh(452, (5, 3), "Too many recipients")
}
pub fn line_too_long() -> Reply {
    Reply::enh(500, (5, 2), "Line too long")
}
pub fn unrecognized() -> Reply {
    Reply::enh(500, (5, 2), "Command unrecognized")
}
pub fn syntax(expected: &str) -> Reply {
    Reply::enh(501, (5, 4), format!("Syntax: {expected}"))
}
pub fn bad_address(why: &str) -> Reply {
    Reply::enh(501, (1, 3), format!("Bad address syntax: {why}"))
}
pub fn not_implemented() -> Reply {
    Reply::enh(502, (5, 1), "Command not implemented")
}
pub fn need_helo() -> Reply {
    Reply::enh(503, (5, 1), "Send HELO/EHLO first")
}
pub fn need_mail() -> Reply {
    Reply::enh(503, (5, 1), "Need MAIL command first")
}
pub fn nested_mail() -> Reply {
    Reply::enh(503, (5, 1), "Sender already specified")
}
pub fn no_valid_recipients() -> Reply {
    Reply::enh(554, (5, 1), "No valid recipients")
}
pub fn relay_denied() -> Reply {
    Reply::enh(554, (7, 1), "Relay access denied")
}
pub fn message_too_big() -> Reply {
    Reply::enh(
        552,
        (3, 4),
        "Message size exceeds fixed maximum message size",
    )
}
pub fn too_many_hops() -> Reply {
    Reply::enh(554, (4, 6), "Too many hops (mail loop?)")
}
pub fn utf8_address_without_smtputf8() -> Reply {
    Reply::enh(553, (6, 7), "Non-ASCII address requires SMTPUTF8")
}
pub fn param_not_recognized(name: &str) -> Reply {
    Reply::enh(555, (5, 4), format!("Unsupported parameter {name}"))
}
pub fn bad_param_value(name: &str) -> Reply {
    Reply::enh(501, (5, 4), format!("Bad value for parameter {name}"))
}

pub fn ready_for_tls() -> Reply {
    Reply::enh(220, (0, 0), "Ready to start TLS")
}
pub fn tls_already_active() -> Reply {
    Reply::enh(503, (5, 1), "TLS already active")
}
pub fn auth_ok() -> Reply {
    Reply::enh(235, (7, 0), "Authentication successful")
}
pub fn auth_challenge(text: &str) -> Reply {
    Reply::new(334, None, text)
}
pub fn auth_failed() -> Reply {
    Reply::enh(535, (7, 8), "Authentication credentials invalid")
}
pub fn auth_cancelled() -> Reply {
    Reply::enh(501, (0, 0), "Authentication cancelled")
}
pub fn auth_malformed(why: &str) -> Reply {
    Reply::enh(501, (5, 2), format!("Cannot decode response: {why}"))
}
pub fn auth_required() -> Reply {
    Reply::enh(530, (7, 0), "Authentication required")
}
pub fn encryption_required() -> Reply {
    Reply::enh(
        538,
        (7, 11),
        "Encryption required for requested authentication mechanism",
    )
}
pub fn mechanism_unsupported() -> Reply {
    Reply::enh(504, (5, 4), "Unrecognized authentication type")
}
pub fn already_authenticated() -> Reply {
    Reply::enh(503, (5, 1), "Already authenticated")
}
pub fn auth_during_transaction() -> Reply {
    Reply::enh(503, (5, 1), "AUTH not allowed during a mail transaction")
}
pub fn sender_not_allowed() -> Reply {
    Reply::enh(553, (7, 1), "Sender address not allowed for this user")
}
pub fn auth_locked_out() -> Reply {
    Reply::enh(
        421,
        (7, 0),
        "Too many failed authentication attempts, closing connection",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_single_and_multi_line() {
        assert_eq!(ok().render(), "250 2.0.0 Ok\r\n");
        let r = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["a".into(), "b".into(), "c".into()],
        };
        assert_eq!(r.render(), "250-a\r\n250-b\r\n250 c\r\n");
        assert_eq!(greeting("h").render(), "220 h ESMTP mxrelay\r\n");
    }

    type Parsed<'a> = Option<(u16, bool, &'a str)>;

    #[test]
    fn parses_lines() {
        let cases: &[(&str, Parsed)] = &[
            ("250 ok", Some((250, true, "ok"))),
            ("250-PIPELINING", Some((250, false, "PIPELINING"))),
            ("250", Some((250, true, ""))),
            ("25", None),
            ("abc def", None),
            ("250x", None),
            ("650 no", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_line(line), *want, "{line}");
        }
    }

    #[test]
    fn render_parse_round_trip() {
        for r in [
            ok(),
            relay_denied(),
            greeting("x.test"),
            too_many_hops(),
            start_data(),
        ] {
            let mut p = ReplyParser::default();
            let mut got = None;
            for line in r.render().trim_end().split("\r\n") {
                got = p.feed(line).unwrap();
            }
            assert_eq!(got.unwrap(), r);
        }
    }

    #[test]
    fn parser_rejects_code_change_and_lifts_enhanced() {
        let mut p = ReplyParser::default();
        assert_eq!(p.feed("250-a"), Ok(None));
        assert_eq!(p.feed("251 b"), Err(ParseError::CodeChanged));
        let mut p = ReplyParser::default();
        let r = p.feed("550 5.1.1 <x@y>: unknown").unwrap().unwrap();
        assert_eq!(r.enhanced, Some(Enhanced(5, 1, 1)));
        assert_eq!(r.lines, vec!["<x@y>: unknown"]);
        let r = p.feed("550 4.1.1 class mismatch").unwrap().unwrap();
        assert_eq!(r.enhanced, None);
    }

    /// Found by the smtp_reply fuzz target: the code was cut off by the length of its
    /// canonical form, not of what the server wrote, which lost text after a code written
    /// with leading zeros, and panicked (cutting inside a character) after leading Unicode
    /// spaces: a remote server could end a delivery thread.
    #[test]
    fn the_enhanced_code_is_lifted_as_written() {
        let mut p = ReplyParser::default();
        assert_eq!(p.feed("452-4.3.1 first"), Ok(None));
        assert_eq!(p.feed("452-4.03.1 full"), Ok(None));
        assert_eq!(p.feed("452-\u{3000}\u{3000}4.3.1 wide"), Ok(None));
        let r = p.feed("452  4.3.1  last").unwrap().unwrap();
        assert_eq!(r.enhanced, Some(Enhanced(4, 3, 1)));
        assert_eq!(r.lines, ["first", "full", "wide", "last"]);
    }

    #[test]
    fn summary_joins_lines() {
        let r = Reply {
            code: 451,
            enhanced: Some(Enhanced(4, 7, 1)),
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.summary(), "451 4.7.1 a / b");
    }
}
