//! The reachability check (`--reachability`): a TCP connection to port 25 of a well-known
//! receiver's MX host (or to the smarthost's port), to tell "outbound port 25 is blocked
//! here" (a silent timeout, what most cloud providers do) from other failures.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use super::lookup::Lookup;
use super::report::Finding;
use crate::dns::MxLookup;
use crate::net::{LineReader, ReplyError, Stream};

const CHECK: &str = "reachability";
/// Addresses tried before concluding.
const TRIES: usize = 3;

/// Where the probe goes.
pub enum Target {
    /// The smarthost: host and port.
    Smarthost(String, u16),
    /// The MX host of this domain, at this port (25 unless `--mx-port`).
    MxOf(String, u16),
}

pub fn check(dns: &dyn Lookup, target: &Target, timeout: Duration) -> Finding {
    let (host, port) = match target {
        Target::Smarthost(host, port) => (host.clone(), *port),
        Target::MxOf(domain, port) => match dns.mx(domain) {
            Ok(MxLookup::Hosts(mut hosts)) if !hosts.is_empty() => {
                hosts.sort();
                (hosts[0].1.clone(), *port)
            }
            other => {
                return Finding::warn(
                    CHECK,
                    format!("cannot probe: no MX host for {domain} ({other:?})"),
                    "name another domain with --reachability-domain",
                );
            }
        },
    };
    let mut addrs = super::addresses(dns, &host);
    addrs.truncate(TRIES);
    if addrs.is_empty() {
        return Finding::warn(
            CHECK,
            format!("cannot probe: {host} has no address"),
            "check DNS from this machine",
        );
    }
    let mut outcomes = Vec::new();
    for ip in addrs {
        let outcome = probe(SocketAddr::new(ip, port), timeout);
        if let Outcome::Greeted(line) = &outcome {
            return Finding::ok(
                CHECK,
                format!("connected to {host} ({ip}) port {port}, which greeted: {line}"),
            );
        }
        outcomes.push((ip, outcome));
    }
    verdict(target, &host, port, timeout, &outcomes)
}

#[derive(Debug)]
enum Outcome {
    Greeted(String),
    /// Connected, but no 220 greeting came.
    Silent(String),
    TimedOut,
    Refused,
    NoRoute,
    Other(String),
}

/// A greeting line longer than this is not SMTP's (RFC 5321 4.5.3.1.5 says 512).
const MAX_GREETING_LINE: usize = 1000;

fn probe(addr: SocketAddr, timeout: Duration) -> Outcome {
    let s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            return match e.kind() {
                ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
                ErrorKind::ConnectionRefused => Outcome::Refused,
                ErrorKind::NetworkUnreachable | ErrorKind::HostUnreachable => Outcome::NoRoute,
                _ => Outcome::Other(e.to_string()),
            };
        }
    };
    let mut reader = LineReader::new(Stream::Plain(s), MAX_GREETING_LINE);
    match reader.read_reply(MAX_GREETING_LINE, timeout) {
        Ok(r) if r.code == 220 => Outcome::Greeted(r.summary()),
        Ok(r) => Outcome::Silent(format!("greeted with {:?}", r.summary())),
        Err(ReplyError::Timeout) => Outcome::Silent("no greeting".into()),
        Err(ReplyError::Closed) => Outcome::Silent("closed without a greeting".into()),
        Err(e) => Outcome::Silent(format!("no SMTP greeting ({e:?})")),
    }
}

fn verdict(
    target: &Target,
    host: &str,
    port: u16,
    timeout: Duration,
    outcomes: &[(IpAddr, Outcome)],
) -> Finding {
    let tried: Vec<String> = outcomes.iter().map(|(ip, _)| ip.to_string()).collect();
    let tried = tried.join(", ");
    let smarthost = matches!(target, Target::Smarthost(..));
    let all = |f: fn(&Outcome) -> bool| outcomes.iter().all(|(_, o)| f(o));
    if all(|o| matches!(o, Outcome::TimedOut)) {
        if smarthost {
            return Finding::fail(
                CHECK,
                format!(
                    "no answer from the smarthost {host} port {port} ({tried}) within {timeout:?}: a firewall here or at the provider drops the connection"
                ),
                "check the smarthost's host and port (587 for submission, 465 for implicit TLS) and the firewall of this network",
            );
        }
        return Finding::fail(
            CHECK,
            format!(
                "no answer from {host} port {port} ({tried}) within {timeout:?}: outbound port 25 looks blocked here, as most cloud and home providers do"
            ),
            "ask the provider to open outbound port 25, or relay through a smarthost on port 587 (--smarthost HOST:587 --smarthost-user USER --smarthost-password-file FILE)",
        );
    }
    if all(|o| matches!(o, Outcome::Refused)) {
        return Finding::fail(
            CHECK,
            format!(
                "{host} port {port} ({tried}) refused the connection: the network answers, but nothing listens there or a firewall rejects the port"
            ),
            if smarthost {
                "check the smarthost's port (587 for submission, 465 for implicit TLS)"
            } else {
                "check this machine's firewall (nftables, iptables) and the provider's for rules rejecting outbound port 25"
            },
        );
    }
    let details: Vec<String> = outcomes
        .iter()
        .map(|(ip, o)| match o {
            Outcome::Silent(why) => format!("{ip}: connected, {why}"),
            Outcome::TimedOut => format!("{ip}: timed out"),
            Outcome::Refused => format!("{ip}: refused"),
            Outcome::NoRoute => format!("{ip}: no route"),
            Outcome::Other(e) => format!("{ip}: {e}"),
            Outcome::Greeted(line) => format!("{ip}: {line}"),
        })
        .collect();
    let silent = outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Silent(_)));
    let fix = if silent {
        "something between here and the host answers for it (a proxy or an antivirus intercepting port 25); relay through a smarthost or remove the interception"
    } else {
        "check this machine's network: routes, IPv6 reachability and firewall"
    };
    Finding::fail(
        CHECK,
        format!("cannot reach {host} port {port}: {}", details.join("; ")),
        fix,
    )
}
