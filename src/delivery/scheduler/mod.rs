//! The scheduler: the only writer of queued state after commit, but for one case: a message
//! that a worker got straight from its session and delivered to every recipient, which the
//! worker removes (see `intake`).
//!
//! Every queued message is in the ledger (id, place, due time, holder): a few dozen bytes
//! each. Only the *active* ones, at most `--active-limit`, have their envelopes in memory:
//! a message waiting for its next try is on disk only, and is loaded when it comes due and
//! there is room. Active messages are split into one job per destination and queued at their
//! sites (`Sites`), which hand them to the workers. This module is the loop and activation;
//! `outcome` applies what workers report (retries, expiry, DSNs), `control` the operator's
//! queue commands.

mod control;
mod outcome;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use super::clock::Clock;
use super::intake::Arrival;
use super::ledger::{Holder, Ledger, due_s};
use super::route::RouteTable;
use super::sites::{Sites, deferred_outcome};
use super::{Job, JobQueue, Outcome};
use crate::bounce::FailedRecipient;
use crate::control::Request;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::spool::id::MsgId;
use crate::spool::{Envelope, Place, Spool};

pub use super::clock::now_ms;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub hostname: String,
    pub postmaster: String,
    pub retry: Vec<Duration>,
    pub max_queue_lifetime: Duration,
    pub routes: Arc<RouteTable>,
    /// `--active-limit`: messages with their envelopes in memory, at most.
    pub active_limit: usize,
    /// `--active-recipients`: the recipients of those messages, at most; a message with more
    /// comes in alone. What bounds the memory when messages have many recipients, personalised
    /// mail most of all (a job per recipient).
    pub active_recipients: usize,
}

/// Where the scheduler's work comes from.
pub struct Inputs {
    /// New messages the sessions could not hand to a worker themselves.
    pub arrivals: Receiver<Arrival>,
    /// Messages recovery found (already in the ledger), with their due times as the ledger
    /// has them; held ones are not sent.
    pub recovered: Receiver<Vec<(MsgId, u32)>>,
    pub outcomes: Receiver<Outcome>,
    pub control: Receiver<Request>,
    pub stop: Receiver<()>,
}

/// What the scheduler works with.
pub struct Shared {
    pub clock: Arc<dyn Clock>,
    pub spool: Arc<Spool>,
    pub ledger: Arc<Ledger>,
    pub sites: Arc<Sites>,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
}

/// How many messages one pass loads from disk before it looks at its inputs again.
const LOADS_PER_PASS: usize = 512;
/// How often active messages are checked for expiry while their jobs wait at a site.
const EXPIRY_CHECK_MS: u64 = 5_000;
/// How often the queue gauges are updated (the oldest message takes a pass over the ledger).
const GAUGES_MS: u64 = 5_000;
/// How often idle sites are forgotten.
const FORGET_SITES_MS: u64 = 60_000;

pub struct Scheduler {
    cfg: SchedulerConfig,
    s: Shared,
    /// Due time (unix seconds, `due_s`) → waiting messages. An id is stale unless the
    /// ledger says it is waiting with that due time; stale ones are skipped when they come due.
    timers: BTreeMap<u32, Vec<MsgId>>,
    active: HashMap<MsgId, Entry>,
    /// The recipients of the active messages.
    active_rcpts: usize,
    expiry_checked: u64,
    gauges_updated: u64,
    sites_forgotten: u64,
}

/// An active message.
struct Entry {
    env: Envelope,
    place: Place,
    /// The number of its newest state record.
    seq: u32,
    /// Its jobs of this round, queued or at a worker.
    in_flight: usize,
    /// Failures gathered from this round's jobs, reported in one DSN when the round ends.
    failed: Vec<FailedRecipient>,
    /// Shared with this message's jobs (see `Job::cancelled`).
    cancelled: Arc<AtomicBool>,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, shared: Shared) -> Scheduler {
        Scheduler {
            cfg,
            s: shared,
            timers: BTreeMap::new(),
            active: HashMap::new(),
            active_rcpts: 0,
            expiry_checked: 0,
            gauges_updated: 0,
            sites_forgotten: 0,
        }
    }

    /// Runs until `stop` fires.
    pub fn run(mut self, inputs: Inputs, jobs: Arc<JobQueue>) {
        self.serve(&inputs);
        jobs.close();
    }

    fn serve(&mut self, inputs: &Inputs) {
        // Recovery's channel closes when it is done: from then on it is never ready.
        let mut recovered = inputs.recovered.clone();
        loop {
            let more = self.activate_due();
            let sites_due = self.s.sites.tick();
            self.housekeeping();
            let marks_due = self
                .s
                .spool
                .mark_freed_cells(crate::spool::MARK_FREED_AFTER);
            let now = self.s.clock.now_ms();
            let timer = match self.has_room() {
                true => self.timers.keys().next().map(|&s| s as u64 * 1000),
                false => None,
            };
            // Sleep until the next timer, site or free mark (at most 1 s, for the gauges); a
            // free worker always reports an outcome first.
            let wait = [timer, sites_due]
                .into_iter()
                .flatten()
                .map(|t| Duration::from_millis(t.saturating_sub(now)))
                .chain(marks_due)
                .chain([Duration::from_secs(1)])
                .min()
                .unwrap_or_default();
            let wait = if more { Duration::ZERO } else { wait };
            select! {
                recv(inputs.arrivals) -> a => if let Ok(a) = a { self.arrive(a) },
                recv(recovered) -> r => match r {
                    Ok(r) => self.recovered(r),
                    Err(_) => recovered = crossbeam_channel::never(),
                },
                recv(inputs.outcomes) -> o => if let Ok(o) = o { self.apply(o) },
                recv(inputs.control) -> r => if let Ok(r) = r {
                    // Anything already committed is in the ledger before a command runs.
                    while let Ok(a) = inputs.arrivals.try_recv() {
                        self.arrive(a);
                    }
                    let answer = self.control(r.command);
                    let _ = r.reply.send(answer);
                },
                recv(inputs.stop) -> _ => return,
                default(wait) => {}
            }
            // Under load, take everything that is already waiting before sleeping again:
            // one wake-up then serves many messages.
            for _ in 0..256 {
                let mut idle = true;
                if let Ok(a) = inputs.arrivals.try_recv() {
                    self.arrive(a);
                    idle = false;
                }
                if let Ok(o) = inputs.outcomes.try_recv() {
                    self.apply(o);
                    idle = false;
                }
                if idle {
                    break;
                }
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = self.s.clock.now_ms();
        if now.saturating_sub(self.expiry_checked) >= EXPIRY_CHECK_MS {
            self.expiry_checked = now;
            self.expire_waiting_jobs(now);
        }
        if now.saturating_sub(self.gauges_updated) >= GAUGES_MS {
            self.gauges_updated = now;
            let oldest = self
                .s
                .ledger
                .oldest()
                .map_or(0, |id| now.saturating_sub(id.received_ms()) / 1000);
            self.s.metrics.set_queue(self.s.ledger.len() as u64, oldest);
            // Also measures it, so that a change to or from short of space is logged
            // while no client comes.
            if let Some(free) = self.s.spool.space().free() {
                self.s.metrics.set_spool_free(free);
            }
        }
        if now.saturating_sub(self.sites_forgotten) >= FORGET_SITES_MS {
            self.sites_forgotten = now;
            self.s.sites.forget_idle();
        }
    }

    /// Messages recovery found: due at their next try.
    fn recovered(&mut self, batch: Vec<(MsgId, u32)>) {
        for (id, due) in batch {
            self.timers.entry(due).or_default().push(id);
        }
    }

    /// A message committed by a session that did not go straight to a worker.
    fn arrive(&mut self, a: Arrival) {
        let Some(id) = MsgId::parse(&a.env.id) else {
            return;
        };
        if self.has_room() {
            if self.s.ledger.update(id, |r| r.holder = Holder::Active) {
                self.activate(id, a.env, a.place, 0);
            }
            return;
        }
        // No room: it waits on disk, first in line.
        let now = self.s.clock.now_ms();
        self.wait(id, now);
    }

    /// Puts a message in line for `due` (unix ms).
    fn wait(&mut self, id: MsgId, due: u64) {
        let due = due_s(due, self.s.clock.now_ms());
        let waiting = self.s.ledger.update(id, |r| {
            r.holder = Holder::Waiting;
            r.due = due;
        });
        if waiting {
            self.timers.entry(due).or_default().push(id);
        }
    }

    /// Loads due messages from disk while the active set has room. True if more are due
    /// than one pass loads.
    fn activate_due(&mut self) -> bool {
        let now = self.s.clock.now_ms();
        let mut loaded = 0;
        while self.has_room() {
            let Some(mut first) = self.timers.first_entry() else {
                return false;
            };
            let due = *first.key();
            if due as u64 * 1000 > now {
                return false;
            }
            let Some(id) = first.get_mut().pop() else {
                first.remove();
                continue;
            };
            if first.get().is_empty() {
                first.remove();
            }
            let current = self
                .s
                .ledger
                .get(id)
                .filter(|r| r.holder == Holder::Waiting && r.due == due);
            let Some(record) = current else {
                continue;
            };
            if loaded == LOADS_PER_PASS {
                self.timers.entry(due).or_default().push(id);
                return true;
            }
            loaded += 1;
            match self.s.spool.load(record.place, &id.to_string()) {
                Ok((env, seq)) => {
                    self.s.ledger.update(id, |r| r.holder = Holder::Active);
                    self.activate(id, env, record.place, seq);
                }
                Err(e) => self.unreadable(id, record.place, e),
            }
        }
        false
    }

    /// A due message that could not be loaded: a damaged slot is quarantined; one that no
    /// longer holds it (free, or another message's) is left alone, and the message is gone;
    /// anything else is tried again later.
    fn unreadable(&mut self, id: MsgId, place: Place, e: io::Error) {
        if e.kind() == io::ErrorKind::NotFound {
            log::error!("{id}: lost from the queue: {e}");
            self.s.ledger.remove(id);
            return;
        }
        if e.kind() == io::ErrorKind::InvalidData {
            let why = format!("cannot read the queued message: {e}");
            if let Err(e) = self.s.spool.quarantine(place, &id.to_string(), &why) {
                log::error!("{id}: cannot quarantine: {e}");
            }
            self.s.ledger.remove(id);
            return;
        }
        log::error!("{id}: cannot read the queued message: {e}; trying again in a minute");
        let later = self.s.clock.now_ms() + 60_000;
        self.wait(id, later);
    }

    /// Makes a message active and starts its next attempt.
    fn activate(&mut self, id: MsgId, env: Envelope, place: Place, seq: u32) {
        let entry = Entry {
            env,
            place,
            seq,
            in_flight: 0,
            failed: Vec::new(),
            cancelled: Arc::default(),
        };
        self.enter(id, entry);
        self.dispatch(id);
    }

    /// Whether another message may become active (`--active-limit`, `--active-recipients`).
    fn has_room(&self) -> bool {
        self.active.is_empty()
            || self.active.len() < self.cfg.active_limit
                && self.active_rcpts < self.cfg.active_recipients
    }

    fn enter(&mut self, id: MsgId, entry: Entry) {
        self.active_rcpts += entry.env.recipients.len();
        if let Some(old) = self.active.insert(id, entry) {
            self.active_rcpts -= old.env.recipients.len();
        }
    }

    fn leave(&mut self, id: MsgId) -> Option<Entry> {
        let entry = self.active.remove(&id)?;
        self.active_rcpts -= entry.env.recipients.len();
        Some(entry)
    }

    /// Splits an active message's pending recipients into jobs, one per destination, and
    /// queues them at their sites.
    fn dispatch(&mut self, id: MsgId) {
        let Some(entry) = self.active.get_mut(&id) else {
            return;
        };
        let env = &mut entry.env;
        env.attempts += 1;
        let groups = self.cfg.routes.group(env);
        log::debug!("{id}: attempt {} in {} jobs", env.attempts, groups.len());
        entry.in_flight = groups.len();
        if groups.is_empty() {
            self.finish_round(id);
            return;
        }
        let jobs = groups
            .into_iter()
            .map(|g| Job::new(env, g, entry.place, entry.cancelled.clone()))
            .collect();
        for (job, why) in self.s.sites.queue(jobs) {
            self.apply(deferred_outcome(&job, &why));
        }
    }

    /// Active messages past their lifetime whose jobs still wait at a site (a slow or
    /// throttled one): the jobs are taken back and the message expires.
    fn expire_waiting_jobs(&mut self, now: u64) {
        let lifetime = self.cfg.max_queue_lifetime;
        let overdue: HashSet<String> = self
            .active
            .values()
            .filter(|e| super::retry::expired(e.env.received, now, lifetime))
            .map(|e| e.env.id.clone())
            .collect();
        if overdue.is_empty() {
            return;
        }
        for job in self.s.sites.withdraw(|j| overdue.contains(&j.id)) {
            self.apply(deferred_outcome(&job, "still waiting for its destination"));
        }
    }
}

/// Delays for logs and DSNs: "90s", "5m", "2h", "5d".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
