//! DKIM canonicalisation. The streaming body hasher gives, for any split of the body, the
//! hash and length of the canonical form RFC 6376 3.4.3/3.4.4 define, computed here the
//! plain way (the whole body at once, line by line); the relaxed header form never panics
//! and is its own canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::transform::dkim::canon::{BodyCanon, BodyHasher, relaxed_header};
use mxrelay_fuzz::{pieces, seed_and_rest};

/// The canonical body, by the RFC's words. Lines end at CR LF only (a bare CR or LF is text).
fn reference(canon: BodyCanon, body: &[u8]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                lines.push(rest[..i].to_vec());
                rest = &rest[i + 2..];
            }
            None => {
                // A last line without CR LF gets one.
                lines.push(rest.to_vec());
                rest = &[];
            }
        }
    }
    if canon == BodyCanon::Relaxed {
        for line in &mut lines {
            // Whitespace at the end of a line goes; runs of it inside become one space.
            let mut out = Vec::new();
            let mut wsp = false;
            for &b in line.iter() {
                if b == b' ' || b == b'\t' {
                    wsp = true;
                } else {
                    if wsp {
                        out.push(b' ');
                    }
                    wsp = false;
                    out.push(b);
                }
            }
            *line = out;
        }
    }
    // Empty lines at the end go.
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut out = Vec::new();
    for l in &lines {
        out.extend_from_slice(l);
        out.extend_from_slice(b"\r\n");
    }
    if out.is_empty() && canon == BodyCanon::Simple {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (seed, body) = seed_and_rest(data);
    for canon in [BodyCanon::Simple, BodyCanon::Relaxed] {
        let want = reference(canon, body);
        let mut h = BodyHasher::new(canon);
        for p in pieces(seed, body) {
            h.update(p);
        }
        let (hash, len) = h.finish();
        assert_eq!(len, want.len() as u64, "{canon:?}: canonical length");
        assert_eq!(hash, openssl::sha::sha256(&want), "{canon:?}: hash");
    }

    let mut once = Vec::new();
    relaxed_header(body, &mut once);
    assert!(once.ends_with(b"\r\n"));
    let mut twice = Vec::new();
    relaxed_header(&once, &mut twice);
    if body.contains(&b':') {
        assert_eq!(twice, once, "the relaxed form is not canonical");
    }
});
