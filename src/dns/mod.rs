//! Stub DNS resolver for MX delivery: MX and A/AAAA lookups over UDP (TCP when truncated)
//! against the configured recursive servers, built on the simple-dns codec.
//!
//! Classification is by RCODE, never by "no answer":
//! * NXDOMAIN → [`DnsError::NoSuchDomain`] (permanent).
//! * NOERROR without MX → [`MxLookup::None`]: the caller uses the domain's A/AAAA (RFC 5321 5.1).
//! * a lone MX with root exchange "." → [`MxLookup::Null`] (RFC 7505); a "." next to real MX
//!   records is dropped.
//! * SERVFAIL, REFUSED, other rcodes, timeouts, network errors and undecodable or mismatched
//!   replies → the next server; when every server failed → [`DnsError::Temporary`].
//! * invalid names are refused before any query → [`DnsError::BadName`] (permanent).
//!
//! Replies must carry our random id, the QR bit and our question; anything else on the
//! (connected) UDP socket is ignored until the timeout runs out.
//!
//! Answers carry how long they may be cached ([`Answer::ttl`]): the smallest TTL of the records
//! of the asked type and of the CNAMEs leading to them; for NXDOMAIN and NODATA the negative TTL
//! of RFC 2308 (the smaller of the authority SOA's TTL and its MINIMUM, else
//! [`DEFAULT_NEGATIVE_TTL`]). [`CachingResolver`] keeps them that long.
//!
//! `client` asks the servers (UDP, TCP, deadlines); `message` builds a query and reads a reply;
//! `cache` keeps answers for their TTL.

mod cache;
mod client;
pub mod message;
#[cfg(test)]
mod tests;

pub use cache::{CACHE_ENTRIES, CachingResolver};
pub use client::{DnsClient, reverse_name};

use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxLookup {
    /// MX records as (preference, exchange host without trailing dot), in the order received.
    Hosts(Vec<(u16, String)>),
    /// RFC 7505 null MX: a single MX whose exchange is the root ".".
    Null,
    /// NOERROR with no MX records (NODATA): fall back to the domain's A/AAAA.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN: permanent.
    NoSuchDomain,
    /// Server failure, timeout, network error, bad reply: temporary. Short human reason.
    Temporary(String),
    /// The name itself is invalid: permanent.
    BadName(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NoSuchDomain => f.write_str("no such domain"),
            DnsError::Temporary(why) => write!(f, "temporary dns failure: {why}"),
            DnsError::BadName(why) => write!(f, "invalid domain name: {why}"),
        }
    }
}

impl std::error::Error for DnsError {}

pub trait Resolver: Send + Sync {
    /// MX records of `domain`, classified as described in the module docs.
    fn mx(&self, domain: &str) -> Result<MxLookup, DnsError>;
    /// AAAA then A addresses of `host` (IPv6 first). NXDOMAIN → NoSuchDomain; NOERROR with
    /// neither A nor AAAA → Ok(empty vec). If one query fails temporarily but the other
    /// returned addresses, those addresses are returned.
    fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;
}

/// A lookup result and how long it may be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub result: Result<T, DnsError>,
    /// The TTL of the answer (see the module docs); `None` when it must not be cached: temporary
    /// failures, invalid names, and addresses returned although the A or AAAA query failed.
    pub ttl: Option<Duration>,
}

impl<T> Answer<T> {
    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        Answer {
            result: self.result.map(f),
            ttl: self.ttl,
        }
    }

    pub(super) fn uncached(e: DnsError) -> Answer<T> {
        Answer {
            result: Err(e),
            ttl: None,
        }
    }
}

/// A [`Resolver`] that also says how long each answer stays valid, for [`CachingResolver`].
pub trait TtlResolver: Send + Sync {
    /// As [`Resolver::mx`], with the answer's TTL.
    fn mx_ttl(&self, domain: &str) -> Answer<MxLookup>;
    /// As [`Resolver::addrs`], with the answer's TTL: the smaller of the AAAA and A TTLs.
    fn addrs_ttl(&self, host: &str) -> Answer<Vec<IpAddr>>;
}

/// Negative TTL of an NXDOMAIN or NODATA reply without a SOA in its authority section.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(60);
