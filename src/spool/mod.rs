//! The durable queue on disk.
//!
//! Layout:
//! - `queue/<id>.msg`: one file per accepted message: the message, then its envelope as
//!   first written, then a footer line `mxrelay-envelope <message length> <id>`.
//! - `queue/<id>.env`: a newer envelope (recipients crossed off, attempts, next try), when
//!   there is one; it overrides the one inside the `.msg` file.
//! - `tmp/`: files being written; never acknowledged, emptied at start.
//! - `free/`: finished files kept for reuse (see `pool`).
//! - `corrupt/`: what recovery could not read, with a `.reason` file; never deleted silently.
//!
//! Commit protocol (before the 250): message, envelope and footer written to `tmp/<id>.msg`,
//! fdatasync → rename into `queue/` → fsync `queue/` (shared by concurrent commits). A file
//! only appears in `queue/` complete and durable, so recovery trusts every `.msg` there.

pub mod envelope;
pub mod fsio;
pub mod id;
pub mod pool;

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub use envelope::{Envelope, Kind, RcptState, Recipient};

pub struct Spool {
    queue: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    pool: pool::Pool,
    queue_sync: fsio::DirSync,
}

/// A message being received into `tmp/`.
pub struct Incoming {
    pub id: String,
    writer: pool::Writer,
    path: PathBuf,
}

impl Incoming {
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }
}

impl Spool {
    /// Opens (creating with owner-only permissions) the spool under `root`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let (queue, tmp, corrupt, free) = (
            root.join("queue"),
            root.join("tmp"),
            root.join("corrupt"),
            root.join("free"),
        );
        for d in [root, &queue, &tmp, &corrupt, &free] {
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
            pool: pool::Pool::open(free)?,
        })
    }

    /// Start-up recovery: empties `tmp/`, quarantines what it cannot read, and returns
    /// every committed envelope.
    pub fn recover(&self) -> io::Result<Vec<Envelope>> {
        for entry in fs::read_dir(&self.tmp)? {
            let path = entry?.path();
            log::info!("spool: removing unfinished {}", path.display());
            self.pool.give(&path, None)?;
        }
        let mut envelopes = Vec::new();
        let mut newer = Vec::new();
        for entry in fs::read_dir(&self.queue)? {
            let path = entry?.path();
            let (Some(stem), Some(ext)) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                self.quarantine_file(&path, "unexpected file in queue/")?;
                continue;
            };
            match ext {
                "msg" if id::is_valid(stem) => match read_envelope(&self.queue, stem) {
                    Ok(env) => envelopes.push(env),
                    Err(why) => self.quarantine(stem, &why)?,
                },
                "env" if id::is_valid(stem) => newer.push(stem.to_string()),
                _ => self.quarantine_file(&path, "unexpected file in queue/")?,
            }
        }
        for id in newer {
            if !self.msg_path(&id).exists() && self.env_path(&id).exists() {
                // Removal takes the envelope first, so this is not a leftover: keep it in view.
                self.quarantine(&id, "envelope without its message")?;
            }
        }
        fsio::sync_dir(&self.queue)?;
        let mut queued = std::collections::HashSet::new();
        for entry in fs::read_dir(&self.queue)? {
            queued.insert(std::os::unix::fs::MetadataExt::ino(&entry?.metadata()?));
        }
        self.pool.drop_aliases(&queued)?;
        envelopes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(envelopes)
    }

    /// The queued message file; the message itself is its first `Envelope::size` bytes.
    pub fn msg_path(&self, id: &str) -> PathBuf {
        msg_path(&self.queue, id)
    }

    fn env_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.env"))
    }

    /// Starts a new message.
    pub fn create(&self) -> io::Result<Incoming> {
        let id = id::new_id();
        let path = self.tmp.join(format!("{id}.msg"));
        let writer = self.pool.take(&path)?;
        Ok(Incoming { id, writer, path })
    }

    /// Makes the message durable; only after this returns may the client get its 250.
    /// `env.size` must be the number of message bytes written.
    pub fn commit(&self, mut incoming: Incoming, env: &Envelope) -> io::Result<()> {
        debug_assert_eq!(incoming.id, env.id);
        let result = (|| {
            incoming.writer.write_all(&env.encode())?;
            incoming
                .writer
                .write_all(footer(env.size, &env.id).as_bytes())?;
            incoming.writer.finish()?;
            fs::rename(&incoming.path, self.msg_path(&env.id))?;
            self.queue_sync.sync()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&incoming.path);
            let _ = fs::remove_file(self.msg_path(&env.id));
        }
        result
    }

    /// Drops a message that will not be committed (client gone, message refused).
    pub fn abort(&self, incoming: Incoming) {
        let path = incoming.path.clone();
        drop(incoming);
        if self.pool.give(&path, None).is_err() {
            let _ = fs::remove_file(&path);
        }
    }

    /// Spools a message we generate ourselves (a DSN) in one go.
    pub fn store(&self, env: &Envelope, body: &[u8]) -> io::Result<()> {
        let path = self.tmp.join(format!("{}.msg", env.id));
        let mut incoming = Incoming {
            id: env.id.clone(),
            writer: self.pool.take(&path)?,
            path,
        };
        incoming.write_all(body)?;
        self.commit(incoming, env)
    }

    /// Records a newer envelope atomically (recipient states, attempts, next try):
    /// tmp → data sync → rename over the previous one → directory sync.
    pub fn update(&self, env: &Envelope) -> io::Result<()> {
        let tmp = self.tmp.join(format!("{}.env", env.id));
        let mut w = self.pool.take(&tmp)?;
        w.write_all(&env.encode())?;
        w.finish()?;
        fs::rename(&tmp, self.env_path(&env.id))?;
        self.queue_sync.sync()
    }

    /// Removes a finished message: a newer envelope first, so a crash never leaves one
    /// without its message. Not synced: if a crash undoes the removal, the message is
    /// delivered again (a duplicate, never a loss).
    /// `newer_envelope`: whether an `<id>.env` may exist (skips a lookup when it cannot).
    pub fn remove(&self, env: &Envelope, newer_envelope: bool) -> io::Result<()> {
        if newer_envelope {
            match self.pool.give(&self.env_path(&env.id), Some(0)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        // Message plus a small envelope: the size decides only whether the file is kept.
        self.pool.give(&self.msg_path(&env.id), Some(env.size))
    }

    /// Removes a message that a delivery may still be reading: its files are deleted, not
    /// recycled, so no other message can be written into a file still being sent.
    pub fn discard(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.env_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::remove_file(self.msg_path(id))
    }

    /// The header section of a queued message (up to `max` bytes), for DSNs.
    pub fn read_headers(&self, env: &Envelope, max: usize) -> io::Result<Vec<u8>> {
        read_headers(&self.queue, env, max)
    }

    /// Moves a message's files to `corrupt/` and records why.
    pub fn quarantine(&self, id: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {id}: {reason}");
        for path in [self.env_path(id), self.msg_path(id)] {
            if path.exists() {
                fs::rename(
                    &path,
                    self.corrupt.join(path.file_name().expect("file name")),
                )?;
            }
        }
        fs::write(
            self.corrupt.join(format!("{id}.reason")),
            format!("{reason}\n"),
        )?;
        fsio::sync_dir(&self.corrupt)?;
        fsio::sync_dir(&self.queue)
    }

    fn quarantine_file(&self, path: &Path, reason: &str) -> io::Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        log::error!("spool: quarantining {name}: {reason}");
        fs::rename(path, self.corrupt.join(&name))?;
        fs::write(
            self.corrupt.join(format!("{name}.reason")),
            format!("{reason}\n"),
        )
    }
}

fn msg_path(queue: &Path, id: &str) -> PathBuf {
    queue.join(format!("{id}.msg"))
}

fn footer(message_len: u64, id: &str) -> String {
    format!("mxrelay-envelope {message_len} {id}\n")
}

/// The current envelope of a queued message: `<id>.env` if there is one, else the one in
/// the `.msg` file. Read-only, so the queue commands use it without a daemon.
pub fn read_envelope(queue: &Path, id: &str) -> Result<Envelope, String> {
    let env = match fs::read(queue.join(format!("{id}.env"))) {
        Ok(bytes) => Envelope::decode(&bytes).map_err(|e| format!("newer envelope: {e}"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => first_envelope(queue, id)?,
        Err(e) => return Err(e.to_string()),
    };
    if env.id != id {
        return Err("envelope id does not match its file name".into());
    }
    Ok(env)
}

/// The envelope written with the message: between the message and the footer.
fn first_envelope(queue: &Path, id: &str) -> Result<Envelope, String> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(msg_path(queue, id)).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let tail_len = len.min(128);
    f.seek(SeekFrom::Start(len - tail_len))
        .map_err(|e| e.to_string())?;
    let mut tail = Vec::new();
    f.by_ref()
        .take(tail_len)
        .read_to_end(&mut tail)
        .map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(&tail).unwrap_or("");
    let line = text
        .strip_suffix('\n')
        .and_then(|t| t.rsplit('\n').next())
        .ok_or("no footer")?;
    let mut words = line.split(' ');
    let (Some("mxrelay-envelope"), Some(msg_len), Some(footer_id), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err("no footer".into());
    };
    let msg_len: u64 = msg_len.parse().map_err(|_| "bad footer")?;
    let env_end = len - line.len() as u64 - 1;
    if footer_id != id || msg_len > env_end || env_end - msg_len > 16 << 20 {
        return Err("footer does not match the file".into());
    }
    f.seek(SeekFrom::Start(msg_len))
        .map_err(|e| e.to_string())?;
    let mut env = Vec::new();
    f.take(env_end - msg_len)
        .read_to_end(&mut env)
        .map_err(|e| e.to_string())?;
    let env = Envelope::decode(&env).map_err(|e| e.to_string())?;
    if env.size != msg_len {
        return Err("envelope size does not match the footer".into());
    }
    Ok(env)
}

/// The header section of a queued message (up to `max` bytes).
pub fn read_headers(queue: &Path, env: &Envelope, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(msg_path(queue, &env.id))?
        .take(env.size.min(max as u64))
        .read_to_end(&mut buf)?;
    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        buf.truncate(end + 2);
    }
    Ok(buf)
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

    #[test]
    fn commit_recover_update_remove() {
        let root = temp_dir("spool");
        let spool = Spool::open(&root).unwrap();
        let e = commit(&spool, b"Subject: hi\r\n\r\nbody\r\n");
        // One file: the message, its envelope, the footer.
        let file = fs::read(spool.msg_path(&e.id)).unwrap();
        assert!(
            file.starts_with(b"Subject: hi\r\n\r\nbody\r\n")
                && file.ends_with(footer(e.size, &e.id).as_bytes())
        );
        // An unfinished message in tmp/ is cleaned up; damaged files are quarantined.
        let mut stray = spool.create().unwrap();
        stray.write_all(b"partial").unwrap();
        let stray_path = root.join(format!("tmp/{}.msg", stray.id));
        drop(stray);
        fs::write(
            root.join("queue/0000000000000001-0000.msg"),
            b"no footer here",
        )
        .unwrap();
        fs::write(
            root.join("queue/0000000000000002-0000.env"),
            b"version: 1\n",
        )
        .unwrap();
        let got = spool.recover().unwrap();
        assert_eq!(got, vec![e.clone()]);
        assert!(!stray_path.exists());
        let reason = fs::read_to_string(root.join("corrupt/0000000000000001-0000.reason")).unwrap();
        assert!(reason.contains("no footer"), "{reason}");
        assert!(root.join("corrupt/0000000000000002-0000.env").exists());
        assert_eq!(spool.read_headers(&e, 1000).unwrap(), b"Subject: hi\r\n");
        // A newer envelope overrides the first one.
        let mut updated = e.clone();
        updated.attempts = 3;
        updated.recipients[0].state = RcptState::Delivered;
        spool.update(&updated).unwrap();
        assert_eq!(spool.recover().unwrap(), vec![updated.clone()]);
        assert_eq!(read_envelope(&root.join("queue"), &e.id).unwrap(), updated);
        spool.remove(&updated, true).unwrap();
        assert!(spool.recover().unwrap().is_empty());
        // Removed files went to the pool and are reused: no file is created for the next one.
        let pooled = fs::read_dir(root.join("free")).unwrap().count();
        assert!(pooled >= 2, "{pooled}");
        let e2 = commit(&spool, b"y");
        assert_eq!(fs::read_dir(root.join("free")).unwrap().count(), pooled - 1);
        assert_eq!(
            spool.read_headers(&e2, 1000).unwrap(),
            b"y",
            "only the message, not the envelope after it"
        );
        // A queued file that also has a name in free/ (a crash between the two halves of a
        // recycling rename) is never handed out again.
        fs::hard_link(spool.msg_path(&e2.id), root.join("free/999")).unwrap();
        let spool = Spool::open(&root).unwrap();
        assert_eq!(spool.recover().unwrap(), vec![e2.clone()]);
        assert!(!root.join("free/999").exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_recycled_file_with_an_old_footer_is_not_a_message() {
        let root = temp_dir("stale");
        let spool = Spool::open(&root).unwrap();
        let long = commit(&spool, &[b'x'; 5000]);
        let old = fs::read(spool.msg_path(&long.id)).unwrap();
        // Another message's file under this name, with its old footer: refused.
        fs::write(spool.msg_path("0000000000000003-0000"), &old).unwrap();
        assert_eq!(
            read_envelope(&root.join("queue"), "0000000000000003-0000").unwrap_err(),
            "footer does not match the file"
        );
        fs::remove_dir_all(root).unwrap();
    }
}
