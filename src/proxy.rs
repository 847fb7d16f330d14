//! The PROXY protocol (HAProxy's, versions 1 and 2), as a load balancer in front of a `+proxy`
//! listener sends it: one header before anything else on the connection, naming the client the
//! balancer accepted. This module only parses, without I/O: [`parse`] looks at the bytes
//! received so far and says whether they hold a whole header yet and how long it is, so that
//! the caller reads exactly that much off the socket and leaves what follows (SMTP, or a TLS
//! handshake) where it is.
//!
//! Version 1 is a text line: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN ...\r\n`,
//! 107 bytes at most. Version 2 is binary: a 12-byte signature, version and command, family
//! and transport, a 16-bit length, then the addresses and optional TLVs (skipped here). The
//! `LOCAL` command (the balancer's own health check) and the `UNKNOWN` / unspecified family
//! carry no client: the connection's own peer address stands.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a version 2 header: signature, version/command, family, length.
pub const V2_FIXED: usize = 16;
/// The longest address block (with TLVs) taken after it. Addresses need at most 216 bytes;
/// the rest leaves room for the TLVs balancers add (TLS details, a unique id, cloud
/// endpoint ids) without holding an arbitrary 64 KiB.
pub const V2_MAX_BODY: usize = 2048;
/// The most bytes a header can take.
pub const MAX_HEADER: usize = V2_FIXED + V2_MAX_BODY;

const V1_PREFIX: &[u8] = b"PROXY ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A whole header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The client the balancer accepted; `None` for `UNKNOWN`, `LOCAL` and families without
    /// an IP address: then the connection's own peer is the client.
    pub client: Option<SocketAddr>,
    /// Bytes the header takes: what follows belongs to the client.
    pub len: usize,
}

/// What the bytes received so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A header, possibly followed by the client's first bytes.
    Header(Header),
    /// A prefix of a header: every byte so far belongs to it; wait for more.
    Incomplete,
}

/// Why the bytes are not a PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Neither `PROXY ` nor the version 2 signature.
    NotProxy,
    /// A version 1 line without CRLF within 107 bytes.
    V1TooLong,
    V1(&'static str),
    /// A version 2 length above [`V2_MAX_BODY`].
    V2TooLong(usize),
    V2(&'static str),
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::NotProxy => f.write_str("not a PROXY protocol header"),
            Malformed::V1TooLong => write!(f, "PROXY v1 line longer than {V1_MAX} bytes"),
            Malformed::V1(why) => write!(f, "bad PROXY v1 header: {why}"),
            Malformed::V2TooLong(n) => {
                write!(f, "PROXY v2 header of {n} bytes (at most {V2_MAX_BODY})")
            }
            Malformed::V2(why) => write!(f, "bad PROXY v2 header: {why}"),
        }
    }
}

/// Looks at the first bytes of a connection. `Incomplete` guarantees that all of `buf`
/// belongs to the header, so the caller may consume it before reading more.
pub fn parse(buf: &[u8]) -> Result<Parsed, Malformed> {
    type Rest = fn(&[u8]) -> Result<Parsed, Malformed>;
    let versions: [(&[u8], Rest); 2] = [(&V2_SIGNATURE, parse_v2), (V1_PREFIX, parse_v1)];
    for (magic, rest) in versions {
        let n = buf.len().min(magic.len());
        if buf[..n] == magic[..n] {
            return if n < magic.len() {
                Ok(Parsed::Incomplete)
            } else {
                rest(buf)
            };
        }
    }
    Err(Malformed::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Malformed> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Malformed::V1TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(Malformed::V1("the line does not end with CRLF"))?;
    let line =
        std::str::from_utf8(&line[V1_PREFIX.len()..]).map_err(|_| Malformed::V1("not ASCII"))?;
    let header = |client| {
        Ok(Parsed::Header(Header {
            version: Version::V1,
            client,
            len: lf + 1,
        }))
    };
    let mut fields = line.split(' ');
    let family = fields.next().unwrap_or_default();
    if family == "UNKNOWN" {
        // The rest of the line, whatever it says, is to be ignored.
        return header(None);
    }
    let fields: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(Malformed::V1("wants PROXY TCP4|TCP6 SRC DST SPORT DPORT"));
    };
    let ip = match family {
        "TCP4" => src
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| Malformed::V1("bad IPv4 source address"))?,
        "TCP6" => src
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| Malformed::V1("bad IPv6 source address"))?,
        _ => return Err(Malformed::V1("the protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let valid = |a: &str| match family {
        "TCP4" => a.parse::<Ipv4Addr>().is_ok(),
        _ => a.parse::<Ipv6Addr>().is_ok(),
    };
    if !valid(dst) {
        return Err(Malformed::V1("bad destination address"));
    }
    let port = v1_port(sport)?;
    v1_port(dport)?;
    header(Some(SocketAddr::new(ip, port)))
}

/// A port: 1 to 5 digits, no sign, no leading zero, at most 65535.
fn v1_port(s: &str) -> Result<u16, Malformed> {
    let bad = Malformed::V1("bad port");
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits || (s.len() > 1 && s.starts_with('0')) {
        return Err(bad);
    }
    s.parse().map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Malformed> {
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Incomplete);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let body_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(Malformed::V2("the version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Malformed::V2("the command is neither LOCAL nor PROXY")),
    };
    if body_len > V2_MAX_BODY {
        return Err(Malformed::V2TooLong(body_len));
    }
    let len = V2_FIXED + body_len;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[V2_FIXED..len];
    let header = |client| {
        Ok(Parsed::Header(Header {
            version: Version::V2,
            client,
            len,
        }))
    };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(Malformed::V2("unknown address family or transport"));
    }
    // LOCAL: the balancer speaks for itself (a health check); its address block, if any, is
    // to be ignored. UNSPEC and UNIX carry no IP address.
    if local || family == 0 || family == 3 {
        return header(None);
    }
    if transport != 1 {
        return Err(Malformed::V2("not a stream (TCP) connection"));
    }
    let client = if family == 1 {
        let a = body
            .get(..12)
            .ok_or(Malformed::V2("IPv4 addresses cut short"))?;
        let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
        SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]]))
    } else {
        let a = body
            .get(..36)
            .ok_or(Malformed::V2("IPv6 addresses cut short"))?;
        let ip: [u8; 16] = a[..16].try_into().expect("16 bytes");
        SocketAddr::new(
            Ipv6Addr::from(ip).into(),
            u16::from_be_bytes([a[32], a[33]]),
        )
    };
    header(Some(client))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_inet() -> Vec<u8> {
        // 192.0.2.7:40000 -> 198.51.100.1:25, then a NOOP TLV (type 4) of 3 bytes.
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&25u16.to_be_bytes());
        body.extend_from_slice(&[4, 0, 3, 0, 0, 0]);
        v2(1, 0x11, &body)
    }

    fn v2_inet6() -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut body = src.octets().to_vec();
        body.extend_from_slice(&dst.octets());
        body.extend_from_slice(&5555u16.to_be_bytes());
        body.extend_from_slice(&587u16.to_be_bytes());
        v2(1, 0x21, &body)
    }

    fn client(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn whole_headers_name_the_client() {
        let v4 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n";
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 587\r\n";
        let unknown = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        let local = v2(0, 0x00, &[]);
        let local_with_addresses = v2(0, 0x11, &[0; 12]);
        let unspec = v2(1, 0x00, &[]);
        let unix = v2(1, 0x31, &[0; 216]);
        let (inet, inet6) = (v2_inet(), v2_inet6());
        let cases: Vec<(&[u8], Version, Option<SocketAddr>)> = vec![
            (v4, Version::V1, client("192.0.2.7:40000")),
            (v6, Version::V1, client("[2001:db8::7]:5555")),
            (b"PROXY UNKNOWN\r\n", Version::V1, None),
            (unknown, Version::V1, None),
            (&inet, Version::V2, client("192.0.2.7:40000")),
            (&inet6, Version::V2, client("[2001:db8::7]:5555")),
            (&local, Version::V2, None),
            (&local_with_addresses, Version::V2, None),
            (&unspec, Version::V2, None),
            (&unix, Version::V2, None),
        ];
        for (input, version, client) in cases {
            let want = Parsed::Header(Header {
                version,
                client,
                len: input.len(),
            });
            assert_eq!(
                parse(input),
                Ok(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let headers = [
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2_inet(),
            v2_inet6(),
            v2(0, 0, &[]),
        ];
        for h in headers {
            for cut in 0..h.len() {
                assert_eq!(
                    parse(&h[..cut]),
                    Ok(Parsed::Incomplete),
                    "{h:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn what_follows_the_header_is_left_to_the_client() {
        let mut input = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n".to_vec();
        let header_len = input.len();
        input.extend_from_slice(b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n");
        let Ok(Parsed::Header(h)) = parse(&input) else {
            panic!("no header")
        };
        assert_eq!(h.len, header_len);
        assert_eq!(
            &input[h.len..],
            b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\n"
        );
        // Version 2: the TLVs are skipped, the TLS ClientHello after them is not touched.
        let mut input = v2_inet();
        let header_len = input.len();
        input.extend_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        let Ok(Parsed::Header(h)) = parse(&input) else {
            panic!("no header")
        };
        assert_eq!((h.len, h.client), (header_len, client("192.0.2.7:40000")));
    }

    #[test]
    fn refuses_what_is_not_a_header() {
        let mut oversized = V2_SIGNATURE.to_vec();
        oversized.extend_from_slice(&[0x21, 0x11, 0x08, 0x01]);
        let long_v1 = [&b"PROXY UNKNOWN "[..], &[b'x'; 100]].concat();
        let mut long_v1_with_crlf = long_v1.clone();
        long_v1_with_crlf.extend_from_slice(b"\r\n");
        let cases: Vec<(Vec<u8>, Malformed)> = vec![
            (b"EHLO client.test\r\n".to_vec(), Malformed::NotProxy),
            (b"proxy TCP4 ".to_vec(), Malformed::NotProxy),
            (b"\x16\x03\x01\x02\x00".to_vec(), Malformed::NotProxy),
            (b"\r\n\r\n\0\r\nQUIX\n".to_vec(), Malformed::NotProxy),
            (long_v1, Malformed::V1TooLong),
            (long_v1_with_crlf, Malformed::V1TooLong),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\n".to_vec(),
                Malformed::V1("the line does not end with CRLF"),
            ),
            (
                b"PROXY TCP5 192.0.2.7 198.51.100.1 40000 25\r\n".to_vec(),
                Malformed::V1("the protocol is not TCP4, TCP6 or UNKNOWN"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n".to_vec(),
                Malformed::V1("wants PROXY TCP4|TCP6 SRC DST SPORT DPORT"),
            ),
            (
                b"PROXY TCP4  192.0.2.7 198.51.100.1 40000 25\r\n".to_vec(),
                Malformed::V1("wants PROXY TCP4|TCP6 SRC DST SPORT DPORT"),
            ),
            (
                b"PROXY TCP4 2001:db8::7 198.51.100.1 40000 25\r\n".to_vec(),
                Malformed::V1("bad IPv4 source address"),
            ),
            (
                b"PROXY TCP6 192.0.2.7 2001:db8::1 40000 25\r\n".to_vec(),
                Malformed::V1("bad IPv6 source address"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 2001:db8::1 40000 25\r\n".to_vec(),
                Malformed::V1("bad destination address"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n".to_vec(),
                Malformed::V1("bad port"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 +4000 25\r\n".to_vec(),
                Malformed::V1("bad port"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 04000 25\r\n".to_vec(),
                Malformed::V1("bad port"),
            ),
            (
                b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 \r\n".to_vec(),
                Malformed::V1("bad port"),
            ),
            (
                b"PROXY TCP4 192.0.2.\xff 198.51.100.1 40000 25\r\n".to_vec(),
                Malformed::V1("not ASCII"),
            ),
            (oversized, Malformed::V2TooLong(0x801)),
            (
                [&V2_SIGNATURE[..], &[0x11, 0x11, 0, 0]].concat(),
                Malformed::V2("the version is not 2"),
            ),
            (
                [&V2_SIGNATURE[..], &[0x22, 0x11, 0, 0]].concat(),
                Malformed::V2("the command is neither LOCAL nor PROXY"),
            ),
            (
                v2(1, 0x41, &[]),
                Malformed::V2("unknown address family or transport"),
            ),
            (
                v2(1, 0x13, &[0; 12]),
                Malformed::V2("unknown address family or transport"),
            ),
            (
                v2(1, 0x12, &[0; 12]),
                Malformed::V2("not a stream (TCP) connection"),
            ),
            (
                v2(1, 0x11, &[0; 11]),
                Malformed::V2("IPv4 addresses cut short"),
            ),
            (
                v2(1, 0x21, &[0; 12]),
                Malformed::V2("IPv6 addresses cut short"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(&input),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }

    #[test]
    fn the_longest_headers_fit_the_bounds() {
        // The specification's worst case for version 1 is exactly 107 bytes.
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let worst = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(worst.len(), V1_MAX);
        assert!(matches!(parse(worst.as_bytes()), Ok(Parsed::Header(h)) if h.len == V1_MAX));
        let tcp6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert!(matches!(parse(tcp6.as_bytes()), Ok(Parsed::Header(_))));
        let over = format!("PROXY UNKNOWN {full} {full} 65535 655350\r\n");
        assert_eq!(parse(over.as_bytes()), Err(Malformed::V1TooLong));
        let big = v2(1, 0x11, &[0; V2_MAX_BODY]);
        assert_eq!(big.len(), MAX_HEADER);
        assert!(matches!(parse(&big), Ok(Parsed::Header(h)) if h.len == MAX_HEADER));
    }
}
