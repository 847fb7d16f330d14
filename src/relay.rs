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
use crate::delivery::flow::InFlow;
use crate::delivery::intake::{self, Intake};
use crate::delivery::route::RouteTable;
use crate::delivery::scheduler::{Inputs, Scheduler, SchedulerConfig};
use crate::delivery::{self, Context};
use crate::dns::{CACHE_ENTRIES, CachingResolver, DnsClient, Resolver};
use crate::events::Events;
use crate::metrics::{self, Metrics};
use crate::server::{self, Server, ServerConfig, Services};
use crate::spool::Spool;
use crate::tls::{Outbound, ServerTls};

pub struct Relay {
    server: Server,
    tls: Option<Arc<ServerTls>>,
    users: Option<Arc<UsersFile>>,
    control: Sender<Request>,
    stop_scheduler: Sender<()>,
    scheduler: JoinHandle<()>,
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
        let recovered = spool.recover()?;
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
        let jobs = delivery::JobQueue::new(cfg.workers * 2);
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
            metrics: metrics.clone(),
        });
        let in_flow = Arc::new(InFlow::new(cfg.in_flow_backlog, cfg.in_flow_delay));
        let routes = Arc::new(RouteTable {
            smarthost: cfg.smarthost.clone(),
            routes: cfg.routes.iter().cloned().collect::<HashMap<_, _>>(),
        });
        let intake = Arc::new(Intake::new(intake::Services {
            routes: routes.clone(),
            spool: spool.clone(),
            jobs: jobs.clone(),
            to_scheduler: intake_tx,
            in_flow: in_flow.clone(),
            metrics: metrics.clone(),
            events: events.clone(),
        }));
        delivery::spawn_workers(cfg.workers, jobs.clone(), outcome_tx, intake.clone(), ctx)?;
        let scheduler = Scheduler::new(
            SchedulerConfig {
                hostname: cfg.hostname.clone(),
                postmaster: cfg.postmaster.to_string(),
                retry: cfg.retry.clone(),
                max_queue_lifetime: cfg.max_queue_lifetime,
                routes,
            },
            spool.clone(),
            events.clone(),
            metrics.clone(),
            in_flow.clone(),
            intake.clone(),
            recovered,
        );
        let inputs = Inputs {
            intake: intake_rx,
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
        // Workers may still finish deliveries, with nothing left to mark their cells free.
        self.spool.mark_freed_cells_at_once();
    }
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
