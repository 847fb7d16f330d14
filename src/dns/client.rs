//! Asking the recursive servers: each in turn, for the configured attempts, over UDP and over
//! TCP when a reply is truncated, every exchange bounded by the timeout.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use simple_dns::TYPE;

use super::message::{Query, Rec, Reply, check_name, mx_lookup};
use super::{Answer, DnsError, MxLookup, Resolver, TtlResolver};

/// Stub resolver asking recursive servers in turn; cheap to share between threads.
#[derive(Debug, Clone)]
pub struct DnsClient {
    pub(super) servers: Vec<SocketAddr>,
    pub(super) timeout: Duration,
    pub(super) attempts: u32,
}

impl DnsClient {
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, attempts: u32) -> DnsClient {
        let timeout = timeout.max(Duration::from_millis(1));
        DnsClient {
            servers,
            timeout,
            attempts: attempts.max(1),
        }
    }

    /// `--dns-server`: these servers (5 s timeout, 2 attempts), or the system's when empty.
    pub fn with_servers(servers: &[SocketAddr]) -> DnsClient {
        if servers.is_empty() {
            Self::from_system()
        } else {
            Self::new(servers.to_vec(), Duration::from_secs(5), 2)
        }
    }

    /// Servers, timeout and attempts from /etc/resolv.conf; falls back to 127.0.0.1:53 if none.
    pub fn from_system() -> DnsClient {
        Self::from_resolv_conf(&std::fs::read("/etc/resolv.conf").unwrap_or_default())
    }

    pub(super) fn from_resolv_conf(bytes: &[u8]) -> DnsClient {
        let (cfg, errors) = resolv_conf::Config::parse_with_errors(bytes);
        if !errors.is_empty() {
            log::debug!("resolv.conf: ignoring {errors:?}");
        }
        let mut servers: Vec<SocketAddr> = cfg
            .nameservers
            .iter()
            .map(|ip| SocketAddr::new(ip.into(), 53))
            .collect();
        if servers.is_empty() {
            servers.push(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)));
        }
        // Same caps as glibc.
        let timeout = Duration::from_secs(cfg.timeout.clamp(1, 30).into());
        DnsClient::new(servers, timeout, cfg.attempts.clamp(1, 5))
    }

    fn query(&self, name: &str, qtype: TYPE) -> Answer<Vec<Rec>> {
        let name = match check_name(name) {
            Ok(name) => name,
            Err(e) => return Answer::uncached(e),
        };
        let answer = |result, ttl| Answer {
            result,
            ttl: Some(Duration::from_secs(ttl)),
        };
        let mut last = String::from("no dns servers configured");
        for _ in 0..self.attempts {
            for &server in &self.servers {
                match self.exchange(server, name, qtype) {
                    Reply::Records(recs, ttl) => return answer(Ok(recs), ttl.into()),
                    Reply::NxDomain(ttl) => return answer(Err(DnsError::NoSuchDomain), ttl.into()),
                    Reply::Fail(why) => last = format!("{why} from {server}"),
                    Reply::Truncated | Reply::Ignore => last = format!("bad reply from {server}"),
                }
                log::debug!("dns {name} {qtype:?}: {last}");
            }
        }
        Answer::uncached(DnsError::Temporary(last))
    }

    fn exchange(&self, server: SocketAddr, name: &str, qtype: TYPE) -> Reply {
        let q = match Query::new(name, qtype) {
            Ok(q) => q,
            Err(why) => return Reply::Fail(why),
        };
        let reply = match self.udp(server, &q) {
            Ok(Reply::Truncated) => self.tcp(server, &q).map(|r| match r {
                Reply::Ignore | Reply::Truncated => Reply::Fail("bad tcp reply".into()),
                r => r,
            }),
            r => r,
        };
        reply.unwrap_or_else(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Reply::Fail("timeout".into()),
            _ => Reply::Fail(e.to_string()),
        })
    }

    fn udp(&self, server: SocketAddr, q: &Query) -> io::Result<Reply> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(server)?;
        sock.send(&q.wire)?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0u8; 65535];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            sock.set_read_timeout(Some(left))?;
            let n = match sock.recv(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            match q.parse_reply(&buf[..n]) {
                Reply::Ignore => log::debug!("dns {}: ignoring unrelated reply", q.name),
                Reply::Truncated => {
                    log::debug!("dns {} {:?}: truncated, retrying over tcp", q.name, q.qtype);
                    return Ok(Reply::Truncated);
                }
                r => return Ok(r),
            }
        }
    }

    fn tcp(&self, server: SocketAddr, q: &Query) -> io::Result<Reply> {
        let deadline = Instant::now() + self.timeout;
        let mut s = TcpStream::connect_timeout(&server, self.timeout)?;
        s.set_write_timeout(Some(self.timeout))?;
        // A query is far below 64 KiB: the length always fits.
        s.write_all(&[&(q.wire.len() as u16).to_be_bytes()[..], &q.wire].concat())?;
        let mut len = [0u8; 2];
        read_by(&mut s, &mut len, deadline)?;
        let mut buf = vec![0u8; u16::from_be_bytes(len).into()];
        read_by(&mut s, &mut buf, deadline)?;
        Ok(q.parse_reply(&buf))
    }
}

/// Lookups beyond delivery's, for `mxrelay check`: no cache, NXDOMAIN as
/// [`DnsError::NoSuchDomain`], NODATA as an empty list.
impl DnsClient {
    /// The TXT records of `name`, each as its character-strings.
    pub fn txt(&self, name: &str) -> Result<Vec<Vec<Vec<u8>>>, DnsError> {
        let txt = |r| match r {
            Rec::Txt(strings) => Some(strings),
            _ => None,
        };
        let recs = self.query(name, TYPE::TXT).result?;
        Ok(recs.into_iter().filter_map(txt).collect())
    }

    /// The A (or, with `v6`, AAAA) addresses of `name`.
    pub fn ips(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        let ip = |r| match r {
            Rec::Ip(ip) => Some(ip),
            _ => None,
        };
        let qtype = if v6 { TYPE::AAAA } else { TYPE::A };
        let recs = self.query(name, qtype).result?;
        Ok(recs.into_iter().filter_map(ip).collect())
    }

    /// The names a PTR query for `ip` gives (in-addr.arpa or ip6.arpa).
    pub fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let name = |r| match r {
            Rec::Ptr(n) => Some(n),
            _ => None,
        };
        let recs = self.query(&reverse_name(ip), TYPE::PTR).result?;
        Ok(recs.into_iter().filter_map(name).collect())
    }
}

/// The reverse-lookup name of an address (RFC 1035 3.5, RFC 3596 2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name + "ip6.arpa"
        }
    }
}

/// `read_exact` that must finish by `deadline`, so a slow sender cannot stretch the timeout.
fn read_by(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Resolver for DnsClient {
    fn mx(&self, domain: &str) -> Result<MxLookup, DnsError> {
        self.mx_ttl(domain).result
    }

    fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.addrs_ttl(host).result
    }
}

impl TtlResolver for DnsClient {
    fn mx_ttl(&self, domain: &str) -> Answer<MxLookup> {
        self.query(domain, TYPE::MX).map(mx_lookup)
    }

    fn addrs_ttl(&self, host: &str) -> Answer<Vec<IpAddr>> {
        let ips = |recs: Vec<Rec>| -> Vec<IpAddr> {
            let ip = |r| match r {
                Rec::Ip(ip) => Some(ip),
                _ => None,
            };
            recs.into_iter().filter_map(ip).collect()
        };
        let v6 = self.query(host, TYPE::AAAA).map(ips);
        if let Err(DnsError::NoSuchDomain | DnsError::BadName(_)) = v6.result {
            return v6; // NXDOMAIN holds for every type: skip the A query
        }
        let v4 = self.query(host, TYPE::A).map(ips);
        // Half an answer (one query failed) is returned but not cached.
        let ttl = v6.ttl.zip(v4.ttl).map(|(a, b)| a.min(b));
        let (mut out, mut err) = (Vec::new(), None);
        for r in [v6.result, v4.result] {
            match r {
                Ok(ips) => out.extend(ips),
                Err(e) => err = Some(e),
            }
        }
        let result = match err {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        };
        Answer { result, ttl }
    }
}
