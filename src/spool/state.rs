//! The retry state of a queued message, recorded in place in its slot: attempts, next try,
//! hold, last error and each recipient's state. The envelope written at commit never
//! changes; a deferral or a crossed-off recipient writes a newer state record instead, one
//! write and one fdatasync, with no new file and no directory operation.
//!
//! Each slot has room for two records after its envelope (`Layout`). Record `seq` goes into
//! copy `seq % 2`, so the write of a new one never touches the newest valid one: a write cut
//! short by a crash fails its checksum and the other copy, one state older, is used (a
//! recipient delivered since may be delivered again: a duplicate, never a loss). A record
//! names its message, so one left behind by an earlier message of a reused slot is ignored.
//!
//! Format: one line `mxrelay-state 1 <id> <seq> <body length> <crc32 of body>`, then the body:
//! `<attempts> <next attempt ms> <held 0|1>\n<one letter per recipient: P D F S>\n<last error>\n`
//! (`S`: suppressed, added later; records without it read as before).

use super::envelope::{Envelope, RcptState};

const MAGIC: &str = "mxrelay-state 1 ";
/// Records are placed and sized in units of this (a sector, the smallest atomic write).
pub const UNIT: u64 = 512;
/// The last error is cut to this many bytes in a record (the full text is in the log).
pub const LAST_ERROR_MAX: usize = 300;
/// Room for the header line and the fixed fields.
const FIXED: u64 = 160;

/// Where a slot's state records are, from the slot's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// In `UNIT`s from the slot's start.
    at: u32,
    /// The length of one record, in `UNIT`s.
    len: u16,
}

impl Layout {
    /// For a slot whose header, message and envelope take `used` bytes, for a message with
    /// `rcpts` recipients.
    pub fn new(used: u64, rcpts: usize) -> Layout {
        let len = (FIXED + LAST_ERROR_MAX as u64 + rcpts as u64).div_ceil(UNIT);
        Layout {
            at: used.div_ceil(UNIT) as u32,
            len: len as u16,
        }
    }

    /// The offset of copy `seq % 2` from the slot's start.
    pub fn offset(&self, seq: u32) -> u64 {
        (self.at as u64 + (seq % 2) as u64 * self.len as u64) * UNIT
    }

    /// One record's length in bytes.
    pub fn record_len(&self) -> usize {
        self.len as usize * UNIT as usize
    }

    /// Where the slot ends, with both records.
    pub fn end(&self) -> u64 {
        self.offset(0) + 2 * self.record_len() as u64
    }
}

/// The mutable part of an envelope, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u32,
    pub attempts: u32,
    pub next_attempt: u64,
    pub held: bool,
    pub states: Vec<RcptState>,
    pub last_error: String,
}

impl Record {
    pub fn of(env: &Envelope, seq: u32) -> Record {
        let mut last_error = env.last_error.replace(['\r', '\n'], " ");
        if last_error.len() > LAST_ERROR_MAX {
            let mut cut = LAST_ERROR_MAX;
            while !last_error.is_char_boundary(cut) {
                cut -= 1;
            }
            last_error.truncate(cut);
        }
        Record {
            seq,
            attempts: env.attempts,
            next_attempt: env.next_attempt,
            held: env.held,
            states: env.recipients.iter().map(|r| r.state).collect(),
            last_error,
        }
    }

    /// Applies the record to the envelope as committed; false if it does not fit it.
    pub fn apply(&self, env: &mut Envelope) -> bool {
        if self.states.len() != env.recipients.len() {
            return false;
        }
        env.attempts = self.attempts;
        env.next_attempt = self.next_attempt;
        env.held = self.held;
        env.last_error = self.last_error.clone();
        for (r, s) in env.recipients.iter_mut().zip(&self.states) {
            r.state = *s;
        }
        true
    }

    pub fn encode(&self, id: &str) -> Vec<u8> {
        let states: String = self
            .states
            .iter()
            .map(|s| match s {
                RcptState::Pending => 'P',
                RcptState::Delivered => 'D',
                RcptState::Failed => 'F',
                RcptState::Suppressed => 'S',
            })
            .collect();
        let body = format!(
            "{} {} {}\n{states}\n{}\n",
            self.attempts, self.next_attempt, self.held as u8, self.last_error
        );
        let crc = crc32fast::hash(body.as_bytes());
        format!("{MAGIC}{id} {} {} {crc:08x}\n{body}", self.seq, body.len()).into_bytes()
    }

    /// The record in `bytes` if it is whole and belongs to message `id`.
    pub fn decode(bytes: &[u8], id: &str) -> Option<Record> {
        let nl = memchr::memchr(b'\n', &bytes[..bytes.len().min(200)])?;
        let line = std::str::from_utf8(&bytes[..nl])
            .ok()?
            .strip_prefix(MAGIC)?;
        let mut words = line.split(' ');
        if words.next()? != id {
            return None;
        }
        let seq = words.next()?.parse().ok()?;
        let body_len: usize = words.next()?.parse().ok()?;
        let crc = u32::from_str_radix(words.next()?, 16).ok()?;
        let body = bytes.get(nl + 1..(nl + 1).checked_add(body_len)?)?;
        if words.next().is_some() || crc32fast::hash(body) != crc {
            return None;
        }
        let mut lines = std::str::from_utf8(body).ok()?.split('\n');
        let mut fixed = lines.next()?.split(' ');
        let attempts = fixed.next()?.parse().ok()?;
        let next_attempt = fixed.next()?.parse().ok()?;
        let held = match fixed.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        };
        let states = lines
            .next()?
            .chars()
            .map(|c| match c {
                'P' => Some(RcptState::Pending),
                'D' => Some(RcptState::Delivered),
                'F' => Some(RcptState::Failed),
                'S' => Some(RcptState::Suppressed),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        let last_error = lines.next()?.to_string();
        Some(Record {
            seq,
            attempts,
            next_attempt,
            held,
            states,
            last_error,
        })
    }

    /// The newest whole record of message `id` in the two copies.
    pub fn newest(copies: [&[u8]; 2], id: &str) -> Option<Record> {
        copies
            .into_iter()
            .filter_map(|c| Record::decode(c, id))
            .max_by_key(|r| r.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::envelope::Recipient;

    fn env() -> Envelope {
        Envelope::sample("0006452A1B2C3D4E-0001", &["x@y", "z@y"])
    }

    #[test]
    fn a_record_round_trips_and_applies() {
        let mut e = env();
        e.attempts = 3;
        e.next_attempt = 1_700_000_000_123;
        e.held = true;
        e.last_error = "mx said:\r\n 451 later".into();
        e.recipients[0].state = RcptState::Suppressed;
        e.recipients[1].state = RcptState::Delivered;
        let r = Record::of(&e, 7);
        assert_eq!(r.last_error, "mx said:   451 later");
        let bytes = r.encode(&e.id);
        assert_eq!(Record::decode(&bytes, &e.id), Some(r.clone()));
        let mut fresh = env();
        assert!(r.apply(&mut fresh));
        e.last_error = r.last_error.clone();
        assert_eq!(fresh, e);
        // Not this message's, or not for this many recipients.
        assert_eq!(Record::decode(&bytes, "0006452A1B2C3D4E-0002"), None);
        let mut one = env();
        one.recipients.pop();
        assert!(!r.apply(&mut one));
    }

    #[test]
    fn a_torn_or_damaged_copy_loses_to_the_other() {
        let e = env();
        let old = Record::of(&e, 1).encode(&e.id);
        let new = Record::of(&e, 2).encode(&e.id);
        let mut torn = new.clone();
        let last = torn.len() - 2;
        torn[last] ^= 1;
        let pick = |a: &[u8], b: &[u8]| Record::newest([a, b], &e.id).map(|r| r.seq);
        assert_eq!(pick(&old, &new), Some(2));
        assert_eq!(pick(&torn, &old), Some(1));
        assert_eq!(pick(&new[..new.len() - 1], &old), Some(1), "cut short");
        assert_eq!(pick(&[0u8; 512], &[b' '; 512]), None);
    }

    /// Found by the spool_records fuzz target: a body length near 2^64 overflowed.
    #[test]
    fn a_body_length_past_the_record_is_refused() {
        let id = "0006452A1B2C3D4E-0001";
        for len in [u64::MAX, u64::MAX - 40] {
            let rec = format!("{MAGIC}{id} 1 {len} 00000000\n0 0 0\nP\n\n");
            assert_eq!(Record::decode(rec.as_bytes(), id), None);
        }
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary_and_fit_the_record() {
        let mut e = env();
        e.last_error = "é".repeat(400);
        e.recipients = (0..1000)
            .map(|i| Recipient {
                address: format!("r{i}@x"),
                state: RcptState::Failed,
            })
            .collect();
        let r = Record::of(&e, u32::MAX);
        assert!(r.last_error.len() <= LAST_ERROR_MAX && r.last_error.len() >= 298);
        let layout = Layout::new(1000, e.recipients.len());
        assert!(r.encode(&e.id).len() <= layout.record_len());
        assert_eq!(layout.offset(0), 1024);
        assert_eq!(layout.offset(1), 1024 + layout.record_len() as u64);
        assert_eq!(Layout::new(1024, 1).offset(2), 1024);
    }
}
