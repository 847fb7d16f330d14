//! A zone in memory that answers the checks' DNS questions in unit tests.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::lookup::Lookup;
use crate::dns::{DnsError, MxLookup};

/// A zone in memory for unit tests. Names are case-insensitive; a name never mentioned is
/// NXDOMAIN; one in `servfail` fails temporarily.
#[derive(Default)]
pub struct Table {
    txt: HashMap<String, Vec<Vec<Vec<u8>>>>,
    ips: HashMap<String, Vec<IpAddr>>,
    mx: HashMap<String, Vec<(u16, String)>>,
    ptr: HashMap<IpAddr, Vec<String>>,
    names: HashSet<String>,
    servfail: HashSet<String>,
    /// Every question asked, as "TYPE name".
    pub asked: std::cell::RefCell<Vec<String>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Table {
    /// A TXT record of one string.
    pub fn with_txt(self, name: &str, text: &str) -> Table {
        self.with_txt_strings(name, &[text])
    }

    /// A TXT record of several strings.
    pub fn with_txt_strings(mut self, name: &str, strings: &[&str]) -> Table {
        let record = strings.iter().map(|s| s.as_bytes().to_vec()).collect();
        self.txt.entry(key(name)).or_default().push(record);
        self.names.insert(key(name));
        self
    }

    pub fn with_ip(mut self, name: &str, ip: &str) -> Table {
        let ip: IpAddr = ip.parse().expect("an address");
        self.ips.entry(key(name)).or_default().push(ip);
        self.names.insert(key(name));
        self
    }

    pub fn with_mx(mut self, name: &str, preference: u16, host: &str) -> Table {
        let host = host.trim_end_matches('.').to_string();
        self.mx
            .entry(key(name))
            .or_default()
            .push((preference, host));
        self.names.insert(key(name));
        self
    }

    pub fn with_ptr(mut self, ip: &str, name: &str) -> Table {
        let ip: IpAddr = ip.parse().expect("an address");
        self.ptr.entry(ip).or_default().push(key(name));
        self
    }

    /// The name exists, with no records.
    pub fn with_name(mut self, name: &str) -> Table {
        self.names.insert(key(name));
        self
    }

    pub fn with_servfail(mut self, name: &str) -> Table {
        self.servfail.insert(key(name));
        self
    }

    fn ask(&self, kind: &str, name: &str) -> Result<String, DnsError> {
        let name = key(name);
        self.asked.borrow_mut().push(format!("{kind} {name}"));
        if self.servfail.contains(&name) {
            return Err(DnsError::Temporary("SERVFAIL".into()));
        }
        if !self.names.contains(&name) {
            return Err(DnsError::NoSuchDomain);
        }
        Ok(name)
    }
}

impl Lookup for Table {
    fn txt(&self, name: &str) -> Result<Vec<Vec<Vec<u8>>>, DnsError> {
        let name = self.ask("TXT", name)?;
        Ok(self.txt.get(&name).cloned().unwrap_or_default())
    }

    fn ips(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        let name = self.ask(if v6 { "AAAA" } else { "A" }, name)?;
        let all = self.ips.get(&name).cloned().unwrap_or_default();
        Ok(all.into_iter().filter(|ip| ip.is_ipv6() == v6).collect())
    }

    fn mx(&self, name: &str) -> Result<MxLookup, DnsError> {
        let name = self.ask("MX", name)?;
        Ok(match self.mx.get(&name) {
            None => MxLookup::None,
            Some(hosts) if hosts.len() == 1 && hosts[0].1.is_empty() => MxLookup::Null,
            Some(hosts) => MxLookup::Hosts(hosts.clone()),
        })
    }

    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let name = crate::dns::reverse_name(ip);
        self.asked.borrow_mut().push(format!("PTR {name}"));
        self.ptr.get(&ip).cloned().ok_or(DnsError::NoSuchDomain)
    }
}

#[test]
fn nxdomain_nodata_and_servfail() {
    let t = Table::default()
        .with_txt("Example.com.", "v=spf1 -all")
        .with_ip("example.com", "192.0.2.1")
        .with_ip("example.com", "2001:db8::1")
        .with_mx("example.com", 10, "mx.example.com.")
        .with_ptr("192.0.2.1", "mail.example.com.")
        .with_name("empty.example.com")
        .with_servfail("broken.example.com");
    assert_eq!(
        t.txt("example.com"),
        Ok(vec![vec![b"v=spf1 -all".to_vec()]])
    );
    assert_eq!(
        t.ips("example.com", false),
        Ok(vec!["192.0.2.1".parse().unwrap()])
    );
    assert_eq!(
        t.ips("example.com", true),
        Ok(vec!["2001:db8::1".parse().unwrap()])
    );
    assert_eq!(
        t.mx("example.com"),
        Ok(MxLookup::Hosts(vec![(10, "mx.example.com".into())]))
    );
    assert_eq!(t.txt("empty.example.com"), Ok(vec![]));
    assert_eq!(t.mx("empty.example.com"), Ok(MxLookup::None));
    assert_eq!(t.txt("nowhere.example.com"), Err(DnsError::NoSuchDomain));
    assert!(matches!(
        t.ips("broken.example.com", false),
        Err(DnsError::Temporary(_))
    ));
    let ip = "192.0.2.1".parse().unwrap();
    assert_eq!(t.ptr(ip), Ok(vec!["mail.example.com".to_string()]));
    assert_eq!(t.asked.borrow().len(), 9);
}
