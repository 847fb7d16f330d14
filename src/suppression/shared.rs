//! One list for several instances: `--suppression-store redis://HOST:PORT/N` keeps it in
//! Redis (database N), with the `redis` crate's blocking API on one background thread.
//!
//! In Redis:
//! - `mxrelay:suppression`, a hash: field [`key`]`(address)`, value `Entry::encode`. The list.
//! - `mxrelay:suppression:log`, a stream of the changes (`c` = `Change::encode`), trimmed
//!   to about 10,000, so that instances learn changes without reading the whole list. A
//!   change goes to the hash and the stream in one MULTI/EXEC.
//! - `mxrelay:suppression:epoch`: the store's generation, a random name set by the first
//!   instance that finds none (a new store, or one that lost its data).
//!
//! Each instance keeps its copy in its spool (`super::file`), which decides alone while Redis
//! is unreachable, so delivery and the control socket never wait for Redis: a change made
//! here is durable in the spool and queued (`super::pending`) when `apply` returns, and this
//! thread pushes the queue, then reads the stream from where it left off, about once a
//! second (at once when something is queued). Changes read are written to the copy without
//! being queued again; one for an address with a change of its own still queued is dropped,
//! as that one will replace it in Redis.
//!
//! The whole list is read (HGETALL, with the stream's last id in the same MULTI) at start,
//! when this instance fell behind what the stream keeps, and every hour (which also drops
//! expired entries from the hash). Redis is the truth then, plus what is queued here, except
//! when the store's generation is not the one this spool last merged with
//! (`SPOOL/suppression.store`): a spool that joins for the first time, or a store that lost
//! its data or went back to an older snapshot. The lists are merged then: addresses the
//! store lacks are added to it (HSETNX), so no instance's unsubscribes are lost.
//!
//! Unreachable: commands time out after a few seconds; the thread retries with a doubling
//! delay (up to 15 s), logs when the store goes away and comes back, and counts failures
//! (`mxrelay_suppression_store_errors_total`) and queued changes
//! (`mxrelay_suppression_store_pending`). Plain TCP only (no TLS): keep Redis on a private
//! network, or tunnel it.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use redis::{Client, Connection, ConnectionAddr, RedisError};

use super::pending::{Queue, Waiting};
use super::{Change, Entry, Learnt, Suppressions, key};
use crate::delivery::clock::now_ms;
use crate::metrics::Metrics;

const HASH: &str = "mxrelay:suppression";
const LOG: &str = "mxrelay:suppression:log";
const EPOCH: &str = "mxrelay:suppression:epoch";
/// The stream's field holding the change.
const FIELD: &str = "c";
/// Changes the stream keeps, about (`MAXLEN ~`).
const LOG_LENGTH: usize = 10_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the stream is read while the store is reachable.
const POLL: Duration = Duration::from_secs(1);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(15);
/// How often the thread looks whether it is to stop, while it waits.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// How often the whole list is read anyway.
const FULL_EVERY: Duration = Duration::from_secs(3600);
/// Stream entries read per command, and changes pushed per MULTI.
const BATCH: usize = 1000;

/// `--suppression-store`: a `redis://` URL, checked when the flags are read. Shown (logs,
/// `Debug`) without a password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    url: String,
    shown: String,
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `redis://[[USER]:PASSWORD@]HOST[:PORT][/N]`.
pub fn parse_url(s: &str) -> Result<StoreUrl, String> {
    if !s.starts_with("redis://") {
        return Err(format!(
            "{s:?}: only redis://HOST:PORT/N is supported (plain TCP; no TLS, no sockets)"
        ));
    }
    let client = Client::open(s).map_err(|e| format!("{s:?} is not a Redis URL: {e}"))?;
    let info = client.get_connection_info();
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(format!("{s:?}: only redis://HOST:PORT/N is supported"));
    };
    if host.is_empty() {
        return Err(format!("{s:?} names no host"));
    }
    let db = info.redis_settings().db();
    if db < 0 {
        return Err(format!("{s:?}: database {db} is not a database number"));
    }
    Ok(StoreUrl {
        url: s.to_string(),
        shown: format!("redis://{host}:{port}/{db}"),
    })
}

/// A stream entry id, `<ms>-<seq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64);

impl StreamId {
    /// Before every entry (what an empty stream's reader starts from).
    const ZERO: StreamId = StreamId(0, 0);

    fn parse(s: &str) -> Option<StreamId> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A stream entry as Redis sends it: id, then field, value, field, value...
type RawEntry = (String, Vec<String>);

/// The change a stream entry holds.
fn entry_change(raw: &RawEntry) -> Option<(StreamId, Option<Change>)> {
    let id = StreamId::parse(&raw.0)?;
    let change = raw
        .1
        .chunks(2)
        .find(|pair| pair[0] == FIELD && pair.len() == 2)
        .and_then(|pair| Change::decode(&pair[1]));
    Some((id, change))
}

/// Splits the hash's contents into the entries in effect at `now`, and the fields of expired
/// ones (with their values, to delete them only if unchanged). Fields that hold no entry are
/// logged and left alone.
fn sort_out(fields: HashMap<String, String>, now: u64) -> (Vec<Entry>, Vec<(String, String)>) {
    let (mut live, mut expired) = (Vec::new(), Vec::new());
    for (field, value) in fields {
        match Entry::decode(&value) {
            Some(e) if e.live(now) => live.push(e),
            Some(_) => expired.push((field, value)),
            None => log::warn!("suppression: store field {field:?} holds no entry ({value:?})"),
        }
    }
    (live, expired)
}

// Redis commands, each one round trip.

fn connect(client: &Client) -> redis::RedisResult<Connection> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// The store's generation, set to a new one if it has none.
fn epoch(con: &mut Connection) -> redis::RedisResult<String> {
    let mut fresh = [0u8; 12];
    getrandom::fill(&mut fresh).map_err(|e| io::Error::other(e.to_string()))?;
    let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
    let (epoch,): (String,) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(EPOCH)
        .arg(fresh)
        .arg("NX")
        .ignore()
        .cmd("GET")
        .arg(EPOCH)
        .query(con)?;
    Ok(epoch)
}

/// The changes in one MULTI/EXEC: the hash and the stream change together.
fn push(con: &mut Connection, changes: &[Waiting]) -> redis::RedisResult<()> {
    let mut p = redis::pipe();
    p.atomic();
    for w in changes {
        match &w.change {
            Change::Add(e) => p.cmd("HSET").arg(HASH).arg(key(&e.address)).arg(e.encode()),
            Change::Remove(a) => p.cmd("HDEL").arg(HASH).arg(key(a)),
        }
        .ignore();
        p.cmd("XADD")
            .arg(LOG)
            .arg("MAXLEN")
            .arg("~")
            .arg(LOG_LENGTH)
            .arg("*")
            .arg(FIELD)
            .arg(w.change.encode())
            .ignore();
    }
    p.query(con)
}

/// Adds each entry the hash lacks (to the stream too); how many it lacked.
fn seed(con: &mut Connection, entries: &[Entry]) -> redis::RedisResult<usize> {
    const SEED: &str = "if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then \
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[5]) \
        return 1 end return 0";
    let mut added = 0;
    for chunk in entries.chunks(BATCH) {
        let mut p = redis::pipe();
        for e in chunk {
            let change = Change::Add(e.clone()).encode();
            p.cmd("EVAL")
                .arg(SEED)
                .arg(2)
                .arg(HASH)
                .arg(LOG)
                .arg(key(&e.address))
                .arg(e.encode())
                .arg(LOG_LENGTH)
                .arg(FIELD)
                .arg(change);
        }
        let done: Vec<i64> = p.query(con)?;
        added += done.iter().filter(|&&d| d == 1).count();
    }
    Ok(added)
}

/// Deletes expired entries from the hash, each only if it still holds the value read (an
/// instance may have added the address again meanwhile).
fn drop_expired(con: &mut Connection, expired: &[(String, String)]) -> redis::RedisResult<()> {
    const DROP: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
        return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";
    for chunk in expired.chunks(BATCH) {
        let mut p = redis::pipe();
        for (field, value) in chunk {
            p.cmd("EVAL")
                .arg(DROP)
                .arg(1)
                .arg(HASH)
                .arg(field)
                .arg(value)
                .ignore();
        }
        p.query::<()>(con)?;
    }
    Ok(())
}

/// Adds the command that reads the stream's first entry (`newest`: its last) to `p`.
fn end_of_stream(p: &mut redis::Pipeline, newest: bool) -> &mut redis::Pipeline {
    let (cmd, from, to) = match newest {
        false => ("XRANGE", "-", "+"),
        true => ("XREVRANGE", "+", "-"),
    };
    p.cmd(cmd).arg(LOG).arg(from).arg(to).arg("COUNT").arg(1)
}

/// The id of the entry `end_of_stream` read, if the stream has any.
fn id_of(entries: &[RawEntry]) -> Option<StreamId> {
    entries.first().and_then(|e| StreamId::parse(&e.0))
}

/// The whole list, and the id of the stream's last entry at that moment.
fn snapshot(con: &mut Connection) -> redis::RedisResult<(StreamId, HashMap<String, String>)> {
    let mut p = redis::pipe();
    end_of_stream(p.atomic(), true).cmd("HGETALL").arg(HASH);
    let (newest, fields): (Vec<RawEntry>, HashMap<String, String>) = p.query(con)?;
    Ok((id_of(&newest).unwrap_or(StreamId::ZERO), fields))
}

/// What one read of the stream found.
struct Poll {
    epoch: Option<String>,
    /// The stream's first and last entries' ids; `None`: it is empty.
    first: Option<StreamId>,
    newest: Option<StreamId>,
    /// Entries after the one asked for, up to `BATCH`.
    entries: Vec<RawEntry>,
}

fn poll(con: &mut Connection, after: StreamId) -> redis::RedisResult<Poll> {
    type Read = Option<Vec<(String, Vec<RawEntry>)>>;
    let mut p = redis::pipe();
    p.atomic().cmd("GET").arg(EPOCH);
    end_of_stream(&mut p, false);
    end_of_stream(&mut p, true);
    p.cmd("XREAD")
        .arg("COUNT")
        .arg(BATCH)
        .arg("STREAMS")
        .arg(LOG)
        .arg(after.to_string());
    let (epoch, first, newest, read): (Option<String>, Vec<RawEntry>, Vec<RawEntry>, Read) =
        p.query(con)?;
    Ok(Poll {
        epoch,
        first: id_of(&first),
        newest: id_of(&newest),
        entries: read
            .and_then(|streams| streams.into_iter().next())
            .map(|(_, entries)| entries)
            .unwrap_or_default(),
    })
}

/// Why a round with the store failed.
enum Failure {
    Store(RedisError),
    /// Writing the local copy.
    Local(io::Error),
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Failure {
        Failure::Store(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Local(e)
    }
}

/// The link between this instance's copy and the store: the background thread that keeps
/// them in step.
pub struct Link {
    url: StoreUrl,
    client: Client,
    con: Option<Connection>,
    list: Arc<Suppressions>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    /// The store's generation this list is merged with.
    joined: Option<String>,
    /// The copy has every change of the stream up to here; `None`: read the whole list.
    last: Option<StreamId>,
    /// When the whole list was last read.
    read_at: Instant,
    /// Whether the last round reached the store; `None` before the first.
    up: Option<bool>,
    stop: Arc<AtomicBool>,
    /// Dropped when the thread ends.
    _running: crossbeam_channel::Sender<()>,
}

/// The running link, to stop it.
pub struct Sharing {
    stop: Arc<AtomicBool>,
    running: crossbeam_channel::Receiver<()>,
}

impl Sharing {
    /// Asks the thread to push what is still queued (if the store is there) and end, and waits
    /// for it up to `wait`; whether it ended. What it could not push stays queued in the spool
    /// for the next start.
    pub fn stop(self, wait: Duration) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        matches!(
            self.running.recv_timeout(wait),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        )
    }
}

impl Link {
    /// Makes one round at once (so that a relay whose store is reachable starts with its
    /// list), then goes on in a thread of its own. A store that cannot be reached is no
    /// reason not to start: the local copy decides until it can.
    pub fn start(
        url: &StoreUrl,
        list: Arc<Suppressions>,
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Sharing> {
        let client = Client::open(url.url.as_str()).map_err(io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (running, ended) = crossbeam_channel::bounded(0);
        let mut link = Link {
            url: url.clone(),
            client,
            con: None,
            joined: queue.joined(),
            list,
            queue,
            metrics,
            last: None,
            read_at: Instant::now(),
            up: None,
            stop: stop.clone(),
            _running: running,
        };
        link.round();
        thread::Builder::new()
            .name("suppression-store".into())
            .spawn(move || link.run())?;
        Ok(Sharing {
            stop,
            running: ended,
        })
    }

    fn run(mut self) {
        let mut seen = 0;
        let mut retry = RETRY_FIRST;
        loop {
            let up = self.up == Some(true);
            let deadline = Instant::now() + if up { POLL } else { retry };
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if self.stop.load(Ordering::SeqCst) {
                    if up && !self.queue.is_empty() {
                        self.round();
                    }
                    return;
                }
                let version = self.queue.wait(seen, left.min(STOP_CHECK));
                self.metrics
                    .suppression_store_pending(self.queue.len() as u64);
                if version != seen {
                    seen = version;
                    // Pushed at once while the store is there; otherwise at the next retry.
                    if up {
                        break;
                    }
                }
            }
            retry = if self.round() {
                RETRY_FIRST
            } else {
                (retry * 2).min(RETRY_MAX)
            };
        }
    }

    /// One round: logs and counts what went wrong, and the store coming back. Whether it
    /// went through.
    fn round(&mut self) -> bool {
        let reused = self.con.is_some();
        let mut result = self.exchange_once();
        if reused && matches!(&result, Err(Failure::Store(e)) if e.is_connection_dropped()) {
            // The connection went stale (the server restarted, or closed it): a new one
            // before calling the store unreachable.
            result = self.exchange_once();
        }
        self.metrics
            .suppression_store_pending(self.queue.len() as u64);
        let url = &self.url;
        match result {
            Ok(pushed) => {
                match self.up {
                    None => log::info!(
                        "suppression: sharing the list through {url} ({} address(es))",
                        self.list.len()
                    ),
                    Some(false) if pushed > 0 => log::info!(
                        "suppression: {url} is reachable again; {pushed} change(s) made \
                         meanwhile pushed to it"
                    ),
                    Some(false) => log::info!("suppression: {url} is reachable again"),
                    Some(true) if pushed > 0 => {
                        log::debug!("suppression: {pushed} change(s) pushed to {url}")
                    }
                    Some(true) => {}
                }
                self.up = Some(true);
                true
            }
            Err(Failure::Store(e)) => {
                self.metrics.suppression_store_error();
                let waiting = self.queue.len();
                match self.up {
                    None => log::warn!(
                        "suppression: {url} is unreachable ({e}); starting from this spool's \
                         copy ({} address(es), {waiting} change(s) not yet in the store), and \
                         trying again",
                        self.list.len()
                    ),
                    Some(true) => log::warn!(
                        "suppression: {url} is unreachable ({e}); the local copy decides \
                         meanwhile, and changes made here are kept in the spool until it is back"
                    ),
                    Some(false) => log::debug!("suppression: {url} still unreachable: {e}"),
                }
                self.up = Some(false);
                false
            }
            Err(Failure::Local(e)) => {
                self.metrics.suppression_store_error();
                log::error!("suppression: cannot write what {url} holds to the spool: {e}");
                false
            }
        }
    }

    /// [`Link::exchange`] on the connection kept, or a new one; the connection is kept only
    /// if all went well.
    fn exchange_once(&mut self) -> Result<usize, Failure> {
        let mut con = match self.con.take() {
            Some(con) => con,
            None => connect(&self.client)?,
        };
        let pushed = self.exchange(&mut con)?;
        self.con = Some(con);
        Ok(pushed)
    }

    /// Reads the whole list if due, pushes what is queued, reads the stream; how many
    /// changes were pushed.
    fn exchange(&mut self, con: &mut Connection) -> Result<usize, Failure> {
        if self.last.is_none() || self.read_at.elapsed() >= FULL_EVERY {
            self.read_all(con)?;
        }
        let waiting = self.queue.waiting();
        for batch in waiting.chunks(BATCH) {
            push(con, batch)?;
            self.queue.confirm(batch)?;
            self.metrics.suppression_store_pushed(batch.len() as u64);
        }
        self.read_stream(con)?;
        Ok(waiting.len())
    }

    /// The whole list, merged first if this spool has not joined the store's generation.
    fn read_all(&mut self, con: &mut Connection) -> Result<(), Failure> {
        let now = now_ms();
        let epoch = epoch(con)?;
        if self.joined.as_deref() != Some(epoch.as_str()) {
            let mine = self.list.entries(now);
            let added = seed(con, &mine)?;
            if !mine.is_empty() {
                log::info!(
                    "suppression: this spool's list merged into {} ({} address(es), {added} \
                     of them new there)",
                    self.url,
                    mine.len()
                );
            }
            self.queue.set_joined(&epoch)?;
            self.joined = Some(epoch);
        }
        let (last, fields) = snapshot(con)?;
        let (live, expired) = sort_out(fields, now);
        if !expired.is_empty() {
            drop_expired(con, &expired)?;
        }
        let changed = self.list.learn(Learnt::All(live), now)?;
        self.metrics.suppression_store_pulled(changed as u64);
        if changed > 0 {
            log::info!(
                "suppression: {changed} change(s) taken from {} on reading the whole list",
                self.url
            );
        }
        self.last = Some(last);
        self.read_at = Instant::now();
        Ok(())
    }

    /// The stream's entries after the last one taken.
    fn read_stream(&mut self, con: &mut Connection) -> Result<(), Failure> {
        loop {
            let last = self.last.unwrap_or(StreamId::ZERO);
            let p = poll(con, last)?;
            let url = &self.url;
            if p.epoch.as_deref() != self.joined.as_deref() {
                log::warn!(
                    "suppression: {url} lost its list or is another store (its generation \
                     changed); merging this spool's list into it again"
                );
                return self.read_all(con);
            }
            if p.newest.unwrap_or(StreamId::ZERO) < last {
                log::warn!(
                    "suppression: {url} went back in time (restored from an older snapshot?); \
                     merging this spool's list into it again"
                );
                self.joined = None;
                return self.read_all(con);
            }
            if last != StreamId::ZERO && p.first.is_some_and(|first| first > last) {
                log::warn!(
                    "suppression: changes from {url} came faster than they were read; reading \
                     the whole list"
                );
                return self.read_all(con);
            }
            let Some(end) = p.entries.last().and_then(|e| StreamId::parse(&e.0)) else {
                return Ok(());
            };
            let mut changes = Vec::with_capacity(p.entries.len());
            for raw in &p.entries {
                match entry_change(raw) {
                    Some((_, Some(change))) => changes.push(change),
                    _ => log::warn!("suppression: {url}: stream entry {raw:?} holds no change"),
                }
            }
            let changed = self.list.learn(Learnt::Changes(changes), now_ms())?;
            self.metrics.suppression_store_pulled(changed as u64);
            if changed > 0 {
                log::debug!("suppression: {changed} change(s) taken from {url}");
            }
            self.last = Some(end);
            if p.entries.len() < BATCH {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suppression::Reason;

    #[test]
    fn store_urls_are_checked_and_shown_without_a_password() {
        for (given, shown) in [
            ("redis://127.0.0.1:6380/2", "redis://127.0.0.1:6380/2"),
            ("redis://cache.internal", "redis://cache.internal:6379/0"),
            (
                "redis://:s3cret@cache.internal:6379/1",
                "redis://cache.internal:6379/1",
            ),
        ] {
            let url = parse_url(given).unwrap();
            assert_eq!(url.to_string(), shown);
            assert_eq!(format!("{url:?}"), shown);
        }
        for bad in [
            "",
            "cache.internal:6379",
            "rediss://cache.internal/0",
            "redis+unix:///run/redis.sock",
            "http://cache.internal/",
            "redis://cache.internal/x",
            "redis://",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_entries_carry_changes_in_id_order() {
        let add = Change::Add(Entry {
            address: "\"a b\"@X.test".into(),
            reason: Reason::Unsubscribe,
            added: 1,
            expires: None,
        });
        let remove = Change::Remove("a@x.test".into());
        for change in [add, remove] {
            let raw = (
                "1796000000000-3".to_string(),
                vec!["c".to_string(), change.encode()],
            );
            assert_eq!(
                entry_change(&raw),
                Some((StreamId(1_796_000_000_000, 3), Some(change)))
            );
        }
        let odd = (
            "5-0".to_string(),
            vec!["other".to_string(), "x".to_string()],
        );
        assert_eq!(entry_change(&odd), Some((StreamId(5, 0), None)));
        let junk = (
            "5-0".to_string(),
            vec!["c".to_string(), "+ junk".to_string()],
        );
        assert_eq!(entry_change(&junk), Some((StreamId(5, 0), None)));
        assert_eq!(entry_change(&("x".to_string(), vec![])), None);
        // Ordered by time, then by sequence: 10-0 comes after 9-5, as numbers and not text.
        assert!(StreamId::parse("9-5") < StreamId::parse("10-0"));
        assert!(StreamId::parse("10-0") < StreamId::parse("10-1"));
        assert!(StreamId::ZERO < StreamId::parse("0-1").unwrap());
        assert_eq!(StreamId(10, 2).to_string(), "10-2");
        assert_eq!(StreamId::parse("10"), None);
    }

    #[test]
    fn the_stores_hash_is_sorted_into_live_and_expired_entries() {
        let live = Entry {
            address: "a@x.test".into(),
            reason: Reason::Manual,
            added: 1,
            expires: None,
        };
        let old = Entry {
            address: "b@x.test".into(),
            reason: Reason::Bounce,
            added: 1,
            expires: Some(10),
        };
        let fields = HashMap::from([
            ("a@x.test".to_string(), live.encode()),
            ("b@x.test".to_string(), old.encode()),
            ("c@x.test".to_string(), "not an entry".to_string()),
        ]);
        let (l, e) = sort_out(fields, 10);
        assert_eq!(l, [live]);
        assert_eq!(e, [("b@x.test".to_string(), old.encode())]);
    }
}
