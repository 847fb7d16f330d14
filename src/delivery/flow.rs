//! In-flow control, after Postfix's `in_flow_delay`: while delivery as a whole is behind
//! (every worker busy and more than `--in-flow-backlog` messages waiting at destinations that
//! deliver quickly: see `Sites::judge_behind`), a client's next MAIL waits up to `--in-flow-delay`
//! for deliveries to catch up, then goes ahead regardless. A burst is taken at full speed up
//! to the backlog; past it, intake slows to the pace of delivery. Mail queued behind one slow
//! or dead destination does not count: it must not slow intake for the others.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// `--in-flow-backlog` and `--in-flow-delay`.
#[derive(Clone, Copy, Debug)]
pub struct InFlowConfig {
    pub backlog: usize,
    pub delay: Duration,
}

pub struct InFlow {
    behind: Mutex<bool>,
    caught_up: Condvar,
    backlog: usize,
    /// Zero turns the control off.
    delay: Duration,
}

impl InFlow {
    pub fn new(backlog: usize, delay: Duration) -> InFlow {
        InFlow {
            behind: Mutex::new(false),
            caught_up: Condvar::new(),
            backlog,
            delay,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.behind.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn backlog(&self) -> usize {
        self.backlog
    }

    pub fn delay(&self) -> Duration {
        self.delay
    }

    pub fn set_behind(&self, now: bool) {
        let mut behind = self.lock();
        if *behind != now {
            *behind = now;
            if !now {
                self.caught_up.notify_all();
            }
        }
    }

    /// Before a new message: waits while delivery is behind, at most the delay. Returns how
    /// long it waited, if it did.
    pub fn pace(&self) -> Option<Duration> {
        if self.delay.is_zero() {
            return None;
        }
        let behind = self.lock();
        if !*behind {
            return None;
        }
        let start = Instant::now();
        let _ = self
            .caught_up
            .wait_timeout_while(behind, self.delay, |b| *b)
            .unwrap_or_else(|e| e.into_inner());
        Some(start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_only_while_behind_and_wakes_when_deliveries_catch_up() {
        let flow = Arc::new(InFlow::new(1, Duration::from_secs(30)));
        assert_eq!(flow.pace(), None, "not behind: no wait");
        flow.set_behind(true);
        let waiter = {
            let flow = flow.clone();
            std::thread::spawn(move || flow.pace())
        };
        std::thread::sleep(Duration::from_millis(50));
        flow.set_behind(false);
        let waited = waiter.join().unwrap().expect("it waited");
        assert!(waited < Duration::from_secs(30), "woken, not timed out");
    }

    #[test]
    fn gives_up_after_the_delay_and_can_be_turned_off() {
        let flow = InFlow::new(0, Duration::from_millis(20));
        flow.set_behind(true);
        assert!(flow.pace().is_some_and(|w| w >= Duration::from_millis(20)));
        let off = InFlow::new(0, Duration::ZERO);
        off.set_behind(true);
        assert_eq!(off.pace(), None);
    }
}
