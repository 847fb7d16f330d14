//! The durable-write primitives: fsync a file, rename it into place, fsync the directory.
//! A file in `queue/` is only trusted once its directory entry has been fsynced too.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `data` to `tmp`, fsyncs it and renames it to `dest`; the caller fsyncs `dest`'s
/// directory (once for several renames).
pub fn write_file(tmp: &Path, dest: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(tmp, dest)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
