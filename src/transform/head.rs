//! The header block of a message being accepted (RFC 5322 section 2.2): the fields as the
//! client sent them, held in memory (bounded) while the body streams past, so that transforms
//! can read, add and remove fields before the message is committed. Input is the DATA
//! reader's output, already normalized to CRLF lines.

use std::cell::OnceCell;

/// One header field, exactly as received: name, colon, value and any folded continuation
/// lines, each ending in CRLF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    raw: Vec<u8>,
    name_len: usize,
}

impl Field {
    /// A field from its name and (unfolded, one-line) value.
    pub fn new(name: &str, value: &str) -> Field {
        Field::from_raw(format!("{name}: {value}\r\n").into_bytes())
            .expect("a name without a colon makes a field")
    }

    /// A field from its raw bytes (ending in CRLF); `None` if it does not start with a name
    /// and a colon.
    pub fn from_raw(raw: Vec<u8>) -> Option<Field> {
        let name_len = field_name_len(&raw)?;
        Some(Field { raw, name_len })
    }

    pub fn name(&self) -> &str {
        // A field name is printable ASCII (checked by field_name_len).
        std::str::from_utf8(&self.raw[..self.name_len]).unwrap_or("")
    }

    pub fn is(&self, name: &str) -> bool {
        self.name().eq_ignore_ascii_case(name)
    }

    /// The raw value after the colon, folding and final CRLF included.
    pub fn value(&self) -> &[u8] {
        &self.raw[self.name_len + 1..]
    }

    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// The length of the field name that starts `line` (RFC 5322 ftext: printable ASCII but the
/// colon, here also without space), if a colon follows it.
fn field_name_len(line: &[u8]) -> Option<usize> {
    let n = line
        .iter()
        .position(|&b| !(33..=126).contains(&b) || b == b':')?;
    (n > 0 && line[n] == b':').then_some(n)
}

/// The header fields of a message. They stay as read (one buffer) until a transform looks
/// at them one by one or edits them: most messages only have a field or two looked up, and
/// go on as they came.
#[derive(Clone, Debug, Default)]
pub struct HeaderBlock {
    /// The fields as read, each ending in CRLF; stale once `parsed` has been edited.
    raw: Vec<u8>,
    parsed: OnceCell<Vec<Field>>,
    /// Whether an empty line separated the fields from the body (a message may have no body,
    /// or start its body without one: then it is kept that way).
    separator: bool,
}

impl PartialEq for HeaderBlock {
    fn eq(&self, other: &HeaderBlock) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Eq for HeaderBlock {}

impl HeaderBlock {
    pub fn fields(&self) -> &[Field] {
        self.parsed.get_or_init(|| parse_fields(&self.raw))
    }

    fn fields_mut(&mut self) -> &mut Vec<Field> {
        self.fields();
        self.parsed.get_mut().expect("parsed just now")
    }

    /// Whether a field may be called `name`: a scan of the raw lines, without parsing.
    fn may_have(&self, name: &str) -> bool {
        if self.parsed.get().is_some() {
            return true;
        }
        let name = name.as_bytes();
        let starts = std::iter::once(0).chain(memchr::memchr_iter(b'\n', &self.raw).map(|i| i + 1));
        starts.into_iter().any(|at| {
            let line = &self.raw[at..];
            line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()] == b':'
        })
    }

    /// The first field called `name` (any case).
    pub fn get(&self, name: &str) -> Option<&Field> {
        if !self.may_have(name) {
            return None;
        }
        self.fields().iter().find(|f| f.is(name))
    }

    /// Removes every field called `name` (any case); returns how many there were.
    pub fn remove(&mut self, name: &str) -> usize {
        if !self.may_have(name) {
            return 0;
        }
        let fields = self.fields_mut();
        let before = fields.len();
        fields.retain(|f| !f.is(name));
        before - fields.len()
    }

    /// Removes every field called `name` (any case) and returns the first of them.
    pub fn take(&mut self, name: &str) -> Option<Field> {
        if !self.may_have(name) {
            return None;
        }
        let fields = self.fields_mut();
        let first = fields.iter().position(|f| f.is(name))?;
        let taken = fields.remove(first);
        fields.retain(|f| !f.is(name));
        Some(taken)
    }

    /// Adds a field at the top (where trace fields and signatures go).
    pub fn prepend(&mut self, field: Field) {
        self.fields_mut().insert(0, field);
    }

    /// Adds a field at the end of the block.
    pub fn append(&mut self, field: Field) {
        self.fields_mut().push(field);
    }

    /// The block as it is stored and sent, separator included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = match self.parsed.get() {
            None => {
                let mut out = Vec::with_capacity(self.raw.len() + 2);
                out.extend_from_slice(&self.raw);
                out
            }
            Some(fields) => {
                let len = fields.iter().map(|f| f.raw.len()).sum::<usize>() + 2;
                let mut out = Vec::with_capacity(len);
                for f in fields {
                    out.extend_from_slice(&f.raw);
                }
                out
            }
        };
        if self.separator {
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

/// Fields from their raw lines: each line that starts with a name and a colon, with the
/// folded lines after it.
fn parse_fields(raw: &[u8]) -> Vec<Field> {
    let mut fields: Vec<Field> = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let mut end = memchr::memchr(b'\n', &raw[at..]).map_or(raw.len(), |i| at + i + 1);
        while end < raw.len() && matches!(raw[end], b' ' | b'\t') {
            end = memchr::memchr(b'\n', &raw[end..]).map_or(raw.len(), |i| end + i + 1);
        }
        match (Field::from_raw(raw[at..end].to_vec()), fields.last_mut()) {
            (Some(f), _) => fields.push(f),
            // Not a field (the reader lets none through): kept with the field before it.
            (None, Some(last)) => last.raw.extend_from_slice(&raw[at..end]),
            (None, None) => {}
        }
        at = end;
    }
    fields
}

/// Where the header section ends, found while the message streams in.
#[derive(Debug, PartialEq, Eq)]
pub enum Split {
    /// Still in the header section: everything so far belongs to it.
    Head,
    /// The header section ended; the body starts `n` bytes into the input just given.
    Body(usize),
    /// The header section is longer than the limit.
    TooLarge,
}

/// Collects the header section up to a limit, line by line.
#[derive(Debug)]
pub struct HeadReader {
    buf: Vec<u8>,
    /// Where the line being read starts in `buf`.
    line_start: usize,
    /// Where the client's text starts in `buf`: a fold there has no field to continue.
    client_start: usize,
    limit: usize,
}

impl HeadReader {
    /// `start`: header text that comes before the client's (our `Received:` field).
    pub fn new(start: &[u8], limit: usize) -> HeadReader {
        let mut buf = Vec::with_capacity(start.len() + 4096);
        buf.extend_from_slice(start);
        HeadReader {
            buf,
            line_start: start.len(),
            client_start: start.len(),
            limit: limit + start.len(),
        }
    }

    /// Takes the next bytes of the message. After `Body(n)`, `input[n..]` is body and
    /// `finish` gives the block.
    pub fn feed(&mut self, input: &[u8]) -> Split {
        let mut at = 0;
        while let Some(k) = memchr::memchr(b'\n', &input[at..]) {
            let end = at + k + 1;
            self.buf.extend_from_slice(&input[at..end]);
            let line = &self.buf[self.line_start..];
            if line == b"\r\n" {
                return Split::Body(end);
            }
            let fold = matches!(line.first(), Some(b' ' | b'\t'));
            let field = if fold {
                self.line_start > self.client_start
            } else {
                field_name_len(line).is_some()
            };
            if !field {
                // A line that is not a header field: the body starts here, without separator.
                self.buf.truncate(self.line_start);
                return Split::Body(at);
            }
            self.line_start = self.buf.len();
            at = end;
            if self.buf.len() > self.limit {
                return Split::TooLarge;
            }
        }
        self.buf.extend_from_slice(&input[at..]);
        if self.buf.len() > self.limit {
            return Split::TooLarge;
        }
        Split::Head
    }

    /// The header block read so far (all of the message if it ended in its header section).
    pub fn finish(mut self) -> HeaderBlock {
        let separator = self.buf.ends_with(b"\r\n\r\n") || self.buf == b"\r\n";
        if separator {
            self.buf.truncate(self.buf.len() - 2);
        }
        HeaderBlock {
            raw: self.buf,
            parsed: OnceCell::new(),
            separator,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(pieces: &[&[u8]], limit: usize) -> (Split, Vec<u8>, HeaderBlock) {
        let mut r = HeadReader::new(b"", limit);
        let mut body = Vec::new();
        let mut split = Split::Head;
        for (i, p) in pieces.iter().enumerate() {
            if split != Split::Head {
                body.extend_from_slice(p);
                continue;
            }
            split = r.feed(p);
            if let Split::Body(n) = split {
                body.extend_from_slice(&p[n..]);
                let _ = i;
            }
        }
        (split, body, r.finish())
    }

    #[test]
    fn splits_head_from_body_at_any_piece_boundary() {
        let msg: &[u8] =
            b"From: a@b.test\r\nSubject: hi\r\n there\r\nBcc: x@y.test\r\n\r\nbody\r\n.. line\r\n";
        for cut in 0..msg.len() {
            let (a, b) = msg.split_at(cut);
            let (split, body, block) = read_all(&[a, b], 1000);
            assert!(matches!(split, Split::Body(_)), "cut {cut}");
            assert_eq!(body, b"body\r\n.. line\r\n", "cut {cut}");
            let names: Vec<&str> = block.fields().iter().map(|f| f.name()).collect();
            assert_eq!(names, ["From", "Subject", "Bcc"]);
            assert_eq!(block.get("subject").unwrap().value(), b" hi\r\n there\r\n");
            let mut whole = block.to_bytes();
            whole.extend_from_slice(&body);
            assert_eq!(whole, msg, "cut {cut}");
        }
    }

    #[test]
    fn a_line_that_is_no_field_starts_the_body() {
        let msg = b"From: a@b.test\r\nthis is text\r\n\r\nmore\r\n";
        let (split, body, block) = read_all(&[msg], 1000);
        assert_eq!(split, Split::Body(16));
        assert_eq!(body, b"this is text\r\n\r\nmore\r\n");
        assert_eq!(block.to_bytes(), b"From: a@b.test\r\n");
        let mut r = HeadReader::new(b"Received: by us\r\n", 1000);
        assert_eq!(r.feed(b" folded?\r\n\r\n"), Split::Body(0));
        assert_eq!(r.finish().to_bytes(), b"Received: by us\r\n");
    }

    #[test]
    fn a_message_of_headers_only_is_all_block() {
        let msg = b"From: a@b.test\r\nSubject: x\r\n";
        let (split, body, block) = read_all(&[msg], 1000);
        assert_eq!(split, Split::Head);
        assert!(body.is_empty());
        assert_eq!(block.to_bytes(), msg);
    }

    #[test]
    fn the_limit_holds_with_or_without_line_ends() {
        let long = [b'x'; 300];
        let mut r = HeadReader::new(b"Received: by us\r\n", 100);
        assert_eq!(r.feed(b"X-A: "), Split::Head);
        assert_eq!(r.feed(&long), Split::TooLarge);
        let mut r = HeadReader::new(b"", 100);
        let many = b"X-A: 1\r\n".repeat(20);
        assert_eq!(r.feed(&many), Split::TooLarge);
    }

    #[test]
    fn edits_fields() {
        let mut r = HeadReader::new(b"Received: by us\r\n", 1000);
        assert_eq!(
            r.feed(b"bcc: x@y.test\r\nFrom: a@b.test\r\nBCC: z@y.test\r\n\r\n"),
            Split::Body(48)
        );
        let mut block = r.finish();
        assert_eq!(block.remove("Bcc"), 2);
        block.prepend(Field::new("DKIM-Signature", "v=1"));
        block.append(Field::new("X-Tag", "t"));
        assert_eq!(
            block.to_bytes(),
            b"DKIM-Signature: v=1\r\nReceived: by us\r\nFrom: a@b.test\r\nX-Tag: t\r\n\r\n"
        );
        let mut r = HeadReader::new(b"", 1000);
        r.feed(b"X-Tag: a\r\n b\r\nTo: x@y.test\r\nx-tag: c\r\n\r\n");
        let mut block = r.finish();
        assert_eq!(block.get("Subject"), None, "looked up without parsing");
        assert_eq!(block.take("x-TAG").unwrap().value(), b" a\r\n b\r\n");
        assert_eq!(
            block.to_bytes(),
            b"To: x@y.test\r\n\r\n",
            "every X-Tag removed"
        );
        assert_eq!(Field::from_raw(b" folded\r\n".to_vec()), None);
        assert_eq!(Field::from_raw(b"No Colon\r\n".to_vec()), None);
    }
}
