//! Drives one `smtp::Session` over a client socket: reads bounded lines, writes replies
//! (flushing only when no pipelined input is waiting), streams DATA into the spool and
//! commits it before answering 250.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Shared, reply_map};
use crate::net::{Line, LineReader};
use crate::smtp::data::DataReader;
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::{Effect, Session, SessionConfig, Transaction};
use crate::spool::{Envelope, Kind, RcptState, Recipient};

/// Bytes of DATA gathered before each write to the spool file.
const WRITE_CHUNK: usize = 64 * 1024;

enum DataOutcome {
    Queued(String),
    Refused(Reply),
    /// Timeout or lost connection: answered (or not) already; end the session.
    Gone,
}

pub fn run(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    let cfg = &shared.cfg;
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(cfg.idle_timeout)).is_err()
        || stream.set_write_timeout(Some(cfg.idle_timeout)).is_err()
    {
        return;
    }
    let peer_ip = canonical(peer.ip());
    let relay_allowed = cfg.trusted.iter().any(|n| n.contains(peer_ip));
    log::debug!(
        "connect from [{peer_ip}] (relay {})",
        if relay_allowed { "allowed" } else { "denied" }
    );
    let mut session = Session::new(SessionConfig {
        hostname: cfg.hostname.clone(),
        max_message_size: cfg.max_message_size,
        max_recipients: cfg.max_recipients,
        max_errors: cfg.max_errors,
        relay_allowed,
        postmaster: cfg.postmaster.clone(),
    });
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut conn = Conn {
        reader: LineReader::new(stream, (cfg.max_line_length + 2).max(16 * 1024)),
        writer: write_half,
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
                session.feed(line)
            }
            Ok(Line::TooLong) => session.line_too_long(),
            Ok(Line::Eof) => break,
            Err(e) => {
                if is_timeout(&e) {
                    log::info!("timeout from [{peer_ip}] after {commands} commands");
                    conn.reply(&reply::timeout());
                    let _ = conn.flush();
                }
                break;
            }
        };
        conn.reply(&step.reply);
        match step.effect {
            Effect::None => {}
            Effect::Close => {
                let _ = conn.flush();
                break;
            }
            Effect::BeginData => {
                if conn.flush().is_err() {
                    return;
                }
                let tx = session
                    .transaction()
                    .expect("DATA has a transaction")
                    .clone();
                let helo = session.helo().unwrap_or("").to_string();
                match receive_data(&mut conn, shared, &tx, &helo, session.is_esmtp(), peer_ip) {
                    DataOutcome::Queued(id) => conn.reply(&session.data_done(Ok(id))),
                    DataOutcome::Refused(r) => conn.reply(&session.data_done(Err(r))),
                    DataOutcome::Gone => return,
                }
            }
        }
    }
    let _ = conn.flush();
    log::debug!("disconnect from [{peer_ip}] after {commands} commands");
}

struct Conn {
    reader: LineReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
}

impl Conn {
    fn reply(&mut self, r: &Reply) {
        self.out.extend_from_slice(r.render().as_bytes());
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let r = self.writer.write_all(&self.out);
            self.out.clear();
            r?;
        }
        Ok(())
    }
}

fn receive_data(
    conn: &mut Conn,
    shared: &Shared,
    tx: &Transaction,
    helo: &str,
    esmtp: bool,
    peer_ip: IpAddr,
) -> DataOutcome {
    let cfg = &shared.cfg;
    let mut incoming = match shared.spool.create() {
        Ok(i) => Some(i),
        Err(e) => {
            log::error!("spool: cannot create a message file: {e}");
            None
        }
    };
    let mut write_error: Option<io::Error> = None;
    let id = incoming.as_ref().map(|i| i.id.clone()).unwrap_or_default();
    let received = received_header(cfg, helo, esmtp, tx, peer_ip, &id);
    let mut buf = Vec::with_capacity(WRITE_CHUNK + 4096);
    buf.extend_from_slice(received.as_bytes());
    let mut reader = DataReader::new(cfg.max_message_size);
    loop {
        let avail = conn.reader.buffered();
        if !avail.is_empty() {
            match reader.feed(avail, &mut buf) {
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
                    if is_timeout(&e) {
                        conn.reply(&reply::timeout());
                        let _ = conn.flush();
                    }
                    return abandon(shared, incoming, &format!("DATA interrupted: {e}"), peer_ip);
                }
            }
        }
        if buf.len() >= WRITE_CHUNK {
            write_body(&mut incoming, &mut write_error, &buf);
            buf.clear();
        }
    }
    write_body(&mut incoming, &mut write_error, &buf);
    let summary = reader.summary();
    let refuse = |r: Reply, why: &str, incoming: Option<_>| {
        if let Some(i) = incoming {
            shared.spool.abort(i);
        }
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
    let incoming = match (incoming, write_error) {
        (Some(i), None) => i,
        (i, e) => {
            let e = e.unwrap_or_else(|| io::Error::other("no spool file"));
            return refuse(
                reply_map::spool_error(&e),
                &format!("spool write failed: {e}"),
                i,
            );
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let env = Envelope {
        id: id.clone(),
        kind: Kind::Message,
        received: now,
        client: peer_ip.to_string(),
        helo: helo.to_string(),
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
        recipients: tx
            .recipients
            .iter()
            .map(|m| Recipient {
                address: m.to_string(),
                state: RcptState::Pending,
            })
            .collect(),
    };
    if let Err(e) = shared.spool.commit(incoming, &env) {
        log::error!("{id}: spool commit failed: {e}");
        return DataOutcome::Refused(reply_map::spool_error(&e));
    }
    log::info!(
        "{id}: received from {helo}[{peer_ip}] sender=<{}> nrcpt={} size={}{}",
        env.sender,
        env.recipients.len(),
        env.size,
        if summary.bare_line_ends > 0 {
            format!(" bare-line-ends={}", summary.bare_line_ends)
        } else {
            String::new()
        }
    );
    if shared.queued.send(env).is_err() {
        // The scheduler is gone (shutting down): the message is safe on disk for the next start.
        log::warn!("{id}: queued on disk; delivery starts at the next start-up");
    }
    DataOutcome::Queued(id)
}

fn write_body(
    incoming: &mut Option<crate::spool::Incoming>,
    error: &mut Option<io::Error>,
    buf: &[u8],
) {
    if error.is_some() {
        return;
    }
    if let Some(i) = incoming
        && let Err(e) = i.write_all(buf)
    {
        *error = Some(e);
    }
}

fn abandon(
    shared: &Shared,
    incoming: Option<crate::spool::Incoming>,
    why: &str,
    peer_ip: IpAddr,
) -> DataOutcome {
    if let Some(i) = incoming {
        shared.spool.abort(i);
    }
    log::info!("message from [{peer_ip}] abandoned: {why}");
    DataOutcome::Gone
}

/// RFC 5321 4.4 trace field. The client's HELO name is shown but never trusted as its identity.
fn received_header(
    cfg: &super::ServerConfig,
    helo: &str,
    esmtp: bool,
    tx: &Transaction,
    ip: IpAddr,
    id: &str,
) -> String {
    let helo: String = helo
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    let ip = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let with = match (tx.smtputf8, esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    };
    let for_clause = match tx.recipients.as_slice() {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {} (mxrelay) with {with} id {id}{for_clause};\r\n\t{}\r\n",
        cfg.hostname,
        crate::date::rfc5322(SystemTime::now())
    )
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
