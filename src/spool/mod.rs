//! The durable queue on disk.
//!
//! Layout:
//! - `queue/cells`: one file of fixed-size cells, each a slot (format in `slot`) for a message
//!   that fits one: most mail. Commits to cells all sync the same file, so the file's times
//!   change, and its inode is written, at most once per clock tick rather than once per
//!   message, and concurrent commits' data goes to the disk together. The file grows with the
//!   queue (only what messages wrote takes disk space); freed cells are reused.
//! - `queue/<n>`: slot files, for messages too large for a cell. A slot file is reused rather
//!   than deleted: creating and deleting a file per message makes ext4 hunt for free inodes
//!   past every recently deleted one, and a directory fsync costs as much as the data.
//! - `corrupt/`: what recovery could not read, with a `.reason` file; never deleted silently.
//! - `tmp/` and `queue/<id>.env`: envelopes written by versions before state records; read
//!   once at recovery, recorded in place and removed.
//!
//! Commit protocol (before the 250): header, message and envelope written into the slot, then
//! fdatasync. A slot file created for this message (none was free) also has its directory
//! entry fsynced (shared by concurrent commits). Retry state goes into the slot's state
//! records (`state`): one write and one fdatasync per change. Freeing a slot after delivery
//! rewrites one byte of its header, unsynced (for a cell, only if the cell is not reused
//! first: see `MARK_FREED_AFTER`): if a crash undoes that, the message is delivered again (a
//! duplicate, never a loss).
//!
//! A commit whose write fails (a full disk) frees what it got, cell or slot file, for reuse;
//! one whose fdatasync fails gives it up, since after a failed fdatasync the pages are not to
//! be trusted: a slot file is deleted, a cell is set aside until the next start. Either way
//! the client is refused (`server::reply_map`) and recovery never takes what was written for
//! a message: its checksum does not match. `space` keeps a reserve free for what is queued.
//!
//! Which message is where is not kept here: the ledger (`delivery::ledger`) holds each
//! message's `Place`, which is all the spool needs to read, update or free it.

mod alloc;
pub mod envelope;
pub mod fsio;
pub mod id;
mod incoming;
mod recover;
pub mod slot;
pub mod space;
pub mod state;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use envelope::{Envelope, Kind, RcptState, Recipient};
pub use incoming::Incoming;
pub use recover::{Location, Recovery, list_each};
use slot::HEADER_LEN;
pub use space::{MinFree, Space};
use state::{Layout, Record};

/// The shared file of cells, in `queue/`.
const CELLS_FILE: &str = "cells";
/// A cell's size: header, message, envelope and state records of a message that fits. A
/// multiple of the page size, so that no two cells share a block. Only what a cell's
/// messages wrote takes disk space.
pub const CELL: u64 = 256 * 1024;
/// How long a freed cell waits for reuse before its free mark is written (`mark_freed_cells`).
/// Reused sooner, as most are under load, the next message's commit overwrites the old
/// header and no mark is written at all; written at once, the mark would ride along with
/// the next commit's fdatasync of the cells file: one more disk write per message.
pub const MARK_FREED_AFTER: Duration = Duration::from_millis(100);

pub struct Spool {
    queue: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    /// The cells file, for reading and for free marks.
    cells: Arc<File>,
    /// Descriptors of the cells file for synced writes, one per write at a time. Linux
    /// reports a write-back error once per open file description: with one shared by all, a
    /// commit could consume the error of a page that belongs to another, which then reports
    /// success for data that never reached the disk. Each descriptor reports every error to
    /// its own next sync.
    cell_writers: Mutex<Vec<File>>,
    /// Set at shutdown: freed cells are marked at once (see `mark_freed_cells_at_once`).
    marks_at_once: AtomicBool,
    alloc: Mutex<alloc::Alloc>,
    queue_sync: fsio::DirSync,
    keep: alloc::Keep,
    space: Space,
}

/// Where a queued message is: its slot and the slot's state records. Small and `Copy`, so
/// an index of a million messages can hold one each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Place {
    slot: SlotRef,
    layout: Layout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SlotRef {
    Cell(u32),
    File(u32),
}

/// A queued message's slot, open for reading: the cells file at its cell, or its own slot
/// file (opened for this reader, closed when the last clone is dropped).
#[derive(Clone, Debug)]
pub struct Stored {
    file: Arc<File>,
    base: u64,
}

impl Stored {
    /// The message's `size` bytes, in order (`head`: the envelope's `head-after-body`).
    pub fn reader(&self, size: u64, head: u64) -> slot::MessageReader<'_> {
        slot::message_reader(&self.file, self.base, size, head)
    }
}

impl Spool {
    /// Opens (creating with owner-only permissions) the spool under `root`. Cells and slot
    /// files already there are left alone until recovery (`begin_recovery`) has looked at
    /// them: new messages go into new cells meanwhile.
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
        let existing = cells.metadata()?.len().div_ceil(CELL);
        Ok(Spool {
            queue_sync: fsio::DirSync::new(&queue),
            space: Space::new(&queue, MinFree::Bytes(0)),
            queue,
            tmp,
            corrupt,
            cells: Arc::new(cells),
            cell_writers: Mutex::default(),
            marks_at_once: AtomicBool::new(false),
            alloc: Mutex::new(alloc::Alloc::new(existing)),
            keep: alloc::Keep::default(),
        })
    }

    /// Keeps `min` free on the spool's filesystem (`--min-free-space`): see `space()`.
    pub fn with_min_free(mut self, min: MinFree) -> Spool {
        self.space = Space::new(&self.queue, min);
        self
    }

    /// The free space on the spool's filesystem, against its reserve.
    pub fn space(&self) -> &Space {
        &self.space
    }

    fn alloc(&self) -> std::sync::MutexGuard<'_, alloc::Alloc> {
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot_path(&self, n: u32) -> PathBuf {
        self.queue.join(n.to_string())
    }

    fn open_slot(&self, n: u32) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.slot_path(n))
    }

    /// The message's slot, open for reading (a delivery opens it for as long as it sends).
    pub fn open_message(&self, place: Place) -> io::Result<Stored> {
        match place.slot {
            SlotRef::Cell(k) => Ok(Stored {
                file: self.cells.clone(),
                base: k as u64 * CELL,
            }),
            SlotRef::File(n) => Ok(Stored {
                file: Arc::new(File::open(self.slot_path(n))?),
                base: 0,
            }),
        }
    }

    /// The message at `place` as it stands: its envelope with the newest state record
    /// applied, and that record's number (0: none yet). Fails with `NotFound` if the slot
    /// does not hold message `id` (free, or another message's), `InvalidData` if it is
    /// damaged.
    pub fn load(&self, place: Place, id: &str) -> io::Result<(Envelope, u32)> {
        let stored = self.open_message(place)?;
        let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
        let room = matches!(place.slot, SlotRef::Cell(_)).then_some(CELL);
        let mut env = match slot::read(&stored.file, stored.base, room, false)? {
            slot::Content::Live(env, _) if env.id == id => env,
            slot::Content::Damaged(why) => return Err(bad(why)),
            _ => {
                let why = "the slot no longer holds this message";
                return Err(io::Error::new(io::ErrorKind::NotFound, why));
            }
        };
        let seq = read_state(&stored.file, stored.base, place.layout, &mut env)?;
        Ok((env, seq))
    }

    /// Records the message's retry state in place as record `seq` (one more than the last),
    /// synced: after this, recovery finds `env` as it is now.
    pub fn record(&self, place: Place, seq: u32, env: &Envelope) -> io::Result<()> {
        let mut batch = self.batch();
        batch.record(place, seq, env)?;
        batch.finish()
    }

    /// Writes a whole slot into cell `k` and syncs it, through a descriptor of the cells file
    /// of this write's own (see `cell_writers`). An error says whether it was the sync that
    /// failed (then the cell is set aside: `retire_cell`).
    fn write_cell(&self, k: u32, slot: &[u8]) -> Result<(), (io::Error, bool)> {
        let fd = self.take_writer().map_err(|e| (e, false))?;
        let written = fsio::write_all_at(&fd, slot, k as u64 * CELL)
            .map_err(|e| (e, false))
            .and_then(|()| fsio::sync_data(&fd).map_err(|e| (e, true)));
        self.put_writer(fd);
        written
    }

    fn take_writer(&self) -> io::Result<File> {
        let kept = self.writers().pop();
        match kept {
            Some(fd) => Ok(fd),
            None => OpenOptions::new()
                .write(true)
                .open(self.queue.join(CELLS_FILE)),
        }
    }

    fn put_writer(&self, fd: File) {
        let mut kept = self.writers();
        if kept.len() < alloc::MAX_CELL_WRITERS {
            kept.push(fd);
        }
    }

    fn writers(&self) -> std::sync::MutexGuard<'_, Vec<File>> {
        self.cell_writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// State records of many messages, written together and synced once (the queue commands
    /// on the whole queue: a million fdatasyncs would take most of an hour).
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            spool: self,
            cells: None,
        }
    }

    /// The header section of a queued message (up to `max` bytes), for DSNs.
    pub fn read_headers(&self, place: Place, len: (u64, u64), max: usize) -> io::Result<Vec<u8>> {
        let stored = self.open_message(place)?;
        slot::read_message_headers(&stored.file, stored.base, len, max)
    }

    /// Removes a finished message: its slot is marked free and reused. Not synced: if a
    /// power loss undoes the removal, the message is delivered again (a duplicate, never a
    /// loss). The mark is written at once, so a crash of the process alone repeats nothing;
    /// see `remove_soon` for the hot path.
    pub fn remove(&self, place: Place) -> io::Result<()> {
        self.free(place, true)
    }

    /// As `remove`, but a cell's free mark waits a moment (see `MARK_FREED_AFTER`): a cell
    /// reused by then needs no mark at all. For messages delivered on their first attempt,
    /// at full speed; a crash within that moment delivers them again.
    pub fn remove_soon(&self, place: Place) -> io::Result<()> {
        self.free(place, false)
    }

    fn free(&self, place: Place, mark_now: bool) -> io::Result<()> {
        match place.slot {
            SlotRef::Cell(k) => {
                self.free_cell(k, mark_now);
                Ok(())
            }
            SlotRef::File(n) => self.free_slot_file(n),
        }
    }

    /// Removes a message that a delivery may still be reading: its slot is not reused, so no
    /// other message can be written where one is still being sent. A slot file is deleted; a
    /// cell is marked free on disk and reused after the next start.
    pub fn discard(&self, place: Place) -> io::Result<()> {
        match place.slot {
            SlotRef::Cell(k) => self.mark_cell_free(k),
            SlotRef::File(n) => fs::remove_file(self.slot_path(n)),
        }
    }

    /// Moves a queued message to `corrupt/` (as `<id>.msg`) and records why (`<id>.reason`).
    pub fn quarantine(&self, place: Place, id: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {id}: {reason}");
        let name = format!("{id}.msg");
        match place.slot {
            SlotRef::File(n) => fs::rename(self.slot_path(n), self.corrupt.join(&name))?,
            SlotRef::Cell(k) => {
                self.copy_cell_out(k, &name)?;
                self.alloc().free_cells.push(k);
            }
        }
        self.record_reason(id, reason)
    }

    fn quarantine_file(&self, path: &Path, name: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {name}: {reason}");
        fs::rename(path, self.corrupt.join(name))?;
        self.record_reason(name, reason)
    }

    fn quarantine_cell(&self, k: u32, name: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {name}: {reason}");
        self.copy_cell_out(k, name)?;
        self.record_reason(name, reason)
    }

    /// Copies cell `k` to `corrupt/<name>` and, once the copy is durable, marks it free.
    fn copy_cell_out(&self, k: u32, name: &str) -> io::Result<()> {
        let mut bytes = vec![0u8; CELL as usize];
        let n = slot::read_full_at(&self.cells, &mut bytes, k as u64 * CELL)?;
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

/// See `Spool::batch`. Until `finish` returns, a crash may undo some of its records.
pub struct Batch<'a> {
    spool: &'a Spool,
    cells: Option<File>,
}

impl Batch<'_> {
    /// Records the message's state in place as record `seq` (one more than the last):
    /// unsynced for a cell until `finish`; a slot file is synced at once (those are few).
    pub fn record(&mut self, place: Place, seq: u32, env: &Envelope) -> io::Result<()> {
        let bytes = Record::of(env, seq).encode(&env.id);
        debug_assert!(bytes.len() <= place.layout.record_len());
        let offset = place.layout.offset(seq);
        let k = match place.slot {
            SlotRef::Cell(k) => k,
            SlotRef::File(n) => {
                let file = self.spool.open_slot(n)?;
                fsio::write_all_at(&file, &bytes, offset)?;
                return fsio::sync_data(&file);
            }
        };
        let fd = match &self.cells {
            Some(fd) => fd,
            None => self.cells.insert(self.spool.take_writer()?),
        };
        fsio::write_all_at(fd, &bytes, k as u64 * CELL + offset)?;
        self.spool
            .alloc()
            .extend_cell(k, offset + bytes.len() as u64);
        Ok(())
    }

    /// Syncs what was recorded.
    pub fn finish(mut self) -> io::Result<()> {
        let Some(fd) = self.cells.take() else {
            return Ok(());
        };
        let synced = fsio::sync_data(&fd);
        self.spool.put_writer(fd);
        synced
    }
}

/// Applies the newest state record of the slot at `base` to `env`; returns its number.
fn read_state(file: &File, base: u64, layout: Layout, env: &mut Envelope) -> io::Result<u32> {
    let len = layout.record_len();
    let mut both = vec![0u8; 2 * len];
    let n = slot::read_full_at(file, &mut both, base + layout.offset(0))?;
    both.truncate(n);
    let (a, b) = both.split_at(n.min(len));
    Ok(match Record::newest([a, b], &env.id) {
        Some(r) if r.apply(env) => r.seq,
        _ => 0,
    })
}

impl Place {
    fn new(slot: SlotRef, msg_len: u64, env_len: u64, rcpts: usize) -> Place {
        Place {
            slot,
            layout: layout(msg_len, env_len, rcpts),
        }
    }
}

/// Where the state records of a slot with this message, envelope and recipients are.
fn layout(msg_len: u64, env_len: u64, rcpts: usize) -> Layout {
    Layout::new(HEADER_LEN as u64 + msg_len + env_len, rcpts)
}

#[cfg(test)]
impl Spool {
    /// Makes the slot's header name another message than its envelope does: damaged.
    pub fn damage_for_tests(&self, place: Place) {
        let other = b"0000000000000000-0000";
        let at = slot::STATE_AT + 2;
        match place.slot {
            SlotRef::Cell(k) => self.cells.write_all_at(other, k as u64 * CELL + at),
            SlotRef::File(n) => self.open_slot(n).unwrap().write_all_at(other, at),
        }
        .unwrap();
    }
}

/// A place for tests of code that only passes places around.
#[cfg(test)]
pub fn test_place() -> Place {
    Place::new(SlotRef::Cell(0), 1, 1, 1)
}

#[cfg(test)]
mod tests;
