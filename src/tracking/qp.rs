//! Quoted-printable (RFC 2045 section 6.7) for rewriting HTML parts: a tolerant decoder
//! (soft line breaks removed, `=XX` decoded, trailing white space of encoded lines dropped, a
//! malformed `=` kept as it is) and an encoder with lines of at most 76 characters, soft
//! breaks, `=` escaped, and CRLF as the only hard line break.

/// Decodes a quoted-printable body (CRLF or LF line ends).
pub fn decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    loop {
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        // Transport padding: white space at the end of an encoded line is not data.
        let line = trim_line_end(line);
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        decode_line(line, &mut out);
        match next {
            Some(n) => {
                if !soft {
                    out.extend_from_slice(b"\r\n");
                }
                rest = n;
            }
            None => return out,
        }
    }
}

/// `=XX` decoded, anything else (a malformed `=` too) copied, in runs.
fn decode_line(mut line: &[u8], out: &mut Vec<u8>) {
    while let Some(i) = memchr::memchr(b'=', line) {
        out.extend_from_slice(&line[..i]);
        match line.get(i + 1..i + 3).and_then(hex_pair) {
            Some(v) => {
                out.push(v);
                line = &line[i + 3..];
            }
            None => {
                out.push(b'=');
                line = &line[i + 1..];
            }
        }
    }
    out.extend_from_slice(line);
}

/// A line without its line end (CRLF or LF) and the spaces and tabs before it.
pub(super) fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let end = line
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &line[..end]
}

fn hex_pair(b: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(b[0])? * 16 + digit(b[1])?) as u8)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";
const MAX_LINE: usize = 76;

/// Encodes `input`, where CRLF is a hard line break; no CRLF is added at the end.
pub fn encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 8);
    let mut rest = input;
    loop {
        let (line, next) = match memchr::memmem::find(rest, b"\r\n") {
            Some(i) => (&rest[..i], Some(&rest[i + 2..])),
            None => (rest, None),
        };
        encode_line(line, &mut out);
        match next {
            Some(n) => {
                out.extend_from_slice(b"\r\n");
                rest = n;
            }
            None => return out,
        }
    }
}

/// Whether a byte other than a line's last stands for itself (a space or tab at the end of
/// a line must be encoded).
fn plain(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 33..=60 | 62..=126)
}

fn encode_line(line: &[u8], out: &mut Vec<u8>) {
    let mut col = 0;
    let mut i = 0;
    while i < line.len() {
        // A run of plain bytes before the last: copied in pieces that fill each line up to
        // the soft break's `=`.
        let body = &line[i..line.len() - 1];
        let run = body.iter().position(|&b| !plain(b)).unwrap_or(body.len());
        if run > 0 {
            let mut piece = &body[..run];
            while !piece.is_empty() {
                if col == MAX_LINE - 1 {
                    out.extend_from_slice(b"=\r\n");
                    col = 0;
                }
                let n = piece.len().min(MAX_LINE - 1 - col);
                out.extend_from_slice(&piece[..n]);
                col += n;
                piece = &piece[n..];
            }
            i += run;
            continue;
        }
        let b = line[i];
        let at_end = i + 1 == line.len();
        let literal = match b {
            b'=' => false,
            b' ' | b'\t' => !at_end,
            33..=126 => true,
            _ => false,
        };
        let width = if literal { 1 } else { 3 };
        // Room for the soft break's `=` unless this is the line's last character.
        let limit = if at_end { MAX_LINE } else { MAX_LINE - 1 };
        if col + width > limit {
            out.extend_from_slice(b"=\r\n");
            col = 0;
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        col += width;
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        let table: &[(&[u8], &[u8])] = &[
            (b"a=3Db", b"a=b"),
            (b"caf=E9 ok", b"caf\xe9 ok"),
            (b"https://exa=\r\nmple.com/", b"https://example.com/"),
            (b"line  \r\nnext", b"line\r\nnext"),
            (b"soft= \r\nx", b"softx"),
            (b"bad=zz=", b"bad=zz"),
            (b"a\nb", b"a\r\nb"),
            (b"end\r\n", b"end\r\n"),
            (b"=3d", b"="),
        ];
        for &(enc, dec) in table {
            assert_eq!(decode(enc), dec, "{}", String::from_utf8_lossy(enc));
        }
    }

    #[test]
    fn encodes_within_76_columns_and_round_trips() {
        let mut data = Vec::new();
        for i in 0..3000u32 {
            data.push((i * 7 % 256) as u8);
            if i % 97 == 0 {
                data.extend_from_slice(b"\r\n");
            }
            if i % 13 == 0 {
                data.extend_from_slice(b"  ");
            }
        }
        data.extend_from_slice(b"trailing \t");
        let enc = encode(&data);
        for line in enc.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(line.len() <= MAX_LINE, "{}", String::from_utf8_lossy(line));
            assert!(!line.ends_with(b" ") && !line.ends_with(b"\t"));
            assert!(!line.contains(&b'\r'));
        }
        assert_eq!(decode(&enc), data);
        assert_eq!(encode(b"a=b c \r\nx"), b"a=3Db c=20\r\nx");
    }
}
