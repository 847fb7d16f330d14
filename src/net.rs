//! Connections: `Stream` is a TCP socket, plain or under TLS (server side through openssl,
//! client side through native-tls), and `LineReader` is a bounded line reader over it: lines
//! end at LF (a CR before it is dropped), a line longer than the limit is drained and
//! reported as `TooLong` without ever being held, and the bytes read ahead stay available
//! (pipelined commands, DATA).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::smtp::reply::{ParseError, Reply, ReplyParser};

/// Wakes a thread blocked in `accept()` on `addr` by connecting to it once (to loopback
/// when the listener is on a wildcard address), so it can see a stop flag.
pub fn wake_accept(addr: std::net::SocketAddr) {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let target = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let _ = TcpStream::connect_timeout(&target, std::time::Duration::from_secs(1));
}

/// Makes a blocking accept() on `listener` give up (WouldBlock) after `timeout`.
pub fn set_accept_timeout(
    listener: &std::net::TcpListener,
    timeout: std::time::Duration,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // The field types differ between libcs (and musl's are deprecated aliases): let the
    // struct decide.
    // SAFETY: timeval is plain integers, for which all zeros is a valid value.
    let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
    tv.tv_sec = timeout.as_secs().try_into().unwrap_or(i32::MAX.into());
    tv.tv_usec = timeout.subsec_micros().into();
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Stops a listening socket: new connections are refused and every thread blocked in
/// accept() on it returns with an error.
pub fn stop_listening(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown on a valid socket; the socket stays open until dropped.
    unsafe {
        libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Whether an I/O error is a socket timeout (SO_RCVTIMEO/SO_SNDTIMEO expired).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

pub enum Stream {
    Plain(TcpStream),
    /// A session we accepted under TLS.
    Server(Box<openssl::ssl::SslStream<TcpStream>>),
    /// A delivery connection under TLS.
    Client(Box<native_tls::TlsStream<TcpStream>>),
}

impl Stream {
    /// The socket underneath, for timeouts and shutdown.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => s.get_ref(),
            Stream::Client(s) => s.get_ref(),
        }
    }

    /// Ends the connection politely: under TLS a close_notify alert goes out first
    /// (RFC 8446 6.1), then the socket is shut down; a plain socket just closes when dropped.
    pub fn close(&mut self) {
        let sent = match self {
            // Dropping the socket closes it.
            Stream::Plain(_) => return,
            Stream::Server(s) => s.shutdown().is_ok(),
            Stream::Client(s) => s.shutdown().is_ok(),
        };
        if sent {
            let _ = self.tcp().shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Server(s) => s.read(buf),
            Stream::Client(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Server(s) => s.write(buf),
            Stream::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Server(s) => s.flush(),
            Stream::Client(s) => s.flush(),
        }
    }
}

pub enum Line<'a> {
    Line(&'a [u8]),
    TooLong,
    Eof,
}

/// Why the plain stream could not be taken out of a reader for a TLS handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum TakePlain {
    /// The peer sent data after STARTTLS without waiting for its reply: plaintext that must
    /// not be taken as coming over TLS (CVE-2011-0411).
    ReadAhead,
    /// Already TLS, or the socket could not be duplicated.
    Unavailable,
}

impl LineReader<Stream> {
    /// Takes the plain TCP stream out, for the one STARTTLS upgrade of either side: the reader
    /// is left on a duplicate of the socket until the caller puts a TLS reader in its place.
    pub fn take_plain(&mut self) -> Result<TcpStream, TakePlain> {
        let dup = self
            .inner
            .tcp()
            .try_clone()
            .map_err(|_| TakePlain::Unavailable)?;
        let reader = std::mem::replace(self, LineReader::new(Stream::Plain(dup), 0));
        match reader.into_inner() {
            Ok(Stream::Plain(tcp)) => Ok(tcp),
            Ok(_) => Err(TakePlain::Unavailable),
            Err(_) => Err(TakePlain::ReadAhead),
        }
    }
}

/// Why a reply could not be read off a connection.
#[derive(Debug)]
pub enum ReplyError {
    /// A line longer than the bound.
    TooLong,
    /// The peer closed the connection.
    Closed,
    /// Nothing within the timeout.
    Timeout,
    Io(io::Error),
    Malformed(ParseError),
}

impl LineReader<Stream> {
    /// Reads one SMTP reply (all its lines) on the client side: lines of at most `max_line`
    /// bytes (and at most `MAX_REPLY_LINES` of them), each read waiting at most `timeout`,
    /// and no read starting once `timeout` has passed since the call: a peer that trickles
    /// bytes, or streams an endless line, holds the caller for less than twice `timeout`.
    pub fn read_reply(&mut self, max_line: usize, timeout: Duration) -> Result<Reply, ReplyError> {
        if self.timeout != Some(timeout) {
            let tcp = self.inner.tcp();
            tcp.set_read_timeout(Some(timeout))
                .map_err(ReplyError::Io)?;
            self.timeout = Some(timeout);
        }
        self.deadline = Some(Instant::now() + timeout);
        let reply = self.read_reply_lines(max_line);
        self.deadline = None;
        reply
    }

    fn read_reply_lines(&mut self, max_line: usize) -> Result<Reply, ReplyError> {
        let mut parser = ReplyParser::default();
        loop {
            let line = match self.read_line(max_line) {
                Ok(Line::Line(l)) => String::from_utf8_lossy(l).into_owned(),
                Ok(Line::TooLong) => return Err(ReplyError::TooLong),
                Ok(Line::Eof) => return Err(ReplyError::Closed),
                Err(e) if is_timeout(&e) => return Err(ReplyError::Timeout),
                Err(e) => return Err(ReplyError::Io(e)),
            };
            match parser.feed(&line) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(ReplyError::Malformed(e)),
            }
        }
    }
}

pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The read timeout `read_reply` last set on the socket.
    timeout: Option<Duration>,
    /// While `read_reply` runs: no read starts after this (`fill` says `TimedOut`).
    deadline: Option<Instant>,
}

impl<R: Read> LineReader<R> {
    /// `capacity` must exceed the longest line that will be asked for.
    pub fn new(inner: R, capacity: usize) -> LineReader<R> {
        LineReader {
            inner,
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            timeout: None,
            deadline: None,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives the stream back (to upgrade it to TLS); `Err` if input was already read ahead,
    /// which after STARTTLS means the peer pipelined plaintext (CVE-2011-0411).
    pub fn into_inner(self) -> Result<R, R> {
        if self.start == self.end {
            Ok(self.inner)
        } else {
            Err(self.inner)
        }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Reads more bytes after what is buffered; `Ok(0)` is end of stream.
    pub fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::other("line buffer full"));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let n = loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        self.end += n;
        Ok(n)
    }

    /// The next line without its line end, blocking for more input as needed.
    pub fn read_line(&mut self, max: usize) -> io::Result<Line<'_>> {
        let max = max.min(self.buf.len() - 1);
        let mut draining = false;
        loop {
            let avail = &self.buf[self.start..self.end];
            if let Some(lf) = memchr::memchr(b'\n', avail) {
                let line_start = self.start;
                self.start += lf + 1;
                if draining || lf > max {
                    return Ok(Line::TooLong);
                }
                let mut line = &self.buf[line_start..line_start + lf];
                if let [rest @ .., b'\r'] = line {
                    line = rest;
                }
                return Ok(Line::Line(line));
            }
            if avail.len() > max {
                // Too long: forget what we have and keep reading until the line ends.
                draining = true;
                self.start = self.end;
            }
            if self.fill()? == 0 {
                return Ok(if draining { Line::TooLong } else { Line::Eof });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair on loopback: our reader's end and the peer's.
    fn pair() -> (LineReader<Stream>, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, _) = listener.accept().unwrap();
        (LineReader::new(Stream::Plain(ours), 1024), peer)
    }

    #[test]
    fn the_plain_stream_comes_out_for_tls_only_if_nothing_was_read_ahead() {
        let (mut reader, mut peer) = pair();
        peer.write_all(b"STARTTLS\r\n").unwrap();
        assert!(matches!(reader.read_line(100), Ok(Line::Line(b"STARTTLS"))));
        let mut tcp = reader.take_plain().expect("nothing read ahead");
        // The socket itself came out: what the peer sends next arrives on it.
        peer.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        tcp.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
        // Plaintext pipelined after STARTTLS is refused (CVE-2011-0411).
        let (mut reader, mut peer) = pair();
        peer.write_all(b"STARTTLS\r\nMAIL FROM:<a@b>\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(matches!(reader.read_line(100), Ok(Line::Line(b"STARTTLS"))));
        assert_eq!(reader.take_plain().err(), Some(TakePlain::ReadAhead));
    }

    #[test]
    fn reads_replies_with_a_bound_and_a_timeout() {
        let (mut reader, mut peer) = pair();
        let t = std::time::Duration::from_millis(200);
        peer.write_all(b"250-mx.test\r\n250 PIPELINING\r\n")
            .unwrap();
        let r = reader.read_reply(100, t).unwrap();
        assert_eq!((r.code, r.lines.len()), (250, 2));
        peer.write_all(&[b"550 ", &b"x".repeat(200)[..], b"\r\n"].concat())
            .unwrap();
        assert!(matches!(
            reader.read_reply(100, t),
            Err(ReplyError::TooLong)
        ));
        peer.write_all(b"hello\r\n").unwrap();
        assert!(matches!(
            reader.read_reply(100, t),
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            reader.read_reply(100, t),
            Err(ReplyError::Timeout)
        ));
        drop(peer);
        assert!(matches!(reader.read_reply(100, t), Err(ReplyError::Closed)));
    }

    /// A peer that writes `chunk` every `pause` until the reader hangs up (or 10 s pass).
    fn endless_peer(mut peer: TcpStream, chunk: &'static [u8], pause: Duration) {
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(10) && peer.write_all(chunk).is_ok() {
                std::thread::sleep(pause);
            }
        });
    }

    #[test]
    fn a_reply_that_never_ends_is_given_up_at_its_deadline() {
        let t = Duration::from_millis(300);
        // An endless line at full speed, and one byte at a time (each read well within the
        // timeout): without a deadline either would hold the reader for the peer's 10 s.
        for (chunk, pause) in [
            (&[0xa5u8; 4096][..], Duration::ZERO),
            (&b"2"[..], Duration::from_millis(20)),
        ] {
            let (mut reader, peer) = pair();
            endless_peer(peer, chunk, pause);
            let start = std::time::Instant::now();
            let r = reader.read_reply(100, t);
            assert!(matches!(r, Err(ReplyError::Timeout)), "{r:?}");
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{:?}",
                start.elapsed()
            );
            // Replies after it get their own deadline.
            assert!(matches!(
                reader.read_reply(100, t),
                Err(ReplyError::Timeout)
            ));
        }
    }

    #[test]
    fn continuation_lines_are_bounded() {
        let (mut reader, peer) = pair();
        endless_peer(peer, b"250-more\r\n", Duration::ZERO);
        assert!(matches!(
            reader.read_reply(100, Duration::from_secs(5)),
            Err(ReplyError::Malformed(ParseError::TooLong))
        ));
    }

    /// A reader that hands out its input in small pieces, as a socket might.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(self.0.len()).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn lines(input: &[u8], max: usize, chunk: usize) -> Vec<String> {
        let mut r = LineReader::new(Trickle(input, chunk), 64);
        let mut out = Vec::new();
        loop {
            match r.read_line(max).unwrap() {
                Line::Line(l) => out.push(String::from_utf8_lossy(l).into_owned()),
                Line::TooLong => out.push("<too long>".into()),
                Line::Eof => return out,
            }
        }
    }

    #[test]
    fn splits_and_bounds_lines() {
        for chunk in [1, 3, 100] {
            assert_eq!(
                lines(b"EHLO a\r\nNOOP\nQUIT\r\n", 20, chunk),
                ["EHLO a", "NOOP", "QUIT"]
            );
            let long = [&b"x".repeat(200)[..], b"\r\nNOOP\r\n"].concat();
            assert_eq!(lines(&long, 20, chunk), ["<too long>", "NOOP"]);
            assert_eq!(lines(b"partial", 20, chunk), Vec::<String>::new());
        }
    }

    #[test]
    fn keeps_read_ahead_bytes() {
        let mut r = LineReader::new(&b"DATA\r\nbody\r\n.\r\n"[..], 64);
        assert!(matches!(r.read_line(100).unwrap(), Line::Line(b"DATA")));
        assert_eq!(r.buffered(), b"body\r\n.\r\n");
    }
}
