//! The DATA byte state machine (server side) and its inverse, the dot-stuffer (client side).
//!
//! Only CR LF "." CR LF ends a message. A bare LF or bare CR is never a line end for the
//! purpose of finding the end or a leading dot, but it is normalized to CR LF in what is
//! stored, so that nothing ambiguous is ever passed on: a next hop sees plain CRLF lines, and
//! the stuffer doubles every leading dot, so `\n.\n`, `\r.\r\n` and friends cannot end (and so
//! split) a message downstream (SMTP smuggling).

const CRLF: &[u8] = b"\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    LineStart,
    Mid,
    /// Saw CR inside a line.
    Cr,
    /// Saw "." at the start of a line.
    Dot,
    /// Saw "." CR at the start of a line.
    DotCr,
}

/// What the reader learned about the message, for the envelope and for policy checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Bytes of content (after unstuffing and normalization), counted even past the cap.
    pub size: u64,
    pub oversize: bool,
    pub eight_bit: bool,
    pub bare_line_ends: u64,
    /// `Received:` fields in the header section, for loop detection.
    pub received_headers: u32,
    /// The `Message-ID:` field's value (first line, up to 255 bytes), for the event log.
    pub message_id: Option<String>,
}

pub struct DataReader {
    state: State,
    max_size: u64,
    summary: Summary,
    headers: HeaderScan,
}

impl DataReader {
    pub fn new(max_size: u64) -> DataReader {
        DataReader {
            state: State::LineStart,
            max_size,
            summary: Summary::default(),
            headers: HeaderScan::default(),
        }
    }

    /// Consumes `input`, appending content to `out` (until the size cap). Returns `Some(n)` when
    /// the end marker was found after `n` bytes of `input`: the rest belongs to the next command.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let c = input[i];
            match self.state {
                State::Mid => {
                    let n = clean_span(&input[i..]);
                    if n > 0 {
                        self.emit(out, &input[i..i + n]);
                        i += n;
                        continue;
                    }
                    if c == b'\r' {
                        self.state = State::Cr;
                    } else {
                        self.bare(out);
                    }
                    i += 1;
                }
                State::LineStart => {
                    if c == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Cr => {
                    if c == b'\n' {
                        self.emit(out, CRLF);
                        self.state = State::LineStart;
                        i += 1;
                    } else {
                        self.bare(out);
                        self.state = State::Mid;
                    }
                }
                // The leading dot is a stuffing dot unless CR LF follows: drop it either way.
                State::Dot => {
                    if c == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    if c == b'\n' {
                        return Some(i + 1);
                    }
                    self.bare(out);
                    self.state = State::Mid;
                }
            }
        }
        None
    }

    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    fn bare(&mut self, out: &mut Vec<u8>) {
        self.summary.bare_line_ends += 1;
        self.emit(out, CRLF);
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        let s = &mut self.summary;
        s.size += bytes.len() as u64;
        if s.size > self.max_size {
            s.oversize = true;
            return;
        }
        if !s.eight_bit && !bytes.is_ascii() {
            s.eight_bit = true;
        }
        if !self.headers.done {
            s.received_headers += self.headers.feed(bytes);
            if s.message_id.is_none() && self.headers.message_id_done {
                s.message_id = Some(
                    String::from_utf8_lossy(self.headers.message_id.trim_ascii()).into_owned(),
                );
            }
        }
        out.extend_from_slice(bytes);
    }
}

/// How many bytes from the middle of a line can be copied as they are: up to the first CR or
/// LF that is not part of a CR LF followed by an ordinary line (one that does not start with
/// a dot), or to the end if all of it is. Runs of whole lines are then copied at once.
fn clean_span(input: &[u8]) -> usize {
    let mut n = 0;
    while let Some(k) = memchr::memchr2(b'\r', b'\n', &input[n..]) {
        let p = n + k;
        match input.get(p..p + 3) {
            Some([b'\r', b'\n', next]) if *next != b'.' => n = p + 2,
            _ => return p,
        }
    }
    input.len()
}

/// Counts `Received:` fields and picks up `Message-ID:` until the blank line that ends the
/// header section. Input is already normalized to CRLF lines.
#[derive(Default)]
struct HeaderScan {
    done: bool,
    line_len: usize,
    prefix: [u8; 11],
    scanned: usize,
    message_id: Vec<u8>,
    message_id_done: bool,
}

const MESSAGE_ID_MAX: usize = 255;

const HEADER_SCAN_LIMIT: usize = 1 << 20;

impl HeaderScan {
    fn feed(&mut self, bytes: &[u8]) -> u32 {
        let mut found = 0;
        for &b in bytes {
            self.scanned += 1;
            match b {
                b'\r' => {}
                b'\n' => {
                    if self.line_len == 0 || self.scanned > HEADER_SCAN_LIMIT {
                        self.done = true;
                        return found;
                    }
                    if self.line_len >= 9 && self.prefix[..9].eq_ignore_ascii_case(b"received:") {
                        found += 1;
                    }
                    if self.in_message_id() {
                        self.message_id_done = true;
                    }
                    self.line_len = 0;
                }
                _ => {
                    if self.in_message_id() && self.message_id.len() < MESSAGE_ID_MAX {
                        self.message_id.push(b);
                    }
                    if self.line_len < self.prefix.len() {
                        self.prefix[self.line_len] = b;
                    }
                    self.line_len += 1;
                }
            }
        }
        found
    }
}

impl HeaderScan {
    /// Past the `Message-ID:` name of the first such field.
    fn in_message_id(&self) -> bool {
        !self.message_id_done
            && self.line_len >= 11
            && self.prefix.eq_ignore_ascii_case(b"message-id:")
    }
}

/// Encodes content for the wire: doubles leading dots, normalizes bare CR/LF to CRLF, and
/// `finish` appends the end marker (with a CRLF first if the content did not end with one).
pub struct DotStuffer {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    pub fn stuff(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        if self.pending_cr && !input.is_empty() {
            // The previous piece ended in CR: CR LF, or a bare CR made a line end.
            self.pending_cr = false;
            out.extend_from_slice(CRLF);
            self.at_line_start = true;
            if input[0] == b'\n' {
                i = 1;
            }
        }
        while i < input.len() {
            if self.at_line_start && input[i] == b'.' {
                out.push(b'.');
            }
            // Whole lines that need nothing go out in one copy.
            let n = clean_span(&input[i..]);
            if n > 0 {
                out.extend_from_slice(&input[i..i + n]);
                self.at_line_start = false;
                i += n;
                continue;
            }
            match (input[i], input.get(i + 1)) {
                (b'\r', None) => {
                    self.pending_cr = true;
                    return;
                }
                (b'\r', Some(b'\n')) => i += 2,
                _ => i += 1,
            }
            out.extend_from_slice(CRLF);
            self.at_line_start = true;
        }
    }

    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(CRLF);
        }
        self.pending_cr = false;
        self.at_line_start = true;
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in one piece; returns (content, bytes consumed) or None if no end.
    fn read(input: &[u8], max: u64) -> (Vec<u8>, Option<usize>, Summary) {
        let mut r = DataReader::new(max);
        let mut out = Vec::new();
        let end = r.feed(input, &mut out);
        (out, end, r.summary().clone())
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b".\r\n", Some(b"")),
            (b"a\r\n.\r\n", Some(b"a\r\n")),
            (b"a\r\n..b\r\n.\r\n", Some(b"a\r\n.b\r\n")),
            (b"a\r\n.\r\nQUIT\r\n", Some(b"a\r\n")),
            // Smuggling variants: none of these end the message.
            (b"a\n.\n", None),
            (b"a\n.\r\n", None),
            (b"a\r.\r\n", None),
            (b"a\r\n.\n", None),
            (b"a\r\n.\r", None),
            (b"a\r.\r", None),
            (b"a\n.\rb", None),
            (b"a\r\n.\rX\r\n", None),
        ];
        for (input, want) in cases {
            let (out, end, _) = read(input, 1000);
            match want {
                Some(content) => {
                    assert_eq!(out, *content, "{input:?}");
                    assert!(end.is_some(), "{input:?} should end");
                }
                None => assert_eq!(end, None, "{input:?} must not end"),
            }
        }
        assert_eq!(read(b"a\r\n.\r\nQUIT\r\n", 1000).1, Some(6));
    }

    #[test]
    fn smuggled_dot_lines_are_normalized_and_restuffed() {
        // After a smuggling attempt, the stored content holds a plain "." line (CRLF), which
        // the stuffer doubles, so the next hop sees no end marker either.
        for attack in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r.\r\nRCPT\r\n",
            b"a\n.\r\nX\r\n",
        ] {
            let mut input = attack.to_vec();
            input.extend_from_slice(b".\r\n");
            let (out, end, s) = read(&input, 1000);
            assert!(end == Some(input.len()), "{attack:?}");
            assert!(s.bare_line_ends > 0);
            assert!(
                !out.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
                "bare LF stored"
            );
            let mut wire = Vec::new();
            let mut st = DotStuffer::default();
            st.stuff(&out, &mut wire);
            st.finish(&mut wire);
            let (_, end2, _) = read(&wire, 1000);
            assert_eq!(
                end2,
                Some(wire.len()),
                "restuffed content ends exactly once, at the end"
            );
        }
    }

    #[test]
    fn size_cap_drains_to_the_end() {
        let mut input = b"Subject: x\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 500));
        input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        let (out, end, s) = read(&input, 100);
        assert!(s.oversize);
        assert!(out.len() <= 100);
        assert_eq!(end, Some(input.len() - 6));
    }

    #[test]
    fn counts_received_and_8bit() {
        let msg = b"Received: a\r\nreceived: b\r\nX: Received: no\r\nSubject: \xc3\xa9\r\n\r\nReceived: body\r\n.\r\n";
        let (_, _, s) = read(msg, 1000);
        assert_eq!(s.received_headers, 2);
        assert_eq!(s.message_id, None);
        assert!(s.eight_bit);
        let (_, _, s) = read(b"Subject: plain\r\n\r\n.\r\n", 1000);
        assert!(!s.eight_bit);
    }

    #[test]
    fn picks_up_the_first_message_id() {
        let (_, _, s) = read(b"Subject: x\r\nMessage-ID:  <abc@host.test> \r\nMessage-Id: <second@x>\r\n\r\nMessage-ID: <body@x>\r\n.\r\n", 1000);
        assert_eq!(s.message_id.as_deref(), Some("<abc@host.test>"));
    }

    #[test]
    fn stuffer_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".a\r\n.\r\n", b"..a\r\n..\r\n.\r\n"),
            (b"a\n.b", b"a\r\n..b\r\n.\r\n"),
            (b"a\r.b", b"a\r\n..b\r\n.\r\n"),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            let mut st = DotStuffer::default();
            st.stuff(input, &mut out);
            st.finish(&mut out);
            assert_eq!(out, *want, "{input:?}");
        }
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_result(input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), Just(0xc3u8)], 0..64), split in 0usize..64) {
            let mut whole = input.clone();
            whole.extend_from_slice(b"\r\n.\r\n");
            let (out1, end1, s1) = read(&whole, 10_000);
            let split = split.min(whole.len());
            let mut r = DataReader::new(10_000);
            let mut out2 = Vec::new();
            let end2 = match r.feed(&whole[..split], &mut out2) {
                Some(n) => Some(n),
                None => r.feed(&whole[split..], &mut out2).map(|n| n + split),
            };
            prop_assert_eq!(out1, out2);
            prop_assert_eq!(end1, end2);
            prop_assert_eq!(&s1, r.summary());
        }

        #[test]
        fn stuffing_in_pieces_is_stuffing_at_once(input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..64), split in 0usize..64) {
            let split = split.min(input.len());
            let (mut one, mut two) = (Vec::new(), Vec::new());
            let mut st = DotStuffer::default();
            st.stuff(&input, &mut one);
            st.finish(&mut one);
            let mut st = DotStuffer::default();
            st.stuff(&input[..split], &mut two);
            st.stuff(&input[split..], &mut two);
            st.finish(&mut two);
            prop_assert_eq!(one, two);
        }

        #[test]
        fn stuffing_matches_the_byte_at_a_time_rules(input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), Just(b'a'), Just(b'a')], 0..200), cuts in proptest::collection::vec(0usize..200, 0..5)) {
            // A line end (CR LF, bare CR, bare LF) becomes CR LF; a leading dot is doubled.
            let mut want = Vec::new();
            let (mut at_start, mut i) = (true, 0);
            while i < input.len() {
                match input[i] {
                    b'\r' | b'\n' => {
                        want.extend_from_slice(b"\r\n");
                        at_start = true;
                        i += if input[i] == b'\r' && input.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                        continue;
                    }
                    b'.' if at_start => want.extend_from_slice(b".."),
                    c => want.push(c),
                }
                at_start = false;
                i += 1;
            }
            if !at_start {
                want.extend_from_slice(b"\r\n");
            }
            want.extend_from_slice(b".\r\n");
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= input.len()).collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let (mut got, mut st, mut from) = (Vec::new(), DotStuffer::default(), 0);
            for cut in cuts {
                st.stuff(&input[from..cut], &mut got);
                from = cut;
            }
            st.finish(&mut got);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn stuff_then_read_round_trips(input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..64)) {
            let mut wire = Vec::new();
            let mut st = DotStuffer::default();
            st.stuff(&input, &mut wire);
            st.finish(&mut wire);
            let (out, end, _) = read(&wire, 10_000);
            prop_assert_eq!(end, Some(wire.len()));
            // Reading gives back the normalized content, which restuffs to the same wire bytes.
            let mut again = Vec::new();
            let mut st = DotStuffer::default();
            st.stuff(&out, &mut again);
            st.finish(&mut again);
            prop_assert_eq!(again, wire);
        }
    }
}
