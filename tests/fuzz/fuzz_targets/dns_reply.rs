//! A DNS reply as the resolver reads it (the recursive server's answer, or anything else that
//! reaches the socket): never panics, takes only a reply to our query (id, QR bit, question),
//! and keeps only records of the asked type.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use mxrelay::dns::message::{Query, Rec, Reply, mx_lookup};
use simple_dns::TYPE;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let qtype = [TYPE::MX, TYPE::A, TYPE::AAAA, TYPE::TXT, TYPE::PTR][pick as usize % 5];
    let q = Query::new("example.com", qtype).unwrap();
    let mut reply = rest.to_vec();
    // Mostly our id, so that the fuzzer gets past the first check.
    if pick & 0x80 == 0 && reply.len() >= 2 {
        reply[..2].copy_from_slice(&q.id.to_be_bytes());
    }
    match q.parse_reply(&reply) {
        Reply::Records(recs, _ttl) => {
            assert!(reply.len() >= 12 && reply[2] & 0x80 != 0, "not a reply");
            for rec in &recs {
                let ok = match rec {
                    Rec::Mx(..) => qtype == TYPE::MX,
                    Rec::Ip(IpAddr::V4(_)) => qtype == TYPE::A,
                    Rec::Ip(IpAddr::V6(_)) => qtype == TYPE::AAAA,
                    Rec::Txt(_) => qtype == TYPE::TXT,
                    Rec::Ptr(_) => qtype == TYPE::PTR,
                };
                assert!(ok, "{rec:?} in a reply to {qtype:?}");
            }
            if qtype == TYPE::MX {
                let _ = mx_lookup(recs);
            }
        }
        Reply::NxDomain(_) | Reply::Truncated | Reply::Fail(_) => {
            assert!(reply.len() >= 12 && reply[..2] == q.id.to_be_bytes());
        }
        Reply::Ignore => {}
    }
});
