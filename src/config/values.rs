//! The values flags take, each parsed with an error that says what is wrong: listeners and
//! their roles, TLS modes, HOST[:PORT], CIDRs, sizes, durations and rates.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::smtp::address;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Relay port: trusted networks or authenticated clients may relay; STARTTLS offered
    /// when a certificate is configured.
    Smtp,
    /// Message submission (RFC 6409): STARTTLS, AUTH required before MAIL.
    Submission,
    /// Implicit TLS submission (RFC 8314), AUTH required.
    Smtps,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Smtp => "smtp",
            Role::Submission => "submission",
            Role::Smtps => "smtps",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub role: Role,
    /// `+proxy`: every connection starts with a PROXY protocol header (v1 or v2) from an
    /// address in `--proxy-from`, naming the real client.
    pub proxy: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsOutbound {
    May,
    Encrypt,
    Verify,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmarthostTls {
    StartTls,
    Implicit,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

pub fn default_spool() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    match std::env::var_os("HOME") {
        Some(home) if !root => PathBuf::from(home).join(".local/state/mxrelay"),
        _ => PathBuf::from("/var/spool/mxrelay"),
    }
}

/// `ADDR:PORT[/ROLE[+proxy]]`.
pub fn parse_listener(s: &str) -> Result<Listener, String> {
    let (addr, role) = match s.rsplit_once('/') {
        Some((a, r)) => (a, r),
        None => (s, "smtp"),
    };
    let (role, proxy) = match role.strip_suffix("+proxy") {
        Some(r) => (r, true),
        None => (role, false),
    };
    let role = match role {
        "smtp" => Role::Smtp,
        "submission" => Role::Submission,
        "smtps" => Role::Smtps,
        other => {
            return Err(format!(
                "{other:?} is not a role (smtp, submission, smtps, each optionally +proxy)"
            ));
        }
    };
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not ADDR:PORT[/ROLE[+proxy]]"))?;
    Ok(Listener { addr, role, proxy })
}

/// `N/PERIOD`: a count per `s`, `m`, `h`, `d` or any duration (`600/h`, `5/10s`).
pub fn parse_rate(v: &str) -> Result<(u32, Duration), String> {
    let (n, period) = v
        .split_once('/')
        .ok_or_else(|| format!("{v:?} is not N/PERIOD"))?;
    let n: u32 = n
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{n:?} is not a positive count"))?;
    let period = match period {
        "s" | "m" | "h" | "d" => parse_duration(&format!("1{period}"))?,
        p => parse_duration(p)?,
    };
    if period.is_zero() {
        return Err("the period must be longer than zero".into());
    }
    Ok((n, period))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 2h, 5d"))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => None,
    };
    d.ok_or_else(|| format!("{s:?} is not a duration like 30s, 5m, 2h, 5d"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a size like 10485760, 512K, 25M"))
}

pub fn parse_host_port(s: &str, default_port: u16) -> Result<HostPort, String> {
    let err = || format!("{s:?} is not HOST[:PORT]");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(err)?;
        match after.strip_prefix(':') {
            Some(p) => (h, p.parse::<u16>().map_err(|_| err())?),
            None if after.is_empty() => (h, default_port),
            None => return Err(err()),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p.parse::<u16>().map_err(|_| err())?),
            Some(_) if s.parse::<IpAddr>().is_ok() => (s, default_port),
            Some(_) => return Err(err()),
            None => (s, default_port),
        }
    };
    if port == 0 || (host.parse::<IpAddr>().is_err() && !address::is_valid_domain(host)) {
        return Err(err());
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let err = || format!("{s:?} is not an address or CIDR like 192.0.2.0/24");
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (
            ip.parse::<IpAddr>().map_err(|_| err())?,
            Some(p.parse::<u8>().map_err(|_| err())?),
        ),
        None => (s.parse::<IpAddr>().map_err(|_| err())?, None),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return Err(err());
    }
    Ok(Cidr { addr: ip, prefix })
}

/// A key from a file (`--webhook-secret-file`, `--tracking-secret-file`): its contents, one
/// trailing newline (LF or CRLF) trimmed; refused when empty.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut s = std::fs::read(path)
        .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
    if s.last() == Some(&b'\n') {
        s.pop();
        if s.last() == Some(&b'\r') {
            s.pop();
        }
    }
    if s.is_empty() {
        return Err(format!("the secret file {} is empty", path.display()));
    }
    Ok(s)
}
