//! The DNS questions the checks ask, as a trait: the real resolver (`--dns-server`, the same
//! client delivery uses) answers them in `mxrelay check`, a table answers them in unit tests.

use std::net::IpAddr;

use crate::dns::{DnsClient, DnsError, MxLookup, Resolver};

/// NXDOMAIN is `Err(DnsError::NoSuchDomain)`; a name without records of the type (NODATA) is
/// `Ok` with none.
pub trait Lookup {
    /// TXT records, each as its character-strings in order.
    fn txt(&self, name: &str) -> Result<Vec<Vec<Vec<u8>>>, DnsError>;
    /// A records, or with `v6` AAAA records.
    fn ips(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError>;
    fn mx(&self, name: &str) -> Result<MxLookup, DnsError>;
    /// PTR names of an address, without trailing dots.
    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError>;

    /// TXT records as texts: the strings of each joined without a separator, as SPF, DKIM
    /// and DMARC read them (RFC 7208 3.3, RFC 6376 3.6.2.2); NXDOMAIN is no record.
    fn texts(&self, name: &str) -> Result<Vec<String>, DnsError> {
        match self.txt(name) {
            Ok(records) => Ok(records
                .iter()
                .map(|strings| String::from_utf8_lossy(&strings.concat()).into_owned())
                .collect()),
            Err(DnsError::NoSuchDomain) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

impl Lookup for DnsClient {
    fn txt(&self, name: &str) -> Result<Vec<Vec<Vec<u8>>>, DnsError> {
        DnsClient::txt(self, name)
    }

    fn ips(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        DnsClient::ips(self, name, v6)
    }

    fn mx(&self, name: &str) -> Result<MxLookup, DnsError> {
        Resolver::mx(self, name)
    }

    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        DnsClient::ptr(self, ip)
    }
}
