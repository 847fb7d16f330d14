//! How sessions hand committed messages to delivery. A message whose recipients all go to
//! one destination goes straight to a worker when one is free and its site has room and
//! nothing queued (`Sites::try_direct`). If the worker delivers it to every recipient, the
//! worker removes it, and the scheduler never hears of it: no thread but the session and the
//! worker wakes for it. Otherwise (several destinations, a busy pool or site, a failure) the
//! scheduler takes it up.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crossbeam_channel::Sender;

use super::ledger::{Holder, Ledger, Record};
use super::route::RouteTable;
use super::sites::Sites;
use super::{Job, RcptResult};
use crate::events::{Event, Events};
use crate::metrics::Metrics;
use crate::spool::id::MsgId;
use crate::spool::{Envelope, Place, Spool};

/// What a session needs to hand a message over, and a worker to finish one.
pub struct Services {
    pub routes: Arc<RouteTable>,
    pub spool: Arc<Spool>,
    pub ledger: Arc<Ledger>,
    pub sites: Arc<Sites>,
    pub to_scheduler: Sender<Arrival>,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
}

/// A message just committed, for the scheduler.
pub struct Arrival {
    pub env: Envelope,
    pub place: Place,
}

pub struct Intake {
    services: Services,
}

/// The scheduler is gone (shutting down): the message waits on disk for the next start.
#[derive(Debug)]
pub struct Stopped;

impl Intake {
    pub fn new(services: Services) -> Intake {
        Intake { services }
    }

    /// Hands over a message just committed to the spool at `place`.
    pub fn submit(&self, env: Envelope, place: Place) -> Result<(), Stopped> {
        let s = &self.services;
        let id = MsgId::parse(&env.id).expect("a queue id we made");
        let mut groups = s.routes.group(&env);
        {
            // Held across the hand-off, so the worker finds the message in the ledger, and
            // nothing else can take it up in between.
            let mut book = s.ledger.lock();
            if groups.len() == 1 {
                let cancelled = Arc::<AtomicBool>::default();
                let job = Job::new(&env, groups.pop().expect("one"), place, cancelled.clone());
                book.insert_direct(id, place, cancelled);
                if s.sites.try_direct(job).is_none() {
                    log::debug!("{}: attempt 1 in 1 jobs, straight to a worker", env.id);
                    return Ok(());
                }
                book.not_direct(id);
            } else {
                let record = Record {
                    place,
                    due: 0,
                    holder: Holder::Arriving,
                };
                book.insert(id, record);
            }
        }
        s.to_scheduler
            .send(Arrival { env, place })
            .map_err(|_| Stopped)
    }

    /// For a worker, after `job`: finishes its message if it came straight from its session,
    /// the scheduler has not taken it up, and every recipient got it. False: the results are
    /// for the scheduler.
    pub fn finish_direct(&self, job: &Job, results: &[(usize, RcptResult)]) -> bool {
        let all_delivered = results.len() == job.rcpts.len()
            && results
                .iter()
                .all(|(_, r)| matches!(r, RcptResult::Delivered { .. }));
        if !all_delivered {
            return false;
        }
        let s = &self.services;
        let Some(id) = MsgId::parse(&job.id) else {
            return false;
        };
        let Some(place) = s.ledger.finish_direct(id) else {
            return false;
        };
        for (i, result) in results {
            let address = job.rcpts.iter().find(|(j, _)| j == i).map(|(_, a)| a);
            if let (RcptResult::Delivered { relay, reply, tls }, Some(address)) = (result, address)
            {
                s.events.report(&Event::Delivered {
                    id: &job.id,
                    recipient: address,
                    relay,
                    reply,
                    tls: *tls,
                    received: job.received,
                    tag: crate::events::tag(&job.tag),
                });
            }
        }
        s.metrics.bytes_delivered(job.size);
        match s.spool.remove_soon(place) {
            Ok(()) => log::info!("{}: removed (all recipients done)", job.id),
            Err(e) => log::error!("{}: cannot remove from the spool: {e}", job.id),
        }
        true
    }
}
