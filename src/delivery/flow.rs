//! In-flow control, after Postfix's `in_flow_delay`: when more accepted messages wait for the
//! end of their first delivery attempt than `--in-flow-backlog`, a client's next MAIL waits
//! up to `--in-flow-delay` for deliveries to catch up, then goes ahead regardless. A burst is
//! taken at full speed up to the backlog; past it, intake slows to the pace of delivery
//! instead of growing the queue (and the scheduler's memory) without bound. On a busy box
//! that also leaves the CPU to delivery, so mail gets through sooner.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct InFlow {
    /// Accepted messages whose first delivery attempt has not ended.
    backlog: Mutex<usize>,
    drained: Condvar,
    limit: usize,
    /// Zero turns the control off.
    delay: Duration,
}

impl InFlow {
    pub fn new(limit: usize, delay: Duration) -> InFlow {
        InFlow {
            backlog: Mutex::new(0),
            drained: Condvar::new(),
            limit,
            delay,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A message was committed to the spool.
    pub fn accepted(&self) {
        *self.lock() += 1;
    }

    /// A message's first delivery attempt ended (or it left the queue before one did).
    pub fn attempted(&self) {
        let mut backlog = self.lock();
        *backlog = backlog.saturating_sub(1);
        if *backlog <= self.limit {
            self.drained.notify_one();
        }
    }

    /// Before a new message: waits while the backlog is over the limit, at most the delay.
    /// Returns how long it waited, if it did.
    pub fn pace(&self) -> Option<Duration> {
        if self.delay.is_zero() {
            return None;
        }
        let backlog = self.lock();
        if *backlog <= self.limit {
            return None;
        }
        let start = Instant::now();
        let _ = self
            .drained
            .wait_timeout_while(backlog, self.delay, |b| *b > self.limit)
            .unwrap_or_else(|e| e.into_inner());
        Some(start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_only_over_the_limit_and_wakes_when_deliveries_catch_up() {
        let flow = Arc::new(InFlow::new(1, Duration::from_secs(30)));
        flow.accepted();
        assert_eq!(flow.pace(), None, "at the limit: no wait");
        flow.accepted();
        let waiter = {
            let flow = flow.clone();
            std::thread::spawn(move || flow.pace())
        };
        std::thread::sleep(Duration::from_millis(50));
        flow.attempted();
        let waited = waiter.join().unwrap().expect("it waited");
        assert!(waited < Duration::from_secs(30), "woken, not timed out");
    }

    #[test]
    fn gives_up_after_the_delay_and_can_be_turned_off() {
        let flow = InFlow::new(0, Duration::from_millis(20));
        flow.accepted();
        assert!(flow.pace().is_some_and(|w| w >= Duration::from_millis(20)));
        let off = InFlow::new(0, Duration::ZERO);
        off.accepted();
        assert_eq!(off.pace(), None);
    }
}
