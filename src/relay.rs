//! Wiring: opens the spool (recovery), starts the scheduler, the delivery pool and the
//! listeners, and stops them. `main` and the integration tests both start the relay here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Sender, bounded, unbounded};

use crate::config::Config;
use crate::delivery::route::RouteTable;
use crate::delivery::scheduler::{Scheduler, SchedulerConfig};
use crate::delivery::{self, Context};
use crate::dns::{DnsClient, Resolver};
use crate::server::{Server, ServerConfig};
use crate::spool::Spool;

pub struct Relay {
    server: Server,
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
        let ctx = Arc::new(Context {
            hostname: cfg.hostname.clone(),
            resolver,
            mx_port: cfg.mx_port,
            connect_timeout: cfg.connect_timeout,
            delivery_timeout: cfg.delivery_timeout,
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
            },
            spool,
            intake_tx,
        )?;
        Ok(Relay {
            server,
            stop_scheduler: stop_tx,
            scheduler,
        })
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
