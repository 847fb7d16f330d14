//! The ledger: every queued message, by id, with where it is on disk and who holds it now.
//! It is the one owner of that answer. Sessions enter each message they commit; a worker that
//! got a message straight from its session and delivered it removes it; everything else is
//! the scheduler's. Compact (about 50 bytes a message), so a queue of a million fits.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::spool::Place;
use crate::spool::id::MsgId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Handed straight from its session to a worker, on its first attempt; the scheduler
    /// has not taken it up.
    Direct,
    /// On its way from its session to the scheduler.
    Arriving,
    /// On disk, waiting for its next try (`Record::due`).
    Waiting,
    /// On disk, put on hold by the operator.
    Held,
    /// In the scheduler's active set: its envelope in memory, its jobs queued or in flight.
    Active,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub place: Place,
    /// When its next try is due, while `Waiting`: unix seconds (see `due_s`).
    pub due: u32,
    pub holder: Holder,
}

/// A due time in unix ms as the ledger keeps it, in seconds (four bytes a message instead of
/// eight, and the scheduler's timers shared by the messages due in the same second): rounded
/// up, so a try is never early, but for a time already past (`now`), which stays due now.
pub fn due_s(ms: u64, now: u64) -> u32 {
    let s = if ms <= now {
        ms / 1000
    } else {
        ms.div_ceil(1000)
    };
    s.min(u32::MAX as u64) as u32
}

#[derive(Default)]
pub struct Ledger {
    book: Mutex<Book>,
}

#[derive(Default)]
pub struct Book {
    records: HashMap<MsgId, Record>,
    /// The cancel flags of `Direct` messages' jobs (see `Job::cancelled`).
    direct: HashMap<MsgId, Arc<AtomicBool>>,
}

impl Ledger {
    pub fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enters a message; false if one with that id is there already.
    pub fn insert(&self, id: MsgId, record: Record) -> bool {
        self.lock().insert(id, record)
    }

    pub fn get(&self, id: MsgId) -> Option<Record> {
        self.lock().records.get(&id).copied()
    }

    pub fn remove(&self, id: MsgId) -> Option<Record> {
        let mut book = self.lock();
        book.direct.remove(&id);
        book.records.remove(&id)
    }

    /// Changes a message's record; false if it is not in the ledger.
    pub fn update(&self, id: MsgId, f: impl FnOnce(&mut Record)) -> bool {
        self.lock().records.get_mut(&id).map(f).is_some()
    }

    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For a worker that delivered a `Direct` message to every recipient: removes it, if the
    /// scheduler has not taken it up meanwhile, and returns where it was.
    pub fn finish_direct(&self, id: MsgId) -> Option<Place> {
        let mut book = self.lock();
        match book.records.get(&id) {
            Some(r) if r.holder == Holder::Direct => {
                book.direct.remove(&id);
                book.records.remove(&id).map(|r| r.place)
            }
            _ => None,
        }
    }

    /// For the scheduler: takes up a `Direct` message (now `Active`), with its jobs' cancel flag.
    pub fn adopt(&self, id: MsgId) -> Option<(Record, Arc<AtomicBool>)> {
        let mut book = self.lock();
        let record = book
            .records
            .get_mut(&id)
            .filter(|r| r.holder == Holder::Direct)?;
        record.holder = Holder::Active;
        let record = *record;
        let cancelled = book.direct.remove(&id).unwrap_or_default();
        Some((record, cancelled))
    }

    /// Every message whose holder is one of `holders`.
    pub fn select(&self, holders: &[Holder]) -> Vec<(MsgId, Record)> {
        let book = self.lock();
        book.records
            .iter()
            .filter(|(_, r)| holders.contains(&r.holder))
            .map(|(id, r)| (*id, *r))
            .collect()
    }

    /// Makes every waiting message due at `due`; returns their ids (without copying the
    /// rest of the ledger, which may hold a million messages).
    pub fn all_due(&self, due: u32) -> Vec<MsgId> {
        let mut book = self.lock();
        book.records
            .iter_mut()
            .filter(|(_, r)| r.holder == Holder::Waiting)
            .map(|(id, r)| {
                r.due = due;
                *id
            })
            .collect()
    }

    /// The oldest queued message's id (ids carry their time of arrival).
    pub fn oldest(&self) -> Option<MsgId> {
        self.lock().records.keys().min().copied()
    }
}

impl Book {
    /// Enters a message its session hands straight to a worker.
    pub fn insert_direct(&mut self, id: MsgId, place: Place, cancelled: Arc<AtomicBool>) {
        let record = Record {
            place,
            due: 0,
            holder: Holder::Direct,
        };
        self.insert(id, record);
        self.direct.insert(id, cancelled);
    }

    /// The hand-off to a worker did not happen: the message goes to the scheduler.
    pub fn not_direct(&mut self, id: MsgId) {
        self.direct.remove(&id);
        if let Some(r) = self.records.get_mut(&id) {
            r.holder = Holder::Arriving;
        }
    }

    pub fn insert(&mut self, id: MsgId, record: Record) -> bool {
        match self.records.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(record);
                true
            }
        }
    }
}
