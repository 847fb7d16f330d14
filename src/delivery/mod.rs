//! Delivery: the scheduler (the only writer of queued state) hands jobs, one per destination,
//! over a bounded channel to a fixed pool of worker threads, which send back per-recipient
//! outcomes.

pub mod attempt;
pub mod retry;
pub mod route;
pub mod scheduler;

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::dns::Resolver;
use route::Destination;

/// The recipients of one message that share a destination, delivered in one transaction.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub sender: String,
    /// (index in the envelope, address)
    pub rcpts: Vec<(usize, String)>,
    pub dest: Destination,
    /// The message's slot file in the spool (see `spool::slot::MessageReader`).
    pub body: Arc<std::fs::File>,
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
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
}

#[derive(Debug)]
pub struct Outcome {
    pub id: String,
    pub results: Vec<(usize, RcptResult)>,
}

/// What workers need to deliver.
pub struct Context {
    pub hostname: String,
    pub resolver: Arc<dyn Resolver>,
    pub mx_port: u16,
    pub connect_timeout: Duration,
    /// Caps every client-side SMTP timeout (tests, impatient setups).
    pub delivery_timeout: Option<Duration>,
    pub tls: crate::tls::Outbound,
    pub tls_outbound: crate::config::TlsOutbound,
    pub smarthost_tls: crate::config::SmarthostTls,
    pub smarthost_insecure: bool,
    /// User and password for the smarthost.
    pub smarthost_auth: Option<(String, String)>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub fn spawn_workers(
    n: usize,
    jobs: Receiver<Job>,
    outcomes: Sender<Outcome>,
    ctx: Arc<Context>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let (jobs, outcomes, ctx) = (jobs.clone(), outcomes.clone(), ctx.clone());
            thread::Builder::new()
                .name(format!("deliver-{i}"))
                .spawn(move || {
                    let mut cache = attempt::Cache::default();
                    loop {
                        // With a connection kept open, wake up in time to close it when idle.
                        let job = if cache.is_empty() {
                            jobs.recv().ok()
                        } else {
                            match jobs.recv_timeout(attempt::KEEP_IDLE) {
                                Ok(job) => Some(job),
                                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                                    cache.expire(false);
                                    continue;
                                }
                                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => None,
                            }
                        };
                        let Some(job) = job else { break };
                        ctx.metrics.worker_busy();
                        let results = attempt::deliver(&job, &ctx, &mut cache);
                        ctx.metrics.worker_idle();
                        if outcomes
                            .send(Outcome {
                                id: job.id,
                                results,
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    cache.expire(true);
                })
        })
        .collect()
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
