//! The durable queue on disk.
//!
//! Layout: `tmp/` (bodies and envelopes being written; never acknowledged, emptied at start),
//! `queue/<id>.body` + `queue/<id>.env` (an `.env` in `queue/` means accepted), `corrupt/`
//! (what recovery could not read, with a `.reason` file; never deleted silently).
//!
//! Commit protocol (before the 250): body fsync → rename into `queue/`; envelope written to
//! `tmp/`, fsync → rename into `queue/`; fsync `queue/`. After a crash, an `.env` in `queue/`
//! is complete or absent; a `.body` without `.env` was never acknowledged and is removed.

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

/// A message body being received, written straight to `queue/<id>.body` (a body without an
/// envelope is never trusted, so this is safe).
pub struct Incoming {
    pub id: String,
    writer: pool::Writer,
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

    /// Start-up recovery: empties `tmp/`, removes unacknowledged bodies, quarantines what it
    /// cannot read, and returns every committed envelope.
    pub fn recover(&self) -> io::Result<Vec<Envelope>> {
        for entry in fs::read_dir(&self.tmp)? {
            let path = entry?.path();
            log::info!("spool: removing unfinished {}", path.display());
            self.pool.give(&path, None)?;
        }
        let mut envelopes = Vec::new();
        let mut bodies = Vec::new();
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
                "env" if id::is_valid(stem) => match fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| Envelope::decode(&b).map_err(|e| e.to_string()))
                {
                    Ok(env) if env.id != stem => {
                        self.quarantine(stem, "envelope id does not match its file name")?
                    }
                    Ok(env) if !self.body_path(stem).exists() => {
                        self.quarantine(&env.id, "body file missing")?;
                    }
                    Ok(env) => envelopes.push(env),
                    Err(why) => self.quarantine(stem, &why)?,
                },
                "body" if id::is_valid(stem) => bodies.push(stem.to_string()),
                _ => self.quarantine_file(&path, "unexpected file in queue/")?,
            }
        }
        for id in bodies {
            if !self.env_path(&id).exists() && self.body_path(&id).exists() {
                log::info!("spool: removing unacknowledged body {id}");
                self.pool.give(&self.body_path(&id), None)?;
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

    pub fn body_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.body"))
    }

    fn env_path(&self, id: &str) -> PathBuf {
        self.queue.join(format!("{id}.env"))
    }

    /// Starts a new message body.
    pub fn create(&self) -> io::Result<Incoming> {
        let id = id::new_id();
        let writer = self.pool.take(&self.body_path(&id))?;
        Ok(Incoming { id, writer })
    }

    /// Makes the message durable; only after this returns may the client get its 250.
    /// Body data, then the envelope, then the directory entries (shared with concurrent
    /// commits: group commit).
    pub fn commit(&self, incoming: Incoming, env: &Envelope) -> io::Result<()> {
        debug_assert_eq!(incoming.id, env.id);
        let result = incoming.writer.finish().and_then(|()| self.write_env(env));
        if result.is_err() {
            let _ = fs::remove_file(self.env_path(&env.id));
            let _ = fs::remove_file(self.body_path(&env.id));
        }
        result
    }

    /// Drops a body that will not be committed (client gone, message refused).
    pub fn abort(&self, incoming: Incoming) {
        let path = self.body_path(&incoming.id);
        drop(incoming);
        if self.pool.give(&path, None).is_err() {
            let _ = fs::remove_file(&path);
        }
    }

    /// Spools a message we generate ourselves (a DSN) in one go.
    pub fn store(&self, env: &Envelope, body: &[u8]) -> io::Result<()> {
        let mut incoming = Incoming {
            id: env.id.clone(),
            writer: self.pool.take(&self.body_path(&env.id))?,
        };
        incoming.write_all(body)?;
        self.commit(incoming, env)
    }

    /// Rewrites an envelope atomically (recipient states, attempts, next try).
    pub fn update(&self, env: &Envelope) -> io::Result<()> {
        self.write_env(env)
    }

    /// tmp → data sync → rename over the old envelope → directory sync.
    fn write_env(&self, env: &Envelope) -> io::Result<()> {
        let tmp = self.tmp.join(format!("{}.env", env.id));
        let mut w = self.pool.take(&tmp)?;
        w.write_all(&env.encode())?;
        w.finish()?;
        fs::rename(&tmp, self.env_path(&env.id))?;
        self.queue_sync.sync()
    }

    /// Removes a finished message: the envelope first, so a crash leaves an orphan body
    /// (cleaned at start), never an envelope without its body. Not synced: if a crash undoes
    /// the removal, the message is delivered again (a duplicate, never a loss).
    pub fn remove(&self, env: &Envelope) -> io::Result<()> {
        // Envelopes are small; the body's size is in the envelope.
        self.pool.give(&self.env_path(&env.id), Some(0))?;
        self.pool.give(&self.body_path(&env.id), Some(env.size))
    }

    /// Removes a message that a delivery may still be reading: its files are deleted, not
    /// recycled, so no other message can be written into a file still being sent.
    pub fn discard(&self, id: &str) -> io::Result<()> {
        fs::remove_file(self.env_path(id))?;
        fs::remove_file(self.body_path(id))
    }

    /// The header section of a queued message (up to `max` bytes), for DSNs.
    pub fn read_headers(&self, id: &str, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        File::open(self.body_path(id))?
            .take(max as u64)
            .read_to_end(&mut buf)?;
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 2);
        }
        Ok(buf)
    }

    /// Moves a message's files to `corrupt/` and records why.
    pub fn quarantine(&self, id: &str, reason: &str) -> io::Result<()> {
        log::error!("spool: quarantining {id}: {reason}");
        for path in [self.env_path(id), self.body_path(id)] {
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

    #[test]
    fn commit_recover_remove() {
        let root = temp_dir("spool");
        let spool = Spool::open(&root).unwrap();
        let mut inc = spool.create().unwrap();
        inc.write_all(b"Subject: hi\r\n\r\nbody\r\n").unwrap();
        let e = env(&inc.id.clone());
        spool.commit(inc, &e).unwrap();
        // A half-written envelope in tmp/ and bodies never acknowledged are cleaned up.
        let mut stray = spool.create().unwrap();
        stray.write_all(b"partial").unwrap();
        let stray_id = stray.id.clone();
        fs::write(root.join("tmp/0000000000000002-0000.env"), b"version: 1\n").unwrap();
        fs::write(spool.body_path("0000000000000000-0000"), b"x").unwrap();
        // A damaged envelope is quarantined with its reason.
        fs::write(
            root.join("queue/0000000000000001-0000.env"),
            b"version: 1\nid: x\n",
        )
        .unwrap();
        fs::write(root.join("queue/0000000000000001-0000.body"), b"x").unwrap();
        drop(stray);
        let got = spool.recover().unwrap();
        assert_eq!(got, vec![e.clone()]);
        assert!(!spool.body_path(&stray_id).exists());
        assert!(!root.join("tmp/0000000000000002-0000.env").exists());
        assert!(!spool.body_path("0000000000000000-0000").exists());
        assert!(root.join("corrupt/0000000000000001-0000.env").exists());
        let reason = fs::read_to_string(root.join("corrupt/0000000000000001-0000.reason")).unwrap();
        assert!(reason.contains("no end line"), "{reason}");
        assert_eq!(spool.read_headers(&e.id, 1000).unwrap(), b"Subject: hi\r\n");
        spool.remove(&e).unwrap();
        assert!(spool.recover().unwrap().is_empty());
        // Removed files went to the pool and are reused: no file is created for the next one.
        let pooled = fs::read_dir(root.join("free")).unwrap().count();
        assert!(pooled >= 2, "{pooled}");
        let mut next = spool.create().unwrap();
        next.write_all(b"y").unwrap();
        let e2 = env(&next.id.clone());
        spool.commit(next, &e2).unwrap();
        assert_eq!(fs::read_dir(root.join("free")).unwrap().count(), pooled - 2);
        assert_eq!(fs::read(spool.body_path(&e2.id)).unwrap(), b"y");
        // A queued file that also has a name in free/ (a crash between the two halves of a
        // recycling rename) is never handed out again.
        fs::hard_link(spool.body_path(&e2.id), root.join("free/999")).unwrap();
        let spool = Spool::open(&root).unwrap();
        assert_eq!(spool.recover().unwrap(), vec![e2.clone()]);
        assert!(!root.join("free/999").exists());
        assert_eq!(fs::read(spool.body_path(&e2.id)).unwrap(), b"y");
        fs::remove_dir_all(root).unwrap();
    }
}
