//! The MX check: the domain must be able to receive the bounces and replies its mail draws
//! (RFC 5321 5.1, RFC 7505), so it needs an MX host with an address.

use super::lookup::Lookup;
use super::report::Finding;
use crate::dns::{DnsError, MxLookup};

const CHECK: &str = "mx";

pub fn check(dns: &dyn Lookup, domain: &str) -> Finding {
    let retry = "check that the domain's name servers answer, then run the check again";
    match dns.mx(domain) {
        Ok(MxLookup::Hosts(mut hosts)) => {
            hosts.sort();
            let mut seen = Vec::new();
            for (pref, host) in &hosts {
                let addrs = addresses(dns, host);
                if !addrs.is_empty() {
                    seen.push(format!("{pref} {host} ({})", addrs.join(", ")));
                }
            }
            if seen.is_empty() {
                let names: Vec<&str> = hosts.iter().map(|(_, h)| h.as_str()).collect();
                return Finding::fail(
                    CHECK,
                    format!(
                        "the MX hosts of {domain} ({}) have no addresses: bounces and replies cannot arrive",
                        names.join(", ")
                    ),
                    "give the MX hosts A or AAAA records, or point the MX at a host that has them",
                );
            }
            Finding::ok(
                CHECK,
                format!("{domain} receives mail at {}", seen.join("; ")),
            )
        }
        Ok(MxLookup::Null) => Finding::fail(
            CHECK,
            format!(
                "{domain} publishes a null MX (RFC 7505): it says it receives no mail, so bounces and replies are lost, and receivers may refuse mail from it"
            ),
            format!("publish the MX host that receives mail for {domain}"),
        ),
        Ok(MxLookup::None) => match addresses(dns, domain).as_slice() {
            [] => Finding::fail(
                CHECK,
                format!(
                    "{domain} has no MX and no address: bounces and replies cannot arrive, and receivers refuse senders whose domain cannot receive"
                ),
                format!("publish an MX record for {domain}"),
            ),
            addrs => Finding::warn(
                CHECK,
                format!(
                    "{domain} has no MX; mail to it goes to its own address ({})",
                    addrs.join(", ")
                ),
                format!("publish an MX record for {domain} naming the host that receives its mail"),
            ),
        },
        Err(DnsError::NoSuchDomain) => Finding::fail(
            CHECK,
            format!("{domain} does not exist in DNS (NXDOMAIN)"),
            format!("register {domain} or check its spelling"),
        ),
        Err(e) => Finding::fail(CHECK, format!("MX of {domain}: {e}"), retry),
    }
}

fn addresses(dns: &dyn Lookup, host: &str) -> Vec<String> {
    let ips = super::addresses(dns, host);
    ips.iter().map(ToString::to_string).collect()
}
