//! The socket side of the PROXY protocol on `+proxy` listeners: only `--proxy-from`
//! addresses may connect, and their header is read exactly (never a byte of the SMTP or TLS
//! that follows it) within `--tls-handshake-timeout`. The parsing is `crate::proxy`'s.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Cidr;
use crate::proxy::{self, Header, MAX_HEADER, Malformed, Parsed};

/// Whether `peer` may speak to a `+proxy` listener. If not, the connection is
/// closed without a byte read or written.
pub fn from_balancer(peer: SocketAddr, proxy_from: &[Cidr]) -> bool {
    proxy_from.iter().any(|n| n.contains(peer.ip()))
}

/// The client a balancer at `peer` names in its header: `peer` itself for a `LOCAL` or
/// `UNKNOWN` header (a health check). `None`, logged, when the header is malformed, late or
/// missing: the connection is to be closed.
pub fn real_client(stream: &TcpStream, peer: SocketAddr, timeout: Duration) -> Option<SocketAddr> {
    let balancer = peer.ip();
    match read_header(stream, Instant::now() + timeout) {
        Ok(Header {
            version,
            client: Some(client),
            ..
        }) => {
            log::debug!("PROXY {version:?} header from [{balancer}]: client [{client}]");
            Some(client)
        }
        Ok(Header { version, .. }) => {
            log::debug!("PROXY {version:?} header from [{balancer}] names no client");
            Some(peer)
        }
        Err(HeaderError::Malformed(why)) => {
            log::warn!("closing connection from [{balancer}]: {why}");
            None
        }
        Err(HeaderError::Io(e)) if crate::net::is_timeout(&e) => {
            log::warn!("closing connection from [{balancer}]: no PROXY header within {timeout:?}");
            None
        }
        Err(HeaderError::Io(e)) => {
            log::info!("connection from [{balancer}] lost before its PROXY header: {e}");
            None
        }
    }
}

#[derive(Debug)]
enum HeaderError {
    Malformed(Malformed),
    Io(io::Error),
}

impl From<io::Error> for HeaderError {
    fn from(e: io::Error) -> HeaderError {
        HeaderError::Io(e)
    }
}

/// Reads one header off the socket and nothing after it: peeks at what has arrived, takes
/// it all while it is only a prefix of a header, and at the end takes exactly the header's
/// remaining bytes.
fn read_header(mut stream: &TcpStream, deadline: Instant) -> Result<Header, HeaderError> {
    let mut have = Vec::with_capacity(128);
    let mut buf = vec![0u8; MAX_HEADER];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from(io::ErrorKind::TimedOut).into());
        }
        stream.set_read_timeout(Some(left))?;
        // `parse` said Incomplete, so `have` is shorter than any header and there is room.
        let room = MAX_HEADER - have.len();
        let n = loop {
            match stream.peek(&mut buf[..room]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let before = have.len();
        have.extend_from_slice(&buf[..n]);
        let take = match proxy::parse(&have).map_err(HeaderError::Malformed)? {
            Parsed::Header(h) => {
                stream.read_exact(&mut buf[..h.len - before])?;
                return Ok(h);
            }
            Parsed::Incomplete => n,
        };
        stream.read_exact(&mut buf[..take])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A connected pair on loopback: the server's end and the balancer's.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let balancer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (ours, balancer)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn reads_the_header_and_not_a_byte_more() {
        let (mut ours, mut balancer) = pair();
        balancer
            .write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO client.test\r\n")
            .unwrap();
        let h = read_header(&ours, soon()).unwrap();
        assert_eq!(h.client, Some("192.0.2.7:40000".parse().unwrap()));
        let mut rest = [0u8; 18];
        ours.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"EHLO client.test\r\n");
    }

    #[test]
    fn waits_for_a_header_sent_in_pieces() {
        let (ours, mut balancer) = pair();
        let mut header = proxy::V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 7, 127, 0, 0, 1, 0x9c, 0x40, 0, 25,
        ]);
        let writer = std::thread::spawn(move || {
            for piece in header.chunks(5) {
                balancer.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
            balancer.write_all(b"\x16\x03\x01").unwrap();
            balancer
        });
        let h = read_header(&ours, soon()).unwrap();
        assert_eq!(h.client, Some("192.0.2.7:40000".parse().unwrap()));
        let _balancer = writer.join().unwrap();
        let mut rest = [0u8; 3];
        (&ours).read_exact(&mut rest).unwrap();
        assert_eq!(
            &rest, b"\x16\x03\x01",
            "the TLS ClientHello is left in place"
        );
    }

    #[test]
    fn gives_up_on_garbage_silence_and_hang_ups() {
        let (ours, mut balancer) = pair();
        balancer.write_all(b"EHLO client.test\r\n").unwrap();
        assert!(matches!(
            read_header(&ours, soon()),
            Err(HeaderError::Malformed(Malformed::NotProxy))
        ));
        let (ours, mut balancer) = pair();
        balancer.write_all(b"PROXY TCP4 192.0.2.7").unwrap();
        let started = Instant::now();
        let timeout = Duration::from_millis(200);
        let late = read_header(&ours, Instant::now() + timeout);
        assert!(matches!(late, Err(HeaderError::Io(e)) if crate::net::is_timeout(&e)));
        assert!(started.elapsed() < Duration::from_secs(2));
        let (ours, mut balancer) = pair();
        balancer.write_all(b"PROXY TCP4").unwrap();
        drop(balancer);
        assert!(matches!(
            read_header(&ours, soon()),
            Err(HeaderError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof
        ));
    }

    #[test]
    fn only_the_balancers_may_connect() {
        let nets = [crate::config::parse_cidr("10.0.0.0/8").unwrap()];
        let cases = [
            ("10.1.2.3:5000", true),
            ("[::ffff:10.1.2.3]:5000", true),
            ("192.0.2.1:5000", false),
            ("[2001:db8::1]:5000", false),
        ];
        for (peer, want) in cases {
            assert_eq!(from_balancer(peer.parse().unwrap(), &nets), want, "{peer}");
        }
        assert!(!from_balancer("10.1.2.3:5000".parse().unwrap(), &[]));
    }
}
