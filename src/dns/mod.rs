//! Stub DNS resolver for MX delivery: MX and A/AAAA lookups over UDP (TCP when truncated)
//! against the configured recursive servers, built on the simple-dns codec.
//!
//! Classification is by RCODE, never by "no answer":
//! * NXDOMAIN → [`DnsError::NoSuchDomain`] (permanent).
//! * NOERROR without MX → [`MxLookup::None`]: the caller uses the domain's A/AAAA (RFC 5321 5.1).
//! * a lone MX with root exchange "." → [`MxLookup::Null`] (RFC 7505); a "." next to real MX
//!   records is dropped.
//! * SERVFAIL, REFUSED, other rcodes, timeouts, network errors and undecodable or mismatched
//!   replies → the next server; when every server failed → [`DnsError::Temporary`].
//! * invalid names are refused before any query → [`DnsError::BadName`] (permanent).
//!
//! Replies must carry our random id, the QR bit and our question; anything else on the
//! (connected) UDP socket is ignored until the timeout runs out.
//!
//! Answers carry how long they may be cached ([`Answer::ttl`]): the smallest TTL of the records
//! of the asked type and of the CNAMEs leading to them; for NXDOMAIN and NODATA the negative TTL
//! of RFC 2308 (the smaller of the authority SOA's TTL and its MINIMUM, else
//! [`DEFAULT_NEGATIVE_TTL`]). [`CachingResolver`] keeps them that long.

mod cache;

pub use cache::{CACHE_ENTRIES, CachingResolver};

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use simple_dns::rdata::{OPT, RData};
use simple_dns::{
    CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, TYPE,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxLookup {
    /// MX records as (preference, exchange host without trailing dot), in the order received.
    Hosts(Vec<(u16, String)>),
    /// RFC 7505 null MX: a single MX whose exchange is the root ".".
    Null,
    /// NOERROR with no MX records (NODATA): fall back to the domain's A/AAAA.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN: permanent.
    NoSuchDomain,
    /// Server failure, timeout, network error, bad reply: temporary. Short human reason.
    Temporary(String),
    /// The name itself is invalid: permanent.
    BadName(String),
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NoSuchDomain => f.write_str("no such domain"),
            DnsError::Temporary(why) => write!(f, "temporary dns failure: {why}"),
            DnsError::BadName(why) => write!(f, "invalid domain name: {why}"),
        }
    }
}

impl std::error::Error for DnsError {}

pub trait Resolver: Send + Sync {
    /// MX records of `domain`, classified as described in the module docs.
    fn mx(&self, domain: &str) -> Result<MxLookup, DnsError>;
    /// AAAA then A addresses of `host` (IPv6 first). NXDOMAIN → NoSuchDomain; NOERROR with
    /// neither A nor AAAA → Ok(empty vec). If one query fails temporarily but the other
    /// returned addresses, those addresses are returned.
    fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;
}

/// A lookup result and how long it may be cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    pub result: Result<T, DnsError>,
    /// The TTL of the answer (see the module docs); `None` when it must not be cached: temporary
    /// failures, invalid names, and addresses returned although the A or AAAA query failed.
    pub ttl: Option<Duration>,
}

impl<T> Answer<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        Answer {
            result: self.result.map(f),
            ttl: self.ttl,
        }
    }

    fn uncached(e: DnsError) -> Answer<T> {
        Answer {
            result: Err(e),
            ttl: None,
        }
    }
}

/// A [`Resolver`] that also says how long each answer stays valid, for [`CachingResolver`].
pub trait TtlResolver: Send + Sync {
    /// As [`Resolver::mx`], with the answer's TTL.
    fn mx_ttl(&self, domain: &str) -> Answer<MxLookup>;
    /// As [`Resolver::addrs`], with the answer's TTL: the smaller of the AAAA and A TTLs.
    fn addrs_ttl(&self, host: &str) -> Answer<Vec<IpAddr>>;
}

/// Negative TTL of an NXDOMAIN or NODATA reply without a SOA in its authority section.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(60);

/// Stub resolver asking recursive servers in turn; cheap to share between threads.
#[derive(Debug, Clone)]
pub struct DnsClient {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: u32,
}

/// One answer record of the asked type; an empty MX exchange is the root.
#[derive(Debug, PartialEq)]
enum Rec {
    Mx(u16, String),
    Ip(IpAddr),
}

/// `Records` and `NxDomain` carry their TTL in seconds (see the module docs).
#[derive(Debug, PartialEq)]
enum Reply {
    Records(Vec<Rec>, u32),
    NxDomain(u32),
    Truncated,
    Fail(String),
    /// Not an answer to our query (spoofed, stale or garbage): keep waiting.
    Ignore,
}

/// One outgoing question: its wire form and what a matching reply has to echo.
struct Query<'a> {
    id: u16,
    name: &'a str,
    qtype: TYPE,
    wire: Vec<u8>,
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

    fn from_resolv_conf(bytes: &[u8]) -> DnsClient {
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
                Rec::Mx(..) => None,
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

fn mx_lookup(recs: Vec<Rec>) -> MxLookup {
    let (mut hosts, mut root) = (Vec::new(), false);
    for rec in recs {
        match rec {
            Rec::Mx(_, host) if host.is_empty() => root = true,
            Rec::Mx(pref, host) => hosts.push((pref, host)),
            Rec::Ip(_) => {}
        }
    }
    match (hosts.is_empty(), root) {
        (false, _) => MxLookup::Hosts(hosts),
        (true, true) => MxLookup::Null,
        (true, false) => MxLookup::None,
    }
}

/// Validates `name` (LDH plus `_`, ASCII only) and returns it without its trailing dot.
fn check_name(name: &str) -> Result<&str, DnsError> {
    let n = name.strip_suffix('.').unwrap_or(name);
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let why = match n
        .split('.')
        .find(|l| l.is_empty() || l.len() > 63 || !l.bytes().all(ok))
    {
        _ if n.is_empty() => "empty name",
        _ if n.len() > 253 => "name longer than 253 octets",
        None => return Ok(n),
        Some("") => "empty label",
        Some(l) if l.len() > 63 => "label longer than 63 octets",
        Some(_) => "invalid character",
    };
    Err(DnsError::BadName(format!("{why} in {name:?}")))
}

impl<'a> Query<'a> {
    fn new(name: &'a str, qtype: TYPE) -> Result<Query<'a>, String> {
        let mut id = [0u8; 2];
        getrandom::fill(&mut id).map_err(|e| format!("no random query id: {e}"))?;
        let id = u16::from_be_bytes(id);
        let mut p = Packet::new_query(id);
        p.set_flags(PacketFlag::RECURSION_DESIRED);
        let qname = Name::new(name).map_err(|e| e.to_string())?;
        p.questions
            .push(Question::new(qname, qtype.into(), CLASS::IN.into(), false));
        let edns = OPT {
            opt_codes: vec![],
            udp_packet_size: 1232,
            version: 0,
        };
        *p.opt_mut() = Some(edns);
        let wire = p.build_bytes_vec().map_err(|e| e.to_string())?;
        Ok(Query {
            id,
            name,
            qtype,
            wire,
        })
    }

    fn parse_reply(&self, buf: &[u8]) -> Reply {
        // Raw header check first, so foreign garbage is ignored rather than counted as a failure.
        if buf.len() < 12 || u16::from_be_bytes([buf[0], buf[1]]) != self.id || buf[2] & 0x80 == 0 {
            return Reply::Ignore;
        }
        let truncated = buf[2] & 0x02 != 0;
        let p = match Packet::parse(buf) {
            Ok(p) => p,
            // A truncated reply may be cut mid-record; TCP will give the whole thing.
            Err(_) if truncated => return Reply::Truncated,
            Err(_) => return Reply::Fail("undecodable reply".into()),
        };
        let echoed = matches!(p.questions.as_slice(), [q] if q.qtype == QTYPE::TYPE(self.qtype)
            && q.qclass == QCLASS::CLASS(CLASS::IN)
            && Name::new(self.name).is_ok_and(|n| n == q.qname));
        // Some servers drop the question from error replies; those only make us try elsewhere.
        let failed = !matches!(p.rcode(), RCODE::NoError | RCODE::NameError);
        if !(echoed || failed && p.questions.is_empty()) {
            return Reply::Ignore;
        }
        let rcode = match p.rcode() {
            _ if truncated => return Reply::Truncated,
            RCODE::NoError => return self.records(&p),
            RCODE::NameError => return Reply::NxDomain(negative_ttl(&p)),
            RCODE::ServerFailure => "SERVFAIL".into(),
            RCODE::Refused => "REFUSED".into(),
            RCODE::FormatError => "FORMERR".into(),
            other => format!("rcode {other:?}"),
        };
        Reply::Fail(rcode)
    }

    /// Answers of the asked type, whatever their owner (a recursive server may add a CNAME chain),
    /// with the smallest TTL among them and the CNAMEs; the negative TTL caps that of NODATA.
    fn records(&self, p: &Packet) -> Reply {
        let (mut recs, mut ttl) = (Vec::new(), u32::MAX);
        for rr in p.answers.iter().filter(|rr| rr.class == CLASS::IN) {
            let rec = match (&rr.rdata, self.qtype) {
                (RData::MX(mx), TYPE::MX) => Some(Rec::Mx(mx.preference, mx.exchange.to_string())),
                (RData::A(a), TYPE::A) => Some(Rec::Ip(Ipv4Addr::from(a.address).into())),
                (RData::AAAA(a), TYPE::AAAA) => Some(Rec::Ip(Ipv6Addr::from(a.address).into())),
                (RData::CNAME(_), _) => None,
                _ => continue,
            };
            ttl = ttl.min(ttl_of(rr));
            recs.extend(rec);
        }
        if recs.is_empty() {
            ttl = ttl.min(negative_ttl(p));
        }
        Reply::Records(recs, ttl)
    }
}

/// A record's TTL; RFC 2181 8: one with the top bit set counts as zero.
fn ttl_of(rr: &ResourceRecord) -> u32 {
    if rr.ttl > i32::MAX as u32 { 0 } else { rr.ttl }
}

/// RFC 2308 5: the smaller of the authority SOA's TTL and its MINIMUM field.
fn negative_ttl(p: &Packet) -> u32 {
    let soa = |rr: &ResourceRecord| match &rr.rdata {
        RData::SOA(soa) => Some(ttl_of(rr).min(soa.minimum)),
        _ => None,
    };
    let default = DEFAULT_NEGATIVE_TTL.as_secs() as u32;
    p.name_servers.iter().find_map(soa).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::RCODE::{FormatError, NameError, NoError, Refused, ServerFailure};
    use simple_dns::rdata::{A, AAAA, CNAME, MX, SOA};
    use std::net::TcpListener;

    const NAME: &str = "example.com";

    /// A reply to `qname`/`qtype` whose answers are owned by a CNAME target, as recursors send,
    /// all with TTL 60.
    fn build(
        id: u16,
        qname: &str,
        qtype: TYPE,
        rcode: RCODE,
        answers: &[RData<'static>],
    ) -> Packet<'static> {
        let mut p = Packet::new_reply(id);
        *p.rcode_mut() = rcode;
        let qname = Name::new_unchecked(qname).into_owned();
        p.questions
            .push(Question::new(qname, qtype.into(), CLASS::IN.into(), false));
        let owner = Name::new_unchecked("alias.example");
        let rr =
            |rd: &RData<'static>| ResourceRecord::new(owner.clone(), CLASS::IN, 60, rd.clone());
        p.answers = answers.iter().map(rr).collect();
        p
    }

    fn packet(
        id: u16,
        qname: &str,
        qtype: TYPE,
        rcode: RCODE,
        answers: &[RData<'static>],
    ) -> Vec<u8> {
        build(id, qname, qtype, rcode, answers)
            .build_bytes_vec()
            .unwrap()
    }

    /// A reply to "example.com MX".
    fn reply(id: u16, rcode: RCODE, answers: &[RData<'static>]) -> Vec<u8> {
        packet(id, NAME, TYPE::MX, rcode, answers)
    }

    fn tc(mut wire: Vec<u8>) -> Vec<u8> {
        wire[2] |= 0x02;
        wire
    }

    fn mx(preference: u16, host: &'static str) -> RData<'static> {
        let exchange = Name::new_unchecked(host); // "." is the root
        RData::MX(MX {
            preference,
            exchange,
        })
    }

    fn hosts(list: &[(u16, &str)]) -> MxLookup {
        MxLookup::Hosts(list.iter().map(|&(p, h)| (p, h.to_string())).collect())
    }

    fn query(name: &str, qtype: TYPE) -> Query<'_> {
        Query {
            id: 7,
            name,
            qtype,
            wire: vec![],
        }
    }

    #[test]
    fn names() {
        let max = ["a".repeat(63).as_str(); 4].join(".")[2..].to_string();
        assert_eq!(check_name("Example.COM."), Ok("Example.COM"));
        assert_eq!(check_name("_x.a-b.c0"), Ok("_x.a-b.c0"));
        assert_eq!(check_name(&max), Ok(max.as_str()));
        let (long_label, long_name) = (format!("{}.com", "a".repeat(64)), format!("a.{max}"));
        let bad = [
            "",
            ".",
            "a..b",
            ".a",
            "a b.com",
            "e\\.com",
            "bücher.de",
            "a.com..",
            &long_label,
        ];
        for name in bad.iter().chain([&long_name.as_str()]) {
            assert!(
                matches!(check_name(name), Err(DnsError::BadName(_))),
                "{name:?}"
            );
        }
    }

    #[test]
    fn resolv_conf() {
        let c = DnsClient::from_resolv_conf(
            b"nameserver 192.0.2.1\nnameserver ::1\noptions timeout:3 attempts:4 bogus\n",
        );
        let servers: Vec<SocketAddr> =
            vec!["192.0.2.1:53".parse().unwrap(), "[::1]:53".parse().unwrap()];
        assert_eq!(
            (c.servers, c.timeout, c.attempts),
            (servers, Duration::from_secs(3), 4)
        );
        let c = DnsClient::from_resolv_conf(b"# nothing\n");
        assert_eq!(c.servers, vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))]);
        assert_eq!((c.timeout, c.attempts), (Duration::from_secs(5), 2));
    }

    #[test]
    fn classify_mx() {
        let table: Vec<(Vec<u8>, MxLookup)> = vec![
            (
                reply(7, NoError, &[mx(10, "a.x"), mx(20, "b.x")]),
                hosts(&[(10, "a.x"), (20, "b.x")]),
            ),
            (reply(7, NoError, &[mx(0, ".")]), MxLookup::Null),
            (
                reply(7, NoError, &[mx(0, "."), mx(5, "mx.x")]),
                hosts(&[(5, "mx.x")]),
            ),
            (reply(7, NoError, &[]), MxLookup::None),
            (
                reply(7, NoError, &[RData::A(A { address: 1 })]),
                MxLookup::None,
            ),
            (
                packet(7, "EXAMPLE.Com", TYPE::MX, NoError, &[mx(1, "m.x")]),
                hosts(&[(1, "m.x")]),
            ),
        ];
        for (i, (wire, want)) in table.into_iter().enumerate() {
            match query(NAME, TYPE::MX).parse_reply(&wire) {
                Reply::Records(recs, _) => assert_eq!(mx_lookup(recs), want, "case {i}"),
                other => panic!("case {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn classify_other() {
        let fail = |s: &str| Reply::Fail(s.into());
        let mut no_question = reply(7, FormatError, &[]);
        no_question[5] = 0; // QDCOUNT = 0; the question becomes ignored trailing bytes
        let mut cut = tc(reply(7, NoError, &[mx(1, "a.example")]));
        cut.truncate(cut.len() - 3);
        let mut not_qr = reply(7, NoError, &[]);
        not_qr[2] &= 0x7f;
        let table: Vec<(Vec<u8>, Reply)> = vec![
            (reply(7, NameError, &[]), Reply::NxDomain(60)),
            (reply(7, ServerFailure, &[]), fail("SERVFAIL")),
            (reply(7, Refused, &[]), fail("REFUSED")),
            (no_question, fail("FORMERR")),
            (tc(reply(7, NoError, &[])), Reply::Truncated),
            (cut, Reply::Truncated),
            (
                vec![0, 7, 0x80, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1],
                fail("undecodable reply"),
            ),
            // Not ours: wrong id, name or type, no QR bit, too short.
            (reply(8, NoError, &[]), Reply::Ignore),
            (
                packet(7, "example.org", TYPE::MX, NameError, &[]),
                Reply::Ignore,
            ),
            (packet(7, NAME, TYPE::A, NoError, &[]), Reply::Ignore),
            (not_qr, Reply::Ignore),
            (vec![0, 7, 0x80], Reply::Ignore),
        ];
        for (i, (wire, want)) in table.into_iter().enumerate() {
            assert_eq!(query(NAME, TYPE::MX).parse_reply(&wire), want, "case {i}");
        }
        let (v6, v4) = (Ipv6Addr::LOCALHOST, Ipv4Addr::LOCALHOST);
        let ips = [RData::AAAA(AAAA::from(v6)), RData::A(A::from(v4))];
        let wire = packet(7, "h.example", TYPE::A, NoError, &ips);
        let want = Reply::Records(vec![Rec::Ip(v4.into())], 60);
        assert_eq!(query("h.example", TYPE::A).parse_reply(&wire), want);
    }

    /// The TTL of a reply: the smallest of the asked-for records and CNAMEs; RFC 2308 for the
    /// negative ones (the authority SOA's TTL capped by its MINIMUM, else the default).
    #[test]
    fn ttls() {
        fn soa(ttl: u32, minimum: u32) -> ResourceRecord<'static> {
            let name = Name::new_unchecked("example.com");
            let soa = RData::SOA(SOA {
                mname: name.clone(),
                rname: name.clone(),
                serial: 1,
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minimum,
            });
            ResourceRecord::new(name, CLASS::IN, ttl, soa)
        }
        let cname = || RData::CNAME(CNAME(Name::new_unchecked("alias.example")));
        type Edit = fn(&mut Packet<'static>);
        let (a, b) = (mx(10, "a.x"), mx(20, "b.x"));
        let table: Vec<(RCODE, Vec<RData<'static>>, Edit, Reply)> = vec![
            (
                NoError,
                vec![a.clone(), b.clone()],
                |_| {},
                Reply::Records(vec![], 60),
            ),
            (
                NoError,
                vec![a.clone(), b.clone()],
                |p| p.answers[1].ttl = 30,
                Reply::Records(vec![], 30),
            ),
            // An SOA next to records does not matter; another type's TTL neither.
            (
                NoError,
                vec![a.clone(), RData::A(A { address: 1 })],
                |p| {
                    p.answers[1].ttl = 5;
                    p.name_servers.push(soa(10, 10));
                },
                Reply::Records(vec![], 60),
            ),
            (
                NoError,
                vec![cname(), a.clone()],
                |p| p.answers[0].ttl = 20,
                Reply::Records(vec![], 20),
            ),
            (
                NoError,
                vec![mx(0, ".")],
                |p| p.answers[0].ttl = 900,
                Reply::Records(vec![], 900),
            ),
            // RFC 2181: a TTL with the top bit set is zero.
            (
                NoError,
                vec![a.clone()],
                |p| p.answers[0].ttl = 1 << 31,
                Reply::Records(vec![], 0),
            ),
            // NODATA and NXDOMAIN.
            (NoError, vec![], |_| {}, Reply::Records(vec![], 60)),
            (
                NoError,
                vec![],
                |p| p.name_servers.push(soa(3600, 300)),
                Reply::Records(vec![], 300),
            ),
            (
                NoError,
                vec![cname()],
                |p| p.name_servers.push(soa(3600, 300)),
                Reply::Records(vec![], 60),
            ),
            (NameError, vec![], |_| {}, Reply::NxDomain(60)),
            (
                NameError,
                vec![],
                |p| p.name_servers.push(soa(120, 900)),
                Reply::NxDomain(120),
            ),
            (
                NameError,
                vec![],
                |p| p.name_servers.push(soa(3600, 900)),
                Reply::NxDomain(900),
            ),
        ];
        for (i, (rcode, answers, edit, want)) in table.into_iter().enumerate() {
            let mut p = build(7, NAME, TYPE::MX, rcode, &answers);
            edit(&mut p);
            let got = match query(NAME, TYPE::MX).parse_reply(&p.build_bytes_vec().unwrap()) {
                Reply::Records(_, ttl) => Reply::Records(vec![], ttl),
                other => other,
            };
            assert_eq!(got, want, "case {i}");
        }
    }

    type Handler = fn(&Packet) -> Vec<Vec<u8>>;

    /// Answers each UDP query with the packets `udp` returns and one TCP query with `tcp`'s first.
    fn responder(udp: Handler, tcp: Handler) -> SocketAddr {
        let (sock, listener) = (0..20)
            .find_map(|_| {
                let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
                let listener = TcpListener::bind(sock.local_addr().ok()?).ok()?;
                Some((sock, listener))
            })
            .unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                for out in udp(&Packet::parse(&buf[..n]).unwrap()) {
                    sock.send_to(&out, peer).unwrap();
                }
            }
        });
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap(); // a small query arrives in one segment on loopback
            let out = tcp(&Packet::parse(&buf[2..n]).unwrap()).remove(0);
            let _ = s.write_all(&[&(out.len() as u16).to_be_bytes()[..], &out].concat());
        });
        addr
    }

    #[test]
    fn truncated_udp_falls_back_to_tcp() {
        let addr = responder(
            // A spoofed reply with a wrong id comes first and must be ignored.
            |q| {
                vec![
                    reply(!q.id(), Refused, &[]),
                    tc(reply(q.id(), NoError, &[])),
                ]
            },
            |q| vec![reply(q.id(), NoError, &[mx(10, "mx.example.com")])],
        );
        let client = DnsClient::new(vec![addr], Duration::from_secs(2), 1);
        assert_eq!(
            client.mx("example.com."),
            Ok(hosts(&[(10, "mx.example.com")]))
        );
    }

    /// Address answers: the smaller TTL of AAAA and A; none when one of them failed.
    #[test]
    fn addrs_ttl() {
        let addr = responder(
            |q| {
                let (name, v6) = (q.questions[0].qname.to_string(), Ipv6Addr::LOCALHOST);
                let QTYPE::TYPE(qtype) = q.questions[0].qtype else {
                    unreachable!()
                };
                let (rcode, answer) = match (name.as_str(), qtype) {
                    (_, TYPE::AAAA) => (NoError, vec![RData::AAAA(v6.into())]),
                    ("half.example", _) => (ServerFailure, vec![]),
                    _ => (NoError, vec![RData::A(Ipv4Addr::LOCALHOST.into())]),
                };
                let mut p = build(q.id(), &name, qtype, rcode, &answer);
                if qtype == TYPE::AAAA {
                    p.answers[0].ttl = 30;
                }
                vec![p.build_bytes_vec().unwrap()]
            },
            |_| vec![],
        );
        let client = DnsClient::new(vec![addr], Duration::from_secs(2), 1);
        let both = client.addrs_ttl("both.example");
        let ips = vec![
            IpAddr::from(Ipv6Addr::LOCALHOST),
            Ipv4Addr::LOCALHOST.into(),
        ];
        assert_eq!(both.result, Ok(ips));
        assert_eq!(both.ttl, Some(Duration::from_secs(30)));
        let half = client.addrs_ttl("half.example");
        assert_eq!(half.result, Ok(vec![Ipv6Addr::LOCALHOST.into()]));
        assert_eq!(half.ttl, None);
        let mx = client.mx_ttl("both.example");
        assert_eq!(mx.result, Ok(MxLookup::None));
        assert_eq!(mx.ttl, Some(DEFAULT_NEGATIVE_TTL));
    }

    #[test]
    fn timeout_and_servfail_try_the_next_server() {
        let silent_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = silent_sock.local_addr().unwrap();
        let client = DnsClient::new(vec![silent], Duration::from_millis(200), 2);
        let start = Instant::now();
        let err = client.mx(NAME).unwrap_err();
        assert_eq!(err, DnsError::Temporary(format!("timeout from {silent}")));
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(2));

        let servfail = responder(|q| vec![reply(q.id(), ServerFailure, &[])], |_| vec![]);
        let good = responder(|q| vec![reply(q.id(), NoError, &[])], |_| vec![]);
        let timeout = Duration::from_millis(200);
        let client = DnsClient::new(vec![silent, servfail, good], timeout, 1);
        assert_eq!(client.mx(NAME), Ok(MxLookup::None));
        let client = DnsClient::new(vec![servfail], timeout, 1);
        let want = DnsError::Temporary(format!("SERVFAIL from {servfail}"));
        assert_eq!(client.mx(NAME), Err(want));
        assert!(matches!(
            client.addrs("bad..name"),
            Err(DnsError::BadName(_))
        ));
    }
}
