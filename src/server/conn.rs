//! Drives one `smtp::Session` over a client socket: reads bounded lines, writes replies
//! (flushing only when no pipelined input is waiting), upgrades to TLS, checks credentials,
//! streams DATA into the spool and commits it before answering 250.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Shared, reply_map};
use crate::config::Role;
use crate::net::{Line, LineReader, Stream, TakePlain};
use crate::smtp::data::DataReader;
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::{Effect, Session, SessionConfig, Transaction};
use crate::spool::{Envelope, Kind, RcptState, Recipient};

enum DataOutcome {
    Queued(String),
    Refused(Reply),
    /// Timeout or lost connection: answered (or not) already; end the session.
    Gone,
}

/// What the `Received:` header and the log say about the client.
struct Trace<'a> {
    helo: &'a str,
    esmtp: bool,
    tls: Option<&'a str>,
    auth_user: Option<&'a str>,
    ip: IpAddr,
}

pub fn run(stream: TcpStream, peer: SocketAddr, role: Role, shared: &Shared) {
    let cfg = &shared.cfg;
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(cfg.idle_timeout)).is_err()
        || stream.set_write_timeout(Some(cfg.idle_timeout)).is_err()
    {
        return;
    }
    let peer_ip = canonical(peer.ip());
    let trusted = cfg.trusted.iter().any(|n| n.contains(peer_ip));
    let mut tls_info = None;
    let stream = if role == Role::Smtps {
        match handshake(shared, stream, peer_ip) {
            Some((s, info)) => {
                tls_info = Some(info);
                s
            }
            None => return,
        }
    } else {
        Stream::Plain(stream)
    };
    let mut session = Session::new(SessionConfig {
        hostname: cfg.hostname.clone(),
        max_message_size: cfg.max_message_size,
        max_recipients: cfg.max_recipients,
        max_errors: cfg.max_errors,
        relay_allowed: trusted && role == Role::Smtp,
        postmaster: cfg.postmaster.clone(),
        tls_available: shared.services.tls.is_some(),
        implicit_tls: role == Role::Smtps,
        auth_available: shared.services.users.is_some(),
        require_auth: role != Role::Smtp,
        plaintext_auth: cfg.plaintext_auth_loopback && peer_ip.is_loopback(),
    });
    log::debug!(
        "connect from [{peer_ip}] to the {} port (trusted: {trusted})",
        role.name()
    );
    let mut conn = Conn {
        reader: LineReader::new(stream, line_buffer(cfg.max_line_length)),
        out: Vec::new(),
    };
    conn.reply(&session.greeting());
    let mut commands = 0u32;
    loop {
        if !conn.reader.buffered().contains(&b'\n') && conn.flush().is_err() {
            return;
        }
        let step = match conn.reader.read_line(cfg.max_line_length) {
            Ok(Line::Line(line)) => {
                commands += 1;
                if shared.stopping.load(Ordering::SeqCst) {
                    conn.reply(&reply::shutting_down(&cfg.hostname));
                    let _ = conn.flush();
                    return;
                }
                let in_auth = session.in_auth_exchange();
                let step = session.feed(line);
                if step.effect == Effect::MailAccepted {
                    // A new message starts; hold it back while delivery lags.
                    if let Some(waited) = shared.services.in_flow.pace() {
                        shared.services.metrics.in_flow_delayed();
                        log::info!(
                            "in-flow delay for [{peer_ip}]: MAIL held back {} ms",
                            waited.as_millis()
                        );
                    }
                }
                // Only a refusal is described (for the event log): nothing extra per command.
                if let Some(r) = step.reply.as_ref().filter(|r| r.code >= 400) {
                    rejected(shared, peer_ip, &describe_command(line, in_auth), r);
                }
                step
            }
            Ok(Line::TooLong) => {
                let step = session.line_too_long();
                if let Some(r) = &step.reply {
                    rejected(shared, peer_ip, &("(line too long)".to_string(), None), r);
                }
                step
            }
            Ok(Line::Eof) => break,
            Err(e) => {
                if crate::net::is_timeout(&e) {
                    log::info!("timeout from [{peer_ip}] after {commands} commands");
                    conn.reply(&reply::timeout());
                    let _ = conn.flush();
                }
                break;
            }
        };
        if let Some(r) = &step.reply {
            conn.reply(r);
        }
        match step.effect {
            Effect::None | Effect::MailAccepted => {}
            Effect::Close => {
                let _ = conn.flush();
                break;
            }
            Effect::StartTls => {
                if conn.flush().is_err() {
                    return;
                }
                let Some(info) = starttls(&mut conn, shared, peer_ip) else {
                    return;
                };
                tls_info = Some(info);
                session.tls_started();
            }
            Effect::Authenticate { user, password } => {
                let (reply, locked) = authenticate(shared, &user, password.as_deref(), peer_ip);
                let r = session.auth_result(reply.is_some(), reply.unwrap_or_default());
                if r.code >= 400 {
                    rejected(shared, peer_ip, &("AUTH".to_string(), None), &r);
                }
                conn.reply(&r);
                if locked {
                    conn.reply(&reply::auth_locked_out());
                    let _ = conn.flush();
                    return;
                }
            }
            Effect::BeginData => {
                if conn.flush().is_err() {
                    return;
                }
                let tx = session
                    .transaction()
                    .expect("DATA has a transaction")
                    .clone();
                let trace = Trace {
                    helo: session.helo().unwrap_or(""),
                    esmtp: session.is_esmtp(),
                    tls: tls_info.as_deref(),
                    auth_user: session.auth_user(),
                    ip: peer_ip,
                };
                let outcome = receive_data(&mut conn, shared, &tx, &trace);
                match outcome {
                    DataOutcome::Queued(id) => conn.reply(&session.data_done(Ok(id))),
                    DataOutcome::Refused(r) => {
                        rejected(shared, peer_ip, &("DATA".to_string(), None), &r);
                        conn.reply(&session.data_done(Err(r)));
                    }
                    DataOutcome::Gone => return,
                }
            }
        }
    }
    let _ = conn.flush();
    conn.reader.get_mut().close();
    log::debug!("disconnect from [{peer_ip}] after {commands} commands");
}

/// The verb (and for MAIL/RCPT the path) of a command, for the event log. Lines of a SASL
/// exchange are secrets and never described.
fn describe_command(line: &[u8], in_auth: bool) -> (String, Option<String>) {
    if in_auth {
        return ("AUTH".into(), None);
    }
    let text = String::from_utf8_lossy(&line[..line.len().min(600)]);
    let mut words = text.splitn(2, ' ');
    let verb = words.next().unwrap_or("").to_ascii_uppercase();
    let arg = match verb.as_str() {
        "MAIL" | "RCPT" => words.next().map(|a| {
            let a = a.trim();
            // Drop the FROM:/TO: keyword; keep the path and parameters.
            a.find(':')
                .filter(|&i| i <= 4)
                .map_or(a, |i| a[i + 1..].trim_start())
                .to_string()
        }),
        _ => None,
    };
    (verb.chars().take(16).collect(), arg)
}

/// Counts and records a refusal (4xx/5xx) at SMTP time.
fn rejected(shared: &Shared, ip: IpAddr, command: &(String, Option<String>), reply: &Reply) {
    shared
        .services
        .events
        .report(&crate::events::Event::Rejected {
            client_ip: &ip.to_string(),
            command: &command.0,
            argument: command.1.as_deref(),
            reply,
        });
}

fn line_buffer(max_line: usize) -> usize {
    (max_line + 2).max(16 * 1024)
}

struct Conn {
    reader: LineReader<Stream>,
    out: Vec<u8>,
}

impl Conn {
    fn reply(&mut self, r: &Reply) {
        self.out.extend_from_slice(r.render().as_bytes());
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let r = self.reader.get_mut().write_all(&self.out);
            self.out.clear();
            r?;
        }
        Ok(())
    }
}

/// The TLS handshake, on this client's thread, bounded by the handshake timeout.
fn handshake(shared: &Shared, tcp: TcpStream, ip: IpAddr) -> Option<(Stream, String)> {
    let tls = shared.services.tls.as_ref()?;
    let limit = Some(shared.cfg.tls_handshake_timeout);
    if tcp.set_read_timeout(limit).is_err() || tcp.set_write_timeout(limit).is_err() {
        return None;
    }
    match tls.accept(tcp) {
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

/// STARTTLS after its 220 went out. Anything the client sent after STARTTLS without waiting
/// for the 220 is plaintext injected before the handshake (CVE-2011-0411): drop the client.
fn starttls(conn: &mut Conn, shared: &Shared, ip: IpAddr) -> Option<String> {
    let tcp = match conn.reader.take_plain() {
        Ok(tcp) => tcp,
        Err(TakePlain::Unavailable) => return None,
        Err(TakePlain::ReadAhead) => {
            log::warn!("client [{ip}] pipelined commands after STARTTLS; disconnecting");
            return None;
        }
    };
    let (stream, info) = handshake(shared, tcp, ip)?;
    conn.reader = LineReader::new(stream, line_buffer(shared.cfg.max_line_length));
    Some(info)
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

fn receive_data(conn: &mut Conn, shared: &Shared, tx: &Transaction, trace: &Trace) -> DataOutcome {
    let peer_ip = trace.ip;
    let cfg = &shared.cfg;
    let mut incoming = shared.services.spool.create();
    let id = incoming.id.clone();
    let received = received_header(&cfg.hostname, trace, tx, &id);
    let mut write_error = incoming.write_all(received.as_bytes()).err();
    // After a write error, the rest is still read to its end (into this scratch buffer), so
    // the session stays in step with the client.
    let mut discard = Vec::new();
    let mut reader = DataReader::new(cfg.max_message_size);
    loop {
        let avail = conn.reader.buffered();
        if !avail.is_empty() {
            // The reader writes straight into the spool's buffer.
            let end = if write_error.is_none() {
                let end = incoming.fill(|out| reader.feed(avail, out));
                if let Err(e) = incoming.write_if_full() {
                    write_error = Some(e);
                }
                end
            } else {
                discard.clear();
                reader.feed(avail, &mut discard)
            };
            match end {
                Some(n) => {
                    conn.reader.consume(n);
                    break;
                }
                None => {
                    let n = avail.len();
                    conn.reader.consume(n);
                }
            }
        } else {
            match conn.reader.fill() {
                Ok(0) => {
                    return abandon(shared, incoming, "connection closed during DATA", peer_ip);
                }
                Ok(_) => continue,
                Err(e) => {
                    if crate::net::is_timeout(&e) {
                        conn.reply(&reply::timeout());
                        let _ = conn.flush();
                    }
                    return abandon(shared, incoming, &format!("DATA interrupted: {e}"), peer_ip);
                }
            }
        }
    }
    let summary = reader.summary();
    let refuse = |r: Reply, why: &str, incoming| {
        shared.services.spool.abort(incoming);
        log::info!("rejected message from [{peer_ip}]: {why}");
        DataOutcome::Refused(r)
    };
    if summary.oversize {
        return refuse(
            reply::message_too_big(),
            &format!("{} bytes exceed the limit", summary.size),
            incoming,
        );
    }
    if summary.received_headers + 1 > cfg.max_hops {
        return refuse(
            reply::too_many_hops(),
            &format!("{} Received: headers", summary.received_headers),
            incoming,
        );
    }
    if let Some(e) = write_error {
        log::error!("{id}: spool write failed: {e}");
        return refuse(
            reply_map::spool_error(&e),
            &format!("spool write failed: {e}"),
            incoming,
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let env = Envelope {
        id: id.clone(),
        kind: Kind::Message,
        received: now,
        client: peer_ip.to_string(),
        helo: trace.helo.to_string(),
        sender: tx
            .sender
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        size: summary.size + received.len() as u64,
        eight_bit: summary.eight_bit,
        smtputf8: tx.smtputf8,
        attempts: 0,
        next_attempt: 0,
        last_error: String::new(),
        held: false,
        recipients: tx
            .recipients
            .iter()
            .map(|m| Recipient {
                address: m.to_string(),
                state: RcptState::Pending,
            })
            .collect(),
    };
    let place = match shared.services.spool.commit(incoming, &env) {
        Ok(place) => place,
        Err(e) => {
            log::error!("{id}: spool commit failed: {e}");
            return DataOutcome::Refused(reply_map::spool_error(&e));
        }
    };
    let recipients: Vec<String> = env.recipients.iter().map(|r| r.address.clone()).collect();
    shared
        .services
        .events
        .report(&crate::events::Event::Received {
            id: &id,
            client_ip: &peer_ip.to_string(),
            helo: trace.helo,
            auth_user: trace.auth_user,
            tls: trace.tls,
            sender: &env.sender,
            recipients: &recipients,
            size: env.size,
            message_id: summary.message_id.as_deref(),
            bare_line_ends: summary.bare_line_ends,
        });
    if shared.services.intake.submit(env, place).is_err() {
        // The scheduler is gone (shutting down): the message is safe on disk for the next start.
        log::warn!("{id}: queued on disk; delivery starts at the next start-up");
    }
    DataOutcome::Queued(id)
}

fn abandon(
    shared: &Shared,
    incoming: crate::spool::Incoming<'_>,
    why: &str,
    peer_ip: IpAddr,
) -> DataOutcome {
    shared.services.spool.abort(incoming);
    log::info!("message from [{peer_ip}] abandoned: {why}");
    DataOutcome::Gone
}

/// RFC 5321 4.4 trace field, with the RFC 3848 / 6531 protocol keyword (ESMTPSA and
/// friends). The client's HELO name is shown but never trusted as its identity.
fn received_header(hostname: &str, trace: &Trace, tx: &Transaction, id: &str) -> String {
    let helo: String = trace
        .helo
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    let ip = match trace.ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let base = match (tx.smtputf8, trace.esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    };
    let suffix = match (trace.tls.is_some(), trace.auth_user.is_some()) {
        (true, true) => "SA",
        (true, false) => "S",
        (false, true) => "A",
        (false, false) => "",
    };
    let mut comments = String::new();
    if let Some(tls) = trace.tls {
        comments.push_str(&format!("\r\n\t(using {tls})"));
    }
    if let Some(user) = trace.auth_user {
        let user: String = user
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect();
        comments.push_str(&format!("\r\n\t(Authenticated sender: {user})"));
    }
    let for_clause = match tx.recipients.as_slice() {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    format!(
        "Received: from {helo} ([{ip}]){comments}\r\n\tby {hostname} (mxrelay) with {base}{suffix} id {id}{for_clause};\r\n\t{}\r\n",
        crate::date::rfc5322(SystemTime::now())
    )
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}
