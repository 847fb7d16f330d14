//! The durable queue on disk.
//!
//! Layout:
//! - `queue/<n>`: slots, each holding one queued message or free for the next one (format
//!   in `slot`). A slot is reused rather than deleted: creating and deleting a file per
//!   message makes ext4 hunt for free inodes past every recently deleted one, and renames
//!   and directory fsyncs cost as much again as the data itself.
//! - `queue/<id>.env`: a newer envelope (recipients crossed off, attempts, next try), when
//!   there is one; it overrides the one inside the slot.
//! - `tmp/`: newer envelopes being written; never trusted, emptied at start.
//! - `corrupt/`: what recovery could not read, with a `.reason` file; never deleted silently.
//!
//! Commit protocol (before the 250): header, message and envelope written into the slot, then
//! fdatasync. A slot file created for this message (none was free) also has its directory
//! entry fsynced (shared by concurrent commits). Freeing a slot after delivery rewrites one
//! byte of its header, unsynced: if a crash undoes that, the message is delivered again (a
//! duplicate, never a loss).

pub mod envelope;
pub mod fsio;
pub mod id;
pub mod slot;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use envelope::{Envelope, Kind, RcptState, Recipient};
use slot::{HEADER_LEN, Header, State};

/// Free slots kept for reuse; more are deleted. Making a slot costs an inode allocation and
/// a directory fsync, so a burst that queued thousands should not pay that again next time.
const FREE_SLOTS: usize = 8192;
/// Disk space the free slots may keep; past it, released slots are cut to nothing.
const FREE_BYTES: u64 = 64 << 20;
/// Free slots that keep their file open (the ones reused first).
const OPEN_FREE_SLOTS: usize = 256;
/// A slot file larger than this (it held a big message) is cut to nothing when freed.
const MAX_KEPT_SIZE: u64 = 256 * 1024;
/// A message this small is written in one go at commit, together with header and envelope.
const BUFFERED: usize = 64 * 1024;
/// Pieces at least this large are written as they come, not copied into the buffer.
const DIRECT: usize = 16 * 1024;

pub struct Spool {
    queue: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    slots: Mutex<Slots>,
    queue_sync: fsio::DirSync,
    keep: Keep,
}

/// How many free slots are kept, and how much of them (`FREE_SLOTS` and friends; tests use
/// smaller numbers).
struct Keep {
    slots: usize,
    bytes: u64,
    open: usize,
}

#[derive(Default)]
struct Slots {
    /// Reused last-in first-out (from the back), so few slots stay in use; slots cut to
    /// nothing wait at the front, to be reused last.
    free: std::collections::VecDeque<Slot>,
    /// The sum of the free slots' sizes.
    free_bytes: u64,
    /// The next slot number to create.
    next: u64,
    /// The slot of every queued message.
    live: HashMap<String, Slot>,
}

/// A slot number and, while the slot is in use (being written or delivered) or free, its
/// file kept open: opening and closing it for each step cost as much as writing it.
struct Slot {
    n: u64,
    file: Option<Arc<File>>,
    /// The file's length.
    size: u64,
}

/// A message being received into a slot.
pub struct Incoming {
    pub id: String,
    slot: u64,
    file: Arc<File>,
    /// The file's length (as it was, or as far as this message has written).
    len: u64,
    /// Created for this message: its directory entry still needs an fsync.
    created: bool,
    /// Bytes not yet written, starting at file offset `pending_at` (at 0: room for the header).
    pending: Vec<u8>,
    pending_at: u64,
    msg_len: u64,
    crc: crc32fast::Hasher,
}

impl Incoming {
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.msg_len += bytes.len() as u64;
        self.append(bytes)
    }

    /// Lets `fill` append message bytes straight into the buffer (the DATA reader writes
    /// there, with no buffer of its own); `write_if_full` then writes them out in chunks.
    pub fn fill<R>(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let start = self.pending.len();
        let r = fill(&mut self.pending);
        let added = &self.pending[start..];
        self.crc.update(added);
        self.msg_len += added.len() as u64;
        r
    }

    pub fn write_if_full(&mut self) -> io::Result<()> {
        if self.pending.len() >= BUFFERED {
            self.flush()?;
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        if bytes.len() < DIRECT && self.pending.len() + bytes.len() <= BUFFERED {
            self.pending.extend_from_slice(bytes);
            return Ok(());
        }
        self.flush()?;
        if bytes.len() >= DIRECT {
            // Large pieces go straight from the caller's buffer, without a copy.
            self.write_at(bytes, self.pending_at)?;
            self.pending_at += bytes.len() as u64;
        } else {
            self.pending.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Nothing but the room left for the header: the header gets its own write at the end.
        if self.pending_at == 0 && self.pending.len() == HEADER_LEN {
            self.pending.clear();
            self.pending_at = HEADER_LEN as u64;
            return Ok(());
        }
        let (pending, at) = (std::mem::take(&mut self.pending), self.pending_at);
        self.write_at(&pending, at)?;
        self.pending_at += pending.len() as u64;
        self.pending = pending;
        self.pending.clear();
        Ok(())
    }

    fn write_at(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        self.file.write_all_at(bytes, at)?;
        self.len = self.len.max(at + bytes.len() as u64);
        Ok(())
    }

    /// Writes envelope and header and syncs: the message is durable when this returns.
    fn seal(&mut self, env: &Envelope) -> io::Result<()> {
        debug_assert_eq!(self.msg_len, env.size);
        let encoded = env.encode();
        self.append(&encoded)?;
        let header = Header {
            state: State::Live,
            id: self.id.clone(),
            msg_len: self.msg_len,
            env_len: encoded.len() as u64,
            crc: self.crc.clone().finalize(),
        }
        .encode();
        if self.pending_at == 0 {
            // Header, message and envelope in one write.
            self.pending[..HEADER_LEN].copy_from_slice(&header);
            self.flush()?;
        } else {
            self.flush()?;
            self.file.write_all_at(&header, 0)?;
        }
        self.file.sync_data()
    }
}

impl Spool {
    /// Opens (creating with owner-only permissions) the spool under `root`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let (queue, tmp, corrupt) = (root.join("queue"), root.join("tmp"), root.join("corrupt"));
        for d in [root, &queue, &tmp, &corrupt] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)?;
        }
        Ok(Spool {
            queue_sync: fsio::DirSync::new(&queue),
            queue,
            tmp,
            corrupt,
            slots: Mutex::new(Slots::default()),
            keep: Keep {
                slots: FREE_SLOTS,
                bytes: FREE_BYTES,
                open: OPEN_FREE_SLOTS,
            },
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start-up recovery: empties `tmp/`, checks every slot, quarantines what it cannot read,
    /// and returns every queued envelope.
    pub fn recover(&self) -> io::Result<Vec<Envelope>> {
        for entry in fs::read_dir(&self.tmp)? {
            let path = entry?.path();
            log::info!("spool: removing unfinished {}", path.display());
            fs::remove_file(&path)?;
        }
        let mut envelopes = Vec::new();
        let mut newer = Vec::new();
        let mut free = Vec::new();
        let mut live = HashMap::new();
        let mut next = 0;
        for entry in fs::read_dir(&self.queue)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(n) = slot::number(&name) {
                next = next.max(n + 1);
                let slot = Slot {
                    n,
                    file: None,
                    size: fs::metadata(&path)?.len(),
                };
                match slot::read(&path, true)? {
                    slot::Content::Free => free.push(slot),
                    slot::Content::Live(env) if !live.contains_key(&env.id) => {
                        live.insert(env.id.clone(), slot);
                        envelopes.push(env);
                    }
                    slot::Content::Live(env) => {
                        self.quarantine_file(
                            &path,
                            &format!("{}.slot-{n}", env.id),
                            "a second slot with this message",
                        )?;
                    }
                    slot::Content::Damaged(why) => {
                        self.quarantine_file(&path, &format!("slot-{n}"), &why)?
                    }
                }
                continue;
            }
            match name.strip_suffix(".env") {
                Some(id) if id::is_valid(id) => newer.push(id.to_string()),
                _ => self.quarantine_file(&path, &name, "unexpected file in queue/")?,
            }
        }
        *self.slots() = Slots {
            next,
            live,
            ..Slots::default()
        };
        for id in newer {
            let Some(at) = envelopes.iter().position(|e| e.id == id) else {
                self.quarantine(&id, "envelope without its message")?;
                continue;
            };
            match read_newer_envelope(&self.queue, &id) {
                Ok(Some(env)) => envelopes[at] = env,
                Ok(None) => {}
                Err(why) => {
                    envelopes.remove(at);
                    self.quarantine(&id, &why)?;
                }
            }
        }
        free.sort_unstable_by_key(|s| s.n);
        for slot in free {
            self.release(slot);
        }
        fsio::sync_dir(&self.queue)?;
        envelopes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(envelopes)
    }

    fn slot_path(&self, n: u64) -> PathBuf {
        self.queue.join(n.to_string())
    }

    #[cfg(test)]
    fn msg_path(&self, id: &str) -> Option<PathBuf> {
        let n = self.slots().live.get(id)?.n;
        Some(self.slot_path(n))
    }

    /// The slot file of a queued message, open (its message is `Envelope::size` bytes after
    /// the header: see `slot::MessageReader`). Kept open until the message is removed or
    /// waits for a retry.
    pub fn message_file(&self, id: &str) -> io::Result<Arc<File>> {
        let n = {
            let slots = self.slots();
            let slot = slots
                .live
                .get(id)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the queue"))?;
            if let Some(f) = &slot.file {
                return Ok(f.clone());
            }
            slot.n
        };
        let file = Arc::new(self.open_slot(n)?);
        if let Some(slot) = self.slots().live.get_mut(id) {
            slot.file = Some(file.clone());
        }
        Ok(file)
    }

    fn open_slot(&self, n: u64) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.slot_path(n))
    }

    fn env_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.env"))
    }

    /// Starts a new message in a free slot, or in a new one.
    pub fn create(&self) -> io::Result<Incoming> {
        let reused = {
            let mut slots = self.slots();
            let top = slots.free.pop_back();
            if let Some(slot) = &top {
                slots.free_bytes -= slot.size;
            }
            top
        };
        let (slot, file, len, created) = match reused {
            Some(Slot {
                n,
                file: Some(f),
                size,
            }) => (n, f, size, false),
            Some(Slot {
                n,
                file: None,
                size,
            }) => match self.open_slot(n) {
                Ok(file) => (n, Arc::new(file), size, false),
                Err(e) => {
                    log::warn!("spool: slot {n} is gone ({e}); making a new one");
                    self.new_slot()?
                }
            },
            None => self.new_slot()?,
        };
        let mut pending = Vec::with_capacity(BUFFERED);
        pending.resize(HEADER_LEN, 0);
        Ok(Incoming {
            id: id::new_id(),
            slot,
            file,
            len,
            created,
            pending,
            pending_at: 0,
            msg_len: 0,
            crc: crc32fast::Hasher::new(),
        })
    }

    fn new_slot(&self) -> io::Result<(u64, Arc<File>, u64, bool)> {
        loop {
            let n = {
                let mut slots = self.slots();
                slots.next += 1;
                slots.next - 1
            };
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.slot_path(n))
            {
                Ok(file) => return Ok((n, Arc::new(file), 0, true)),
                // Left by a crash after recovery counted: skip the number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes the message durable; only after this returns may the client get its 250.
    /// `env.size` must be the number of message bytes written.
    pub fn commit(&self, mut incoming: Incoming, env: &Envelope) -> io::Result<()> {
        debug_assert_eq!(incoming.id, env.id);
        let mut result = incoming.seal(env);
        if result.is_ok() && incoming.created {
            result = self.queue_sync.sync();
        }
        match result {
            Ok(()) => {
                let slot = Slot {
                    n: incoming.slot,
                    file: Some(incoming.file),
                    size: incoming.len,
                };
                self.slots().live.insert(incoming.id, slot);
                Ok(())
            }
            Err(e) => {
                // Its header may have reached the disk: not a slot to reuse.
                self.delete_slot(incoming.slot);
                Err(e)
            }
        }
    }

    /// Drops a message that will not be committed (client gone, message refused). Its slot
    /// never got a live header, so it is free as it is.
    pub fn abort(&self, incoming: Incoming) {
        self.release(Slot {
            n: incoming.slot,
            file: Some(incoming.file),
            size: incoming.len,
        });
    }

    /// Puts a slot back for reuse. One that is large, or over the byte budget, is cut to
    /// nothing first: the file is kept (making one costs an inode allocation and a directory
    /// fsync), its blocks are not. Deleted past the number of free slots kept.
    fn release(&self, mut slot: Slot) {
        let keep_blocks =
            slot.size <= MAX_KEPT_SIZE && self.slots().free_bytes + slot.size <= self.keep.bytes;
        if !keep_blocks {
            let cut = match &slot.file {
                Some(f) => f.set_len(0),
                None => OpenOptions::new()
                    .write(true)
                    .open(self.slot_path(slot.n))
                    .and_then(|f| f.set_len(0)),
            };
            if cut.is_err() {
                return self.delete_slot(slot.n);
            }
            slot.size = 0;
        }
        let mut slots = self.slots();
        if slots.free.len() >= self.keep.slots {
            drop(slots);
            return self.delete_slot(slot.n);
        }
        if slots.free.len() >= self.keep.open {
            slot.file = None;
        }
        slots.free_bytes += slot.size;
        if slot.size > 0 {
            slots.free.push_back(slot);
        } else {
            slots.free.push_front(slot);
        }
    }

    fn delete_slot(&self, n: u64) {
        if let Err(e) = fs::remove_file(self.slot_path(n)) {
            log::warn!("spool: cannot delete slot {n}: {e}");
        }
    }

    /// Spools a message we generate ourselves (a DSN) in one go.
    pub fn store(&self, env: &Envelope, body: &[u8]) -> io::Result<()> {
        let mut incoming = self.create()?;
        incoming.id = env.id.clone();
        incoming.write_all(body)?;
        self.commit(incoming, env)
    }

    /// Records a newer envelope atomically (recipient states, attempts, next try):
    /// tmp → data sync → rename over the previous one → directory sync.
    pub fn update(&self, env: &Envelope) -> io::Result<()> {
        let tmp = self.tmp.join(format!("{}.env", env.id));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all_at(&env.encode(), 0)?;
        file.sync_data()?;
        fs::rename(&tmp, self.env_path(&env.id))?;
        self.queue_sync.sync()?;
        // The message now waits for a retry: do not hold its file open meanwhile.
        if let Some(slot) = self.slots().live.get_mut(&env.id) {
            slot.file = None;
        }
        Ok(())
    }

    /// Removes a finished message: its newer envelope first, then its slot is marked free
    /// and reused. Not synced: if a crash undoes the removal, the message is delivered again
    /// (a duplicate, never a loss).
    /// `newer_envelope`: whether an `<id>.env` may exist (skips a lookup when it cannot).
    pub fn remove(&self, env: &Envelope, newer_envelope: bool) -> io::Result<()> {
        if newer_envelope {
            remove_if_there(&self.env_path(&env.id))?;
        }
        let Some(mut slot) = self.slots().live.remove(&env.id) else {
            return Ok(());
        };
        let marked = match slot.file.take() {
            Some(f) => Ok(f),
            None => self.open_slot(slot.n).map(Arc::new),
        }
        .and_then(|f| f.write_all_at(b"F", slot::STATE_AT).map(|()| f));
        match marked {
            Ok(f) => {
                slot.file = Some(f);
                self.release(slot);
                Ok(())
            }
            Err(e) => {
                // Not marked free, so not reusable: a crash would bring it back.
                self.delete_slot(slot.n);
                Err(e)
            }
        }
    }

    /// Removes a message that a delivery may still be reading: its slot is deleted, not
    /// reused, so no other message can be written into a file still being sent.
    pub fn discard(&self, id: &str) -> io::Result<()> {
        remove_if_there(&self.env_path(id))?;
        let Some(slot) = self.slots().live.remove(id) else {
            return Ok(());
        };
        fs::remove_file(self.slot_path(slot.n))
    }

    /// The header section of a queued message (up to `max` bytes), for DSNs.
    pub fn read_headers(&self, env: &Envelope, max: usize) -> io::Result<Vec<u8>> {
        slot::read_message_headers(&*self.message_file(&env.id)?, env.size, max)
    }

    /// Moves a message's files to `corrupt/` (as `<id>.msg` and `<id>.env`) and records why.
    pub fn quarantine(&self, id: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {id}: {reason}");
        let slot = self.slots().live.remove(id);
        let env = self.env_path(id);
        if env.exists() {
            fs::rename(&env, self.corrupt.join(format!("{id}.env")))?;
        }
        if let Some(slot) = slot {
            fs::rename(
                self.slot_path(slot.n),
                self.corrupt.join(format!("{id}.msg")),
            )?;
        }
        self.record_reason(id, reason)
    }

    fn quarantine_file(&self, path: &Path, name: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {name}: {reason}");
        fs::rename(path, self.corrupt.join(name))?;
        self.record_reason(name, reason)
    }

    fn record_reason(&self, name: &str, reason: &str) -> io::Result<()> {
        fs::write(
            self.corrupt.join(format!("{name}.reason")),
            format!("{reason}\n"),
        )?;
        fsio::sync_dir(&self.corrupt)?;
        fsio::sync_dir(&self.queue)
    }
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `<id>.env`, if there is one.
fn read_newer_envelope(queue: &Path, id: &str) -> Result<Option<Envelope>, String> {
    let bytes = match fs::read(queue.join(format!("{id}.env"))) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let env = Envelope::decode(&bytes).map_err(|e| format!("newer envelope: {e}"))?;
    if env.id != id {
        return Err("newer envelope: its id does not match its file name".into());
    }
    Ok(Some(env))
}

/// Every queued message in `queue/` with its slot, read-only (no checksum check): the queue
/// commands use it without a daemon.
pub fn list(queue: &Path) -> io::Result<Vec<(PathBuf, Envelope)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(queue)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(slot::number)
            .is_none()
        {
            continue;
        }
        // A slot freed or reused while we look is simply not listed.
        let Ok(slot::Content::Live(env)) = slot::read(&path, false) else {
            continue;
        };
        match read_newer_envelope(queue, &env.id) {
            Ok(Some(newer)) => out.push((path, newer)),
            Ok(None) => out.push((path, env)),
            Err(_) => {}
        }
    }
    out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mxrelay-unit-{name}-{}", id::new_id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn env(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            kind: Kind::Message,
            received: 1,
            client: "127.0.0.1".into(),
            helo: "c".into(),
            sender: "a@b.test".into(),
            size: 5,
            eight_bit: false,
            smtputf8: false,
            attempts: 0,
            next_attempt: 0,
            last_error: String::new(),
            held: false,
            recipients: vec![Recipient {
                address: "x@y.test".into(),
                state: RcptState::Pending,
            }],
        }
    }

    fn commit(spool: &Spool, body: &[u8]) -> Envelope {
        let mut inc = spool.create().unwrap();
        inc.write_all(body).unwrap();
        let mut e = env(&inc.id.clone());
        e.size = body.len() as u64;
        spool.commit(inc, &e).unwrap();
        e
    }

    fn slot_files(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root.join("queue"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| slot::number(n).is_some())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn commit_recover_update_remove() {
        let root = temp_dir("spool");
        let spool = Spool::open(&root).unwrap();
        let e = commit(&spool, b"Subject: hi\r\n\r\nbody\r\n");
        // One file: header, message, envelope.
        let path = spool.msg_path(&e.id).unwrap();
        let file = fs::read(&path).unwrap();
        assert!(file.starts_with(format!("mxrelay-slot 1 L {} 21 ", e.id).as_bytes()));
        assert_eq!(
            &file[HEADER_LEN..HEADER_LEN + 21],
            b"Subject: hi\r\n\r\nbody\r\n"
        );
        assert_eq!(&file[HEADER_LEN + 21..], &e.encode()[..]);
        // An unfinished message is a free slot; stray and damaged files are quarantined.
        let mut stray = spool.create().unwrap();
        stray.write_all(&[b'p'; 100_000]).unwrap();
        drop(stray);
        fs::write(root.join("queue/notes.txt"), b"?").unwrap();
        fs::write(
            root.join("queue/0000000000000002-0000.env"),
            b"version: 1\n",
        )
        .unwrap();
        let other = commit(&spool, b"Subject: other\r\n\r\nx\r\n");
        let other_path = spool.msg_path(&other.id).unwrap();
        let mut bytes = fs::read(&other_path).unwrap();
        bytes[HEADER_LEN + 3] ^= 1;
        fs::write(&other_path, bytes).unwrap();
        let spool = Spool::open(&root).unwrap();
        let got = spool.recover().unwrap();
        assert_eq!(got, vec![e.clone()]);
        assert!(root.join("corrupt/notes.txt").exists());
        assert!(root.join("corrupt/0000000000000002-0000.env").exists());
        let slot_name = other_path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let reason =
            fs::read_to_string(root.join(format!("corrupt/slot-{slot_name}.reason"))).unwrap();
        assert!(reason.contains("checksum"), "{reason}");
        assert_eq!(spool.read_headers(&e, 1000).unwrap(), b"Subject: hi\r\n");
        // A newer envelope overrides the first one, for recovery and for the queue commands.
        let mut updated = e.clone();
        updated.attempts = 3;
        updated.recipients[0].state = RcptState::Delivered;
        spool.update(&updated).unwrap();
        assert_eq!(spool.recover().unwrap(), vec![updated.clone()]);
        assert_eq!(
            list(&root.join("queue")).unwrap(),
            vec![(path.clone(), updated.clone())]
        );
        // Removed: the slot is marked free and reused for the next message, no file created.
        assert!(slot::holds(&File::open(&path).unwrap(), &e.id).unwrap());
        spool.remove(&updated, true).unwrap();
        assert!(!slot::holds(&File::open(&path).unwrap(), &e.id).unwrap());
        assert!(!root.join(format!("queue/{}.env", e.id)).exists());
        assert!(list(&root.join("queue")).unwrap().is_empty());
        let before = slot_files(&root);
        let e2 = commit(&spool, b"y");
        assert_eq!(slot_files(&root), before);
        assert_eq!(spool.read_headers(&e2, 1000).unwrap(), b"y");
        assert_eq!(Spool::open(&root).unwrap().recover().unwrap(), vec![e2]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn pieces_large_and_small_are_stored_in_order() {
        let root = temp_dir("pieces");
        let spool = Spool::open(&root).unwrap();
        let pieces: Vec<Vec<u8>> = vec![
            b"Subject: pieces\r\n\r\n".to_vec(),
            vec![b'L'; 20_000],
            b"small\r\n".to_vec(),
            vec![b'M'; 70_000],
            b"end\r\n".to_vec(),
        ];
        let mut inc = spool.create().unwrap();
        for (i, p) in pieces.iter().enumerate() {
            if i % 2 == 0 {
                inc.write_all(p).unwrap();
            } else {
                // As the DATA reader writes: into the buffer, then out once it is full.
                inc.fill(|out| out.extend_from_slice(p));
                inc.write_if_full().unwrap();
            }
        }
        let mut e = env(&inc.id.clone());
        let whole = pieces.concat();
        e.size = whole.len() as u64;
        spool.commit(inc, &e).unwrap();
        let spool = Spool::open(&root).unwrap();
        assert_eq!(
            spool.recover().unwrap(),
            vec![e.clone()],
            "the checksum matches"
        );
        let mut stored = Vec::new();
        let file = spool.message_file(&e.id).unwrap();
        std::io::Read::read_to_end(&mut slot::MessageReader::new(&file, e.size), &mut stored)
            .unwrap();
        assert_eq!(stored, whole);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_crash_while_a_slot_is_reused_is_caught_by_the_checksum() {
        let root = temp_dir("torn");
        let spool = Spool::open(&root).unwrap();
        let x = commit(&spool, &[b'x'; 5000]);
        let path = spool.msg_path(&x.id).unwrap();
        let old = fs::read(&path).unwrap();
        spool.remove(&x, false).unwrap();
        // The freeing byte never reached the disk: the message comes back (a duplicate).
        fs::write(&path, &old).unwrap();
        assert_eq!(
            Spool::open(&root).unwrap().recover().unwrap(),
            vec![x.clone()]
        );
        // The slot is being reused when the crash comes: old header, part new content.
        let spool = Spool::open(&root).unwrap();
        spool.recover().unwrap();
        spool.remove(&x, false).unwrap();
        let mut y = spool.create().unwrap();
        y.write_all(&[b'y'; 3000]).unwrap();
        y.flush().unwrap();
        let mut torn = fs::read(&path).unwrap();
        torn[..HEADER_LEN].copy_from_slice(&old[..HEADER_LEN]);
        fs::write(&path, &torn).unwrap();
        drop(y);
        let spool = Spool::open(&root).unwrap();
        assert!(spool.recover().unwrap().is_empty());
        assert_eq!(fs::read_dir(root.join("corrupt")).unwrap().count(), 2);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn free_slots_are_kept_within_their_count_bytes_and_open_files() {
        let root = temp_dir("keep");
        let mut spool = Spool::open(&root).unwrap();
        spool.keep = Keep {
            slots: 2,
            bytes: 8_000,
            open: 1,
        };
        let msgs: Vec<Envelope> = (0..3).map(|_| commit(&spool, &[b'k'; 5000])).collect();
        let paths: Vec<PathBuf> = msgs
            .iter()
            .map(|e| spool.msg_path(&e.id).unwrap())
            .collect();
        for e in &msgs {
            spool.remove(e, false).unwrap();
        }
        // The first keeps its blocks; the second would pass the byte budget, so it is cut
        // to nothing; the third is past the count and deleted.
        let len = |p: &PathBuf| fs::metadata(p).map(|m| m.len()).ok();
        assert!(len(&paths[0]).is_some_and(|l| l > 5000));
        assert_eq!(len(&paths[1]), Some(0));
        assert_eq!(len(&paths[2]), None);
        let slots = spool.slots();
        assert_eq!(slots.free.len(), 2);
        assert_eq!(slots.free_bytes, len(&paths[0]).unwrap());
        let open = slots.free.iter().filter(|s| s.file.is_some()).count();
        assert_eq!(open, 1, "only one free slot keeps its file open");
        drop(slots);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_slot_shorter_than_its_header_says_is_quarantined() {
        let root = temp_dir("short");
        let spool = Spool::open(&root).unwrap();
        let e = commit(&spool, &[b's'; 3000]);
        let path = spool.msg_path(&e.id).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1000)
            .unwrap();
        let spool = Spool::open(&root).unwrap();
        assert!(spool.recover().unwrap().is_empty());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let reason = fs::read_to_string(root.join(format!("corrupt/slot-{name}.reason"))).unwrap();
        assert!(reason.contains("shorter than its header says"), "{reason}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn big_slots_are_kept_without_their_blocks_and_reused_last() {
        let root = temp_dir("big");
        let spool = Spool::open(&root).unwrap();
        let big = commit(&spool, &vec![b'b'; 300_000]);
        let small = commit(&spool, b"small");
        let (big_path, small_path) = (
            spool.msg_path(&big.id).unwrap(),
            spool.msg_path(&small.id).unwrap(),
        );
        spool.remove(&big, false).unwrap();
        spool.remove(&small, false).unwrap();
        assert_eq!(fs::metadata(&big_path).unwrap().len(), 0);
        let next = commit(&spool, b"next");
        assert_eq!(
            spool.msg_path(&next.id),
            Some(small_path),
            "a slot with blocks first"
        );
        let last = commit(&spool, b"last");
        assert_eq!(
            spool.msg_path(&last.id),
            Some(big_path),
            "then the emptied one"
        );
        assert_eq!(
            Spool::open(&root).unwrap().recover().unwrap(),
            vec![next, last]
        );
        fs::remove_dir_all(root).unwrap();
    }
}
