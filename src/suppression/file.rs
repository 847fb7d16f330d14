//! The default store: an append-only log in the spool, `suppression.log`.
//!
//! Format: the line `mxrelay-suppression 1`, then one record per line, each
//! `<crc32 of the rest, 8 hex digits> <record>`, where a record is `+ <entry>` (added or
//! replaced; `Entry::encode`) or `- <address>` (removed). A change is one write and one
//! fdatasync before it is acknowledged. Reading applies the records in order; a record that
//! fails its checksum is skipped (a last one cut short by a crash is cut off the file), and
//! a header it does not know makes the list refuse to load rather than guess.
//!
//! The log is compacted (rewritten with only the entries in effect, then renamed over the old
//! one and the directory synced) at start when it holds damage or more dead records than
//! live ones (plus a margin), and whenever it grows that far. `suppression.lock` is locked
//! (flock) by the process that writes the list: the daemon for as long as it runs, or
//! `mxrelay suppression` for one change when no daemon runs.
//!
//! When the list is shared with other instances (`--suppression-store`), the log is this
//! instance's copy, and `suppression.pending` ([`super::pending`], same format) holds the
//! changes made here that the shared store does not have yet. Whoever changes the list
//! (the daemon, or `mxrelay suppression` without one) queues its changes there whenever the
//! file exists, before writing them to the log, and reading the list applies them last.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::pending::{self, Queue};
use super::{Change, Entry, Store, overlay};
use crate::spool::fsio;

pub const FILE: &str = "suppression.log";
const LOCK: &str = "suppression.lock";
const TMP: &str = "suppression.log.tmp";
pub(super) const HEADER: &[u8] = b"mxrelay-suppression 1\n";
/// Dead records tolerated beyond the live ones before the log is compacted.
const SLACK: usize = 1024;

pub struct FileStore {
    dir: PathBuf,
    /// The log, opened for appending; `None` until the first write creates it.
    file: Option<File>,
    /// The log's length as far as it is known good.
    len: u64,
    /// Records in the log.
    records: usize,
    /// Damage found, or a write that failed: rewrite the log at the next chance.
    rewrite: bool,
    /// The spool directory's owner, who must own what is created in it (a command run as
    /// root for a daemon that runs as its own user).
    owner: (u32, u32),
    /// Changes made here that a shared store does not have yet, when the list is shared.
    pending: Option<Arc<Queue>>,
    _lock: File,
}

#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the list.
    Locked,
    Io(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Locked => f.write_str("the suppression list is locked by another process"),
            OpenError::Io(e) => e.fmt(f),
        }
    }
}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> io::Error {
        match e {
            OpenError::Io(e) => e,
            locked => io::Error::new(io::ErrorKind::WouldBlock, locked.to_string()),
        }
    }
}

impl FileStore {
    /// Opens the list of the spool `dir` (which must exist) and locks it for this process,
    /// waiting up to `wait` for another process to let go of it.
    pub fn open(dir: &Path, wait: Duration) -> Result<FileStore, OpenError> {
        let meta = fs::metadata(dir).map_err(OpenError::Io)?;
        let owner = (meta.uid(), meta.gid());
        let lock = create(&dir.join(LOCK), owner, false).map_err(OpenError::Io)?;
        let deadline = Instant::now() + wait;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(OpenError::Locked),
                Err(fs::TryLockError::Error(e)) => return Err(OpenError::Io(e)),
            }
        }
        let pending = Queue::open(dir, owner).map_err(OpenError::Io)?;
        Ok(FileStore {
            dir: dir.to_path_buf(),
            file: None,
            len: 0,
            records: 0,
            rewrite: false,
            owner,
            pending: pending.map(Arc::new),
            _lock: lock,
        })
    }

    /// Shares the list from now on: changes made here are queued for the shared store
    /// (`suppression.pending`, created if it is not there). The queue, for whoever pushes it.
    pub fn share(&mut self) -> io::Result<Arc<Queue>> {
        if self.pending.is_none() {
            self.pending = Some(Arc::new(Queue::create(&self.dir, self.owner)?));
        }
        Ok(self.pending.clone().expect("just made"))
    }

    /// Stops sharing the list: no more queueing, and the queue and the record of the shared
    /// store joined are deleted (the list is this spool's own again; sharing it later merges
    /// it anew). Changes still queued stay in the list here; a warning says how many.
    pub fn unshare(&mut self) -> io::Result<()> {
        let waiting = self.pending.take().map_or(0, |q| q.len());
        if waiting > 0 {
            log::warn!(
                "suppression: {waiting} change(s) were waiting for the shared store, which is no \
                 longer given (--suppression-store); they stay in this spool's list only"
            );
        }
        pending::forget(&self.dir)
    }

    /// Appends `changes` to the log, durably.
    fn append(&mut self, changes: &[Change]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(80 * changes.len());
        for c in changes {
            record(c, &mut buf);
        }
        let len = {
            self.log()?;
            self.len
        };
        let f = self.file.as_mut().expect("opened");
        match f.write_all(&buf).and_then(|()| f.sync_data()) {
            Ok(()) => {
                self.len = len + buf.len() as u64;
                self.records += changes.len();
                Ok(())
            }
            Err(e) => {
                // Whatever part got written must not run into the next record.
                if f.set_len(len).is_err() {
                    self.file = None;
                }
                self.rewrite = true;
                Err(e)
            }
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The log, created with its header if there is none yet.
    fn log(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let path = self.path();
            let mut f = create(&path, self.owner, false)?;
            if f.metadata()?.len() == 0 {
                f.write_all(HEADER)?;
                f.sync_all()?;
                fsio::sync_dir(&self.dir)?;
                self.len = HEADER.len() as u64;
            }
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("just opened"))
    }
}

/// Opens (creating, owner-only) a file in the spool, owned by the spool's owner.
pub(super) fn create(path: &Path, owner: (u32, u32), truncate: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .append(!truncate)
        .write(truncate)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)?;
    let meta = f.metadata()?;
    if meta.uid() != owner.0
        && let Err(e) = std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))
    {
        log::warn!(
            "suppression: cannot give {} to the spool's owner: {e}",
            path.display()
        );
    }
    Ok(f)
}

/// One record line, with its checksum.
pub(super) fn record(change: &Change, out: &mut Vec<u8>) {
    let body = change.encode();
    let crc = crc32fast::hash(body.as_bytes());
    out.extend_from_slice(format!("{crc:08x} {body}\n").as_bytes());
}

/// One record line (without its line end), if whole.
fn decode(line: &[u8]) -> Option<Change> {
    let line = std::str::from_utf8(line).ok()?;
    let (crc, body) = line.split_once(' ')?;
    if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
        return None;
    }
    Change::decode(body)
}

/// Writes a log holding exactly `changes` to `tmp` (synced), then renames it to `path` and
/// syncs `dir`; the new file, open for appending, and its length.
pub(super) fn replace<'a>(
    dir: &Path,
    (tmp, path): (&Path, &Path),
    owner: (u32, u32),
    changes: impl Iterator<Item = &'a Change>,
) -> io::Result<(File, u64)> {
    let mut out = BufWriter::new(create(tmp, owner, true)?);
    out.write_all(HEADER)?;
    let mut buf = Vec::with_capacity(128);
    for c in changes {
        buf.clear();
        record(c, &mut buf);
        out.write_all(&buf)?;
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    let len = f.metadata()?.len();
    drop(f);
    fs::rename(tmp, path)?;
    fsio::sync_dir(dir)?;
    Ok((create(path, owner, false)?, len))
}

/// What reading a log found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every entry the log holds, expired ones too, by key.
    pub entries: HashMap<String, Entry>,
    pub records: usize,
    /// Records skipped for a bad checksum or format.
    pub damaged: usize,
    /// Where the last whole record ends; anything after it is a record cut short.
    pub good_len: usize,
}

/// Reads a log's bytes.
pub fn scan(bytes: &[u8]) -> io::Result<Scan> {
    let mut s = Scan::default();
    let (changes, damaged, good_len) = records(bytes)?;
    s.records = changes.len();
    s.damaged = damaged;
    s.good_len = good_len;
    for change in changes {
        overlay(&mut s.entries, change);
    }
    Ok(s)
}

/// The whole records of a log's bytes in order, how many were damaged, and where the last
/// whole one ends.
pub(super) fn records(bytes: &[u8]) -> io::Result<(Vec<Change>, usize, usize)> {
    let mut changes = Vec::new();
    let mut damaged = 0;
    if bytes.is_empty() || HEADER.starts_with(bytes) {
        // Empty, or cut short while it was being created.
        return Ok((changes, damaged, 0));
    }
    if !bytes.starts_with(HEADER) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a suppression list this version knows (unknown first line)",
        ));
    }
    let mut good_len = HEADER.len();
    let mut at = HEADER.len();
    while let Some(nl) = memchr::memchr(b'\n', &bytes[at..]) {
        let line = &bytes[at..at + nl];
        at += nl + 1;
        match decode(line) {
            Some(change) => {
                changes.push(change);
                good_len = at;
            }
            None => damaged += 1,
        }
    }
    Ok((changes, damaged, good_len))
}

/// The entries of the spool's list in effect at `now`, read without taking the lock (for
/// `list` and `export`, which change nothing); none if there is no list.
pub fn read(dir: &Path, now: u64) -> io::Result<Vec<Entry>> {
    let bytes = match fs::read(dir.join(FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut entries = scan(&bytes)?.entries;
    for change in pending::read(dir)? {
        overlay(&mut entries, change);
    }
    Ok(entries.into_values().filter(|e| e.live(now)).collect())
}

impl Store for FileStore {
    fn load(&mut self, now: u64) -> io::Result<Vec<Entry>> {
        let path = self.path();
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let s = scan(&bytes)?;
        // A first line cut short while the list was being created counts as damage.
        let damaged = s.damaged > 0 || !bytes.starts_with(HEADER);
        let f = self.log()?;
        if !damaged && s.good_len < bytes.len() {
            // A last record cut short by a crash mid-append: cut off, so that appends start
            // clean.
            f.set_len(s.good_len as u64)?;
            f.sync_all()?;
            log::warn!(
                "suppression: a last record cut short ({} bytes) was dropped",
                bytes.len() - s.good_len
            );
        }
        self.len = f.metadata()?.len();
        if damaged {
            log::warn!(
                "suppression: {} damaged record(s) skipped; rewriting the list",
                s.damaged
            );
            self.rewrite = true;
        }
        self.records = s.records;
        let mut entries = s.entries;
        // Queued changes are the newest: one queued just before a crash may not have reached
        // the log.
        if let Some(q) = &self.pending {
            for change in q.waiting() {
                overlay(&mut entries, change.change);
            }
        }
        Ok(entries.into_values().filter(|e| e.live(now)).collect())
    }

    fn apply(&mut self, changes: &[Change]) -> io::Result<()> {
        // Queued first: a change in the log but not in the queue would never be shared.
        if let Some(q) = &self.pending {
            q.add(changes)?;
        }
        self.append(changes)
    }

    fn learn(&mut self, mut changes: Vec<Change>) -> io::Result<Vec<Change>> {
        if let Some(q) = &self.pending {
            changes.retain(|c| !q.holds(&c.key()));
        }
        if !changes.is_empty() {
            self.append(&changes)?;
        }
        Ok(changes)
    }

    fn wants_compaction(&self, live: usize) -> bool {
        self.rewrite || self.records > 2 * live + SLACK
    }

    fn compact(&mut self, live: &[Entry]) -> io::Result<()> {
        let adds: Vec<Change> = live.iter().cloned().map(Change::Add).collect();
        let (tmp, path) = (self.dir.join(TMP), self.path());
        let (f, len) = replace(&self.dir, (&tmp, &path), self.owner, adds.iter())?;
        self.file = Some(f);
        self.len = len;
        self.records = live.len();
        self.rewrite = false;
        log::info!("suppression: list compacted to {} entries", live.len());
        Ok(())
    }
}
