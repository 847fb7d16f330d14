//! Keeping a DSN's lines safe on the wire: CRLF line ends, lines folded within 998 bytes,
//! quoted-printable for 8-bit text parts, and a MIME boundary that occurs in no part.

/// RFC 5322's line length limit, CRLF excluded.
pub(super) const MAX_LINE: usize = 998;

pub(super) fn lines_to_bytes(lines: Vec<String>) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        put_line(&mut out, line.as_bytes());
    }
    out
}

/// Appends `line` and CRLF, folding it so no output line exceeds `MAX_LINE` bytes.
/// Folds before existing whitespace when possible (lossless when unfolded); otherwise,
/// as a last resort, breaks at the limit and starts the continuation with a space.
pub(super) fn put_line(out: &mut Vec<u8>, mut rest: &[u8]) {
    let is_wsp = |b: u8| b == b' ' || b == b'\t';
    let mut lead = false;
    loop {
        if lead {
            out.push(b' ');
        }
        let room = MAX_LINE - usize::from(lead);
        if rest.len() <= room {
            out.extend_from_slice(rest);
            out.extend_from_slice(b"\r\n");
            return;
        }
        // The folded-off part must keep a non-whitespace byte (RFC 5322 3.2.2).
        let at_wsp = (1..=room)
            .rev()
            .find(|&i| is_wsp(rest[i]) && !is_wsp(rest[i - 1]));
        lead = at_wsp.is_none();
        let cut = at_wsp.unwrap_or_else(|| {
            // Avoid splitting a UTF-8 sequence if one straddles the limit.
            (room - 3..=room)
                .rev()
                .find(|&i| rest[i] & 0xC0 != 0x80)
                .unwrap_or(room)
        });
        out.extend_from_slice(&rest[..cut]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[cut..];
    }
}

/// A boundary derived from `unique` that occurs in none of the part bodies.
pub(super) fn pick_boundary(unique: &str, bodies: &[&[u8]]) -> String {
    // "=_" cannot occur in base64 or quoted-printable text, hence the customary prefix.
    let base: String = "=_"
        .chars()
        .chain(
            unique
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || "'()+_,-./:=?".contains(*c))
                .take(60),
        )
        .collect();
    let occurs = |b: &str| {
        let b = b.as_bytes();
        bodies
            .iter()
            .any(|body| body.windows(b.len()).any(|w| w == b))
    };
    (0..)
        .map(|n| {
            if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            }
        })
        .find(|b| !occurs(b))
        .expect("a finite body cannot contain every candidate")
}

/// RFC 2045 6.7 quoted-printable of CRLF-separated lines: lines stay ≤ 76 columns with soft
/// breaks, trailing whitespace is encoded, line ends stay hard CRLF.
pub(super) fn quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 3 / 2);
    let text = body.strip_suffix(b"\r\n").unwrap_or(body);
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let literal =
                (b'!'..=b'~').contains(&b) && b != b'=' || (b == b' ' || b == b'\t') && !last;
            let width = if literal { 1 } else { 3 };
            if col + width > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            if literal {
                out.push(b);
            } else {
                out.extend_from_slice(format!("={b:02X}").as_bytes());
            }
            col += width;
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}
