//! SPF (RFC 7208) for `mxrelay check`: [`check_host`] evaluates a domain's policy for one client
//! address, [`audit`] walks the whole record tree whatever the address and says what a receiver
//! would trip over (lookup limit, `+all`, syntax, missing include targets).
//!
//! Home-made because the maintained SPF crates (viaspf, mailrs-spf) are async; DNS goes through
//! [`Lookup`], so the checks ask the relay's resolver and the tests a table.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::lookup::Lookup;
use crate::dns::{DnsError, MxLookup};

/// RFC 7208 4.6.4: DNS-querying terms per evaluation, void lookups, names per mx or ptr term.
const MAX_LOOKUPS: u32 = 10;
const MAX_VOID_LOOKUPS: u32 = 2;
const MAX_NAMES: usize = 10;
/// The audit counts past the limit, to say by how much, but stops following records here.
const AUDIT_LOOKUP_CAP: u32 = 50;
/// RFC 7208 7.3: longer expanded names lose labels on the left.
const MAX_NAME_LEN: usize = 253;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpfResult {
    None,
    Neutral,
    Pass,
    Fail,
    SoftFail,
    TempError,
    PermError,
}

impl SpfResult {
    pub fn name(self) -> &'static str {
        match self {
            SpfResult::None => "none",
            SpfResult::Neutral => "neutral",
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub result: SpfResult,
    /// What decided it, in words for an operator, e.g. "ip4:192.0.2.0/24 in the record of
    /// example.com" or "more than 10 DNS lookups (include:x.test in the record of example.com)".
    pub reason: String,
    /// DNS-querying terms evaluated (include, a, mx, ptr, exists, redirect), as counted for the
    /// limit.
    pub lookups: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Terms that cause DNS lookups in the whole tree (every include and redirect followed,
    /// whatever the address), counted as RFC 7208 4.6.4 does, also past the limit.
    pub lookups: u32,
    /// Terms whose a or mx name has no records (NXDOMAIN or NODATA): informational, since
    /// receivers only reach those their client's path goes through. Include and redirect targets
    /// without a record are problems of their own.
    pub void_lookups: u32,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Receivers' evaluation breaks or means nothing (permerror, `+all`); otherwise advice.
    pub fatal: bool,
    /// One sentence naming the domain whose record has it and what receivers make of it.
    pub text: String,
    /// What to change.
    pub fix: String,
}

// ---------------------------------------------------------------------------------------------
// Records

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
pub fn is_spf(text: &[u8]) -> bool {
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

// ---------------------------------------------------------------------------------------------
// Macros (RFC 7208 7)

enum Token<'a> {
    Literal(&'a str),
    Escape(&'static str),
    Macro(Macro<'a>),
}

struct Macro<'a> {
    /// Lowercase; an uppercase letter in the record sets `url_escape`.
    letter: char,
    url_escape: bool,
    keep: Option<usize>,
    reverse: bool,
    delimiters: &'a str,
}

fn tokens(text: &str) -> Result<Vec<Token<'_>>, &'static str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let literal_end = rest.find('%').unwrap_or(rest.len());
        if literal_end > 0 {
            let literal = &rest[..literal_end];
            if !literal.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return Err("only visible ASCII is allowed");
            }
            out.push(Token::Literal(literal));
            rest = &rest[literal_end..];
            continue;
        }
        let (token, after) = match rest.as_bytes().get(1) {
            Some(b'%') => (Token::Escape("%"), &rest[2..]),
            Some(b'_') => (Token::Escape(" "), &rest[2..]),
            Some(b'-') => (Token::Escape("%20"), &rest[2..]),
            Some(b'{') => {
                let end = rest.find('}').ok_or("a macro is not closed with }")?;
                (Token::Macro(parse_macro(&rest[2..end])?), &rest[end + 1..])
            }
            _ => return Err("% must be followed by {, %, _ or -"),
        };
        out.push(token);
        rest = after;
    }
    Ok(out)
}

fn parse_macro(body: &str) -> Result<Macro<'_>, &'static str> {
    let letter = body.chars().next().ok_or("empty macro")?;
    if !letter.is_ascii_alphabetic() || !"slodiphcrtv".contains(letter.to_ascii_lowercase()) {
        return Err("unknown macro letter");
    }
    let rest = &body[1..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let keep = match &rest[..digits] {
        "" => None,
        n => match n.parse::<usize>() {
            Ok(0) => return Err("a macro cannot keep zero parts"),
            Ok(n) => Some(n),
            Err(_) => Some(usize::MAX),
        },
    };
    let rest = &rest[digits..];
    let reverse = rest.starts_with(['r', 'R']);
    let delimiters = if reverse { &rest[1..] } else { rest };
    if !delimiters.chars().all(|c| ".-+,/_=".contains(c)) {
        return Err("bad macro delimiter");
    }
    Ok(Macro {
        letter: letter.to_ascii_lowercase(),
        url_escape: letter.is_ascii_uppercase(),
        keep,
        reverse,
        delimiters,
    })
}

/// What macros expand to.
pub struct MacroVars<'a> {
    /// `<sender>` as local@domain (check_host puts "postmaster" for a missing local part).
    pub sender: &'a str,
    /// `<domain>`: the domain whose record is being evaluated.
    pub domain: &'a str,
    pub ip: IpAddr,
    pub helo: &'a str,
    /// `%{p}`: a validated name of the client, "unknown" when there is none.
    pub ptr_name: &'a str,
}

/// Expands a macro string of a domain spec (the c, r and t letters of explanations are refused).
pub fn expand(macro_string: &str, vars: &MacroVars) -> Result<String, SyntaxError> {
    let bad = |why| SyntaxError::BadTerm {
        term: macro_string.to_string(),
        why,
    };
    let mut out = String::new();
    for token in tokens(macro_string).map_err(bad)? {
        match token {
            Token::Literal(text) => out.push_str(text),
            Token::Escape(text) => out.push_str(text),
            Token::Macro(m) => out.push_str(&m.expand(vars).map_err(bad)?),
        }
    }
    Ok(out)
}

impl Macro<'_> {
    fn expand(&self, vars: &MacroVars) -> Result<String, &'static str> {
        let (local, sender_domain) = vars.sender.rsplit_once('@').unwrap_or(("", vars.sender));
        let value = match self.letter {
            's' => vars.sender.to_string(),
            'l' => local.to_string(),
            'o' => sender_domain.to_string(),
            'd' => vars.domain.to_string(),
            'i' => dotted(vars.ip),
            'p' => vars.ptr_name.to_string(),
            'v' if vars.ip.is_ipv4() => "in-addr".to_string(),
            'v' => "ip6".to_string(),
            'h' => vars.helo.to_string(),
            _ => return Err("the c, r and t macros are only for explanations"),
        };
        let delimiters = if self.delimiters.is_empty() {
            "."
        } else {
            self.delimiters
        };
        let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
        if self.reverse {
            parts.reverse();
        }
        if let Some(keep) = self.keep
            && keep < parts.len()
        {
            parts.drain(..parts.len() - keep);
        }
        let joined = parts.join(".");
        Ok(if self.url_escape {
            url_escape(&joined)
        } else {
            joined
        })
    }
}

/// `%{i}`: dotted decimal, or for IPv6 the 32 nibbles dotted (RFC 7208 7.3).
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let nibbles = v6.octets().into_iter().flat_map(|b| [b >> 4, b & 0xf]);
            let hex: Vec<String> = nibbles.map(|n| format!("{n:x}")).collect();
            hex.join(".")
        }
    }
}

fn url_escape(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 7208 7.3: drop a trailing dot, then labels from the left until 253 characters are left.
fn truncate_name(name: &str) -> String {
    let mut name = name.strip_suffix('.').unwrap_or(name);
    while name.len() > MAX_NAME_LEN {
        match name.split_once('.') {
            Some((_, rest)) => name = rest,
            None => break,
        }
    }
    name.to_string()
}

fn is_valid_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

// ---------------------------------------------------------------------------------------------
// Fetching a record

#[derive(Debug, Clone, PartialEq, Eq)]
enum RecordError {
    Several(usize),
    Temporary(String),
    BadName(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Several(n) => write!(f, "{n} SPF records (permerror, RFC 7208 4.5)"),
            RecordError::Temporary(why) => write!(f, "temporary DNS failure ({why})"),
            RecordError::BadName(why) => write!(f, "not a valid domain name ({why})"),
        }
    }
}

/// RFC 7208 4.4 and 4.5; the strings of one TXT record are joined without a separator (3.3).
fn fetch(dns: &dyn Lookup, domain: &str) -> Result<Option<String>, RecordError> {
    let records = match dns.txt(domain) {
        Ok(records) => records,
        Err(DnsError::NoSuchDomain) => return Ok(None),
        Err(DnsError::Temporary(why)) => return Err(RecordError::Temporary(why)),
        Err(DnsError::BadName(why)) => return Err(RecordError::BadName(why)),
    };
    let mut spf: Vec<Vec<u8>> = records
        .into_iter()
        .map(|strings| strings.concat())
        .filter(|text| is_spf(text))
        .collect();
    match spf.len() {
        0 => Ok(None),
        1 => Ok(Some(String::from_utf8_lossy(&spf.remove(0)).into_owned())),
        n => Err(RecordError::Several(n)),
    }
}

/// The record of `domain` as published: `Ok(None)` when there is no v=spf1 record, `Err` with a
/// sentence when there are several (permerror) or the lookup failed.
pub fn record(dns: &dyn Lookup, domain: &str) -> Result<Option<String>, String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    fetch(dns, domain).map_err(|e| format!("{domain}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// check_host()

/// check_host() of RFC 7208 section 4 for `ip`, `domain` (the MAIL FROM domain) and `sender`
/// (local@domain; for macros), `helo` for %{h}.
pub fn check_host(
    dns: &dyn Lookup,
    ip: IpAddr,
    domain: &str,
    sender: &str,
    helo: &str,
) -> Evaluation {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let mut evaluator = Evaluator {
        dns,
        ip: ip.to_canonical(),
        sender: full_sender(sender, domain),
        helo,
        lookups: 0,
        void_lookups: 0,
    };
    let (result, reason) = match evaluator.check(domain) {
        Ok(verdict) => (verdict.result, verdict.reason),
        Err(stop) => (stop.result, stop.reason),
    };
    Evaluation {
        result,
        reason,
        lookups: evaluator.lookups,
    }
}

/// RFC 7208 4.3: a sender without local part is postmaster; without one at all, postmaster@domain.
fn full_sender(sender: &str, domain: &str) -> String {
    match sender.rsplit_once('@') {
        None if sender.is_empty() => format!("postmaster@{domain}"),
        None => format!("postmaster@{sender}"),
        Some(("", sender_domain)) => format!("postmaster@{sender_domain}"),
        Some(_) => sender.to_string(),
    }
}

/// A result of a record: none, neutral, pass, fail or softfail.
struct Verdict {
    result: SpfResult,
    reason: String,
}

/// temperror or permerror: ends the whole evaluation (RFC 7208 4.6).
struct Stop {
    result: SpfResult,
    reason: String,
}

impl Stop {
    fn perm(reason: String) -> Stop {
        Stop {
            result: SpfResult::PermError,
            reason,
        }
    }

    fn temp(reason: String) -> Stop {
        Stop {
            result: SpfResult::TempError,
            reason,
        }
    }

    /// A failed query other than NXDOMAIN (which callers take as "no records").
    fn dns(error: DnsError, query: &str, term: &str) -> Stop {
        match error {
            DnsError::Temporary(why) => {
                Stop::temp(format!("{query} failed temporarily ({why}), for {term}"))
            }
            other => Stop::perm(format!("{query}: {other}, for {term}")),
        }
    }
}

struct Evaluator<'a> {
    dns: &'a dyn Lookup,
    ip: IpAddr,
    sender: String,
    helo: &'a str,
    lookups: u32,
    void_lookups: u32,
}

impl Evaluator<'_> {
    fn check(&mut self, domain: &str) -> Result<Verdict, Stop> {
        let none = |reason| {
            Ok(Verdict {
                result: SpfResult::None,
                reason,
            })
        };
        if !is_valid_name(domain) || !domain.contains('.') {
            return none(format!("\"{domain}\" is not a domain SPF can check"));
        }
        let text = match fetch(self.dns, domain) {
            Ok(Some(text)) => text,
            Ok(None) => return none(format!("no SPF record at {domain}")),
            Err(RecordError::BadName(_)) => {
                return none(format!("\"{domain}\" is not a domain SPF can check"));
            }
            Err(RecordError::Temporary(why)) => {
                return Err(Stop::temp(format!(
                    "TXT {domain} failed temporarily ({why})"
                )));
            }
            Err(e @ RecordError::Several(_)) => return Err(Stop::perm(format!("{domain}: {e}"))),
        };
        let record =
            Record::parse(&text).map_err(|e| Stop::perm(format!("record of {domain}: {e}")))?;
        for directive in &record.directives {
            if let Some(reason) = self.matches(directive, domain)? {
                return Ok(Verdict {
                    result: directive.qualifier.result(),
                    reason,
                });
            }
        }
        // A record with all never gets here (all matches), as RFC 7208 6.1 wants for redirect.
        if let Some(spec) = &record.redirect {
            let term = format!("redirect={spec} in the record of {domain}");
            self.count(&term)?;
            let target = self.target(spec, domain, &term)?;
            let inner = self.check(&target)?;
            if inner.result == SpfResult::None {
                return Err(Stop::perm(format!("{term}: {}", inner.reason)));
            }
            return Ok(Verdict {
                result: inner.result,
                reason: format!("{term}: {}", inner.reason),
            });
        }
        Ok(Verdict {
            result: SpfResult::Neutral,
            reason: format!("no mechanism matched in the record of {domain}; default ?all"),
        })
    }

    /// `Some(reason)` when the directive matches.
    fn matches(&mut self, directive: &Directive, domain: &str) -> Result<Option<String>, Stop> {
        let term = format!("{} in the record of {domain}", directive.text);
        let matched = match &directive.mechanism {
            Mechanism::All => true,
            Mechanism::Ip4 { network, prefix } => {
                in_network(self.ip, IpAddr::V4(*network), *prefix)
            }
            Mechanism::Ip6 { network, prefix } => {
                in_network(self.ip, IpAddr::V6(*network), *prefix)
            }
            Mechanism::A {
                domain: spec,
                v4,
                v6,
            } => {
                self.count(&term)?;
                let name = self.optional_target(spec, domain, &term)?;
                let prefix = if self.ip.is_ipv4() { *v4 } else { *v6 };
                self.has_address(&name, prefix, &term)?
            }
            Mechanism::Mx {
                domain: spec,
                v4,
                v6,
            } => {
                self.count(&term)?;
                let name = self.optional_target(spec, domain, &term)?;
                let prefix = if self.ip.is_ipv4() { *v4 } else { *v6 };
                self.mx_has_address(&name, prefix, &term)?
            }
            Mechanism::Ptr(spec) => {
                self.count(&term)?;
                let name = self.optional_target(spec, domain, &term)?;
                self.ptr_matches(&name, &term)?
            }
            Mechanism::Exists(spec) => {
                self.count(&term)?;
                let name = self.target(spec, domain, &term)?;
                self.exists(&name, &term)?
            }
            Mechanism::Include(spec) => {
                self.count(&term)?;
                let target = self.target(spec, domain, &term)?;
                let inner = self.check(&target)?;
                match inner.result {
                    SpfResult::Pass => {
                        return Ok(Some(format!("{term} matched: {}", inner.reason)));
                    }
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => false,
                    SpfResult::None => {
                        return Err(Stop::perm(format!("{term}: {} (permerror)", inner.reason)));
                    }
                    SpfResult::TempError | SpfResult::PermError => {
                        return Err(Stop {
                            result: inner.result,
                            reason: inner.reason,
                        });
                    }
                }
            }
        };
        Ok(matched.then_some(term))
    }

    fn count(&mut self, term: &str) -> Result<(), Stop> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return Err(Stop::perm(format!(
                "more than {MAX_LOOKUPS} DNS lookups ({term})"
            )));
        }
        Ok(())
    }

    fn void(&mut self, term: &str) -> Result<(), Stop> {
        self.void_lookups += 1;
        if self.void_lookups > MAX_VOID_LOOKUPS {
            return Err(Stop::perm(format!(
                "more than {MAX_VOID_LOOKUPS} void lookups ({term} finds nothing)"
            )));
        }
        Ok(())
    }

    fn optional_target(
        &mut self,
        spec: &Option<String>,
        domain: &str,
        term: &str,
    ) -> Result<String, Stop> {
        match spec {
            Some(spec) => self.target(spec, domain, term),
            None => Ok(domain.to_string()),
        }
    }

    fn target(&mut self, spec: &str, domain: &str, term: &str) -> Result<String, Stop> {
        let ptr_name = if spec.contains("%{p") || spec.contains("%{P") {
            self.client_name(domain)
        } else {
            String::new()
        };
        let vars = MacroVars {
            sender: &self.sender,
            domain,
            ip: self.ip,
            helo: self.helo,
            ptr_name: &ptr_name,
        };
        let name = expand(spec, &vars).map_err(|e| Stop::perm(format!("{term}: {e}")))?;
        let name = truncate_name(&name);
        if !is_valid_name(&name) {
            return Err(Stop::perm(format!(
                "{term}: \"{name}\" is not a valid domain name"
            )));
        }
        Ok(name)
    }

    fn has_address(&mut self, name: &str, prefix: u8, term: &str) -> Result<bool, Stop> {
        let v6 = self.ip.is_ipv6();
        match self.dns.ips(name, v6) {
            Ok(ips) if !ips.is_empty() => Ok(ips.iter().any(|a| in_network(self.ip, *a, prefix))),
            Ok(_) | Err(DnsError::NoSuchDomain) => self.void(term).map(|()| false),
            Err(e) => Err(Stop::dns(e, &query(v6, name), term)),
        }
    }

    /// RFC 7208 5.4: no implicit MX, and more than 10 MX names is a permerror.
    fn mx_has_address(&mut self, name: &str, prefix: u8, term: &str) -> Result<bool, Stop> {
        let mut hosts = match self.dns.mx(name) {
            Ok(MxLookup::Hosts(hosts)) => hosts,
            Ok(MxLookup::Null) => return Ok(false),
            Ok(MxLookup::None) | Err(DnsError::NoSuchDomain) => {
                return self.void(term).map(|()| false);
            }
            Err(e) => return Err(Stop::dns(e, &format!("MX {name}"), term)),
        };
        hosts.sort_by_key(|(preference, _)| *preference);
        let v6 = self.ip.is_ipv6();
        for (n, (_, host)) in hosts.iter().enumerate() {
            if n == MAX_NAMES {
                return Err(Stop::perm(format!(
                    "{term}: {name} has {} MX hosts, more than {MAX_NAMES}",
                    hosts.len()
                )));
            }
            match self.dns.ips(host, v6) {
                Ok(ips) if ips.iter().any(|a| in_network(self.ip, *a, prefix)) => return Ok(true),
                Ok(_) | Err(DnsError::NoSuchDomain | DnsError::BadName(_)) => {}
                Err(e) => return Err(Stop::dns(e, &query(v6, host), term)),
            }
        }
        Ok(false)
    }

    /// RFC 7208 5.5: a validated name of the client that is `name` or under it. DNS errors make
    /// it not match rather than fail.
    fn ptr_matches(&mut self, name: &str, term: &str) -> Result<bool, Stop> {
        let names = match self.dns.ptr(self.ip) {
            Ok(names) if !names.is_empty() => names,
            Ok(_) | Err(DnsError::NoSuchDomain) => return self.void(term).map(|()| false),
            Err(_) => return Ok(false),
        };
        Ok(self
            .validated(&names)
            .iter()
            .any(|validated| is_within(validated, name)))
    }

    /// `%{p}` (RFC 7208 7.3): a validated name within `domain`, else any, else "unknown".
    fn client_name(&self, domain: &str) -> String {
        let names = self.dns.ptr(self.ip).unwrap_or_default();
        let validated = self.validated(&names);
        let within = validated.iter().find(|name| is_within(name, domain));
        within
            .or(validated.first())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string())
    }

    /// The PTR names (the first 10) whose addresses include the client's.
    fn validated(&self, names: &[String]) -> Vec<String> {
        let v6 = self.ip.is_ipv6();
        names
            .iter()
            .take(MAX_NAMES)
            .filter(|name| {
                self.dns
                    .ips(name, v6)
                    .is_ok_and(|ips| ips.contains(&self.ip))
            })
            .map(|name| name.trim_end_matches('.').to_string())
            .collect()
    }

    /// RFC 7208 5.7: always an A query, whatever the client's address family.
    fn exists(&mut self, name: &str, term: &str) -> Result<bool, Stop> {
        match self.dns.ips(name, false) {
            Ok(ips) if !ips.is_empty() => Ok(true),
            Ok(_) | Err(DnsError::NoSuchDomain) => self.void(term).map(|()| false),
            Err(e) => Err(Stop::dns(e, &query(false, name), term)),
        }
    }
}

fn query(v6: bool, name: &str) -> String {
    format!("{} {name}", if v6 { "AAAA" } else { "A" })
}

fn is_within(name: &str, domain: &str) -> bool {
    let (name, domain) = (name.to_ascii_lowercase(), domain.to_ascii_lowercase());
    name == domain || name.ends_with(&format!(".{domain}"))
}

/// Whether `ip` is in `network/prefix`; the families must agree.
fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let host_bits = |width: u32| width.saturating_sub(u32::from(prefix));
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(host_bits(32)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(host_bits(128)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Audit

/// Walks the record tree of `domain` (every include and redirect, whatever the client) and lists
/// what receivers would trip over.
pub fn audit(dns: &dyn Lookup, domain: &str) -> Audit {
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    let mut walk = Walk {
        dns,
        top: &domain,
        lookups: 0,
        void_names: Vec::new(),
        problems: Vec::new(),
        path: Vec::new(),
    };
    walk.record(&domain, Role::Top);
    let mut summary = Vec::new();
    if walk.lookups >= AUDIT_LOOKUP_CAP {
        summary.push(fatal(format!(
            "{domain}: at least {} DNS lookups (stopped following includes at {AUDIT_LOOKUP_CAP}), over the limit of {MAX_LOOKUPS} (RFC 7208 4.6.4); receivers return permerror",
            walk.lookups
        ), FLATTEN));
    } else if walk.lookups > MAX_LOOKUPS {
        summary.push(fatal(format!(
            "{domain}: {} DNS lookups, over the limit of {MAX_LOOKUPS} (RFC 7208 4.6.4); receivers return permerror",
            walk.lookups
        ), FLATTEN));
    }
    let voids = walk.void_names.len() as u32;
    if voids > MAX_VOID_LOOKUPS {
        summary.push(advice(format!(
            "{domain}: {voids} terms name hosts without records ({}); receivers that reach more than {MAX_VOID_LOOKUPS} of them return permerror",
            walk.void_names.join(", ")
        ), "remove the terms that name hosts without records"));
    }
    summary.append(&mut walk.problems);
    Audit {
        lookups: walk.lookups,
        void_lookups: voids,
        problems: summary,
    }
}

const FLATTEN: &str = "replace includes by the ip4/ip6 ranges they stand for, or drop unused ones";
const ENDING: &str = "end the record with -all (or ~all while testing)";

fn fatal(text: String, fix: &str) -> Problem {
    Problem {
        fatal: true,
        text,
        fix: fix.to_string(),
    }
}

fn advice(text: String, fix: &str) -> Problem {
    Problem {
        fatal: false,
        text,
        fix: fix.to_string(),
    }
}

#[derive(Clone, Copy)]
enum Role<'a> {
    Top,
    Include { from: &'a str },
    Redirect { from: &'a str },
}

struct Walk<'a> {
    dns: &'a dyn Lookup,
    top: &'a str,
    lookups: u32,
    /// "a:gone.example.com in example.com" for each term whose name has no records.
    void_names: Vec<String>,
    problems: Vec<Problem>,
    /// The domains from the top to the one being walked, to see loops.
    path: Vec<String>,
}

impl Walk<'_> {
    fn record(&mut self, domain: &str, role: Role) {
        let text = match fetch(self.dns, domain) {
            Ok(Some(text)) => text,
            Ok(None) => {
                let text = match role {
                    Role::Top => format!("{domain}: no SPF record; receivers get none"),
                    Role::Include { from } => {
                        format!("{from}: include:{domain} has no SPF record (permerror)")
                    }
                    Role::Redirect { from } => {
                        format!("{from}: redirect={domain} has no SPF record (permerror)")
                    }
                };
                let fix = "publish the record, or correct or remove the term that names it";
                return self.problems.push(fatal(text, fix));
            }
            Err(RecordError::Several(n)) => {
                return self.problems.push(fatal(
                    format!("{domain}: several SPF records ({n}), receivers return permerror"),
                    "merge them into one",
                ));
            }
            Err(e @ RecordError::Temporary(_)) => {
                return self.problems.push(advice(format!(
                    "{domain}: the SPF record could not be read: {e}; receivers would return temperror"
                ), "check that the domain's name servers answer, then run the check again"));
            }
            Err(e @ RecordError::BadName(_)) => {
                return self
                    .problems
                    .push(fatal(format!("{domain}: {e}"), "correct the name"));
            }
        };
        let record = match Record::parse(&text) {
            Ok(record) => record,
            Err(e) => {
                return self.problems.push(fatal(
                    format!("{domain}: syntax: {e}; receivers return permerror"),
                    "correct the term (RFC 7208 section 5)",
                ));
            }
        };
        self.path.push(domain.to_ascii_lowercase());
        self.terms(domain, &record, matches!(role, Role::Include { .. }));
        self.path.pop();
    }

    /// An included record only matters when it passes, so its ending is its own business.
    fn terms(&mut self, domain: &str, record: &Record, included: bool) {
        let mut ptr_seen = false;
        for directive in &record.directives {
            let text = &directive.text;
            match &directive.mechanism {
                Mechanism::All if directive.qualifier == Qualifier::Pass => {
                    self.problems.push(fatal(
                        format!("{domain}: \"{text}\" lets every host on the Internet pass SPF"),
                        ENDING,
                    ));
                }
                Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => {}
                Mechanism::Include(spec) => {
                    self.count();
                    if let Some(target) = self.target(spec, domain, text) {
                        self.follow(&target, Role::Include { from: domain }, text);
                    }
                }
                Mechanism::A { domain: spec, .. } => {
                    self.count();
                    if let Some(name) = self.optional_target(spec, domain) {
                        self.addresses(&name, domain, text);
                    }
                }
                Mechanism::Mx { domain: spec, .. } => {
                    self.count();
                    if let Some(name) = self.optional_target(spec, domain) {
                        self.mx(&name, domain, text);
                    }
                }
                Mechanism::Ptr(_) => {
                    self.count();
                    if !ptr_seen {
                        ptr_seen = true;
                        self.problems.push(advice(format!(
                            "{domain}: the ptr mechanism is deprecated (RFC 7208 5.5) and many receivers skip it"
                        ), "list the addresses with ip4, ip6 or a"));
                    }
                }
                Mechanism::Exists(_) => self.count(),
            }
        }
        let all = record.all();
        if let Some((at, all)) = all
            && at + 1 < record.directives.len()
        {
            self.problems.push(advice(
                format!(
                    "{domain}: the terms after \"{}\" are never evaluated",
                    all.text
                ),
                "move them before it",
            ));
        }
        match (&record.redirect, all) {
            (Some(spec), Some(_)) => self.problems.push(advice(
                format!(
                    "{domain}: redirect={spec} is ignored because the record has an all mechanism"
                ),
                "drop the redirect or the all",
            )),
            (Some(spec), None) => {
                self.count();
                let term = format!("redirect={spec}");
                if let Some(target) = self.target(spec, domain, &term) {
                    self.follow(&target, Role::Redirect { from: domain }, &term);
                }
            }
            (None, None) if !included => self.problems.push(advice(
                format!(
                    "{domain}: no all mechanism or redirect at the end: unmatched hosts are neutral"
                ),
                ENDING,
            )),
            (None, Some((_, all))) if !included && all.qualifier == Qualifier::Neutral => {
                self.problems.push(advice(
                    format!(
                        "{domain}: \"{}\" makes unmatched hosts neutral, which protects nothing",
                        all.text
                    ),
                    ENDING,
                ));
            }
            (None, _) => {}
        }
    }

    fn count(&mut self) {
        self.lookups += 1;
    }

    fn follow(&mut self, target: &str, role: Role, term: &str) {
        let from = match role {
            Role::Include { from } | Role::Redirect { from } => from,
            Role::Top => self.top,
        };
        let lower = target.to_ascii_lowercase();
        if let Some(start) = self.path.iter().position(|d| *d == lower) {
            let cycle = self.path[start..].join(" → ");
            return self.problems.push(fatal(format!(
                "{from}: {term} loops back ({cycle} → {target}); receivers run out of DNS lookups and return permerror"
            ), "remove the include or redirect that loops"));
        }
        if self.lookups < AUDIT_LOOKUP_CAP {
            self.record(target, role);
        }
    }

    fn optional_target(&mut self, spec: &Option<String>, domain: &str) -> Option<String> {
        match spec {
            Some(spec) => self.expand_fixed(spec, domain),
            None => Some(domain.to_string()),
        }
    }

    /// Include and redirect targets: one that depends on the sender or client is said so.
    fn target(&mut self, spec: &str, domain: &str, term: &str) -> Option<String> {
        let target = self.expand_fixed(spec, domain);
        if target.is_none() {
            self.problems.push(advice(format!(
                "{domain}: {term} depends on the sender or the client, so it is not followed here; its lookups are not counted"
            ), "count its lookups by hand: the whole tree must stay within 10"));
        }
        target
    }

    /// Expands a spec whose macros are only %{d} and %{o}, which do not depend on the client.
    fn expand_fixed(&self, spec: &str, domain: &str) -> Option<String> {
        let tokens = tokens(spec).ok()?;
        let fixed = tokens.iter().all(|token| match token {
            Token::Macro(m) => m.letter == 'd' || m.letter == 'o',
            _ => true,
        });
        if !fixed {
            return None;
        }
        let sender = format!("postmaster@{}", self.top);
        let vars = MacroVars {
            sender: &sender,
            domain,
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            helo: "",
            ptr_name: "unknown",
        };
        let name = truncate_name(&expand(spec, &vars).ok()?);
        is_valid_name(&name).then_some(name)
    }

    fn addresses(&mut self, name: &str, domain: &str, term: &str) {
        let mut found = false;
        for v6 in [false, true] {
            match self.dns.ips(name, v6) {
                Ok(ips) => found |= !ips.is_empty(),
                Err(DnsError::Temporary(_)) => return,
                Err(_) => {}
            }
        }
        if !found {
            self.void_names.push(format!("{term} in {domain}"));
        }
    }

    fn mx(&mut self, name: &str, domain: &str, term: &str) {
        match self.dns.mx(name) {
            Ok(MxLookup::Hosts(hosts)) if hosts.len() > MAX_NAMES => {
                self.problems.push(fatal(format!(
                    "{domain}: \"{term}\": {name} has {} MX hosts, over the limit of {MAX_NAMES} (RFC 7208 4.6.4); receivers return permerror",
                    hosts.len()
                ), "use a or ip4/ip6 instead"));
            }
            Ok(MxLookup::None) | Err(DnsError::NoSuchDomain) => {
                self.void_names.push(format!("{term} in {domain}"));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "spf_tests.rs"]
mod tests;
