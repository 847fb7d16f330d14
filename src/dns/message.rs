//! DNS messages: building a query (random id, EDNS), accepting only a reply that matches it,
//! and classifying that reply by RCODE into records with their TTL, NXDOMAIN or a failure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use simple_dns::rdata::{OPT, RData};
use simple_dns::{
    CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, ResourceRecord, TYPE,
};

use super::{DEFAULT_NEGATIVE_TTL, DnsError, MxLookup};

/// One answer record of the asked type; an empty MX exchange is the root.
#[derive(Debug, PartialEq)]
pub enum Rec {
    Mx(u16, String),
    Ip(IpAddr),
    /// A TXT record: its character-strings, each as received.
    Txt(Vec<Vec<u8>>),
    /// A PTR record's target name, without the trailing dot.
    Ptr(String),
}

/// `Records` and `NxDomain` carry their TTL in seconds (see the module docs).
#[derive(Debug, PartialEq)]
pub enum Reply {
    Records(Vec<Rec>, u32),
    NxDomain(u32),
    Truncated,
    Fail(String),
    /// Not an answer to our query (spoofed, stale or garbage): keep waiting.
    Ignore,
}

/// One outgoing question: its wire form and what a matching reply has to echo.
pub struct Query<'a> {
    pub id: u16,
    pub name: &'a str,
    pub qtype: TYPE,
    pub wire: Vec<u8>,
}

pub fn mx_lookup(recs: Vec<Rec>) -> MxLookup {
    let (mut hosts, mut root) = (Vec::new(), false);
    for rec in recs {
        match rec {
            Rec::Mx(_, host) if host.is_empty() => root = true,
            Rec::Mx(pref, host) => hosts.push((pref, host)),
            _ => {}
        }
    }
    match (hosts.is_empty(), root) {
        (false, _) => MxLookup::Hosts(hosts),
        (true, true) => MxLookup::Null,
        (true, false) => MxLookup::None,
    }
}

/// Validates `name` (LDH plus `_`, ASCII only) and returns it without its trailing dot.
pub fn check_name(name: &str) -> Result<&str, DnsError> {
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
    pub fn new(name: &'a str, qtype: TYPE) -> Result<Query<'a>, String> {
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

    pub fn parse_reply(&self, buf: &[u8]) -> Reply {
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
                (RData::TXT(t), TYPE::TXT) => Some(Rec::Txt(txt_strings(t))),
                (RData::PTR(p), TYPE::PTR) => Some(Rec::Ptr(p.to_string())),
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

/// The character-strings of a TXT record. simple-dns shows them only split at their first `=`
/// (and drops one that starts with `=`), so they are put back together and checked against
/// the whole text; if that does not add up, the whole text is one string.
fn txt_strings(t: &simple_dns::rdata::TXT) -> Vec<Vec<u8>> {
    let strings: Vec<Vec<u8>> = t
        .iter_raw()
        .map(|(k, v)| match v {
            Some(v) => [k, b"=", v].concat(),
            None => k.to_vec(),
        })
        .collect();
    match String::try_from(t.clone()) {
        Ok(whole) if whole.as_bytes() != strings.concat() => vec![whole.into_bytes()],
        _ => strings,
    }
}

/// A record's TTL; RFC 2181 8: one with the top bit set counts as zero.
pub fn ttl_of(rr: &ResourceRecord) -> u32 {
    if rr.ttl > i32::MAX as u32 { 0 } else { rr.ttl }
}

/// RFC 2308 5: the smaller of the authority SOA's TTL and its MINIMUM field.
pub fn negative_ttl(p: &Packet) -> u32 {
    let soa = |rr: &ResourceRecord| match &rr.rdata {
        RData::SOA(soa) => Some(ttl_of(rr).min(soa.minimum)),
        _ => None,
    };
    let default = DEFAULT_NEGATIVE_TTL.as_secs() as u32;
    p.name_servers.iter().find_map(soa).unwrap_or(default)
}
