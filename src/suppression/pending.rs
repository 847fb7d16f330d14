//! The changes made here that the shared store does not have yet: `suppression.pending` in
//! the spool, in the log's format (`super::file`), appended and fdatasynced before the change
//! reaches the local log, and rewritten with what is left each time the store confirms some.
//! The latest change per address is what counts, so the queue keeps one per address, each
//! with a sequence number that tells a confirmed change from a newer one made meanwhile.
//!
//! The file exists while the list is shared (the daemon creates it when it runs with
//! `--suppression-store`, and deletes it when it runs without): `mxrelay suppression` run
//! with no daemon then queues its changes too, and the daemon pushes them when it starts.
//! `suppression.store` beside it names the shared store's generation (see `super::shared`)
//! that this spool's list was last merged with.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use super::Change;
use super::file::{self, HEADER};
use crate::spool::fsio;

pub const FILE: &str = "suppression.pending";
const TMP: &str = "suppression.pending.tmp";
/// The shared store's generation this spool's list was merged with, one line.
pub const JOINED: &str = "suppression.store";
const JOINED_TMP: &str = "suppression.store.tmp";

/// A change waiting for the shared store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// Order of making; a newer change to the same address has a higher one.
    pub seq: u64,
    pub change: Change,
}

/// The queue, shared by whoever changes the list (through `FileStore`) and the thread that
/// pushes it.
pub struct Queue {
    dir: PathBuf,
    owner: (u32, u32),
    state: Mutex<State>,
    /// Signalled when changes are added.
    added: Condvar,
}

struct State {
    /// The file, open for appending.
    file: File,
    /// By address key: the latest change to each.
    waiting: HashMap<String, Waiting>,
    next: u64,
    /// Counts additions, for [`Queue::wait`].
    version: u64,
}

impl Queue {
    /// The spool's queue, if the list is shared (the file exists).
    pub fn open(dir: &Path, owner: (u32, u32)) -> io::Result<Option<Queue>> {
        let path = dir.join(FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (changes, damaged, good_len) = file::records(&bytes)?;
        let mut state = State {
            file: file::create(&path, owner, false)?,
            waiting: HashMap::new(),
            next: 0,
            version: 0,
        };
        for change in changes {
            state.insert(change);
        }
        let q = Queue {
            dir: dir.to_path_buf(),
            owner,
            state: Mutex::new(state),
            added: Condvar::new(),
        };
        if damaged > 0 || good_len != bytes.len() || good_len == 0 {
            if damaged > 0 || good_len < bytes.len() {
                log::warn!(
                    "suppression: {FILE}: {damaged} damaged record(s) skipped, {} byte(s) cut \
                     short; rewriting it",
                    bytes.len().saturating_sub(good_len)
                );
            }
            let mut st = q.lock();
            q.replace(&mut st)?;
        }
        Ok(Some(q))
    }

    /// The spool's queue, created (empty) if there is none.
    pub fn create(dir: &Path, owner: (u32, u32)) -> io::Result<Queue> {
        if let Some(q) = Queue::open(dir, owner)? {
            return Ok(q);
        }
        let (tmp, path) = (dir.join(TMP), dir.join(FILE));
        let (file, _) = file::replace(dir, (&tmp, &path), owner, std::iter::empty())?;
        Ok(Queue {
            dir: dir.to_path_buf(),
            owner,
            state: Mutex::new(State {
                file,
                waiting: HashMap::new(),
                next: 0,
                version: 0,
            }),
            added: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `changes`, durably before it returns `Ok`.
    pub fn add(&self, changes: &[Change]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(80 * changes.len());
        for c in changes {
            file::record(c, &mut buf);
        }
        let mut st = self.lock();
        let len = st.file.metadata()?.len();
        if let Err(e) = st.file.write_all(&buf).and_then(|()| st.file.sync_data()) {
            // A part written must not run into the next record.
            let _ = st.file.set_len(len);
            return Err(e);
        }
        for c in changes {
            st.insert(c.clone());
        }
        st.version += 1;
        self.added.notify_all();
        Ok(())
    }

    /// Whether a change to the address `key` is waiting.
    pub fn holds(&self, key: &str) -> bool {
        self.lock().waiting.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.lock().waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The changes waiting, oldest first.
    pub fn waiting(&self) -> Vec<Waiting> {
        let mut all: Vec<Waiting> = self.lock().waiting.values().cloned().collect();
        all.sort_by_key(|w| w.seq);
        all
    }

    /// The shared store has `done`: they leave the queue, unless a newer change to the same
    /// address came meanwhile. The file is rewritten with what is left.
    pub fn confirm(&self, done: &[Waiting]) -> io::Result<()> {
        let mut st = self.lock();
        let before = st.waiting.len();
        for w in done {
            let k = w.change.key();
            if st.waiting.get(&k).is_some_and(|now| now.seq == w.seq) {
                st.waiting.remove(&k);
            }
        }
        if st.waiting.len() == before {
            return Ok(());
        }
        if st.waiting.is_empty() {
            // Only the header left: cut the rest off.
            st.file.set_len(HEADER.len() as u64)?;
            return st.file.sync_data();
        }
        self.replace(&mut st)
    }

    /// Rewrites the file (through a renamed temporary) to hold exactly what is waiting.
    fn replace(&self, st: &mut State) -> io::Result<()> {
        let mut left: Vec<&Waiting> = st.waiting.values().collect();
        left.sort_by_key(|w| w.seq);
        let (tmp, path) = (self.dir.join(TMP), self.dir.join(FILE));
        let (f, _) = file::replace(
            &self.dir,
            (&tmp, &path),
            self.owner,
            left.into_iter().map(|w| &w.change),
        )?;
        st.file = f;
        Ok(())
    }

    /// Waits until changes are added after `seen` (a version this returned before; 0 at
    /// first) or `timeout` passes; returns the version now.
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let st = self.lock();
        let (st, _) = self
            .added
            .wait_timeout_while(st, timeout, |st| st.version == seen)
            .unwrap_or_else(|e| e.into_inner());
        st.version
    }

    /// The generation of the shared store this list was last merged with, if any.
    pub fn joined(&self) -> Option<String> {
        let text = fs::read_to_string(self.dir.join(JOINED)).ok()?;
        Some(text.trim().to_string()).filter(|t| !t.is_empty())
    }

    /// Records that this list is merged with the store's generation `epoch`.
    pub fn set_joined(&self, epoch: &str) -> io::Result<()> {
        let tmp = self.dir.join(JOINED_TMP);
        let mut f = file::create(&tmp, self.owner, true)?;
        f.write_all(format!("{epoch}\n").as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, self.dir.join(JOINED))?;
        fsio::sync_dir(&self.dir)
    }
}

impl State {
    fn insert(&mut self, change: Change) {
        let seq = self.next;
        self.next += 1;
        self.waiting.insert(change.key(), Waiting { seq, change });
    }
}

/// The changes queued in the spool `dir`, read without the lock (for `list` and `export`).
pub fn read(dir: &Path) -> io::Result<Vec<Change>> {
    match fs::read(dir.join(FILE)) {
        Ok(bytes) => Ok(file::records(&bytes)?.0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Deletes the queue and the record of the store joined, if there are any.
pub fn forget(dir: &Path) -> io::Result<()> {
    let mut removed = false;
    for name in [FILE, JOINED] {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if removed {
        fsio::sync_dir(dir)?;
    }
    Ok(())
}
