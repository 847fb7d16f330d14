//! A rate as GCRA (the generic cell rate algorithm: a token bucket kept as one timestamp per
//! key) over a bounded table of keys. Pure: the time is an argument.
//!
//! `N/PERIOD` allows a burst of N, then one more every PERIOD/N. Each key keeps its
//! theoretical arrival time (TAT): when the next request would be on time at the steady rate.
//! A request at `now` goes through when the TAT is at most `PERIOD - PERIOD/N` ahead of `now`,
//! and moves the TAT on by PERIOD/N. A key whose TAT is past is a full bucket, the same as no
//! entry at all, so it can be forgotten at any time: the table drops those first and, at its
//! cap, the key nearest to full, so no spray of keys can grow it without bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// `N/PERIOD`, as `--rate-limit-ip` and friends take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    pub fn new((count, period): (u32, Duration)) -> Rate {
        Rate { count, period }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.period.as_secs();
        let unit = match secs {
            _ if self.period.subsec_nanos() != 0 => format!("{}ms", self.period.as_millis()),
            1 => "s".to_string(),
            60 => "m".to_string(),
            3600 => "h".to_string(),
            86400 => "d".to_string(),
            _ => format!("{secs}s"),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Below this many keys the table does not bother pruning.
const MIN_PRUNE: usize = 256;

/// One rate, kept per key. Times are microseconds on the caller's clock.
pub struct Table<K> {
    /// Between two requests at the steady rate: PERIOD/N.
    interval: u64,
    /// How far ahead of now a TAT may be for a request to go through: a burst of N.
    tolerance: u64,
    tats: HashMap<K, u64>,
    max_keys: usize,
    /// Drop full buckets when the table reaches this size (amortises the sweep).
    prune_at: usize,
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// A table of `rate` for at most `max_keys` keys at once.
    pub fn new(rate: Rate, max_keys: usize) -> Table<K> {
        let period = u64::try_from(rate.period.as_micros()).unwrap_or(u64::MAX);
        let interval = (period / u64::from(rate.count.max(1))).max(1);
        let max_keys = max_keys.max(1);
        Table {
            interval,
            tolerance: interval.saturating_mul(u64::from(rate.count.max(1)) - 1),
            tats: HashMap::new(),
            max_keys,
            prune_at: MIN_PRUNE.min(max_keys),
        }
    }

    /// Whether a request for `key` at `now` goes through: `Ok(tat)` with the TAT to `commit`
    /// if it does, `Err(wait)` with how long until it would.
    pub fn check(&self, key: &K, now: u64) -> Result<u64, Duration> {
        let tat = self.tats.get(key).map_or(now, |&t| t.max(now));
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(Duration::from_micros(ahead - self.tolerance));
        }
        Ok(tat.saturating_add(self.interval))
    }

    /// Records a request that `check` let through (`tat` is what it returned).
    pub fn commit(&mut self, key: K, tat: u64, now: u64) {
        if let Some(t) = self.tats.get_mut(&key) {
            *t = tat;
            return;
        }
        self.make_room(now);
        self.tats.insert(key, tat);
    }

    /// `check`, then `commit` if it went through.
    pub fn take(&mut self, key: &K, now: u64) -> Result<(), Duration> {
        let tat = self.check(key, now)?;
        self.commit(key.clone(), tat, now);
        Ok(())
    }

    /// Room for one more key: full buckets go (amortised); at the cap, a sixteenth of the
    /// keys go in one pass, those whose buckets are nearest to full.
    fn make_room(&mut self, now: u64) {
        if self.tats.len() >= self.prune_at {
            self.tats.retain(|_, tat| *tat > now);
            self.prune_at = (self.tats.len() * 2).max(MIN_PRUNE).min(self.max_keys);
        }
        if self.tats.len() >= self.max_keys {
            let mut tats: Vec<u64> = self.tats.values().copied().collect();
            let mut left = (self.max_keys / 16).max(1);
            let (_, &mut cut, _) = tats.select_nth_unstable(left - 1);
            self.tats.retain(|_, t| {
                let keep = *t > cut || left == 0;
                if !keep {
                    left -= 1;
                }
                keep
            });
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    fn rate(count: u32, secs: u64) -> Rate {
        Rate {
            count,
            period: Duration::from_secs(secs),
        }
    }

    /// Which of the requests at these times (seconds) go through.
    fn admitted(t: &mut Table<&'static str>, times: &[u64]) -> Vec<bool> {
        times
            .iter()
            .map(|&s| t.take(&"k", s * SEC).is_ok())
            .collect()
    }

    #[test]
    fn a_burst_of_n_then_one_per_period_over_n() {
        // 3/min: three at once, then one every 20 s.
        let mut t = Table::new(rate(3, 60), 10);
        assert_eq!(
            admitted(&mut t, &[100, 100, 100, 100, 110, 120, 121, 139, 140]),
            [true, true, true, false, false, true, false, false, true]
        );
        // Idle for a whole period: the full burst again, no more.
        assert_eq!(
            admitted(&mut t, &[300, 300, 300, 300]),
            [true, true, true, false]
        );
    }

    #[test]
    fn a_refusal_says_how_long_to_wait_and_costs_nothing() {
        let mut t = Table::new(rate(2, 3600), 10);
        let now = 1000 * SEC;
        assert!(t.take(&"k", now).is_ok() && t.take(&"k", now).is_ok());
        assert_eq!(t.take(&"k", now), Err(Duration::from_secs(1800)));
        // Refused requests do not push the next one further off.
        assert_eq!(
            t.take(&"k", now + 100 * SEC),
            Err(Duration::from_secs(1700))
        );
        assert_eq!(t.take(&"k", now + 1800 * SEC), Ok(()));
    }

    #[test]
    fn one_per_period() {
        let mut t = Table::new(rate(1, 10), 10);
        assert_eq!(
            admitted(&mut t, &[0, 5, 9, 10, 19, 20]),
            [true, false, false, true, false, true]
        );
    }

    #[test]
    fn keys_are_limited_apart() {
        let mut t = Table::new(rate(1, 60), 10);
        assert!(t.take(&"a", 0).is_ok());
        assert!(t.take(&"b", 0).is_ok());
        assert!(t.take(&"a", SEC).is_err());
    }

    #[test]
    fn check_alone_takes_nothing() {
        let mut t = Table::new(rate(1, 60), 10);
        let tat = t.check(&"a", 0).unwrap();
        assert!(t.check(&"a", 0).is_ok(), "not committed");
        t.commit("a", tat, 0);
        assert!(t.check(&"a", 0).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_and_the_table_is_capped() {
        let mut t: Table<u32> = Table::new(rate(5, 60), 1000);
        for k in 0..5000 {
            assert!(t.take(&k, 0).is_ok());
            assert!(t.len() <= 1000);
        }
        assert!(t.len() > 900, "{}", t.len());
        // The newest key is kept: those dropped were nearest to full (all equal here).
        assert!(t.tats.contains_key(&4999));
        // A minute on, every bucket is full again: new keys sweep them away.
        for k in 0..300 {
            t.take(&(10_000 + k), 61 * SEC).unwrap();
        }
        assert!(t.len() <= 300, "{}", t.len());
    }

    #[test]
    fn at_the_cap_the_bucket_nearest_to_full_goes() {
        let mut t: Table<u32> = Table::new(rate(10, 100), 3);
        // Key 1 spent its whole burst; 2 and 3 one request each.
        for _ in 0..10 {
            t.take(&1, 0).unwrap();
        }
        t.take(&2, 0).unwrap();
        t.take(&3, 0).unwrap();
        t.take(&4, SEC).unwrap();
        assert!(t.tats.contains_key(&1), "the emptiest bucket is kept");
        assert!(t.take(&1, SEC).is_err());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn odd_rates_do_not_overflow_or_divide_by_zero() {
        let mut fast = Table::new(
            Rate {
                count: u32::MAX,
                period: Duration::from_millis(1),
            },
            10,
        );
        for i in 0..1000 {
            assert!(fast.take(&"k", i).is_ok());
        }
        let mut slow = Table::new(rate(1, u64::MAX / 2), 10);
        assert!(slow.take(&"k", u64::MAX - 1).is_ok());
        assert!(slow.take(&"k", u64::MAX - 1).is_err());
    }

    #[test]
    fn rates_display_as_given() {
        assert_eq!(rate(600, 3600).to_string(), "600/h");
        assert_eq!(rate(10000, 86400).to_string(), "10000/d");
        assert_eq!(rate(5, 10).to_string(), "5/10s");
        assert_eq!(rate(1, 1).to_string(), "1/s");
        let ms = Rate {
            count: 3,
            period: Duration::from_millis(1500),
        };
        assert_eq!(ms.to_string(), "3/1500ms");
    }
}
