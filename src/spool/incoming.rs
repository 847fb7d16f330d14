//! A message being received: it stays in a buffer until it outgrows a cell, and only then
//! gets a slot file; one that fits goes into a cell at commit, in one write.

use std::io;

use super::alloc::{Slot, Writing};
use super::slot::{HEADER_LEN, Header, State};
use super::{CELL, Envelope, Place, SlotRef, Spool, fsio, id};

/// A message that fits a cell stays in memory until commit, and is then written together with
/// header and envelope, in one go, just before its fdatasync. Written out earlier, its pages
/// would be written by whichever commit syncs the cells file first, and its first page again
/// with the header. The buffer grows as the message does: most mail takes a fraction of it.
const BUFFERED: usize = CELL as usize;
const BUFFER_START: usize = 64 * 1024;
/// Pieces at least this large, once the buffer is full, are written as they come rather than
/// copied into it.
const DIRECT: usize = 16 * 1024;

pub struct Incoming<'a> {
    pub id: String,
    spool: &'a Spool,
    slot: Option<Writing>,
    /// Bytes not yet written, starting at slot offset `pending_at` (at 0: room for the header).
    pending: Vec<u8>,
    pending_at: u64,
    msg_len: u64,
    crc: crc32fast::Hasher,
}

impl Incoming<'_> {
    /// Message bytes so far.
    pub fn written(&self) -> u64 {
        self.msg_len
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.msg_len += bytes.len() as u64;
        self.append(bytes)
    }

    /// Adds the message's header section, which a transform stage completes only after the
    /// body: in front of the body while the message is still all in memory (most mail; it is
    /// then stored in order), else after it. Returns how many bytes went after the body (the
    /// envelope's `head`).
    pub fn write_head(&mut self, head: &[u8]) -> io::Result<u64> {
        if self.pending_at == 0 && self.pending.len() + head.len() <= BUFFERED {
            let body = HEADER_LEN..self.pending.len();
            self.pending.resize(self.pending.len() + head.len(), 0);
            self.pending.copy_within(body, HEADER_LEN + head.len());
            self.pending[HEADER_LEN..HEADER_LEN + head.len()].copy_from_slice(head);
            let mut crc = crc32fast::Hasher::new();
            crc.update(head);
            crc.combine(&self.crc);
            self.crc = crc;
            self.msg_len += head.len() as u64;
            return Ok(0);
        }
        self.write_all(head)?;
        Ok(head.len() as u64)
    }

    /// Lets `fill` append message bytes straight into the buffer (the DATA reader writes
    /// there, with no buffer of its own); `write_if_full` then writes them out in chunks.
    pub fn fill<R>(&mut self, fill: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let start = self.pending.len();
        let r = fill(&mut self.pending);
        let added = &self.pending[start..];
        self.crc.update(added);
        self.msg_len += added.len() as u64;
        r
    }

    /// Writes the buffer out once it is nearly full, leaving room for the next `fill` (the
    /// DATA reader adds at most its read buffer, 16 KiB unless lines may be longer), so that
    /// the buffer does not outgrow a cell.
    pub fn write_if_full(&mut self) -> io::Result<()> {
        if self.pending.len() + DIRECT > BUFFERED {
            self.flush()?;
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        if self.pending.len() + bytes.len() <= BUFFERED {
            self.pending.extend_from_slice(bytes);
            return Ok(());
        }
        self.flush()?;
        if bytes.len() >= DIRECT {
            // Large pieces go straight from the caller's buffer, without a copy.
            self.write_at(bytes, self.pending_at)?;
            self.pending_at += bytes.len() as u64;
        } else {
            self.pending.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// Writes the buffer out to the slot file, which the message gets now if it has none yet.
    fn flush(&mut self) -> io::Result<()> {
        // Nothing but the room left for the header: the header gets its own write at the end.
        if self.pending_at == 0 && self.pending.len() == HEADER_LEN {
            self.pending.clear();
            self.pending_at = HEADER_LEN as u64;
            return Ok(());
        }
        let (pending, at) = (std::mem::take(&mut self.pending), self.pending_at);
        let written = self.write_at(&pending, at);
        self.pending = pending;
        written?;
        self.pending_at += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    fn write_at(&mut self, bytes: &[u8], at: u64) -> io::Result<()> {
        let slot = match &mut self.slot {
            Some(slot) => slot,
            None => self.slot.insert(self.spool.take_slot()?),
        };
        fsio::write_all_at(&slot.file, bytes, at)?;
        slot.len = slot.len.max(at + bytes.len() as u64);
        Ok(())
    }

    /// Appends the envelope and fills in the header; returns the header and the envelope's
    /// length.
    fn seal(&mut self, env: &Envelope) -> io::Result<([u8; HEADER_LEN], u64)> {
        debug_assert_eq!(self.msg_len, env.size);
        let encoded = env.encode();
        self.append(&encoded)?;
        let header = Header {
            state: State::Live,
            id: self.id.clone(),
            msg_len: self.msg_len,
            env_len: encoded.len() as u64,
            crc: self.crc.clone().finalize(),
        };
        Ok((header.encode(), encoded.len() as u64))
    }

    /// Writes the sealed slot into its slot file and syncs it.
    fn sync_to_slot_file(&mut self, header: &[u8; HEADER_LEN]) -> io::Result<()> {
        if self.pending_at == 0 {
            // Header, message and envelope in one write.
            self.pending[..HEADER_LEN].copy_from_slice(header);
            self.flush()?;
        } else {
            self.flush()?;
            self.write_at(header, 0)?;
        }
        let slot = self.slot.as_ref().expect("flushed into a slot file");
        fsio::sync_data(&slot.file)
    }
}

impl Spool {
    /// Starts a new message. It gets its cell or slot file only when it is written out.
    pub fn create(&self) -> Incoming<'_> {
        let mut pending = Vec::with_capacity(BUFFER_START);
        pending.resize(HEADER_LEN, 0);
        Incoming {
            id: id::new_id(),
            spool: self,
            slot: None,
            pending,
            pending_at: 0,
            msg_len: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Makes the message durable; only after this returns may the client get its 250.
    /// `env.size` must be the number of message bytes written.
    pub fn commit(&self, mut incoming: Incoming<'_>, env: &Envelope) -> io::Result<Place> {
        debug_assert_eq!(incoming.id, env.id);
        let rcpts = env.recipients.len();
        let (header, env_len) = match incoming.seal(env) {
            Ok(sealed) => sealed,
            Err(e) => {
                self.abort(incoming);
                return Err(e);
            }
        };
        let place = |slot| Place::new(slot, incoming.msg_len, env_len, rcpts);
        let fits = incoming.slot.is_none()
            && incoming.pending_at == 0
            && place(SlotRef::Cell(0)).layout.end() <= CELL;
        if fits && let Some(k) = self.take_cell() {
            incoming.pending[..HEADER_LEN].copy_from_slice(&header);
            let written = self.write_cell(k, &incoming.pending);
            self.alloc().extend_cell(k, incoming.pending.len() as u64);
            return match written {
                Ok(()) => Ok(place(SlotRef::Cell(k))),
                // Cut short (a full disk): whatever part was written is freed like a delivered
                // message, and the cell reused.
                Err((e, false)) => {
                    self.free_cell(k, false);
                    Err(e)
                }
                Err((e, true)) => {
                    self.retire_cell(k, &e);
                    Err(e)
                }
            };
        }
        let result = incoming.sync_to_slot_file(&header);
        let slot = incoming.slot.take().expect("written to a slot file");
        let place = Place::new(SlotRef::File(slot.n), incoming.msg_len, env_len, rcpts);
        match result.and_then(|()| match slot.created {
            true => self.queue_sync.sync(),
            false => Ok(()),
        }) {
            Ok(()) => Ok(place),
            Err(e) => {
                // Its header may have reached the disk, and after a failed sync its pages are
                // not to be trusted: not a slot to reuse.
                self.delete_slot(slot.n);
                Err(e)
            }
        }
    }

    /// Drops a message that will not be committed (client gone, message refused). A slot
    /// file it got never had a live header, so it is free as it is.
    pub fn abort(&self, incoming: Incoming<'_>) {
        if let Some(slot) = incoming.slot {
            self.release(Slot {
                n: slot.n,
                file: Some(slot.file),
                size: slot.len,
            });
        }
    }

    /// Spools a message we generate ourselves (a DSN) in one go.
    pub fn store(&self, env: &Envelope, body: &[u8]) -> io::Result<Place> {
        let mut incoming = self.create();
        incoming.id = env.id.clone();
        incoming.write_all(body)?;
        self.commit(incoming, env)
    }
}
