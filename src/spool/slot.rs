//! The slot format. A slot holds one queued message at a time and is reused for message after
//! message, so that committing one costs a write and an fdatasync, with no directory operation
//! (no create, rename or directory fsync) once the slot exists. A slot is either a cell of the
//! shared cells file (`queue/cells`, fixed size, for messages that fit one) or a slot file of
//! its own (`queue/<n>`, any size).
//!
//! Layout, from the slot's start: a 256-byte header, the message, then its envelope as first
//! written. A message that went through the transform stage has its header section stored
//! after its body (the envelope's `head-after-body` says how long it is); it is read back in
//! order. The header is one line,
//! `mxrelay-slot 1 <state> <id> <message length> <envelope length> <crc32>`, padded with
//! spaces to 255 bytes plus a newline. State `L`: a queued message; `F`: free.
//!
//! The header, message and envelope reach the disk in no particular order within the one
//! fdatasync that commits them, so the CRC (over message and envelope) is what tells a
//! committed slot from one a crash cut off while it was being reused.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::Envelope;
use super::id;

pub const HEADER_LEN: usize = 256;
const MAGIC: &[u8] = b"mxrelay-slot 1 ";
/// Where the state letter is: marking a slot free rewrites this one byte.
pub const STATE_AT: u64 = MAGIC.len() as u64;
/// A slot whose envelope claims more than this is damaged (envelopes are a few KB).
const MAX_ENVELOPE: u64 = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Live,
    Free,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Header {
    pub state: State,
    pub id: String,
    pub msg_len: u64,
    pub env_len: u64,
    pub crc: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let state = match self.state {
            State::Live => 'L',
            State::Free => 'F',
        };
        let line = format!(
            "{state} {} {} {} {:08x}",
            self.id, self.msg_len, self.env_len, self.crc
        );
        let mut out = [b' '; HEADER_LEN];
        out[..MAGIC.len()].copy_from_slice(MAGIC);
        out[MAGIC.len()..MAGIC.len() + line.len()].copy_from_slice(line.as_bytes());
        out[HEADER_LEN - 1] = b'\n';
        out
    }

    /// `None` for anything that is not a whole header: a slot that was never committed.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        if bytes.len() < HEADER_LEN || bytes[HEADER_LEN - 1] != b'\n' {
            return None;
        }
        let text = std::str::from_utf8(bytes[..HEADER_LEN - 1].strip_prefix(MAGIC)?).ok()?;
        let mut words = text.trim_end_matches(' ').split(' ');
        let state = match words.next()? {
            "L" => State::Live,
            "F" => State::Free,
            _ => return None,
        };
        let id = words.next().filter(|i| id::is_valid(i))?.to_string();
        let msg_len = words.next()?.parse().ok()?;
        let env_len = words.next()?.parse().ok()?;
        let crc = u32::from_str_radix(words.next()?, 16).ok()?;
        if words.next().is_some() {
            return None;
        }
        Some(Header {
            state,
            id,
            msg_len,
            env_len,
            crc,
        })
    }
}

/// What a slot file holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Content {
    /// Free, or never committed (no whole header).
    Free,
    /// The envelope as committed, and its length in the slot.
    Live(Envelope, u64),
    /// A committed-looking header whose content does not match it.
    Damaged(String),
}

/// Reads the slot at `base` in `file` (0 for a slot file, a cell's offset in the cells file).
/// `room`: how long the slot may be (a cell's size). `verify`: check the CRC over the whole
/// message (recovery does; listing the queue only reads header and envelope).
pub fn read(file: &File, base: u64, room: Option<u64>, verify: bool) -> io::Result<Content> {
    let mut head = [0u8; HEADER_LEN];
    let n = read_full_at(file, &mut head, base)?;
    let Some(header) = Header::parse(&head[..n]) else {
        return Ok(Content::Free);
    };
    if header.state == State::Free {
        return Ok(Content::Free);
    }
    if header.env_len > MAX_ENVELOPE {
        return Ok(Content::Damaged("envelope length out of range".into()));
    }
    // The message length is what the disk says: a slot that would end past what a file can
    // hold is damaged (not an overflow, nor a read error that would stop recovery).
    let len = (HEADER_LEN as u64 + header.env_len)
        .checked_add(header.msg_len)
        .filter(|len| {
            base.checked_add(*len)
                .is_some_and(|end| end <= i64::MAX as u64)
        });
    let Some(len) = len else {
        return Ok(Content::Damaged("message length out of range".into()));
    };
    if room.is_some_and(|room| len > room) {
        return Ok(Content::Damaged("longer than a cell".into()));
    }
    let shorter = || Ok(Content::Damaged("shorter than its header says".into()));
    let mut crc = crc32fast::Hasher::new();
    if verify {
        let mut message = StoredReader::new(file, base, 0, header.msg_len);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match message.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => crc.update(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return shorter(),
                Err(e) => return Err(e),
            }
        }
    }
    let mut env = vec![0u8; header.env_len as usize];
    if read_full_at(file, &mut env, base + HEADER_LEN as u64 + header.msg_len)? < env.len() {
        return shorter();
    }
    if verify {
        crc.update(&env);
        if crc.finalize() != header.crc {
            return Ok(Content::Damaged(
                "content does not match its checksum (a write cut short by a crash, or disk damage)"
                    .into(),
            ));
        }
    }
    let env = match Envelope::decode(&env) {
        Ok(env) => env,
        Err(e) => return Ok(Content::Damaged(e.to_string())),
    };
    if env.id != header.id || env.size != header.msg_len {
        return Ok(Content::Damaged(
            "envelope does not match its header".into(),
        ));
    }
    Ok(Content::Live(env, header.env_len))
}

/// Reads into `buf` from `at` until it is full or the file ends; returns how much it read.
pub fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads stored bytes of a slot: `size` bytes from `HEADER_LEN + skip` into the slot at
/// `base` (positioned reads, so one open file serves any number of readers).
pub struct StoredReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> StoredReader<'a> {
    pub fn new(file: &'a File, base: u64, skip: u64, size: u64) -> StoredReader<'a> {
        let pos = base + HEADER_LEN as u64 + skip;
        StoredReader {
            file,
            pos,
            end: pos + size,
        }
    }
}

/// The message in a slot, in order: its `size` bytes, of which the last `head` are stored
/// first (the header section a transform stage wrote after the body).
pub type MessageReader<'a> = io::Chain<StoredReader<'a>, StoredReader<'a>>;

pub fn message_reader(file: &File, base: u64, size: u64, head: u64) -> MessageReader<'_> {
    let body = size - head;
    StoredReader::new(file, base, body, head).chain(StoredReader::new(file, base, 0, body))
}

impl Read for StoredReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The header section of the message in the slot at `base` (up to `max` bytes), for DSNs
/// and `queue show`.
pub fn read_message_headers(
    file: &File,
    base: u64,
    (size, head): (u64, u64),
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    message_reader(file, base, size, head)
        .take(max as u64)
        .read_to_end(&mut buf)?;
    if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
        buf.truncate(end + 2);
    }
    Ok(buf)
}

/// Whether the slot holds the queued message `id` right now (for readers without the
/// daemon's knowledge, which may free and reuse a slot at any time).
pub fn holds(file: &File, base: u64, id: &str) -> io::Result<bool> {
    let mut head = [0u8; HEADER_LEN];
    let n = read_full_at(file, &mut head, base)?;
    Ok(Header::parse(&head[..n]).is_some_and(|h| h.state == State::Live && h.id == id))
}

/// The slot number of a file name in `queue/`, if it is one.
pub fn number(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_reject_damage() {
        let h = Header {
            state: State::Live,
            id: "0006613118200133-0015".into(),
            msg_len: 5120,
            env_len: 210,
            crc: 0xdead_beef,
        };
        let bytes = h.encode();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(Header::parse(&bytes), Some(h));
        let mut free = bytes;
        free[STATE_AT as usize] = b'F';
        assert_eq!(Header::parse(&free).map(|h| h.state), Some(State::Free));
        assert_eq!(Header::parse(&[0u8; HEADER_LEN]), None);
        assert_eq!(Header::parse(&bytes[..100]), None);
        let mut torn = bytes;
        torn[40] = b'x';
        assert_eq!(
            Header::parse(&torn),
            None,
            "{}",
            String::from_utf8_lossy(&torn)
        );
    }

    /// Found by the spool_records fuzz target: a header's message length near 2^64 made the
    /// offset of the envelope overflow (a panic with overflow checks; in a release build, a
    /// read error past 2^63 that stopped recovery instead of quarantining the slot).
    #[test]
    fn a_message_length_past_any_file_is_damage() {
        let path = std::env::temp_dir().join(format!("mxrelay-slot-len-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        for msg_len in [u64::MAX, u64::MAX - 255, 1 << 63, (1 << 63) - 256] {
            let h = Header {
                state: State::Live,
                id: "0006613118200133-0015".into(),
                msg_len,
                env_len: 10,
                crc: 0,
            };
            file.write_all_at(&h.encode(), 0).unwrap();
            for (room, verify) in [(None, false), (None, true), (Some(1 << 18), true)] {
                assert_eq!(
                    read(&file, 0, room, verify).unwrap(),
                    Content::Damaged("message length out of range".into()),
                    "{msg_len}"
                );
            }
        }
    }

    #[test]
    fn slot_names_are_numbers() {
        assert_eq!(number("17"), Some(17));
        assert_eq!(number("17.env"), None);
        assert_eq!(number(""), None);
        assert_eq!(number("0006613118200133-0015.env"), None);
    }
}
