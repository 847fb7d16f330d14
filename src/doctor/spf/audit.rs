//! The audit: a domain's whole record tree, whatever the client, and what a receiver would
//! trip over.

use super::*;

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
