//! A recipient's own copy of a stored message, made while it is delivered: the header
//! section with the unsubscribe fields added and a DKIM signature on top, then the body with
//! its HTML links and open pixel rewritten for that recipient. Nothing is stored: a first
//! pass over the message works out the copy's size and the body hash the signature needs.
//! A body of up to `KEEP` bytes is kept from that pass and sent from memory; a larger one is
//! made again as it streams to the next hop. Both passes run the same rewrite over the same
//! stored bytes with the same keys, which gives the same output every time (tokens are an
//! HMAC of their contents), so the signature covers exactly what is sent. Memory stays at
//! `KEEP` or the rewriter's bound (one HTML part), whatever the message's size.

use std::io::{self, Read, Write};
use std::sync::Arc;

use super::rewrite::{Report, Rewriter};
use super::{Links, Personal, unsubscribe};
use crate::transform::dkim::Dkim;
use crate::transform::head::{HeadReader, HeaderBlock, Split};

/// Bytes read from the stored message at a time.
const CHUNK: usize = 64 * 1024;
/// A copy's body up to this size is kept from the first pass (most newsletters), not made
/// twice.
const KEEP: usize = 256 * 1024;

/// Makes recipients' copies, as the tracking flags say.
pub struct Copier {
    pub links: Links,
    /// `--track-exclude`: domains (lower case) whose links are never tracked.
    pub exclude: Vec<String>,
    /// `--unsubscribe-mailto`.
    pub mailto: Option<String>,
    pub dkim: Option<Arc<Dkim>>,
    /// `--max-header-size`: a longer header section is sent as stored.
    pub max_header: usize,
}

/// What a copy is made of: the message as stored (opened afresh for each pass).
pub trait Source {
    fn open(&self) -> impl Read + '_;
}

/// One recipient's copy, ready to be sent.
pub struct PersonalCopy<'a, S> {
    copier: &'a Copier,
    source: &'a S,
    plan: Plan<'a>,
    /// The copy's header section, separator included.
    head: Vec<u8>,
    /// Bytes of the stored message's header section (replaced by `head`).
    skip: u64,
    /// The body, when the first pass could keep it.
    kept: Option<Vec<u8>>,
    /// The copy's size in bytes.
    pub size: u64,
    /// What the rewrite did to the HTML parts.
    pub report: Report,
    /// The DKIM signatures added, as `d=... s=... a=...`.
    pub signatures: Vec<String>,
}

/// Whose copy it is and what it gets.
#[derive(Clone, Copy)]
struct Plan<'a> {
    id: &'a str,
    recipient: &'a str,
    personal: Personal,
}

impl Copier {
    /// Prepares `recipient`'s copy of message `id` (the first pass). `Ok(None)`: nothing to
    /// personalise after all (the header section is over the limit; logged): send the
    /// message as stored.
    pub fn prepare<'a, S: Source>(
        &'a self,
        source: &'a S,
        id: &'a str,
        recipient: &'a str,
        personal: Personal,
    ) -> io::Result<Option<PersonalCopy<'a, S>>> {
        let Some((mut block, skip)) = read_head(&mut source.open(), self.max_header)? else {
            log::warn!(
                "{id}: header section over --max-header-size: sent to {recipient} as stored, \
                 without tracking, unsubscribe fields or signature"
            );
            return Ok(None);
        };
        if personal.unsubscribe {
            match self.unsubscribe_fields(id, recipient) {
                Ok(fields) => fields.into_iter().for_each(|f| block.append(f)),
                Err(e) => log::warn!("{id}: no unsubscribe link for {recipient}: {e}"),
            }
        }
        let plan = Plan {
            id,
            recipient,
            personal,
        };
        let mut copy = PersonalCopy {
            copier: self,
            source,
            plan,
            head: Vec::new(),
            skip,
            kept: None,
            size: 0,
            report: Report::default(),
            signatures: Vec::new(),
        };
        let mut signing = self.dkim.as_ref().and_then(|d| d.start(&block, id));
        let mut sink = BodySink {
            signing: signing.as_mut(),
            len: 0,
            kept: Some(Vec::new()),
        };
        let mut body = copy.body();
        io::copy(&mut body, &mut sink)?;
        let report = std::mem::take(&mut body.report);
        drop(body);
        let body_len = sink.len;
        copy.kept = sink.kept;
        copy.report = report;
        if let Some(s) = signing {
            copy.signatures = s.finish(&mut block, id).map_err(io::Error::other)?;
        }
        copy.head = block.to_bytes();
        copy.size = copy.head.len() as u64 + body_len;
        Ok(Some(copy))
    }

    fn unsubscribe_fields(
        &self,
        id: &str,
        recipient: &str,
    ) -> Result<[crate::transform::head::Field; 2], String> {
        let url = self
            .links
            .unsubscribe(id, recipient)
            .ok_or("the recipient does not fit in a token")?;
        unsubscribe::fields(&url, self.mailto.as_deref())
    }
}

impl<S: Source> PersonalCopy<'_, S> {
    /// The copy's bytes, in order (the second pass, or any later one).
    pub fn bytes(&self) -> impl Read + '_ {
        let body: Box<dyn Read + '_> = match &self.kept {
            Some(kept) => Box::new(&kept[..]),
            None => Box::new(self.body()),
        };
        io::Cursor::new(&self.head[..]).chain(body)
    }

    /// The copy's body: the stored message rewritten, its header section left out.
    fn body(&self) -> Body<'_, impl Read + '_> {
        let plan = self.plan;
        let links = &self.copier.links;
        let rewriter = (plan.personal.clicks || plan.personal.opens).then(|| {
            let track: Track<'_> = if plan.personal.clicks {
                Box::new(links.click_tracker(plan.id, plan.recipient, &self.copier.exclude))
            } else {
                Box::new(|_: &str| None)
            };
            let pixel = plan
                .personal
                .opens
                .then(|| links.open(plan.id, plan.recipient))
                .flatten();
            Rewriter::new(track, pixel)
        });
        Body {
            src: self.source.open(),
            rewriter,
            skip: self.skip,
            input: Vec::new(),
            buf: Vec::new(),
            pos: 0,
            done: false,
            report: Report::default(),
        }
    }
}

/// The header block of a message and the length of its header section; `None` if it is
/// longer than `max`.
fn read_head(src: &mut impl Read, max: usize) -> io::Result<Option<(HeaderBlock, u64)>> {
    let mut reader = HeadReader::new(b"", max);
    let mut chunk = vec![0; 8 * 1024];
    let mut read = 0u64;
    loop {
        let n = src.read(&mut chunk)?;
        if n == 0 {
            return Ok(Some((reader.finish(), read)));
        }
        match reader.feed(&chunk[..n]) {
            Split::Head => read += n as u64,
            Split::Body(k) => return Ok(Some((reader.finish(), read + k as u64))),
            Split::TooLarge => return Ok(None),
        }
    }
}

type Track<'a> = Box<dyn FnMut(&str) -> Option<String> + 'a>;

/// Reads the rewritten body: the stored message goes through the rewriter (all of it, so it
/// sees the top-level Content-Type), and the first `skip` bytes that come out, the stored
/// header section (copied as it was), are dropped.
struct Body<'a, R> {
    src: R,
    /// `None`: no link or pixel to add; the body is copied.
    rewriter: Option<Rewriter<Track<'a>>>,
    skip: u64,
    input: Vec<u8>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    report: Report,
}

impl<R: Read> Read for Body<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read> Body<'_, R> {
    fn refill(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.pos = 0;
        self.input.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            let n = self.src.read(&mut self.input[filled..])?;
            if n == 0 {
                self.done = true;
                break;
            }
            filled += n;
        }
        let input = &self.input[..filled];
        match self.rewriter.as_mut() {
            Some(rw) => rw.feed(input, &mut self.buf)?,
            None => self.buf.extend_from_slice(input),
        }
        if self.done
            && let Some(rw) = self.rewriter.take()
        {
            self.report = rw.finish(&mut self.buf)?;
        }
        let drop = self.skip.min(self.buf.len() as u64);
        self.skip -= drop;
        self.pos = drop as usize;
        Ok(())
    }
}

/// Where the first pass puts the body: its length, and the signature's body hash.
struct BodySink<'s> {
    signing: Option<&'s mut crate::transform::dkim::Signing>,
    len: u64,
    /// The body so far, while it is within `KEEP`.
    kept: Option<Vec<u8>>,
}

impl Write for BodySink<'_> {
    fn write(&mut self, piece: &[u8]) -> io::Result<usize> {
        if let Some(s) = self.signing.as_mut() {
            s.body(piece);
        }
        self.len += piece.len() as u64;
        if let Some(k) = self.kept.as_mut() {
            if k.len() + piece.len() <= KEEP {
                k.extend_from_slice(piece);
            } else {
                self.kept = None;
            }
        }
        Ok(piece.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::Keys;

    impl Source for Vec<u8> {
        fn open(&self) -> impl Read + '_ {
            &self[..]
        }
    }

    const HEAD: &str = "Received: from app by relay.test; Mon, 7 Dec 2026 16:00:00 +0000\r\n\
        From: News <news@example.com>\r\nSubject: news\r\nMIME-Version: 1.0\r\n\
        Content-Type: text/html; charset=utf-8\r\n\r\n";
    const BODY: &str = "<html><body><p><a href=\"https://example.com/a\">a</a>\r\n\
        <a href=\"https://skip.example/b\">b</a></p></body></html>\r\n";

    fn copier() -> Copier {
        let keys = Keys::new(&[b"copy-test-secret-0123".to_vec()]).unwrap();
        Copier {
            links: Links::new("https://t.example", keys).unwrap(),
            exclude: vec!["skip.example".into()],
            mailto: Some("unsub@example.com".into()),
            dkim: None,
            max_header: 1024,
        }
    }

    fn read_all(copy: &PersonalCopy<'_, Vec<u8>>) -> String {
        let mut out = Vec::new();
        copy.bytes().read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn personal(p: &str) -> Personal {
        Personal::parse(p).unwrap()
    }

    #[test]
    fn each_recipient_gets_its_own_links_and_unsubscribe_fields() {
        let msg = format!("{HEAD}{BODY}").into_bytes();
        let c = copier();
        let all = personal("clicks,opens,unsubscribe");
        let bob = c
            .prepare(&msg, "M1", "bob@example.org", all)
            .unwrap()
            .unwrap();
        let text = read_all(&bob);
        assert_eq!(text.len() as u64, bob.size);
        assert_eq!(read_all(&bob), text, "every pass sends the same bytes");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with(&HEAD[..HEAD.len() - 4]), "{head}");
        let unsubscribe = head.split("List-Unsubscribe: <").nth(1).unwrap();
        assert!(unsubscribe.starts_with("https://t.example/u/"), "{head}");
        assert!(
            head.contains(",\r\n <mailto:unsub@example.com>\r\n"),
            "{head}"
        );
        assert!(head.ends_with("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(body.contains("href=\"https://t.example/c/"), "{body}");
        assert!(body.contains("href=\"https://skip.example/b\""), "{body}");
        assert!(body.contains("https://t.example/o/"), "{body}");
        assert_eq!((bob.report.links, bob.report.pixels), (1, 1));
        let token = |t: &str| t.split("/c/").nth(1).unwrap()[..20].to_string();
        let alice = c
            .prepare(&msg, "M1", "alice@example.org", all)
            .unwrap()
            .unwrap();
        assert_ne!(token(&read_all(&alice)), token(&text));
    }

    #[test]
    fn unsubscribe_alone_leaves_the_body_as_stored() {
        let msg = format!("{HEAD}{BODY}").into_bytes();
        let c = copier();
        let copy = c
            .prepare(&msg, "M1", "bob@example.org", personal("unsubscribe"))
            .unwrap()
            .unwrap();
        let text = read_all(&copy);
        assert!(
            text.ends_with(&format!("One-Click\r\n\r\n{BODY}")),
            "{text}"
        );
        // Tracking alone adds no fields.
        let copy = c
            .prepare(&msg, "M1", "bob@example.org", personal("opens"))
            .unwrap()
            .unwrap();
        let text = read_all(&copy);
        assert!(text.starts_with(HEAD), "{text}");
        assert!(text.contains("/o/") && !text.contains("/c/"), "{text}");
    }

    #[test]
    fn odd_shapes_pass_whole() {
        let c = copier();
        let p = personal("clicks,unsubscribe");
        // No body at all, and a body without the blank line before it.
        for msg in [
            "From: a@example.com\r\n",
            "From: a@example.com\r\n<a href=\"https://x.test/\">x</a>\r\n",
        ] {
            let m = msg.as_bytes().to_vec();
            let copy = c.prepare(&m, "M1", "b@example.org", p).unwrap().unwrap();
            let text = read_all(&copy);
            assert_eq!(text.len() as u64, copy.size);
            assert!(
                text.starts_with("From: a@example.com\r\nList-Unsubscribe: <https://t.example/u/"),
                "{text}"
            );
            let rest = &msg["From: a@example.com\r\n".len()..];
            assert!(text.ends_with(rest), "{text}");
        }
        // Over the header limit: sent as stored.
        let long = format!(
            "From: a@example.com\r\nX-Long: {}\r\n\r\nhi\r\n",
            "x".repeat(2000)
        );
        assert!(
            c.prepare(&long.into_bytes(), "M1", "b@example.org", p)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_large_body_streams_through() {
        let mut msg = HEAD.as_bytes().to_vec();
        while msg.len() < 300_000 {
            msg.extend_from_slice(b"<p><a href=\"https://example.com/x\">x</a></p>\r\n");
        }
        let c = copier();
        let copy = c
            .prepare(&msg, "M1", "b@example.org", personal("clicks"))
            .unwrap()
            .unwrap();
        let text = read_all(&copy);
        assert_eq!(text.len() as u64, copy.size);
        assert_eq!(copy.report.links, text.matches("/c/").count());
        assert!(copy.report.links > 5000);
    }
}
