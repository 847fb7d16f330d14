//! Recycled spool files. Creating and deleting a file per message makes ext4 hunt for free
//! inodes past every recently deleted one (measured: ~40% of the relay's CPU under load), so
//! finished files are renamed into `free/` and reused for the next message instead.
//!
//! A file taken from the pool still holds old bytes past what the new writer writes: writers
//! set the final length before syncing (`Writer::finish`). Large files are not kept, so the
//! pool never holds much disk.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Files kept for reuse.
const CAPACITY: usize = 2048;
/// Larger files are deleted rather than kept.
const MAX_KEPT_SIZE: u64 = 256 * 1024;

pub struct Pool {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

/// A file being written from the start; `finish` cuts off whatever an earlier use left.
pub struct Writer {
    file: File,
    written: u64,
}

impl Writer {
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Sets the length and makes the content durable (fdatasync: the length is covered).
    pub fn finish(&self) -> io::Result<()> {
        self.file.set_len(self.written)?;
        self.file.sync_data()
    }
}

impl Pool {
    pub fn open(dir: PathBuf) -> io::Result<Pool> {
        let mut free = Vec::new();
        let mut next = 0;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if let Some(n) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u64>().ok())
            {
                next = next.max(n + 1);
                free.push(path);
            }
        }
        Ok(Pool {
            dir,
            free: Mutex::new(free),
            next: AtomicU64::new(next),
        })
    }

    /// After a crash, a recycled file's rename may have reached `queue/` but not its removal
    /// from `free/`: the same file under two names. Drops the `free/` names of files that
    /// are in the queue (given as inode numbers), so the pool never hands out a queued file.
    pub fn drop_aliases(&self, queued: &std::collections::HashSet<u64>) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = Vec::with_capacity(free.len());
        for path in free.drain(..) {
            match fs::metadata(&path) {
                Ok(m) if queued.contains(&m.ino()) => {
                    log::warn!(
                        "spool: {} is also a queued file; dropping that name",
                        path.display()
                    );
                    fs::remove_file(&path)?;
                }
                Ok(_) => kept.push(path),
                Err(_) => {}
            }
        }
        *free = kept;
        Ok(())
    }

    /// A file at `path`, written from the start: a recycled one moved there, or a new one.
    pub fn take(&self, path: &Path) -> io::Result<Writer> {
        let recycled = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(old) = recycled
            && fs::rename(&old, path).is_ok()
        {
            let file = OpenOptions::new().write(true).open(path)?;
            return Ok(Writer { file, written: 0 });
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(Writer { file, written: 0 })
    }

    /// Takes `path` out of the spool: into the pool, or deleted when the pool is full or the
    /// file is large. `size` is the file's length when the caller knows it (saves a stat).
    pub fn give(&self, path: &Path, size: Option<u64>) -> io::Result<()> {
        let size = match size {
            Some(n) => n,
            None => fs::metadata(path)?.len(),
        };
        let keep = size <= MAX_KEPT_SIZE
            && self.free.lock().unwrap_or_else(|e| e.into_inner()).len() < CAPACITY;
        if !keep {
            return fs::remove_file(path);
        }
        let dest = self
            .dir
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        fs::rename(path, &dest)?;
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycled_files_are_cut_to_the_new_length() {
        let dir = std::env::temp_dir().join(format!("mxrelay-pool-{}", crate::spool::id::new_id()));
        fs::create_dir_all(dir.join("free")).unwrap();
        let pool = Pool::open(dir.join("free")).unwrap();
        let a = dir.join("a");
        let mut w = pool.take(&a).unwrap();
        w.write_all(b"a long first message").unwrap();
        w.finish().unwrap();
        pool.give(&a, None).unwrap();
        assert!(!a.exists());
        let b = dir.join("b");
        let mut w = pool.take(&b).unwrap();
        w.write_all(b"short").unwrap();
        w.finish().unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"short");
        assert_eq!(
            fs::read_dir(dir.join("free")).unwrap().count(),
            0,
            "the pooled file was reused"
        );
        // A reopened pool finds what was given back.
        pool.give(&b, Some(5)).unwrap();
        let again = Pool::open(dir.join("free")).unwrap();
        assert_eq!(again.free.lock().unwrap().len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }
}
