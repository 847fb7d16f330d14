//! Where new messages go: free cells first, new cells past the end of the cells file, and
//! slot files for messages too large for a cell; what a removed message's slot becomes
//! (reused, cut back, or deleted past the numbers kept); and the free marks of cells.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{CELL, Spool, slot};

/// Disk space the cells may keep: past it, a cell that stays free is cut back to `CELL_KEPT`,
/// or to nothing if it used no more than that (a hole punched; see `Spool::mark_freed_cells`).
const CELL_BYTES: u64 = 64 << 20;
pub(super) const CELL_KEPT: u64 = 64 * 1024;
/// Descriptors of the cells file kept open for synced writes (see `Spool::cell_writers`).
pub const MAX_CELL_WRITERS: usize = 64;
/// Free slot files kept for reuse; more are deleted.
const FREE_SLOTS: usize = 256;
/// Disk space the free slot files may keep; past it, released slots are cut to nothing.
const FREE_BYTES: u64 = 64 << 20;
/// Free slot files that stay open (the ones reused first).
const OPEN_FREE_SLOTS: usize = 32;
/// A slot file larger than this (it held a big message) is cut to nothing when freed.
const MAX_KEPT_SIZE: u64 = 1 << 20;

/// The limits above (tests use smaller numbers).
pub struct Keep {
    /// Cells at most; past that, messages get slot files.
    pub cells: u64,
    pub cell_bytes: u64,
    pub slots: usize,
    pub bytes: u64,
    pub open: usize,
}

impl Default for Keep {
    fn default() -> Keep {
        Keep {
            cells: u32::MAX as u64,
            cell_bytes: CELL_BYTES,
            slots: FREE_SLOTS,
            bytes: FREE_BYTES,
            open: OPEN_FREE_SLOTS,
        }
    }
}

pub struct Alloc {
    /// Free cells, reused last-in first-out (from the back).
    pub free_cells: Vec<u32>,
    /// Cells so far (the next new cell's number).
    pub cells: u64,
    /// Cells freed lately (marked free if they are not yet, and cut back, by
    /// `mark_freed_cells`, unless reused first).
    pub freed: HashMap<u32, Freed>,
    /// How far into each cell something was written (what its blocks may cover), and the
    /// sum: see `CELL_BYTES`.
    pub extents: Vec<u32>,
    pub extent_total: u64,
    /// Free slot files, reused last-in first-out (from the back), so few stay in use; slots
    /// cut to nothing wait at the front, to be reused last.
    pub free: VecDeque<Slot>,
    /// The sum of the free slot files' sizes.
    pub free_bytes: u64,
    /// The next slot file number to try.
    pub next: u32,
}

/// A cell freed lately: since when, and whether its free mark is on disk yet.
pub struct Freed {
    at: Instant,
    marked: bool,
}

/// A free slot file's number and, for the first few, the file kept open.
pub struct Slot {
    pub n: u32,
    pub file: Option<Arc<File>>,
    /// The file's length.
    pub size: u64,
}

/// A slot file being written.
pub struct Writing {
    pub n: u32,
    pub file: Arc<File>,
    /// The file's length (as it was, or as far as this message has written).
    pub len: u64,
    /// Created for this message: its directory entry still needs an fsync.
    pub created: bool,
}

impl Alloc {
    /// `existing` cells are in the file already: recovery hands back the free ones.
    pub fn new(existing: u64) -> Alloc {
        Alloc {
            free_cells: Vec::new(),
            cells: existing,
            freed: HashMap::new(),
            // Not known: assume the worst.
            extents: vec![CELL as u32; existing as usize],
            extent_total: existing * CELL,
            free: VecDeque::new(),
            free_bytes: 0,
            next: 0,
        }
    }

    /// Something was written into cell `k` up to `end`.
    pub fn extend_cell(&mut self, k: u32, end: u64) {
        let old = self.extents[k as usize] as u64;
        if end > old {
            self.extents[k as usize] = end as u32;
            self.extent_total += end - old;
        }
    }
}

impl Spool {
    /// A free cell, or a new one while there may be more; `None` when every cell is taken.
    pub(super) fn take_cell(&self) -> Option<u32> {
        let mut a = self.alloc();
        if let Some(k) = a.free_cells.pop() {
            a.freed.remove(&k);
            return Some(k);
        }
        (a.cells < self.keep.cells).then(|| {
            a.cells += 1;
            a.extents.push(0);
            (a.cells - 1) as u32
        })
    }

    /// A free slot file, or a new one.
    pub(super) fn take_slot(&self) -> io::Result<Writing> {
        let reused = {
            let mut a = self.alloc();
            let top = a.free.pop_back();
            if let Some(slot) = &top {
                a.free_bytes -= slot.size;
            }
            top
        };
        let Some(Slot { n, file, size }) = reused else {
            return self.new_slot();
        };
        let file = match file {
            Some(f) => f,
            None => match self.open_slot(n) {
                Ok(f) => Arc::new(f),
                Err(e) => {
                    log::warn!("spool: slot {n} is gone ({e}); making a new one");
                    return self.new_slot();
                }
            },
        };
        Ok(Writing {
            n,
            file,
            len: size,
            created: false,
        })
    }

    fn new_slot(&self) -> io::Result<Writing> {
        loop {
            let n = {
                let mut a = self.alloc();
                a.next += 1;
                a.next - 1
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
                // Queued, or not looked at by recovery yet: skip the number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Marks slot file `n` free and puts it back for reuse. One that cannot be marked free
    /// is deleted rather than reused: a crash would bring its message back.
    pub(super) fn free_slot_file(&self, n: u32) -> io::Result<()> {
        let marked = self.open_slot(n).and_then(|f| {
            f.write_all_at(b"F", slot::STATE_AT)?;
            let size = f.metadata()?.len();
            Ok((f, size))
        });
        match marked {
            Ok((f, size)) => {
                self.release(Slot {
                    n,
                    file: Some(Arc::new(f)),
                    size,
                });
                Ok(())
            }
            Err(e) => {
                self.delete_slot(n);
                Err(e)
            }
        }
    }

    /// Puts a slot file back for reuse. One that is large, or over the byte budget, is cut to
    /// nothing first: the file is kept (making one costs an inode allocation and a directory
    /// fsync), its blocks are not. Deleted past the number of free slots kept.
    pub(super) fn release(&self, mut slot: Slot) {
        let keep_blocks =
            slot.size <= MAX_KEPT_SIZE && self.alloc().free_bytes + slot.size <= self.keep.bytes;
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
        let mut a = self.alloc();
        if a.free.len() >= self.keep.slots {
            drop(a);
            return self.delete_slot(slot.n);
        }
        if a.free.len() >= self.keep.open {
            slot.file = None;
        }
        a.free_bytes += slot.size;
        if slot.size > 0 {
            a.free.push_back(slot);
        } else {
            a.free.push_front(slot);
        }
    }

    pub(super) fn delete_slot(&self, n: u32) {
        if let Err(e) = fs::remove_file(self.slot_path(n)) {
            log::warn!("spool: cannot delete slot {n}: {e}");
        }
    }

    /// Cuts a free cell back to `CELL_KEPT` while the cells keep more than `CELL_BYTES`.
    fn trim_cell(&self, a: &mut Alloc, k: u32) {
        let extent = a.extents[k as usize] as u64;
        if extent == 0 || a.extent_total <= self.keep.cell_bytes {
            return;
        }
        // A large one keeps what most messages need; small ones (after a long queue of small
        // messages drained) give back everything.
        let keep = if extent > CELL_KEPT { CELL_KEPT } else { 0 };
        // SAFETY: fallocate on an open file, within the cell.
        let rc = unsafe {
            libc::fallocate(
                self.cells.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (k as u64 * CELL + keep) as libc::off_t,
                (CELL - keep) as libc::off_t,
            )
        };
        if rc != 0 {
            log::debug!("spool: cannot cut cell {k}: {}", io::Error::last_os_error());
            return;
        }
        a.extents[k as usize] = keep as u32;
        a.extent_total -= extent - keep;
    }

    /// Puts back a cell that holds no queued message. Its header on disk may still say live:
    /// the free mark follows unless the cell is reused first (`mark_freed_cells`), or at once
    /// (`mark_now`, or after `mark_freed_cells_at_once`). Reused unmarked, the next commit
    /// overwrites it.
    pub(super) fn free_cell(&self, k: u32, mark_now: bool) {
        let mut a = self.alloc();
        let marked =
            (mark_now || self.marks_at_once.load(Ordering::SeqCst)) && self.mark_free_or_warn(k);
        // Marked or not, it may be cut back later if it stays free.
        let at = Instant::now();
        a.freed.insert(k, Freed { at, marked });
        a.free_cells.push(k);
    }

    /// Sets cell `k` aside after its sync failed. The kernel may have dropped the pages that
    /// did not reach the disk, or kept them marked clean, so neither the disk nor the page
    /// cache can be trusted for the cell ("fsyncgate"). It is marked free (unsynced: if the
    /// mark is lost as well, recovery finds the whole message, sent again, or a checksum that
    /// fails, quarantined; never part of a message) and not reused before the next start, so
    /// that a bad spot of the disk does not fail every next message too.
    pub(super) fn retire_cell(&self, k: u32, e: &io::Error) {
        log::error!("spool: sync of cell {k} failed ({e}); the cell is set aside until restart");
        self.mark_free_or_warn(k);
    }

    /// Free cells found by recovery, for reuse (lowest first).
    pub(super) fn add_free_cells(&self, mut cells: Vec<u32>) {
        cells.reverse();
        let mut a = self.alloc();
        cells.append(&mut a.free_cells);
        a.free_cells = cells;
    }

    /// Marks cell `k` free on disk; false (and a warning) if that failed.
    fn mark_free_or_warn(&self, k: u32) -> bool {
        match self.mark_cell_free(k) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("spool: cannot mark cell {k} free: {e}");
                false
            }
        }
    }

    /// Marks cell `k` free on disk (unsynced).
    pub(super) fn mark_cell_free(&self, k: u32) -> io::Result<()> {
        self.cells
            .write_all_at(b"F", k as u64 * CELL + slot::STATE_AT)
    }

    /// Writes the free mark of every cell freed at least `after` ago and not reused since;
    /// returns how long until the next one is due. Until its mark is written, a crash brings
    /// a freed cell's message back (delivered again: a duplicate, never a loss).
    /// A cell marked free is also cut back, if the cells keep more than `CELL_BYTES`: the
    /// cells reused at once, as they are under load, keep their blocks.
    pub fn mark_freed_cells(&self, after: Duration) -> Option<Duration> {
        let mut a = self.alloc();
        let mut next: Option<Duration> = None;
        let mut due = Vec::new();
        a.freed.retain(|&k, freed| {
            let waited = freed.at.elapsed();
            if waited < after {
                next = Some(next.map_or(after - waited, |n| n.min(after - waited)));
                return true;
            }
            due.push((k, freed.marked));
            false
        });
        for (k, marked) in due {
            if !marked {
                self.mark_free_or_warn(k);
            }
            self.trim_cell(&mut a, k);
        }
        next
    }

    /// For shutdown, when nothing will call `mark_freed_cells` any more: marks the freed
    /// cells now, and any freed from now on at once.
    pub fn mark_freed_cells_at_once(&self) {
        self.marks_at_once.store(true, Ordering::SeqCst);
        self.mark_freed_cells(Duration::ZERO);
    }
}
