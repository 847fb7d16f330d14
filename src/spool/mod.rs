//! The durable queue on disk.
//!
//! Layout:
//! - `queue/cells`: one file of fixed-size cells, each a slot (format in `slot`) for a message
//!   that fits one: most mail. Commits to cells all sync the same file, so the file's times
//!   change, and its inode is written, at most once per clock tick rather than once per
//!   message, and concurrent commits' data goes to the disk together.
//! - `queue/<n>`: slot files, for messages too large for a cell (or when every cell is taken).
//!   A slot file is reused rather than deleted: creating and deleting a file per message makes
//!   ext4 hunt for free inodes past every recently deleted one, and renames and directory
//!   fsyncs cost as much again as the data itself.
//! - `queue/<id>.env`: a newer envelope (recipients crossed off, attempts, next try), when
//!   there is one; it overrides the one inside the slot.
//! - `tmp/`: newer envelopes being written; never trusted, emptied at start.
//! - `corrupt/`: what recovery could not read, with a `.reason` file; never deleted silently.
//!
//! Commit protocol (before the 250): header, message and envelope written into the slot, then
//! fdatasync. A slot file created for this message (none was free) also has its directory
//! entry fsynced (shared by concurrent commits). Freeing a slot after delivery rewrites one
//! byte of its header, unsynced (for a cell, only if the cell is not reused first: see
//! `MARK_FREED_AFTER`): if a crash undoes that, the message is delivered again (a duplicate,
//! never a loss).

pub mod envelope;
pub mod fsio;
pub mod id;
pub mod slot;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use envelope::{Envelope, Kind, RcptState, Recipient};
use slot::{HEADER_LEN, Header, State};

/// The shared file of cells, in `queue/`.
const CELLS_FILE: &str = "cells";
/// A cell's size: header, message and envelope of a message that fits. A multiple of the
/// page size, so that no two cells share a block. Only what a cell's messages wrote takes
/// disk space.
pub const CELL: u64 = 256 * 1024;
/// Cells at most; past that, messages get slot files.
const MAX_CELLS: u64 = 1024;
/// Disk space the cells may keep beyond `CELL_KEPT` each: past it, a cell that stays free is
/// cut back to that (a hole punched in the rest; see `Spool::mark_freed_cells`).
const CELL_BYTES: u64 = 64 << 20;
const CELL_KEPT: u64 = 64 * 1024;
/// How long a freed cell waits for reuse before its free mark is written (`mark_freed_cells`).
/// Reused sooner, as most are under load, the next message's commit overwrites the old
/// header and no mark is written at all; written at once, the mark would ride along with
/// the next commit's fdatasync of the cells file: one more disk write per message.
pub const MARK_FREED_AFTER: Duration = Duration::from_millis(100);
/// Descriptors of the cells file kept open for commits (see `Spool::cell_writers`).
const MAX_CELL_WRITERS: usize = 64;
/// Free slot files kept for reuse; more are deleted. Making a slot costs an inode allocation
/// and a directory fsync, so a burst that queued thousands should not pay that again next time.
const FREE_SLOTS: usize = 8192;
/// Disk space the free slot files may keep; past it, released slots are cut to nothing.
const FREE_BYTES: u64 = 64 << 20;
/// Free slot files that stay open (the ones reused first).
const OPEN_FREE_SLOTS: usize = 256;
/// A slot file larger than this (it held a big message) is cut to nothing when freed.
const MAX_KEPT_SIZE: u64 = 256 * 1024;
/// A message that fits a cell stays in memory until commit, and is then written together with
/// header and envelope, in one go, just before its fdatasync. Written out earlier, its pages
/// would be written by whichever commit syncs the cells file first, and its first page again
/// with the header. The buffer grows as the message does: most mail takes a fraction of it.
const BUFFERED: usize = CELL as usize;
const BUFFER_START: usize = 64 * 1024;
/// Pieces at least this large, once the buffer is full, are written as they come rather than
/// copied into it.
const DIRECT: usize = 16 * 1024;

pub struct Spool {
    queue: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    /// The cells file, for reading and for free marks.
    cells: Arc<File>,
    /// Descriptors of the cells file for commits, one per commit at a time. Linux reports a
    /// write-back error once per open file description: with one shared by all, a commit
    /// could consume the error of a page that belongs to another, which then reports success
    /// for data that never reached the disk. Each descriptor reports every error to its
    /// own next commit.
    cell_writers: Mutex<Vec<File>>,
    /// Set at shutdown: freed cells are marked at once (see `mark_freed_cells_at_once`).
    marks_at_once: AtomicBool,
    slots: Mutex<Slots>,
    queue_sync: fsio::DirSync,
    keep: Keep,
}

/// How many cells there may be, and how many free slot files are kept, and how much of them
/// (`MAX_CELLS`, `FREE_SLOTS` and friends; tests use smaller numbers).
struct Keep {
    cells: u64,
    cell_bytes: u64,
    slots: usize,
    bytes: u64,
    open: usize,
}

#[derive(Default)]
struct Slots {
    /// Free cells, reused last-in first-out (from the back).
    free_cells: Vec<u64>,
    /// Cells so far (the next new cell's number).
    cells: u64,
    /// Free cells whose header on disk still says live, and since when they are free.
    unmarked: HashMap<u64, Instant>,
    /// How far into each cell something was written (what its blocks may cover), and the
    /// sum: see `CELL_BYTES`.
    extents: Vec<u64>,
    extent_total: u64,
    /// Free slot files, reused last-in first-out (from the back), so few stay in use; slots
    /// cut to nothing wait at the front, to be reused last.
    free: std::collections::VecDeque<Slot>,
    /// The sum of the free slot files' sizes.
    free_bytes: u64,
    /// The next slot file number to create.
    next: u64,
    /// Where every queued message is.
    live: HashMap<String, Place>,
}

enum Place {
    Cell(u64),
    File(Slot),
}

/// A slot file's number and, while the slot is in use (being written or delivered) or free,
/// the file kept open: opening and closing it for each step cost as much as writing it.
struct Slot {
    n: u64,
    file: Option<Arc<File>>,
    /// The file's length.
    size: u64,
}

/// A queued message's slot, open: the cells file at its cell, or its slot file at 0 (the
/// message is `Envelope::size` bytes after the slot's header: see `slot::MessageReader`).
#[derive(Clone, Debug)]
pub struct Stored {
    pub file: Arc<File>,
    pub base: u64,
}

/// Where a queued message's slot is, for readers without the daemon (`list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub base: u64,
}

/// A slot file being written.
struct Writing {
    n: u64,
    file: Arc<File>,
    /// The file's length (as it was, or as far as this message has written).
    len: u64,
    /// Created for this message: its directory entry still needs an fsync.
    created: bool,
}

/// A message being received. It stays in the buffer until it outgrows a cell, and only then
/// gets a slot file; one that fits goes into a cell at commit, in one write.
pub struct Incoming<'a> {
    pub id: String,
    spool: &'a Spool,
    slot: Option<Writing>,
    /// Bytes not yet written, starting at slot offset `pending_at` (at 0: room for the header).
    pending: Vec<u8>,
    pending_at: u64,
    msg_len: u64,
    crc: crc32fast::Hasher,
}

impl Incoming<'_> {
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

    /// Writes the buffer out once it is nearly full, leaving room for the next `fill` (the
    /// DATA reader adds at most its read buffer, 16 KiB unless lines may be longer), so that
    /// the buffer does not outgrow a cell.
    pub fn write_if_full(&mut self) -> io::Result<()> {
        if self.pending.len() + DIRECT > BUFFERED {
            self.flush()?;
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        if self.pending.len() + bytes.len() <= BUFFERED {
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

    /// Writes the buffer out to the slot file, which the message gets now if it has none yet.
    fn flush(&mut self) -> io::Result<()> {
        // Nothing but the room left for the header: the header gets its own write at the end.
        if self.pending_at == 0 && self.pending.len() == HEADER_LEN {
            self.pending.clear();
            self.pending_at = HEADER_LEN as u64;
            return Ok(());
        }
        let (pending, at) = (std::mem::take(&mut self.pending), self.pending_at);
        let written = self.write_at(&pending, at);
        self.pending = pending;
        written?;
        self.pending_at += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    fn write_at(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        let slot = match &mut self.slot {
            Some(slot) => slot,
            None => self.slot.insert(self.spool.take_slot()?),
        };
        slot.file.write_all_at(bytes, at)?;
        slot.len = slot.len.max(at + bytes.len() as u64);
        Ok(())
    }

    /// Appends the envelope and fills in the header.
    fn seal(&mut self, env: &Envelope) -> io::Result<[u8; HEADER_LEN]> {
        debug_assert_eq!(self.msg_len, env.size);
        let encoded = env.encode();
        self.append(&encoded)?;
        Ok(Header {
            state: State::Live,
            id: self.id.clone(),
            msg_len: self.msg_len,
            env_len: encoded.len() as u64,
            crc: self.crc.clone().finalize(),
        }
        .encode())
    }

    /// Whether the whole slot is still in the buffer and fits a cell.
    fn fits_cell(&self) -> bool {
        self.slot.is_none() && self.pending_at == 0 && self.pending.len() as u64 <= CELL
    }

    /// Writes the sealed slot into its slot file and syncs it.
    fn sync_to_slot_file(&mut self, header: &[u8; HEADER_LEN]) -> io::Result<()> {
        if self.pending_at == 0 {
            // Header, message and envelope in one write.
            self.pending[..HEADER_LEN].copy_from_slice(header);
            self.flush()?;
        } else {
            self.flush()?;
            self.write_at(header, 0)?;
        }
        let slot = self.slot.as_ref().expect("flushed into a slot file");
        slot.file.sync_data()
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
        let cells = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(queue.join(CELLS_FILE))?;
        // Its directory entry is durable before any commit relies on it.
        fsio::sync_dir(&queue)?;
        Ok(Spool {
            queue_sync: fsio::DirSync::new(&queue),
            queue,
            tmp,
            corrupt,
            cells: Arc::new(cells),
            cell_writers: Mutex::default(),
            marks_at_once: AtomicBool::new(false),
            slots: Mutex::new(Slots::default()),
            keep: Keep {
                cells: MAX_CELLS,
                cell_bytes: CELL_BYTES,
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
        let mut live = HashMap::new();
        let mut free_cells = Vec::new();
        let cells = self.cells.metadata()?.len().div_ceil(CELL);
        for k in 0..cells {
            match slot::read(&self.cells, k * CELL, Some(CELL), true)? {
                slot::Content::Free => {}
                slot::Content::Live(env) if !live.contains_key(&env.id) => {
                    live.insert(env.id.clone(), Place::Cell(k));
                    envelopes.push(env);
                    continue;
                }
                slot::Content::Live(env) => self.quarantine_cell(
                    k,
                    &format!("{}.cell-{k}", env.id),
                    "a second slot with this message",
                )?,
                slot::Content::Damaged(why) => {
                    self.quarantine_cell(k, &format!("cell-{k}"), &why)?
                }
            }
            free_cells.push(k);
        }
        let mut newer = Vec::new();
        let mut free = Vec::new();
        let mut next = 0;
        for entry in fs::read_dir(&self.queue)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == CELLS_FILE {
                continue;
            }
            if let Some(n) = slot::number(&name) {
                next = next.max(n + 1);
                let file = File::open(&path)?;
                let slot = Slot {
                    n,
                    file: None,
                    size: file.metadata()?.len(),
                };
                match slot::read(&file, 0, None, true)? {
                    slot::Content::Free => free.push(slot),
                    slot::Content::Live(env) if !live.contains_key(&env.id) => {
                        live.insert(env.id.clone(), Place::File(slot));
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
        // The lowest cells are reused first.
        free_cells.reverse();
        *self.slots() = Slots {
            free_cells,
            cells,
            // Not known: assume the worst.
            extents: vec![CELL; cells as usize],
            extent_total: cells * CELL,
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

    /// A queued message's slot, open. A slot file is kept open until the message is removed
    /// or waits for a retry.
    pub fn message_file(&self, id: &str) -> io::Result<Stored> {
        let n = {
            let slots = self.slots();
            match slots.live.get(id) {
                None => return Err(io::Error::new(io::ErrorKind::NotFound, "not in the queue")),
                Some(Place::Cell(k)) => return Ok(self.cell(*k)),
                Some(Place::File(slot)) => match &slot.file {
                    Some(f) => {
                        return Ok(Stored {
                            file: f.clone(),
                            base: 0,
                        });
                    }
                    None => slot.n,
                },
            }
        };
        let file = Arc::new(self.open_slot(n)?);
        if let Some(Place::File(slot)) = self.slots().live.get_mut(id) {
            slot.file = Some(file.clone());
        }
        Ok(Stored { file, base: 0 })
    }

    fn cell(&self, k: u64) -> Stored {
        Stored {
            file: self.cells.clone(),
            base: k * CELL,
        }
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

    /// Starts a new message. It gets its cell or slot file only when it is written out.
    pub fn create(&self) -> Incoming<'_> {
        let mut pending = Vec::with_capacity(BUFFER_START);
        pending.resize(HEADER_LEN, 0);
        Incoming {
            id: id::new_id(),
            spool: self,
            slot: None,
            pending,
            pending_at: 0,
            msg_len: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Writes a whole slot into cell `k` and syncs it, through a descriptor of the cells file
    /// of this commit's own (see `cell_writers`).
    fn write_cell(&self, k: u64, slot: &[u8]) -> io::Result<()> {
        let writers = || self.cell_writers.lock().unwrap_or_else(|e| e.into_inner());
        let kept = writers().pop();
        let fd = match kept {
            Some(fd) => fd,
            None => OpenOptions::new()
                .write(true)
                .open(self.queue.join(CELLS_FILE))?,
        };
        let written = fd
            .write_all_at(slot, k * CELL)
            .and_then(|()| fd.sync_data());
        let mut kept = writers();
        if kept.len() < MAX_CELL_WRITERS {
            kept.push(fd);
        }
        written
    }

    /// A free cell, or a new one while there may be more; `None` when every cell is taken.
    fn take_cell(&self) -> Option<u64> {
        let mut slots = self.slots();
        if let Some(k) = slots.free_cells.pop() {
            slots.unmarked.remove(&k);
            return Some(k);
        }
        (slots.cells < self.keep.cells).then(|| {
            slots.cells += 1;
            slots.extents.push(0);
            slots.cells - 1
        })
    }

    /// A free slot file, or a new one.
    fn take_slot(&self) -> io::Result<Writing> {
        let reused = {
            let mut slots = self.slots();
            let top = slots.free.pop_back();
            if let Some(slot) = &top {
                slots.free_bytes -= slot.size;
            }
            top
        };
        match reused {
            Some(Slot {
                n,
                file: Some(file),
                size,
            }) => Ok(Writing {
                n,
                file,
                len: size,
                created: false,
            }),
            Some(Slot {
                n,
                file: None,
                size,
            }) => match self.open_slot(n) {
                Ok(file) => Ok(Writing {
                    n,
                    file: Arc::new(file),
                    len: size,
                    created: false,
                }),
                Err(e) => {
                    log::warn!("spool: slot {n} is gone ({e}); making a new one");
                    self.new_slot()
                }
            },
            None => self.new_slot(),
        }
    }

    fn new_slot(&self) -> io::Result<Writing> {
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
                Ok(file) => {
                    return Ok(Writing {
                        n,
                        file: Arc::new(file),
                        len: 0,
                        created: true,
                    });
                }
                // Left by a crash after recovery counted: skip the number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes the message durable; only after this returns may the client get its 250.
    /// `env.size` must be the number of message bytes written.
    pub fn commit(&self, mut incoming: Incoming<'_>, env: &Envelope) -> io::Result<()> {
        debug_assert_eq!(incoming.id, env.id);
        let header = incoming.seal(env);
        if let Ok(header) = &header
            && incoming.fits_cell()
            && let Some(k) = self.take_cell()
        {
            incoming.pending[..HEADER_LEN].copy_from_slice(header);
            let written = self.write_cell(k, &incoming.pending);
            let mut slots = self.slots();
            let (extent, old) = (incoming.pending.len() as u64, slots.extents[k as usize]);
            if extent > old {
                slots.extents[k as usize] = extent;
                slots.extent_total += extent - old;
            }
            match written {
                Ok(()) => {
                    slots.live.insert(incoming.id, Place::Cell(k));
                }
                // The message may have reached the disk all the same: freed like a delivered one.
                Err(_) => self.free_cell(&mut slots, k),
            }
            return written;
        }
        let result = header.and_then(|header| incoming.sync_to_slot_file(&header));
        let Some(slot) = incoming.slot.take() else {
            return result;
        };
        match result.and_then(|()| match slot.created {
            true => self.queue_sync.sync(),
            false => Ok(()),
        }) {
            Ok(()) => {
                let slot = Slot {
                    n: slot.n,
                    file: Some(slot.file),
                    size: slot.len,
                };
                self.slots().live.insert(incoming.id, Place::File(slot));
                Ok(())
            }
            Err(e) => {
                // Its header may have reached the disk: not a slot to reuse.
                self.delete_slot(slot.n);
                Err(e)
            }
        }
    }

    /// Drops a message that will not be committed (client gone, message refused). A slot
    /// file it got never had a live header, so it is free as it is.
    pub fn abort(&self, incoming: Incoming<'_>) {
        if let Some(slot) = incoming.slot {
            self.release(Slot {
                n: slot.n,
                file: Some(slot.file),
                size: slot.len,
            });
        }
    }

    /// Puts a slot file back for reuse. One that is large, or over the byte budget, is cut to
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

    /// Cuts a free cell back to `CELL_KEPT` while the cells keep more than `CELL_BYTES`.
    fn trim_cell(&self, slots: &mut Slots, k: u64) {
        let extent = slots.extents[k as usize];
        if extent <= CELL_KEPT || slots.extent_total <= self.keep.cell_bytes {
            return;
        }
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on an open file, within the cell.
        let rc = unsafe {
            libc::fallocate(
                self.cells.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (k * CELL + CELL_KEPT) as libc::off_t,
                (CELL - CELL_KEPT) as libc::off_t,
            )
        };
        if rc != 0 {
            log::debug!("spool: cannot cut cell {k}: {}", io::Error::last_os_error());
            return;
        }
        slots.extents[k as usize] = CELL_KEPT;
        slots.extent_total -= extent - CELL_KEPT;
    }

    /// Puts back a cell that holds no queued message. Its header on disk may still say live:
    /// the free mark follows unless the cell is reused first (`mark_freed_cells`), or at once
    /// after `mark_freed_cells_at_once`. Reused unmarked, the next commit overwrites it.
    fn free_cell(&self, slots: &mut Slots, k: u64) {
        if self.marks_at_once.load(Ordering::SeqCst) {
            if let Err(e) = self.mark_cell_free(k) {
                log::warn!("spool: cannot mark cell {k} free: {e}");
            }
        } else {
            slots.unmarked.insert(k, Instant::now());
        }
        slots.free_cells.push(k);
    }

    /// Marks cell `k` free on disk (unsynced).
    fn mark_cell_free(&self, k: u64) -> io::Result<()> {
        self.cells.write_all_at(b"F", k * CELL + slot::STATE_AT)
    }

    /// Writes the free mark of every cell freed at least `after` ago and not reused since;
    /// returns how long until the next one is due. Until its mark is written, a crash brings
    /// a freed cell's message back (delivered again: a duplicate, never a loss).
    /// A cell marked free is also cut back, if the cells keep more than `CELL_BYTES`: the
    /// cells reused at once, as they are under load, keep their blocks.
    pub fn mark_freed_cells(&self, after: Duration) -> Option<Duration> {
        let mut slots = self.slots();
        let mut next: Option<Duration> = None;
        let mut due = Vec::new();
        slots.unmarked.retain(|&k, freed| {
            let waited = freed.elapsed();
            if waited < after {
                next = Some(next.map_or(after - waited, |n| n.min(after - waited)));
                return true;
            }
            due.push(k);
            false
        });
        for k in due {
            if let Err(e) = self.mark_cell_free(k) {
                log::warn!("spool: cannot mark cell {k} free: {e}");
            }
            self.trim_cell(&mut slots, k);
        }
        next
    }

    /// For shutdown, when nothing will call `mark_freed_cells` any more: marks the freed
    /// cells now, and any freed from now on at once.
    pub fn mark_freed_cells_at_once(&self) {
        self.marks_at_once.store(true, Ordering::SeqCst);
        self.mark_freed_cells(Duration::ZERO);
    }

    /// Spools a message we generate ourselves (a DSN) in one go.
    pub fn store(&self, env: &Envelope, body: &[u8]) -> io::Result<()> {
        let mut incoming = self.create();
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
        // The message now waits for a retry: do not hold its slot file open meanwhile.
        if let Some(Place::File(slot)) = self.slots().live.get_mut(&env.id) {
            slot.file = None;
        }
        Ok(())
    }

    /// Removes a finished message: its newer envelope first, then its slot is marked free
    /// (a cell's mark waits a moment: see `mark_freed_cells`) and reused. Not synced: if a
    /// crash undoes the removal, the message is delivered again (a duplicate, never a loss).
    /// `newer_envelope`: whether an `<id>.env` may exist (skips a lookup when it cannot).
    pub fn remove(&self, env: &Envelope, newer_envelope: bool) -> io::Result<()> {
        if newer_envelope {
            remove_if_there(&self.env_path(&env.id))?;
        }
        let Some(place) = self.slots().live.remove(&env.id) else {
            return Ok(());
        };
        let mut slot = match place {
            Place::Cell(k) => {
                self.free_cell(&mut self.slots(), k);
                return Ok(());
            }
            Place::File(slot) => slot,
        };
        // One that cannot be marked free is not reused: a crash would bring it back.
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
                self.delete_slot(slot.n);
                Err(e)
            }
        }
    }

    /// Removes a message that a delivery may still be reading: its slot is not reused, so no
    /// other message can be written where one is still being sent. A slot file is deleted; a
    /// cell is marked free on disk and reused after the next start.
    pub fn discard(&self, id: &str) -> io::Result<()> {
        remove_if_there(&self.env_path(id))?;
        match self.slots().live.remove(id) {
            None => Ok(()),
            Some(Place::Cell(k)) => self.mark_cell_free(k),
            Some(Place::File(slot)) => fs::remove_file(self.slot_path(slot.n)),
        }
    }

    /// The header section of a queued message (up to `max` bytes), for DSNs.
    pub fn read_headers(&self, env: &Envelope, max: usize) -> io::Result<Vec<u8>> {
        let stored = self.message_file(&env.id)?;
        slot::read_message_headers(&stored.file, stored.base, env.size, max)
    }

    /// Moves a message to `corrupt/` (as `<id>.msg` and `<id>.env`) and records why.
    pub fn quarantine(&self, id: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {id}: {reason}");
        let place = self.slots().live.remove(id);
        let env = self.env_path(id);
        if env.exists() {
            fs::rename(&env, self.corrupt.join(format!("{id}.env")))?;
        }
        let msg = format!("{id}.msg");
        match place {
            None => {}
            Some(Place::File(slot)) => fs::rename(self.slot_path(slot.n), self.corrupt.join(msg))?,
            Some(Place::Cell(k)) => {
                self.move_cell(k, &msg)?;
                self.slots().free_cells.push(k);
            }
        }
        self.record_reason(id, reason)
    }

    fn quarantine_file(&self, path: &Path, name: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {name}: {reason}");
        fs::rename(path, self.corrupt.join(name))?;
        self.record_reason(name, reason)
    }

    fn quarantine_cell(&self, k: u64, name: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {name}: {reason}");
        self.move_cell(k, name)?;
        self.record_reason(name, reason)
    }

    /// Copies cell `k` to `corrupt/<name>` and, once the copy is durable, marks the cell free.
    fn move_cell(&self, k: u64, name: &str) -> io::Result<()> {
        let mut bytes = vec![0u8; CELL as usize];
        let n = slot::read_full_at(&self.cells, &mut bytes, k * CELL)?;
        let copy = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.corrupt.join(name))?;
        copy.write_all_at(&bytes[..n], 0)?;
        copy.sync_all()?;
        self.mark_cell_free(k)?;
        self.cells.sync_data()
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
/// commands use it without a daemon. A slot freed or reused while we look is simply not listed.
pub fn list(queue: &Path) -> io::Result<Vec<(Location, Envelope)>> {
    let mut slots = Vec::new();
    let cells = queue.join(CELLS_FILE);
    match File::open(&cells) {
        Ok(file) => {
            for k in 0..file.metadata()?.len().div_ceil(CELL) {
                if let Ok(slot::Content::Live(env)) = slot::read(&file, k * CELL, Some(CELL), false)
                {
                    let at = Location {
                        path: cells.clone(),
                        base: k * CELL,
                    };
                    slots.push((at, env));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
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
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if let Ok(slot::Content::Live(env)) = slot::read(&file, 0, None, false) {
            slots.push((Location { path, base: 0 }, env));
        }
    }
    let mut out = Vec::new();
    for (at, env) in slots {
        match read_newer_envelope(queue, &env.id) {
            Ok(Some(newer)) => out.push((at, newer)),
            Ok(None) => out.push((at, env)),
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
        let mut inc = spool.create();
        inc.write_all(body).unwrap();
        let mut e = env(&inc.id.clone());
        e.size = body.len() as u64;
        spool.commit(inc, &e).unwrap();
        e
    }

    /// A spool whose messages all get slot files.
    fn without_cells(root: &Path) -> Spool {
        let mut spool = Spool::open(root).unwrap();
        spool.keep.cells = 0;
        spool
    }

    /// Where a queued message's slot is.
    fn at(spool: &Spool, id: &str) -> Location {
        match spool.slots().live.get(id).expect("queued") {
            Place::Cell(k) => Location {
                path: spool.queue.join(CELLS_FILE),
                base: k * CELL,
            },
            Place::File(slot) => Location {
                path: spool.slot_path(slot.n),
                base: 0,
            },
        }
    }

    fn read_slot(at: &Location, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        let n = slot::read_full_at(&File::open(&at.path).unwrap(), &mut bytes, at.base).unwrap();
        bytes.truncate(n);
        bytes
    }

    fn write_slot(at: &Location, bytes: &[u8]) {
        let file = OpenOptions::new().write(true).open(&at.path).unwrap();
        file.write_all_at(bytes, at.base).unwrap();
    }

    fn holds(at: &Location, id: &str) -> bool {
        slot::holds(&File::open(&at.path).unwrap(), at.base, id).unwrap()
    }

    fn queue_files(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root.join("queue"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn corrupt_files(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root.join("corrupt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn commit_recover_update_remove() {
        let root = temp_dir("spool");
        let spool = Spool::open(&root).unwrap();
        let e = commit(&spool, b"Subject: hi\r\n\r\nbody\r\n");
        // One cell: header, message, envelope.
        let place = at(&spool, &e.id);
        assert_eq!(place.path, root.join("queue/cells"));
        let stored = read_slot(&place, CELL as usize);
        assert!(stored.starts_with(format!("mxrelay-slot 1 L {} 21 ", e.id).as_bytes()));
        assert_eq!(
            &stored[HEADER_LEN..HEADER_LEN + 21],
            b"Subject: hi\r\n\r\nbody\r\n"
        );
        let end = HEADER_LEN + 21 + e.encode().len();
        assert_eq!(&stored[HEADER_LEN + 21..end], &e.encode()[..]);
        // An unfinished message is a free slot; stray and damaged files are quarantined.
        let mut stray = spool.create();
        stray.write_all(&[b'p'; 100_000]).unwrap();
        drop(stray);
        fs::write(root.join("queue/notes.txt"), b"?").unwrap();
        fs::write(
            root.join("queue/0000000000000002-0000.env"),
            b"version: 1\n",
        )
        .unwrap();
        let other = commit(&spool, b"Subject: other\r\n\r\nx\r\n");
        let other_at = at(&spool, &other.id);
        let mut bytes = read_slot(&other_at, HEADER_LEN + 4);
        bytes[HEADER_LEN + 3] ^= 1;
        write_slot(&other_at, &bytes);
        let spool = Spool::open(&root).unwrap();
        let got = spool.recover().unwrap();
        assert_eq!(got, vec![e.clone()]);
        assert!(root.join("corrupt/notes.txt").exists());
        assert!(root.join("corrupt/0000000000000002-0000.env").exists());
        let cell = format!("cell-{}", other_at.base / CELL);
        let reason = fs::read_to_string(root.join(format!("corrupt/{cell}.reason"))).unwrap();
        assert!(reason.contains("checksum"), "{reason}");
        let kept = fs::read(root.join(format!("corrupt/{cell}"))).unwrap();
        assert!(kept.starts_with(&bytes), "the damaged cell is kept");
        assert!(!holds(&other_at, &other.id), "its cell is free");
        assert_eq!(spool.read_headers(&e, 1000).unwrap(), b"Subject: hi\r\n");
        // A newer envelope overrides the first one, for recovery and for the queue commands.
        let mut updated = e.clone();
        updated.attempts = 3;
        updated.recipients[0].state = RcptState::Delivered;
        spool.update(&updated).unwrap();
        assert_eq!(spool.recover().unwrap(), vec![updated.clone()]);
        assert_eq!(
            list(&root.join("queue")).unwrap(),
            vec![(place.clone(), updated.clone())]
        );
        // Removed: the cell is marked free and reused for the next message, no file created.
        assert!(holds(&place, &e.id));
        spool.remove(&updated, true).unwrap();
        spool.mark_freed_cells(Duration::ZERO);
        assert!(!holds(&place, &e.id));
        assert!(!root.join(format!("queue/{}.env", e.id)).exists());
        assert!(list(&root.join("queue")).unwrap().is_empty());
        let before = queue_files(&root);
        let e2 = commit(&spool, b"y");
        assert_eq!(queue_files(&root), before);
        assert_eq!(at(&spool, &e2.id), place, "the lowest free cell");
        assert_eq!(spool.read_headers(&e2, 1000).unwrap(), b"y");
        assert_eq!(Spool::open(&root).unwrap().recover().unwrap(), vec![e2]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_message_that_fits_a_cell_gets_one_and_a_larger_one_a_slot_file() {
        let root = temp_dir("cells");
        let mut spool = Spool::open(&root).unwrap();
        spool.keep.cells = 2;
        let mut probe = env(&id::new_id());
        probe.size = 200_000; // as many digits as the sizes below
        let room = CELL as usize - HEADER_LEN - probe.encode().len();
        let fits = commit(&spool, &vec![b'f'; room]);
        let larger = commit(&spool, &vec![b'l'; room + 1]);
        assert_eq!(at(&spool, &fits.id).path, root.join("queue/cells"));
        assert_eq!(at(&spool, &larger.id).base, 0);
        assert_ne!(at(&spool, &larger.id).path, root.join("queue/cells"));
        // Past the number of cells, small messages get slot files too.
        let second = commit(&spool, b"second");
        let third = commit(&spool, b"third");
        assert_eq!(at(&spool, &second.id).base, CELL);
        assert_ne!(at(&spool, &third.id).path, root.join("queue/cells"));
        assert_eq!(queue_files(&root), ["0", "1", "cells"]);
        let mut read = Vec::new();
        let stored = spool.message_file(&fits.id).unwrap();
        std::io::Read::read_to_end(
            &mut slot::MessageReader::new(&stored.file, stored.base, fits.size),
            &mut read,
        )
        .unwrap();
        assert_eq!(read, vec![b'f'; room]);
        let all = vec![fits, larger, second, third];
        let mut sorted = all.clone();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(Spool::open(&root).unwrap().recover().unwrap(), sorted);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_freed_cell_is_marked_after_a_moment_unless_reused_first() {
        let root = temp_dir("marks");
        let spool = Spool::open(&root).unwrap();
        let (a, b) = (commit(&spool, b"a"), commit(&spool, b"b"));
        let (a_at, b_at) = (at(&spool, &a.id), at(&spool, &b.id));
        spool.remove(&a, false).unwrap();
        spool.remove(&b, false).unwrap();
        // Not yet: a crash now would bring both back.
        let due = spool.mark_freed_cells(Duration::from_secs(60));
        assert!(due.is_some_and(|d| d > Duration::from_secs(59)), "{due:?}");
        assert!(holds(&a_at, &a.id) && holds(&b_at, &b.id));
        // b's cell is reused first: its new message must never get the old one's mark.
        let c = commit(&spool, b"c");
        assert_eq!(at(&spool, &c.id), b_at);
        assert_eq!(spool.mark_freed_cells(Duration::ZERO), None);
        assert!(!holds(&a_at, &a.id), "marked free");
        assert!(holds(&b_at, &c.id), "the reused cell keeps its new message");
        // At shutdown nothing will mark them later: from then on a freed cell is marked at once.
        spool.mark_freed_cells_at_once();
        let d = commit(&spool, b"d");
        let d_at = at(&spool, &d.id);
        spool.remove(&d, false).unwrap();
        assert!(!holds(&d_at, &d.id));
        assert_eq!(Spool::open(&root).unwrap().recover().unwrap(), vec![c]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_cell_whose_commit_failed_is_reused() {
        let root = temp_dir("cell-fails");
        let spool = Spool::open(&root).unwrap();
        // No queue/ to open the cells file in: the commit fails, and its cell goes back.
        fs::rename(root.join("queue"), root.join("away")).unwrap();
        let mut inc = spool.create();
        inc.write_all(b"lost").unwrap();
        let mut e = env(&inc.id.clone());
        e.size = 4;
        assert!(spool.commit(inc, &e).is_err());
        assert_eq!(spool.slots().free_cells, [0]);
        assert!(spool.slots().unmarked.contains_key(&0));
        fs::rename(root.join("away"), root.join("queue")).unwrap();
        let next = commit(&spool, b"next");
        assert_eq!(at(&spool, &next.id).base, 0);
        assert_eq!(Spool::open(&root).unwrap().recover().unwrap(), vec![next]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn freed_cells_are_cut_back_while_the_cells_keep_more_than_their_budget() {
        use std::os::unix::fs::MetadataExt;
        let root = temp_dir("cut");
        let mut spool = Spool::open(&root).unwrap();
        spool.keep.cell_bytes = 250_000;
        let msgs: Vec<Envelope> = (0..3).map(|_| commit(&spool, &[b'c'; 100_000])).collect();
        let allocated = || fs::metadata(root.join("queue/cells")).unwrap().blocks() * 512;
        assert!(allocated() >= 300_000, "{}", allocated());
        for e in &msgs {
            spool.remove(e, false).unwrap();
        }
        // Reused at once, a freed cell keeps its blocks; one that stays free is cut back to
        // 64 KiB while the cells keep more than their budget: two of the three here.
        let each = (HEADER_LEN + 100_000 + msgs[0].encode().len()) as u64;
        assert_eq!(spool.slots().extent_total, 3 * each);
        spool.mark_freed_cells(Duration::ZERO);
        let extents = spool.slots().extents.clone();
        assert_eq!(extents.iter().filter(|&&e| e == CELL_KEPT).count(), 2);
        assert!(extents.iter().any(|&e| e > 100_000));
        let total = spool.slots().extent_total;
        assert_eq!(total, spool.slots().extents.iter().sum::<u64>());
        assert!(total <= 250_000, "{total}");
        assert!(allocated() <= total + 8192, "{} > {total}", allocated());
        // A cut cell still takes a message of any size that fits.
        let again = commit(&spool, &[b'd'; 150_000]);
        assert_eq!(Spool::open(&root).unwrap().recover().unwrap(), vec![again]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_discarded_cell_is_reused_only_after_a_restart() {
        let root = temp_dir("discard");
        let spool = Spool::open(&root).unwrap();
        let a = commit(&spool, b"a");
        let a_at = at(&spool, &a.id);
        spool.discard(&a.id).unwrap();
        assert!(!holds(&a_at, &a.id), "marked free on disk");
        // A delivery may still read it: the next message takes another cell.
        let b = commit(&spool, b"b");
        assert_ne!(at(&spool, &b.id), a_at);
        let spool = Spool::open(&root).unwrap();
        assert_eq!(spool.recover().unwrap(), vec![b]);
        let c = commit(&spool, b"c");
        assert_eq!(at(&spool, &c.id), a_at);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_message_in_a_cell_and_in_a_slot_file_is_recovered_once() {
        let root = temp_dir("twice");
        let spool = Spool::open(&root).unwrap();
        let e = commit(&spool, b"twice");
        let copy = read_slot(&at(&spool, &e.id), CELL as usize);
        fs::write(root.join("queue/7"), &copy).unwrap();
        let spool = Spool::open(&root).unwrap();
        assert_eq!(spool.recover().unwrap(), vec![e.clone()]);
        assert_eq!(
            corrupt_files(&root),
            [
                format!("{}.slot-7", e.id),
                format!("{}.slot-7.reason", e.id)
            ]
        );
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
            vec![b'M'; 270_000],
            b"end\r\n".to_vec(),
        ];
        let mut inc = spool.create();
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
        let s = spool.message_file(&e.id).unwrap();
        std::io::Read::read_to_end(
            &mut slot::MessageReader::new(&s.file, s.base, e.size),
            &mut stored,
        )
        .unwrap();
        assert_eq!(stored, whole);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_crash_while_a_slot_is_reused_is_caught_by_the_checksum() {
        for cells in [true, false] {
            let root = temp_dir("torn");
            let open = || match cells {
                true => Spool::open(&root).unwrap(),
                false => without_cells(&root),
            };
            let spool = open();
            let x = commit(&spool, &[b'x'; 5000]);
            let place = at(&spool, &x.id);
            let old = read_slot(&place, HEADER_LEN + 6000);
            spool.remove(&x, false).unwrap();
            // The freeing byte never reached the disk: the message comes back (a duplicate).
            write_slot(&place, &old);
            assert_eq!(open().recover().unwrap(), vec![x.clone()]);
            // The slot is being reused when the crash comes: old header, part new content.
            let spool = open();
            spool.recover().unwrap();
            spool.remove(&x, false).unwrap();
            let y = commit(&spool, &[b'y'; 3000]);
            assert_eq!(at(&spool, &y.id), place);
            let mut torn = read_slot(&place, HEADER_LEN + 3000);
            torn[..HEADER_LEN].copy_from_slice(&old[..HEADER_LEN]);
            write_slot(&place, &torn);
            let spool = open();
            assert!(spool.recover().unwrap().is_empty());
            assert_eq!(corrupt_files(&root).len(), 2, "cells: {cells}");
            fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn free_slots_are_kept_within_their_count_bytes_and_open_files() {
        let root = temp_dir("keep");
        let mut spool = without_cells(&root);
        spool.keep = Keep {
            cells: 0,
            cell_bytes: 0,
            slots: 2,
            bytes: 8_000,
            open: 1,
        };
        let msgs: Vec<Envelope> = (0..3).map(|_| commit(&spool, &[b'k'; 5000])).collect();
        let paths: Vec<PathBuf> = msgs.iter().map(|e| at(&spool, &e.id).path).collect();
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
        for cells in [true, false] {
            let root = temp_dir("short");
            let spool = match cells {
                true => Spool::open(&root).unwrap(),
                false => without_cells(&root),
            };
            let e = commit(&spool, &[b's'; 3000]);
            let place = at(&spool, &e.id);
            OpenOptions::new()
                .write(true)
                .open(&place.path)
                .unwrap()
                .set_len(1000)
                .unwrap();
            let spool = Spool::open(&root).unwrap();
            assert!(spool.recover().unwrap().is_empty());
            let name = match cells {
                true => "cell-0".to_string(),
                false => format!("slot-{}", place.path.file_name().unwrap().to_string_lossy()),
            };
            let reason = fs::read_to_string(root.join(format!("corrupt/{name}.reason"))).unwrap();
            assert!(reason.contains("shorter than its header says"), "{reason}");
            fs::remove_dir_all(root).unwrap();
        }
    }

    #[test]
    fn big_slots_are_kept_without_their_blocks_and_reused_last() {
        let root = temp_dir("big");
        let spool = without_cells(&root);
        let big = commit(&spool, &vec![b'b'; 300_000]);
        let small = commit(&spool, b"small");
        let (big_path, small_path) = (at(&spool, &big.id).path, at(&spool, &small.id).path);
        spool.remove(&big, false).unwrap();
        spool.remove(&small, false).unwrap();
        assert_eq!(fs::metadata(&big_path).unwrap().len(), 0);
        let next = commit(&spool, b"next");
        assert_eq!(
            at(&spool, &next.id).path,
            small_path,
            "a slot with blocks first"
        );
        let last = commit(&spool, b"last");
        assert_eq!(at(&spool, &last.id).path, big_path, "then the emptied one");
        assert_eq!(
            Spool::open(&root).unwrap().recover().unwrap(),
            vec![next, last]
        );
        fs::remove_dir_all(root).unwrap();
    }
}
