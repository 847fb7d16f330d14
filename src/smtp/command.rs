//! One command line (CRLF already removed) → `Command`. Verbs are case-insensitive; a syntax
//! error carries the expected syntax for the 501 text.

use super::address::{self, ForwardPath, Param, ReversePath};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: ReversePath,
        params: Vec<Param>,
    },
    Rcpt {
        to: ForwardPath,
        params: Vec<Param>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// A verb we know of but do not offer (BDAT, ETRN, ...): 502.
    NotImplemented,
    Unknown,
}

impl Command {
    /// The verb, for the event log; `None` for verbs we do not know or offer.
    pub fn verb(&self) -> Option<&'static str> {
        Some(match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy => "VRFY",
            Command::Expn => "EXPN",
            Command::Help => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
            Command::NotImplemented | Command::Unknown => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// 501 with the expected syntax.
    Syntax(&'static str),
    /// 501 with what is wrong in the address.
    Address(&'static str),
}

const EHLO_SYNTAX: &str = "EHLO domain";
const HELO_SYNTAX: &str = "HELO domain";
const MAIL_SYNTAX: &str = "MAIL FROM:<reverse-path> [parameters]";
const RCPT_SYNTAX: &str = "RCPT TO:<forward-path> [parameters]";

pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let Ok(line) = std::str::from_utf8(line) else {
        // Only paths may carry UTF-8 (SMTPUTF8); anything else undecodable is junk.
        return Err(CommandError::Syntax("command line is not valid UTF-8"));
    };
    if line.bytes().any(|c| c.is_ascii_control() && c != b'\t') {
        return Err(CommandError::Syntax("control characters are not allowed"));
    }
    let (verb, arg) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let no_arg = |c: Command| {
        if arg.trim().is_empty() {
            Ok(c)
        } else {
            Err(CommandError::Syntax("no arguments allowed"))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => helo_arg(arg, EHLO_SYNTAX).map(Command::Ehlo),
        "HELO" => helo_arg(arg, HELO_SYNTAX).map(Command::Helo),
        "MAIL" => {
            let rest = strip_keyword(arg, "FROM:").ok_or(CommandError::Syntax(MAIL_SYNTAX))?;
            let (from, params) =
                address::parse_reverse_path(rest).map_err(CommandError::Address)?;
            Ok(Command::Mail { from, params })
        }
        "RCPT" => {
            let rest = strip_keyword(arg, "TO:").ok_or(CommandError::Syntax(RCPT_SYNTAX))?;
            let (to, params) = address::parse_forward_path(rest).map_err(CommandError::Address)?;
            Ok(Command::Rcpt { to, params })
        }
        "DATA" => no_arg(Command::Data),
        "RSET" => no_arg(Command::Rset),
        "QUIT" => no_arg(Command::Quit),
        // NOOP and HELP may carry an argument, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" if arg.trim().is_empty() => Err(CommandError::Syntax("VRFY string")),
        "VRFY" if arg.trim().is_empty() => Err(CommandError::Syntax("VRFY string")),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "STARTTLS" => no_arg(Command::StartTls),
        "AUTH" => {
            let mut words = arg.split_ascii_whitespace();
            let mechanism = words
                .next()
                .ok_or(CommandError::Syntax("AUTH mechanism [initial-response]"))?
                .to_string();
            let initial = words.next().map(str::to_string);
            if words.next().is_some() {
                return Err(CommandError::Syntax("AUTH mechanism [initial-response]"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "BDAT" | "ETRN" | "TURN" | "ATRN" | "SEND" | "SOML" | "SAML" => Ok(Command::NotImplemented),
        _ => Ok(Command::Unknown),
    }
}

fn helo_arg(arg: &str, syntax: &'static str) -> Result<String, CommandError> {
    let arg = arg.trim();
    if arg.is_empty() || arg.contains(' ') || arg.len() > 255 {
        return Err(CommandError::Syntax(syntax));
    }
    Ok(arg.to_string())
}

/// `FROM:` / `TO:` match case-insensitively; spaces after the colon are tolerated.
fn strip_keyword<'a>(arg: &'a str, kw: &str) -> Option<&'a str> {
    let head = arg.get(..kw.len())?;
    head.eq_ignore_ascii_case(kw).then(|| &arg[kw.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;

    #[test]
    fn table() {
        let mb = |s: &str| Mailbox::parse(s).unwrap();
        let cases: Vec<(&str, Result<Command, CommandError>)> = vec![
            ("EHLO client.test", Ok(Command::Ehlo("client.test".into()))),
            ("ehlo [127.0.0.1]", Ok(Command::Ehlo("[127.0.0.1]".into()))),
            ("HELO x", Ok(Command::Helo("x".into()))),
            ("EHLO", Err(CommandError::Syntax(EHLO_SYNTAX))),
            ("EHLO a b", Err(CommandError::Syntax(EHLO_SYNTAX))),
            (
                "MAIL FROM:<a@b.test>",
                Ok(Command::Mail {
                    from: Some(mb("a@b.test")),
                    params: vec![],
                }),
            ),
            (
                "mail from: <>",
                Ok(Command::Mail {
                    from: None,
                    params: vec![],
                }),
            ),
            ("MAIL <a@b.test>", Err(CommandError::Syntax(MAIL_SYNTAX))),
            ("MAIL FROM:<a@>", Err(CommandError::Address("bad domain"))),
            (
                "RCPT TO:<c@d.test>",
                Ok(Command::Rcpt {
                    to: ForwardPath::Mailbox(mb("c@d.test")),
                    params: vec![],
                }),
            ),
            (
                "RCPT TO:<Postmaster>",
                Ok(Command::Rcpt {
                    to: ForwardPath::Postmaster,
                    params: vec![],
                }),
            ),
            (
                "RCPT FROM:<c@d.test>",
                Err(CommandError::Syntax(RCPT_SYNTAX)),
            ),
            ("DATA", Ok(Command::Data)),
            ("data x", Err(CommandError::Syntax("no arguments allowed"))),
            ("RSET", Ok(Command::Rset)),
            ("NOOP whatever", Ok(Command::Noop)),
            ("QUIT", Ok(Command::Quit)),
            ("VRFY root", Ok(Command::Vrfy)),
            ("VRFY", Err(CommandError::Syntax("VRFY string"))),
            ("VRFY", Err(CommandError::Syntax("VRFY string"))),
            ("STARTTLS", Ok(Command::StartTls)),
            (
                "STARTTLS x",
                Err(CommandError::Syntax("no arguments allowed")),
            ),
            (
                "AUTH PLAIN",
                Ok(Command::Auth {
                    mechanism: "PLAIN".into(),
                    initial: None,
                }),
            ),
            (
                "auth login dXNlcg==",
                Ok(Command::Auth {
                    mechanism: "login".into(),
                    initial: Some("dXNlcg==".into()),
                }),
            ),
            (
                "AUTH",
                Err(CommandError::Syntax("AUTH mechanism [initial-response]")),
            ),
            ("BDAT 10 LAST", Ok(Command::NotImplemented)),
            ("XYZZY", Ok(Command::Unknown)),
            ("", Ok(Command::Unknown)),
            (
                "MAIL FROM:<a@b.test>\0",
                Err(CommandError::Syntax("control characters are not allowed")),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line.as_bytes()), want, "{line:?}");
        }
        assert!(parse(b"HELO \xff\xfe").is_err());
    }
}
