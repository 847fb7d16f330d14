//! The client side's reply reading: the bounded line reader (any split of the input gives
//! the same lines; an over-long line is reported once, never cut into pieces) and the reply
//! parser (never panics; a parsed reply renders to lines that parse back to the same reply,
//! and lifting the enhanced code out of a line keeps the rest of its text).
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use mxrelay::net::{Line, LineReader};
use mxrelay::smtp::reply::{self, Enhanced, ReplyParser};
use mxrelay_fuzz::{pieces, seed_and_rest};

/// Hands out the pieces one read at a time (a piece larger than the caller's buffer over
/// several reads), as a socket would.
struct Chunks<'a> {
    pieces: Vec<&'a [u8]>,
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.pieces.retain(|p| !p.is_empty());
        let Some(first) = self.pieces.first_mut() else {
            return Ok(0);
        };
        let n = first.len().min(buf.len());
        buf[..n].copy_from_slice(&first[..n]);
        *first = &first[n..];
        Ok(n)
    }
}

#[derive(Debug, PartialEq)]
enum Got {
    Line(Vec<u8>),
    TooLong,
}

/// What `read_line(max)` should give for `input`, by the rule: each LF-terminated line
/// (its CR, if any, dropped) unless it is longer than `max`; a last unterminated piece is
/// dropped, or reported as too long.
fn expected(input: &[u8], max: usize) -> Vec<Got> {
    let mut parts: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    let tail = parts.pop().unwrap_or_default();
    let mut out: Vec<Got> = parts
        .into_iter()
        .map(|l| {
            if l.len() > max {
                Got::TooLong
            } else {
                Got::Line(l.strip_suffix(b"\r").unwrap_or(l).to_vec())
            }
        })
        .collect();
    if tail.len() > max {
        out.push(Got::TooLong);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let (seed, input) = seed_and_rest(data);
    let capacity = 16 + usize::from(seed) * 4;
    let max = usize::from(seed.rotate_left(3)) * 2;
    let mut reader = LineReader::new(
        Chunks {
            pieces: pieces(seed, input),
        },
        capacity,
    );
    let mut got = Vec::new();
    loop {
        match reader
            .read_line(max)
            .expect("reading from memory cannot fail")
        {
            Line::Line(l) => got.push(Got::Line(l.to_vec())),
            Line::TooLong => got.push(Got::TooLong),
            Line::Eof => break,
        }
    }
    assert_eq!(got, expected(input, max.min(capacity - 1)));

    // The reply parser on every LF-terminated line, as the delivery side reads them.
    let mut parser = ReplyParser::default();
    let mut texts: Vec<String> = Vec::new();
    for line in input.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if let Some((code, _, text)) = reply::parse_line(&line) {
            assert!((200..600).contains(&code));
            texts.push(text.to_string());
        }
        let r = match parser.feed(&line) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(_) => {
                parser = ReplyParser::default();
                texts.clear();
                continue;
            }
        };
        assert_eq!(r.lines.len(), texts.len());
        if let Some(e) = r.enhanced {
            assert_eq!(u16::from(e.0), r.code / 100);
            for (l, t) in r.lines.iter().zip(&texts) {
                // The text is as sent, or as sent after one enhanced code and its spaces.
                let rest = t.trim_start();
                let word = rest.split_whitespace().next().unwrap_or("");
                let lifted =
                    Enhanced::parse_prefix(word).is_some() && rest[word.len()..].trim_start() == l;
                assert!(l == t || lifted, "{t:?} became {l:?}");
            }
        } else {
            assert_eq!(&r.lines, &texts);
        }
        texts.clear();
        let rendered = r.render();
        let mut again = ReplyParser::default();
        let mut back = None;
        for l in rendered.strip_suffix("\r\n").unwrap().split("\r\n") {
            back = again.feed(l).expect("a rendered reply parses");
        }
        // Rendering puts the enhanced code before every line, and parsing lifts it out
        // with the spaces after it: only spaces that began a line without one can go.
        let mut want = r.clone();
        if r.enhanced.is_some() {
            for l in &mut want.lines {
                *l = l.trim_start().to_string();
            }
        }
        assert_eq!(back, Some(want), "{rendered:?}");
        let _ = r.summary();
    }
});
