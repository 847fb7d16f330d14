//! SPF records (RFC 7208 4.5, 5, 6): which TXT record is the policy, and its terms parsed.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn from_char(c: char) -> Option<Qualifier> {
        match c {
            '+' => Some(Qualifier::Pass),
            '-' => Some(Qualifier::Fail),
            '~' => Some(Qualifier::SoftFail),
            '?' => Some(Qualifier::Neutral),
            _ => None,
        }
    }

    pub fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

/// Domain specs are kept unexpanded (macro strings); `None` means the current domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(String),
    A {
        domain: Option<String>,
        v4: u8,
        v6: u8,
    },
    Mx {
        domain: Option<String>,
        v4: u8,
        v6: u8,
    },
    Ptr(Option<String>),
    Ip4 {
        network: Ipv4Addr,
        prefix: u8,
    },
    Ip6 {
        network: Ipv6Addr,
        prefix: u8,
    },
    Exists(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
    /// The term as written, for messages.
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub directives: Vec<Directive>,
    pub redirect: Option<String>,
    pub explanation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyntaxError {
    NotSpf,
    UnknownMechanism(String),
    BadTerm { term: String, why: &'static str },
    Repeated(&'static str),
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyntaxError::NotSpf => f.write_str("it does not start with v=spf1"),
            SyntaxError::UnknownMechanism(term) => write!(f, "unknown mechanism \"{term}\""),
            SyntaxError::BadTerm { term, why } => write!(f, "\"{term}\": {why}"),
            SyntaxError::Repeated(name) => write!(f, "{name}= appears twice"),
        }
    }
}

impl std::error::Error for SyntaxError {}

/// RFC 7208 4.5: "v=spf1" (any case) alone or followed by a space.
pub fn is_spf(text: &str) -> bool {
    let text = text.as_bytes();
    text.len() >= 6
        && text[..6].eq_ignore_ascii_case(b"v=spf1")
        && (text.len() == 6 || text[6] == b' ')
}

impl Record {
    /// The whole record is checked before anything is evaluated (RFC 7208 4.6).
    pub fn parse(text: &str) -> Result<Record, SyntaxError> {
        let mut terms = text.split(' ').filter(|term| !term.is_empty());
        if !terms
            .next()
            .is_some_and(|v| v.eq_ignore_ascii_case("v=spf1"))
        {
            return Err(SyntaxError::NotSpf);
        }
        let mut record = Record::default();
        for term in terms {
            let Some((name, value)) = modifier(term) else {
                record.directives.push(Directive::parse(term)?);
                continue;
            };
            let bad = |why| SyntaxError::BadTerm {
                term: term.to_string(),
                why,
            };
            let (slot, known) = match name.to_ascii_lowercase().as_str() {
                "redirect" => (&mut record.redirect, "redirect"),
                "exp" => (&mut record.explanation, "exp"),
                _ => {
                    tokens(value).map_err(bad)?;
                    continue;
                }
            };
            if slot.is_some() {
                return Err(SyntaxError::Repeated(known));
            }
            domain_spec(value).map_err(bad)?;
            *slot = Some(value.to_string());
        }
        Ok(record)
    }

    /// The first `all`: what follows it is never evaluated, and it disables redirect.
    pub fn all(&self) -> Option<(usize, &Directive)> {
        self.directives
            .iter()
            .enumerate()
            .find(|(_, d)| d.mechanism == Mechanism::All)
    }
}

/// `name=value` with a name of RFC 7208 4.6.1 (a letter, then letters, digits, - _ .).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let end = term.find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))?;
    let is_modifier = term.as_bytes()[end] == b'=' && term.as_bytes()[0].is_ascii_alphabetic();
    is_modifier.then(|| (&term[..end], &term[end + 1..]))
}

impl Directive {
    fn parse(term: &str) -> Result<Directive, SyntaxError> {
        let bad = |why| SyntaxError::BadTerm {
            term: term.to_string(),
            why,
        };
        let (qualifier, body) = match term.chars().next().and_then(Qualifier::from_char) {
            Some(q) => (q, &term[1..]),
            None => (Qualifier::Pass, term),
        };
        let (name, rest) = body.split_at(body.find([':', '/']).unwrap_or(body.len()));
        let mechanism = match name.to_ascii_lowercase().as_str() {
            "all" if rest.is_empty() => Mechanism::All,
            "all" => return Err(bad("all takes no argument")),
            "include" => Mechanism::Include(required_spec(rest).map_err(bad)?),
            "exists" => Mechanism::Exists(required_spec(rest).map_err(bad)?),
            "ptr" => Mechanism::Ptr(optional_spec(rest).map_err(bad)?),
            "a" => {
                let (domain, v4, v6) = spec_and_cidr(rest).map_err(bad)?;
                Mechanism::A { domain, v4, v6 }
            }
            "mx" => {
                let (domain, v4, v6) = spec_and_cidr(rest).map_err(bad)?;
                Mechanism::Mx { domain, v4, v6 }
            }
            "ip4" => {
                let (network, prefix) = network(rest, 32).map_err(bad)?;
                let network = network.parse().map_err(|_| bad("not an IPv4 address"))?;
                Mechanism::Ip4 { network, prefix }
            }
            "ip6" => {
                let (network, prefix) = network(rest, 128).map_err(bad)?;
                let network = network.parse().map_err(|_| bad("not an IPv6 address"))?;
                Mechanism::Ip6 { network, prefix }
            }
            _ => return Err(SyntaxError::UnknownMechanism(term.to_string())),
        };
        Ok(Directive {
            qualifier,
            mechanism,
            text: term.to_string(),
        })
    }
}

fn required_spec(rest: &str) -> Result<String, &'static str> {
    optional_spec(rest)?.ok_or("a domain is required")
}

fn optional_spec(rest: &str) -> Result<Option<String>, &'static str> {
    if rest.is_empty() {
        return Ok(None);
    }
    let spec = rest
        .strip_prefix(':')
        .ok_or("unexpected text after the name")?;
    domain_spec(spec)?;
    Ok(Some(spec.to_string()))
}

/// `[:domain-spec][/v4][//v6]` of a and mx.
fn spec_and_cidr(rest: &str) -> Result<(Option<String>, u8, u8), &'static str> {
    let mut rest = rest;
    let mut v6 = 128;
    if let Some(at) = rest.rfind("//")
        && let Some(len) = prefix(&rest[at + 2..], 128)?
    {
        v6 = len;
        rest = &rest[..at];
    }
    let mut v4 = 32;
    if let Some(at) = rest.rfind('/')
        && let Some(len) = prefix(&rest[at + 1..], 32)?
    {
        v4 = len;
        rest = &rest[..at];
    }
    Ok((optional_spec(rest)?, v4, v6))
}

/// `:address[/len]` of ip4 and ip6.
fn network(rest: &str, max: u8) -> Result<(&str, u8), &'static str> {
    let rest = rest.strip_prefix(':').ok_or("an address is required")?;
    match rest.split_once('/') {
        None => Ok((rest, max)),
        Some((address, len)) => Ok((address, prefix(len, max)?.ok_or("bad prefix length")?)),
    }
}

/// `Ok(None)` when `text` is not digits at all (so it belongs to the domain); digits with a
/// leading zero or over `max` are an error.
fn prefix(text: &str, max: u8) -> Result<Option<u8>, &'static str> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match text.parse::<u8>() {
        Ok(len) if len <= max && (len == 0 || !text.starts_with('0')) => Ok(Some(len)),
        _ => Err("bad prefix length"),
    }
}

/// A macro string that ends like a domain (RFC 7208 7.1 domain-end): a macro, or "." and a
/// top label that is not all digits.
fn domain_spec(spec: &str) -> Result<(), &'static str> {
    let tokens = tokens(spec)?;
    for token in &tokens {
        if let Token::Macro(m) = token
            && "crt".contains(m.letter)
        {
            return Err("the c, r and t macros are only for explanations");
        }
    }
    let Some(Token::Literal(tail)) = tokens.last() else {
        return if tokens.is_empty() {
            Err("a domain is required")
        } else {
            Ok(())
        };
    };
    let tail = tail.strip_suffix('.').unwrap_or(tail);
    match tail.rsplit_once('.') {
        Some((_, top)) if is_top_label(top) => Ok(()),
        _ => Err("the domain does not end in a top-level label"),
    }
}

fn is_top_label(label: &str) -> bool {
    let ok_chars = label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let has_letter_or_dash = label.bytes().any(|b| b.is_ascii_alphabetic() || b == b'-');
    ok_chars && has_letter_or_dash && !label.starts_with('-') && !label.ends_with('-')
}
