//! Where mail for a domain goes: `--smarthost` beats `--route`, which beats MX. For MX
//! delivery this also orders the hosts (preference, equal preferences shuffled), handles
//! the null MX (RFC 7505) and the implicit MX (RFC 5321 5.1).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::HostPort;
use crate::dns::{DnsError, MxLookup, Resolver};
use crate::smtp::address::domain_key;
use crate::spool::Envelope;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `--smarthost`, one or more in order: resolved by the system resolver; their own TLS
    /// policy and login.
    Smarthost(Arc<[HostPort]>),
    /// A `--route` next hop, resolved by the system resolver.
    Route(HostPort),
    /// MX delivery for this domain (lower case).
    Mx(String),
    /// An address literal, `user@[192.0.2.1]`.
    Literal(IpAddr),
}

#[derive(Debug)]
pub struct RouteTable {
    /// Empty: no smarthost.
    pub smarthost: Arc<[HostPort]>,
    pub routes: HashMap<String, HostPort>,
}

/// Most servers take at least 100 recipients per transaction (RFC 5321 4.5.3.1.8).
const MAX_RCPTS_PER_JOB: usize = 100;

/// One transaction's worth of a message: a destination and its recipients (each with its
/// index in the envelope).
pub type Group = (Destination, Vec<(usize, String)>);

impl RouteTable {
    /// A message's pending recipients, grouped by destination, at most `MAX_RCPTS_PER_JOB`
    /// to a group; one to a group when each gets a copy of their own (`Envelope::personal`).
    pub fn group(&self, env: &Envelope) -> Vec<Group> {
        let per_group = if env.personal.any() {
            1
        } else {
            MAX_RCPTS_PER_JOB
        };
        let mut groups: Vec<Group> = Vec::new();
        for (i, r) in env.pending() {
            let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            let dest = self.destination(domain);
            match groups
                .iter_mut()
                .find(|(d, rcpts)| *d == dest && rcpts.len() < per_group)
            {
                Some((_, rcpts)) => rcpts.push((i, r.address.clone())),
                None => groups.push((dest, vec![(i, r.address.clone())])),
            }
        }
        groups
    }

    pub fn destination(&self, domain: &str) -> Destination {
        if !self.smarthost.is_empty() {
            return Destination::Smarthost(self.smarthost.clone());
        }
        let key = domain_key(domain);
        if let Some(h) = self.routes.get(&key) {
            return Destination::Route(h.clone());
        }
        if let Some(lit) = key.strip_prefix('[').and_then(|k| k.strip_suffix(']')) {
            let ip = lit.strip_prefix("ipv6:").unwrap_or(lit);
            if let Ok(ip) = ip.parse() {
                return Destination::Literal(ip);
            }
        }
        Destination::Mx(key)
    }
}

/// One host to try, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub port: u16,
    pub lookup: Lookup,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// getaddrinfo (honours /etc/hosts): smarthosts and routes.
    System,
    /// The DNS client: MX hosts (so `--dns-server` covers them).
    Dns,
    Fixed(IpAddr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    Permanent {
        status: &'static str,
        reason: String,
    },
    Temporary(String),
}

pub fn candidates(
    dest: &Destination,
    resolver: &dyn Resolver,
    mx_port: u16,
    shuffle: impl Fn(usize) -> usize,
) -> Result<Vec<Candidate>, RouteError> {
    match dest {
        Destination::Smarthost(list) => Ok(list.iter().map(next_hop).collect()),
        Destination::Route(h) => Ok(vec![next_hop(h)]),
        Destination::Literal(ip) => Ok(vec![Candidate {
            name: ip.to_string(),
            port: mx_port,
            lookup: Lookup::Fixed(*ip),
        }]),
        Destination::Mx(domain) => match resolver.mx(domain) {
            Ok(MxLookup::Hosts(mut hosts)) => {
                hosts.sort_by_key(|h| h.0);
                // Shuffle within each run of equal preference (Fisher-Yates).
                let mut start = 0;
                while start < hosts.len() {
                    let end = start
                        + hosts[start..]
                            .iter()
                            .take_while(|h| h.0 == hosts[start].0)
                            .count();
                    for i in (start + 1..end).rev() {
                        let j = start + shuffle(i - start + 1);
                        hosts.swap(i, j);
                    }
                    start = end;
                }
                Ok(hosts
                    .into_iter()
                    .map(|(_, name)| Candidate {
                        name,
                        port: mx_port,
                        lookup: Lookup::Dns,
                    })
                    .collect())
            }
            Ok(MxLookup::Null) => Err(RouteError::Permanent {
                status: "5.1.10",
                reason: format!("{domain} does not accept mail (null MX)"),
            }),
            Ok(MxLookup::None) => Ok(vec![Candidate {
                name: domain.clone(),
                port: mx_port,
                lookup: Lookup::Dns,
            }]),
            Err(DnsError::NoSuchDomain) => Err(RouteError::Permanent {
                status: "5.1.2",
                reason: format!("domain {domain} does not exist"),
            }),
            Err(DnsError::BadName(why)) => Err(RouteError::Permanent {
                status: "5.1.2",
                reason: format!("bad domain {domain}: {why}"),
            }),
            Err(DnsError::Temporary(why)) => Err(RouteError::Temporary(format!(
                "MX lookup for {domain} failed: {why}"
            ))),
        },
    }
}

fn next_hop(h: &HostPort) -> Candidate {
    let lookup = h.host.parse().map(Lookup::Fixed).unwrap_or(Lookup::System);
    Candidate {
        name: h.host.clone(),
        port: h.port,
        lookup,
    }
}

/// Smarthosts that failed lately (refused the connection, failed TLS, or answered 4xx at
/// the greeting): for a while the others are tried first, then the first one again.
#[derive(Default)]
pub struct HostHealth(Mutex<HashMap<(String, u16), Instant>>);

/// How long a failed smarthost goes to the back of the line.
const DOWN_FOR: Duration = Duration::from_secs(60);

impl HostHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn failed(&self, c: &Candidate) {
        self.lock().insert((c.name.clone(), c.port), Instant::now());
    }

    pub fn worked(&self, c: &Candidate) {
        let mut down = self.lock();
        if !down.is_empty() {
            down.remove(&(c.name.clone(), c.port));
        }
    }

    /// The candidates in order, those that failed lately last (still in their order).
    pub fn order(&self, hosts: &mut [Candidate]) {
        let down = self.lock();
        if down.is_empty() {
            return;
        }
        hosts.sort_by_key(|c| {
            down.get(&(c.name.clone(), c.port))
                .is_some_and(|t| t.elapsed() < DOWN_FOR)
        });
    }
}

/// The addresses of one candidate. `Ok(empty)` means the name has no addresses.
pub fn addresses(c: &Candidate, resolver: &dyn Resolver) -> Result<Vec<SocketAddr>, String> {
    let ips = match &c.lookup {
        Lookup::Fixed(ip) => vec![*ip],
        Lookup::System => dns_lookup::lookup_host(&c.name)
            .map_err(|e| format!("cannot resolve {}: {e}", c.name))?
            .collect(),
        Lookup::Dns => match resolver.addrs(&c.name) {
            Ok(ips) => ips,
            Err(DnsError::NoSuchDomain) => Vec::new(),
            Err(e) => return Err(format!("address lookup for {} failed: {e}", c.name)),
        },
    };
    let mut seen = Vec::new();
    for ip in ips {
        let sa = SocketAddr::new(ip, c.port);
        if !seen.contains(&sa) {
            seen.push(sa);
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<MxLookup, DnsError>);
    impl Resolver for Fixed {
        fn mx(&self, _: &str) -> Result<MxLookup, DnsError> {
            self.0.clone()
        }
        fn addrs(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
            Ok(vec![])
        }
    }

    fn table(smarthost: Option<&str>) -> RouteTable {
        let hp = |s: &str| crate::config::parse_host_port(s, 25).unwrap();
        RouteTable {
            smarthost: smarthost.map(hp).into_iter().collect(),
            routes: HashMap::from([("routed.test".to_string(), hp("10.0.0.1:2525"))]),
        }
    }

    #[test]
    fn personal_copies_go_one_recipient_to_a_job() {
        let t = table(None);
        let mut env = Envelope::sample("M1", &["a@x.test", "b@x.test", "c@routed.test"]);
        let sizes = |t: &RouteTable, env: &Envelope| -> Vec<usize> {
            t.group(env).iter().map(|(_, r)| r.len()).collect()
        };
        assert_eq!(sizes(&t, &env), [2, 1]);
        env.personal.unsubscribe = true;
        assert_eq!(sizes(&t, &env), [1, 1, 1]);
    }

    #[test]
    fn precedence() {
        let t = table(None);
        assert_eq!(
            t.destination("Routed.Test"),
            Destination::Route(HostPort {
                host: "10.0.0.1".into(),
                port: 2525
            })
        );
        assert_eq!(
            t.destination("Example.TEST"),
            Destination::Mx("example.test".into())
        );
        assert_eq!(
            t.destination("[192.0.2.1]"),
            Destination::Literal("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            t.destination("[IPv6:2001:db8::1]"),
            Destination::Literal("2001:db8::1".parse().unwrap())
        );
        let t = table(Some("smart.test:587"));
        let smart = HostPort {
            host: "smart.test".into(),
            port: 587,
        };
        assert_eq!(
            t.destination("routed.test"),
            Destination::Smarthost(vec![smart].into())
        );
    }

    #[test]
    fn failed_smarthosts_go_last_in_their_order() {
        let hp = |s: &str| crate::config::parse_host_port(s, 25).unwrap();
        let dest =
            Destination::Smarthost(vec![hp("a.test"), hp("b.test:587"), hp("c.test")].into());
        let list = |h: &HostHealth| {
            let mut hosts = candidates(&dest, &Fixed(Ok(MxLookup::None)), 25, |_| 0).unwrap();
            h.order(&mut hosts);
            hosts.iter().map(|c| c.name.clone()).collect::<Vec<_>>()
        };
        let health = HostHealth::default();
        assert_eq!(list(&health), ["a.test", "b.test", "c.test"]);
        let all = candidates(&dest, &Fixed(Ok(MxLookup::None)), 25, |_| 0).unwrap();
        health.failed(&all[0]);
        health.failed(&all[1]);
        assert_eq!(list(&health), ["c.test", "a.test", "b.test"]);
        health.worked(&all[0]);
        assert_eq!(list(&health), ["a.test", "c.test", "b.test"]);
        // After a while a failed one is first again.
        let long_ago = Instant::now() - DOWN_FOR;
        health.lock().insert(("b.test".into(), 587), long_ago);
        assert_eq!(list(&health), ["a.test", "b.test", "c.test"]);
    }

    #[test]
    fn mx_outcomes() {
        let mx = |r| candidates(&Destination::Mx("d.test".into()), &Fixed(r), 25, |_| 0);
        let hosts = mx(Ok(MxLookup::Hosts(vec![
            (20, "b".into()),
            (10, "a".into()),
            (20, "c".into()),
        ])))
        .unwrap();
        let names: Vec<_> = hosts.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names[0], "a");
        assert_eq!(names.len(), 3);
        assert!(matches!(
            mx(Ok(MxLookup::Null)),
            Err(RouteError::Permanent {
                status: "5.1.10",
                ..
            })
        ));
        assert!(matches!(
            mx(Err(DnsError::NoSuchDomain)),
            Err(RouteError::Permanent {
                status: "5.1.2",
                ..
            })
        ));
        assert!(matches!(
            mx(Err(DnsError::Temporary("x".into()))),
            Err(RouteError::Temporary(_))
        ));
        assert_eq!(mx(Ok(MxLookup::None)).unwrap()[0].name, "d.test");
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let r = Fixed(Ok(MxLookup::Hosts(vec![
            (10, "a".into()),
            (10, "b".into()),
            (5, "z".into()),
        ])));
        let order = |pick: usize| -> Vec<String> {
            candidates(&Destination::Mx("d.test".into()), &r, 25, |_| pick)
                .unwrap()
                .into_iter()
                .map(|c| c.name)
                .collect()
        };
        assert_eq!(order(0), ["z", "b", "a"]);
        assert_eq!(order(1), ["z", "a", "b"]);
    }
}
