//! What `mxrelay check` reads from other people's DNS: an SPF record (parsed, then evaluated
//! and audited in a zone where every name publishes it, so includes, redirects and macros
//! recurse as far as they like), DKIM and DMARC tag lists, and a DKIM key record. Never panics,
//! and the SPF limits hold: evaluation stops past 10 lookups, and an audit that counts more
//! says so as a fatal problem.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mxrelay::dns::{DnsError, MxLookup};
use mxrelay::doctor::lookup::Lookup;
use mxrelay::doctor::{dkim, spf, tags};
use mxrelay::transform::dkim::{Algorithm, Key};
use openssl::pkey::PKey;

/// Every name has the record, an A and an AAAA record, two MX hosts and a PTR name.
struct Zone<'a> {
    record: &'a [u8],
}

impl Lookup for Zone<'_> {
    fn txt(&self, name: &str) -> Result<Vec<Vec<Vec<u8>>>, DnsError> {
        if name.len() % 7 == 3 {
            return Err(DnsError::NoSuchDomain);
        }
        let strings = self.record.chunks(255).map(<[u8]>::to_vec).collect();
        Ok(vec![strings])
    }

    fn ips(&self, _name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        Ok(vec![if v6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))
        } else {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
        }])
    }

    fn mx(&self, name: &str) -> Result<MxLookup, DnsError> {
        Ok(MxLookup::Hosts(vec![
            (10, format!("mx1.{name}")),
            (20, format!("mx2.{name}")),
        ]))
    }

    fn ptr(&self, _ip: IpAddr) -> Result<Vec<String>, DnsError> {
        Ok(vec!["mail.example.com".into()])
    }
}

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| Key {
        domain: "example.com".into(),
        selector: "mail".into(),
        algorithm: Algorithm::Ed25519Sha256,
        pkey: PKey::generate_ed25519().unwrap(),
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = spf::Record::parse(&text);
    let _ = tags::parse(&text);
    let zone = Zone { record: data };
    for ip in ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.9"] {
        let ip: IpAddr = ip.parse().unwrap();
        let e = spf::check_host(&zone, ip, "example.com", "user@example.com", "helo.example");
        assert!(e.lookups <= 11, "{} lookups: {}", e.lookups, e.reason);
    }
    let audit = spf::audit(&zone, "example.com");
    if audit.lookups > 10 {
        assert!(
            audit.problems.iter().any(|p| p.fatal),
            "{} lookups",
            audit.lookups
        );
    }
    let found = dkim::check_key(&zone, key(), Path::new("/k.pem"));
    assert!(!found.is_empty());
});
