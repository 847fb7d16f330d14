//! The scheduler: the only writer of queued state after commit. It keeps an in-memory index
//! of queued messages (rebuilt from the spool at start), turns due messages into one job per
//! destination, applies outcomes (crossing recipients off on disk as they are delivered or
//! fail), schedules retries, expires old mail and spools the DSNs.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, select};

use super::route::{Destination, RouteTable};
use super::{Job, Outcome, RcptResult, retry};
use crate::bounce::{self, FailedRecipient};
use crate::spool::{Envelope, Kind, RcptState, Recipient, Spool, id};

/// Most servers take at least 100 recipients per transaction (RFC 5321 4.5.3.1.8).
const MAX_RCPTS_PER_JOB: usize = 100;
/// How much of the original message a DSN quotes (its header section).
const DSN_HEADER_LIMIT: usize = 64 * 1024;

pub struct SchedulerConfig {
    pub hostname: String,
    pub postmaster: String,
    pub retry: Vec<Duration>,
    pub max_queue_lifetime: Duration,
    pub routes: RouteTable,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    spool: Arc<Spool>,
    entries: HashMap<String, Entry>,
    /// (due time in unix ms, id) for messages waiting for their next attempt.
    timers: BTreeSet<(u64, String)>,
    ready: VecDeque<Job>,
}

struct Entry {
    env: Envelope,
    in_flight: usize,
    /// Failures gathered from this round's jobs, reported in one DSN when the round ends.
    failed: Vec<FailedRecipient>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, spool: Arc<Spool>, recovered: Vec<Envelope>) -> Scheduler {
        let mut s = Scheduler {
            cfg,
            spool,
            entries: HashMap::new(),
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
        };
        if !recovered.is_empty() {
            log::info!(
                "queue: {} messages recovered from the spool",
                recovered.len()
            );
        }
        for env in recovered {
            s.add(env);
        }
        s
    }

    /// Runs until `stop` fires or the intake closes.
    pub fn run(
        mut self,
        intake: Receiver<Envelope>,
        outcomes: Receiver<Outcome>,
        jobs: Sender<Job>,
        stop: Receiver<()>,
    ) {
        loop {
            self.fire_due_timers();
            while let Some(job) = self.ready.pop_front() {
                match jobs.try_send(job) {
                    Ok(()) => {}
                    Err(TrySendError::Full(job)) => {
                        self.ready.push_front(job);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            // Sleep until the next timer; a free worker always reports an outcome first.
            let wait = self
                .timers
                .first()
                .map_or(Duration::from_secs(3600), |(due, _)| {
                    Duration::from_millis(due.saturating_sub(now_ms()))
                });
            select! {
                recv(intake) -> env => match env {
                    Ok(env) => self.add(env),
                    Err(_) => return,
                },
                recv(outcomes) -> o => if let Ok(o) = o { self.apply(o) },
                recv(stop) -> _ => return,
                default(wait) => {}
            }
        }
    }

    fn add(&mut self, env: Envelope) {
        let id = env.id.clone();
        self.timers.insert((env.next_attempt, id.clone()));
        self.entries.insert(
            id,
            Entry {
                env,
                in_flight: 0,
                failed: Vec::new(),
            },
        );
    }

    fn fire_due_timers(&mut self) {
        let now = now_ms();
        while let Some((due, _)) = self.timers.first() {
            if *due > now {
                break;
            }
            let (_, id) = self.timers.pop_first().expect("non-empty");
            self.dispatch(&id);
        }
    }

    /// Splits a message's pending recipients into jobs, one per destination.
    fn dispatch(&mut self, id: &str) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        let env = &mut entry.env;
        env.attempts += 1;
        let mut groups: Vec<(Destination, Vec<(usize, String)>)> = Vec::new();
        for (i, r) in env.pending() {
            let domain = r.address.rsplit_once('@').map_or("", |(_, d)| d);
            let dest = self.cfg.routes.destination(domain);
            match groups
                .iter_mut()
                .find(|(d, rcpts)| *d == dest && rcpts.len() < MAX_RCPTS_PER_JOB)
            {
                Some((_, rcpts)) => rcpts.push((i, r.address.clone())),
                None => groups.push((dest, vec![(i, r.address.clone())])),
            }
        }
        log::debug!("{id}: attempt {} in {} jobs", env.attempts, groups.len());
        entry.in_flight = groups.len();
        for (dest, rcpts) in groups {
            self.ready.push_back(Job {
                id: id.to_string(),
                sender: env.sender.clone(),
                rcpts,
                dest,
                body: self.spool.body_path(id),
                size: env.size,
                eight_bit: env.eight_bit,
                smtputf8: env.smtputf8,
            });
        }
        if entry.in_flight == 0 {
            self.finish_round(id);
        }
    }

    fn apply(&mut self, outcome: Outcome) {
        let id = outcome.id;
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        let mut changed = false;
        for (i, result) in outcome.results {
            let Some(rcpt) = entry.env.recipients.get_mut(i) else {
                continue;
            };
            match result {
                RcptResult::Delivered { relay, reply } => {
                    log::info!(
                        "{id}: delivered to=<{}> relay={relay} reply=\"{reply}\"",
                        rcpt.address
                    );
                    rcpt.state = RcptState::Delivered;
                    changed = true;
                }
                RcptResult::Deferred { reason } => {
                    log::info!("{id}: deferred to=<{}> reason=\"{reason}\"", rcpt.address);
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
                    entry.failed.push(FailedRecipient {
                        address: rcpt.address.clone(),
                        status,
                        remote_mta: relay,
                        diagnostic: Some(reason),
                    });
                    changed = true;
                }
            }
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
            for r in entry
                .env
                .recipients
                .iter_mut()
                .filter(|r| r.state == RcptState::Pending)
            {
                r.state = RcptState::Failed;
                entry.failed.push(FailedRecipient {
                    address: r.address.clone(),
                    status: "4.4.7".into(),
                    remote_mta: None,
                    diagnostic: Some(reason.clone()),
                });
            }
            log::info!("{id}: expired: {reason}");
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
            self.timers.insert((entry.env.next_attempt, id.to_string()));
            self.persist(id);
        } else {
            match self.spool.remove(id) {
                Ok(()) => log::info!("{id}: removed (all recipients done)"),
                Err(e) => log::error!("{id}: cannot remove from the spool: {e}"),
            }
            self.entries.remove(id);
        }
    }

    fn persist(&self, id: &str) {
        if let Some(entry) = self.entries.get(id)
            && let Err(e) = self.spool.update(&entry.env)
        {
            log::error!("{id}: cannot update the envelope: {e}");
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
            .read_headers(&env.id, DSN_HEADER_LIMIT)
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
                self.add(dsn);
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
