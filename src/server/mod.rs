//! The SMTP listener side: a thread per client, a connection cap (421 beyond it), and a
//! graceful stop.
//!
//! Session threads accept their own clients: each listening socket has a few idle threads
//! blocked in accept() (the kernel wakes one per connection), and a thread that takes the
//! last waiting place starts another before serving. A client thus costs one wake-up, not a
//! wake-up of an accept thread plus a hand-off to a session thread. A thread with no client
//! for a while exits unless it is the last one waiting.

pub mod accept;
pub mod conn;
pub mod log_gate;
pub mod proxied;
pub mod reply_map;

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::auth::{FailureGuard, UsersFile};
use crate::config::{Cidr, Listener, Role};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::smtp::address::Mailbox;
use crate::smtp::reply::{self, Reply};
use crate::spool::Spool;
use crate::tls::ServerTls;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub hostname: String,
    pub trusted: Vec<Cidr>,
    /// Who may send PROXY headers to `+proxy` listeners (`--proxy-from`).
    pub proxy_from: Vec<Cidr>,
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
    pub limits: crate::limits::LimitsConfig,
}

/// What sessions use besides their configuration.
pub struct Services {
    pub spool: Arc<Spool>,
    /// Committed messages go to the scheduler.
    pub intake: Arc<crate::delivery::intake::Intake>,
    pub tls: Option<Arc<ServerTls>>,
    pub users: Option<Arc<UsersFile>>,
    pub auth_guard: FailureGuard,
    /// Connections per address, messages per connection, message and recipient rates.
    pub limits: crate::limits::Limits,
    pub in_flow: Arc<crate::delivery::flow::InFlow>,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
    /// The transform stage every accepted message passes through.
    pub transforms: crate::transform::Transforms,
}

/// What every connection thread shares.
pub struct Shared {
    pub cfg: ServerConfig,
    pub services: Services,
    pub stopping: AtomicBool,
    active: AtomicUsize,
    next_conn: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
    /// Refusals in the log: at most a line a second for each kind.
    pub refusals_logged: log_gate::LogGate,
}

/// A listening socket and the session threads waiting on it.
struct Listening {
    listener: TcpListener,
    role: Role,
    /// `+proxy`: a PROXY header from `--proxy-from` comes first.
    proxy: bool,
    /// Threads blocked in accept() on this socket.
    waiting: AtomicUsize,
}

pub struct Server {
    shared: Arc<Shared>,
    local_addrs: Vec<SocketAddr>,
    listening: Vec<Arc<Listening>>,
}

/// Session threads need little stack: the protocol state is small and buffers are on the heap.
const CONN_STACK: usize = 256 * 1024;

impl Server {
    /// Starts accepting on listeners bound by `bind`.
    pub fn start(
        sockets: Vec<(TcpListener, Listener)>,
        cfg: ServerConfig,
        services: Services,
    ) -> std::io::Result<Server> {
        let shared = Arc::new(Shared {
            cfg,
            services,
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
            refusals_logged: log_gate::LogGate::default(),
        });
        let mut local_addrs = Vec::new();
        let mut listening = Vec::new();
        for (listener, Listener { role, proxy, .. }) in sockets {
            let addr = listener.local_addr()?;
            let suffix = if proxy { "+proxy" } else { "" };
            log::info!("listening on {addr} ({}{suffix})", role.name());
            local_addrs.push(addr);
            // accept() returns after this long without a client, so idle threads can exit.
            crate::net::set_accept_timeout(&listener, IDLE_THREAD)?;
            let l = Arc::new(Listening {
                listener,
                role,
                proxy,
                waiting: AtomicUsize::new(0),
            });
            spawn_session_thread(&l, &shared)?;
            listening.push(l);
        }
        Ok(Server {
            shared,
            local_addrs,
            listening,
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
        for l in &self.listening {
            // Stops listening and wakes every thread blocked in accept() on it.
            crate::net::stop_listening(&l.listener);
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
pub fn bind(listeners: &[Listener]) -> std::io::Result<Vec<(TcpListener, Listener)>> {
    listeners
        .iter()
        .map(|l| {
            TcpListener::bind(l.addr).map(|s| (s, *l)).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.addr))
            })
        })
        .collect()
}

fn spawn_session_thread(l: &Arc<Listening>, shared: &Arc<Shared>) -> std::io::Result<()> {
    let (l, shared) = (l.clone(), shared.clone());
    l.waiting.fetch_add(1, Ordering::SeqCst);
    let spawned = thread::Builder::new()
        .name("smtp".into())
        .stack_size(CONN_STACK)
        .spawn({
            let l = l.clone();
            move || session_thread(&l, &shared)
        });
    if spawned.is_err() {
        l.waiting.fetch_sub(1, Ordering::SeqCst);
    }
    spawned.map(drop)
}

/// How long a session thread without a client waits for one before it exits (unless it is
/// the last one waiting). Reusing a thread costs a wake-up; creating one costs a stack
/// mapping, a signal stack and their unmapping (with TLB shootdowns) when it ends.
const IDLE_THREAD: Duration = Duration::from_secs(10);

/// Accepts clients and serves each start to finish (thread per connection), one after
/// another, until there is no client for a while or the server stops.
fn session_thread(l: &Arc<Listening>, shared: &Arc<Shared>) {
    loop {
        // Counted as waiting (by whoever started this thread, or after the last client).
        let accepted = l.listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            l.waiting.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if crate::net::is_timeout(&e) => {
                // Leave only if another thread is still waiting.
                let others = l
                    .waiting
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                        (w > 1).then(|| w - 1)
                    });
                if others.is_ok() {
                    return;
                }
                continue;
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if l.waiting.fetch_sub(1, Ordering::SeqCst) == 1
            && let Err(e) = spawn_session_thread(l, shared)
        {
            log::error!("cannot start a session thread: {e}");
        }
        serve(stream, peer, l, shared);
        l.waiting.fetch_add(1, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, l: &Listening, shared: &Shared) {
    if l.proxy && !proxied::from_balancer(peer, &shared.cfg.proxy_from) {
        shared.services.metrics.connection_refused();
        if let Some(held) = shared.refusals_logged.pass("proxy_from", now_s()) {
            log::warn!(
                "connection from [{}] to a +proxy listener refused: not in --proxy-from{}",
                peer.ip(),
                log_gate::held_back(held)
            );
        }
        return;
    }
    if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.cfg.max_connections {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        shared.services.metrics.connection_refused();
        if let Some(held) = shared.refusals_logged.pass("max_connections", now_s()) {
            log::warn!(
                "connection from {peer} refused: {} connections open{}",
                shared.cfg.max_connections,
                log_gate::held_back(held)
            );
        }
        refuse(stream, l.role);
        return;
    }
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    shared.services.metrics.connection_accepted();
    if let Ok(clone) = stream.try_clone() {
        shared.open.lock().expect("conn registry").insert(id, clone);
    }
    shared.services.metrics.session_opened();
    // Behind a balancer, the client it names is the client from here on.
    let client = if l.proxy {
        proxied::real_client(&stream, peer, shared.cfg.tls_handshake_timeout)
    } else {
        Some(peer)
    };
    if let Some(client) = client {
        conn::run(stream, client, l.role, shared);
    }
    shared.services.metrics.session_closed();
    shared.open.lock().expect("conn registry").remove(&id);
    shared.active.fetch_sub(1, Ordering::SeqCst);
}

/// Seconds since the epoch, for the log gate.
fn now_s() -> u64 {
    crate::delivery::clock::now_ms() / 1000
}

/// Tells a client over the cap to come back later, without waiting on it.
fn refuse(stream: TcpStream, role: Role) {
    refuse_with(stream, role, &reply::too_many_connections());
}

/// Writes a refusal without waiting on the client, then closes. On an implicit-TLS listener
/// the connection is only closed: a TLS client would take a plaintext reply for a broken
/// handshake, and a handshake to say no costs the CPU a refused client should not get.
pub(super) fn refuse_with(mut stream: TcpStream, role: Role, r: &Reply) {
    if role == Role::Smtps {
        return;
    }
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(r.render().as_bytes());
}
