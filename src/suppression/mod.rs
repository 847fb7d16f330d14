//! The suppression list: addresses mail is no longer sent to, each with a reason
//! (`unsubscribe`, `bounce`, `manual`), when it was added and an optional expiry.
//!
//! Addresses are compared exactly in the local part and without regard to case in the domain
//! (`John@Example.COM` is `John@example.com`, not `john@example.com`): RFC 5321 leaves the
//! local part's case to the receiving host, and a list that guessed would suppress someone
//! else's mailbox.
//!
//! Lookups are in memory (a `HashMap` behind a read-write lock, shared by the delivery
//! workers); every change goes to a [`Store`] first and is in memory only once the store has
//! it durably, so an unsubscribe is acknowledged only after it is on disk. The store is
//! [`file::FileStore`], an append-only log in the spool.
//!
//! Several instances can share one list (`--suppression-store redis://...`, [`shared`]). The
//! spool's log then stays each instance's local copy, which decides on its own while the
//! shared store is unreachable, and two kinds of change reach the store:
//!
//! - changes made here ([`Store::apply`]: the control socket, hard bounces) are durable in
//!   the spool when `apply` returns, and also queued in `suppression.pending`
//!   ([`pending`]) until the shared store has them; a background thread pushes them. Nothing
//!   made here waits for Redis, and nothing is refused because it is down.
//! - changes learnt from the shared store (made by other instances, or by this one and come
//!   back) reach the copy through [`Suppressions::learn`] and [`Store::learn`]: written to
//!   the local log, not queued again. A change learnt for an address that has one of its own
//!   still queued is dropped: the queued one is newer, and replaces it once pushed.
//!
//! Delivery checks the list once per job, in the worker, just before the attempt
//! (`delivery::work`): mail that went straight to a worker and mail that waited for a retry
//! pass the same check, so an address added while its message waits is not sent either.
//! Hard bounces (the mailbox does not exist: [`is_unknown_user`]) add the address with the
//! reason `bounce` for `--suppress-bounces`.

pub mod cmd;
mod csv;
pub mod file;
pub mod pending;
pub mod remote;
pub mod shared;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::smtp::address::{Mailbox, domain_key};

pub use csv::{format_time, parse_time};

/// How the relay uses the list, from the flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuppressionConfig {
    /// `--suppress-bounces`: how long a hard bounce keeps its address on the list; `None`
    /// (given as 0): hard bounces add nothing.
    pub bounce_expiry: Option<Duration>,
    /// `--suppression-store`: the list shared with other instances; `None`: the spool's own.
    pub store: Option<shared::StoreUrl>,
}

impl Default for SuppressionConfig {
    fn default() -> Self {
        SuppressionConfig {
            bounce_expiry: Some(Duration::from_secs(30 * 86_400)),
            store: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The recipient asked for it (a one-click unsubscribe).
    Unsubscribe,
    /// A hard bounce: the mailbox does not exist.
    Bounce,
    /// The operator put it there.
    Manual,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Reason::Unsubscribe, Reason::Bounce, Reason::Manual];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Unsubscribe => "unsubscribe",
            Reason::Bounce => "bounce",
            Reason::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// One address on the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// As given (the local part's case is kept: it is significant).
    pub address: String,
    pub reason: Reason,
    /// Unix ms.
    pub added: u64,
    /// Unix ms; `None`: until removed.
    pub expires: Option<u64>,
}

impl Entry {
    /// In effect at `now` (unix ms).
    pub fn live(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| e > now)
    }

    /// `<added> <expires|-> <reason> <address>`: one line, the address last (a quoted local
    /// part may hold spaces). The file store's records and the control socket use it.
    pub fn encode(&self) -> String {
        let expires = self.expires.map_or("-".to_string(), |e| e.to_string());
        format!(
            "{} {expires} {} {}",
            self.added,
            self.reason.name(),
            self.address
        )
    }

    pub fn decode(s: &str) -> Option<Entry> {
        let mut words = s.splitn(4, ' ');
        let added = words.next()?.parse().ok()?;
        let expires = match words.next()? {
            "-" => None,
            e => Some(e.parse().ok()?),
        };
        let reason = Reason::parse(words.next()?)?;
        let address = words.next()?;
        check_address(address).ok()?;
        Some(Entry {
            address: address.to_string(),
            reason,
            added,
            expires,
        })
    }
}

/// A change to the list, as a store records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Adds the address, or replaces its entry.
    Add(Entry),
    /// Takes the address off (compared as [`key`] does).
    Remove(String),
}

impl Change {
    /// The address's [`key`].
    pub fn key(&self) -> String {
        match self {
            Change::Add(e) => key(&e.address),
            Change::Remove(a) => key(a),
        }
    }

    /// `+ <entry>` or `- <address>`: one line (the spool's logs and the shared change log).
    pub fn encode(&self) -> String {
        match self {
            Change::Add(e) => format!("+ {}", e.encode()),
            Change::Remove(a) => format!("- {a}"),
        }
    }

    pub fn decode(s: &str) -> Option<Change> {
        match s.split_once(' ')? {
            ("+", entry) => Some(Change::Add(Entry::decode(entry)?)),
            ("-", address) if check_address(address).is_ok() => {
                Some(Change::Remove(address.to_string()))
            }
            _ => None,
        }
    }
}

/// Where the list is kept. `Suppressions` holds the copy lookups use and calls the store
/// under one lock, so a store sees one change at a time and need not be thread-safe.
pub trait Store: Send {
    /// The entries in effect at `now` (unix ms), read once at start.
    fn load(&mut self, now: u64) -> io::Result<Vec<Entry>>;
    /// Records `changes` made here, durably before it returns `Ok` (and, for a store shared
    /// with other instances, on their way to it).
    fn apply(&mut self, changes: &[Change]) -> io::Result<()>;
    /// Records `changes` learnt from a shared store, in the order they were made there,
    /// durably before it returns `Ok`, and without sharing them again. Drops those to an
    /// address that has a change made here and not yet shared (that one is newer); returns
    /// the changes kept, which the copy in memory then takes. A store that shares nothing
    /// records them all.
    fn learn(&mut self, changes: Vec<Change>) -> io::Result<Vec<Change>> {
        self.apply(&changes)?;
        Ok(changes)
    }
    /// Whether the store should be rewritten with only the `live` entries it holds.
    fn wants_compaction(&self, _live: usize) -> bool {
        false
    }
    /// Rewrites the store to hold exactly `live`.
    fn compact(&mut self, _live: &[Entry]) -> io::Result<()> {
        Ok(())
    }
}

/// A store that keeps nothing (tests; a relay that runs without a spool).
pub struct MemoryStore;

impl Store for MemoryStore {
    fn load(&mut self, _now: u64) -> io::Result<Vec<Entry>> {
        Ok(Vec::new())
    }

    fn apply(&mut self, _changes: &[Change]) -> io::Result<()> {
        Ok(())
    }
}

/// How addresses are compared: the local part exactly, the domain in lower case without a
/// trailing dot.
pub fn key(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain_key(domain)),
        None => address.to_string(),
    }
}

/// An address the list takes: a mailbox as RCPT TO takes it (`local@domain`, no brackets).
pub fn check_address(address: &str) -> Result<(), String> {
    Mailbox::parse(address)
        .map(|_| ())
        .map_err(|e| format!("{address:?} is not an address ({e})"))
}

/// The list, shared by the delivery workers, the control socket and (later) the unsubscribe
/// endpoint.
pub struct Suppressions {
    /// By [`key`]. Expired entries stay until the next compaction; lookups skip them.
    entries: RwLock<HashMap<String, Entry>>,
    store: Mutex<Box<dyn Store>>,
    cfg: SuppressionConfig,
    /// The link to `--suppression-store`, while it runs.
    sharing: Mutex<Option<shared::Sharing>>,
}

impl Suppressions {
    /// Loads the list from `store` (and compacts the store if it asks for it).
    pub fn open(
        mut store: Box<dyn Store>,
        cfg: SuppressionConfig,
        now: u64,
    ) -> io::Result<Suppressions> {
        let entries: HashMap<String, Entry> = store
            .load(now)?
            .into_iter()
            .map(|e| (key(&e.address), e))
            .collect();
        if store.wants_compaction(entries.len()) {
            let live: Vec<Entry> = entries.values().cloned().collect();
            if let Err(e) = store.compact(&live) {
                log::warn!("suppression: cannot compact the list: {e}");
            }
        }
        Ok(Suppressions {
            sharing: Mutex::new(None),
            entries: RwLock::new(entries),
            store: Mutex::new(store),
            cfg,
        })
    }

    /// An empty list kept nowhere.
    pub fn in_memory(cfg: SuppressionConfig) -> Suppressions {
        Suppressions::open(Box::new(MemoryStore), cfg, 0).expect("a memory store loads")
    }

    pub fn config(&self) -> &SuppressionConfig {
        &self.cfg
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries held, expired ones included until they are compacted away.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The entry that suppresses `address` at `now`, if any.
    pub fn get(&self, address: &str, now: u64) -> Option<Entry> {
        let entries = self.read();
        if entries.is_empty() {
            return None;
        }
        entries.get(&key(address)).filter(|e| e.live(now)).cloned()
    }

    /// Every entry in effect at `now`, by address.
    pub fn entries(&self, now: u64) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .read()
            .values()
            .filter(|e| e.live(now))
            .cloned()
            .collect();
        out.sort_by_cached_key(|e| key(&e.address));
        out
    }

    /// Adds `entries` (replacing those of the same addresses); durable when it returns `Ok`.
    pub fn add(&self, entries: Vec<Entry>, now: u64) -> io::Result<()> {
        self.write(entries.into_iter().map(Change::Add).collect(), now)
    }

    /// Takes `address` off the list; false if it was not on it.
    pub fn remove(&self, address: &str, now: u64) -> io::Result<bool> {
        if !self.read().contains_key(&key(address)) {
            return Ok(false);
        }
        self.write(vec![Change::Remove(address.to_string())], now)?;
        Ok(true)
    }

    /// The store first, then the copy in memory: a change is seen only once it is durable.
    fn write(&self, changes: Vec<Change>, now: u64) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.apply(&changes)?;
        self.take(&mut **store, changes, now);
        Ok(())
    }

    /// Takes what a shared store says (see [`Learnt`]): the changes that differ from this
    /// copy are recorded with [`Store::learn`], then seen. Returns how many were taken.
    pub fn learn(&self, learnt: Learnt, now: u64) -> io::Result<usize> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let changes = match learnt {
            Learnt::Changes(changes) => effective(&self.read(), changes),
            Learnt::All(entries) => differences(&self.read(), entries, now),
        };
        if changes.is_empty() {
            return Ok(0);
        }
        let changes = store.learn(changes)?;
        let n = changes.len();
        self.take(&mut **store, changes, now);
        Ok(n)
    }

    /// Durable changes into the copy in memory, under the store's lock; then compaction if
    /// the store wants it.
    fn take(&self, store: &mut dyn Store, changes: Vec<Change>, now: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        for change in changes {
            overlay(&mut entries, change);
        }
        if store.wants_compaction(entries.len()) {
            entries.retain(|_, e| e.live(now));
            let live: Vec<Entry> = entries.values().cloned().collect();
            // Lookups go on meanwhile; the store's lock keeps other changes out.
            drop(entries);
            if let Err(e) = store.compact(&live) {
                log::warn!("suppression: cannot compact the list: {e}");
            }
        }
    }

    /// Adds the recipients whose permanent failure says their mailbox does not exist
    /// ([`is_unknown_user`]), with the reason `bounce`, for `--suppress-bounces`. Failures
    /// are `(address, status, remote reply)`; addresses already on the list keep their entry.
    /// Returns the entries added.
    pub fn record_bounces(&self, failures: &[(&str, &str, &str)], now: u64) -> Vec<Entry> {
        let Some(expiry) = self.cfg.bounce_expiry else {
            return Vec::new();
        };
        let expires = now.saturating_add(expiry.as_millis() as u64);
        let mut added: Vec<Entry> = Vec::new();
        for &(address, status, reply) in failures {
            let known = self.get(address, now).is_some()
                || added.iter().any(|e| key(&e.address) == key(address));
            if known || !is_unknown_user(status, reply) || check_address(address).is_err() {
                continue;
            }
            added.push(Entry {
                address: address.to_string(),
                reason: Reason::Bounce,
                added: now,
                expires: Some(expires),
            });
        }
        if added.is_empty() {
            return added;
        }
        match self.add(added.clone(), now) {
            Ok(()) => {
                for e in &added {
                    log::info!(
                        "suppression: <{}> added (bounce: the mailbox does not exist), expires {}",
                        e.address,
                        format_time(expires)
                    );
                }
                added
            }
            Err(e) => {
                log::error!("suppression: cannot add hard bounces to the list: {e}");
                Vec::new()
            }
        }
    }
}

/// Applies one change to entries by [`key`].
fn overlay(entries: &mut HashMap<String, Entry>, change: Change) {
    match change {
        Change::Add(e) => {
            entries.insert(key(&e.address), e);
        }
        Change::Remove(a) => {
            entries.remove(&key(&a));
        }
    }
}

/// What a shared store says, for [`Suppressions::learn`].
#[derive(Debug)]
pub enum Learnt {
    /// Changes made there since the last ones learnt, in order.
    Changes(Vec<Change>),
    /// The whole list as it is there (read when this instance joins, or fell behind).
    All(Vec<Entry>),
}

/// The `changes` that would change `entries`, applied one after the other (adding an entry
/// that is already there as it is, or removing an address that is not, changes nothing).
fn effective(entries: &HashMap<String, Entry>, changes: Vec<Change>) -> Vec<Change> {
    // What the changes kept so far made of their addresses.
    let mut after: HashMap<String, Option<Entry>> = HashMap::new();
    let mut kept = Vec::new();
    for change in changes {
        let k = change.key();
        let now = match after.get(&k) {
            Some(e) => e.as_ref(),
            None => entries.get(&k),
        };
        let next = match &change {
            Change::Add(e) if now != Some(e) => Some(e.clone()),
            Change::Remove(_) if now.is_some() => None,
            _ => continue,
        };
        after.insert(k, next);
        kept.push(change);
    }
    kept
}

/// The changes that turn `entries` into `all` for what is in effect at `now`: the entries
/// of `all` that differ, and removals of the live entries `all` lacks. Expired entries are
/// left to compaction.
fn differences(entries: &HashMap<String, Entry>, all: Vec<Entry>, now: u64) -> Vec<Change> {
    let all: HashMap<String, Entry> = all
        .into_iter()
        .filter(|e| e.live(now))
        .map(|e| (key(&e.address), e))
        .collect();
    let mut changes: Vec<Change> = entries
        .iter()
        .filter(|(k, e)| e.live(now) && !all.contains_key(*k))
        .map(|(_, e)| Change::Remove(e.address.clone()))
        .collect();
    changes.extend(
        all.into_iter()
            .filter(|(k, e)| entries.get(k) != Some(e))
            .map(|(_, e)| Change::Add(e)),
    );
    changes
}

/// The daemon's list: the spool's, locked for as long as the daemon runs (waiting up to
/// `wait` for `mxrelay suppression` to let go of it), and shared through
/// `cfg.store` when one is given (its background thread started here).
pub fn start(
    spool: &Path,
    cfg: &SuppressionConfig,
    metrics: Arc<Metrics>,
    wait: Duration,
) -> io::Result<Arc<Suppressions>> {
    let mut store = file::FileStore::open(spool, wait)?;
    let queue = match &cfg.store {
        Some(_) => Some(store.share()?),
        None => {
            store.unshare()?;
            None
        }
    };
    let now = crate::delivery::clock::now_ms();
    let list = Arc::new(Suppressions::open(Box::new(store), cfg.clone(), now)?);
    if let (Some(url), Some(queue)) = (&cfg.store, queue) {
        let sharing = shared::Link::start(url, list.clone(), queue, metrics)?;
        *list.sharing.lock().unwrap_or_else(|e| e.into_inner()) = Some(sharing);
    }
    Ok(list)
}

impl Suppressions {
    /// Stops sharing the list through the store (see `shared::Sharing::stop`); false if its
    /// thread did not end within `wait`.
    pub fn stop_sharing(&self, wait: Duration) -> bool {
        let sharing = self
            .sharing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        sharing.is_none_or(|s| s.stop(wait))
    }
}

/// Whether a permanent failure (`status` as `x.y.z`, `reply` as the remote server's reply,
/// e.g. `550 5.1.1 <a@b>: user unknown`) says that the mailbox does not exist.
///
/// By the enhanced code: `5.1.1` (bad destination mailbox) and `5.1.6` (mailbox moved, no
/// forwarding address) do. `5.1.2` (bad destination system) does not: it is about the
/// domain, not the mailbox, and often a DNS problem that passes (an expired domain renewed,
/// a broken zone fixed); such mail fails cheaply without a transaction. Neither does `5.1.10`
/// as RFC 7505 means it (null MX: a domain that takes no mail, found by our own lookup),
/// but Microsoft's servers answer `5.1.10 RecipientNotFound` for unknown users, so a
/// remote `5.1.10` is judged by its text. Full mailboxes (`5.2.2`), disabled ones (`5.2.1`,
/// often temporary) and policy or spam refusals (`5.7.x`) never do.
///
/// With no enhanced code, or a generic one (`5.0.0`, `5.1.0`, `5.1.10`), the text decides:
/// typical phrases such as "user unknown", "no such user", "mailbox unavailable", unless it
/// also speaks of spam, blocks or policy (RFC 5321's "mailbox unavailable" is used for
/// those too).
///
/// A reply about the sender never counts, whatever its code: a refused MAIL fails every
/// recipient with the same reply, and Postfix refuses an unknown sender with `550 5.1.0
/// <a@b>: Sender address rejected: User unknown`.
///
/// Narrower than the `invalid_recipient` category of events (`events::category`) on purpose:
/// that one says why mail failed, for a sender to read; this one takes an address off every
/// later message, so disabled accounts, null MX and domain-level failures, which the
/// category includes, stay out.
pub fn is_unknown_user(status: &str, reply: &str) -> bool {
    if !status.starts_with("5.") || !reply.starts_with('5') {
        return false;
    }
    let text = reply.to_ascii_lowercase();
    if text.contains("sender") {
        return false;
    }
    let detail = status.strip_prefix("5.").unwrap_or("");
    match detail {
        "1.1" | "1.6" => return true,
        "0.0" | "1.0" | "1.10" => {}
        _ => return false,
    }
    const SAYS_UNKNOWN: &[&str] = &[
        "user unknown",
        "unknown user",
        "no such user",
        "no such mailbox",
        "no such recipient",
        "no such address",
        "mailbox unavailable",
        "mailbox not found",
        "mailbox does not exist",
        "mailbox doesn't exist",
        "user does not exist",
        "user doesn't exist",
        "account does not exist",
        "address does not exist",
        "recipient not found",
        "recipientnotfound",
        "recipient unknown",
        "unknown recipient",
        "invalid recipient",
        "invalid mailbox",
        "not a valid mailbox",
        "no mailbox here",
        "mailbox is unknown",
        "address unknown",
        "unrouteable address",
    ];
    const SAYS_POLICY: &[&str] = &[
        "spam",
        "block",
        "policy",
        "reputation",
        "blacklist",
        "blocklist",
        "denylist",
        "rbl",
        "rate limit",
        "quota",
        "mailbox full",
        "over limit",
    ];
    SAYS_UNKNOWN.iter().any(|p| text.contains(p)) && !SAYS_POLICY.iter().any(|p| text.contains(p))
}
