//! Destination queues: jobs wait in a queue per *site* (the smarthost, a route's next hop,
//! an address literal, or an MX site: domains whose MX hosts are the same share one), and
//! are handed to the worker pool only when a worker is free and the site is under its
//! concurrency limit. Workers go round-robin across the sites with work, so no site holds
//! more than its share of the pool, and a slow site cannot starve the others.
//!
//! Per site, after Postfix's queue manager: the concurrency window starts low and grows by
//! one per window's worth of successful deliveries, up to `--dest-concurrency`; refused or
//! timed-out connections and 421s shrink it. A site none of whose hosts could be connected
//! twice in a row is dead for a while: its queue is deferred at once, without a connect
//! attempt per message, and after the dead time one job probes it. An optional rate
//! (`--dest-rate`) spaces out the jobs of each site.
//!
//! Anyone who frees or adds work pumps: the scheduler when it queues jobs, a worker when it
//! finishes one, a session when it hands a new message straight to a worker (`try_direct`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::Sender;

use super::clock::Clock;
use super::flow::InFlow;
use super::route::Destination;
use super::{Job, JobQueue, Outcome, RcptResult};

#[derive(Clone, Debug)]
pub struct SiteConfig {
    pub workers: usize,
    /// `--dest-concurrency`: the most deliveries in flight to one site.
    pub concurrency: usize,
    /// `--dest-rate`: at most this many jobs per period to one site.
    pub rate: Option<(u32, Duration)>,
    /// How long a site stays dead the first time; doubled each time a probe fails, up to
    /// `max_dead_time`.
    pub dead_time: Duration,
    pub max_dead_time: Duration,
}

/// The concurrency a site starts with (Postfix's `initial_destination_concurrency` is 5,
/// with a pool of 100 processes; ours is a few threads). A quick site grows past it within
/// its first dozen deliveries.
const INITIAL_WINDOW: f64 = 2.0;
/// A site whose deliveries take longer than this, or that has had deliveries in flight for
/// this long without one ending, is slow: it gets at most a quarter of the pool, so that it
/// cannot tie up the workers when it happens to be the only site with work for a moment.
const SLOW_MS: u64 = 10_000;
/// Consecutive unreachable results that make a site dead.
const DEAD_AFTER: u32 = 2;
/// Domains whose site is remembered, at most (`site_of`).
const KNOWN_DOMAINS: usize = 10_000;

/// What a delivery attempt says about its site (not about the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feedback {
    /// A transaction ran (whatever its replies).
    Reached,
    /// Reached, but it pushed back: 4xx at connect or to MAIL, a timeout, a lost connection.
    Throttled,
    /// No host could be connected.
    Unreachable,
    /// Nothing learnt (e.g. the DNS lookup failed).
    Neutral,
}

pub struct Sites {
    cfg: SiteConfig,
    clock: Arc<dyn Clock>,
    jobs: Arc<JobQueue>,
    /// Where jobs deferred by a dead site are reported, as any outcome is.
    outcomes: Sender<Outcome>,
    in_flow: Arc<InFlow>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sites: HashMap<String, Site>,
    /// Sites with queued jobs, in turn.
    turn: VecDeque<String>,
    /// Jobs handed to the pool and not done.
    busy: usize,
    /// Sites with queued jobs or deliveries in flight.
    active: usize,
    /// The MX site of each domain, as workers found it.
    domains: HashMap<String, String>,
}

struct Site {
    queue: VecDeque<Job>,
    in_flight: usize,
    window: f64,
    unreachable: u32,
    /// Unix ms until which the site is dead (0: alive).
    dead_until: u64,
    dead_for: u64,
    /// A probe of a site that was dead is in flight: nothing else goes.
    probing: bool,
    last_error: String,
    tokens: f64,
    refilled: u64,
    in_turn: bool,
    /// How long a job here takes, on average lately (ms); `None` until one has ended.
    turnaround: Option<f64>,
    /// When a job here last ended, or started with none in flight (unix ms): a site with
    /// jobs in flight and no progress for a while is slow, whatever its past average.
    progress: u64,
}

impl Site {
    fn new(cfg: &SiteConfig, now: u64) -> Site {
        Site {
            queue: VecDeque::new(),
            in_flight: 0,
            window: INITIAL_WINDOW.min(cfg.concurrency as f64),
            unreachable: 0,
            dead_until: 0,
            dead_for: 0,
            probing: false,
            last_error: String::new(),
            tokens: cfg.rate.map_or(0.0, |(n, _)| n as f64),
            refilled: now,
            in_turn: false,
            turnaround: None,
            progress: now,
        }
    }

    fn is_active(&self) -> bool {
        !self.queue.is_empty() || self.in_flight > 0
    }

    fn dead(&self, now: u64) -> bool {
        self.dead_until > now
    }

    fn slow(&self, now: u64) -> bool {
        self.turnaround.is_some_and(|t| t > SLOW_MS as f64)
            || (self.in_flight > 0 && now.saturating_sub(self.progress) > SLOW_MS)
    }

    /// Whether its deliveries end within `ms`, as far as it has shown.
    fn quick(&self, ms: u64, now: u64) -> bool {
        self.turnaround.is_some_and(|t| t < ms as f64)
            && (self.in_flight == 0 || now.saturating_sub(self.progress) < ms)
            && !self.dead(now)
    }
}

impl Sites {
    pub fn new(
        cfg: SiteConfig,
        clock: Arc<dyn Clock>,
        jobs: Arc<JobQueue>,
        outcomes: Sender<Outcome>,
        in_flow: Arc<InFlow>,
    ) -> Sites {
        Sites {
            cfg,
            clock,
            jobs,
            outcomes,
            in_flow,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The site a job for `dest` counts against.
    fn key(state: &State, dest: &Destination) -> String {
        match dest {
            Destination::Smarthost(_) => "smarthost".into(),
            Destination::Route(hp) => format!("route {}:{}", hp.host, hp.port),
            Destination::Literal(ip) => format!("[{ip}]"),
            Destination::Mx(domain) => match state.domains.get(domain) {
                Some(site) => site.clone(),
                None => format!("mx {domain}"),
            },
        }
    }

    /// Hands a new message's job straight to a worker if one is free and its site has room
    /// and nothing queued; gives it back otherwise.
    #[must_use]
    pub fn try_direct(&self, mut job: Job) -> Option<Job> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        job.site = Self::key(&state, &job.dest);
        if state.busy >= self.cfg.workers {
            return Some(job);
        }
        let limit = self.limit(&state, &job.site, false, now);
        let site = state
            .sites
            .entry(job.site.clone())
            .or_insert_with(|| Site::new(&self.cfg, now));
        if !site.queue.is_empty() || !self.may_start(site, limit, now) {
            return Some(job);
        }
        if !site.is_active() {
            state.active += 1;
        }
        self.send(&mut state, job, now);
        None
    }

    /// Queues jobs at their sites and hands out what can go now. Jobs for a dead site come
    /// back at once, with the reason to defer them.
    pub fn queue(&self, jobs: Vec<Job>) -> Vec<(Job, String)> {
        let now = self.clock.now_ms();
        let mut refused = Vec::new();
        let mut state = self.lock();
        for mut job in jobs {
            job.site = Self::key(&state, &job.dest);
            let site = state
                .sites
                .entry(job.site.clone())
                .or_insert_with(|| Site::new(&self.cfg, now));
            if site.dead(now) {
                let why = dead_reason(&job.site, site);
                refused.push((job, why));
                continue;
            }
            let was_active = site.is_active();
            site.queue.push_back(job);
            let key = site.queue.back().expect("pushed").site.clone();
            if !was_active {
                state.active += 1;
            }
            Self::take_turn(&mut state, &key);
        }
        self.pump(&mut state, now);
        refused
    }

    /// For a worker, when a job is done: frees its place, learns from the attempt, and
    /// hands out the next jobs. `mx_site`: the MX site the job's domain turned out to have.
    pub fn done(&self, job: &Job, feedback: Feedback, error: &str, mx_site: Option<String>) {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        state.busy = state.busy.saturating_sub(1);
        if let (Destination::Mx(domain), Some(site)) = (&job.dest, mx_site) {
            if state.domains.len() >= KNOWN_DOMAINS && !state.domains.contains_key(domain) {
                state.domains.clear();
            }
            state.domains.insert(domain.clone(), site);
        }
        let mut deferred = Vec::new();
        if let Some(site) = state.sites.get_mut(&job.site) {
            site.in_flight = site.in_flight.saturating_sub(1);
            site.progress = now;
            let took = now.saturating_sub(job.started) as f64;
            site.turnaround = Some(site.turnaround.map_or(took, |t| 0.8 * t + 0.2 * took));
            let was_probing = std::mem::take(&mut site.probing);
            match feedback {
                Feedback::Reached => {
                    site.unreachable = 0;
                    site.dead_for = 0;
                    site.window =
                        (site.window + 1.0 / site.window).min(self.cfg.concurrency as f64);
                }
                Feedback::Throttled => {
                    site.window = (site.window - 1.0).max(1.0);
                }
                Feedback::Unreachable => {
                    site.unreachable += 1;
                    site.window = 1.0;
                    site.last_error = error.to_string();
                    if was_probing || site.unreachable >= DEAD_AFTER {
                        let dead_for = match site.dead_for {
                            0 => self.cfg.dead_time.as_millis() as u64,
                            d => (2 * d).min(self.cfg.max_dead_time.as_millis() as u64),
                        };
                        site.dead_for = dead_for;
                        site.dead_until = now + dead_for;
                        log::warn!(
                            "site {} is unreachable, deferring its mail for {}s: {error}",
                            job.site,
                            dead_for / 1000
                        );
                        let why = dead_reason(&job.site, site);
                        deferred.extend(site.queue.drain(..).map(|j| (j, why.clone())));
                    }
                }
                Feedback::Neutral => {}
            }
            if !site.is_active() {
                state.active = state.active.saturating_sub(1);
            }
        }
        self.pump(&mut state, now);
        drop(state);
        for (job, why) in deferred {
            let _ = self.outcomes.send(deferred_outcome(&job, &why));
        }
    }

    /// Takes the jobs no worker has started that `mine` picks out of their queues, in one
    /// pass; returns them. For deletion, hold and expiry of messages whose jobs wait.
    pub fn withdraw(&self, mine: impl Fn(&Job) -> bool) -> Vec<Job> {
        let mut state = self.lock();
        let mut out = Vec::new();
        let keys: Vec<String> = state.turn.iter().cloned().collect();
        for key in keys {
            let Some(site) = state.sites.get_mut(&key) else {
                continue;
            };
            let (mine, rest): (VecDeque<Job>, VecDeque<Job>) =
                site.queue.drain(..).partition(|j| mine(j));
            site.queue = rest;
            let idle = !site.is_active();
            if !mine.is_empty() && idle {
                state.active = state.active.saturating_sub(1);
            }
            out.extend(mine);
        }
        out
    }

    /// Brings every dead site back (the operator's flush: the next hop may be back).
    pub fn revive(&self) {
        let mut state = self.lock();
        for site in state.sites.values_mut() {
            site.dead_until = 0;
            site.unreachable = 0;
        }
    }

    /// Hands out what can go now; returns when something may go later without any other
    /// event (a dead site coming back, a rate's next token), in unix ms.
    pub fn tick(&self) -> Option<u64> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        self.pump(&mut state, now);
        state
            .turn
            .iter()
            .filter_map(|k| state.sites.get(k))
            .filter_map(|s| match (s.dead(now), self.cfg.rate) {
                (true, _) => Some(s.dead_until),
                (false, Some((n, period))) if s.tokens < 1.0 => {
                    Some(s.refilled + period.as_millis() as u64 / n.max(1) as u64)
                }
                _ => None,
            })
            .min()
    }

    /// Jobs queued at their sites, not yet handed to a worker.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        let state = self.lock();
        state.sites.values().map(|s| s.queue.len()).sum()
    }

    /// Drops what is known about sites with nothing queued or in flight, but the dead ones
    /// (called now and then, so the table does not grow with every domain ever seen; a site
    /// that pushed back starts low again anyway).
    pub fn forget_idle(&self) {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        state.sites.retain(|_, s| s.is_active() || s.dead(now));
    }

    fn take_turn(state: &mut State, key: &str) {
        if let Some(site) = state.sites.get_mut(key)
            && !site.in_turn
        {
            site.in_turn = true;
            state.turn.push_back(key.to_string());
        }
    }

    /// The most deliveries in flight the site may have now: its window, and its share of the
    /// pool among the sites with work (`strict`: rounded down, so that every site gets its
    /// share before any gets more).
    fn limit(&self, state: &State, key: &str, strict: bool, now: u64) -> usize {
        let site = state.sites.get(key);
        let window = site.map_or(INITIAL_WINDOW, |s| s.window);
        let active = state.active + usize::from(!site.is_some_and(Site::is_active));
        let mut share = match strict {
            true => self.cfg.workers / active.max(1),
            false => self.cfg.workers.div_ceil(active.max(1)),
        };
        if site.is_some_and(|s| s.slow(now)) {
            share = share.min(self.cfg.workers / 4);
        }
        (window.floor() as usize)
            .min(self.cfg.concurrency)
            .min(share)
            .max(1)
    }

    fn may_start(&self, site: &mut Site, limit: usize, now: u64) -> bool {
        if site.probing || site.dead(now) || site.in_flight >= limit {
            return false;
        }
        if site.dead_until > 0 {
            // Dead time over: one job probes the site.
            if site.in_flight > 0 {
                return false;
            }
            site.dead_until = 0;
            site.probing = true;
        }
        if let Some((n, period)) = self.cfg.rate {
            let per_ms = n as f64 / period.as_millis().max(1) as f64;
            site.tokens = (site.tokens + (now.saturating_sub(site.refilled)) as f64 * per_ms)
                .min(n.max(1) as f64);
            site.refilled = now;
            if site.tokens < 1.0 {
                return false;
            }
            site.tokens -= 1.0;
        }
        true
    }

    /// Hands `job` to a worker: in flight at its site (counted as active already) from now.
    /// Room is guaranteed: the channel holds at most `workers` jobs and `busy` counts them.
    fn send(&self, state: &mut State, mut job: Job, now: u64) {
        let site = state.sites.get_mut(&job.site).expect("site of the job");
        if site.in_flight == 0 {
            site.progress = now;
        }
        site.in_flight += 1;
        state.busy += 1;
        job.started = now;
        if let Some(job) = self.jobs.try_send(job) {
            log::error!("{}: the job queue is full; deferring", job.id);
            state.busy -= 1;
            if let Some(site) = state.sites.get_mut(&job.site) {
                site.in_flight -= 1;
            }
            let _ = self
                .outcomes
                .send(deferred_outcome(&job, "no delivery worker free"));
        }
    }

    /// Hands queued jobs to free workers, taking sites in turn: first up to each site's
    /// share rounded down, then rounded up.
    fn pump(&self, state: &mut State, now: u64) {
        self.rotate(state, now, true);
        self.rotate(state, now, false);
        self.judge_behind(state, now);
    }

    fn rotate(&self, state: &mut State, now: u64, strict: bool) {
        let mut passed = 0;
        while state.busy < self.cfg.workers && passed < state.turn.len() {
            let Some(key) = state.turn.pop_front() else {
                break;
            };
            let limit = self.limit(state, &key, strict, now);
            let Some(site) = state.sites.get_mut(&key) else {
                continue;
            };
            if site.queue.is_empty() {
                site.in_turn = false;
                continue;
            }
            if !self.may_start(site, limit, now) {
                state.turn.push_back(key);
                passed += 1;
                continue;
            }
            let job = site.queue.pop_front().expect("non-empty");
            // A job handed out ends a site's turn; it has another if more wait.
            let more = !site.queue.is_empty();
            site.in_turn = more;
            if more {
                state.turn.push_back(key);
            }
            passed = 0;
            self.send(state, job, now);
        }
    }

    /// In-flow control: delivery as a whole is behind when every worker is busy and more
    /// messages than the in-flow backlog wait at (or are being delivered to) sites whose
    /// deliveries have been seen to take less than the in-flow delay. Holding a client back
    /// helps only where deliveries end within that time: a slow or dead next hop's queue,
    /// or one not heard from yet, does not count.
    fn judge_behind(&self, state: &State, now: u64) {
        if state.busy < self.cfg.workers {
            self.in_flow.set_behind(false);
            return;
        }
        let delay = self.in_flow.delay().as_millis() as u64;
        let counts = |s: &&Site| s.quick(delay, now);
        let mut waiting = 0;
        for key in &state.turn {
            if waiting > self.in_flow.backlog() {
                break;
            }
            let site = state.sites.get(key).filter(counts);
            waiting += site.map_or(0, |s| s.queue.len() + s.in_flight);
        }
        self.in_flow.set_behind(waiting > self.in_flow.backlog());
    }
}

fn dead_reason(key: &str, site: &Site) -> String {
    match site.last_error.as_str() {
        "" => format!("{key} is unreachable"),
        e => format!("{key} is unreachable: {e}"),
    }
}

/// Every recipient of the job deferred for `why`.
pub fn deferred_outcome(job: &Job, why: &str) -> Outcome {
    Outcome {
        id: job.id.clone(),
        results: job
            .rcpts
            .iter()
            .map(|(i, _)| {
                let reason = why.to_string();
                (*i, RcptResult::Deferred { reason })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::HostPort;
    use crate::delivery::clock::FakeClock;

    struct Bench {
        sites: Sites,
        clock: Arc<FakeClock>,
        jobs: Arc<JobQueue>,
        outcomes: crossbeam_channel::Receiver<Outcome>,
    }

    fn bench(workers: usize, concurrency: usize, rate: Option<(u32, Duration)>) -> Bench {
        let clock = Arc::new(FakeClock::at(1_000_000));
        let jobs = JobQueue::new(workers);
        let (tx, outcomes) = crossbeam_channel::unbounded();
        let cfg = SiteConfig {
            workers,
            concurrency,
            rate,
            dead_time: Duration::from_secs(60),
            max_dead_time: Duration::from_secs(600),
        };
        let flow = Arc::new(InFlow::new(1000, Duration::from_secs(1)));
        let sites = Sites::new(cfg, clock.clone(), jobs.clone(), tx, flow);
        Bench {
            sites,
            clock,
            jobs,
            outcomes,
        }
    }

    fn job(n: usize, host: &str) -> Job {
        Job {
            id: format!("{n}"),
            sender: "a@b".into(),
            rcpts: vec![(0, "x@y".into())],
            dest: Destination::Route(HostPort {
                host: host.into(),
                port: 25,
            }),
            site: String::new(),
            started: 0,
            place: crate::spool::test_place(),
            received: 0,
            cancelled: Arc::default(),
            tag: String::new(),
            size: 1,
            head: 0,
            eight_bit: false,
            smtputf8: false,
            personal: Default::default(),
        }
    }

    fn jobs(from: usize, n: usize, host: &str) -> Vec<Job> {
        (from..from + n).map(|i| job(i, host)).collect()
    }

    impl Bench {
        /// The jobs handed to the pool so far.
        fn handed(&self) -> Vec<Job> {
            let mut out = Vec::new();
            while let Ok(j) = self.jobs.recv(Some(Duration::ZERO)) {
                out.push(j);
            }
            out
        }
    }

    fn count(jobs: &[Job], host: &str) -> usize {
        jobs.iter().filter(|j| j.site.contains(host)).count()
    }

    #[test]
    fn sites_with_work_share_the_pool_and_take_turns() {
        let b = bench(4, 20, None);
        assert!(b.sites.queue(jobs(0, 10, "a")).is_empty());
        assert!(b.sites.queue(jobs(100, 10, "b")).is_empty());
        let first = b.handed();
        // a took its window (4 of 4 workers) before b had work; b gets the next free ones.
        assert_eq!(first.len(), 4);
        for j in &first {
            b.sites.done(j, Feedback::Reached, "", None);
        }
        let next = b.handed();
        assert_eq!(
            (count(&next, "a"), count(&next, "b")),
            (2, 2),
            "each its share"
        );
        // One of a's finishes: the worker goes to a again only in turn, never past its share.
        let a = next.iter().find(|j| j.site.contains('a')).unwrap();
        b.sites.done(a, Feedback::Reached, "", None);
        let then = b.handed();
        assert_eq!(then.len(), 1);
        assert_eq!(count(&then, "a"), 1, "b is at its share: a's turn");
        // A third site with work gets a worker as soon as two are free, in turn.
        assert!(b.sites.queue(jobs(200, 3, "c")).is_empty());
        assert!(b.handed().is_empty(), "every worker busy");
        let bj = next.iter().find(|j| j.site.contains('b')).unwrap();
        b.sites.done(bj, Feedback::Reached, "", None);
        b.sites.done(&then[0], Feedback::Reached, "", None);
        let h = b.handed();
        assert_eq!(count(&h, "c"), 1);
    }

    #[test]
    fn the_window_starts_low_grows_on_success_and_shrinks_on_pushback() {
        let b = bench(50, 10, None);
        assert!(b.sites.queue(jobs(0, 200, "a")).is_empty());
        let mut in_flight = b.handed();
        assert_eq!(in_flight.len(), 2, "slow start");
        let mut most = 0;
        for _ in 0..80 {
            let j = in_flight.remove(0);
            b.sites.done(&j, Feedback::Reached, "", None);
            in_flight.extend(b.handed());
            most = most.max(in_flight.len());
        }
        assert_eq!(most, 10, "grew up to --dest-concurrency, never past it");
        for _ in 0..8 {
            let j = in_flight.remove(0);
            b.sites.done(&j, Feedback::Throttled, "421 busy", None);
            in_flight.extend(b.handed());
        }
        assert!(in_flight.len() <= 3, "cut back: {}", in_flight.len());
    }

    #[test]
    fn a_slow_site_gets_at_most_a_quarter_of_the_pool() {
        let b = bench(8, 20, None);
        assert!(b.sites.queue(jobs(0, 100, "slow")).is_empty());
        // Quick at first: its window grows to the whole pool.
        let mut in_flight = b.handed();
        for _ in 0..60 {
            let j = in_flight.remove(0);
            b.sites.done(&j, Feedback::Reached, "", None);
            in_flight.extend(b.handed());
        }
        assert_eq!(in_flight.len(), 8);
        // Then its deliveries take half a minute each.
        b.clock.advance(30_000);
        let j = in_flight.remove(0);
        b.sites.done(&j, Feedback::Reached, "", None);
        assert_eq!(
            b.handed().len(),
            1,
            "one slow delivery does not make it slow"
        );
        let j = in_flight.remove(0);
        b.sites.done(&j, Feedback::Reached, "", None);
        assert!(b.handed().is_empty(), "7 in flight: over its quarter");
        // The free worker goes to a quick site, and so does each one the slow site frees.
        assert!(b.sites.queue(jobs(200, 5, "quick")).is_empty());
        assert_eq!(count(&b.handed(), "quick"), 1);
        let j = in_flight.remove(0);
        b.sites.done(&j, Feedback::Reached, "", None);
        assert_eq!(count(&b.handed(), "quick"), 1);
    }

    #[test]
    fn a_dead_site_is_deferred_at_once_then_probed_by_one_job() {
        let b = bench(2, 20, None);
        let work = [jobs(0, 5, "dead"), jobs(10, 1, "alive")].concat();
        assert!(b.sites.queue(work).is_empty());
        let first = b.handed();
        assert_eq!(first.len(), 2);
        let alive = first.iter().find(|j| j.site.contains("alive")).unwrap();
        b.sites.done(alive, Feedback::Reached, "", None);
        for j in first.iter().filter(|j| j.site.contains("dead")) {
            b.sites
                .done(j, Feedback::Unreachable, "connection refused", None);
        }
        let more = b.handed();
        for j in more.iter().filter(|j| j.site.contains("dead")) {
            b.sites
                .done(j, Feedback::Unreachable, "connection refused", None);
        }
        // Dead now: what waited is deferred without a connect, and so is new mail.
        let deferred: Vec<Outcome> = b.outcomes.try_iter().collect();
        assert!(!deferred.is_empty());
        assert!(deferred.iter().all(|o| matches!(
            &o.results[0].1,
            RcptResult::Deferred { reason } if reason.contains("connection refused")
        )));
        assert_eq!(b.sites.queued(), 0, "nothing waits for a dead site");
        let refused = b.sites.queue(jobs(20, 3, "dead"));
        assert_eq!(refused.len(), 3);
        assert!(b.handed().iter().all(|j| !j.site.contains("dead")));
        // After the dead time one job probes it; the rest wait for the probe.
        b.clock.advance(61_000);
        assert!(b.sites.queue(jobs(30, 3, "dead")).is_empty());
        let probe = b.handed();
        assert_eq!(count(&probe, "dead"), 1);
        b.sites.done(&probe[0], Feedback::Reached, "", None);
        assert_eq!(count(&b.handed(), "dead"), 2, "alive again");
    }

    #[test]
    fn a_failed_probe_doubles_the_dead_time_and_idle_sites_are_forgotten() {
        let b = bench(1, 20, None);
        let die = |b: &Bench| {
            let j = b.handed().pop().expect("a job");
            b.sites.done(&j, Feedback::Unreachable, "refused", None);
        };
        assert!(b.sites.queue(jobs(0, 1, "dead")).is_empty());
        die(&b);
        assert!(b.sites.queue(jobs(1, 1, "dead")).is_empty());
        die(&b);
        assert_eq!(b.sites.queue(jobs(2, 1, "dead")).len(), 1, "dead for 60 s");
        // Forgetting idle sites keeps a dead one dead.
        b.sites.forget_idle();
        assert_eq!(b.sites.queue(jobs(3, 1, "dead")).len(), 1);
        b.clock.advance(61_000);
        assert!(b.sites.queue(jobs(4, 1, "dead")).is_empty(), "probed");
        die(&b);
        b.clock.advance(61_000);
        assert_eq!(b.sites.queue(jobs(5, 1, "dead")).len(), 1, "now for 120 s");
        b.clock.advance(60_000);
        assert!(b.sites.queue(jobs(6, 1, "dead")).is_empty());
        // A site that delivered and has nothing left is forgotten.
        let j = b.handed().pop().unwrap();
        b.sites.done(&j, Feedback::Reached, "", None);
        assert!(b.sites.queue(jobs(7, 1, "quick")).is_empty());
        let j = b.handed().pop().unwrap();
        b.sites.done(&j, Feedback::Reached, "", None);
        assert_eq!(b.sites.lock().sites.len(), 2);
        b.sites.forget_idle();
        assert!(b.sites.lock().sites.is_empty());
    }

    #[test]
    fn a_rate_spaces_out_a_sites_jobs() {
        let b = bench(10, 20, Some((2, Duration::from_secs(1))));
        assert!(b.sites.queue(jobs(0, 6, "a")).is_empty());
        let done = |jobs: Vec<Job>| {
            let n = jobs.len();
            for j in jobs {
                b.sites.done(&j, Feedback::Reached, "", None);
            }
            n
        };
        assert_eq!(done(b.handed()), 2, "a burst of the rate");
        let wake = b.sites.tick().expect("a next token");
        assert_eq!(wake, 1_000_000 + 500);
        assert_eq!(done(b.handed()), 0);
        b.clock.advance(500);
        b.sites.tick();
        assert_eq!(done(b.handed()), 1);
        b.clock.advance(1000);
        b.sites.tick();
        assert_eq!(done(b.handed()), 2);
    }
}
