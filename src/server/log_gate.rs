//! Refusals reach the log at most once a second for each kind: a flood of connections over a
//! cap (or of commands over a rate) must not fill a small appliance's disk with identical
//! lines. The ones held back are counted and said in the next line; metrics and events still
//! see every refusal.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct LogGate {
    /// Kind → (the second of its last line, refusals held back since).
    kinds: Mutex<HashMap<&'static str, (u64, u64)>>,
}

impl LogGate {
    /// `Some(held back since the last line)` when a refusal of `kind` at second `now_s` is to
    /// be logged; `None` when it is held back.
    pub fn pass(&self, kind: &'static str, now_s: u64) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let (last, held) = kinds.entry(kind).or_insert((u64::MAX, 0));
        if *last == now_s {
            *held += 1;
            return None;
        }
        *last = now_s;
        Some(std::mem::take(held))
    }
}

/// " (N more since the last line)" when some were held back.
pub fn held_back(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} more refused since the last line)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_for_each_kind() {
        let g = LogGate::default();
        assert_eq!(g.pass("a", 100), Some(0));
        assert_eq!(g.pass("a", 100), None);
        assert_eq!(g.pass("a", 100), None);
        assert_eq!(g.pass("b", 100), Some(0), "kinds are apart");
        assert_eq!(g.pass("a", 101), Some(2));
        assert_eq!(g.pass("a", 103), Some(0));
        assert_eq!(held_back(2), " (2 more refused since the last line)");
        assert_eq!(held_back(0), "");
    }
}
