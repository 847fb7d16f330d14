//! [`CachingResolver`]: MX and address answers kept for their TTL, so a fan-out to many
//! recipients of one domain asks DNS once per TTL rather than once per message.
//!
//! * An entry lives for its TTL, clamped to [`MIN_TTL`]..=[`MAX_TTL`]: a TTL of 0 does not make
//!   every delivery ask again, and a huge one does not pin a stale answer.
//! * Negative answers (NXDOMAIN, NODATA, null MX) are cached like positive ones, for the TTL the
//!   inner resolver reports (RFC 2308 for NXDOMAIN and NODATA).
//! * Answers without a TTL are not cached: temporary failures (SERVFAIL, timeouts), invalid
//!   names, and half address answers. A failed lookup defers only its own message, which the
//!   retry schedule takes up minutes later; caching the failure would also defer every other
//!   message for the domain in the window, for what may have been one slow moment of one server.
//! * Each table (MX, addresses) holds at most `capacity` entries. When a new name finds it full,
//!   one pass drops the expired entries and, if more than seven eighths are left, those expiring
//!   soonest down to seven eighths: O(1) amortised per insertion.
//! * Names are keys without case or trailing dot. The lock is never held while DNS is asked;
//!   concurrent misses for one name may each ask, and the last answer stays.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Answer, DnsError, MxLookup, Resolver, TtlResolver};

/// Shortest time an answer is kept, whatever its TTL.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest time an answer is kept, whatever its TTL.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Default bound of each table: at most this many domains' MX and as many hosts' addresses.
pub const CACHE_ENTRIES: usize = 10_000;

type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

/// A [`Resolver`] answering from a bounded cache in front of a [`TtlResolver`].
pub struct CachingResolver<R> {
    inner: R,
    mx: Mutex<Table<MxLookup>>,
    addrs: Mutex<Table<Vec<IpAddr>>>,
    now: Clock,
}

impl<R: TtlResolver> CachingResolver<R> {
    /// Caches at most `capacity` MX answers and `capacity` address answers; 0 caches nothing.
    pub fn new(inner: R, capacity: usize) -> CachingResolver<R> {
        CachingResolver::with_clock(inner, capacity, Box::new(Instant::now))
    }

    fn with_clock(inner: R, capacity: usize, now: Clock) -> CachingResolver<R> {
        CachingResolver {
            inner,
            mx: Mutex::new(Table::new(capacity)),
            addrs: Mutex::new(Table::new(capacity)),
            now,
        }
    }

    fn lookup<T: Clone>(
        &self,
        table: &Mutex<Table<T>>,
        name: &str,
        ask: impl FnOnce() -> Answer<T>,
    ) -> Result<T, DnsError> {
        let key = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Some(hit) = lock(table).get(&key, (self.now)()) {
            return hit;
        }
        let answer = ask();
        if let Some(ttl) = answer.ttl {
            let now = (self.now)();
            let expires = now + ttl.clamp(MIN_TTL, MAX_TTL);
            lock(table).insert(key, answer.result.clone(), expires, now);
        }
        answer.result
    }
}

impl<R: TtlResolver> Resolver for CachingResolver<R> {
    fn mx(&self, domain: &str) -> Result<MxLookup, DnsError> {
        self.lookup(&self.mx, domain, || self.inner.mx_ttl(domain))
    }

    fn addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.lookup(&self.addrs, host, || self.inner.addrs_ttl(host))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Entry<T> {
    result: Result<T, DnsError>,
    expires: Instant,
}

struct Table<T> {
    map: HashMap<String, Entry<T>>,
    capacity: usize,
}

impl<T: Clone> Table<T> {
    fn new(capacity: usize) -> Table<T> {
        Table {
            map: HashMap::new(),
            capacity,
        }
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<Result<T, DnsError>> {
        match self.map.get(key) {
            Some(e) if now < e.expires => Some(e.result.clone()),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: String, result: Result<T, DnsError>, expires: Instant, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            self.make_room(now);
        }
        self.map.insert(key, Entry { result, expires });
    }

    /// Drops what has expired by `now`, then if needed what expires soonest (ties go together),
    /// down to seven eighths of the capacity, so this O(n) pass runs once per n/8 insertions.
    fn make_room(&mut self, now: Instant) {
        self.map.retain(|_, e| now < e.expires);
        let keep = self.capacity - self.capacity.div_ceil(8);
        if self.map.len() > keep {
            let mut expiries: Vec<Instant> = self.map.values().map(|e| e.expires).collect();
            let drop = self.map.len() - keep;
            let (_, &mut last, _) = expiries.select_nth_unstable(drop - 1);
            self.map.retain(|_, e| e.expires > last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const NX: DnsError = DnsError::NoSuchDomain;

    /// The inner answer (result, TTL in seconds) the fake gives for every name.
    type Script = fn() -> (Result<MxLookup, DnsError>, Option<u64>);

    /// A scripted inner resolver: every name gets `answer`, and every question is counted.
    struct Fake {
        answer: Script,
        asked: Mutex<Vec<String>>,
    }

    impl Fake {
        fn timed<T>(&self, name: &str, f: impl FnOnce(MxLookup) -> T) -> Answer<T> {
            lock(&self.asked).push(name.to_string());
            let (result, ttl) = (self.answer)();
            Answer {
                result: result.map(f),
                ttl: ttl.map(Duration::from_secs),
            }
        }
    }

    impl TtlResolver for Fake {
        fn mx_ttl(&self, domain: &str) -> Answer<MxLookup> {
            self.timed(domain, |mx| mx)
        }

        fn addrs_ttl(&self, host: &str) -> Answer<Vec<IpAddr>> {
            self.timed(host, |_| vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
        }
    }

    /// A cache over `answer` with `capacity`, and the clock's offset in milliseconds.
    fn cache(answer: Script, capacity: usize) -> (CachingResolver<Fake>, Arc<AtomicU64>) {
        let fake = Fake {
            answer,
            asked: Mutex::new(Vec::new()),
        };
        let (start, ms) = (Instant::now(), Arc::new(AtomicU64::new(0)));
        let offset = ms.clone();
        let now = move || start + Duration::from_millis(offset.load(Ordering::Relaxed));
        (
            CachingResolver::with_clock(fake, capacity, Box::new(now)),
            ms,
        )
    }

    fn asked(c: &CachingResolver<Fake>) -> usize {
        lock(&c.inner.asked).len()
    }

    fn hosts() -> MxLookup {
        MxLookup::Hosts(vec![(10, "mx.example".into())])
    }

    /// For each inner answer (result, TTL in seconds): is a second lookup after `after_ms`
    /// answered from the cache (true) or asked again (false)?
    #[test]
    fn expiry() {
        let table: Vec<(Script, u64, bool)> = vec![
            (|| (Ok(hosts()), Some(300)), 299_999, true),
            (|| (Ok(hosts()), Some(300)), 300_000, false),
            // The floor: TTL 0 is kept 5 s.
            (|| (Ok(hosts()), Some(0)), 4_999, true),
            (|| (Ok(hosts()), Some(0)), 5_000, false),
            // The cap: a day is kept an hour.
            (|| (Ok(hosts()), Some(86_400)), 3_599_999, true),
            (|| (Ok(hosts()), Some(86_400)), 3_600_000, false),
            // Negative answers are cached for their TTL.
            (|| (Err(NX), Some(900)), 899_000, true),
            (|| (Err(NX), Some(900)), 900_000, false),
            (|| (Ok(MxLookup::None), Some(60)), 59_000, true),
            (|| (Ok(MxLookup::None), Some(60)), 60_000, false),
            (|| (Ok(MxLookup::Null), Some(60)), 59_000, true),
            // Answers without a TTL (temporary failures) are not cached at all.
            (
                || (Err(DnsError::Temporary("SERVFAIL".into())), None),
                0,
                false,
            ),
            (
                || (Err(DnsError::BadName("empty label".into())), None),
                0,
                false,
            ),
            (|| (Ok(hosts()), None), 0, false),
        ];
        for (i, (answer, after_ms, cached)) in table.into_iter().enumerate() {
            let (c, ms) = cache(answer, 10);
            let want = answer().0;
            assert_eq!(c.mx("example.com"), want, "case {i}");
            ms.store(after_ms, Ordering::Relaxed);
            assert_eq!(c.mx("example.com"), want, "case {i}");
            assert_eq!(asked(&c), if cached { 1 } else { 2 }, "case {i}");
            // The answer asked again is cached in turn.
            assert_eq!(c.mx("example.com"), want, "case {i}");
            let want = match answer().1 {
                _ if cached => 1,
                Some(_) => 2,
                None => 3,
            };
            assert_eq!(asked(&c), want, "case {i}");
        }
    }

    #[test]
    fn names_and_tables() {
        let (c, _) = cache(|| (Ok(hosts()), Some(60)), 10);
        for name in ["example.com", "Example.COM.", "example.com."] {
            assert_eq!(c.mx(name), Ok(hosts()));
        }
        assert_eq!(asked(&c), 1);
        // Addresses are a table of their own.
        let ip = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        assert_eq!(c.addrs("example.com"), Ok(ip.clone()));
        assert_eq!(c.addrs("EXAMPLE.com"), Ok(ip));
        assert_eq!(c.mx("other.example"), Ok(hosts()));
        assert_eq!(
            *lock(&c.inner.asked),
            ["example.com", "example.com", "other.example"]
        );
        assert_eq!((lock(&c.mx).map.len(), lock(&c.addrs).map.len()), (2, 1));
    }

    #[test]
    fn bounded() {
        for capacity in [1, 2, 8, 10, 100] {
            // Names expire 1 ms apart, in the order they are asked.
            let (c, ms) = cache(|| (Ok(hosts()), Some(60)), capacity);
            for i in 0..capacity {
                c.mx(&format!("d{i}.example")).unwrap();
                ms.fetch_add(1, Ordering::Relaxed);
            }
            assert_eq!(lock(&c.mx).map.len(), capacity);
            // One more: the eighth expiring soonest makes room.
            c.mx("new.example").unwrap();
            let mx = lock(&c.mx);
            let dropped = capacity.div_ceil(8);
            assert_eq!(mx.map.len(), capacity - dropped + 1, "{capacity}");
            assert!(mx.map.contains_key("new.example"));
            for i in 0..capacity {
                let kept = mx.map.contains_key(&format!("d{i}.example"));
                assert_eq!(kept, i >= dropped, "{capacity}: d{i}");
            }
        }

        // A name a second with a minute's TTL: the table never grows past its capacity, and
        // making room drops only the expired names, never one of the last minute.
        let (c, ms) = cache(|| (Ok(hosts()), Some(60)), 100);
        for i in 0..1000 {
            c.mx(&format!("d{i}.example")).unwrap();
            assert!(lock(&c.mx).map.len() <= 100);
            ms.fetch_add(1_000, Ordering::Relaxed);
        }
        let mx = lock(&c.mx);
        assert!((940..1000).all(|i| mx.map.contains_key(&format!("d{i}.example"))));
        drop(mx);

        let (c, _) = cache(|| (Ok(hosts()), Some(60)), 0);
        c.mx("a.example").unwrap();
        c.mx("a.example").unwrap();
        assert_eq!((asked(&c), lock(&c.mx).map.len()), (2, 0));
    }
}
