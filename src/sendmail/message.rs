//! The message read from stdin and the header fix-ups it gets: up to the lone "." line,
//! `From:`, `Date:` and `Message-ID:` added when missing, Bcc: removed, and the recipients
//! `-t` takes from To:, Cc: and Bcc:.

use std::io::{BufRead, Read};
use std::time::{SystemTime, UNIX_EPOCH};

use super::address::parse_address_list;
use super::{EX_DATAERR, EX_IOERR, Failure, fail};

/// Reads the message: up to a lone "." line unless `ignore_dots`, at most `max` bytes.
pub(super) fn read_message(
    input: &mut dyn BufRead,
    ignore_dots: bool,
    max: usize,
) -> Result<Vec<u8>, Failure> {
    let mut input = input.take(max as u64 + 1);
    let mut msg = Vec::new();
    loop {
        let start = msg.len();
        let n = input
            .read_until(b'\n', &mut msg)
            .map_err(|e| fail(EX_IOERR, format!("cannot read the message from stdin: {e}")))?;
        if n == 0 {
            break;
        }
        let line = &msg[start..];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if !ignore_dots && line.strip_suffix(b"\r").unwrap_or(line) == b"." {
            msg.truncate(start);
            return Ok(msg);
        }
    }
    if input.limit() == 0 {
        return Err(fail(
            EX_DATAERR,
            format!("message too large (the limit is {} MiB)", max >> 20),
        ));
    }
    Ok(msg)
}

/// The header fields (each with its continuation lines and line ends) and what follows them
/// (the body, starting with the empty line when `separated`).
struct Head<'a> {
    fields: Vec<&'a [u8]>,
    rest: &'a [u8],
    separated: bool,
}

fn split_head(msg: &[u8]) -> Head<'_> {
    // A leading mbox "From " line (not a header field) is not part of the message.
    let first = msg.split(|&b| b == b'\n').next().unwrap_or_default();
    let msg = if first.starts_with(b"From ") && field_name(first).is_none() {
        msg.get(first.len() + 1..).unwrap_or_default()
    } else {
        msg
    };
    let (mut fields, mut open, mut pos) = (Vec::new(), None, 0);
    let separated = loop {
        let rest = &msg[pos..];
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = rest[..len].strip_suffix(b"\n").unwrap_or(&rest[..len]);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if rest.is_empty() || line.is_empty() {
            break !rest.is_empty();
        }
        let continuation = open.is_some() && matches!(line[0], b' ' | b'\t');
        if !continuation {
            if field_name(line).is_none() {
                break false;
            }
            if let Some(start) = open.replace(pos) {
                fields.push(&msg[start..pos]);
            }
        }
        pos += len;
    };
    if let Some(start) = open {
        fields.push(&msg[start..pos]);
    }
    Head {
        fields,
        rest: &msg[pos..],
        separated,
    }
}

/// The name of a header field starting `line` (printable ASCII before the colon).
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    (!name.is_empty() && name.iter().all(|b| (33..127).contains(b))).then_some(name)
}

/// The unfolded value of a field, as text.
fn field_value(field: &[u8]) -> String {
    let colon = field.iter().position(|&b| b == b':').map_or(0, |i| i + 1);
    let value: Vec<u8> = field[colon..]
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    String::from_utf8_lossy(&value).trim().to_string()
}

fn is_field(field: &[u8], name: &str) -> bool {
    field_name(field).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// The addresses in the To:, Cc: and Bcc: fields.
pub(super) fn header_recipients(msg: &[u8]) -> Vec<String> {
    split_head(msg)
        .fields
        .iter()
        .filter(|f| ["To", "Cc", "Bcc"].iter().any(|n| is_field(f, n)))
        .flat_map(|f| parse_address_list(&field_value(f)))
        .collect()
}

/// The message without Bcc: fields, plus each `(name, value)` whose name it lacks.
pub(super) fn rewrite(msg: &[u8], add: &[(&str, String)]) -> Vec<u8> {
    let head = split_head(msg);
    let mut out = Vec::with_capacity(msg.len() + 256);
    for f in head.fields.iter().filter(|f| !is_field(f, "Bcc")) {
        out.extend_from_slice(f);
        if !f.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in add {
        if !head.fields.iter().any(|f| is_field(f, name)) {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    if !head.separated {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(head.rest);
    out
}

pub(super) fn message_id(host: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "<{}.{:09}.{}.{random:016x}@{host}>",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_stdin() {
        let cases: &[(&[u8], bool, &[u8])] = &[
            (b"a\n.\nb\n", false, b"a\n"),
            (b"a\r\n.\r\nb\r\n", false, b"a\r\n"),
            (b"a\n.", false, b"a\n"),
            (b"a\n.\nb\n", true, b"a\n.\nb\n"),
            (b"a\n..\n.b\n", false, b"a\n..\n.b\n"),
            (b"no newline", false, b"no newline"),
            (b"", false, b""),
        ];
        for &(input, ignore, want) in cases {
            let got = read_message(&mut &input[..], ignore, 1024).unwrap();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
        }
        let big = vec![b'x'; 1025];
        assert_eq!(
            read_message(&mut &big[..], true, 1024).unwrap_err().code,
            EX_DATAERR
        );
        assert!(read_message(&mut &big[..1024], true, 1024).is_ok());
    }

    #[test]
    fn header_scan() {
        let msg =
            b"To: a@b,\n c@d\nCC: \"X, Y\" <e@f>\nBcc: g@h\nSubject: To: no@no\n\nTo: body@no\n";
        assert_eq!(header_recipients(msg), ["a@b", "c@d", "e@f", "g@h"]);
        let cases: &[(&[u8], &str)] = &[
            (
                b"From: x\nBcc: a@b,\n\tc@d\nSubject: s\n\nbody\nBcc: stays\n",
                "From: x\nSubject: s\nD: 1\r\n\nbody\nBcc: stays\n",
            ),
            (
                b"bcc: a@b\r\nD: 0\r\n\r\nbody\r\n",
                "D: 0\r\nFrom: f\r\n\r\nbody\r\n",
            ),
            (b"Subject: s", "Subject: s\r\nFrom: f\r\nD: 1\r\n\r\n"),
            (b"", "From: f\r\nD: 1\r\n\r\n"),
            (
                b"just a body line\n",
                "From: f\r\nD: 1\r\n\r\njust a body line\n",
            ),
            (b" folded first\n", "From: f\r\nD: 1\r\n\r\n folded first\n"),
            (
                b"From: x\nnot a header\nmore\n",
                "From: x\nD: 1\r\n\r\nnot a header\nmore\n",
            ),
            (
                b"From sender@x Mon Jan  1 00:00:00 2024\nFrom: x\nD: 2\n\nb\n",
                "From: x\nD: 2\n\nb\n",
            ),
            (b"Subject : odd\n\n", "Subject : odd\nFrom: f\r\nD: 1\r\n\n"),
        ];
        let add = [("From", "f".to_string()), ("D", "1".to_string())];
        for &(input, want) in cases {
            let got = rewrite(input, &add);
            assert_eq!(
                String::from_utf8_lossy(&got),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn message_ids_are_unique() {
        let (a, b) = (message_id("h.test"), message_id("h.test"));
        assert_ne!(a, b);
        assert!(a.starts_with('<') && a.ends_with("@h.test>"), "{a}");
    }
}
