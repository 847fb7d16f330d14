//! The DATA reader and the dot-stuffer.
//!
//! Reader: any split of the input gives the same content, end and summary (of a message
//! over the size cap, which is refused, the same end and size); the message ends
//! exactly where CR LF "." CR LF (or "." CR LF at the very start) first occurs, never
//! anywhere else (no smuggled second message); what it stores has only CR LF line ends.
//!
//! Stuffer: whatever the content and however it is split, the wire form has only CR LF
//! line ends, no line but the last that is a lone "." (every leading dot doubled), and the
//! reader gives back the content with its line ends normalised, ending at the marker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::smtp::data::{DataReader, DotStuffer, Summary};
use mxrelay_fuzz::{pieces, seed_and_rest};

/// Feeds `chunks` until the end marker: content, where the end was (in bytes of all of
/// them) and the summary.
fn read(chunks: &[&[u8]], max: u64) -> (Vec<u8>, Option<usize>, Summary) {
    let mut r = DataReader::new(max);
    let mut out = Vec::new();
    let mut seen = 0;
    for c in chunks {
        if let Some(n) = r.feed(c, &mut out) {
            assert!(n <= c.len());
            return (out, Some(seen + n), r.summary().clone());
        }
        seen += c.len();
    }
    (out, None, r.summary().clone())
}

/// Only CR LF pairs: no CR without LF after it, no LF without CR before it.
fn crlf_only(b: &[u8]) -> bool {
    b.iter().enumerate().all(|(i, &c)| match c {
        b'\r' => b.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && b[i - 1] == b'\r',
        _ => true,
    })
}

/// Where the first end marker ends, by the rule.
fn marker_end(input: &[u8]) -> Option<usize> {
    if input.starts_with(b".\r\n") {
        return Some(3);
    }
    input
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|k| k + 5)
}

/// Content as the reader stores it: every CR LF, bare CR and bare LF becomes CR LF, and a
/// last line without a line end gets one.
fn normalised(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < content.len() {
        match content[i] {
            b'\r' if content.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            c => out.push(c),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (seed, input) = seed_and_rest(data);
    let chunks = pieces(seed, input);

    // The reader on arbitrary wire input.
    let max = if seed & 1 == 0 { u64::MAX } else { 64 };
    let whole = read(&[input], max);
    let split = read(&chunks, max);
    let (out, end, summary) = whole;
    if summary.oversize {
        // Refused with 552 whatever was kept: only where it ended and its size count.
        assert_eq!(
            (split.1, split.2.size, split.2.oversize),
            (end, summary.size, true)
        );
    } else {
        assert_eq!(
            split,
            (out.clone(), end, summary.clone()),
            "the split changed the result"
        );
    }
    assert_eq!(end, marker_end(input));
    assert!(crlf_only(&out), "a bare CR or LF was stored");
    if !summary.oversize {
        assert_eq!(out.len() as u64, summary.size);
    } else {
        assert!(out.len() as u64 <= max);
    }

    // The stuffer, then the reader on what it wrote.
    let mut wire = Vec::new();
    let mut stuffer = DotStuffer::default();
    for c in &chunks {
        stuffer.stuff(c, &mut wire);
    }
    stuffer.finish(&mut wire);
    assert!(crlf_only(&wire), "a bare CR or LF went on the wire");
    let lines: Vec<&[u8]> = wire[..wire.len() - 2].split(|&b| b == b'\n').collect();
    let (last, body) = lines.split_last().unwrap();
    assert_eq!(*last, b".");
    for l in body {
        assert!(
            !l.starts_with(b".") || l.starts_with(b".."),
            "unstuffed dot"
        );
    }
    let (back, end, summary) = read(&pieces(seed.wrapping_add(1), &wire), u64::MAX);
    assert_eq!(
        end,
        Some(wire.len()),
        "the stuffed message ended early or not at all"
    );
    assert_eq!(back, normalised(input));
    assert_eq!(summary.bare_line_ends, 0);
});
