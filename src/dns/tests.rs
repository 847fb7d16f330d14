//! Tests of name checks, reply classification and TTLs, and of the client against a fake
//! server on loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use simple_dns::RCODE::{FormatError, NameError, NoError, Refused, ServerFailure};
use simple_dns::rdata::{A, AAAA, CNAME, MX, RData, SOA};
use simple_dns::{CLASS, Name, Packet, QTYPE, Question, RCODE, ResourceRecord, TYPE};

use super::message::*;
use super::*;

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
    let rr = |rd: &RData<'static>| ResourceRecord::new(owner.clone(), CLASS::IN, 60, rd.clone());
    p.answers = answers.iter().map(rr).collect();
    p
}

fn packet(id: u16, qname: &str, qtype: TYPE, rcode: RCODE, answers: &[RData<'static>]) -> Vec<u8> {
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

/// An authority SOA record with this TTL and MINIMUM.
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

/// The TTL of a reply: the smallest of the asked-for records and CNAMEs; RFC 2308 for the
/// negative ones (the authority SOA's TTL capped by its MINIMUM, else the default).
#[test]
fn ttls() {
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

/// TXT records keep their character-strings apart (a DKIM key split across strings must be
/// told from one split across records); PTR targets lose the trailing dot.
#[test]
fn txt_and_ptr_records() {
    use simple_dns::rdata::{PTR, TXT};
    let txt = |parts: &[&'static str]| {
        let mut t = TXT::new();
        for p in parts {
            t.add_string(p).unwrap();
        }
        RData::TXT(t)
    };
    let records = [
        txt(&["v=DKIM1; k=rsa; p=MIIB", "AQAB"]),
        txt(&["v=spf1 -all"]),
        txt(&["abc=", "=def", "no equals"]),
    ];
    let wire = packet(7, NAME, TYPE::TXT, NoError, &records);
    let want = Reply::Records(
        vec![
            Rec::Txt(vec![b"v=DKIM1; k=rsa; p=MIIB".to_vec(), b"AQAB".to_vec()]),
            Rec::Txt(vec![b"v=spf1 -all".to_vec()]),
            // A string starting with "=" is not shown by simple-dns: one string then.
            Rec::Txt(vec![b"abc==defno equals".to_vec()]),
        ],
        60,
    );
    assert_eq!(query(NAME, TYPE::TXT).parse_reply(&wire), want);

    let ptr = RData::PTR(PTR(Name::new_unchecked("mail.example.com")));
    let rev = "1.2.0.192.in-addr.arpa";
    let wire = packet(7, rev, TYPE::PTR, NoError, &[ptr]);
    let want = Reply::Records(vec![Rec::Ptr("mail.example.com".into())], 60);
    assert_eq!(query(rev, TYPE::PTR).parse_reply(&wire), want);

    assert_eq!(reverse_name("192.0.2.1".parse().unwrap()), rev);
    assert_eq!(
        reverse_name("2001:db8::567:89ab".parse().unwrap()),
        "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
    );
}
