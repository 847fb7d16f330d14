//! Directory durability (a file renamed into `queue/` is only trusted once its directory
//! entry has been fsynced too), and the writes and syncs a commit or a state record is made
//! of, in one place: unit tests make them fail (`fault`) as a full or failing disk does.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `bytes` at `at` in `file`, all of them or an error (after which any part may be written).
pub fn write_all_at(file: &File, bytes: &[u8], at: u64) -> io::Result<()> {
    #[cfg(test)]
    if let Some((kept, e)) = fault::on_write(bytes.len()) {
        file.write_all_at(&bytes[..kept], at)?;
        return Err(e);
    }
    file.write_all_at(bytes, at)
}

/// fdatasync. After an error, what was written since the last good sync is not trusted to be
/// on disk, whatever the page cache shows ("fsyncgate"): the caller gives up the data.
pub fn sync_data(file: &File) -> io::Result<()> {
    #[cfg(test)]
    if let Some(e) = fault::on_sync() {
        return Err(e);
    }
    file.sync_data()
}

/// Failures of `write_all_at` and `sync_data` on demand, for the calling thread only.
#[cfg(test)]
pub mod fault {
    use std::cell::Cell;
    use std::io;

    #[derive(Clone, Copy, Debug)]
    pub enum Fault {
        /// The next write stores its first `kept` bytes, then fails with `errno`.
        Write { errno: i32, kept: usize },
        /// The next sync fails with `errno` (what was written stays in the page cache).
        Sync { errno: i32 },
        /// Every write and sync fails with `errno`, writing nothing, until `clear`.
        Disk { errno: i32 },
    }

    thread_local! {
        static NEXT: Cell<Option<Fault>> = const { Cell::new(None) };
    }

    pub fn inject(f: Fault) {
        NEXT.set(Some(f));
    }

    pub fn clear() {
        NEXT.set(None);
    }

    pub(super) fn on_write(len: usize) -> Option<(usize, io::Error)> {
        match NEXT.get()? {
            Fault::Write { errno, kept } => {
                NEXT.set(None);
                Some((kept.min(len), io::Error::from_raw_os_error(errno)))
            }
            Fault::Disk { errno } => Some((0, io::Error::from_raw_os_error(errno))),
            Fault::Sync { .. } => None,
        }
    }

    pub(super) fn on_sync() -> Option<io::Error> {
        match NEXT.get()? {
            Fault::Sync { errno } => {
                NEXT.set(None);
                Some(io::Error::from_raw_os_error(errno))
            }
            Fault::Disk { errno } => Some(io::Error::from_raw_os_error(errno)),
            Fault::Write { .. } => None,
        }
    }
}

/// Group commit for a directory: every thread that renamed something into it calls `sync`,
/// and one fsync covers all renames made before it started. Threads arriving while an
/// fsync runs wait for the next one, which then serves them all together.
pub struct DirSync {
    dir: std::path::PathBuf,
    state: std::sync::Mutex<SyncState>,
    done: std::sync::Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Requests so far; a request's number is its place in line.
    requested: u64,
    /// Every request up to this number is durable.
    synced: u64,
    /// Requests up to this number were covered by an fsync that failed, with this error.
    failed: u64,
    error: Option<(io::ErrorKind, Option<i32>)>,
    running: bool,
}

impl DirSync {
    pub fn new(dir: &Path) -> DirSync {
        DirSync {
            dir: dir.to_path_buf(),
            state: Default::default(),
            done: std::sync::Condvar::new(),
        }
    }

    pub fn sync(&self) -> io::Result<()> {
        let lock = || self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = lock();
        st.requested += 1;
        let mine = st.requested;
        loop {
            if st.synced >= mine {
                return if st.failed >= mine {
                    Err(match st.error {
                        Some((_, Some(errno))) => io::Error::from_raw_os_error(errno),
                        Some((kind, None)) => io::Error::new(kind, "directory fsync failed"),
                        None => io::Error::other("directory fsync failed"),
                    })
                } else {
                    Ok(())
                };
            }
            if st.running {
                st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.running = true;
            let upto = st.requested;
            drop(st);
            let result = sync_dir(&self.dir);
            st = lock();
            st.running = false;
            st.synced = upto;
            if let Err(e) = result {
                st.failed = upto;
                st.error = Some((e.kind(), e.raw_os_error()));
            }
            self.done.notify_all();
        }
    }
}
