//! Paths, mailboxes and domains (RFC 5321 4.1.2, RFC 6531 for UTF-8), and ESMTP parameters.
//! Parsing only: no policy. Source routes (`@a,@b:user@c`) are accepted and dropped, as
//! RFC 5321 4.1.1.3 and C.1 ask.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest path accepted (RFC 5321 allows 256; real-world VERP/SRS addresses run a little longer).
pub const MAX_PATH: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// As written, quotes included when the local part is a quoted string.
    pub local: String,
    /// A domain name (without trailing dot) or an address literal in brackets.
    pub domain: String,
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl Mailbox {
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// Parses `local@domain` (no angle brackets), the form used in flags and envelopes.
    pub fn parse(s: &str) -> Result<Mailbox, &'static str> {
        let mut p = Cursor {
            s: s.as_bytes(),
            i: 0,
        };
        let m = p.mailbox()?;
        if p.i != s.len() {
            return Err("trailing characters after address");
        }
        Ok(m)
    }
}

/// The domain key used for routing: lower case, no trailing dot.
pub fn domain_key(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// `<>` is `None`, the null reverse-path.
pub type ReversePath = Option<Mailbox>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (RFC 5321 4.1.1.3), any case.
    Postmaster,
    Mailbox(Mailbox),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub keyword: String,
    pub value: Option<String>,
}

/// Parses the argument of `MAIL FROM:` (after the colon): path then parameters.
pub fn parse_reverse_path(arg: &str) -> Result<(ReversePath, Vec<Param>), &'static str> {
    let (path, rest) = split_path(arg)?;
    let mailbox = if path.is_empty() {
        None
    } else {
        Some(parse_path_body(path)?)
    };
    Ok((mailbox, parse_params(rest)?))
}

/// Parses the argument of `RCPT TO:` (after the colon).
pub fn parse_forward_path(arg: &str) -> Result<(ForwardPath, Vec<Param>), &'static str> {
    let (path, rest) = split_path(arg)?;
    if path.is_empty() {
        return Err("empty forward-path");
    }
    let fp = if path.eq_ignore_ascii_case("postmaster") {
        ForwardPath::Postmaster
    } else {
        ForwardPath::Mailbox(parse_path_body(path)?)
    };
    Ok((fp, parse_params(rest)?))
}

/// Splits `<path> params` into the text inside the brackets and the rest. A path without brackets
/// is tolerated (old scripts send it) as long as it has no spaces.
fn split_path(arg: &str) -> Result<(&str, &str), &'static str> {
    let arg = arg.trim_start_matches(' ');
    if let Some(inner) = arg.strip_prefix('<') {
        // '>' may appear inside a quoted local part: scan with quote awareness.
        let b = inner.as_bytes();
        let (mut i, mut quoted) = (0, false);
        while i < b.len() {
            match b[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                b'>' if !quoted => break,
                _ => {}
            }
            i += 1;
        }
        if i >= b.len() {
            return Err("missing '>'");
        }
        if i > MAX_PATH {
            return Err("path too long");
        }
        let rest = &inner[i + 1..];
        if !rest.is_empty() && !rest.starts_with(' ') {
            return Err("expected a space after '>'");
        }
        Ok((&inner[..i], rest))
    } else {
        let end = arg.find(' ').unwrap_or(arg.len());
        if end == 0 {
            return Err("missing path");
        }
        if end > MAX_PATH {
            return Err("path too long");
        }
        Ok((&arg[..end], &arg[end..]))
    }
}

fn parse_path_body(path: &str) -> Result<Mailbox, &'static str> {
    let mut p = Cursor {
        s: path.as_bytes(),
        i: 0,
    };
    if p.peek() == Some(b'@') {
        // A-d-l ":" — accepted and ignored.
        loop {
            p.expect(b'@')?;
            p.domain()?;
            if p.peek() == Some(b',') {
                p.i += 1;
                continue;
            }
            p.expect(b':')?;
            break;
        }
    }
    let m = p.mailbox()?;
    if p.i != p.s.len() {
        return Err("unexpected characters in path");
    }
    Ok(m)
}

fn parse_params(rest: &str) -> Result<Vec<Param>, &'static str> {
    let mut out = Vec::new();
    for word in rest.split(' ').filter(|w| !w.is_empty()) {
        let (k, v) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let key_ok = !k.is_empty()
            && k.as_bytes()[0].is_ascii_alphanumeric()
            && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-');
        if !key_ok {
            return Err("bad parameter keyword");
        }
        if let Some(v) = v
            && (v.is_empty() || v.bytes().any(|c| c == b'=' || c.is_ascii_control()))
        {
            return Err("bad parameter value");
        }
        out.push(Param {
            keyword: k.to_ascii_uppercase(),
            value: v.map(str::to_string),
        });
    }
    Ok(out)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c) || c >= 0x80
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), &'static str> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(match c {
                b'@' => "expected '@'",
                b':' => "expected ':' after source route",
                _ => "unexpected character",
            })
        }
    }

    fn text(&self, from: usize) -> Result<String, &'static str> {
        String::from_utf8(self.s[from..self.i].to_vec()).map_err(|_| "invalid UTF-8")
    }

    fn mailbox(&mut self) -> Result<Mailbox, &'static str> {
        let start = self.i;
        if self.peek() == Some(b'"') {
            self.i += 1;
            loop {
                match self.peek() {
                    None => return Err("unterminated quoted string"),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        self.i += 1;
                        match self.peek() {
                            Some(c) if (32..127).contains(&c) => {}
                            _ => return Err("bad quoted pair"),
                        }
                    }
                    Some(c) if c < 32 || c == 127 => {
                        return Err("control character in quoted string");
                    }
                    Some(_) => {}
                }
                self.i += 1;
            }
            self.i += 1;
        } else {
            loop {
                let atom = self.i;
                while self.peek().is_some_and(is_atext) {
                    self.i += 1;
                }
                if self.i == atom {
                    return Err("bad local part");
                }
                if self.peek() == Some(b'.') {
                    self.i += 1;
                } else {
                    break;
                }
            }
        }
        let local = self.text(start)?;
        if local.len() > 256 {
            return Err("local part too long");
        }
        self.expect(b'@')?;
        let domain = self.domain()?;
        Ok(Mailbox { local, domain })
    }

    /// A domain name or an address literal.
    fn domain(&mut self) -> Result<String, &'static str> {
        let start = self.i;
        if self.peek() == Some(b'[') {
            let end = self.s[start..]
                .iter()
                .position(|&c| c == b']')
                .ok_or("missing ']'")?
                + start;
            let lit =
                std::str::from_utf8(&self.s[start + 1..end]).map_err(|_| "bad address literal")?;
            let ok = match lit.get(..5) {
                Some(p) if p.eq_ignore_ascii_case("IPv6:") => lit[5..].parse::<Ipv6Addr>().is_ok(),
                _ => lit.parse::<Ipv4Addr>().is_ok(),
            };
            if !ok {
                return Err("bad address literal");
            }
            self.i = end + 1;
            return self.text(start);
        }
        loop {
            let label = self.i;
            while self
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'-' || c >= 0x80)
            {
                self.i += 1;
            }
            let l = &self.s[label..self.i];
            if l.is_empty() || l.len() > 63 || l[0] == b'-' || l[l.len() - 1] == b'-' {
                return Err("bad domain");
            }
            if self.peek() == Some(b'.')
                && self
                    .s
                    .get(self.i + 1)
                    .is_some_and(|&c| c != b'>' && c != b',' && c != b':')
            {
                self.i += 1;
            } else {
                break;
            }
        }
        if self.i - start > 253 {
            return Err("domain too long");
        }
        self.text(start)
    }
}

/// Parses a domain as given in flags (`--route`, `--hostname`): a bare name.
pub fn is_valid_domain(s: &str) -> bool {
    let mut p = Cursor {
        s: s.as_bytes(),
        i: 0,
    };
    p.domain().is_ok() && p.i == s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(l: &str, d: &str) -> Mailbox {
        Mailbox {
            local: l.into(),
            domain: d.into(),
        }
    }

    #[test]
    fn reverse_paths() {
        let ok: &[(&str, Option<Mailbox>, usize)] = &[
            ("<>", None, 0),
            ("<a@b.test>", Some(mb("a", "b.test")), 0),
            (" <a@b.test>", Some(mb("a", "b.test")), 0),
            ("a@b.test", Some(mb("a", "b.test")), 0),
            (
                "<a.b+c@x-y.test> SIZE=100 BODY=8BITMIME",
                Some(mb("a.b+c", "x-y.test")),
                2,
            ),
            (
                "<\"john doe\"@b.test>",
                Some(mb("\"john doe\"", "b.test")),
                0,
            ),
            ("<\"a>b\"@b.test>", Some(mb("\"a>b\"", "b.test")), 0),
            ("<@r1.test,@r2.test:u@c.test>", Some(mb("u", "c.test")), 0),
            ("<u@[127.0.0.1]>", Some(mb("u", "[127.0.0.1]")), 0),
            ("<u@[IPv6:::1]>", Some(mb("u", "[IPv6:::1]")), 0),
            ("<ü@bücher.test> SMTPUTF8", Some(mb("ü", "bücher.test")), 1),
        ];
        for (input, want, nparams) in ok {
            let (got, params) =
                parse_reverse_path(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(&got, want, "{input}");
            assert_eq!(params.len(), *nparams, "{input}");
        }
        let bad = [
            "<a@b.test",
            "<a@>",
            "<@b.test>",
            "<a@b..test>",
            "<a@-b.test>",
            "<a..b@c.test>",
            "<a b@c.test>",
            "<a@[1.2.3]>",
            "<a@[IPv6:zz]>",
            "<a@b.test>SIZE=1",
            "<a@b.test> SIZE=",
            "<a@b.test> =1",
            "",
            "<\"unterminated@b.test>",
            "<a@b.test> K=v=w",
        ];
        for input in bad {
            assert!(parse_reverse_path(input).is_err(), "{input} should fail");
        }
    }

    #[test]
    fn forward_paths() {
        assert_eq!(
            parse_forward_path("<Postmaster>").unwrap().0,
            ForwardPath::Postmaster
        );
        assert_eq!(
            parse_forward_path("<postmaster>").unwrap().0,
            ForwardPath::Postmaster
        );
        assert_eq!(
            parse_forward_path("<postmaster@x.test>").unwrap().0,
            ForwardPath::Mailbox(mb("postmaster", "x.test"))
        );
        assert!(parse_forward_path("<>").is_err());
        // A percent-hack or bang path is just a local part: relay policy judges the domain.
        assert_eq!(
            parse_forward_path("<user%other.test@relay.test>")
                .unwrap()
                .0,
            ForwardPath::Mailbox(mb("user%other.test", "relay.test"))
        );
    }

    #[test]
    fn params_upper_cased() {
        let (_, p) = parse_reverse_path("<a@b.test> body=8bitmime smtputf8").unwrap();
        assert_eq!(
            p[0],
            Param {
                keyword: "BODY".into(),
                value: Some("8bitmime".into())
            }
        );
        assert_eq!(
            p[1],
            Param {
                keyword: "SMTPUTF8".into(),
                value: None
            }
        );
    }

    #[test]
    fn length_limits() {
        let long = format!("<{}@b.test>", "a".repeat(600));
        assert_eq!(parse_reverse_path(&long), Err("path too long"));
        let label = format!("<a@{}.test>", "b".repeat(64));
        assert!(parse_reverse_path(&label).is_err());
    }

    #[test]
    fn mailbox_parse_and_display() {
        let m = Mailbox::parse("root@relay.test").unwrap();
        assert_eq!(m.to_string(), "root@relay.test");
        assert!(Mailbox::parse("root").is_err());
        assert!(Mailbox::parse("a@b.test x").is_err());
        assert!(is_valid_domain("mx.example.test"));
        assert!(!is_valid_domain("mx..test"));
    }
}
