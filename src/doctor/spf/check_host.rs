//! check_host() (RFC 7208 4): one client address against a domain's policy, with the lookup
//! limits of 4.6.4.

use super::*;

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
            }
            | Mechanism::Mx {
                domain: spec,
                v4,
                v6,
            } => {
                self.count(&term)?;
                let name = self.optional_target(spec, domain, &term)?;
                let prefix = if self.ip.is_ipv4() { *v4 } else { *v6 };
                match directive.mechanism {
                    Mechanism::Mx { .. } => self.mx_has_address(&name, prefix, &term)?,
                    _ => self.has_address(&name, prefix, &term)?,
                }
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
