//! Directory durability: a file renamed into `queue/` is only trusted once its directory entry
//! has been fsynced too.

use std::fs::File;
use std::io;
use std::path::Path;

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
    /// Requests up to this number were covered by an fsync that failed.
    failed: u64,
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
                    Err(io::Error::other("directory fsync failed"))
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
            if result.is_err() {
                st.failed = upto;
            }
            self.done.notify_all();
        }
    }
}
