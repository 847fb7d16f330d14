//! Base64 (RFC 4648) in the two forms tracking needs: the standard alphabet with padding and
//! 76-character CRLF lines for MIME bodies (RFC 2045 section 6.8), and the URL-safe one
//! without padding for tokens. The codec is the `base64` crate (already in the build through
//! bcrypt and ureq); what is here is the MIME line layout and the strictness each use wants.

use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};

/// MIME bodies as found: padding optional, non-zero trailing bits tolerated.
const MIME: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// URL-safe base64 without padding.
pub fn encode_url(input: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(input)
}

/// URL-safe base64 without padding; `None` for any other character, padding, an impossible
/// length or non-zero trailing bits (canonical form, so one token has one spelling).
pub fn decode_url(input: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(input).ok()
}

/// Standard base64 with padding, in lines of 76 characters joined by CRLF (no CRLF after
/// the last line).
pub fn encode_mime(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 57 * 78 + 80);
    for (i, line) in input.chunks(57).enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(MIME.encode(line).as_bytes());
    }
    out
}

/// Standard base64 as found in MIME bodies: line breaks and other whitespace are skipped;
/// `None` on any other character outside the alphabet or data after the padding.
pub fn decode_mime(input: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .collect();
    MIME.decode(compact).ok()
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
