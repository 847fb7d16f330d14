//! One webhook's outbox on disk: events waiting for its receiver, in order.
//!
//! A directory of append-only segment files (`0000000000000001.seg`, ...) and an `offset`
//! file saying how far the receiver has taken them. A record is a 16-byte header (payload
//! length u32, CRC-32 of time and payload u32, enqueue time in unix ms u64, little endian)
//! and the payload (one JSON event). The events writer thread appends ([`Writer`]), one
//! sender thread reads and commits ([`Reader`]); they share only the end of what is written
//! and the backlog counts ([`Shared`]).
//!
//! Each start writes a new segment, so a record torn by a crash stays at the end of an old
//! segment, where the reader stops at the bad CRC and goes on with the next segment.
//! Segments the offset has passed are deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::spool::fsio;

/// A segment is closed and a new one started past this size.
const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
const HEADER: usize = 16;
/// A payload longer than this is not an event of ours: the record is corrupt.
const MAX_PAYLOAD: u32 = 16 * 1024 * 1024;

/// A place in the outbox: segment number and byte offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub seg: u64,
    pub at: u64,
}

/// What the writer and the reader share.
#[derive(Default)]
pub struct Progress {
    /// The end of what is written (records before it are whole).
    pub end: Pos,
    /// Events and bytes written and not yet taken.
    pub events: u64,
    pub bytes: u64,
    pub stopping: bool,
}

pub struct Shared {
    pub progress: Mutex<Progress>,
    /// Signalled when records are written or the senders should stop.
    pub changed: Condvar,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps for `d` unless told to stop (true then); new records do not wake it.
    pub fn pause(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        let mut guard = self.lock();
        loop {
            let now = std::time::Instant::now();
            if guard.stopping || now >= deadline {
                return guard.stopping;
            }
            guard = self
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` for records past `seen` (returns at once if there are); true
    /// when stopping.
    pub fn wait_past(&self, seen: Pos, timeout: Duration) -> bool {
        let guard = self.lock();
        if guard.stopping || guard.end != seen {
            return guard.stopping;
        }
        let (guard, _) = self
            .changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|e| e.into_inner());
        guard.stopping
    }

    pub fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }
}

fn seg_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("{seg:016x}.seg"))
}

/// The segment numbers in `dir`, ascending.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(hex) = name.strip_suffix(".seg")
            && hex.len() == 16
            && let Ok(n) = u64::from_str_radix(hex, 16)
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn crc(time: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&time.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// One record, ready to append.
pub fn record(time_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER + payload.len());
    r.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    r.extend_from_slice(&crc(time_ms, payload).to_le_bytes());
    r.extend_from_slice(&time_ms.to_le_bytes());
    r.extend_from_slice(payload);
    r
}

/// Reads the record at the reader's position: `Ok(None)` at the end of the file or at a
/// torn or corrupt record (nothing more can be trusted in this segment).
fn read_record(r: &mut impl Read) -> io::Result<Option<(u64, Vec<u8>)>> {
    let mut h = [0u8; HEADER];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
    let sum = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let time = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    match r.read_exact(&mut payload) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if crc(time, &payload) != sum {
        return Ok(None);
    }
    Ok(Some((time, payload)))
}

const OFFSET_FILE: &str = "offset";

fn read_offset(dir: &Path) -> Option<Pos> {
    let b = fs::read(dir.join(OFFSET_FILE)).ok()?;
    if b.len() != 20 {
        return None;
    }
    let seg = u64::from_le_bytes(b[0..8].try_into().ok()?);
    let at = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let sum = u32::from_le_bytes(b[16..20].try_into().ok()?);
    (crc32fast::hash(&b[..16]) == sum).then_some(Pos { seg, at })
}

/// Replaces the offset file (written, synced, renamed into place).
fn write_offset(dir: &Path, pos: Pos) -> io::Result<()> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&pos.seg.to_le_bytes());
    b.extend_from_slice(&pos.at.to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
    let tmp = dir.join("offset.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&b)?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join(OFFSET_FILE))
}

/// Opens (creating) the outbox in `dir`: the writer starts a new segment, the reader
/// resumes at the saved offset. The backlog's bytes are known at once; its events are
/// counted by [`Reader::count`].
pub fn open(dir: &Path) -> io::Result<(Writer, Reader, Arc<Shared>)> {
    open_sized(dir, SEGMENT_SIZE)
}

fn open_sized(dir: &Path, segment_size: u64) -> io::Result<(Writer, Reader, Arc<Shared>)> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let segs = segments(dir)?;
    let first = segs.first().copied();
    let saved = read_offset(dir);
    if saved.is_none() && dir.join(OFFSET_FILE).exists() {
        log::warn!(
            "webhooks: {}: offset file unreadable; resending from the oldest segment",
            dir.display()
        );
    }
    let read = match (saved, first) {
        (Some(p), Some(f)) if p.seg < f => Pos { seg: f, at: 0 },
        (Some(p), _) => p,
        (None, Some(f)) => Pos { seg: f, at: 0 },
        (None, None) => Pos { seg: 1, at: 0 },
    };
    let mut bytes = 0;
    for &s in &segs {
        if s < read.seg {
            let _ = fs::remove_file(seg_path(dir, s));
            continue;
        }
        let len = fs::metadata(seg_path(dir, s))?.len();
        bytes += if s == read.seg {
            len.saturating_sub(read.at)
        } else {
            len
        };
    }
    let seg = segs.last().copied().unwrap_or(0).max(read.seg) + 1;
    let file = create_segment(dir, seg)?;
    let shared = Arc::new(Shared {
        progress: Mutex::new(Progress {
            end: Pos { seg, at: 0 },
            events: 0,
            bytes,
            stopping: false,
        }),
        changed: Condvar::new(),
    });
    let writer = Writer {
        dir: dir.to_path_buf(),
        segment_size,
        file,
        at: Pos { seg, at: 0 },
        pending: (0, 0),
        unsynced: false,
        shared: shared.clone(),
    };
    let reader = Reader {
        dir: dir.to_path_buf(),
        committed: read,
        found_end: Pos { seg, at: 0 },
        file: None,
        shared: shared.clone(),
    };
    Ok((writer, reader, shared))
}

fn create_segment(dir: &Path, seg: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(seg_path(dir, seg))?;
    fsio::sync_dir(dir)?;
    Ok(f)
}

/// The appending side, owned by the events writer thread.
pub struct Writer {
    dir: PathBuf,
    segment_size: u64,
    file: File,
    at: Pos,
    /// Events and bytes appended since the last `publish`.
    pending: (u64, u64),
    unsynced: bool,
    shared: Arc<Shared>,
}

impl Writer {
    /// The bytes waiting (written and not taken), as the reader last left them.
    pub fn backlog_bytes(&self) -> u64 {
        self.shared.lock().bytes + self.pending.1
    }

    /// Appends one record.
    pub fn append(&mut self, rec: &[u8]) -> io::Result<()> {
        if self.at.at >= self.segment_size {
            self.file.sync_data()?;
            let seg = self.at.seg + 1;
            self.file = create_segment(&self.dir, seg)?;
            self.at = Pos { seg, at: 0 };
        }
        // At its place rather than appended: a record cut short (a full disk) is cut off, or
        // else written over by the next one, and never stays in front of it, where the reader
        // would stop.
        if let Err(e) = fsio::write_all_at(&self.file, rec, self.at.at) {
            let _ = self.file.set_len(self.at.at);
            return Err(e);
        }
        self.at.at += rec.len() as u64;
        self.pending.0 += 1;
        self.pending.1 += rec.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// Makes what was appended visible to the reader; returns the number of events.
    pub fn publish(&mut self) -> u64 {
        let (events, bytes) = std::mem::take(&mut self.pending);
        let mut p = self.shared.lock();
        p.end = self.at;
        p.events += events;
        p.bytes += bytes;
        drop(p);
        self.shared.changed.notify_all();
        events
    }

    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }
}

/// Events read for one POST.
#[derive(Default)]
pub struct Batch {
    /// The payloads, in order.
    pub events: Vec<Vec<u8>>,
    /// Records skipped before them for being older than the maximum age.
    pub expired: u64,
    /// Where the reader stands after them.
    pub end: Pos,
    /// Their bytes on disk (headers included), skipped ones too.
    pub bytes: u64,
    /// The end of what was written when it was read.
    pub seen: Pos,
}

/// The reading side, owned by the sender thread.
pub struct Reader {
    dir: PathBuf,
    /// Everything before this was taken by the receiver (or given up on).
    committed: Pos,
    /// The end of what earlier runs left (where this run's writing began).
    found_end: Pos,
    /// The open segment and where its read head is.
    file: Option<(Pos, BufReader<File>)>,
    shared: Arc<Shared>,
}

impl Reader {
    /// Counts the events earlier runs left waiting (once, at start, on the sender's thread;
    /// what this run writes is counted as it is written).
    pub fn count(&mut self) -> io::Result<u64> {
        let end = self.found_end;
        let mut pos = self.committed;
        let mut n = 0;
        loop {
            let batch = self.read(pos, end, 4096, u64::MAX, None)?;
            if batch.events.is_empty() {
                break;
            }
            n += batch.events.len() as u64;
            pos = batch.end;
        }
        self.shared.lock().events += n;
        Ok(n)
    }

    /// The next events after what was committed: up to `max_events` or about `max_bytes`
    /// (at least one), those older than `too_old` (unix ms) at the head skipped and counted.
    /// A batch of only skipped records is returned as such, to be committed at once.
    pub fn next(&mut self, max_events: usize, max_bytes: u64, too_old: u64) -> io::Result<Batch> {
        let end = self.shared.lock().end;
        let mut batch = self.read(self.committed, end, max_events, max_bytes, Some(too_old))?;
        batch.seen = end;
        Ok(batch)
    }

    fn read(
        &mut self,
        from: Pos,
        end: Pos,
        max_events: usize,
        max_bytes: u64,
        too_old: Option<u64>,
    ) -> io::Result<Batch> {
        let mut batch = Batch {
            end: from,
            ..Batch::default()
        };
        let mut pos = from;
        let mut payload_bytes = 0u64;
        while pos < end && batch.events.len() < max_events {
            let limit = if pos.seg == end.seg { end.at } else { u64::MAX };
            let reader = self.seek(pos)?;
            let rec = match reader {
                Some(r) if pos.at < limit => read_record(r)?,
                _ => None,
            };
            let Some((time, payload)) = rec else {
                // The end of this segment (or a torn record): the next one, if any.
                if pos.seg < end.seg {
                    pos = Pos {
                        seg: pos.seg + 1,
                        at: 0,
                    };
                    self.file = None;
                    batch.end = pos;
                    continue;
                }
                break;
            };
            let size = (HEADER + payload.len()) as u64;
            if let Some((p, _)) = &mut self.file {
                p.at += size;
            }
            if batch.events.is_empty() && too_old.is_some_and(|t| time < t) {
                batch.expired += 1;
            } else if batch.expired > 0 {
                // Skipped records go out on their own, so they are committed whatever
                // happens to the next POST. Rewind over this one.
                self.file = None;
                break;
            } else {
                if !batch.events.is_empty() && payload_bytes + payload.len() as u64 > max_bytes {
                    self.file = None;
                    break;
                }
                payload_bytes += payload.len() as u64;
                batch.events.push(payload);
            }
            pos.at += size;
            batch.bytes += size;
            batch.end = pos;
        }
        Ok(batch)
    }

    /// The open segment's reader at `pos`; `None` when the segment file is gone.
    fn seek(&mut self, pos: Pos) -> io::Result<Option<&mut BufReader<File>>> {
        let reuse = matches!(&self.file, Some((p, _)) if *p == pos);
        if !reuse {
            self.file = None;
            let f = match File::open(seg_path(&self.dir, pos.seg)) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut r = BufReader::with_capacity(64 * 1024, f);
            r.seek(SeekFrom::Start(pos.at))?;
            self.file = Some((pos, r));
        }
        Ok(self.file.as_mut().map(|(_, r)| r))
    }

    /// Records that everything before `batch.end` is taken: saves the offset, deletes
    /// segments left behind, lowers the backlog. Returns by how much the event count went
    /// down.
    pub fn commit(&mut self, batch: &Batch) -> io::Result<u64> {
        write_offset(&self.dir, batch.end)?;
        for seg in self.committed.seg..batch.end.seg {
            let _ = fs::remove_file(seg_path(&self.dir, seg));
        }
        self.committed = batch.end;
        let n = batch.events.len() as u64 + batch.expired;
        let mut p = self.shared.lock();
        let before = p.events;
        if p.end == self.committed {
            // Caught up: whatever drifted (torn records) is gone.
            p.events = 0;
            p.bytes = 0;
        } else {
            p.events = p.events.saturating_sub(n);
            p.bytes = p.bytes.saturating_sub(batch.bytes);
        }
        Ok(before - p.events)
    }
}

#[cfg(test)]
mod tests;
