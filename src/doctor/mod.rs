//! `mxrelay check DOMAIN`: the deliverability doctor. It looks at the DNS of a sending domain
//! from where the relay runs (SPF, DKIM, DMARC, MX, PTR) and optionally at whether port 25 is
//! reachable, and says for each check ok, warn or fail and what to change. It takes the
//! daemon's flags (so an operator can paste the relay's command line: `--dkim`,
//! `--smarthost`, `--hostname`, `--dns-server`, `--mx-port`) plus its own.

pub mod dkim;
pub mod dmarc;
pub mod lookup;
pub mod mx;
pub mod ptr;
pub mod reach;
pub mod report;
pub mod spf;
pub mod spf_check;
#[cfg(test)]
mod table;
pub mod tags;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, FlagDef, multi, opt, switch};
use crate::dns::DnsClient;
use crate::smtp::address;
use crate::transform::dkim::{self as signer, Key};
use lookup::Lookup;
use report::{Finding, Report};

/// `mxrelay check`'s own flags, beside the daemon's.
static CHECK_FLAGS: &[FlagDef] = &[
    multi(
        "source-ip",
        "IP",
        "The public address mail leaves from (repeatable); found from the routing table when not given",
        None,
    ),
    switch("json", "The report as JSON"),
    switch(
        "reachability",
        "Also connect to port 25 of a well-known MX host (or to the smarthost): leaves this machine",
    ),
    opt(
        "reachability-domain",
        "DOMAIN",
        "Whose MX host --reachability connects to",
        Some("gmail.com"),
    ),
];

/// Longest wait for the reachability probe, whatever `--connect-timeout` says.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where mail for the domain leaves from.
#[derive(Debug)]
pub enum Senders {
    /// Straight to the MX hosts, from these addresses.
    Direct(Vec<IpAddr>),
    /// Through a smarthost, at these addresses.
    Smarthost { host: String, addrs: Vec<IpAddr> },
    /// Not known, and why.
    Unknown(String),
}

/// One `--dkim` flag and its key, or why it cannot be read (a finding when it signs the
/// domain's mail).
pub struct KeySpec {
    pub domain: String,
    pub file: PathBuf,
    pub key: Result<Key, String>,
}

/// What the checks look at, taken from the flags.
pub struct Setup {
    pub domain: String,
    pub senders: Senders,
    /// `--hostname`: the EHLO name.
    pub hostname: String,
    /// The `--dkim` keys.
    pub keys: Vec<KeySpec>,
    pub reach: Option<reach::Target>,
    pub probe_timeout: Duration,
}

pub fn main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let (cfg, m) = match config::parse_with(args, CHECK_FLAGS) {
        Ok(parsed) => parsed,
        Err(e) => return bad_usage(&e.to_string()),
    };
    let domain = match m.free.as_slice() {
        [d] if address::is_valid_domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        [d] => return bad_usage(&format!("{d:?} is not a domain")),
        [] => return bad_usage("which domain? mxrelay check DOMAIN"),
        [_, extra, ..] => return bad_usage(&format!("unexpected argument {extra:?}")),
    };
    let dns = DnsClient::with_servers(&cfg.dns_servers);
    let mut source_ips = Vec::new();
    for v in m.opt_strs("source-ip") {
        match v.parse::<IpAddr>() {
            Ok(ip) => source_ips.push(ip),
            Err(_) => return bad_usage(&format!("--source-ip: {v:?} is not an IP address")),
        }
    }
    let smarthost = cfg.scheduler.routes.smarthost.first().cloned();
    let senders = match &smarthost {
        Some(hp) => Senders::Smarthost {
            host: hp.host.clone(),
            addrs: addresses(&dns, &hp.host),
        },
        None if !source_ips.is_empty() => Senders::Direct(source_ips),
        None => routed_source(),
    };
    let reach = m.opt_present("reachability").then(|| match &smarthost {
        Some(hp) => reach::Target::Smarthost(hp.host.clone(), hp.port),
        None => reach::Target::MxOf(
            m.opt_str("reachability-domain")
                .unwrap_or_else(|| "gmail.com".into()),
            cfg.delivery.mx_port,
        ),
    });
    let keys = cfg
        .transforms
        .dkim
        .iter()
        .map(|(d, s, file)| KeySpec {
            domain: d.clone(),
            file: file.clone(),
            key: signer::key::read(d, s, file),
        })
        .collect();
    let setup = Setup {
        domain,
        senders,
        hostname: cfg.hostname.clone(),
        keys,
        reach,
        probe_timeout: cfg.delivery.connect_timeout.min(PROBE_TIMEOUT),
    };
    let report = run(&dns, &setup);
    if m.opt_present("json") {
        print!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every check, in the order of the report.
pub fn run(dns: &dyn Lookup, setup: &Setup) -> Report {
    let domain = setup.domain.as_str();
    let mut findings = Vec::new();
    let (spf, spf_pass) = spf_check::check(dns, domain, &setup.senders, &setup.hostname);
    findings.extend(spf);

    let mut dkim_domains = Vec::new();
    // The flags mxrelay would sign the domain's mail with, as the signer picks them.
    let signing = signer::nearest(&setup.keys, domain, |k| &k.domain);
    for spec in &signing {
        let key = match &spec.key {
            Ok(k) => k,
            Err(e) => {
                findings.push(Finding::fail(
                    "dkim",
                    e.clone(),
                    "fix the key file or the --dkim flag; the relay does not start with it",
                ));
                continue;
            }
        };
        let found = dkim::check_key(dns, key, &spec.file);
        if found.iter().all(|f| f.status != report::Status::Fail) {
            dkim_domains.push(key.domain.clone());
        }
        findings.extend(found);
    }
    if signing.is_empty() {
        findings.push(Finding::warn(
            "dkim",
            format!("mxrelay has no DKIM key for {domain}: its mail goes out unsigned, and DMARC then rests on SPF alone"),
            format!("mxrelay dkim-keygen --domain {domain} --selector mail, publish the record it prints, and run with --dkim {domain}:mail:KEYFILE"),
        ));
    }
    findings.extend(dmarc::check(
        dns,
        domain,
        &dmarc::Identifiers {
            spf_pass,
            dkim_domains: &dkim_domains,
        },
    ));
    findings.push(mx::check(dns, domain));
    match &setup.senders {
        Senders::Direct(ips) => {
            for ip in ips {
                findings.push(ptr::check(dns, *ip, &setup.hostname));
            }
        }
        Senders::Unknown(why) => findings.push(Finding::warn(
            "ptr",
            format!("cannot check reverse DNS: {why}"),
            "give the public address mail leaves from with --source-ip",
        )),
        // The smarthost's reverse DNS is its provider's.
        Senders::Smarthost { .. } => {}
    }
    if let Some(target) = &setup.reach {
        findings.push(reach::check(dns, target, setup.probe_timeout));
    }
    Report {
        domain: domain.to_string(),
        setup: describe(setup),
        findings,
    }
}

fn describe(setup: &Setup) -> String {
    let from = match &setup.senders {
        Senders::Direct(ips) => {
            let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            format!("straight to the MX hosts from {}", ips.join(", "))
        }
        Senders::Smarthost { host, addrs } if addrs.is_empty() => {
            format!("through the smarthost {host} (which has no address)")
        }
        Senders::Smarthost { host, addrs } => {
            let ips: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
            format!("through the smarthost {host} ({})", ips.join(", "))
        }
        Senders::Unknown(why) => format!("from an unknown address ({why})"),
    };
    format!("mail leaves {from}, as {}", setup.hostname)
}

/// The addresses of a host name or address literal (`192.0.2.1`, `[2001:db8::1]`), IPv4 first.
fn addresses(dns: &dyn Lookup, host: &str) -> Vec<IpAddr> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return vec![ip];
    }
    [false, true]
        .into_iter()
        .flat_map(|v6| dns.ips(host, v6).unwrap_or_default())
        .collect()
}

/// The address the routing table would send from towards the Internet. A UDP socket's
/// connect only picks the route: nothing is sent.
fn routed_source() -> Senders {
    let probe = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 25));
    let local = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()));
    match local {
        Ok(addr) if is_public(addr.ip()) => Senders::Direct(vec![addr.ip()]),
        Ok(addr) => Senders::Unknown(format!(
            "this machine's address {} is private; mail leaves through NAT from an address it cannot see",
            addr.ip()
        )),
        Err(e) => Senders::Unknown(format!("no route to the Internet from here ({e})")),
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || first & 0xfe00 == 0xfc00
                || first & 0xffc0 == 0xfe80)
        }
    }
}

fn usage() -> String {
    let mut s = String::from(
        "Usage: mxrelay check DOMAIN [--source-ip IP] [--json] [--reachability] [RELAY FLAGS]\n\n\
         Checks what receivers check about mail from DOMAIN sent through this relay: SPF,\n\
         DKIM (the keys of --dkim), DMARC, MX, reverse DNS of the sending address against\n\
         --hostname, and with --reachability whether port 25 (or the smarthost) answers.\n\
         Takes the relay's own flags, so its command line can be pasted; DNS goes to\n\
         --dns-server. Exits 1 when a check fails, 2 on bad flags.\n\nFlags of check:\n",
    );
    s.push_str(&config::describe(CHECK_FLAGS));
    s
}

fn bad_usage(why: &str) -> ExitCode {
    eprintln!("mxrelay check: {why} (see mxrelay check --help)");
    ExitCode::from(2)
}
