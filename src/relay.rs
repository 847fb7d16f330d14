//! Wiring: binds the listeners, loads secrets, drops privileges, opens the spool (recovery)
//! and the suppression list, starts the scheduler, the delivery pool, the control socket,
//! metrics and the listeners, and stops them. `main` and the integration tests both start the
//! relay here.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Sender, bounded, unbounded};

use crate::auth::UsersFile;
use crate::config::{Config, Role};
use crate::control::{self, Command, Request};
use crate::delivery::clock::{Clock, SystemClock};
use crate::delivery::flow::InFlow;
use crate::delivery::intake::{self, Intake};
use crate::delivery::ledger::{Holder, Ledger, Record, due_s};
use crate::delivery::scheduler::{self, Inputs, Scheduler};
use crate::delivery::sites::Sites;
use crate::delivery::{self, Context};
use crate::dns::{CACHE_ENTRIES, CachingResolver, DnsClient, Resolver};
use crate::events::Events;
use crate::events::webhook::Webhooks;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::server::{self, Server, Services};
use crate::spool::id::MsgId;
use crate::spool::{Recovery, Spool};
use crate::suppression::Suppressions;
use crate::tls::ServerTls;
use crate::tracking::{Copier, Links};
use crate::transform::Transforms;
use crate::transform::dkim::Dkim;
use crate::web;

pub struct Relay {
    server: Server,
    tls: Option<Arc<ServerTls>>,
    users: Option<Arc<UsersFile>>,
    dkim: Option<Arc<Dkim>>,
    control: Sender<Request>,
    stop_scheduler: Sender<()>,
    scheduler: JoinHandle<()>,
    recovery: JoinHandle<()>,
    spool: Arc<Spool>,
    events: Arc<Events>,
    suppressions: Arc<Suppressions>,
    /// The HTTP listeners (metrics, tracking) being served.
    http: Vec<web::Serving>,
}

/// Committed messages waiting for the scheduler; sessions block briefly when it is this far behind.
const INTAKE_CAPACITY: usize = 4096;

fn err(context: &str) -> impl Fn(String) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("{context}: {e}"))
}

/// What start-up takes while it may still be root: ports, key and password files, the
/// metrics port.
struct Acquired {
    sockets: Vec<(TcpListener, crate::config::Listener)>,
    tls: Option<Arc<ServerTls>>,
    users: Option<Arc<UsersFile>>,
    smarthost_auth: Option<(String, String)>,
    metrics: Arc<Metrics>,
    http: Vec<web::Bound>,
    transforms: Transforms,
    dkim: Option<Arc<Dkim>>,
    webhook_secret: Option<Vec<u8>>,
    links: Option<Links>,
}

/// The delivery side, running: what the listeners and the signals talk to.
struct Delivery {
    intake: Arc<Intake>,
    in_flow: Arc<InFlow>,
    control: Sender<Request>,
    stop_scheduler: Sender<()>,
    scheduler: JoinHandle<()>,
    recovery: JoinHandle<()>,
}

impl Relay {
    pub fn start(cfg: &Config) -> std::io::Result<Relay> {
        let acquired = acquire(cfg)?;
        if let Some(user) = &cfg.user {
            crate::privileges::drop_to(user)?;
        }
        crate::privileges::check_spool_owner(&cfg.spool)?;
        let spool = Arc::new(
            Spool::open(&cfg.spool)
                .map_err(|e| err("spool")(format!("{}: {e}", cfg.spool.display())))?
                .with_min_free(cfg.min_free_space),
        );
        let recovery = spool.begin_recovery()?;
        let suppressions = open_suppressions(cfg, acquired.metrics.clone())?;
        let tls = match acquired.tls {
            Some(t) => Some(t),
            None if cfg.listen.iter().any(|l| l.role != Role::Smtp) => Some(Arc::new(
                ServerTls::self_signed(&cfg.spool, &cfg.hostname).map_err(|e| err("tls")(e.0))?,
            )),
            None => None,
        };
        let metrics = acquired.metrics;
        let webhooks = match acquired.webhook_secret {
            Some(secret) => Some(Webhooks::start(
                &cfg.webhooks,
                secret,
                &cfg.spool,
                metrics.clone(),
            )?),
            None => None,
        };
        let events = Arc::new(
            Events::open(cfg.events.as_deref(), webhooks, metrics.clone())
                .map_err(|e| err("--events")(e.to_string()))?,
        );
        let copier = acquired.links.clone().map(|links| {
            Arc::new(Copier {
                links,
                exclude: cfg.tracking.exclude.clone(),
                mailto: cfg.tracking.mailto.clone(),
                dkim: acquired.dkim.clone(),
                max_header: cfg.transforms.max_header_size,
            })
        });
        let delivery = start_delivery(
            cfg,
            acquired.smarthost_auth,
            recovery,
            (spool.clone(), metrics.clone(), events.clone()),
            (suppressions.clone(), copier),
        )?;
        control::serve(&cfg.spool, delivery.control.clone(), suppressions.clone())?;
        let http = web::serve(
            acquired.http,
            web::Routes {
                metrics: metrics.clone(),
                links: acquired.links,
                events: events.clone(),
                suppressions: suppressions.clone(),
                tracking_max_connections: cfg.tracking.max_connections,
            },
        )?;
        let services = Services {
            spool: spool.clone(),
            intake: delivery.intake,
            tls: tls.clone(),
            users: acquired.users.clone(),
            auth_guard: cfg.auth.guard(),
            limits: Limits::new(cfg.server.limits.clone(), Arc::new(SystemClock)),
            in_flow: delivery.in_flow,
            metrics,
            events: events.clone(),
            transforms: acquired.transforms,
        };
        let server = Server::start(acquired.sockets, cfg.server.clone(), services)?;
        if let Some(t) = &tls {
            watch_certificate(t.clone());
        }
        Ok(Relay {
            server,
            tls,
            users: acquired.users,
            dkim: acquired.dkim,
            control: delivery.control,
            stop_scheduler: delivery.stop_scheduler,
            scheduler: delivery.scheduler,
            recovery: delivery.recovery,
            spool,
            events,
            suppressions,
            http,
        })
    }

    /// SIGHUP: reload certificates, accounts and DKIM keys without dropping sessions.
    pub fn reload(&self) {
        if let Some(t) = &self.tls {
            t.reload(true);
        }
        if let Some(u) = &self.users {
            u.reload();
        }
        if let Some(d) = &self.dkim {
            match d.reload() {
                Ok(()) => log::info!("dkim: keys reloaded"),
                Err(e) => log::error!("dkim: keys not reloaded, the old ones stay: {e}"),
            }
        }
    }

    /// SIGUSR1: retry the whole queue now.
    pub fn flush(&self) {
        let (tx, rx) = bounded(1);
        if self
            .control
            .send(Request {
                command: Command::Flush(None),
                reply: tx,
            })
            .is_ok()
        {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(text)) => log::info!("queue: {text}"),
                Ok(Err(e)) => log::warn!("queue flush: {e}"),
                Err(_) => log::warn!("queue flush: no answer from the scheduler"),
            }
        }
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.server.local_addrs()
    }

    /// Stops accepting, gives sessions `grace` to finish, then stops the scheduler. Deliveries
    /// in flight are abandoned; their recipients are still pending on disk.
    pub fn stop(self, grace: Duration) {
        self.server.stop(grace);
        for (addr, stop) in &self.http {
            crate::http::shutdown(*addr, stop);
        }
        let _ = self.stop_scheduler.send(());
        let _ = self.scheduler.join();
        let _ = self.recovery.join();
        // Workers may still finish deliveries, with nothing left to mark their cells free.
        self.spool.mark_freed_cells_at_once();
        // Events still queued reach the log and the webhook outboxes.
        self.events.close(Duration::from_secs(5));
        self.suppressions.stop_sharing(Duration::from_secs(5));
    }
}

/// Everything that may need root comes first: ports, key files, password files.
fn acquire(cfg: &Config) -> std::io::Result<Acquired> {
    // Two descriptors per client, plus spool slots, outbound connections and the rest.
    crate::privileges::raise_open_files_limit(2 * cfg.server.max_connections as u64 + 2048);
    for (flag, file) in cfg.secret_files() {
        crate::privileges::check_secret_file(flag, file)?;
    }
    let sockets = server::bind(&cfg.listen)?;
    let tls = match &cfg.tls_cert {
        Some((cert, key)) => Some(Arc::new(
            ServerTls::load(cert, key).map_err(|e| err("tls")(e.0))?,
        )),
        None => None,
    };
    let users = cfg.auth.load_users()?;
    let (transforms, dkim) = cfg.transforms.build(&cfg.hostname).map_err(err("dkim"))?;
    if let Some(d) = &dkim {
        for key in d.describe() {
            log::info!("dkim: signing with {key}");
        }
    }
    let smarthost_auth = cfg.delivery.smarthost_auth()?;
    let webhook_secret = cfg.webhooks.load_secret()?;
    let links = cfg.tracking.links().map_err(err("tracking"))?;
    let metrics = Arc::new(Metrics::new());
    let http = web::bind(cfg.metrics_listen, cfg.tracking.listen)?;
    Ok(Acquired {
        sockets,
        tls,
        users,
        smarthost_auth,
        metrics,
        http,
        transforms,
        dkim,
        webhook_secret,
        links,
    })
}

/// How long start-up waits for `mxrelay suppression` to let go of the list.
const SUPPRESSION_LOCK_WAIT: Duration = Duration::from_secs(10);

/// The suppression list of the spool, locked by this daemon for as long as it runs (and
/// shared through `--suppression-store` when given).
fn open_suppressions(cfg: &Config, metrics: Arc<Metrics>) -> std::io::Result<Arc<Suppressions>> {
    let list =
        crate::suppression::start(&cfg.spool, &cfg.suppression, metrics, SUPPRESSION_LOCK_WAIT)
            .map_err(|e| err("suppression list")(e.to_string()))?;
    if !list.is_empty() {
        log::info!("suppression: {} address(es) on the list", list.len());
    }
    Ok(list)
}

/// Starts the delivery pool, the scheduler and spool recovery, wired to each other.
fn start_delivery(
    cfg: &Config,
    smarthost_auth: Option<(String, String)>,
    recovery: Recovery,
    (spool, metrics, events): (Arc<Spool>, Arc<Metrics>, Arc<Events>),
    (suppressions, copier): (Arc<Suppressions>, Option<Arc<Copier>>),
) -> std::io::Result<Delivery> {
    let dns = DnsClient::with_servers(&cfg.dns_servers);
    let resolver: Arc<dyn Resolver> = Arc::new(CachingResolver::new(dns, CACHE_ENTRIES));
    let ctx = Context::new(
        cfg.delivery.clone(),
        smarthost_auth,
        resolver,
        metrics.clone(),
    )?;
    let (intake_tx, intake_rx) = bounded(INTAKE_CAPACITY);
    let (recovered_tx, recovered_rx) = bounded(16);
    let jobs = delivery::JobQueue::new(cfg.delivery.workers);
    let (outcome_tx, outcome_rx) = unbounded();
    let (stop_tx, stop_rx) = bounded(1);
    let (control_tx, control_rx) = bounded(16);
    let in_flow = Arc::new(InFlow::new(cfg.in_flow.backlog, cfg.in_flow.delay));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ledger = Arc::new(Ledger::default());
    let sites = Arc::new(Sites::new(
        cfg.sites.clone(),
        clock.clone(),
        jobs.clone(),
        outcome_tx.clone(),
        in_flow.clone(),
    ));
    let intake = Arc::new(Intake::new(intake::Services {
        routes: cfg.scheduler.routes.clone(),
        spool: spool.clone(),
        ledger: ledger.clone(),
        sites: sites.clone(),
        to_scheduler: intake_tx,
        metrics: metrics.clone(),
        events: events.clone(),
    }));
    let pool = delivery::Pool {
        jobs: jobs.clone(),
        sites: sites.clone(),
        intake: intake.clone(),
        spool: spool.clone(),
        outcomes: outcome_tx,
        ctx: Arc::new(ctx),
        suppressions,
        copier,
    };
    delivery::spawn_workers(cfg.delivery.workers, Arc::new(pool))?;
    let shared = scheduler::Shared {
        clock,
        spool: spool.clone(),
        ledger: ledger.clone(),
        sites,
        events,
        metrics,
    };
    let scheduler = Scheduler::new(cfg.scheduler.clone(), shared);
    let recovery = recover_in_background(recovery, spool, ledger, recovered_tx)?;
    let inputs = Inputs {
        arrivals: intake_rx,
        recovered: recovered_rx,
        outcomes: outcome_rx,
        control: control_rx,
        stop: stop_rx,
    };
    let scheduler = thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || scheduler.run(inputs, jobs))?;
    Ok(Delivery {
        intake,
        in_flow,
        control: control_tx,
        stop_scheduler: stop_tx,
        scheduler,
        recovery,
    })
}

/// Scans the spool while the relay runs: every message found goes into the ledger, and the
/// ones not on hold to the scheduler, in batches, with their due times.
fn recover_in_background(
    recovery: Recovery,
    spool: Arc<Spool>,
    ledger: Arc<Ledger>,
    to_scheduler: Sender<Vec<(MsgId, u32)>>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("recovery".into())
        .spawn(move || {
            let mut batch = Vec::new();
            let scanned = recovery.run(&spool, |found| {
                let Some(id) = MsgId::parse(&found.env.id) else {
                    return true;
                };
                let held = found.env.held;
                let due = due_s(found.env.next_attempt, crate::delivery::clock::now_ms());
                let holder = if held { Holder::Held } else { Holder::Waiting };
                let record = Record {
                    place: found.place,
                    due,
                    holder,
                };
                if !ledger.insert(id, record) {
                    return false;
                }
                if !held {
                    batch.push((id, due));
                }
                if batch.len() >= 1024 {
                    let _ = to_scheduler.send(std::mem::take(&mut batch));
                }
                true
            });
            let _ = to_scheduler.send(batch);
            match scanned {
                Ok(0) => {}
                Ok(n) => log::info!("queue: {n} messages recovered from the spool"),
                Err(e) => log::error!("spool: recovery stopped: {e}"),
            }
        })
}

/// Picks up renewed certificate files (e.g. from an ACME client) without a signal.
fn watch_certificate(tls: Arc<ServerTls>) {
    let spawned = thread::Builder::new()
        .name("tls-watch".into())
        .spawn(move || {
            loop {
                thread::sleep(Duration::from_secs(5));
                tls.reload(false);
            }
        });
    if let Err(e) = spawned {
        log::warn!("tls: cannot watch the certificate files: {e}");
    }
}
