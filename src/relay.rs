//! Wiring: binds the listeners, loads secrets, drops privileges, opens the spool (recovery),
//! starts the scheduler, the delivery pool, the control socket, metrics and the listeners,
//! and stops them. `main` and the integration tests both start the relay here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Sender, bounded, unbounded};

use crate::auth::{FailureGuard, UsersFile};
use crate::config::{Config, Role};
use crate::control::{self, Command, Request};
use crate::delivery::clock::{Clock, SystemClock};
use crate::delivery::flow::InFlow;
use crate::delivery::intake::{self, Intake};
use crate::delivery::ledger::{Holder, Ledger, Record, due_s};
use crate::delivery::route::RouteTable;
use crate::delivery::scheduler::{self, Inputs, Scheduler, SchedulerConfig};
use crate::delivery::sites::{SiteConfig, Sites};
use crate::delivery::{self, Context};
use crate::dns::{CACHE_ENTRIES, CachingResolver, DnsClient, Resolver};
use crate::events::Events;
use crate::metrics::{self, Metrics};
use crate::server::{self, Server, ServerConfig, Services};
use crate::spool::id::MsgId;
use crate::spool::{Recovery, Spool};
use crate::tls::{Outbound, ServerTls};

pub struct Relay {
    server: Server,
    tls: Option<Arc<ServerTls>>,
    users: Option<Arc<UsersFile>>,
    control: Sender<Request>,
    stop_scheduler: Sender<()>,
    scheduler: JoinHandle<()>,
    recovery: JoinHandle<()>,
    spool: Arc<Spool>,
    /// The bound /metrics address and its stop flag.
    metrics_endpoint: Option<(SocketAddr, Arc<AtomicBool>)>,
}

/// Committed messages waiting for the scheduler; sessions block briefly when it is this far behind.
const INTAKE_CAPACITY: usize = 4096;

fn err(context: &str) -> impl Fn(String) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("{context}: {e}"))
}

impl Relay {
    pub fn start(cfg: &Config) -> std::io::Result<Relay> {
        // Two descriptors per client, plus spool slots, outbound connections and the rest.
        crate::privileges::raise_open_files_limit(2 * cfg.max_connections as u64 + 2048);
        // Everything that may need root comes first: ports, key files, password files.
        let sockets = server::bind(&cfg.listen)?;
        let configured_tls = match &cfg.tls_cert {
            Some((cert, key)) => Some(Arc::new(
                ServerTls::load(cert, key).map_err(|e| err("tls")(e.0))?,
            )),
            None => None,
        };
        let users = match &cfg.users {
            Some(path) => Some(Arc::new(
                UsersFile::load(path, &cfg.sender_domains).map_err(err("--users"))?,
            )),
            None if !cfg.sender_domains.is_empty() => {
                return Err(err("--sender-domain")("needs --users".into()));
            }
            None => None,
        };
        let smarthost_auth = match &cfg.smarthost_auth {
            Some((user, file)) => {
                let pw = std::fs::read_to_string(file).map_err(|e| {
                    err("--smarthost-password-file")(format!("{}: {e}", file.display()))
                })?;
                Some((user.clone(), pw.trim_end_matches(['\r', '\n']).to_string()))
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let metrics_endpoint = match cfg.metrics_listen {
            Some(addr) => {
                let stop = Arc::new(AtomicBool::new(false));
                Some((metrics::serve(addr, metrics.clone(), stop.clone())?, stop))
            }
            None => None,
        };
        if let Some(user) = &cfg.user {
            crate::privileges::drop_to(user)?;
        }

        let spool = Arc::new(
            Spool::open(&cfg.spool)
                .map_err(|e| err("spool")(format!("{}: {e}", cfg.spool.display())))?,
        );
        let recovery = spool.begin_recovery()?;
        let tls = match configured_tls {
            Some(t) => Some(t),
            None if cfg.listen.iter().any(|l| l.role != Role::Smtp) => Some(Arc::new(
                ServerTls::self_signed(&cfg.spool, &cfg.hostname).map_err(|e| err("tls")(e.0))?,
            )),
            None => None,
        };
        let events = Arc::new(
            Events::open(cfg.events.as_deref(), metrics.clone())
                .map_err(|e| err("--events")(e.to_string()))?,
        );
        let dns = if cfg.dns_servers.is_empty() {
            DnsClient::from_system()
        } else {
            DnsClient::new(cfg.dns_servers.clone(), Duration::from_secs(5), 2)
        };
        let resolver: Arc<dyn Resolver> = Arc::new(CachingResolver::new(dns, CACHE_ENTRIES));
        let (intake_tx, intake_rx) = bounded(INTAKE_CAPACITY);
        let (recovered_tx, recovered_rx) = bounded(16);
        let jobs = delivery::JobQueue::new(cfg.workers);
        let (outcome_tx, outcome_rx) = unbounded();
        let (stop_tx, stop_rx) = bounded(1);
        let (control_tx, control_rx) = bounded(16);
        let ctx = Arc::new(Context {
            hostname: cfg.hostname.clone(),
            resolver,
            mx_port: cfg.mx_port,
            connect_timeout: cfg.connect_timeout,
            delivery_timeout: cfg.delivery_timeout,
            tls: Outbound::new(cfg.tls_ca_file.as_deref()).map_err(|e| err("tls")(e.0))?,
            tls_outbound: cfg.tls_outbound,
            smarthost_tls: cfg.smarthost_tls,
            smarthost_insecure: cfg.smarthost_insecure,
            smarthost_auth,
            hosts: Default::default(),
            messages_per_connection: cfg.dest_messages_per_connection,
            metrics: metrics.clone(),
        });
        let in_flow = Arc::new(InFlow::new(cfg.in_flow_backlog, cfg.in_flow_delay));
        let routes = Arc::new(RouteTable {
            smarthost: cfg.smarthost.clone().into(),
            routes: cfg.routes.iter().cloned().collect::<HashMap<_, _>>(),
        });
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ledger = Arc::new(Ledger::default());
        let sites = Arc::new(Sites::new(
            SiteConfig {
                workers: cfg.workers,
                concurrency: cfg.dest_concurrency,
                rate: cfg.dest_rate,
                dead_time: Duration::from_secs(60),
                max_dead_time: Duration::from_secs(600),
            },
            clock.clone(),
            jobs.clone(),
            outcome_tx.clone(),
            in_flow.clone(),
        ));
        let intake = Arc::new(Intake::new(intake::Services {
            routes: routes.clone(),
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
            ctx,
        };
        delivery::spawn_workers(cfg.workers, Arc::new(pool))?;
        let scheduler = Scheduler::new(
            SchedulerConfig {
                hostname: cfg.hostname.clone(),
                postmaster: cfg.postmaster.to_string(),
                retry: cfg.retry.clone(),
                max_queue_lifetime: cfg.max_queue_lifetime,
                routes,
                active_limit: cfg.active_limit,
            },
            scheduler::Shared {
                clock,
                spool: spool.clone(),
                ledger: ledger.clone(),
                sites,
                events: events.clone(),
                metrics: metrics.clone(),
            },
        );
        let recovery = recover_in_background(recovery, spool.clone(), ledger, recovered_tx)?;
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
        control::serve(&cfg.spool, control_tx.clone())?;
        let server = Server::start(
            sockets,
            ServerConfig {
                hostname: cfg.hostname.clone(),
                trusted: cfg.trusted.clone(),
                postmaster: cfg.postmaster.clone(),
                max_connections: cfg.max_connections,
                max_message_size: cfg.max_message_size,
                max_recipients: cfg.max_recipients,
                max_errors: cfg.max_errors,
                max_line_length: cfg.max_line_length,
                max_hops: cfg.max_hops,
                idle_timeout: cfg.idle_timeout,
                tls_handshake_timeout: cfg.tls_handshake_timeout,
                plaintext_auth_loopback: cfg.plaintext_auth_loopback,
                auth_fail_delay: cfg.auth_fail_delay,
            },
            Services {
                spool: spool.clone(),
                intake,
                tls: tls.clone(),
                users: users.clone(),
                auth_guard: FailureGuard::new(cfg.auth_max_failures, cfg.auth_lockout),
                in_flow,
                metrics,
                events,
                transforms: crate::transform::Transforms::new(Vec::new(), 256 * 1024),
            },
        )?;
        if let Some(t) = &tls {
            watch_certificate(t.clone());
        }
        Ok(Relay {
            server,
            tls,
            users,
            control: control_tx,
            stop_scheduler: stop_tx,
            scheduler,
            recovery,
            spool,
            metrics_endpoint,
        })
    }

    /// SIGHUP: reload certificates and accounts without dropping sessions.
    pub fn reload(&self) {
        if let Some(t) = &self.tls {
            t.reload(true);
        }
        if let Some(u) = &self.users {
            u.reload();
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
        if let Some((addr, stop)) = &self.metrics_endpoint {
            metrics::shutdown(*addr, stop);
        }
        let _ = self.stop_scheduler.send(());
        let _ = self.scheduler.join();
        let _ = self.recovery.join();
        // Workers may still finish deliveries, with nothing left to mark their cells free.
        self.spool.mark_freed_cells_at_once();
    }
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
