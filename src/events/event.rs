//! The typed events and their one reporter: each step of a message's life is reported once,
//! and the reporter writes its log line, counts its metric and emits its JSON event (which
//! the events writer gives to the event log and the webhooks alike).

use std::time::{Duration, UNIX_EPOCH};

use super::category::{Category, categorize};
use super::{Events, V, rfc3339};
use crate::delivery::clock::now_ms;
use crate::delivery::scheduler::human;
use crate::smtp::reply::Reply;
use crate::smtp::session::Refused;
use crate::tracking::Kind;

pub enum Event<'a> {
    /// A message committed to the spool.
    Received {
        id: &'a str,
        client_ip: &'a str,
        helo: &'a str,
        auth_user: Option<&'a str>,
        /// The TLS protocol and cipher, when the session was encrypted.
        tls: Option<&'a str>,
        sender: &'a str,
        recipients: &'a [String],
        size: u64,
        message_id: Option<&'a str>,
        bare_line_ends: u64,
        tag: Option<&'a str>,
        /// The DKIM signatures added, e.g. `d=example.com s=mail a=rsa-sha256`.
        signatures: &'a [String],
    },
    /// A command refused.
    Rejected {
        client_ip: &'a str,
        /// The authenticated user, if the client had logged in.
        auth_user: Option<&'a str>,
        refused: &'a Refused,
        reply: &'a Reply,
    },
    /// One recipient delivered.
    Delivered {
        id: &'a str,
        tag: Option<&'a str>,
        recipient: &'a str,
        relay: &'a str,
        reply: &'a str,
        tls: bool,
        /// When the message was received (unix ms).
        received: u64,
    },
    /// One recipient's attempt failed for now.
    RecipientDeferred {
        id: &'a str,
        recipient: &'a str,
        reason: &'a str,
    },
    /// One recipient failed for good (the DSN follows when the round ends).
    RecipientFailed {
        id: &'a str,
        recipient: &'a str,
        status: &'a str,
        reason: &'a str,
    },
    /// A message's round ended with recipients still pending.
    Deferred {
        id: &'a str,
        tag: Option<&'a str>,
        recipients: &'a [String],
        reason: &'a str,
        attempt: u32,
        /// Unix ms.
        next_try: u64,
        /// How far off the next try is.
        delay: Duration,
    },
    /// One recipient reported to the sender (or dropped, for a double bounce).
    Bounced {
        id: &'a str,
        tag: Option<&'a str>,
        recipient: &'a str,
        status: &'a str,
        reason: Option<&'a str>,
        relay: Option<&'a str>,
        dsn_id: Option<&'a str>,
    },
    Expired {
        id: &'a str,
        tag: Option<&'a str>,
        recipients: &'a [String],
        age_s: u64,
        reason: &'a str,
    },
    Deleted {
        id: &'a str,
        tag: Option<&'a str>,
        recipients: &'a [String],
    },
    /// One recipient not sent to: on the suppression list (no DSN).
    Suppressed {
        id: &'a str,
        tag: Option<&'a str>,
        recipient: &'a str,
        /// The list entry's reason: `unsubscribe`, `bounce` or `manual`.
        reason: &'a str,
    },
    /// A tracked link followed by a recipient: a click, an open (the pixel fetched) or a
    /// one-click unsubscribe (done: the address is on the suppression list).
    Engaged {
        kind: Kind,
        id: &'a str,
        recipient: &'a str,
        /// The original URL of a click.
        url: Option<&'a str>,
        user_agent: Option<&'a str>,
        client_ip: Option<&'a str>,
        /// Fetched by a mail provider's image proxy rather than a person (opens).
        proxy: bool,
    },
}

impl Events {
    /// Reports an event: its log line, its metric and its JSON event.
    pub fn report(&self, event: &Event) {
        // Worked out once: the log line, the metric and the JSON event all carry it.
        let category = event.category();
        self.log_and_count(event, category);
        if let Some((name, mut fields)) = event.record() {
            if let Some(c) = category {
                // Beside the reason it is read from.
                let at = fields.iter().position(|(k, _)| *k == "reason");
                let at = at.map_or(fields.len(), |i| i + 1);
                fields.insert(at, ("category", V::Str(c.label())));
            }
            if let Some(tag) = event.tag() {
                fields.push(("tag", V::Str(tag)));
            }
            self.emit(name, &fields);
        }
    }

    fn log_and_count(&self, event: &Event, category: Option<Category>) {
        let category = category.unwrap_or(Category::Other);
        let m = &self.metrics;
        match *event {
            Event::Received {
                id,
                client_ip,
                helo,
                auth_user,
                tls,
                sender,
                recipients,
                size,
                bare_line_ends,
                tag,
                signatures,
                ..
            } => {
                log::info!(
                    "{id}: received from {helo}[{client_ip}]{}{} sender=<{sender}> nrcpt={} \
                     size={size}{}{}{}",
                    auth_user.map(|u| format!(" user={u}")).unwrap_or_default(),
                    tls.map(|t| format!(" tls={}", t.split(' ').next().unwrap_or(t)))
                        .unwrap_or_default(),
                    recipients.len(),
                    match bare_line_ends {
                        0 => String::new(),
                        n => format!(" bare-line-ends={n}"),
                    },
                    tag.map(|t| format!(" tag=\"{t}\"")).unwrap_or_default(),
                    signatures
                        .iter()
                        .map(|s| format!(" dkim=({s})"))
                        .collect::<String>(),
                );
                m.message_received(size);
            }
            Event::Rejected { refused, .. } => m.message_rejected(refused.reason),
            Event::Delivered {
                id,
                recipient,
                relay,
                reply,
                tls,
                received,
                ..
            } => {
                log::info!(
                    "{id}: delivered to=<{recipient}> relay={relay}{} reply=\"{reply}\"",
                    if tls { " tls" } else { "" }
                );
                m.recipient_delivered();
                m.observe_delivery_latency(since_s(received));
            }
            Event::RecipientDeferred {
                id,
                recipient,
                reason,
            } => {
                log::info!(
                    "{id}: deferred to=<{recipient}> category={} reason=\"{reason}\"",
                    category.label()
                );
                m.recipient_deferred(category);
            }
            Event::RecipientFailed {
                id,
                recipient,
                status,
                reason,
            } => {
                log::info!(
                    "{id}: failed to=<{recipient}> status={status} category={} reason=\"{reason}\"",
                    category.label()
                );
            }
            Event::Deferred {
                id,
                reason,
                attempt,
                delay,
                ..
            } => {
                log::info!(
                    "{id}: deferred, attempt {attempt} failed, next try in {}: {reason}",
                    human(delay)
                );
            }
            Event::Bounced { .. } => m.recipient_bounced(category),
            Event::Expired { id, reason, .. } => {
                log::info!("{id}: expired: {reason}");
                m.message_expired();
            }
            Event::Deleted { id, .. } => log::info!("{id}: deleted by the operator"),
            Event::Suppressed {
                id,
                recipient,
                reason,
                ..
            } => {
                log::info!("{id}: suppressed to=<{recipient}> reason={reason} (not sent)");
                m.recipient_suppressed();
            }
            Event::Engaged {
                kind,
                id,
                recipient,
                client_ip,
                proxy,
                ..
            } => {
                log::info!(
                    "{id}: {} by <{recipient}> from {}{}",
                    kind.as_str(),
                    client_ip.unwrap_or("?"),
                    if proxy { " (image proxy)" } else { "" }
                );
                m.tracking_hit(kind);
            }
        }
    }
}

impl Event<'_> {
    /// The tag of the message the event is about, if it has one.
    pub fn tag(&self) -> Option<&str> {
        match *self {
            Event::Received { tag, .. }
            | Event::Delivered { tag, .. }
            | Event::Deferred { tag, .. }
            | Event::Bounced { tag, .. }
            | Event::Expired { tag, .. }
            | Event::Deleted { tag, .. }
            | Event::Suppressed { tag, .. } => tag,
            Event::Rejected { .. }
            | Event::RecipientDeferred { .. }
            | Event::RecipientFailed { .. }
            | Event::Engaged { .. } => None,
        }
    }

    /// Why a recipient bounced or was deferred (`category.rs`); `None` for other events.
    pub fn category(&self) -> Option<Category> {
        match *self {
            Event::RecipientDeferred { reason, .. } | Event::Deferred { reason, .. } => {
                Some(categorize(None, reason))
            }
            Event::RecipientFailed { status, reason, .. } => Some(categorize(Some(status), reason)),
            Event::Bounced { status, reason, .. } => {
                Some(categorize(Some(status), reason.unwrap_or("")))
            }
            _ => None,
        }
    }

    /// The JSON event: its name and fields; `None` for steps that are only logged and
    /// counted (one recipient's result inside a round).
    pub fn record(&self) -> Option<(&'static str, Vec<(&'static str, V<'_>)>)> {
        Some(match *self {
            Event::Received {
                id,
                client_ip,
                auth_user,
                tls,
                sender,
                recipients,
                size,
                message_id,
                signatures,
                ..
            } => (
                "received",
                vec![
                    ("id", V::Str(id)),
                    ("client_ip", V::Str(client_ip)),
                    ("auth_user", V::OptStr(auth_user)),
                    ("tls", V::Bool(tls.is_some())),
                    ("sender", V::Str(sender)),
                    ("recipients", V::List(recipients)),
                    ("size", V::Num(size)),
                    ("message_id", V::OptStr(message_id)),
                    ("dkim", V::List(signatures)),
                ],
            ),
            Event::Rejected {
                client_ip,
                auth_user,
                refused,
                reply,
            } => (
                "rejected",
                vec![
                    ("client_ip", V::Str(client_ip)),
                    ("auth_user", V::OptStr(auth_user)),
                    ("reason", V::Str(refused.reason.label())),
                    ("command", V::Str(&refused.command)),
                    ("argument", V::OptStr(refused.argument.as_deref())),
                    ("reply", V::Text(reply.summary())),
                ],
            ),
            Event::Delivered {
                id,
                recipient,
                relay,
                reply,
                tls,
                received,
                ..
            } => (
                "delivered",
                vec![
                    ("id", V::Str(id)),
                    ("recipient", V::Str(recipient)),
                    ("relay", V::Str(relay)),
                    ("reply", V::Str(reply)),
                    ("tls", V::Bool(tls)),
                    ("delay_s", V::Float(since_s(received))),
                ],
            ),
            Event::RecipientDeferred { .. } | Event::RecipientFailed { .. } => return None,
            Event::Deferred {
                id,
                recipients,
                reason,
                attempt,
                next_try,
                ..
            } => (
                "deferred",
                vec![
                    ("id", V::Str(id)),
                    ("recipients", V::List(recipients)),
                    ("reason", V::Str(reason)),
                    ("attempt", V::Num(attempt as u64)),
                    (
                        "next_try",
                        V::Text(rfc3339(UNIX_EPOCH + Duration::from_millis(next_try))),
                    ),
                ],
            ),
            Event::Bounced {
                id,
                recipient,
                status,
                reason,
                relay,
                dsn_id,
                ..
            } => (
                "bounced",
                vec![
                    ("id", V::Str(id)),
                    ("recipient", V::Str(recipient)),
                    ("status", V::Str(status)),
                    ("reason", V::OptStr(reason)),
                    ("relay", V::OptStr(relay)),
                    ("dsn_id", V::OptStr(dsn_id)),
                ],
            ),
            Event::Expired {
                id,
                recipients,
                age_s,
                ..
            } => (
                "expired",
                vec![
                    ("id", V::Str(id)),
                    ("recipients", V::List(recipients)),
                    ("age_s", V::Num(age_s)),
                ],
            ),
            Event::Deleted { id, recipients, .. } => (
                "deleted",
                vec![("id", V::Str(id)), ("recipients", V::List(recipients))],
            ),
            Event::Suppressed {
                id,
                recipient,
                reason,
                ..
            } => (
                "suppressed",
                vec![
                    ("id", V::Str(id)),
                    ("recipient", V::Str(recipient)),
                    ("reason", V::Str(reason)),
                ],
            ),
            Event::Engaged {
                kind,
                id,
                recipient,
                url,
                user_agent,
                client_ip,
                proxy,
            } => {
                let mut fields = vec![("id", V::Str(id)), ("recipient", V::Str(recipient))];
                if kind == Kind::Click {
                    fields.push(("url", V::OptStr(url)));
                }
                fields.push(("user_agent", V::OptStr(user_agent)));
                fields.push(("client_ip", V::OptStr(client_ip)));
                if kind == Kind::Open {
                    fields.push(("proxy", V::Bool(proxy)));
                }
                (kind.as_str(), fields)
            }
        })
    }
}

/// Seconds since `received` (unix ms).
fn since_s(received: u64) -> f64 {
    now_ms().saturating_sub(received) as f64 / 1000.0
}
