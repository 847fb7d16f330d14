//! How sessions hand committed messages to delivery. A message whose recipients all go to
//! one destination goes straight to a worker when the job queue has room and the scheduler
//! has nothing waiting for one. If the worker delivers it to every recipient, the worker
//! removes it, and the scheduler never hears of it: no thread but the session and the
//! worker wakes for it. Otherwise the scheduler takes it up like any other: it does so
//! whenever it wakes, and always before it applies an outcome or carries out a queue
//! command, so the message is in its index before anything can refer to it. The rest
//! (several destinations, a busy pool) goes to the scheduler, which dispatches it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use super::flow::InFlow;
use super::route::RouteTable;
use super::{Delivered, Job, JobQueue, RcptResult};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::spool::{Envelope, Spool};

/// What a session needs to hand a message over, and a worker to finish one.
pub struct Services {
    pub routes: Arc<RouteTable>,
    pub spool: Arc<Spool>,
    pub jobs: Arc<JobQueue>,
    pub to_scheduler: Sender<Envelope>,
    pub in_flow: Arc<InFlow>,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
}

pub struct Intake {
    services: Services,
    /// Messages handed straight to a worker, by id, that the scheduler has not taken up.
    direct: Mutex<HashMap<String, Direct>>,
    /// Set by the scheduler while it has jobs that no worker has taken: new mail then
    /// waits its turn behind them.
    scheduler_backlog: AtomicBool,
}

/// A message on its first attempt, handed straight to a worker as one job.
pub struct Direct {
    /// With the attempt counted.
    pub env: Envelope,
    /// Shared with the job (see `Job::cancelled`).
    pub cancelled: Arc<AtomicBool>,
}

/// The scheduler is gone (shutting down): the message waits on disk for the next start.
#[derive(Debug)]
pub struct Stopped;

impl Intake {
    pub fn new(services: Services) -> Intake {
        Intake {
            services,
            direct: Mutex::default(),
            scheduler_backlog: AtomicBool::new(false),
        }
    }

    /// Hands over a message just committed to the spool.
    pub fn submit(&self, mut env: Envelope) -> Result<(), Stopped> {
        let s = &self.services;
        if !env.held && !self.scheduler_backlog.load(Ordering::Relaxed) {
            let mut groups = s.routes.group(&env);
            if groups.len() == 1
                && let Ok(body) = s.spool.message_file(&env.id)
            {
                let group = groups.pop().expect("one group");
                let cancelled = Arc::<AtomicBool>::default();
                let job = Job::new(&env, group, body, cancelled.clone());
                // Held across the hand-off, so the scheduler, which takes this lock before
                // it applies an outcome, never sees the job's outcome before the message.
                let mut direct = self.lock();
                if s.jobs.try_send(job).is_none() {
                    env.attempts += 1;
                    log::debug!("{}: attempt 1 in 1 jobs, straight to a worker", env.id);
                    direct.insert(env.id.clone(), Direct { env, cancelled });
                    return Ok(());
                }
            }
        }
        s.to_scheduler.send(env).map_err(|_| Stopped)
    }

    /// The messages handed straight to workers that the scheduler has not taken up yet.
    pub fn take_direct(&self) -> Vec<Direct> {
        std::mem::take(&mut *self.lock()).into_values().collect()
    }

    /// For a worker, after `job`: finishes its message if it came straight from its session,
    /// the scheduler has not taken it up, and every recipient got it. Otherwise gives the
    /// results back, for the scheduler.
    pub fn finish_direct(
        &self,
        job: &Job,
        results: Vec<(usize, RcptResult)>,
    ) -> Option<Vec<(usize, RcptResult)>> {
        let all_delivered = results.len() == job.rcpts.len()
            && results
                .iter()
                .all(|(_, r)| matches!(r, RcptResult::Delivered { .. }));
        if !all_delivered {
            return Some(results);
        }
        let Some(Direct { env, .. }) = self.lock().remove(&job.id) else {
            return Some(results);
        };
        let s = &self.services;
        for (i, result) in &results {
            if let (RcptResult::Delivered { relay, reply, tls }, Some(rcpt)) =
                (result, env.recipients.get(*i))
            {
                let tls = *tls;
                let delivery = Delivered { relay, reply, tls };
                let (metrics, events) = (&s.metrics, &s.events);
                delivery.report(&env.id, env.received, &rcpt.address, metrics, events);
            }
        }
        s.metrics.bytes_delivered(env.size);
        s.in_flow.attempted();
        super::remove_done(&s.spool, &env, false);
        None
    }

    pub fn set_scheduler_backlog(&self, waiting: bool) {
        self.scheduler_backlog.store(waiting, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Direct>> {
        self.direct.lock().unwrap_or_else(|e| e.into_inner())
    }
}
