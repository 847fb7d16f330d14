//! The reverse DNS check: the address mail leaves from needs a PTR name that resolves back to
//! it (forward-confirmed reverse DNS), and receivers compare that name with the EHLO name,
//! which is `--hostname`.

use std::net::IpAddr;

use super::lookup::Lookup;
use super::report::Finding;
use crate::dns::DnsError;

const CHECK: &str = "ptr";

pub fn check(dns: &dyn Lookup, ip: IpAddr, hostname: &str) -> Finding {
    let set = format!(
        "ask whoever owns {ip} (the hosting provider, in its control panel) to set its reverse DNS to {hostname}, and give {hostname} the address {ip}"
    );
    let names = match dns.ptr(ip) {
        Ok(n) => n,
        Err(DnsError::NoSuchDomain) => Vec::new(),
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("PTR of {ip}: {e}"),
                "check that the reverse zone's name servers answer, then run the check again",
            );
        }
    };
    if names.is_empty() {
        return Finding::fail(
            CHECK,
            format!(
                "{ip} has no PTR record: Gmail, Outlook and most receivers refuse or junk mail from an address without reverse DNS"
            ),
            set,
        );
    }
    let confirmed: Vec<&String> = names
        .iter()
        .filter(|n| dns.ips(n, ip.is_ipv6()).is_ok_and(|ips| ips.contains(&ip)))
        .collect();
    let Some(name) = confirmed
        .iter()
        .find(|n| n.eq_ignore_ascii_case(hostname))
        .or(confirmed.first())
    else {
        return Finding::fail(
            CHECK,
            format!(
                "{ip} has the PTR name {}, which does not resolve back to {ip} (no forward-confirmed reverse DNS)",
                names.join(", ")
            ),
            format!(
                "give {} the address {ip}, or change the PTR to a name that has it",
                names[0]
            ),
        );
    };
    if !name.eq_ignore_ascii_case(hostname) {
        return Finding::warn(
            CHECK,
            format!(
                "{ip} is {name} both ways, but --hostname (the EHLO name) is {hostname}; receivers compare the two"
            ),
            format!("run with --hostname {name}, or change the PTR of {ip} to {hostname}"),
        );
    }
    Finding::ok(
        CHECK,
        format!("{ip} is {name} both ways, which is --hostname"),
    )
}
