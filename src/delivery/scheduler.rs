//! The scheduler: the only writer of queued state after commit, but for one case: a message
//! that a worker got straight from its session and delivered to every recipient, which the
//! worker removes (see `intake`). It keeps an in-memory index of queued messages (rebuilt
//! from the spool at start), turns due messages into one job per destination, applies
//! outcomes (crossing recipients off on disk as they are delivered or fail), schedules
//! retries, expires old mail, spools the DSNs, and carries out the operator's queue commands
//! (flush, delete, hold, release).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, select};

use super::flow::InFlow;
use super::intake::Intake;
use super::route::RouteTable;
use super::{Delivered, Job, JobQueue, Outcome, RcptResult, retry};
use crate::bounce::{self, Diagnostic, FailedRecipient};
use crate::control::{Command, Request};
use crate::events::{Events, V, rfc3339};
use crate::metrics::Metrics;
use crate::spool::{Envelope, Kind, RcptState, Recipient, Spool, id};

/// How much of the original message a DSN quotes (its header section).
const DSN_HEADER_LIMIT: usize = 64 * 1024;

pub struct SchedulerConfig {
    pub hostname: String,
    pub postmaster: String,
    pub retry: Vec<Duration>,
    pub max_queue_lifetime: Duration,
    pub routes: Arc<RouteTable>,
}

/// Where the scheduler's work comes from.
pub struct Inputs {
    /// New messages the sessions could not hand to a worker themselves (for those they
    /// could, see `Scheduler::take_direct`).
    pub intake: Receiver<Envelope>,
    pub outcomes: Receiver<Outcome>,
    pub control: Receiver<Request>,
    pub stop: Receiver<()>,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    spool: Arc<Spool>,
    events: Arc<Events>,
    metrics: Arc<Metrics>,
    in_flow: Arc<InFlow>,
    intake: Arc<Intake>,
    entries: HashMap<String, Entry>,
    /// (due time in unix ms, id). An entry is stale unless it matches the message's
    /// `next_attempt`; stale ones are skipped when they come due.
    timers: BTreeSet<(u64, String)>,
    ready: VecDeque<Job>,
    gauges_updated: Option<Instant>,
}

struct Entry {
    env: Envelope,
    in_flight: usize,
    /// Failures gathered from this round's jobs, reported in one DSN when the round ends.
    failed: Vec<FailedRecipient>,
    /// Whether `<id>.env` may exist (a newer envelope was written, or we cannot know).
    newer_envelope: bool,
    /// Counted in the in-flow backlog: accepted by a session, first attempt not yet over.
    in_flow: bool,
    /// Shared with this message's jobs in flight (see `Job::cancelled`).
    cancelled: Arc<AtomicBool>,
}

impl Entry {
    /// The message's first attempt is over, or it will not have one (held, deleted).
    fn leave_in_flow(&mut self, flow: &InFlow) {
        if std::mem::take(&mut self.in_flow) {
            flow.attempted();
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Scheduler {
    pub fn new(
        cfg: SchedulerConfig,
        spool: Arc<Spool>,
        events: Arc<Events>,
        metrics: Arc<Metrics>,
        in_flow: Arc<InFlow>,
        intake: Arc<Intake>,
        recovered: Vec<Envelope>,
    ) -> Scheduler {
        let mut s = Scheduler {
            cfg,
            spool,
            events,
            metrics,
            in_flow,
            intake,
            entries: HashMap::new(),
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            gauges_updated: None,
        };
        if !recovered.is_empty() {
            log::info!(
                "queue: {} messages recovered from the spool",
                recovered.len()
            );
        }
        for env in recovered {
            s.add(env, true, false);
        }
        s
    }

    /// Runs until `stop` fires.
    pub fn run(mut self, inputs: Inputs, jobs: Arc<JobQueue>) {
        self.serve(inputs, &jobs);
        jobs.close();
    }

    fn serve(&mut self, inputs: Inputs, jobs: &JobQueue) {
        loop {
            self.take_direct();
            self.fire_due_timers();
            while let Some(job) = self.ready.pop_front() {
                if let Some(job) = jobs.try_send(job) {
                    self.ready.push_front(job);
                    break;
                }
            }
            self.intake.set_scheduler_backlog(!self.ready.is_empty());
            self.update_gauges();
            let marks_due = self.spool.mark_freed_cells(crate::spool::MARK_FREED_AFTER);
            // Sleep until the next timer or free mark (at most 1 s, for the gauges); a free
            // worker always reports an outcome first.
            let wait = self
                .timers
                .first()
                .map_or(Duration::from_secs(1), |(due, _)| {
                    Duration::from_millis(due.saturating_sub(now_ms()))
                })
                .min(marks_due.unwrap_or(Duration::MAX))
                .min(Duration::from_secs(1));
            select! {
                // Never closed: the scheduler holds the `Intake` that sends here.
                recv(inputs.intake) -> env => if let Ok(env) = env { self.add(env, false, true) },
                recv(inputs.outcomes) -> o => if let Ok(o) = o { self.apply(o) },
                recv(inputs.control) -> r => if let Ok(r) = r {
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
                if let Ok(env) = inputs.intake.try_recv() {
                    self.add(env, false, true);
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

    /// Takes up the messages sessions handed straight to workers: each is in flight, on its
    /// first attempt, as one job. Called before anything that may refer to them (an outcome,
    /// a queue command), so no such message is missing from the index.
    fn take_direct(&mut self) {
        for direct in self.intake.take_direct() {
            let id = direct.env.id.clone();
            self.entries.insert(
                id,
                Entry {
                    env: direct.env,
                    in_flight: 1,
                    failed: Vec::new(),
                    newer_envelope: false,
                    in_flow: true,
                    cancelled: direct.cancelled,
                },
            );
        }
    }

    /// `in_flow`: a message a session just accepted (counted in the in-flow backlog).
    fn add(&mut self, env: Envelope, newer_envelope: bool, in_flow: bool) {
        let id = env.id.clone();
        if !env.held {
            self.timers.insert((env.next_attempt, id.clone()));
        }
        self.entries.insert(
            id,
            Entry {
                env,
                in_flight: 0,
                failed: Vec::new(),
                newer_envelope,
                in_flow,
                cancelled: Arc::default(),
            },
        );
    }

    fn update_gauges(&mut self) {
        if self
            .gauges_updated
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.gauges_updated = Some(Instant::now());
        let now = now_ms();
        let oldest = self
            .entries
            .values()
            .map(|e| e.env.received)
            .min()
            .map_or(0, |r| now.saturating_sub(r) / 1000);
        self.metrics.set_queue(self.entries.len() as u64, oldest);
    }

    fn fire_due_timers(&mut self) {
        let now = now_ms();
        while let Some((due, _)) = self.timers.first() {
            if *due > now {
                break;
            }
            let (due, id) = self.timers.pop_first().expect("non-empty");
            let current = self
                .entries
                .get(&id)
                .is_some_and(|e| e.env.next_attempt == due && e.in_flight == 0 && !e.env.held);
            if current {
                self.dispatch(&id);
            }
        }
    }

    /// Splits a message's pending recipients into jobs, one per destination.
    fn dispatch(&mut self, id: &str) {
        let Some(entry) = self.entries.get_mut(id) else {
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
        let body = match self.spool.message_file(id) {
            Ok(f) => f,
            Err(e) => {
                // Counts as a failed attempt for every recipient: retried, then expired.
                log::error!("{id}: cannot open the queued message: {e}");
                let reason = format!("cannot open the queued message: {e}");
                entry.in_flight = 1;
                let results = groups
                    .into_iter()
                    .flat_map(|(_, rcpts)| rcpts)
                    .map(|(i, _)| {
                        let reason = reason.clone();
                        (i, RcptResult::Deferred { reason })
                    })
                    .collect();
                self.apply(Outcome {
                    id: id.to_string(),
                    results,
                });
                return;
            }
        };
        for group in groups {
            let job = Job::new(env, group, body.clone(), entry.cancelled.clone());
            self.ready.push_back(job);
        }
    }

    fn apply(&mut self, outcome: Outcome) {
        self.take_direct();
        let id = outcome.id;
        // A message deleted by the operator while in flight is simply gone.
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
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
                    let delivery = Delivered {
                        relay: &relay,
                        reply: &reply,
                        tls,
                    };
                    let (metrics, events) = (&self.metrics, &self.events);
                    delivery.report(&id, entry.env.received, &rcpt.address, metrics, events);
                    rcpt.state = RcptState::Delivered;
                    changed = true;
                }
                RcptResult::Deferred { reason } => {
                    log::info!("{id}: deferred to=<{}> reason=\"{reason}\"", rcpt.address);
                    self.metrics.recipient_deferred();
                    entry.env.last_error = reason;
                }
                RcptResult::Failed {
                    status,
                    relay,
                    reason,
                } => {
                    log::info!(
                        "{id}: failed to=<{}> status={status} reason=\"{reason}\"",
                        rcpt.address
                    );
                    rcpt.state = RcptState::Failed;
                    entry.failed.push(FailedRecipient::failure(
                        rcpt.address.clone(),
                        status,
                        relay,
                        reason,
                    ));
                    changed = true;
                }
            }
        }
        if delivered_any {
            // One transaction carried the message once, whatever the number of recipients.
            self.metrics.bytes_delivered(entry.env.size);
        }
        if entry.in_flight == 0 {
            self.finish_round(&id);
        } else if changed {
            // Cross off what is done now, so a crash repeats only what is still in flight.
            self.persist(&id);
        }
    }

    /// All jobs of this attempt are back: bounce failures, then retry, expire or remove.
    fn finish_round(&mut self, id: &str) {
        let now = now_ms();
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        entry.leave_in_flow(&self.in_flow);
        if entry.env.has_pending()
            && retry::expired(entry.env.received, now, self.cfg.max_queue_lifetime)
        {
            let last = if entry.env.last_error.is_empty() {
                "no attempt succeeded".to_string()
            } else {
                entry.env.last_error.clone()
            };
            let reason = format!(
                "message expired after {} in the queue; last error: {last}",
                human(self.cfg.max_queue_lifetime)
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
            log::info!("{id}: expired: {reason}");
            self.metrics.message_expired();
            let age = now.saturating_sub(entry.env.received) / 1000;
            self.events.emit(
                "expired",
                &[
                    ("id", V::Str(id)),
                    ("recipients", V::List(&expired)),
                    ("age_s", V::Num(age)),
                ],
            );
        }
        let failed = std::mem::take(&mut entry.failed);
        let env = entry.env.clone();
        if !failed.is_empty() {
            // The DSN is spooled before the failures are recorded: a crash in between can
            // repeat a DSN, never lose one.
            self.bounce(&env, failed);
        }
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        if entry.env.has_pending() {
            let delay = retry::delay(
                &self.cfg.retry,
                entry.env.attempts,
                super::random_below(1000) as f64 / 1000.0,
            );
            entry.env.next_attempt = now + delay.as_millis() as u64;
            log::info!(
                "{id}: deferred, attempt {} failed, next try in {}: {}",
                entry.env.attempts,
                human(delay),
                entry.env.last_error
            );
            let pending = entry.env.pending_addresses();
            self.events.emit(
                "deferred",
                &[
                    ("id", V::Str(id)),
                    ("recipients", V::List(&pending)),
                    ("reason", V::Str(&entry.env.last_error)),
                    ("attempt", V::Num(entry.env.attempts as u64)),
                    (
                        "next_try",
                        V::Str(&rfc3339(
                            UNIX_EPOCH + Duration::from_millis(entry.env.next_attempt),
                        )),
                    ),
                ],
            );
            if !entry.env.held {
                self.timers.insert((entry.env.next_attempt, id.to_string()));
            }
            self.persist(id);
        } else {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: &str) {
        let Some(entry) = self.entries.remove(id) else {
            return;
        };
        super::remove_done(&self.spool, &entry.env, entry.newer_envelope);
    }

    fn persist(&mut self, id: &str) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.newer_envelope = true;
            if let Err(e) = self.spool.update(&entry.env) {
                log::error!("{id}: cannot update the envelope: {e}");
            }
        }
    }

    /// Reports failures to the sender; a null-sender message is never bounced: its failure
    /// goes to the postmaster as a double bounce, and a double bounce that fails is dropped.
    fn bounce(&mut self, env: &Envelope, failed: Vec<FailedRecipient>) {
        let to = match (env.kind, env.sender.is_empty()) {
            (Kind::DoubleBounce, _) => {
                log::warn!(
                    "{}: undeliverable double bounce dropped ({} recipients)",
                    env.id,
                    failed.len()
                );
                self.bounced_events(env, &failed, None);
                return;
            }
            (_, true) => {
                log::warn!(
                    "{}: null sender, not bounced; copy to the postmaster <{}>",
                    env.id,
                    self.cfg.postmaster
                );
                (self.cfg.postmaster.clone(), Kind::DoubleBounce)
            }
            (_, false) => (env.sender.clone(), Kind::Bounce),
        };
        let headers = self
            .spool
            .read_headers(env, DSN_HEADER_LIMIT)
            .unwrap_or_default();
        let dsn_id = id::new_id();
        let now = SystemTime::now();
        let original = bounce::Original {
            queue_id: &env.id,
            sender: &to.0,
            arrival: UNIX_EPOCH + Duration::from_millis(env.received),
            headers: &headers,
        };
        let body = bounce::build(
            &self.cfg.hostname,
            &self.cfg.postmaster,
            &original,
            &failed,
            now,
            &dsn_id,
        );
        let dsn = Envelope {
            id: dsn_id.clone(),
            kind: to.1,
            received: now_ms(),
            client: "127.0.0.1".into(),
            helo: self.cfg.hostname.clone(),
            sender: String::new(),
            size: body.len() as u64,
            eight_bit: body.iter().any(|&b| b >= 0x80),
            smtputf8: !to.0.is_ascii(),
            attempts: 0,
            next_attempt: 0,
            last_error: String::new(),
            held: false,
            recipients: vec![Recipient {
                address: to.0.clone(),
                state: RcptState::Pending,
            }],
        };
        match self.spool.store(&dsn, &body) {
            Ok(()) => {
                log::info!(
                    "{}: bounced {} recipients, DSN {dsn_id} to <{}>",
                    env.id,
                    failed.len(),
                    to.0
                );
                self.bounced_events(env, &failed, Some(&dsn_id));
                self.add(dsn, false, false);
            }
            // Without the DSN on disk the failures must not be recorded either: keep them
            // pending so the next round tries again.
            Err(e) => {
                log::error!(
                    "{}: cannot spool the DSN: {e}; failures stay pending",
                    env.id
                );
                if let Some(entry) = self.entries.get_mut(&env.id) {
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
        }
    }

    fn bounced_events(&self, env: &Envelope, failed: &[FailedRecipient], dsn_id: Option<&str>) {
        for f in failed {
            self.metrics.recipient_bounced();
            self.events.emit(
                "bounced",
                &[
                    ("id", V::Str(&env.id)),
                    ("recipient", V::Str(&f.address)),
                    ("status", V::Str(&f.status)),
                    (
                        "reason",
                        V::OptStr(f.diagnostic.as_ref().map(Diagnostic::text)),
                    ),
                    ("relay", V::OptStr(f.remote_mta.as_deref())),
                    ("dsn_id", V::OptStr(dsn_id)),
                ],
            );
        }
    }

    /// The operator's queue commands; the answer is one line for the `queue` command.
    fn control(&mut self, command: Command) -> Result<String, String> {
        self.take_direct();
        let now = now_ms();
        let ids: Vec<String> = match command.target() {
            Some(id) if self.entries.contains_key(id) => vec![id.to_string()],
            Some(id) => return Err(format!("{id}: not in the queue")),
            None => self.entries.keys().cloned().collect(),
        };
        let mut n = 0;
        for id in &ids {
            let entry = self.entries.get_mut(id).expect("listed");
            match command {
                Command::Flush(_) => {
                    if entry.env.held || entry.in_flight > 0 {
                        continue;
                    }
                    entry.env.next_attempt = now;
                    self.timers.insert((now, id.clone()));
                }
                Command::Hold(_) => {
                    entry.env.held = true;
                    // Not in flight: no first attempt is coming.
                    if entry.in_flight == 0 {
                        entry.leave_in_flow(&self.in_flow);
                    }
                    log::info!("{id}: put on hold");
                }
                Command::Release(_) => {
                    if !entry.env.held {
                        continue;
                    }
                    entry.env.held = false;
                    entry.env.next_attempt = now;
                    self.timers.insert((now, id.clone()));
                    log::info!("{id}: released");
                }
                Command::Delete(_) => {
                    let pending = entry.env.pending_addresses();
                    self.events.emit(
                        "deleted",
                        &[("id", V::Str(id)), ("recipients", V::List(&pending))],
                    );
                    log::info!("{id}: deleted by the operator");
                    entry.leave_in_flow(&self.in_flow);
                    if entry.in_flight > 0 {
                        // A worker may be sending the body right now: delete, don't recycle.
                        entry.cancelled.store(true, Ordering::SeqCst);
                        if let Err(e) = self.spool.discard(id) {
                            log::error!("{id}: cannot remove from the spool: {e}");
                        }
                        self.entries.remove(id);
                    } else {
                        self.remove(id);
                    }
                    n += 1;
                    continue;
                }
            }
            n += 1;
            if !matches!(command, Command::Flush(_)) {
                self.persist(id);
            }
        }
        Ok(format!("{} {n} message(s)", command.verb()))
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
