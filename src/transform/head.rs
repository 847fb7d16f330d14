//! The header block of a message being accepted (RFC 5322 section 2.2): the fields as the
//! client sent them, held in memory (bounded) while the body streams past, so that transforms
//! can read, add and remove fields before the message is committed. Input is the DATA
//! reader's output, already normalized to CRLF lines.

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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderBlock {
    fields: Vec<Field>,
    /// Whether an empty line separated the fields from the body (a message may have no body,
    /// or start its body without one: then it is kept that way).
    separator: bool,
}

impl HeaderBlock {
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The first field called `name` (any case).
    pub fn get(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.is(name))
    }

    /// Removes every field called `name` (any case); returns how many there were.
    pub fn remove(&mut self, name: &str) -> usize {
        let before = self.fields.len();
        self.fields.retain(|f| !f.is(name));
        before - self.fields.len()
    }

    /// Adds a field at the top (where trace fields and signatures go).
    pub fn prepend(&mut self, field: Field) {
        self.fields.insert(0, field);
    }

    /// Adds a field at the end of the block.
    pub fn append(&mut self, field: Field) {
        self.fields.push(field);
    }

    /// The block as it is stored and sent, separator included.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = self.fields.iter().map(|f| f.raw.len()).sum::<usize>() + 2;
        let mut out = Vec::with_capacity(len);
        for f in &self.fields {
            out.extend_from_slice(&f.raw);
        }
        if self.separator {
            out.extend_from_slice(b"\r\n");
        }
        out
    }
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
    pub fn finish(self) -> HeaderBlock {
        let mut block = HeaderBlock::default();
        let mut lines = self.buf.split_inclusive(|&b| b == b'\n').peekable();
        while let Some(line) = lines.next() {
            if line == b"\r\n" {
                block.separator = true;
                break;
            }
            let mut raw = line.to_vec();
            while let Some(fold) =
                lines.next_if(|l| l.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
            {
                raw.extend_from_slice(fold);
            }
            match Field::from_raw(raw) {
                Some(f) => block.fields.push(f),
                // Only a leading fold can get here: kept with the field before it, or dropped
                // if there is none (it could not be sent as it is).
                None => {
                    if let Some(last) = block.fields.last_mut() {
                        last.raw.extend_from_slice(line);
                    }
                }
            }
        }
        block
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
        assert_eq!(Field::from_raw(b" folded\r\n".to_vec()), None);
        assert_eq!(Field::from_raw(b"No Colon\r\n".to_vec()), None);
    }
}
