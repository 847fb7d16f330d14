//! The operator's queue commands (flush, hold, release, delete), for one message or all of
//! them, whatever each one is doing: waiting on disk, held, active, or at a worker straight
//! from its session.

use std::sync::atomic::Ordering;

use super::super::ledger::{Holder, Record, due_s};
use super::Scheduler;
use crate::control::Command;
use crate::events::Event;
use crate::spool::id::MsgId;
use crate::spool::{Batch, Envelope};

impl Scheduler {
    /// Carries out a command; the answer is one line for the `queue` command.
    pub(super) fn control(&mut self, command: Command) -> Result<String, String> {
        if command == Command::Flush(None) {
            return Ok(format!("flushed {} message(s)", self.flush_all()));
        }
        let targets: Vec<(MsgId, Record)> = match command.target() {
            Some(text) => {
                let found = MsgId::parse(text).and_then(|id| Some((id, self.s.ledger.get(id)?)));
                match found {
                    Some(t) if t.1.holder != Holder::Arriving => vec![t],
                    _ => return Err(format!("{text}: not in the queue")),
                }
            }
            None => self.s.ledger.select(&[
                Holder::Direct,
                Holder::Waiting,
                Holder::Held,
                Holder::Active,
            ]),
        };
        if matches!(command, Command::Flush(_)) {
            // The next hop may be back: dead sites get another chance.
            self.s.sites.revive();
        }
        let spool = self.s.spool.clone();
        let mut batch = spool.batch();
        let mut n = 0;
        for (id, record) in targets {
            let done = match command {
                Command::Flush(_) => self.flush(id, record),
                Command::Hold(_) => self.hold(id, record, &mut batch),
                Command::Release(_) => self.release(id, record, &mut batch),
                Command::Delete(_) => self.delete(id, record),
            };
            n += usize::from(done);
        }
        if let Err(e) = batch.finish() {
            log::error!("queue {}: cannot sync the new states: {e}", command.verb());
        }
        Ok(format!("{} {n} message(s)", command.verb()))
    }

    /// Every waiting message due now; dead sites get another chance.
    fn flush_all(&mut self) -> usize {
        self.s.sites.revive();
        let now = self.s.clock.now_ms();
        let now = due_s(now, now);
        let ids = self.s.ledger.all_due(now);
        let n = ids.len();
        self.timers.entry(now).or_default().extend(ids);
        n
    }

    fn flush(&mut self, id: MsgId, record: Record) -> bool {
        if record.holder != Holder::Waiting {
            return false;
        }
        let now = self.s.clock.now_ms();
        self.wait(id, now);
        true
    }

    fn hold(&mut self, id: MsgId, record: Record, batch: &mut Batch) -> bool {
        match record.holder {
            Holder::Waiting => {
                let hold = |env: &mut Envelope| env.held = true;
                self.on_disk(id, record, hold, Holder::Held, batch)
            }
            Holder::Direct | Holder::Active => {
                if record.holder == Holder::Direct && !self.adopt(id) {
                    return false;
                }
                let text = id.to_string();
                let jobs = self.s.sites.withdraw(|j| j.id == text);
                let entry = self.active.get_mut(&id).expect("active");
                entry.env.held = true;
                entry.in_flight -= jobs.len().min(entry.in_flight);
                // With jobs at a worker, it goes on hold when the round ends.
                if entry.in_flight == 0 {
                    self.persist(id);
                    self.deactivate(id);
                }
                log::info!("{id}: put on hold");
                true
            }
            Holder::Held | Holder::Arriving => false,
        }
    }

    fn release(&mut self, id: MsgId, record: Record, batch: &mut Batch) -> bool {
        if record.holder != Holder::Held {
            return false;
        }
        let now = self.s.clock.now_ms();
        let released = self.on_disk(
            id,
            record,
            |env| {
                env.held = false;
                env.next_attempt = now;
            },
            Holder::Waiting,
            batch,
        );
        if released {
            self.wait(id, now);
            log::info!("{id}: released");
        }
        released
    }

    /// Changes a message that is on disk only, recorded in place; it then has `holder`.
    fn on_disk(
        &mut self,
        id: MsgId,
        record: Record,
        change: impl FnOnce(&mut Envelope),
        holder: Holder,
        batch: &mut Batch,
    ) -> bool {
        let (mut env, seq) = match self.s.spool.load(record.place, &id.to_string()) {
            Ok(loaded) => loaded,
            Err(e) => {
                log::error!("{id}: cannot read the queued message: {e}");
                return false;
            }
        };
        change(&mut env);
        if let Err(e) = batch.record(record.place, seq + 1, &env) {
            log::error!("{id}: cannot record its state: {e}");
            return false;
        }
        self.s.ledger.update(id, |r| r.holder = holder);
        if holder == Holder::Held {
            log::info!("{id}: put on hold");
        }
        true
    }

    fn delete(&mut self, id: MsgId, record: Record) -> bool {
        if record.holder == Holder::Direct && !self.adopt(id) {
            return false;
        }
        let text = id.to_string();
        let (pending, tag) = match self.active.get(&id) {
            Some(entry) => (entry.env.pending_addresses(), entry.env.tag.clone()),
            None => self
                .s
                .spool
                .load(record.place, &text)
                .map(|(env, _)| (env.pending_addresses(), env.tag))
                .unwrap_or_default(),
        };
        self.s.events.report(&Event::Deleted {
            id: &text,
            recipients: &pending,
            tag: crate::events::tag(&tag),
        });
        self.s.ledger.remove(id);
        let Some(mut entry) = self.leave(id) else {
            if let Err(e) = self.s.spool.remove(record.place) {
                log::error!("{id}: cannot remove from the spool: {e}");
            }
            return true;
        };
        let withdrawn = self.s.sites.withdraw(|j| j.id == text).len();
        entry.in_flight -= withdrawn.min(entry.in_flight);
        let removed = if entry.in_flight > 0 {
            // A worker may be sending the body right now: delete, don't recycle.
            entry.cancelled.store(true, Ordering::SeqCst);
            self.s.spool.discard(entry.place)
        } else {
            self.s.spool.remove(entry.place)
        };
        if let Err(e) = removed {
            log::error!("{id}: cannot remove from the spool: {e}");
        }
        true
    }
}
