//! Queue ids: time-sortable, filename-safe and unique within one spool (microseconds since
//! the epoch plus a process-wide counter), e.g. `0006452A1B2C3D4E-0001`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn new_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff;
    format!("{micros:016X}-{n:04X}")
}

/// Whether `s` looks like an id we made (guards file names built from ids read back from disk).
pub fn is_valid(s: &str) -> bool {
    s.len() == 21
        && s.bytes().enumerate().all(|(i, c)| {
            if i == 16 {
                c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// A queue id in 16 bytes, for indexes of many messages (the text form takes 45 on the heap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    micros: u64,
    n: u16,
}

impl MsgId {
    pub fn parse(s: &str) -> Option<MsgId> {
        if !is_valid(s) {
            return None;
        }
        Some(MsgId {
            micros: u64::from_str_radix(&s[..16], 16).ok()?,
            n: u16::from_str_radix(&s[17..], 16).ok()?,
        })
    }
}

impl MsgId {
    /// When the message was received (its id was made), in unix milliseconds.
    pub fn received_ms(&self) -> u64 {
        self.micros / 1000
    }
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016X}-{:04X}", self.micros, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_sortable_and_valid() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.iter().all(|i| is_valid(i)));
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(!is_valid("../etc/passwd-000000"));
        assert!(!is_valid("0006452A1B2C3D4E_0001"));
        for id in &ids {
            assert_eq!(MsgId::parse(id).unwrap().to_string(), *id);
        }
        assert_eq!(MsgId::parse("../etc/passwd-000000"), None);
    }
}
