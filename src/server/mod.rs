//! The SMTP listener side: one accept thread per listening socket, a thread per client, a
//! connection cap (421 beyond it), and a graceful stop. The accept thread only accepts.

pub mod conn;
pub mod reply_map;

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::auth::{FailureGuard, UsersFile};
use crate::config::{Cidr, Listener, Role};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::smtp::address::Mailbox;
use crate::smtp::reply;
use crate::spool::{Envelope, Spool};
use crate::tls::ServerTls;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub hostname: String,
    pub trusted: Vec<Cidr>,
    pub postmaster: Mailbox,
    pub max_connections: usize,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub max_line_length: usize,
    pub max_hops: u32,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub plaintext_auth_loopback: bool,
    pub auth_fail_delay: Duration,
}

/// What sessions use besides their configuration.
pub struct Services {
    pub spool: Arc<Spool>,
    /// Committed messages go to the scheduler.
    pub queued: Sender<Envelope>,
    pub tls: Option<Arc<ServerTls>>,
    pub users: Option<Arc<UsersFile>>,
    pub auth_guard: FailureGuard,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
}

/// What every connection thread shares.
pub struct Shared {
    pub cfg: ServerConfig,
    pub services: Services,
    pub stopping: AtomicBool,
    active: AtomicUsize,
    next_conn: AtomicU64,
    /// Zero capacity: a send succeeds only if an idle session thread is waiting.
    handoff: (Sender<Client>, Receiver<Client>),
    open: Mutex<HashMap<u64, TcpStream>>,
}

pub struct Server {
    shared: Arc<Shared>,
    local_addrs: Vec<SocketAddr>,
    accept_threads: Vec<JoinHandle<()>>,
}

/// Session threads need little stack: the protocol state is small and buffers are on the heap.
const CONN_STACK: usize = 256 * 1024;

impl Server {
    /// Starts accepting on listeners bound by `bind`.
    pub fn start(
        sockets: Vec<(TcpListener, Role)>,
        cfg: ServerConfig,
        services: Services,
    ) -> std::io::Result<Server> {
        let shared = Arc::new(Shared {
            cfg,
            services,
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            handoff: bounded(0),
            open: Mutex::new(HashMap::new()),
        });
        let mut local_addrs = Vec::new();
        let mut accept_threads = Vec::new();
        for (listener, role) in sockets {
            let addr = listener.local_addr()?;
            log::info!("listening on {addr} ({})", role.name());
            local_addrs.push(addr);
            let shared = shared.clone();
            accept_threads.push(
                thread::Builder::new()
                    .name(format!("accept-{addr}"))
                    .spawn(move || accept_loop(listener, role, shared))?,
            );
        }
        Ok(Server {
            shared,
            local_addrs,
            accept_threads,
        })
    }

    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops accepting, lets sessions finish for up to `grace` (each gets 421 at its next
    /// command), then cuts the rest. A message not yet answered with 250 was not accepted, so
    /// cutting a session loses nothing.
    pub fn stop(self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for addr in &self.local_addrs {
            // Wake the blocking accept() so it sees the flag.
            crate::net::wake_accept(*addr);
        }
        for t in self.accept_threads {
            let _ = t.join();
        }
        let deadline = Instant::now() + grace;
        while self.shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let open = self.shared.open.lock().expect("conn registry");
        if !open.is_empty() {
            log::info!(
                "closing {} sessions still open after the grace period",
                open.len()
            );
        }
        for s in open.values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Binds every listener (before privileges are dropped), so a bad address fails start-up.
pub fn bind(listeners: &[Listener]) -> std::io::Result<Vec<(TcpListener, Role)>> {
    listeners
        .iter()
        .map(|l| {
            TcpListener::bind(l.addr).map(|s| (s, l.role)).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.addr))
            })
        })
        .collect()
}

fn accept_loop(listener: TcpListener, role: Role, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.cfg.max_connections {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            shared.services.metrics.connection_refused();
            log::warn!(
                "connection from {peer} refused: {} connections open",
                shared.cfg.max_connections
            );
            refuse(stream);
            continue;
        }
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        shared.services.metrics.connection_accepted();
        if let Ok(clone) = stream.try_clone() {
            shared.open.lock().expect("conn registry").insert(id, clone);
        }
        let client = Client {
            stream,
            peer,
            role,
            id,
        };
        // A session thread that just finished with a client takes the next one; only when
        // none is waiting is a new thread started.
        let client = match shared.handoff.0.try_send(client) {
            Ok(()) => continue,
            Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => c,
        };
        let worker = shared.clone();
        let spawned = thread::Builder::new()
            .name("smtp".into())
            .stack_size(CONN_STACK)
            .spawn(move || session_thread(&worker, client));
        if let Err(e) = spawned {
            log::error!("cannot start a session thread for {peer}: {e}");
            shared.open.lock().expect("conn registry").remove(&id);
            shared.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A client waiting for its session thread.
struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    role: Role,
    id: u64,
}

/// How long a session thread without a client waits for the next one before it exits.
/// Reusing a thread costs a wake-up; creating one costs a stack mapping, a signal stack
/// and their unmapping (with TLB shootdowns) when it ends.
const IDLE_THREAD: Duration = Duration::from_secs(10);

/// One client at a time, each served start to finish on this thread (thread per connection),
/// then the next handed over by the accept thread, until none comes for a while.
fn session_thread(shared: &Shared, mut client: Client) {
    loop {
        shared.services.metrics.session_opened();
        conn::run(client.stream, client.peer, client.role, shared);
        shared.services.metrics.session_closed();
        shared
            .open
            .lock()
            .expect("conn registry")
            .remove(&client.id);
        shared.active.fetch_sub(1, Ordering::SeqCst);
        match shared.handoff.1.recv_timeout(IDLE_THREAD) {
            Ok(next) => client = next,
            Err(_) => return,
        }
    }
}

/// Tells a client over the cap to come back later; never blocks the accept thread.
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(reply::too_many_connections().render().as_bytes());
}
