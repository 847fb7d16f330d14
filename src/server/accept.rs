//! The accept side of one message, from DATA's 354 to the commit that earns the 250 (and,
//! before it, whether the spool has room for one at MAIL): the `Received:` field, the DATA
//! reader, the transform stage, the session's verdict, the envelope, the spool commit, the
//! `received` event and the hand-over to delivery.

use std::io;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Shared, reply_map};
use crate::config::Role;
use crate::events::Event;
use crate::net::{LineReader, Stream};
use crate::smtp::data::{DataReader, Summary};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Effect, Refusal, Session, Step, Transaction};
use crate::spool::{Envelope, Incoming, Kind, RcptState, Recipient};
use crate::transform::{Context, Notes, Stage};

pub enum DataOutcome {
    Queued(String),
    Refused(Refusal, Reply),
    /// The client went away or timed out during DATA; nothing was kept.
    Gone {
        timed_out: bool,
    },
}

/// Who sent the message: for `Received:`, the envelope, transforms and the log.
pub struct Client<'a> {
    pub ip: IpAddr,
    pub role: Role,
    pub trusted: bool,
    pub helo: &'a str,
    pub esmtp: bool,
    pub tls: Option<&'a str>,
    pub auth_user: Option<&'a str>,
}

/// A MAIL the session accepted goes ahead only while the spool has room for the message
/// (`--min-free-space`, and its declared SIZE on top of it); otherwise it gets `452 4.3.1`
/// before the client sends a message that would not be kept. Other steps pass.
pub fn admit(shared: &Shared, session: &mut Session, step: Step) -> Step {
    if step.effect != Effect::MailAccepted {
        return step;
    }
    let size = session.transaction().and_then(|tx| tx.declared_size);
    if shared.services.spool.space().has_room(size.unwrap_or(0)) {
        return step;
    }
    let (why, reply) = reply_map::short_of_space();
    session.mail_refused(why, reply)
}

/// Reads the message that follows DATA's 354 from `reader` and commits it, or says why not.
pub fn receive(
    reader: &mut LineReader<Stream>,
    shared: &Shared,
    session: &Session,
    client: &Client,
) -> DataOutcome {
    let tx = session.transaction().expect("DATA has a transaction");
    let mut incoming = shared.services.spool.create();
    let id = incoming.id.clone();
    let received = received_header(&shared.cfg.hostname, client, tx, &id);
    let cx = Context {
        id: &id,
        role: client.role,
        trusted: client.trusted,
        auth_user: client.auth_user,
        tx,
    };
    let mut stage = shared.services.transforms.begin(cx, received.as_bytes());
    let mut write_error = match stage {
        Some(_) => None,
        None => incoming.write_all(received.as_bytes()).err(),
    };
    let mut data = DataReader::new(shared.cfg.max_message_size);
    if let Err(e) = read_data(
        reader,
        &mut data,
        &mut incoming,
        stage.as_mut(),
        &mut write_error,
    ) {
        shared.services.spool.abort(incoming);
        log::info!(
            "message from [{}] abandoned: DATA interrupted: {e}",
            client.ip
        );
        return DataOutcome::Gone {
            timed_out: crate::net::is_timeout(&e),
        };
    }
    let summary = data.summary();
    let (head, notes) = match finish(session, summary, &mut incoming, stage, write_error, &id) {
        Ok(done) => done,
        Err((why, reply)) => {
            shared.services.spool.abort(incoming);
            log::info!(
                "rejected message from [{}]: {} ({} bytes, {} Received: fields)",
                client.ip,
                reply.summary(),
                summary.size,
                summary.received_headers
            );
            return DataOutcome::Refused(why, reply);
        }
    };
    let mut env = envelope(&id, client, tx, incoming.written());
    env.head = head;
    env.eight_bit = summary.eight_bit;
    env.tag = notes.tag.unwrap_or_default();
    env.personal = notes.personal;
    let place = match shared.services.spool.commit(incoming, &env) {
        Ok(place) => place,
        Err(e) => {
            log::error!("{id}: spool commit failed: {e}");
            let (why, reply) = reply_map::spool_error(&e);
            return DataOutcome::Refused(why, reply);
        }
    };
    report_received(shared, client, &env, summary, &notes.signatures);
    if shared.services.intake.submit(env, place).is_err() {
        // The scheduler is gone (shutting down): the message is safe on disk for the next start.
        log::warn!("{id}: queued on disk; delivery starts at the next start-up");
    }
    DataOutcome::Queued(id)
}

fn report_received(
    shared: &Shared,
    client: &Client,
    env: &Envelope,
    summary: &Summary,
    signatures: &[String],
) {
    let recipients: Vec<String> = env.recipients.iter().map(|r| r.address.clone()).collect();
    shared.services.events.report(&Event::Received {
        id: &env.id,
        client_ip: &client.ip.to_string(),
        helo: client.helo,
        auth_user: client.auth_user,
        tls: client.tls,
        sender: &env.sender,
        recipients: &recipients,
        size: env.size,
        message_id: summary.message_id.as_deref(),
        bare_line_ends: summary.bare_line_ends,
        tag: crate::events::tag(&env.tag),
        signatures,
    });
}

/// After the end of DATA: the session's verdict, then the spool's and the transforms'. On
/// success, the header block is written (see `Incoming::write_head`); how much of it went
/// after the body is returned with the transforms' notes.
fn finish(
    session: &Session,
    summary: &Summary,
    incoming: &mut Incoming,
    stage: Option<Stage>,
    write_error: Option<io::Error>,
    id: &str,
) -> Result<(u64, Notes), (Refusal, Reply)> {
    session.data_verdict(summary)?;
    let write_failed = |e: io::Error| {
        log::error!("{id}: spool write failed: {e}");
        reply_map::spool_error(&e)
    };
    if let Some(e) = write_error {
        return Err(write_failed(e));
    }
    let Some(stage) = stage else {
        return Ok((0, Notes::default()));
    };
    let msg = stage.end().map_err(|e| reply_map::transform_error(&e))?;
    let head = incoming
        .write_head(&msg.block.to_bytes())
        .map_err(write_failed)?;
    Ok((head, msg.notes))
}

/// Reads DATA to its end marker into the spool (through the stage, if there is one). After a
/// write error the rest is still read to its end, so that the session stays in step with the
/// client. An error here means the client is gone.
fn read_data(
    reader: &mut LineReader<Stream>,
    data: &mut DataReader,
    incoming: &mut Incoming,
    mut stage: Option<&mut Stage>,
    write_error: &mut Option<io::Error>,
) -> io::Result<()> {
    // The DATA reader adds at most what the line reader holds (16 KiB unless lines may be
    // longer) per call.
    let mut scratch = Vec::with_capacity(32 * 1024);
    loop {
        let avail = reader.buffered();
        if avail.is_empty() {
            if reader.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            continue;
        }
        let in_head = stage.as_ref().is_some_and(|s| !s.in_body());
        let end = if write_error.is_some() {
            scratch.clear();
            data.feed(avail, &mut scratch)
        } else if in_head {
            // The header section stays with the stage; what follows it is written out.
            scratch.clear();
            let end = data.feed(avail, &mut scratch);
            let stage = stage.as_mut().expect("in the header section");
            if let Err(e) = incoming.write_all(stage.feed(&scratch)) {
                *write_error = Some(e);
            }
            end
        } else {
            // The DATA reader writes straight into the spool's buffer; passes see the body
            // there.
            let end = incoming.fill(|out| {
                let from = out.len();
                let end = data.feed(avail, out);
                if let Some(stage) = stage.as_mut() {
                    stage.body_written(&out[from..]);
                }
                end
            });
            if let Err(e) = incoming.write_if_full() {
                *write_error = Some(e);
            }
            end
        };
        let n = end.unwrap_or(avail.len());
        reader.consume(n);
        if end.is_some() {
            return Ok(());
        }
    }
}

fn envelope(id: &str, client: &Client, tx: &Transaction, size: u64) -> Envelope {
    let mut env = Envelope::new(id.to_string(), Kind::Message);
    env.received = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    env.client = client.ip.to_string();
    env.helo = client.helo.to_string();
    env.sender = tx
        .sender
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default();
    env.size = size;
    env.smtputf8 = tx.smtputf8;
    env.recipients = tx
        .recipients
        .iter()
        .map(|m| Recipient {
            address: m.to_string(),
            state: RcptState::Pending,
        })
        .collect();
    env
}

/// RFC 5321 4.4 trace field, with the RFC 3848 / 6531 protocol keyword (ESMTPSA and
/// friends). The client's HELO name is shown but never trusted as its identity.
fn received_header(hostname: &str, client: &Client, tx: &Transaction, id: &str) -> String {
    let printable = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect()
    };
    let ip = match client.ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let base = match (tx.smtputf8, client.esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    };
    let suffix = match (client.tls.is_some(), client.auth_user.is_some()) {
        (true, true) => "SA",
        (true, false) => "S",
        (false, true) => "A",
        (false, false) => "",
    };
    let mut comments = String::new();
    if let Some(tls) = client.tls {
        comments.push_str(&format!("\r\n\t(using {tls})"));
    }
    if let Some(user) = client.auth_user {
        comments.push_str(&format!(
            "\r\n\t(Authenticated sender: {})",
            printable(user)
        ));
    }
    let for_clause = match tx.recipients.as_slice() {
        [one] => format!("\r\n\tfor <{one}>"),
        _ => String::new(),
    };
    format!(
        "Received: from {} ([{ip}]){comments}\r\n\tby {hostname} (mxrelay) with {base}{suffix} id {id}{for_clause};\r\n\t{}\r\n",
        printable(client.helo),
        crate::date::rfc5322(SystemTime::now())
    )
}
