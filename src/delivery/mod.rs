//! Delivery: a fixed pool of worker threads takes jobs (one destination's recipients of one
//! message) from a bounded channel and reports per-recipient outcomes. Jobs wait in a queue
//! per destination site (`sites`) until a worker is free and the site has room; sessions
//! hand a new message's job straight to a worker when they can (`intake`). The ledger
//! (`ledger`) knows every queued message and who holds it; the scheduler (`scheduler`), the
//! only writer of queued state but for that hand-off, activates due messages, applies
//! outcomes, retries, expires and bounces, and carries out the queue commands.

pub mod attempt;
pub mod clock;
pub mod flow;
pub mod intake;
pub mod ledger;
pub mod retry;
pub mod route;
pub mod scheduler;
pub mod sites;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::dns::Resolver;
use crate::spool::{Envelope, Place, Spool, Stored};
use crate::suppression::Suppressions;
use route::Destination;

/// The recipients of one message that share a destination, delivered in one transaction.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub sender: String,
    /// (index in the envelope, address)
    pub rcpts: Vec<(usize, String)>,
    pub dest: Destination,
    /// The site the job counts against, and when a worker got it (set by `Sites`).
    pub site: String,
    pub started: u64,
    /// Where the message is; the worker opens it for as long as it sends.
    pub place: Place,
    /// When the message was received (unix ms).
    pub received: u64,
    /// Set when the operator deletes the message: a delivery that has not sent the body yet
    /// leaves its transaction unfinished, so the message never goes out.
    pub cancelled: Arc<AtomicBool>,
    /// The message's tag, for its events; empty: none.
    pub tag: String,
    pub size: u64,
    /// Of `size`, the header section stored after the body (see `Envelope::head`).
    pub head: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// What the recipient's own copy gets (then `rcpts` holds one recipient).
    pub personal: crate::tracking::Personal,
}

impl Job {
    pub fn new(
        env: &Envelope,
        (dest, rcpts): route::Group,
        place: Place,
        cancelled: Arc<AtomicBool>,
    ) -> Job {
        Job {
            id: env.id.clone(),
            sender: env.sender.clone(),
            rcpts,
            dest,
            site: String::new(),
            started: 0,
            place,
            received: env.received,
            cancelled,
            tag: env.tag.clone(),
            size: env.size,
            head: env.head,
            eight_bit: env.eight_bit,
            smtputf8: env.smtputf8,
            personal: env.personal,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptResult {
    Delivered {
        relay: String,
        reply: String,
        tls: bool,
    },
    Deferred {
        reason: String,
    },
    Failed {
        status: String,
        relay: Option<String>,
        reason: String,
    },
    /// On the suppression list: not sent, and no DSN (see `screen`).
    Suppressed {
        reason: crate::suppression::Reason,
    },
}

#[derive(Debug)]
pub struct Outcome {
    pub id: String,
    pub results: Vec<(usize, RcptResult)>,
}

/// How workers deliver, as the flags say.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// The size of the pool.
    pub workers: usize,
    pub hostname: String,
    pub mx_port: u16,
    pub connect_timeout: Duration,
    /// Caps every client-side SMTP timeout (tests, impatient setups).
    pub delivery_timeout: Option<Duration>,
    pub tls_outbound: crate::config::TlsOutbound,
    pub smarthost_tls: crate::config::SmarthostTls,
    pub smarthost_insecure: bool,
    /// User and the file holding the smarthost password.
    pub smarthost_login: Option<(String, PathBuf)>,
    /// Extra CA certificate trusted when verifying next hops.
    pub tls_ca_file: Option<PathBuf>,
    /// Transactions on one connection at most (`--dest-messages-per-connection`).
    pub messages_per_connection: usize,
}

/// What workers need to deliver: their config (read through `Deref`, as `ctx.mx_port`) and
/// what start-up made of it.
pub struct Context {
    pub cfg: DeliveryConfig,
    pub resolver: Arc<dyn Resolver>,
    pub tls: crate::tls::Outbound,
    /// User and password for the smarthost.
    pub smarthost_auth: Option<(String, String)>,
    /// Smarthosts that failed lately (tried last for a while).
    pub hosts: route::HostHealth,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl std::ops::Deref for Context {
    type Target = DeliveryConfig;

    fn deref(&self) -> &DeliveryConfig {
        &self.cfg
    }
}

impl DeliveryConfig {
    /// User and password for the smarthost, read from the password file (at start-up, while
    /// the relay may still read root's files).
    pub fn smarthost_auth(&self) -> std::io::Result<Option<(String, String)>> {
        let Some((user, file)) = &self.smarthost_login else {
            return Ok(None);
        };
        let pw = std::fs::read_to_string(file).map_err(|e| {
            std::io::Error::other(format!(
                "--smarthost-password-file: {}: {e}",
                file.display()
            ))
        })?;
        Ok(Some((
            user.clone(),
            pw.trim_end_matches(['\r', '\n']).to_string(),
        )))
    }
}

impl Context {
    /// Sets up outbound TLS.
    pub fn new(
        cfg: DeliveryConfig,
        smarthost_auth: Option<(String, String)>,
        resolver: Arc<dyn Resolver>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::io::Result<Context> {
        let tls = crate::tls::Outbound::new(cfg.tls_ca_file.as_deref())
            .map_err(|e| std::io::Error::other(format!("tls: {}", e.0)))?;
        Ok(Context {
            cfg,
            resolver,
            tls,
            smarthost_auth,
            hosts: Default::default(),
            metrics,
        })
    }
}

/// The scheduler's hand-off to the workers: a bounded crossbeam channel, with a condition
/// variable that idle workers sleep on. crossbeam's own blocking receive spins and then
/// yields several times before it sleeps; on a two-core box each yield is a context switch
/// (measured: three per message), so workers only ever poll the channel and sleep here.
pub struct JobQueue {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    closed: Mutex<bool>,
    ready: Condvar,
}

impl JobQueue {
    pub fn new(capacity: usize) -> Arc<JobQueue> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        Arc::new(JobQueue {
            tx,
            rx,
            closed: Mutex::new(false),
            ready: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.closed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the job to a worker; gives it back when the queue is full.
    #[must_use]
    pub fn try_send(&self, job: Job) -> Option<Job> {
        // The receiver lives as long as `self`: the channel is never disconnected.
        if let Err(e) = self.tx.try_send(job) {
            return Some(e.into_inner());
        }
        // Taking the lock orders this with a worker that found the channel empty: it is
        // either asleep (and woken) or has not looked yet.
        drop(self.lock());
        self.ready.notify_one();
        None
    }

    /// Wakes every worker to exit once the channel is empty.
    pub fn close(&self) {
        *self.lock() = true;
        self.ready.notify_all();
    }

    /// The next job; `None` as `timeout` waits indefinitely.
    fn recv(&self, timeout: Option<Duration>) -> Result<Job, RecvTimeoutError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.rx.try_recv() {
                Ok(job) => return Ok(job),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let closed = self.lock();
            if !self.rx.is_empty() {
                continue;
            }
            if *closed {
                return Err(RecvTimeoutError::Disconnected);
            }
            match deadline {
                None => drop(self.ready.wait(closed).unwrap_or_else(|e| e.into_inner())),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(RecvTimeoutError::Timeout);
                    }
                    drop(
                        self.ready
                            .wait_timeout(closed, left)
                            .unwrap_or_else(|e| e.into_inner()),
                    );
                }
            }
        }
    }
}

/// What the workers share.
pub struct Pool {
    pub jobs: Arc<JobQueue>,
    pub sites: Arc<sites::Sites>,
    pub intake: Arc<intake::Intake>,
    pub spool: Arc<Spool>,
    pub outcomes: Sender<Outcome>,
    pub ctx: Arc<Context>,
    pub suppressions: Arc<Suppressions>,
    /// Makes each recipient's own copy of personalised mail (tracking, unsubscribe).
    pub copier: Option<Arc<crate::tracking::Copier>>,
}

/// Workers report each job to its site, then send its outcome to the scheduler, except where
/// the message went to them straight from its session and was delivered to every recipient:
/// they finish that one themselves (`Intake::finish_direct`).
pub fn spawn_workers(n: usize, pool: Arc<Pool>) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let pool = pool.clone();
            thread::Builder::new()
                .name(format!("deliver-{i}"))
                .spawn(move || work(&pool))
        })
        .collect()
}

fn work(pool: &Pool) {
    let ctx = &pool.ctx;
    let mut cache = attempt::Cache::default();
    loop {
        // With a connection kept open, wake up in time to close it when idle.
        let wait = (!cache.is_empty()).then_some(attempt::KEEP_IDLE);
        let mut job = match pool.jobs.recv(wait) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                cache.expire(false);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        ctx.metrics.worker_busy();
        let suppressed = screen(&mut job, &pool.suppressions);
        let mut attempt = if job.rcpts.is_empty() {
            attempt::Attempt::nothing()
        } else {
            match pool.spool.open_message(job.place) {
                Ok(body) => deliver(&mut job, &body, pool, &mut cache),
                Err(e) => {
                    attempt::Attempt::deferred(&job, format!("cannot open the queued message: {e}"))
                }
            }
        };
        learn(&job, &attempt.results, &pool.suppressions);
        ctx.metrics.worker_idle();
        pool.sites
            .done(&job, attempt.feedback, &attempt.error, attempt.mx_site);
        if suppressed.is_empty() && pool.intake.finish_direct(&job, &attempt.results) {
            continue;
        }
        attempt.results.extend(suppressed);
        let outcome = Outcome {
            id: job.id,
            results: attempt.results,
        };
        if pool.outcomes.send(outcome).is_err() {
            break;
        }
    }
    cache.expire(true);
}

/// The attempt of one job: the message as stored, or the recipient's own copy of
/// personalised mail (made here, signed after the rewrite).
fn deliver(
    job: &mut Job,
    stored: &Stored,
    pool: &Pool,
    cache: &mut attempt::Cache,
) -> attempt::Attempt {
    let copier = pool.copier.as_deref();
    let (Some(copier), true, [(_, recipient)]) = (copier, job.personal.any(), &job.rcpts[..])
    else {
        return attempt::deliver(job, stored, &pool.ctx, cache);
    };
    let source = attempt::StoredMessage {
        stored,
        size: job.size,
        head: job.head,
    };
    let recipient = recipient.clone();
    let copy = match copier.prepare(&source, &job.id, &recipient, job.personal) {
        Ok(Some(copy)) => copy,
        Ok(None) => return attempt::deliver(job, stored, &pool.ctx, cache),
        Err(e) => {
            let reason = format!("cannot make the copy for {recipient}: {e}");
            return attempt::Attempt::deferred(job, reason);
        }
    };
    log::debug!(
        "{}: copy for {recipient}: {} links, {} pixels, {} bytes",
        job.id,
        copy.report.links,
        copy.report.pixels,
        copy.size
    );
    // The next hop sees the copy: its SIZE, in order.
    let mut own = job.clone();
    own.size = copy.size;
    own.head = 0;
    attempt::deliver(&own, &copy, &pool.ctx, cache)
}

/// Takes the recipients on the suppression list out of `job`, just before its attempt: the
/// one check for mail straight from its session and for mail from the scheduler, after any
/// wait. Their results (`Suppressed`) go to the scheduler, which records them, reports the
/// event and sends no DSN. Mail with the null sender (DSNs) is never held back: it reports
/// on the sender's own mail.
fn screen(job: &mut Job, list: &Suppressions) -> attempt::Results {
    if job.sender.is_empty() || list.is_empty() {
        return Vec::new();
    }
    let now = clock::now_ms();
    let mut suppressed = Vec::new();
    job.rcpts
        .retain(|(i, address)| match list.get(address, now) {
            Some(entry) => {
                let reason = entry.reason;
                suppressed.push((*i, RcptResult::Suppressed { reason }));
                false
            }
            None => true,
        });
    suppressed
}

/// Puts the recipients whose mailbox does not exist on the suppression list
/// (`--suppress-bounces`); only replies from the next hop count, never our own verdicts.
fn learn(job: &Job, results: &attempt::Results, list: &Suppressions) {
    if list.config().bounce_expiry.is_none() {
        return;
    }
    let failures: Vec<(&str, &str, &str)> = results
        .iter()
        .filter_map(|(i, r)| match r {
            RcptResult::Failed {
                status,
                relay: Some(_),
                reason,
            } => {
                let address = job.rcpts.iter().find(|(j, _)| j == i)?.1.as_str();
                Some((address, status.as_str(), reason.as_str()))
            }
            _ => None,
        })
        .collect();
    if !failures.is_empty() {
        list.record_bounces(&failures, clock::now_ms());
    }
}

/// A uniform pick in `0..n` (n > 0) from the OS generator; good enough for MX shuffling and
/// retry jitter, where predictability is the only concern.
pub fn random_below(n: usize) -> usize {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0;
    }
    (u64::from_le_bytes(b) % n.max(1) as u64) as usize
}
