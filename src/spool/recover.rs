//! Recovery at start and the daemon-less listing of the queue.
//!
//! Recovery is in two steps, so that the relay can take new mail while it scans: the first
//! (`begin_recovery`, before the listeners open) only lists `queue/`; the second (`run`,
//! in the background) reads every cell and slot file that was there, checks each message's
//! checksum, hands every committed one to its caller, puts free slots back for reuse, and
//! quarantines what it cannot read. New messages meanwhile go into new cells and new slot
//! files, which the scan never looks at. The scan is linear in the size of the queue.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::alloc::Slot;
use super::{
    CELL, CELLS_FILE, Envelope, Place, SlotRef, Spool, fsio, id, layout, read_state, slot,
};

/// What recovery found in `queue/` at start, to be scanned.
pub struct Recovery {
    cells: u64,
    files: Vec<(u32, PathBuf)>,
    /// `<id>.env` files of earlier versions: newer envelopes that override the slot's.
    legacy: HashMap<String, PathBuf>,
}

/// A committed message found by recovery, with its newest state.
pub struct Found {
    pub env: Envelope,
    pub place: Place,
}

/// Where a queued message's slot is, for readers without the daemon (`queue show`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub base: u64,
}

impl Spool {
    /// Empties `tmp/` and lists what `queue/` holds; quick, whatever the queue's size.
    pub fn begin_recovery(&self) -> io::Result<Recovery> {
        for entry in fs::read_dir(&self.tmp)? {
            let path = entry?.path();
            log::info!("spool: removing unfinished {}", path.display());
            fs::remove_file(&path)?;
        }
        let mut files = Vec::new();
        let mut legacy = HashMap::new();
        for entry in fs::read_dir(&self.queue)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == CELLS_FILE {
                continue;
            }
            if let Some(n) = slot::number(&name).and_then(|n| u32::try_from(n).ok()) {
                files.push((n, path));
                continue;
            }
            match name.strip_suffix(".env") {
                Some(id) if id::is_valid(id) => {
                    legacy.insert(id.to_string(), path);
                }
                _ => self.quarantine_file(&path, &name, "unexpected file in queue/")?,
            }
        }
        files.sort_unstable_by_key(|(n, _)| *n);
        self.alloc().next = files.last().map_or(0, |(n, _)| n + 1);
        Ok(Recovery {
            cells: self.alloc().cells,
            files,
            legacy,
        })
    }
}

impl Recovery {
    /// Scans every slot listed at start. `found` gets each committed message and returns
    /// false if it already has one with that id: the second slot is quarantined. Returns
    /// how many messages were found. A slot that cannot be read, or quarantined (a failing
    /// or full disk), is logged and left as it is for the next start, neither sent nor
    /// reused; the scan goes on.
    pub fn run(mut self, spool: &Spool, mut found: impl FnMut(Found) -> bool) -> io::Result<u64> {
        let mut count = 0;
        let mut free = Vec::new();
        let left = |what: &str, e: io::Error| {
            log::error!("spool: {what}: {e}; left as it is until the next start");
        };
        for k in 0..self.cells as u32 {
            let base = k as u64 * CELL;
            let content = match slot::read(&spool.cells, base, Some(CELL), true) {
                Ok(content) => content,
                Err(e) => {
                    left(&format!("cannot read cell {k}"), e);
                    continue;
                }
            };
            match content {
                slot::Content::Free => {}
                slot::Content::Live(env, env_len) => {
                    let place =
                        Place::new(SlotRef::Cell(k), env.size, env_len, env.recipients.len());
                    match self.found(spool, env, place, &mut found) {
                        Ok(Some(true)) => {
                            count += 1;
                            continue;
                        }
                        Ok(Some(false)) => {}
                        Ok(None) => continue,
                        Err(e) => {
                            left(&format!("cannot take up cell {k}"), e);
                            continue;
                        }
                    }
                }
                slot::Content::Damaged(why) => {
                    if let Err(e) = spool.quarantine_cell(k, &format!("cell-{k}"), &why) {
                        left(&format!("cannot quarantine cell {k}"), e);
                        continue;
                    }
                }
            }
            free.push(k);
            if free.len() >= 1024 {
                spool.add_free_cells(std::mem::take(&mut free));
            }
        }
        spool.add_free_cells(free);
        for (n, path) in std::mem::take(&mut self.files) {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let done = match slot::read(&file, 0, None, true) {
                Ok(slot::Content::Free) => file.metadata().map(|m| {
                    spool.release(Slot {
                        n,
                        file: None,
                        size: m.len(),
                    })
                }),
                Ok(slot::Content::Live(env, env_len)) => {
                    let place =
                        Place::new(SlotRef::File(n), env.size, env_len, env.recipients.len());
                    self.found(spool, env, place, &mut found).map(|taken| {
                        if taken == Some(true) {
                            count += 1;
                        }
                    })
                }
                Ok(slot::Content::Damaged(why)) => {
                    spool.quarantine_file(&path, &format!("slot-{n}"), &why)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                left(&format!("slot {n}"), e);
            }
        }
        for (id, path) in self.legacy {
            spool.quarantine_file(&path, &format!("{id}.env"), "envelope without its message")?;
        }
        fsio::sync_dir(&spool.queue)?;
        Ok(count)
    }

    /// One committed message: its newest state applied, handed to `found`. `Some(true)`:
    /// taken; `Some(false)`: a duplicate, quarantined, its slot to be freed; `None`:
    /// quarantined with its slot.
    fn found(
        &mut self,
        spool: &Spool,
        mut env: Envelope,
        place: Place,
        found: &mut impl FnMut(Found) -> bool,
    ) -> io::Result<Option<bool>> {
        let stored = spool.open_message(place)?;
        let mut seq = read_state(&stored.file, stored.base, place.layout, &mut env)?;
        drop(stored);
        if let Some(path) = self.legacy.remove(&env.id) {
            match read_legacy(&path, &env.id) {
                Ok(newer) => {
                    // Recorded in place, then the old file goes.
                    seq += 1;
                    spool.record(place, seq, &newer)?;
                    fs::remove_file(&path)?;
                    env = newer;
                }
                Err(why) => {
                    fs::rename(&path, spool.corrupt.join(format!("{}.env", env.id)))?;
                    spool.quarantine(place, &env.id, &why)?;
                    return Ok(None);
                }
            }
        }
        let id = env.id.clone();
        if found(Found { env, place }) {
            return Ok(Some(true));
        }
        let name = match place.slot {
            SlotRef::Cell(k) => format!("{id}.cell-{k}"),
            SlotRef::File(n) => format!("{id}.slot-{n}"),
        };
        let why = "a second slot with this message";
        match place.slot {
            SlotRef::Cell(k) => {
                spool.quarantine_cell(k, &name, why)?;
                Ok(Some(false))
            }
            SlotRef::File(n) => {
                spool.quarantine_file(&spool.slot_path(n), &name, why)?;
                Ok(None)
            }
        }
    }
}

/// An `<id>.env` file of an earlier version.
fn read_legacy(path: &Path, id: &str) -> Result<Envelope, String> {
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let env = Envelope::decode(&bytes).map_err(|e| format!("newer envelope: {e}"))?;
    if env.id != id {
        return Err("newer envelope: its id does not match its file name".into());
    }
    Ok(env)
}

/// Calls `each` with every queued message in `queue/` as it stands, read-only and without
/// checking checksums, as it goes (for `queue list` on a queue of any size). A slot freed or
/// reused while we look is simply not listed.
pub fn list_each(queue: &Path, mut each: impl FnMut(Location, Envelope)) -> io::Result<()> {
    let mut files = Vec::new();
    let mut legacy = HashSet::new();
    for entry in fs::read_dir(queue)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(n) = slot::number(&name) {
            files.push(n);
        } else if let Some(id) = name.strip_suffix(".env") {
            legacy.insert(id.to_string());
        }
    }
    files.sort_unstable();
    let mut one = |file: &File, path: &Path, base: u64, room: Option<u64>| {
        let Ok(slot::Content::Live(mut env, env_len)) = slot::read(file, base, room, false) else {
            return;
        };
        let layout = layout(env.size, env_len, env.recipients.len());
        if read_state(file, base, layout, &mut env).is_err() {
            return;
        }
        if legacy.contains(&env.id) {
            match read_legacy(&queue.join(format!("{}.env", env.id)), &env.id) {
                Ok(newer) => env = newer,
                Err(_) => return,
            }
        }
        let at = Location {
            path: path.to_path_buf(),
            base,
        };
        each(at, env);
    };
    let cells = queue.join(CELLS_FILE);
    match File::open(&cells) {
        Ok(file) => {
            for k in 0..file.metadata()?.len().div_ceil(CELL) {
                one(&file, &cells, k * CELL, Some(CELL));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for n in files {
        let path = queue.join(n.to_string());
        if let Ok(file) = File::open(&path) {
            one(&file, &path, 0, None);
        }
    }
    Ok(())
}
