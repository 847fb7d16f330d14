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
    let mut spf = match dns.texts(domain) {
        Ok(texts) => texts,
        Err(DnsError::NoSuchDomain) => return Ok(None),
        Err(DnsError::Temporary(why)) => return Err(RecordError::Temporary(why)),
        Err(DnsError::BadName(why)) => return Err(RecordError::BadName(why)),
    };
    spf.retain(|text| is_spf(text));
    match spf.len() {
        0 => Ok(None),
        1 => Ok(Some(spf.remove(0))),
        n => Err(RecordError::Several(n)),
    }
}

/// The record of `domain` as published: `Ok(None)` when there is no v=spf1 record, `Err` with a
/// sentence when there are several (permerror) or the lookup failed.
pub fn record(dns: &dyn Lookup, domain: &str) -> Result<Option<String>, String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    fetch(dns, domain).map_err(|e| format!("{domain}: {e}"))
}

mod audit;
mod check_host;
mod macros;
mod record;
#[cfg(test)]
mod tests;

pub use audit::audit;
pub use check_host::check_host;
pub use macros::{MacroVars, expand};
use macros::{Token, is_valid_name, tokens, truncate_name};
pub use record::*;
