//! What the scheduler does with a job's outcome: crosses recipients off (recorded in place),
//! and when a message's round is over, bounces its failures, then schedules its next try,
//! expires it, or removes it.

use std::time::{Duration, UNIX_EPOCH};

use super::super::intake::Arrival;
use super::super::ledger::{Holder, Record};
use super::super::{Outcome, RcptResult, retry};
use super::{Entry, Scheduler, human};
use crate::bounce::{self, Addressee, Diagnostic, FailedRecipient};
use crate::events::Event;
use crate::spool::id::{self, MsgId};
use crate::spool::{Envelope, Place, RcptState};

/// How much of the original message a DSN quotes (its header section).
const DSN_HEADER_LIMIT: usize = 64 * 1024;
/// How soon an expired message whose DSN could not be spooled tries again, at most.
const DSN_RETRY: Duration = Duration::from_secs(300);

impl Scheduler {
    pub(super) fn apply(&mut self, outcome: Outcome) {
        let Some(id) = MsgId::parse(&outcome.id) else {
            return;
        };
        if !self.active.contains_key(&id) && !self.adopt(id) {
            // Deleted by the operator while in flight: simply gone.
            return;
        }
        let entry = self.active.get_mut(&id).expect("active");
        entry.in_flight = entry.in_flight.saturating_sub(1);
        let mut changed = false;
        let delivered_any = outcome
            .results
            .iter()
            .any(|(_, r)| matches!(r, RcptResult::Delivered { .. }));
        for (i, result) in outcome.results {
            let Some(rcpt) = entry.env.recipients.get_mut(i) else {
                continue;
            };
            match result {
                RcptResult::Delivered { relay, reply, tls } => {
                    self.s.events.report(&Event::Delivered {
                        id: &outcome.id,
                        recipient: &rcpt.address,
                        relay: &relay,
                        reply: &reply,
                        tls,
                        received: entry.env.received,
                        tag: crate::events::tag(&entry.env.tag),
                    });
                    rcpt.state = RcptState::Delivered;
                    changed = true;
                }
                RcptResult::Deferred { reason } => {
                    self.s.events.report(&Event::RecipientDeferred {
                        id: &outcome.id,
                        recipient: &rcpt.address,
                        reason: &reason,
                    });
                    entry.env.last_error = reason;
                }
                RcptResult::Failed {
                    status,
                    relay,
                    reason,
                } => {
                    self.s.events.report(&Event::RecipientFailed {
                        id: &outcome.id,
                        recipient: &rcpt.address,
                        status: &status,
                        reason: &reason,
                    });
                    rcpt.state = RcptState::Failed;
                    let address = rcpt.address.clone();
                    let failure = FailedRecipient::failure(address, status, relay, reason);
                    entry.failed.push(failure);
                    changed = true;
                }
                RcptResult::Suppressed { reason } => {
                    // The sender asked not to mail this address: done, without a DSN.
                    self.s.events.report(&Event::Suppressed {
                        id: &outcome.id,
                        recipient: &rcpt.address,
                        reason: reason.name(),
                        tag: crate::events::tag(&entry.env.tag),
                    });
                    rcpt.state = RcptState::Suppressed;
                    changed = true;
                }
            }
        }
        if delivered_any {
            // One transaction carried the message once, whatever the number of recipients.
            self.s.metrics.bytes_delivered(entry.env.size);
        }
        if entry.in_flight == 0 {
            self.finish_round(id);
        } else if changed {
            // Cross off what is done now, so a crash repeats only what is still in flight.
            self.persist(id);
        }
    }

    /// Takes up a message its session handed straight to a worker: it is active, with that
    /// one job in flight. False if it is not such a message.
    pub(super) fn adopt(&mut self, id: MsgId) -> bool {
        let Some((record, cancelled)) = self.s.ledger.adopt(id) else {
            return false;
        };
        match self.s.spool.load(record.place, &id.to_string()) {
            Ok((mut env, seq)) => {
                env.attempts += 1;
                let entry = Entry {
                    env,
                    place: record.place,
                    seq,
                    in_flight: 1,
                    failed: Vec::new(),
                    cancelled,
                };
                self.enter(id, entry);
                true
            }
            Err(e) => {
                log::error!("{id}: cannot read the queued message: {e}");
                self.s.ledger.remove(id);
                false
            }
        }
    }

    /// All jobs of this attempt are back: bounce failures, then retry, expire or remove.
    pub(super) fn finish_round(&mut self, id: MsgId) {
        let now = self.s.clock.now_ms();
        let lifetime = self.cfg.max_queue_lifetime;
        let Some(entry) = self.active.get_mut(&id) else {
            return;
        };
        if entry.env.has_pending() && retry::expired(entry.env.received, now, lifetime) {
            let last = match entry.env.last_error.as_str() {
                "" => "no attempt succeeded",
                e => e,
            };
            let reason = format!(
                "message expired after {} in the queue; last error: {last}",
                human(lifetime)
            );
            let mut expired = Vec::new();
            for r in entry
                .env
                .recipients
                .iter_mut()
                .filter(|r| r.state == RcptState::Pending)
            {
                r.state = RcptState::Failed;
                expired.push(r.address.clone());
                entry.failed.push(FailedRecipient {
                    address: r.address.clone(),
                    status: "4.4.7".into(),
                    remote_mta: None,
                    diagnostic: Some(Diagnostic::Local(reason.clone())),
                });
            }
            self.s.events.report(&Event::Expired {
                id: &entry.env.id,
                recipients: &expired,
                age_s: now.saturating_sub(entry.env.received) / 1000,
                reason: &reason,
                tag: crate::events::tag(&entry.env.tag),
            });
        }
        let failed = std::mem::take(&mut entry.failed);
        if !failed.is_empty() {
            // The DSN is spooled before the failures are recorded: a crash in between can
            // repeat a DSN, never lose one.
            let (env, place) = (entry.env.clone(), entry.place);
            if let Err(e) = self.bounce(&env, place, &failed) {
                // Without the DSN on disk the failures must not be recorded either: they
                // stay pending so the next round tries again.
                let entry = self.active.get_mut(&id).expect("active");
                entry.env.last_error = format!("its DSN could not be spooled: {e}");
                for f in &failed {
                    if let Some(r) = entry
                        .env
                        .recipients
                        .iter_mut()
                        .find(|r| r.address == f.address && r.state == RcptState::Failed)
                    {
                        r.state = RcptState::Pending;
                    }
                }
            }
        }
        let entry = self.active.get_mut(&id).expect("active");
        if !entry.env.has_pending() {
            let entry = self.leave(id).expect("active");
            self.s.ledger.remove(id);
            match self.s.spool.remove(entry.place) {
                Ok(()) => log::info!("{id}: removed (all recipients done)"),
                Err(e) => log::error!("{id}: cannot remove from the spool: {e}"),
            }
            return;
        }
        let delay = retry::delay(
            &self.cfg.retry,
            entry.env.attempts,
            super::super::random_below(1000) as f64 / 1000.0,
        );
        // A message whose next try would come after its lifetime gets its last try then. One
        // still pending past its lifetime is one whose DSN could not be spooled (a full
        // disk): it tries again after its delay, at most `DSN_RETRY` (at once, it would spin).
        let expires = entry.env.received + lifetime.as_millis() as u64;
        let delay = delay.as_millis() as u64;
        entry.env.next_attempt = match expires > now {
            true => (now + delay).min(expires),
            false => now + delay.min(DSN_RETRY.as_millis() as u64),
        };
        self.s.events.report(&Event::Deferred {
            id: &entry.env.id,
            recipients: &entry.env.pending_addresses(),
            reason: &entry.env.last_error,
            attempt: entry.env.attempts,
            next_try: entry.env.next_attempt,
            delay: Duration::from_millis(entry.env.next_attempt - now),
            tag: crate::events::tag(&entry.env.tag),
        });
        self.persist(id);
        self.deactivate(id);
    }

    /// An active message with no jobs left goes back to disk: waiting for its next try, or
    /// held.
    pub(super) fn deactivate(&mut self, id: MsgId) {
        let Some(entry) = self.leave(id) else {
            return;
        };
        if entry.env.held {
            self.s.ledger.update(id, |r| r.holder = Holder::Held);
        } else {
            self.wait(id, entry.env.next_attempt);
        }
    }

    /// Records an active message's state in place.
    pub(super) fn persist(&mut self, id: MsgId) {
        if let Some(entry) = self.active.get_mut(&id) {
            match self.s.spool.record(entry.place, entry.seq + 1, &entry.env) {
                Ok(()) => entry.seq += 1,
                Err(e) => log::error!("{id}: cannot record its state: {e}"),
            }
        }
    }

    /// Reports failures to the sender; a null-sender message is never bounced: its failure
    /// goes to the postmaster as a double bounce, and a double bounce that fails is dropped.
    /// An error if the DSN could not be spooled.
    fn bounce(
        &mut self,
        env: &Envelope,
        place: Place,
        failed: &[FailedRecipient],
    ) -> std::io::Result<()> {
        let to = bounce::addressee(env, &self.cfg.postmaster);
        let address = match &to {
            Addressee::Nobody => {
                log::warn!(
                    "{}: undeliverable double bounce dropped ({} recipients)",
                    env.id,
                    failed.len()
                );
                self.bounced_events(env, failed, None);
                return Ok(());
            }
            Addressee::Postmaster(a) => {
                log::warn!(
                    "{}: null sender, not bounced; copy to the postmaster <{a}>",
                    env.id
                );
                a
            }
            Addressee::Sender(a) => a,
        };
        let headers = self
            .s
            .spool
            .read_headers(place, (env.size, env.head), DSN_HEADER_LIMIT)
            .unwrap_or_default();
        let dsn_id = id::new_id();
        let now = self.s.clock.now_ms();
        let original = bounce::Original {
            queue_id: &env.id,
            sender: address,
            arrival: UNIX_EPOCH + Duration::from_millis(env.received),
            headers: &headers,
        };
        let body = bounce::build(
            &self.cfg.hostname,
            &self.cfg.postmaster,
            &original,
            failed,
            UNIX_EPOCH + Duration::from_millis(now),
            &dsn_id,
        );
        let double = matches!(to, Addressee::Postmaster(_));
        let dsn = bounce::envelope(
            dsn_id.clone(),
            address,
            double,
            &self.cfg.hostname,
            &body,
            now,
        );
        match self.s.spool.store(&dsn, &body) {
            Ok(place) => {
                log::info!(
                    "{}: bounced {} recipients, DSN {dsn_id} to <{address}>",
                    env.id,
                    failed.len(),
                );
                self.bounced_events(env, failed, Some(&dsn_id));
                let id = MsgId::parse(&dsn_id).expect("an id we made");
                let record = Record {
                    place,
                    due: 0,
                    holder: Holder::Arriving,
                };
                self.s.ledger.insert(id, record);
                self.arrive(Arrival { env: dsn, place });
                Ok(())
            }
            Err(e) => {
                log::error!(
                    "{}: cannot spool the DSN: {e}; failures stay pending",
                    env.id
                );
                Err(e)
            }
        }
    }

    fn bounced_events(&self, env: &Envelope, failed: &[FailedRecipient], dsn_id: Option<&str>) {
        for f in failed {
            self.s.events.report(&Event::Bounced {
                id: &env.id,
                recipient: &f.address,
                status: &f.status,
                reason: f.diagnostic.as_ref().map(Diagnostic::text),
                relay: f.remote_mta.as_deref(),
                dsn_id,
                tag: crate::events::tag(&env.tag),
            });
        }
    }
}
