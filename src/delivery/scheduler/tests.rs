//! The scheduler driven step by step with a fake clock: no threads, no sleeping. Workers are
//! played by the test, which takes the jobs the sites hand out and reports outcomes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::HostPort;
use crate::control::Command;
use crate::delivery::RcptResult;
use crate::delivery::clock::FakeClock;
use crate::delivery::flow::InFlow;
use crate::delivery::intake::Arrival;
use crate::delivery::ledger::{Holder, Record};
use crate::delivery::sites::{Feedback, SiteConfig};
use crate::spool::Kind;

const MINUTE: u64 = 60_000;

struct Bench {
    sched: Scheduler,
    clock: Arc<FakeClock>,
    jobs: Arc<JobQueue>,
    outcomes: crossbeam_channel::Receiver<Outcome>,
    root: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn bench(active_limit: usize, workers: usize) -> Bench {
    let root =
        std::env::temp_dir().join(format!("mxrelay-unit-sched-{}", crate::spool::id::new_id()));
    let clock = Arc::new(FakeClock::at(1_700_000_000_000));
    let spool = Arc::new(Spool::open(&root).unwrap());
    // Removed messages are marked free at once, so that the tests see what is queued.
    spool.mark_freed_cells_at_once();
    let jobs = JobQueue::new(workers);
    let (tx, outcomes) = crossbeam_channel::unbounded();
    let flow = Arc::new(InFlow::new(1000, Duration::from_secs(1)));
    let sites = Arc::new(Sites::new(
        SiteConfig {
            workers,
            concurrency: 20,
            rate: None,
            dead_time: Duration::from_secs(60),
            max_dead_time: Duration::from_secs(600),
        },
        clock.clone(),
        jobs.clone(),
        tx,
        flow,
    ));
    let metrics = Arc::new(Metrics::new());
    let routes = Arc::new(RouteTable {
        smarthost: Arc::from([]),
        routes: [("slow.test", 2525), ("fast.test", 2526)]
            .into_iter()
            .map(|(d, port)| {
                let host = "127.0.0.1".to_string();
                (d.to_string(), HostPort { host, port })
            })
            .collect::<HashMap<_, _>>(),
    });
    let sched = Scheduler::new(
        SchedulerConfig {
            hostname: "relay.test".into(),
            postmaster: "postmaster@relay.test".into(),
            retry: vec![Duration::from_secs(60)],
            max_queue_lifetime: Duration::from_secs(10 * 60),
            routes,
            active_limit,
            active_recipients: 1_000_000,
        },
        Shared {
            clock: clock.clone(),
            spool,
            ledger: Arc::default(),
            sites,
            events: Arc::new(Events::open(None, None, metrics.clone()).unwrap()),
            metrics,
        },
    );
    Bench {
        sched,
        clock,
        jobs,
        outcomes,
        root,
    }
}

impl Bench {
    /// A message committed and handed to the scheduler, as a session does.
    fn submit(&mut self, to: &str) -> MsgId {
        self.submit_to(&[to])
    }

    fn submit_to(&mut self, to: &[&str]) -> MsgId {
        let spool = &self.sched.s.spool;
        let mut inc = spool.create();
        inc.write_all(b"Subject: t\r\n\r\nbody\r\n").unwrap();
        let mut env = Envelope::sample(&inc.id, to);
        env.received = self.clock.now_ms();
        env.size = 20;
        let place = spool.commit(inc, &env).unwrap();
        let id = MsgId::parse(&env.id).unwrap();
        let record = Record {
            place,
            due: 0,
            holder: Holder::Arriving,
        };
        assert!(self.sched.s.ledger.insert(id, record));
        self.sched.arrive(Arrival { env, place });
        id
    }

    /// Plays the workers: every job handed out gets `result`; returns how many.
    fn work(&mut self, result: impl Fn(&Job) -> RcptResult) -> usize {
        let mut n = 0;
        while let Ok(job) = self.jobs.recv(Some(Duration::ZERO)) {
            n += 1;
            self.sched.s.sites.done(&job, Feedback::Reached, "", None);
            let results = job.rcpts.iter().map(|(i, _)| (*i, result(&job))).collect();
            self.sched.apply(Outcome {
                id: job.id.clone(),
                results,
            });
        }
        n
    }

    /// One turn of the scheduler's loop, without its waiting.
    fn turn(&mut self) {
        while self.sched.activate_due() {}
        self.sched.s.sites.tick();
        while let Ok(o) = self.outcomes.try_recv() {
            self.sched.apply(o);
        }
    }

    fn holder(&self, id: MsgId) -> Option<Holder> {
        self.sched.s.ledger.get(id).map(|r| r.holder)
    }

    fn on_disk(&self) -> Vec<Envelope> {
        let mut out = Vec::new();
        crate::spool::list_each(&self.root.join("queue"), |_, e| out.push(e)).unwrap();
        out
    }
}

fn delivered(_: &Job) -> RcptResult {
    RcptResult::Delivered {
        relay: "mx".into(),
        reply: "250 ok".into(),
        tls: false,
    }
}

fn deferred(_: &Job) -> RcptResult {
    RcptResult::Deferred {
        reason: "451 later".into(),
    }
}

fn suppressed(_: &Job) -> RcptResult {
    RcptResult::Suppressed {
        reason: crate::suppression::Reason::Unsubscribe,
    }
}

#[test]
fn a_recipient_suppressed_on_its_retry_is_done_without_a_dsn() {
    let mut b = bench(100, 4);
    let id = b.submit("x@fast.test");
    assert_eq!(b.work(deferred), 1);
    let due = b.sched.s.ledger.get(id).unwrap().due as u64 * 1000;
    b.clock.advance(due - b.clock.now_ms());
    b.turn();
    assert_eq!(b.work(suppressed), 1);
    assert!(b.sched.s.ledger.is_empty(), "done");
    assert!(b.on_disk().is_empty(), "no DSN");
}

/// Messages with many recipients (personalised mail gets a job per recipient) are bounded by
/// their recipients too; one with more than the budget still comes in, alone.
#[test]
fn the_recipient_budget_bounds_what_is_in_memory() {
    let mut b = bench(100, 1);
    b.sched.cfg.active_recipients = 5;
    let three = ["a@fast.test", "b@fast.test", "c@fast.test"];
    let ids: Vec<MsgId> = (0..4).map(|_| b.submit_to(&three)).collect();
    assert_eq!(
        b.sched.active.len(),
        2,
        "3 + 3 recipients reach the budget of 5"
    );
    assert_eq!(b.sched.active_rcpts, 6);
    let waiting = |b: &Bench| {
        ids.iter()
            .filter(|id| b.holder(**id) == Some(Holder::Waiting))
            .count()
    };
    assert_eq!(waiting(&b), 2);
    let big: Vec<String> = (0..8).map(|i| format!("r{i}@fast.test")).collect();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    let alone = b.submit_to(&big);
    assert_eq!(b.holder(alone), Some(Holder::Waiting));
    for _ in 0..20 {
        b.work(delivered);
        b.turn();
        assert!(b.sched.active_rcpts < 5 + 8, "{}", b.sched.active_rcpts);
    }
    assert!(
        b.sched.s.ledger.is_empty(),
        "every one delivered, the big one too"
    );
    assert_eq!(b.sched.active_rcpts, 0);
    assert!(b.on_disk().is_empty());
}

#[test]
fn the_active_limit_bounds_what_is_in_memory() {
    let mut b = bench(3, 1);
    let ids: Vec<MsgId> = (0..10).map(|_| b.submit("x@fast.test")).collect();
    assert_eq!(b.sched.active.len(), 3);
    let waiting = ids
        .iter()
        .filter(|id| b.holder(**id) == Some(Holder::Waiting))
        .count();
    assert_eq!(waiting, 7, "the rest wait on disk, due now");
    let mut most = 0;
    for _ in 0..20 {
        b.work(delivered);
        b.turn();
        most = most.max(b.sched.active.len());
    }
    assert!(most <= 3, "{most}");
    assert!(b.sched.s.ledger.is_empty(), "every one delivered");
    assert!(b.on_disk().is_empty());
}

#[test]
fn a_deferred_message_waits_on_disk_and_comes_back_when_due() {
    let mut b = bench(100, 4);
    let id = b.submit("x@fast.test");
    assert_eq!(b.work(deferred), 1);
    // Its state is recorded in place; its envelope is no longer in memory.
    assert_eq!(b.holder(id), Some(Holder::Waiting));
    assert!(b.sched.active.is_empty());
    let on_disk = b.on_disk();
    assert_eq!(on_disk[0].attempts, 1);
    assert_eq!(on_disk[0].last_error, "451 later");
    let due = b.sched.s.ledger.get(id).unwrap().due as u64 * 1000;
    let wait = due - b.clock.now_ms();
    assert!((54_000..=67_000).contains(&wait), "{wait}");
    b.turn();
    assert_eq!(b.work(deferred), 0, "not before it is due");
    b.clock.advance(wait);
    b.turn();
    assert_eq!(b.work(delivered), 1);
    assert!(b.sched.s.ledger.is_empty());
}

#[test]
fn a_message_expires_from_waiting_with_a_last_try_at_its_lifetime() {
    let mut b = bench(100, 4);
    let received = b.clock.now_ms();
    let id = b.submit("x@fast.test");
    let mut tries = 0;
    for _ in 0..30 {
        tries += b.work(deferred);
        let Some(record) = b.sched.s.ledger.get(id) else {
            break;
        };
        b.clock.advance(record.due as u64 * 1000 - b.clock.now_ms());
        b.turn();
    }
    assert_eq!(b.holder(id), None, "expired after 10 minutes");
    // Retries every minute or so (±10%), the last one at the lifetime itself.
    assert!((11..=13).contains(&tries), "{tries}");
    assert_eq!(b.clock.now_ms(), received + 10 * MINUTE);
    // The DSN to the sender is queued in its place.
    let queued = b.on_disk();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].kind, Kind::Bounce);
    assert_eq!(queued[0].recipients[0].address, "a@client.test");
}

#[test]
fn an_expired_message_whose_dsn_cannot_be_spooled_waits_and_is_not_lost() {
    use crate::spool::fsio::fault::{self, Fault};
    let mut b = bench(100, 4);
    let id = b.submit("x@fast.test");
    b.work(deferred);
    b.clock.advance(11 * MINUTE);
    // The disk is full: neither the DSN nor the deferral's state record can be written.
    fault::inject(Fault::Disk {
        errno: libc::ENOSPC,
    });
    b.turn();
    assert_eq!(b.work(deferred), 1, "its last try");
    fault::clear();
    assert_eq!(b.holder(id), Some(Holder::Waiting), "still queued");
    let due = b.sched.s.ledger.get(id).unwrap().due as u64 * 1000;
    let wait = due - b.clock.now_ms();
    assert!(
        (54_000..=67_000).contains(&wait),
        "not at once again: {wait}"
    );
    b.turn();
    assert_eq!(b.work(deferred), 0);
    assert_eq!(b.on_disk().len(), 1, "the message only");
    // Space is back: its next round bounces it.
    b.clock.advance(wait);
    b.turn();
    assert_eq!(b.work(deferred), 2, "its round, then the DSN's first try");
    assert_eq!(b.holder(id), None);
    let queued = b.on_disk();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].kind, Kind::Bounce);
}

#[test]
fn expiry_reaches_jobs_that_wait_at_a_slow_site() {
    let mut b = bench(100, 1);
    let stuck = b.submit("x@slow.test");
    let waiting = b.submit("y@slow.test");
    // The one worker is stuck on the first; the second's job waits at the site.
    let at_worker = b.jobs.recv(Some(Duration::ZERO)).unwrap();
    assert_eq!(b.sched.s.sites.queued(), 1);
    b.clock.advance(11 * MINUTE);
    b.sched.housekeeping();
    assert_eq!(b.holder(waiting), None, "expired while it waited");
    let left = b.sched.s.sites.withdraw(|j| j.id == waiting.to_string());
    assert!(left.is_empty(), "its job is no longer queued");
    assert_eq!(b.holder(stuck), Some(Holder::Active), "still at its worker");
    // The worker comes back: delivered after all, so no expiry for that one.
    b.sched
        .s
        .sites
        .done(&at_worker, Feedback::Reached, "", None);
    b.sched.apply(Outcome {
        id: at_worker.id.clone(),
        results: vec![(0, delivered(&at_worker))],
    });
    assert_eq!(b.holder(stuck), None);
    let bounces = b.on_disk();
    assert_eq!(bounces.len(), 1, "one DSN, for the expired one");
    assert_eq!(bounces[0].kind, Kind::Bounce);
}

#[test]
fn queue_commands_reach_a_message_in_every_state() {
    let mut b = bench(100, 1);
    let at_worker = b.submit("a@slow.test");
    let queued = b.submit("b@slow.test");
    let waiting = b.submit("c@fast.test");
    // c goes to its own site and its one job is deferred... by playing the worker for it
    // only once the slow site's job is out of the way.
    let job = b.jobs.recv(Some(Duration::ZERO)).unwrap();
    assert_eq!(job.id, at_worker.to_string());
    assert_eq!(b.holder(queued), Some(Holder::Active));
    // Hold the one whose job waits: taken back from its site, on hold on disk.
    b.sched
        .control(Command::Hold(Some(queued.to_string())))
        .unwrap();
    assert_eq!(b.holder(queued), Some(Holder::Held));
    let held = b.on_disk().into_iter().find(|e| e.id == queued.to_string());
    assert!(held.unwrap().held, "recorded in place");
    // Delete the one at a worker: gone now, and its job is cancelled.
    assert!(!job.cancelled.load(std::sync::atomic::Ordering::SeqCst));
    b.sched
        .control(Command::Delete(Some(at_worker.to_string())))
        .unwrap();
    assert!(job.cancelled.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(b.holder(at_worker), None);
    b.sched.s.sites.done(&job, Feedback::Reached, "", None);
    b.sched.apply(Outcome {
        id: job.id.clone(),
        results: vec![(0, deferred(&job))],
    });
    assert_eq!(
        b.holder(at_worker),
        None,
        "its late outcome changes nothing"
    );
    // The third: deferred, then flushed, then delivered.
    b.work(deferred);
    assert_eq!(b.holder(waiting), Some(Holder::Waiting));
    assert_eq!(
        b.sched.control(Command::Flush(None)),
        Ok("flushed 1 message(s)".into())
    );
    b.turn();
    assert_eq!(b.work(delivered), 1);
    // Release the held one: due now, delivered.
    b.sched.control(Command::Release(None)).unwrap();
    assert_eq!(b.holder(queued), Some(Holder::Waiting));
    b.turn();
    assert_eq!(b.work(delivered), 1);
    assert!(b.sched.s.ledger.is_empty());
    assert!(b.on_disk().is_empty());
    assert_eq!(
        b.sched.control(Command::Delete(Some(queued.to_string()))),
        Err(format!("{queued}: not in the queue"))
    );
}

#[test]
fn a_dead_site_defers_its_mail_without_a_worker_and_flush_revives_it() {
    let mut b = bench(100, 2);
    let ids: Vec<MsgId> = (0..6).map(|_| b.submit("x@slow.test")).collect();
    // Two attempts find nobody listening: the site is dead, the rest deferred at once.
    for _ in 0..2 {
        let job = b.jobs.recv(Some(Duration::ZERO)).unwrap();
        b.sched
            .s
            .sites
            .done(&job, Feedback::Unreachable, "connection refused", None);
        b.sched.apply(route_deferred(&job));
    }
    b.turn();
    assert!(ids.iter().all(|id| b.holder(*id) == Some(Holder::Waiting)));
    assert_eq!(b.work(delivered), 0, "no connect attempt per message");
    let on_disk = b.on_disk();
    assert!(
        on_disk
            .iter()
            .all(|e| e.last_error.contains("unreachable") || e.last_error.contains("refused"))
    );
    // New mail for it is deferred at once too.
    let late = b.submit("y@slow.test");
    b.turn();
    assert_eq!(b.holder(late), Some(Holder::Waiting));
    // The operator says the next hop is back: everything goes now.
    b.sched.control(Command::Flush(None)).unwrap();
    let mut sent = 0;
    for _ in 0..10 {
        b.turn();
        sent += b.work(delivered);
    }
    assert_eq!(sent, 7);
    assert!(b.sched.s.ledger.is_empty());
}

fn route_deferred(job: &Job) -> Outcome {
    crate::delivery::sites::deferred_outcome(job, "connect to 127.0.0.1 failed: connection refused")
}

#[test]
fn a_long_line_of_due_messages_is_loaded_a_pass_at_a_time() {
    let mut b = bench(1, 1);
    let n = LOADS_PER_PASS + 100;
    for _ in 0..n {
        b.submit("x@fast.test");
    }
    assert_eq!(b.sched.active.len(), 1, "the rest wait on disk");
    b.sched.cfg.active_limit = 10 * n;
    assert!(b.sched.activate_due(), "more are due than one pass loads");
    assert_eq!(b.sched.active.len(), 1 + LOADS_PER_PASS);
    assert!(!b.sched.activate_due());
    assert_eq!(b.sched.active.len(), n);
}

#[test]
fn a_due_message_whose_slot_is_unreadable_is_never_sent() {
    let mut b = bench(100, 1);
    let id = b.submit("x@fast.test");
    b.work(deferred);
    let place = b.sched.s.ledger.get(id).unwrap().place;
    // Its slot is freed and taken by another message behind the scheduler's back (a bug or a
    // hand on the spool): that message is left alone, the first is gone.
    b.sched.s.spool.remove(place).unwrap();
    let other = b.submit("y@fast.test");
    assert_eq!(b.sched.s.ledger.get(other).unwrap().place, place);
    b.work(deferred);
    b.clock.advance(2 * MINUTE);
    b.turn();
    assert_eq!(b.holder(id), None);
    assert_eq!(b.work(delivered), 1);
    assert_eq!(b.holder(other), None, "the one sent was the other");
    assert!(
        std::fs::read_dir(b.root.join("corrupt"))
            .unwrap()
            .next()
            .is_none()
    );
    // A damaged slot is quarantined.
    let id = b.submit("z@fast.test");
    b.work(deferred);
    let place = b.sched.s.ledger.get(id).unwrap().place;
    b.sched.s.spool.damage_for_tests(place);
    b.clock.advance(2 * MINUTE);
    b.turn();
    assert_eq!(b.holder(id), None);
    assert_eq!(b.work(delivered), 0);
    let reason = std::fs::read_to_string(b.root.join(format!("corrupt/{id}.reason"))).unwrap();
    assert!(reason.contains("cannot read"), "{reason}");
}
