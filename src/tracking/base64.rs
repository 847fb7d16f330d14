//! Base64 (RFC 4648) in the two alphabets tracking needs: the standard one with padding and
//! 76-character CRLF lines for MIME bodies (RFC 2045 section 6.8), and the URL-safe one
//! without padding for tokens. Hand-written: openssl's base64 has no URL-safe alphabet and
//! its decoder is strict about whitespace, and this is a few lines.

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn encode_with(input: &[u8], alphabet: &[u8; 64], pad: bool, out: &mut Vec<u8>) {
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize]);
            } else if pad {
                out.push(b'=');
            }
        }
    }
}

/// Adds six bits to the accumulator, moving a byte out once there are eight.
fn push_sextet(v: u8, acc: &mut u32, bits: &mut u32, out: &mut Vec<u8>) {
    *acc = (*acc << 6) | u32::from(v);
    *bits += 6;
    if *bits >= 8 {
        *bits -= 8;
        out.push((*acc >> *bits) as u8);
        *acc &= (1 << *bits) - 1;
    }
}

/// URL-safe base64 without padding.
pub fn encode_url(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len().div_ceil(3) * 4);
    encode_with(input, URL_SAFE, false, &mut out);
    // Only alphabet characters were pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// URL-safe base64 without padding; `None` for any other character or an impossible length.
pub fn decode_url(input: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in input.as_bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        push_sextet(v, &mut acc, &mut bits, &mut out);
    }
    // A single leftover character cannot happen; leftover bits must be zero (canonical form,
    // so one token has one spelling).
    (bits < 6 && acc == 0).then_some(out)
}

/// Standard base64 with padding, in lines of 76 characters joined by CRLF (no CRLF after
/// the last line).
pub fn encode_mime(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 57 * 78 + 80);
    for (i, line) in input.chunks(57).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        encode_with(line, STANDARD, true, &mut out);
    }
    out
}

/// Standard base64 as found in MIME bodies: line breaks and other whitespace are skipped;
/// `None` on any other character outside the alphabet or data after the padding.
pub fn decode_mime(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    let mut padded = false;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padded = true;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        if padded {
            return None;
        }
        push_sextet(v, &mut acc, &mut bits, &mut out);
    }
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_known_values() {
        let table: &[(&[u8], &str, &str)] = &[
            (b"", "", ""),
            (b"f", "Zg", "Zg=="),
            (b"fo", "Zm8", "Zm8="),
            (b"foo", "Zm9v", "Zm9v"),
            (b"\xfb\xff", "-_8", "+/8="),
        ];
        for &(raw, url, mime) in table {
            assert_eq!(encode_url(raw), url);
            assert_eq!(decode_url(url).unwrap(), raw);
            assert_eq!(encode_mime(raw), mime.as_bytes());
            assert_eq!(decode_mime(mime.as_bytes()).unwrap(), raw);
        }
        assert_eq!(decode_url("Zg="), None);
        assert_eq!(decode_url("Z"), None);
        assert_eq!(decode_url("Zh"), None, "non-canonical trailing bits");
        assert_eq!(decode_mime(b"Zm9v\r\nZm8=\r\n").unwrap(), b"foofo");
        assert_eq!(decode_mime(b"Zm9v!"), None);
        assert_eq!(decode_mime(b"Zg==Zg=="), None);
    }

    #[test]
    fn mime_lines_are_76_characters() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let enc = encode_mime(&data);
        for line in enc.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(line.len() <= 76);
        }
        assert_eq!(decode_mime(&enc).unwrap(), data);
    }
}
