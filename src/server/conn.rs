//! Drives one `smtp::Session` over a client socket: reads bounded lines, writes replies
//! (flushing only when no pipelined input is waiting) and reports refusals, upgrades to TLS,
//! checks credentials, and hands DATA to `accept`.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::accept::{self, Client, DataOutcome};
use super::{ServerConfig, Shared};
use crate::config::Role;
use crate::events::Event;
use crate::net::{Line, LineReader, Stream, TakePlain};
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::{Effect, Refusal, Refused, Session, SessionConfig, SessionLimits, Step};

pub fn run(stream: TcpStream, peer: SocketAddr, role: Role, shared: &Shared) {
    let cfg = &shared.cfg;
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(cfg.idle_timeout)).is_err()
        || stream.set_write_timeout(Some(cfg.idle_timeout)).is_err()
    {
        return;
    }
    let ip = canonical(peer.ip());
    let _slot = match shared.services.limits.connect(ip) {
        Ok(slot) => slot,
        Err(_) => return refuse_over_address_limit(shared, stream, ip, role),
    };
    let trusted = cfg.trusted.iter().any(|n| n.contains(ip));
    let (stream, tls) = if role == Role::Smtps {
        match handshake(shared, stream, ip) {
            Some((s, info)) => (s, Some(info)),
            None => return,
        }
    } else {
        (Stream::Plain(stream), None)
    };
    log::debug!(
        "connect from [{ip}] to the {} port (trusted: {trusted})",
        role.name()
    );
    let mut session_cfg = session_config(
        cfg,
        Offers {
            tls: shared.services.tls.is_some(),
            auth: shared.services.users.is_some(),
        },
        role,
        trusted,
        ip,
    );
    session_cfg.limits = shared.services.limits.for_session(ip);
    let mut conn = Conn {
        shared,
        session: Session::new(session_cfg),
        reader: LineReader::new(stream, line_buffer(cfg.max_line_length)),
        out: Vec::new(),
        ip,
        role,
        trusted,
        tls,
        commands: 0,
    };
    let greeting = conn.session.greeting();
    conn.reply(&greeting);
    loop {
        // Replies go out when no pipelined command waits, or when enough are queued: a
        // client that sends without reading is held up by its own socket, not our memory.
        let waiting = conn.reader.buffered().contains(&b'\n');
        if (!waiting || conn.out.len() >= MAX_QUEUED_REPLIES) && conn.flush().is_err() {
            return;
        }
        let Some(step) = conn.next_step() else { break };
        let step = accept::admit(shared, &mut conn.session, step);
        conn.answer(&step);
        match conn.carry_out(step.effect) {
            Flow::Go => {}
            Flow::End => break,
            Flow::Drop => return,
        }
    }
    let _ = conn.flush();
    conn.reader.get_mut().close();
    log::debug!("disconnect from [{ip}] after {} commands", conn.commands);
}

/// Reply bytes queued for pipelined commands before they are written out anyway.
const MAX_QUEUED_REPLIES: usize = 64 * 1024;

/// A client whose address has `--max-connections-per-ip` open: 421, without waiting on it.
fn refuse_over_address_limit(shared: &Shared, stream: TcpStream, ip: IpAddr, role: Role) {
    let r = reply::too_many_connections_from_address();
    shared.services.metrics.connection_refused();
    let refused = Refused {
        reason: Refusal::MaxConnectionsPerIp,
        command: "CONNECT".into(),
        argument: None,
    };
    report_refusal(shared, ip, None, &refused, &r);
    super::refuse_with(stream, role, &r);
}

/// The `rejected` event (and metric); a limit's refusal is also logged, with who and why.
fn report_refusal(
    shared: &Shared,
    ip: IpAddr,
    user: Option<&str>,
    refused: &Refused,
    reply: &Reply,
) {
    let label = refused.reason.label();
    let held = match refused.reason.is_limit() {
        true => shared.refusals_logged.pass(label, super::now_s()),
        false => None,
    };
    if let Some(held) = held {
        log::warn!(
            "limit {label} reached by [{ip}]{}: {} refused: {}{}",
            user.map(|u| format!(" user={u}")).unwrap_or_default(),
            refused.command,
            reply.summary(),
            super::log_gate::held_back(held)
        );
    }
    shared.services.events.report(&Event::Rejected {
        client_ip: &ip.to_string(),
        auth_user: user,
        refused,
        reply,
    });
}

/// What the session loop does after a step.
enum Flow {
    Go,
    /// Flush what is queued and close.
    End,
    /// The connection is unusable or the client must not hear more: just drop it.
    Drop,
}

/// What the relay can offer a client, whoever it is.
#[derive(Clone, Copy)]
struct Offers {
    tls: bool,
    auth: bool,
}

/// The session's rules for this client: relaying needs a trusted address on the relay
/// port (or AUTH); submission ports require AUTH.
fn session_config(
    cfg: &ServerConfig,
    offers: Offers,
    role: Role,
    trusted: bool,
    ip: IpAddr,
) -> SessionConfig {
    SessionConfig {
        hostname: cfg.hostname.clone(),
        max_message_size: cfg.max_message_size,
        max_hops: cfg.max_hops,
        max_recipients: cfg.max_recipients,
        max_errors: cfg.max_errors,
        relay_allowed: trusted && role == Role::Smtp,
        postmaster: cfg.postmaster.clone(),
        tls_available: offers.tls,
        implicit_tls: role == Role::Smtps,
        auth_available: offers.auth,
        require_auth: role != Role::Smtp,
        plaintext_auth: cfg.plaintext_auth_loopback && ip.is_loopback(),
        limits: SessionLimits::default(),
    }
}

/// A new message starts: hold it back while delivery lags.
fn pace(shared: &Shared, ip: IpAddr) {
    if let Some(waited) = shared.services.in_flow.pace() {
        shared.services.metrics.in_flow_delayed();
        log::info!(
            "in-flow delay for [{ip}]: MAIL held back {} ms",
            waited.as_millis()
        );
    }
}

fn line_buffer(max_line: usize) -> usize {
    (max_line + 2).max(16 * 1024)
}

struct Conn<'a> {
    shared: &'a Shared,
    session: Session,
    reader: LineReader<Stream>,
    out: Vec<u8>,
    ip: IpAddr,
    role: Role,
    trusted: bool,
    /// The TLS session, described, once there is one.
    tls: Option<String>,
    commands: u32,
}

impl Conn<'_> {
    /// Reads the next command and feeds it to the session; `None` when the client is gone
    /// (or timed out: then it has been told).
    fn next_step(&mut self) -> Option<Step> {
        let cfg = &self.shared.cfg;
        match self.reader.read_line(cfg.max_line_length) {
            Ok(Line::Line(line)) => {
                self.commands += 1;
                if self.shared.stopping.load(Ordering::SeqCst) {
                    let r = reply::shutting_down(&cfg.hostname);
                    self.out.extend_from_slice(r.render().as_bytes());
                    return None;
                }
                Some(self.session.feed(line))
            }
            Ok(Line::TooLong) => Some(self.session.line_too_long()),
            Ok(Line::Eof) => None,
            Err(e) => {
                if crate::net::is_timeout(&e) {
                    log::info!(
                        "timeout from [{}] after {} commands",
                        self.ip,
                        self.commands
                    );
                    self.reply(&reply::timeout());
                }
                None
            }
        }
    }

    fn carry_out(&mut self, effect: Effect) -> Flow {
        match effect {
            Effect::None => Flow::Go,
            Effect::MailAccepted => {
                pace(self.shared, self.ip);
                Flow::Go
            }
            Effect::Close => Flow::End,
            Effect::StartTls => {
                if self.flush().is_err() {
                    return Flow::Drop;
                }
                let Some(info) = self.starttls() else {
                    return Flow::Drop;
                };
                self.tls = Some(info);
                self.session.tls_started();
                Flow::Go
            }
            Effect::Authenticate { user, password } => {
                let (verdict, locked) =
                    authenticate(self.shared, &user, password.as_deref(), self.ip);
                let ok = verdict.is_some();
                let step = self.session.auth_result(ok, verdict.unwrap_or_default());
                self.answer(&step);
                if locked {
                    self.reply(&reply::auth_locked_out());
                    let _ = self.flush();
                    return Flow::Drop;
                }
                Flow::Go
            }
            Effect::BeginData => self.data(),
            Effect::Admit(what) => {
                let user = self.session.auth_user();
                let verdict = self.shared.services.limits.admit(self.ip, user, what);
                let step = self.session.admitted(verdict);
                self.answer(&step);
                self.carry_out(step.effect)
            }
        }
    }

    /// DATA after its 354: the message is read and committed (or refused) by `accept`.
    fn data(&mut self) -> Flow {
        if self.flush().is_err() {
            return Flow::Drop;
        }
        let client = Client {
            ip: self.ip,
            role: self.role,
            trusted: self.trusted,
            helo: self.session.helo().unwrap_or(""),
            esmtp: self.session.is_esmtp(),
            tls: self.tls.as_deref(),
            auth_user: self.session.auth_user(),
        };
        let result = match accept::receive(&mut self.reader, self.shared, &self.session, &client) {
            DataOutcome::Queued(id) => Ok(id),
            DataOutcome::Refused(why, r) => Err((why, r)),
            DataOutcome::Gone { timed_out } => {
                if timed_out {
                    self.reply(&reply::timeout());
                    let _ = self.flush();
                }
                return Flow::Drop;
            }
        };
        let step = self.session.data_done(result);
        self.answer(&step);
        Flow::Go
    }

    fn reply(&mut self, r: &Reply) {
        self.out.extend_from_slice(r.render().as_bytes());
    }

    /// Queues the step's reply; a refusal is also reported (event, metric, log).
    fn answer(&mut self, step: &Step) {
        let Some(r) = &step.reply else { return };
        if let Some(refused) = &step.refused {
            let user = self.session.auth_user();
            report_refusal(self.shared, self.ip, user, refused, r);
        }
        self.reply(r);
    }

    /// STARTTLS after its 220 went out. Anything the client sent after STARTTLS without
    /// waiting for the 220 is plaintext injected before the handshake (CVE-2011-0411): drop
    /// the client.
    fn starttls(&mut self) -> Option<String> {
        let ip = self.ip;
        let tcp = match self.reader.take_plain() {
            Ok(tcp) => tcp,
            Err(TakePlain::Unavailable) => return None,
            Err(TakePlain::ReadAhead) => {
                log::warn!("client [{ip}] pipelined commands after STARTTLS; disconnecting");
                return None;
            }
        };
        let (stream, info) = handshake(self.shared, tcp, ip)?;
        let buffer = line_buffer(self.shared.cfg.max_line_length);
        self.reader = LineReader::new(stream, buffer);
        Some(info)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let r = self.reader.get_mut().write_all(&self.out);
            self.out.clear();
            match &r {
                Err(e) if crate::net::is_timeout(e) => log::info!(
                    "write timeout to [{}]: the client reads no replies; closing",
                    self.ip
                ),
                Err(e) => log::debug!("write to [{}] failed: {e}", self.ip),
                Ok(()) => {}
            }
            r?;
        }
        Ok(())
    }
}

/// The TLS handshake, on this client's thread, over within the handshake timeout.
fn handshake(shared: &Shared, tcp: TcpStream, ip: IpAddr) -> Option<(Stream, String)> {
    let tls = shared.services.tls.as_ref()?;
    match tls.accept(tcp, Instant::now() + shared.cfg.tls_handshake_timeout) {
        Ok(s) => {
            let info = crate::tls::describe(&s);
            let idle = Some(shared.cfg.idle_timeout);
            let _ = s.get_ref().set_read_timeout(idle);
            let _ = s.get_ref().set_write_timeout(idle);
            log::debug!("tls from [{ip}]: {info}");
            Some((Stream::Server(Box::new(s)), info))
        }
        Err(e) => {
            log::info!("tls handshake with [{ip}] failed: {e}");
            None
        }
    }
}

/// Checks credentials: `Some(sender domains)` on success. A failure is paused on and
/// logged in a fail2ban-friendly line; `locked` says the address just reached its limit.
fn authenticate(
    shared: &Shared,
    user: &str,
    password: Option<&[u8]>,
    ip: IpAddr,
) -> (Option<Vec<String>>, bool) {
    let now = Instant::now();
    if shared.services.auth_guard.is_locked(ip, now) {
        log::warn!("authentication refused for [{ip}]: locked out after repeated failures");
        return (None, true);
    }
    let users = shared
        .services
        .users
        .as_ref()
        .expect("AUTH is only offered with users")
        .get();
    if password.is_some_and(|p| users.verify(user, p)) {
        shared.services.auth_guard.clear(ip);
        log::info!("authenticated user={user} from [{ip}]");
        let domains = users
            .get(user)
            .map(|a| a.sender_domains.clone())
            .unwrap_or_default();
        return (Some(domains), false);
    }
    let shown: String = user
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    log::warn!("authentication failed for user={shown} from [{ip}]");
    shared.services.metrics.auth_failed();
    std::thread::sleep(shared.cfg.auth_fail_delay.min(Duration::from_secs(30)));
    let locked = shared
        .services
        .auth_guard
        .record_failure(ip, Instant::now());
    (None, locked)
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;

    fn server_config() -> ServerConfig {
        ServerConfig {
            hostname: "relay.test".into(),
            trusted: vec![crate::config::parse_cidr("10.0.0.0/8").unwrap()],
            proxy_from: Vec::new(),
            postmaster: Mailbox::parse("postmaster@relay.test").unwrap(),
            max_connections: 10,
            max_message_size: 1000,
            max_recipients: 10,
            max_errors: 10,
            max_line_length: 1000,
            max_hops: 50,
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            plaintext_auth_loopback: true,
            auth_fail_delay: Duration::from_secs(1),
            limits: crate::limits::LimitsConfig::none(),
        }
    }

    #[test]
    fn relaying_needs_a_trusted_client_on_the_relay_port_or_auth() {
        let cfg = server_config();
        let offers = Offers {
            tls: true,
            auth: true,
        };
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        // role, trusted, ip -> relay_allowed, require_auth, implicit_tls, plaintext_auth
        let cases = [
            (Role::Smtp, true, loopback, (true, false, false, true)),
            (Role::Smtp, false, remote, (false, false, false, false)),
            (Role::Submission, true, loopback, (false, true, false, true)),
            (Role::Submission, false, remote, (false, true, false, false)),
            (Role::Smtps, true, remote, (false, true, true, false)),
        ];
        for (role, trusted, ip, want) in cases {
            let c = session_config(&cfg, offers, role, trusted, ip);
            let got = (
                c.relay_allowed,
                c.require_auth,
                c.implicit_tls,
                c.plaintext_auth,
            );
            assert_eq!(got, want, "{role:?} trusted={trusted} {ip}");
        }
        let bare = session_config(
            &cfg,
            Offers {
                tls: false,
                auth: false,
            },
            Role::Smtp,
            true,
            loopback,
        );
        assert!(!bare.tls_available && !bare.auth_available);
    }

    #[test]
    fn mapped_ipv4_addresses_are_seen_as_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn the_line_buffer_holds_a_longest_line() {
        assert_eq!(line_buffer(1000), 16 * 1024);
        assert_eq!(line_buffer(100_000), 100_002);
    }
}
