//! DKIM canonicalisation (RFC 6376 section 3.4): the relaxed form of a header field, and the
//! relaxed or simple form of the body, computed while the body streams past and hashed with
//! SHA-256 as it goes. The body canonicaliser keeps O(1) state beyond a count of pending empty
//! lines and a flag for pending whitespace, so any body size and any split of it into pieces
//! gives the same hash without the body being held.

use openssl::sha::Sha256;

const SP: u8 = b' ';
const TAB: u8 = b'\t';
const CR: u8 = b'\r';
const LF: u8 = b'\n';

fn is_wsp(b: u8) -> bool {
    b == SP || b == TAB
}

/// Appends the relaxed form (RFC 6376 3.4.2) of one raw header field (name, colon, value,
/// folds and final CRLF) to `out`: name in lower case, the value unfolded, runs of whitespace
/// as one space, none around the colon or at the end; then CRLF.
pub fn relaxed_header(raw: &[u8], out: &mut Vec<u8>) {
    let colon = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
    let name = trim_wsp(&raw[..colon]);
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let value = raw.get(colon + 1..).unwrap_or_default();
    let mut pending_space = false;
    let mut started = false;
    for &b in value {
        match b {
            CR | LF => {}
            SP | TAB => pending_space = true,
            _ => {
                if pending_space && started {
                    out.push(SP);
                }
                pending_space = false;
                started = true;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn trim_wsp(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_wsp(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_wsp(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// Which body canonicalisation (RFC 6376 3.4.3 and 3.4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyCanon {
    Simple,
    Relaxed,
}

/// The body hash, fed the body in pieces of any size.
pub struct BodyHasher {
    canon: BodyCanon,
    hash: Sha256,
    /// Canonical bytes not yet hashed (hashing in blocks is faster than byte by byte).
    buf: Vec<u8>,
    /// Empty lines seen and not yet written: they count only if more text follows.
    empty_lines: u64,
    /// Relaxed: whitespace seen in this line and not yet written.
    wsp: bool,
    /// The last piece ended in CR: it is a line end if the next piece starts with LF.
    cr: bool,
    /// The current line has text.
    in_line: bool,
    /// Something was written (for simple's empty body).
    any: bool,
    /// How many canonical bytes were hashed.
    len: u64,
}

const BUF: usize = 16 * 1024;

/// Whether relaxed canonicalisation leaves `text` (part of one line, starting with a non-blank)
/// as it is: no tab, no run of spaces, no space at its end (which may be trailing).
fn canonical_as_is(text: &[u8]) -> bool {
    memchr::memchr(TAB, text).is_none()
        && memchr::memmem::find(text, b"  ").is_none()
        && text.last() != Some(&SP)
}

impl BodyHasher {
    pub fn new(canon: BodyCanon) -> BodyHasher {
        BodyHasher {
            canon,
            hash: Sha256::new(),
            buf: Vec::with_capacity(BUF + 64),
            empty_lines: 0,
            wsp: false,
            cr: false,
            in_line: false,
            any: false,
            len: 0,
        }
    }

    /// Takes the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        if self.canonical_already(piece) {
            // Hashed as it is, without a copy: most pieces of most mail.
            self.flush();
            self.hash.update(piece);
            self.len += piece.len() as u64;
            self.any = true;
            // A line ends at CR LF only: a piece ending in a bare LF ends inside a line.
            self.in_line = !piece.ends_with(b"\r\n");
            return;
        }
        let mut i = 0;
        if self.cr {
            self.cr = false;
            if piece.first() == Some(&LF) {
                self.line_end();
                i = 1;
            } else if !piece.is_empty() {
                self.text(&[CR]);
            } else {
                self.cr = true;
            }
        }
        let mut word_by_word_until = 0;
        while i < piece.len() {
            let b = piece[i];
            match b {
                CR if piece.get(i + 1) == Some(&LF) => {
                    self.line_end();
                    i += 2;
                }
                CR if i + 1 == piece.len() => {
                    self.cr = true;
                    i += 1;
                }
                SP | TAB if self.canon == BodyCanon::Relaxed => {
                    self.wsp = true;
                    i += 1;
                }
                _ => {
                    // A run of plain text (a bare CR or LF is text: the input is CRLF lines).
                    let rest = &piece[i + 1..];
                    let run = match self.canon {
                        BodyCanon::Simple => memchr::memchr(CR, rest),
                        BodyCanon::Relaxed if i >= word_by_word_until => {
                            // Text up to the line end whose whitespace is single spaces
                            // between words is already canonical: taken whole (most lines of
                            // most mail); otherwise this line goes word by word.
                            let end = memchr::memchr(CR, rest).map_or(piece.len(), |n| i + 1 + n);
                            if canonical_as_is(&piece[i..end]) {
                                Some(end - i - 1)
                            } else {
                                word_by_word_until = end;
                                memchr::memchr3(CR, SP, TAB, rest)
                            }
                        }
                        BodyCanon::Relaxed => memchr::memchr3(CR, SP, TAB, rest),
                    }
                    .map_or(piece.len(), |n| i + 1 + n);
                    self.text(&piece[i..run]);
                    i = run;
                }
            }
            if self.buf.len() >= BUF {
                self.flush();
            }
        }
    }

    /// Whether `piece`, coming now, is its own canonical form: nothing pending from the piece
    /// before, no empty line (it may turn out to be trailing), and for relaxed no tab, no run
    /// of spaces and no space before a line end; it must not end in a space or CR either
    /// (what follows decides about those).
    fn canonical_already(&self, piece: &[u8]) -> bool {
        use memchr::memmem::find;
        let (Some(&first), Some(&last)) = (piece.first(), piece.last()) else {
            return false;
        };
        let nothing_pending = !self.wsp && !self.cr && self.empty_lines == 0;
        let no_empty_line = find(piece, b"\r\n\r\n").is_none() && (self.in_line || first != CR);
        let relaxed_ok = self.canon == BodyCanon::Simple
            || (memchr::memchr(TAB, piece).is_none()
                && find(piece, b"  ").is_none()
                && find(piece, b" \r").is_none()
                && last != SP);
        nothing_pending && no_empty_line && relaxed_ok && last != CR
    }

    fn text(&mut self, text: &[u8]) {
        for _ in 0..self.empty_lines {
            self.buf.extend_from_slice(b"\r\n");
            if self.buf.len() >= BUF {
                self.flush();
            }
        }
        self.empty_lines = 0;
        if self.wsp {
            self.buf.push(SP);
            self.wsp = false;
        }
        self.buf.extend_from_slice(text);
        self.in_line = true;
    }

    fn line_end(&mut self) {
        // Relaxed: whitespace at the end of a line is dropped.
        self.wsp = false;
        if self.in_line {
            self.buf.extend_from_slice(b"\r\n");
            self.in_line = false;
        } else {
            self.empty_lines += 1;
        }
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.hash.update(&self.buf);
            self.len += self.buf.len() as u64;
            self.any = true;
            self.buf.clear();
        }
    }

    /// The body has ended: the SHA-256 of its canonical form, and that form's length.
    pub fn finish(mut self) -> ([u8; 32], u64) {
        if self.cr {
            self.cr = false;
            self.text(&[CR]);
        }
        // A last line without CRLF gets one; trailing empty lines are dropped.
        if self.in_line {
            self.buf.extend_from_slice(b"\r\n");
        }
        self.flush();
        if self.canon == BodyCanon::Simple && !self.any {
            self.buf.extend_from_slice(b"\r\n");
            self.flush();
        }
        (self.hash.finish(), self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical form itself: hashing is checked against it.
    fn canon(canon: BodyCanon, pieces: &[&[u8]]) -> ([u8; 32], u64) {
        let mut h = BodyHasher::new(canon);
        for p in pieces {
            h.update(p);
        }
        h.finish()
    }

    fn sha(b: &[u8]) -> ([u8; 32], u64) {
        (openssl::sha::sha256(b), b.len() as u64)
    }

    // RFC 6376 3.4.5's example, then edge cases.
    const RELAXED_BODY: &[(&[u8], &[u8])] = &[
        (b" C \r\nD \t E\r\n\r\n\r\n", b" C\r\nD E\r\n"),
        (b"", b""),
        (b"\r\n", b""),
        (b"\r\n\r\n\r\n", b""),
        (b" \t \r\n\t\r\n", b""),
        (b"text", b"text\r\n"),
        (b"text   ", b"text\r\n"),
        (b"a\r\n\r\nb\r\n\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r\n  \r\nb\r\n", b"a\r\n\r\nb\r\n"),
        (b"\t\tlead  and\t\ttabs \t\r\n", b" lead and tabs\r\n"),
        (b"x\ry\r\n", b"x\ry\r\n"),
        (b"x\r", b"x\r\r\n"),
        (b"8bit \xe9\xff\x80 end\r\n", b"8bit \xe9\xff\x80 end\r\n"),
        (b"..dot\r\n.\r\n", b"..dot\r\n.\r\n"),
    ];

    const SIMPLE_BODY: &[(&[u8], &[u8])] = &[
        (b" C \r\nD \t E\r\n\r\n\r\n", b" C \r\nD \t E\r\n"),
        (b"", b"\r\n"),
        (b"\r\n", b"\r\n"),
        (b"\r\n\r\n\r\n", b"\r\n"),
        (b" \r\n\r\n", b" \r\n"),
        (b"text", b"text\r\n"),
        (b"a\r\n\r\nb \r\n\r\n", b"a\r\n\r\nb \r\n"),
    ];

    #[test]
    fn body_canonicalisation_tables() {
        for (canon_kind, table) in [
            (BodyCanon::Relaxed, RELAXED_BODY),
            (BodyCanon::Simple, SIMPLE_BODY),
        ] {
            for (input, expected) in table {
                assert_eq!(
                    canon(canon_kind, &[input]),
                    sha(expected),
                    "{canon_kind:?} {:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn any_split_gives_the_same_hash() {
        let body: &[u8] = b" C \r\nD \t E\r\n\r\n \t\r\nx\ry \r\r\n\r\n\r\nend  \t\r\n\r\n  \r\n";
        for kind in [BodyCanon::Relaxed, BodyCanon::Simple] {
            let whole = canon(kind, &[body]);
            for a in 0..=body.len() {
                for b in a..=body.len() {
                    let pieces = [&body[..a], &body[a..b], &body[b..]];
                    assert_eq!(canon(kind, &pieces), whole, "{kind:?} cut at {a},{b}");
                }
            }
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(canon(kind, &bytes), whole);
        }
    }

    /// Found by the dkim_canon fuzz target: a piece hashed as it is that ended in a bare LF
    /// (text, not a line end) left the hasher thinking a line had ended, so a CR LF starting
    /// the next piece was taken for an empty line, and dropped if trailing.
    #[test]
    fn a_piece_ending_in_a_bare_lf_ends_no_line() {
        for kind in [BodyCanon::Simple, BodyCanon::Relaxed] {
            assert_eq!(canon(kind, &[b"x\n", b"\r\n"]), sha(b"x\n\r\n"), "{kind:?}");
            assert_eq!(canon(kind, &[b"x\n\r\n"]), sha(b"x\n\r\n"), "{kind:?}");
            assert_eq!(canon(kind, &[b"x\n", b"\r\ny\r\n"]), sha(b"x\n\r\ny\r\n"));
        }
    }

    #[test]
    fn a_large_body_hashes_in_any_pieces() {
        let mut body = Vec::new();
        let mut n = 0u32;
        while body.len() < 300_000 {
            n = n.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let line = match n % 5 {
                0 => b"plain line of text\r\n".as_slice(),
                1 => b"  runs \t of  space\t \r\n",
                2 => b"\r\n",
                3 => b"\xc3\xa9t\xc3\xa9 8bit\r\n",
                _ => b"trailing   \r\n",
            };
            body.extend_from_slice(line);
        }
        body.extend_from_slice(b"\r\n\r\n  \r\n");
        let whole = canon(BodyCanon::Relaxed, &[&body]);
        for piece in [1usize, 2, 3, 7, 100, 4096, 16 * 1024 + 1, 65536] {
            let pieces: Vec<&[u8]> = body.chunks(piece).collect();
            assert_eq!(
                canon(BodyCanon::Relaxed, &pieces),
                whole,
                "pieces of {piece}"
            );
        }
    }

    #[test]
    #[ignore = "timing only; run with --ignored --nocapture"]
    fn body_hashing_speed() {
        let odd = b"A line of text, as mail has it: some words\tand  runs.  \r\n".repeat(20_000);
        let plain = b"Most lines of most mail are words with single spaces between them.\r\n"
            .repeat(20_000);
        for (kind, body) in [
            (BodyCanon::Relaxed, &odd),
            (BodyCanon::Relaxed, &plain),
            (BodyCanon::Simple, &plain),
        ] {
            let start = std::time::Instant::now();
            let mut h = BodyHasher::new(kind);
            for piece in body.chunks(65536) {
                h.update(piece);
            }
            h.finish();
            let secs = start.elapsed().as_secs_f64();
            eprintln!("{kind:?}: {:.0} MB/s", body.len() as f64 / secs / 1e6);
        }
    }

    #[test]
    fn relaxed_header_table() {
        let table: &[(&[u8], &[u8])] = &[
            // RFC 6376 3.4.5
            (b"A: X\r\n", b"a:X\r\n"),
            (b"B : Y\t\r\n\tZ  \r\n", b"b:Y Z\r\n"),
            (b"Subject:no space\r\n", b"subject:no space\r\n"),
            (b"SUBJECT:   \t lead\r\n", b"subject:lead\r\n"),
            (b"To: a@b,\r\n  c@d,\r\n\td@e \r\n", b"to:a@b, c@d, d@e\r\n"),
            (b"X-Empty:\r\n", b"x-empty:\r\n"),
            (b"X-Empty:   \r\n", b"x-empty:\r\n"),
            (
                b"Subject: caf\xc3\xa9  \xff\r\n",
                b"subject:caf\xc3\xa9 \xff\r\n",
            ),
            (b"DKIM-Signature: v=1; b=", b"dkim-signature:v=1; b=\r\n"),
        ];
        for (input, expected) in table {
            let mut out = Vec::new();
            relaxed_header(input, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expected)
            );
        }
    }
}
