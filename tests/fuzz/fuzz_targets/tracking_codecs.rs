//! The encodings tracking rewrites HTML parts and tokens with: quoted-printable, MIME
//! base64 and URL-safe base64. Decoders never panic on any input; decode(encode(x)) == x;
//! encoded lines keep to 76 characters; a URL-safe spelling that decodes is the only one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::tracking::{base64, qp};

fn lines_within(enc: &[u8], max: usize) {
    for line in enc.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.len() <= max, "{}", String::from_utf8_lossy(line));
        assert!(!line.contains(&b'\r'), "a bare CR in encoded output");
    }
}

fuzz_target!(|data: &[u8]| {
    let enc = qp::encode(data);
    lines_within(&enc, 76);
    assert!(
        enc.iter()
            .all(|&b| matches!(b, b'\t' | b'\r' | b'\n' | 32..=126))
    );
    assert!(enc.split(|&b| b == b'\n').all(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        !l.ends_with(b" ") && !l.ends_with(b"\t")
    }));
    assert_eq!(qp::decode(&enc), data);
    let _ = qp::decode(data);

    let enc = base64::encode_mime(data);
    lines_within(&enc, 76);
    assert_eq!(base64::decode_mime(&enc).as_deref(), Some(data));
    let _ = base64::decode_mime(data);

    let url = base64::encode_url(data);
    assert_eq!(base64::decode_url(&url).as_deref(), Some(data));
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(raw) = base64::decode_url(s)
    {
        assert_eq!(base64::encode_url(&raw), s, "two spellings of one token");
    }
});
