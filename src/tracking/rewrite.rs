//! The per-recipient rewrite of a message while it streams to the next hop: a MIME walker
//! over CRLF lines (the header section, then the body) that keeps a stack of multipart
//! boundaries and copies every byte as it came, except the bodies of `text/html` parts. Such
//! a body is held (up to a limit; a larger one passes untracked and is counted), its
//! Content-Transfer-Encoding undone (quoted-printable, base64; 7bit, 8bit and binary as
//! they are), its links and open pixel written by `html::rewrite`, and it is encoded again
//! the same way. The charset is never touched. HTML attachments (`Content-Disposition:
//! attachment`) and anything inside a `message/rfc822` part are left alone. Malformed MIME
//! (no boundary parameter, a missing closing boundary, a broken base64 body) is copied as
//! it is: when in doubt, nothing changes. Input may come in pieces split anywhere; at most
//! one HTML part and one line (up to 8 KiB, longer lines pass in pieces) are held.

use std::borrow::Cow;
use std::io::{self, Write};
use std::mem;

use super::{base64, html, qp};

/// The default bound on one HTML part's encoded body.
pub const DEFAULT_MAX_HTML: usize = 2 * 1024 * 1024;
/// A partial line longer than this is passed on in pieces (it cannot be a boundary).
const MAX_LINE: usize = 8 * 1024;
/// A part's header section is parsed only up to this size (longer: the part is copied).
const MAX_PART_HEAD: usize = 64 * 1024;
/// Multiparts nested deeper than this are copied without looking inside.
const MAX_DEPTH: usize = 32;
/// RFC 5322's line limit, kept when a 7bit/8bit part gets longer links.
const MAX_WIRE_LINE: usize = 998;

/// What a rewrite did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// HTML parts rewritten.
    pub html_parts: usize,
    /// Links replaced by tracking links.
    pub links: usize,
    /// Open pixels inserted.
    pub pixels: usize,
    /// HTML parts over the size limit, passed on untracked.
    pub too_large: usize,
    /// HTML parts passed on untracked because their body could not be decoded (base64) or
    /// a 7bit/8bit line would grow past 998 octets.
    pub left_alone: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cte {
    /// 7bit, 8bit, binary or none given.
    Identity,
    QuotedPrintable,
    Base64,
}

enum State {
    /// A header section (the message's or a part's): copied, and kept to be parsed.
    Head { buf: Vec<u8>, over: bool },
    /// A body (or preamble, epilogue) copied as it is.
    Copy,
    /// An HTML body being held.
    Html { cte: Cte, buf: Vec<u8> },
}

/// Rewrites one recipient's copy of a message. `track` gets each http(s) link of the HTML
/// parts (HTML-unescaped) and returns its tracking URL, or `None` to leave it (excluded
/// domains, the unsubscribe link, clicks not tracked); `pixel` is the open pixel's URL.
pub struct Rewriter<F> {
    track: F,
    pixel: Option<String>,
    max_html: usize,
    state: State,
    /// Open multiparts, outermost first, each as its delimiter (`--` and the boundary).
    boundaries: Vec<Vec<u8>>,
    partial: Vec<u8>,
    /// The last piece passed on did not end its line.
    mid_line: bool,
    report: Report,
}

impl<F: FnMut(&str) -> Option<String>> Rewriter<F> {
    pub fn new(track: F, pixel: Option<String>) -> Rewriter<F> {
        Rewriter {
            track,
            pixel,
            max_html: DEFAULT_MAX_HTML,
            state: State::Head {
                buf: Vec::new(),
                over: false,
            },
            boundaries: Vec::new(),
            partial: Vec::new(),
            mid_line: false,
            report: Report::default(),
        }
    }

    /// Bounds the HTML parts that are rewritten (their encoded size); larger ones pass as
    /// they are.
    pub fn with_max_html(mut self, max_html: usize) -> Rewriter<F> {
        self.max_html = max_html;
        self
    }

    /// Takes the next piece of the message (split anywhere) and writes what is ready.
    pub fn feed<W: Write>(&mut self, mut input: &[u8], out: &mut W) -> io::Result<()> {
        while !input.is_empty() {
            let Some(i) = memchr::memchr(b'\n', input) else {
                self.partial.extend_from_slice(input);
                if self.partial.len() > MAX_LINE {
                    self.flush_partial(false, out)?;
                }
                return Ok(());
            };
            let (line, rest) = input.split_at(i + 1);
            input = rest;
            if self.partial.is_empty() {
                self.segment(line, true, out)?;
            } else {
                self.partial.extend_from_slice(line);
                self.flush_partial(true, out)?;
            }
        }
        Ok(())
    }

    /// Ends the message (a last line without a line end is taken as it is) and says what
    /// was done.
    pub fn finish<W: Write>(mut self, out: &mut W) -> io::Result<Report> {
        if !self.partial.is_empty() {
            self.flush_partial(true, out)?;
        }
        self.end_part(out)?;
        Ok(self.report)
    }

    fn flush_partial<W: Write>(&mut self, complete: bool, out: &mut W) -> io::Result<()> {
        let mut p = mem::take(&mut self.partial);
        let r = self.segment(&p, complete, out);
        p.clear();
        self.partial = p;
        r
    }

    /// One line, or a piece of a long one (`complete` false for all but its last piece).
    fn segment<W: Write>(&mut self, seg: &[u8], complete: bool, out: &mut W) -> io::Result<()> {
        let continuation = mem::replace(&mut self.mid_line, !complete);
        if !continuation && let Some((k, close)) = self.boundary(seg) {
            self.end_part(out)?;
            self.boundaries.truncate(if close { k } else { k + 1 });
            self.state = if close {
                State::Copy
            } else {
                State::Head {
                    buf: Vec::new(),
                    over: false,
                }
            };
            return out.write_all(seg);
        }
        match &mut self.state {
            State::Head { buf, over } => {
                out.write_all(seg)?;
                if !continuation && (seg == b"\r\n" || seg == b"\n") {
                    let head = mem::take(buf);
                    let over = *over;
                    self.state = self.body_state(&head, over);
                } else if buf.len() + seg.len() <= MAX_PART_HEAD {
                    buf.extend_from_slice(seg);
                } else {
                    *over = true;
                }
            }
            State::Copy => out.write_all(seg)?,
            State::Html { buf, .. } => {
                if buf.len() + seg.len() > self.max_html {
                    out.write_all(buf)?;
                    out.write_all(seg)?;
                    self.report.too_large += 1;
                    self.state = State::Copy;
                } else {
                    buf.extend_from_slice(seg);
                }
            }
        }
        Ok(())
    }

    /// Which open multipart `line` delimits, and whether it closes it.
    fn boundary(&self, line: &[u8]) -> Option<(usize, bool)> {
        if self.boundaries.is_empty() || !line.starts_with(b"--") {
            return None;
        }
        let line = qp::trim_line_end(line);
        self.boundaries.iter().enumerate().rev().find_map(|(k, b)| {
            match line.strip_prefix(b.as_slice())? {
                b"" => Some((k, false)),
                b"--" => Some((k, true)),
                _ => None,
            }
        })
    }

    /// What follows a header section.
    fn body_state(&mut self, head: &[u8], over: bool) -> State {
        if over {
            return State::Copy;
        }
        let fields = unfold(head);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let (media, params) = split_params(field("content-type").unwrap_or("text/plain"));
        let media = media.to_ascii_lowercase();
        if media.starts_with("multipart/") {
            let boundary = params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("boundary"))
                .map(|(_, v)| v.as_bytes());
            if let Some(b) = boundary
                && !b.is_empty()
                && b.len() <= 200
                && self.boundaries.len() < MAX_DEPTH
            {
                let mut delimiter = b"--".to_vec();
                delimiter.extend_from_slice(b);
                self.boundaries.push(delimiter);
            }
            return State::Copy;
        }
        let attachment = field("content-disposition")
            .is_some_and(|d| split_params(d).0.eq_ignore_ascii_case("attachment"));
        if media != "text/html" || attachment {
            return State::Copy;
        }
        let cte = field("content-transfer-encoding")
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let cte = match cte.as_str() {
            "" | "7bit" | "8bit" | "binary" => Cte::Identity,
            "quoted-printable" => Cte::QuotedPrintable,
            "base64" => Cte::Base64,
            _ => return State::Copy,
        };
        State::Html {
            cte,
            buf: Vec::new(),
        }
    }

    /// Ends the part being read: a held HTML body is rewritten and written.
    fn end_part<W: Write>(&mut self, out: &mut W) -> io::Result<()> {
        let State::Html { cte, buf } = mem::replace(&mut self.state, State::Copy) else {
            return Ok(());
        };
        // The line end before a boundary belongs to the boundary, not to the body.
        let body_len = buf.len()
            - if buf.ends_with(b"\r\n") {
                2
            } else {
                usize::from(buf.ends_with(b"\n"))
            };
        let (body, tail) = buf.split_at(body_len);
        match self.rewrite(body, cte) {
            Some(new) => out.write_all(&new)?,
            None => out.write_all(body)?,
        }
        out.write_all(tail)
    }

    /// The rewritten, re-encoded body; `None` to keep it as it is.
    fn rewrite(&mut self, body: &[u8], cte: Cte) -> Option<Vec<u8>> {
        let decoded = match cte {
            Cte::Identity => Cow::Borrowed(body),
            Cte::QuotedPrintable => Cow::Owned(qp::decode(body)),
            Cte::Base64 => match base64::decode_mime(body) {
                Some(d) => Cow::Owned(d),
                None => {
                    self.report.left_alone += 1;
                    return None;
                }
            },
        };
        if decoded.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        let (new, edits) = html::rewrite(&decoded, &mut self.track, self.pixel.as_deref());
        if edits.links == 0 && !edits.pixel {
            return None;
        }
        let encoded = match cte {
            Cte::Identity => {
                if longest_line(&new) > longest_line(body).max(MAX_WIRE_LINE) {
                    self.report.left_alone += 1;
                    return None;
                }
                new
            }
            Cte::QuotedPrintable => qp::encode(&new),
            Cte::Base64 => base64::encode_mime(&new),
        };
        self.report.html_parts += 1;
        self.report.links += edits.links;
        self.report.pixels += usize::from(edits.pixel);
        Some(encoded)
    }
}

fn longest_line(b: &[u8]) -> usize {
    b.split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

/// The fields of a header section as (name, unfolded value), in order; lines that are not
/// fields are skipped.
fn unfold(head: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = fields.last_mut() {
                v.push_str(&line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.to_string()));
        }
    }
    fields
}

/// A Content-Type-like value: the value before the first `;`, trimmed, and its parameters
/// (quotes and backslash escapes undone).
fn split_params(value: &str) -> (String, Vec<(String, String)>) {
    let mut pieces = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == ';' && !quoted {
            pieces.push(mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    pieces.push(cur);
    let mut pieces = pieces.into_iter();
    let first = pieces.next().unwrap_or_default().trim().to_string();
    let params = pieces
        .filter_map(|p| {
            let (n, v) = p.split_once('=')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    (first, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(msg: &[u8], pixel: Option<&str>) -> (Vec<u8>, Report) {
        let mut rw = Rewriter::new(
            |u: &str| Some(format!("https://t/c/{}", u.len())),
            pixel.map(String::from),
        );
        let mut out = Vec::new();
        rw.feed(msg, &mut out).unwrap();
        let report = rw.finish(&mut out).unwrap();
        (out, report)
    }

    #[test]
    fn params() {
        let (media, params) = split_params(" Multipart/Mixed; boundary=\"a;b \\\"c\"; x = y ");
        assert_eq!(media, "Multipart/Mixed");
        assert_eq!(
            params,
            [
                ("boundary".into(), "a;b \"c".into()),
                ("x".into(), "y".into())
            ]
        );
    }

    #[test]
    fn single_part_html_and_plain_text() {
        let msg = b"Content-Type: text/html\r\n\r\n<a href=\"http://a/\">x</a>\r\n";
        let (out, report) = run(msg, None);
        assert_eq!(
            out,
            b"Content-Type: text/html\r\n\r\n<a href=\"https://t/c/9\">x</a>\r\n"
        );
        assert_eq!(report.links, 1);
        let plain = b"Subject: x\r\n\r\n<a href=\"http://a/\">x</a>\r\n";
        assert_eq!(run(plain, Some("https://t/o")).0, plain);
    }

    #[test]
    fn malformed_mime_is_copied() {
        for msg in [
            &b"Content-Type: multipart/mixed\r\n\r\n--x\r\nContent-Type: text/html\r\n\r\n<a href=\"http://a/\">\r\n--x--\r\n"[..],
            b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\nContent-Type: text/html\r\n\r\n<a href=\"http://a/\">\r\n",
            b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n",
            b"Content-Type: text/html\r\nContent-Disposition: attachment\r\n\r\n<a href=\"http://a/\">\r\n",
            b"Content-Type: text/html\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n<a href=\"http://a/\">\r\n",
            b"Content-Type: text/html\r\n",
            b"",
        ] {
            assert_eq!(run(msg, None).0, msg, "{}", String::from_utf8_lossy(msg));
        }
    }

    #[test]
    fn missing_closing_boundary_still_rewrites_the_last_part() {
        let msg = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/html\r\n\r\n<a href=\"http://a/\">";
        let (out, report) = run(msg, None);
        assert_eq!(report.links, 1);
        assert!(out.ends_with(b"\r\n\r\n<a href=\"https://t/c/9\">"));
    }

    #[test]
    fn long_lines_pass_in_pieces() {
        let mut msg = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        msg.extend(std::iter::repeat_n(b'z', 100_000));
        msg.extend_from_slice(b"\r\n--x--\r\n");
        let (out, _) = run(&msg, Some("https://t/o"));
        assert_eq!(out, msg);
    }
}
