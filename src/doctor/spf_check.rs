//! The SPF check: the domain's record is found and sound (`spf::audit`: the lookup limit, no
//! `+all`, syntax), and each address mail leaves from passes it (`spf::check_host`).

use std::net::IpAddr;

use super::Senders;
use super::lookup::Lookup;
use super::report::Finding;
use super::spf::{self, SpfResult};

const CHECK: &str = "spf";

/// The findings, and whether SPF passes for every sending address.
pub fn check(
    dns: &dyn Lookup,
    domain: &str,
    senders: &Senders,
    helo: &str,
) -> (Vec<Finding>, bool) {
    let mut out = Vec::new();
    let example = match senders {
        Senders::Direct(ips) if !ips.is_empty() => {
            ips.iter().map(mechanism).collect::<Vec<_>>().join(" ")
        }
        Senders::Smarthost { .. } => "include:SMARTHOST-PROVIDER-SPF".to_string(),
        _ => "ip4:YOUR.PUBLIC.ADDRESS".to_string(),
    };
    match spf::record(dns, domain) {
        Ok(Some(record)) => out.push(Finding::ok(
            CHECK,
            format!("{domain} publishes \"{record}\""),
        )),
        Ok(None) => {
            out.push(Finding::fail(
                CHECK,
                format!("{domain} has no SPF record: receivers cannot tell your mail from forgeries, and Gmail and Yahoo require SPF"),
                format!("publish {domain}. IN TXT \"v=spf1 {example} -all\""),
            ));
            return (out, false);
        }
        Err(e) => {
            out.push(Finding::fail(
                CHECK,
                format!("{domain}: {e}"),
                "keep exactly one TXT record starting with v=spf1, and check that the name servers answer",
            ));
            return (out, false);
        }
    }
    let audit = spf::audit(dns, domain);
    if !audit.problems.iter().any(|p| p.fatal) {
        out.push(Finding::ok(
            CHECK,
            format!(
                "the record needs {} of the 10 DNS lookups allowed",
                audit.lookups
            ),
        ));
    }
    for p in &audit.problems {
        out.push(if p.fatal {
            Finding::fail(CHECK, p.text.clone(), p.fix.clone())
        } else {
            Finding::warn(CHECK, p.text.clone(), p.fix.clone())
        });
    }
    let sender = format!("postmaster@{domain}");
    let mut all_pass = true;
    match senders {
        Senders::Direct(ips) => {
            for ip in ips {
                let e = spf::check_host(dns, *ip, domain, &sender, helo);
                if e.result == SpfResult::Pass {
                    out.push(Finding::ok(CHECK, format!("{ip} passes ({})", e.reason)));
                    continue;
                }
                all_pass = false;
                let (meaning, fix) = match e.result {
                    SpfResult::PermError => (
                        "receivers see a broken record, which is no pass",
                        format!(
                            "fix the record's errors, and make it cover {}",
                            mechanism(ip)
                        ),
                    ),
                    SpfResult::TempError => (
                        "receivers defer the mail or ignore SPF",
                        "check that the name servers of every domain in the record answer".into(),
                    ),
                    SpfResult::Fail => (
                        "receivers treat the mail as forged",
                        format!(
                            "add {} to the record of {domain}, before its all",
                            mechanism(ip)
                        ),
                    ),
                    _ => (
                        "SPF vouches nothing for it, and DMARC needs a pass",
                        format!(
                            "add {} to the record of {domain}, before its all",
                            mechanism(ip)
                        ),
                    ),
                };
                out.push(Finding::fail(
                    CHECK,
                    format!(
                        "{ip}, which mail leaves from, gets SPF {} ({}): {meaning}",
                        e.result.name(),
                        e.reason
                    ),
                    fix,
                ));
            }
        }
        Senders::Smarthost { host, addrs } => {
            for ip in addrs {
                let e = spf::check_host(dns, *ip, domain, &sender, helo);
                if e.result == SpfResult::Pass {
                    out.push(Finding::ok(
                        CHECK,
                        format!("the smarthost {host} ({ip}) passes ({})", e.reason),
                    ));
                    continue;
                }
                all_pass = false;
                out.push(Finding::warn(
                    CHECK,
                    format!("mail goes out through the smarthost {host}; its address {ip} gets SPF {} ({}). The provider sends from its own servers, which its SPF include should cover", e.result.name(), e.reason),
                    format!("add the include: your smarthost provider documents to the record of {domain} (e.g. include:spf.provider.example)"),
                ));
            }
        }
        Senders::Unknown(why) => {
            all_pass = false;
            out.push(Finding::warn(
                CHECK,
                format!("cannot test which addresses pass: {why}"),
                "give the public address mail leaves from with --source-ip",
            ));
        }
    }
    (out, all_pass)
}

fn mechanism(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip4:{v4}"),
        IpAddr::V6(v6) => format!("ip6:{v6}"),
    }
}
