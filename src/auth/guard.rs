//! The brute-force guard: failed AUTH attempts counted per client address.
//!
//! [`FailureGuard`] counts failed AUTH attempts per client address in a sliding window and locks
//! the address out for one window once the limit is reached. IPv6 clients are counted per /64
//! (one host can trivially use a whole /64), IPv4-mapped IPv6 addresses count as their IPv4
//! address. The table is bounded: expired entries are pruned when new addresses are inserted and
//! at most 10 000 addresses are tracked (the least recently failing one is dropped first).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most client addresses [`FailureGuard`] tracks at once.
const MAX_TRACKED: usize = 10_000;
/// Below this many entries the guard does not bother pruning.
const MIN_PRUNE: usize = 256;

/// Failures of one address (or IPv6 /64).
struct Record {
    /// Times of the most recent failures within the window, at most `max_failures` of them.
    failures: VecDeque<Instant>,
    /// When the limit was last reached.
    locked_at: Option<Instant>,
    /// Latest failure (for expiry and eviction).
    last: Instant,
}

struct GuardState {
    map: HashMap<IpAddr, Record>,
    /// Prune expired entries when the map reaches this size (amortises the O(n) sweep).
    prune_at: usize,
}

/// Brute-force guard shared by all sessions: counts failed AUTH per client address in a sliding
/// window. IPv6 addresses are grouped by /64. `max_failures == 0` or a zero window disables it.
pub struct FailureGuard {
    max_failures: u32,
    window: Duration,
    max_tracked: usize,
    state: Mutex<GuardState>,
}

impl fmt::Debug for FailureGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureGuard")
            .field("max_failures", &self.max_failures)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// The key an address is counted under: IPv4-mapped IPv6 becomes IPv4, other IPv6 its /64
/// (also the key of the per-address limits in `crate::limits`).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        },
    }
}

impl FailureGuard {
    /// A guard allowing `max_failures` failed attempts per address within `window`.
    pub fn new(max_failures: u32, window: Duration) -> FailureGuard {
        FailureGuard::with_max_tracked(max_failures, window, MAX_TRACKED)
    }

    fn with_max_tracked(max_failures: u32, window: Duration, max_tracked: usize) -> FailureGuard {
        let max_tracked = max_tracked.max(1);
        FailureGuard {
            max_failures,
            window,
            max_tracked,
            state: Mutex::new(GuardState {
                map: HashMap::new(),
                prune_at: MIN_PRUNE.min(max_tracked),
            }),
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn within(&self, t: Instant, now: Instant) -> bool {
        now.saturating_duration_since(t) < self.window
    }

    fn record_locked(&self, r: &Record, now: Instant) -> bool {
        r.locked_at.is_some_and(|t| self.within(t, now))
    }

    fn disabled(&self) -> bool {
        self.max_failures == 0 || self.window.is_zero()
    }

    /// Makes room for one new address: drops expired entries (amortised) and, at the cap, the
    /// entry whose last failure is oldest.
    fn make_room(&self, st: &mut GuardState, now: Instant) {
        if st.map.len() >= st.prune_at {
            st.map.retain(|_, r| self.within(r.last, now));
            st.prune_at = (st.map.len() * 2).max(MIN_PRUNE).min(self.max_tracked);
        }
        while st.map.len() >= self.max_tracked {
            let Some(oldest) = st.map.iter().min_by_key(|(_, r)| r.last).map(|(k, _)| *k) else {
                break;
            };
            st.map.remove(&oldest);
        }
    }

    /// Records a failure at `now`; returns true when the address has now reached max_failures
    /// within the window (caller answers 421 and disconnects). Reaching the limit (again) starts
    /// a lockout of one window from `now`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> bool {
        if self.disabled() {
            return false;
        }
        let key = address_key(ip);
        let mut st = self.lock_state();
        if !st.map.contains_key(&key) {
            self.make_room(&mut st, now);
        }
        let r = st.map.entry(key).or_insert_with(|| Record {
            failures: VecDeque::new(),
            locked_at: None,
            last: now,
        });
        let window = self.window;
        r.failures
            .retain(|&t| now.saturating_duration_since(t) < window);
        r.failures.push_back(now);
        while r.failures.len() > self.max_failures as usize {
            r.failures.pop_front();
        }
        r.last = r.last.max(now);
        if r.failures.len() >= self.max_failures as usize {
            r.locked_at = Some(r.locked_at.map_or(now, |t| t.max(now)));
        }
        self.record_locked(r, now)
    }

    /// True while the address is locked out (max_failures reached within the last `window`):
    /// the caller refuses AUTH with 421 right away.
    pub fn is_locked(&self, ip: IpAddr, now: Instant) -> bool {
        if self.disabled() {
            return false;
        }
        let st = self.lock_state();
        st.map
            .get(&address_key(ip))
            .is_some_and(|r| self.record_locked(r, now))
    }

    /// A successful login clears the address's failures.
    pub fn clear(&self, ip: IpAddr) {
        self.lock_state().map.remove(&address_key(ip));
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock_state().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn guard_locks_at_max_within_window() {
        let g = FailureGuard::new(3, 10 * MIN);
        let t0 = Instant::now();
        let ip = v4(1);
        assert!(!g.is_locked(ip, t0));
        assert!(!g.record_failure(ip, t0));
        assert!(!g.record_failure(ip, t0 + MIN));
        assert!(!g.is_locked(ip, t0 + MIN));
        assert!(g.record_failure(ip, t0 + 2 * MIN), "third failure locks");
        assert!(g.is_locked(ip, t0 + 2 * MIN));
        assert!(
            g.is_locked(ip, t0 + 11 * MIN),
            "a full window after the lock"
        );
        assert!(
            !g.is_locked(v4(2), t0 + 2 * MIN),
            "other addresses unaffected"
        );
        // Unlocks once the window has passed since the limit was reached.
        assert!(!g.is_locked(ip, t0 + 12 * MIN));
        // The old failures have expired too: the count starts over.
        assert!(!g.record_failure(ip, t0 + 12 * MIN));
        assert!(!g.is_locked(ip, t0 + 12 * MIN));
    }

    #[test]
    fn guard_window_slides() {
        let g = FailureGuard::new(3, 10 * MIN);
        let t0 = Instant::now();
        let ip = v4(1);
        // Failures spread wider than the window never reach 3 at once.
        for i in 0..10 {
            assert!(!g.record_failure(ip, t0 + i * 6 * MIN), "failure {i}");
        }
        assert!(!g.is_locked(ip, t0 + 60 * MIN));
        // 48 has left the window at 59 (54, 59: two) ...
        assert!(!g.record_failure(ip, t0 + 59 * MIN));
        // ... three within ten minutes (54, 59, 60) lock.
        assert!(g.record_failure(ip, t0 + 60 * MIN));
        assert!(g.is_locked(ip, t0 + 60 * MIN));
    }

    #[test]
    fn guard_failure_while_locked_extends() {
        let g = FailureGuard::new(2, 10 * MIN);
        let t0 = Instant::now();
        let ip = v4(7);
        g.record_failure(ip, t0);
        assert!(g.record_failure(ip, t0));
        // A concurrent session that slipped past is_locked fails again later.
        assert!(g.record_failure(ip, t0 + 5 * MIN));
        assert!(g.is_locked(ip, t0 + 14 * MIN));
        assert!(!g.is_locked(ip, t0 + 15 * MIN));
    }

    #[test]
    fn guard_clear() {
        let g = FailureGuard::new(3, 10 * MIN);
        let t0 = Instant::now();
        let ip = v4(1);
        g.record_failure(ip, t0);
        g.record_failure(ip, t0);
        g.clear(ip);
        assert!(!g.record_failure(ip, t0), "count restarted after clear");
        assert!(!g.record_failure(ip, t0));
        assert!(g.record_failure(ip, t0));
        g.clear(ip);
        assert!(!g.is_locked(ip, t0), "clear also lifts a lock");
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn guard_ipv6_per_64_and_mapped_v4() {
        let g = FailureGuard::new(2, 10 * MIN);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(!g.record_failure(a, t0));
        assert!(g.record_failure(b, t0), "same /64");
        assert!(g.is_locked(a, t0));
        assert!(!g.is_locked(other, t0));

        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert!(!g.record_failure(mapped, t0));
        assert!(g.record_failure(v4(9), t0));
        assert!(g.is_locked(mapped, t0));
        g.clear(mapped);
        assert!(!g.is_locked(v4(9), t0));
    }

    #[test]
    fn guard_disabled() {
        let t0 = Instant::now();
        for g in [
            FailureGuard::new(0, MIN),
            FailureGuard::new(3, Duration::ZERO),
        ] {
            for _ in 0..10 {
                assert!(!g.record_failure(v4(1), t0));
            }
            assert!(!g.is_locked(v4(1), t0));
            assert_eq!(g.tracked(), 0);
        }
    }

    #[test]
    fn guard_max_one() {
        let g = FailureGuard::new(1, MIN);
        let t0 = Instant::now();
        assert!(g.record_failure(v4(1), t0));
        assert!(g.is_locked(v4(1), t0));
    }

    #[test]
    fn guard_size_cap_drops_oldest() {
        let g = FailureGuard::with_max_tracked(5, 10 * MIN, 100);
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        // The first address is a real attacker, then 200 others, all within the window.
        for _ in 0..4 {
            g.record_failure(v4(0), t0);
        }
        for i in 1..=200u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            g.record_failure(ip, t0 + secs(u64::from(i)));
            assert!(g.tracked() <= 100);
        }
        assert_eq!(g.tracked(), 100);
        // The oldest were dropped, the newest kept.
        assert!(!g.lock_state().map.contains_key(&v4(0)));
        assert!(
            g.lock_state()
                .map
                .contains_key(&IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 200)))
        );
    }

    #[test]
    fn guard_prunes_expired_on_insert() {
        let g = FailureGuard::new(5, MIN);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            g.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert_eq!(g.tracked(), 1000);
        // Long after the window, new inserts sweep the expired entries away (the sweep is
        // amortised: it runs when the table has doubled since the last one, here at 1024).
        let later = t0 + 2 * MIN;
        for i in 0..30u32 {
            g.record_failure(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), later);
        }
        assert!(g.tracked() <= 30, "{}", g.tracked());
        assert!(
            !g.lock_state()
                .map
                .contains_key(&IpAddr::V4(Ipv4Addr::from(0x0a00_0000)))
        );
    }

    #[test]
    fn guard_default_cap_holds() {
        let g = FailureGuard::new(5, 10 * MIN);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            g.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert_eq!(g.tracked(), MAX_TRACKED);
    }

    #[test]
    fn guard_is_shareable() {
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<FailureGuard>();
        assert_sync::<crate::auth::Users>();
    }
}
