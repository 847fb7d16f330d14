//! Wiring: opens the spool (recovery), starts the scheduler, the delivery pool and the
//! listeners, and stops them. `main` and the integration tests both start the relay here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Sender, bounded, unbounded};

use crate::auth::{FailureGuard, Users};
use crate::config::{Config, Role};
use crate::delivery::route::RouteTable;
use crate::delivery::scheduler::{Scheduler, SchedulerConfig};
use crate::delivery::{self, Context};
use crate::dns::{DnsClient, Resolver};
use crate::server::{Server, ServerConfig};
use crate::spool::Spool;
use crate::tls::{Outbound, ServerTls};

pub struct Relay {
    server: Server,
    tls: Option<Arc<ServerTls>>,
    stop_scheduler: Sender<()>,
    scheduler: JoinHandle<()>,
}

/// Committed messages waiting for the scheduler; sessions block briefly when it is this far behind.
const INTAKE_CAPACITY: usize = 4096;

impl Relay {
    pub fn start(cfg: &Config) -> std::io::Result<Relay> {
        let spool = Arc::new(Spool::open(&cfg.spool).map_err(|e| {
            std::io::Error::new(e.kind(), format!("spool {}: {e}", cfg.spool.display()))
        })?);
        let recovered = spool.recover()?;
        let resolver: Arc<dyn Resolver> = if cfg.dns_servers.is_empty() {
            Arc::new(DnsClient::from_system())
        } else {
            Arc::new(DnsClient::new(
                cfg.dns_servers.clone(),
                Duration::from_secs(5),
                2,
            ))
        };
        let (intake_tx, intake_rx) = bounded(INTAKE_CAPACITY);
        let (job_tx, job_rx) = bounded(cfg.workers * 2);
        let (outcome_tx, outcome_rx) = unbounded();
        let (stop_tx, stop_rx) = bounded(1);
        let tls = server_tls(cfg)?;
        let users = load_users(cfg)?;
        let outbound = Outbound::new(cfg.tls_ca_file.as_deref()).map_err(std::io::Error::other)?;
        let smarthost_auth = match &cfg.smarthost_auth {
            Some((user, file)) => {
                let pw = std::fs::read_to_string(file).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("--smarthost-password-file {}: {e}", file.display()),
                    )
                })?;
                Some((user.clone(), pw.trim_end_matches(['\r', '\n']).to_string()))
            }
            None => None,
        };
        let ctx = Arc::new(Context {
            hostname: cfg.hostname.clone(),
            resolver,
            mx_port: cfg.mx_port,
            connect_timeout: cfg.connect_timeout,
            delivery_timeout: cfg.delivery_timeout,
            tls: outbound,
            tls_outbound: cfg.tls_outbound,
            smarthost_tls: cfg.smarthost_tls,
            smarthost_insecure: cfg.smarthost_insecure,
            smarthost_auth,
        });
        delivery::spawn_workers(cfg.workers, job_rx, outcome_tx, ctx)?;
        let scheduler = Scheduler::new(
            SchedulerConfig {
                hostname: cfg.hostname.clone(),
                postmaster: cfg.postmaster.to_string(),
                retry: cfg.retry.clone(),
                max_queue_lifetime: cfg.max_queue_lifetime,
                routes: RouteTable {
                    smarthost: cfg.smarthost.clone(),
                    routes: cfg.routes.iter().cloned().collect::<HashMap<_, _>>(),
                },
            },
            spool.clone(),
            recovered,
        );
        let scheduler = thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || scheduler.run(intake_rx, outcome_rx, job_tx, stop_rx))?;
        let server = Server::start(
            &cfg.listen,
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
            spool,
            intake_tx,
            tls.clone(),
            users,
            FailureGuard::new(cfg.auth_max_failures, cfg.auth_lockout),
        )?;
        if let Some(t) = &tls {
            watch_certificate(t.clone());
        }
        Ok(Relay {
            server,
            tls,
            stop_scheduler: stop_tx,
            scheduler,
        })
    }

    /// SIGHUP: reload what can be reloaded without dropping sessions.
    pub fn reload(&self) {
        if let Some(t) = &self.tls {
            t.reload(true);
        }
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.server.local_addrs()
    }

    /// Stops accepting, gives sessions `grace` to finish, then stops the scheduler. Deliveries
    /// in flight are abandoned; their recipients are still pending on disk.
    pub fn stop(self, grace: Duration) {
        self.server.stop(grace);
        let _ = self.stop_scheduler.send(());
        let _ = self.scheduler.join();
    }
}

/// A certificate when one is configured; a self-signed one when a role needs TLS and none
/// is; otherwise no TLS (STARTTLS is not offered on the relay port).
fn server_tls(cfg: &Config) -> std::io::Result<Option<Arc<ServerTls>>> {
    let tls = match &cfg.tls_cert {
        Some((cert, key)) => ServerTls::load(cert, key),
        None if cfg.listen.iter().any(|l| l.role != Role::Smtp) => {
            ServerTls::self_signed(&cfg.spool, &cfg.hostname)
        }
        None => return Ok(None),
    };
    tls.map(|t| Some(Arc::new(t)))
        .map_err(|e| std::io::Error::other(format!("tls: {e}")))
}

fn load_users(cfg: &Config) -> std::io::Result<Option<Arc<Users>>> {
    let Some(path) = &cfg.users else {
        if let Some((user, _)) = cfg.sender_domains.first() {
            return Err(std::io::Error::other(format!(
                "--sender-domain {user}=...: needs --users"
            )));
        }
        return Ok(None);
    };
    let mut users = Users::load(path)
        .map_err(|e| std::io::Error::other(format!("--users {}: {e}", path.display())))?;
    for (user, domain) in &cfg.sender_domains {
        users
            .add_sender_domain(user, domain)
            .map_err(|e| std::io::Error::other(format!("--sender-domain {user}={domain}: {e}")))?;
    }
    log::info!("auth: {} accounts from {}", users.len(), path.display());
    Ok(Some(Arc::new(users)))
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
