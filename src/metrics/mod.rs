//! Prometheus metrics: a fixed set of counters, gauges and one histogram kept in atomics
//! ([`Metrics`], one instance shared as `Arc<Metrics>`), rendered in the text exposition format
//! 0.0.4 by `render` ([`Metrics::render`]) and served at `/metrics` by the small HTTP endpoint
//! of `crate::http` ([`serve`]).
//!
//! Updating a counter or gauge is a single `Relaxed` atomic operation, never a lock; an
//! observation into the histogram is two (its bucket and its sum). A scrape reads each value
//! once, so values in one scrape may be a few updates apart from each other, which Prometheus
//! tolerates; a histogram's `+Inf` bucket and `_count` always agree.
//!
//! # Metric names (stable)
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `mxrelay_connections_total` | counter | | SMTP connections accepted |
//! | `mxrelay_connections_refused_total` | counter | | SMTP connections refused over a connection cap (`--max-connections`, `--max-connections-per-ip`), or from outside `--proxy-from` on a `+proxy` listener |
//! | `mxrelay_in_flow_delays_total` | counter | | MAIL commands held back because delivery lagged (`--in-flow-delay`) |
//! | `mxrelay_messages_received_total` | counter | | messages accepted (answered 250 at end of data) |
//! | `mxrelay_received_bytes_total` | counter | | bytes of the messages accepted |
//! | `mxrelay_messages_rejected_total` | counter | `reason` | messages or transactions refused; every reason is always present |
//! | `mxrelay_recipients_delivered_total` | counter | | recipients delivered to the next hop |
//! | `mxrelay_recipients_deferred_total` | counter | | recipient delivery attempts failed temporarily |
//! | `mxrelay_recipients_bounced_total` | counter | | recipients failed permanently or expired |
//! | `mxrelay_recipients_suppressed_total` | counter | | recipients not sent to because they are on the suppression list |
//! | `mxrelay_recipients_deferred_by_category_total` | counter | `category` | the deferred attempts by why (sums to the unlabelled total) |
//! | `mxrelay_recipients_bounced_by_category_total` | counter | `category` | the bounced recipients by why (sums to the unlabelled total) |
//! | `mxrelay_messages_expired_total` | counter | | messages given up on after the maximum queue time |
//! | `mxrelay_delivered_bytes_total` | counter | | bytes sent to next hops in successful deliveries |
//! | `mxrelay_auth_failures_total` | counter | | failed SMTP AUTH attempts |
//! | `mxrelay_events_dropped_total` | counter | | event log records dropped because the writer fell behind |
//! | `mxrelay_webhook_delivered_total` | counter | | events a webhook receiver accepted (2xx) |
//! | `mxrelay_webhook_failed_total` | counter | | webhook POSTs that failed (no connection, timeout, not 2xx); retried |
//! | `mxrelay_webhook_dropped_total` | counter | `reason` | events given up on: `max_age` (older than `--webhook-max-age`), `backlog_full` (over `--webhook-max-backlog`) |
//! | `mxrelay_tracking_hits_total` | counter | `kind` | tracked links followed: `click`, `open` (the pixel fetched), `unsubscribe` (one-click POSTs done) |
//! | `mxrelay_suppression_store_pushed_total` | counter | | suppression list changes made here and pushed to the shared store (`--suppression-store`) |
//! | `mxrelay_suppression_store_pulled_total` | counter | | suppression list changes taken from the shared store |
//! | `mxrelay_suppression_store_errors_total` | counter | | rounds with the shared store that failed (unreachable, timeout, error); retried |
//! | `mxrelay_delivery_latency_seconds` | histogram | `le` | seconds from reception to delivery, per recipient |
//! | `mxrelay_open_connections` | gauge | | SMTP connections open now |
//! | `mxrelay_busy_workers` | gauge | | delivery workers busy now |
//! | `mxrelay_queue_messages` | gauge | | messages in the queue (set by the scheduler) |
//! | `mxrelay_queue_oldest_message_age_seconds` | gauge | | age of the oldest queued message (set by the scheduler) |
//! | `mxrelay_spool_free_bytes` | gauge | | bytes free on the spool's filesystem (set by the scheduler; see `--min-free-space`) |
//! | `mxrelay_webhook_backlog_events` | gauge | | events waiting on disk for webhook receivers (all webhooks) |
//! | `mxrelay_suppression_store_pending` | gauge | | suppression list changes made here that the shared store does not have yet |
//! | `mxrelay_build_info` | gauge | `version` | always 1; the version is in the label |
//!
//! Values of `reason`: `relay_denied`, `size`, `hops`, `auth`, `syntax`, `too_many_errors`,
//! the limits named after their flags (`max_connections_per_ip`, a connection;
//! `max_messages_per_connection`, `rate_limit_ip`, `rate_limit_user`, a MAIL;
//! `rate_limit_rcpt_user`, a RCPT), `storage` (the spool short of space, or a write that
//! failed) and `other` (see [`Refusal`]). Values of `category`: those of `crate::events::category`, every
//! one always present. Histogram buckets (`le`, seconds): see [`LATENCY_BUCKETS`],
//! plus `+Inf`.
//!
//! # HTTP endpoint
//!
//! `GET /metrics` (also `HEAD`; a query string is ignored) answers 200 with
//! `Content-Type: text/plain; version=0.0.4; charset=utf-8`. Any other path is 404, another
//! method on `/metrics` is 405; the limits and the other answers are `crate::http`'s.

mod render;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::events::category::Category;
use crate::http::{self, Request, Response};
pub use crate::smtp::session::Refusal;
use crate::tracking::Kind;

/// Upper bounds (seconds, inclusive) of the delivery latency histogram buckets; `+Inf` follows.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// All counters and gauges; one instance shared by everything (`Arc<Metrics>`). Updating is
/// one atomic operation (`Relaxed`), never a lock.
pub struct Metrics {
    connections: AtomicU64,
    connections_refused: AtomicU64,
    in_flow_delays: AtomicU64,
    messages_received: AtomicU64,
    received_bytes: AtomicU64,
    rejected: [AtomicU64; Refusal::ALL.len()],
    recipients_delivered: AtomicU64,
    recipients_deferred: AtomicU64,
    recipients_bounced: AtomicU64,
    recipients_suppressed: AtomicU64,
    deferred_by_category: [AtomicU64; Category::ALL.len()],
    bounced_by_category: [AtomicU64; Category::ALL.len()],
    messages_expired: AtomicU64,
    delivered_bytes: AtomicU64,
    auth_failures: AtomicU64,
    events_dropped: AtomicU64,
    webhook_delivered: AtomicU64,
    webhook_failed: AtomicU64,
    webhook_dropped: [AtomicU64; WebhookDrop::ALL.len()],
    webhook_backlog: AtomicI64,
    tracking_hits: [AtomicU64; Kind::ALL.len()],
    suppression_store_pushed: AtomicU64,
    suppression_store_pulled: AtomicU64,
    suppression_store_errors: AtomicU64,
    suppression_store_pending: AtomicU64,
    latency: Histogram,
    // Up/down gauges are signed: an unbalanced close shows as a negative value instead of
    // wrapping around to 2^64 - 1.
    open_connections: AtomicI64,
    busy_workers: AtomicI64,
    queue_messages: AtomicU64,
    queue_oldest_age: AtomicU64,
    spool_free: AtomicU64,
}

/// Observations above this many seconds are summed as this much (keeps the integer sum from
/// overflowing on an absurd input; about 31 years).
const MAX_OBSERVATION: f64 = 1e9;

/// Fixed buckets, each counted on its own (not cumulatively) so an observation touches one
/// bucket; `render` accumulates. The sum is kept in whole microseconds so adding is one
/// `fetch_add`.
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, seconds: f64) {
        // NaN and negative durations (a clock stepped back) count as 0.
        let seconds = if seconds.is_nan() || seconds < 0.0 {
            0.0
        } else {
            seconds
        };
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = (seconds.min(MAX_OBSERVATION) * 1e6).round() as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            connections: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            in_flow_delays: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            rejected: [const { AtomicU64::new(0) }; Refusal::ALL.len()],
            recipients_delivered: AtomicU64::new(0),
            recipients_deferred: AtomicU64::new(0),
            recipients_bounced: AtomicU64::new(0),
            recipients_suppressed: AtomicU64::new(0),
            deferred_by_category: [const { AtomicU64::new(0) }; Category::ALL.len()],
            bounced_by_category: [const { AtomicU64::new(0) }; Category::ALL.len()],
            messages_expired: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            webhook_delivered: AtomicU64::new(0),
            webhook_failed: AtomicU64::new(0),
            webhook_dropped: [const { AtomicU64::new(0) }; WebhookDrop::ALL.len()],
            webhook_backlog: AtomicI64::new(0),
            tracking_hits: [const { AtomicU64::new(0) }; Kind::ALL.len()],
            suppression_store_pushed: AtomicU64::new(0),
            suppression_store_pulled: AtomicU64::new(0),
            suppression_store_errors: AtomicU64::new(0),
            suppression_store_pending: AtomicU64::new(0),
            latency: Histogram::new(),
            open_connections: AtomicI64::new(0),
            busy_workers: AtomicI64::new(0),
            queue_messages: AtomicU64::new(0),
            queue_oldest_age: AtomicU64::new(0),
            spool_free: AtomicU64::new(0),
        }
    }

    // Counters.

    pub fn connection_accepted(&self) {
        bump(&self.connections, 1);
    }

    /// A connection refused over a connection cap (total or per address).
    pub fn connection_refused(&self) {
        bump(&self.connections_refused, 1);
    }

    /// A MAIL held back by in-flow control.
    pub fn in_flow_delayed(&self) {
        bump(&self.in_flow_delays, 1);
    }

    /// A message accepted (250 at end of data), `bytes` long.
    pub fn message_received(&self, bytes: u64) {
        bump(&self.messages_received, 1);
        bump(&self.received_bytes, bytes);
    }

    pub fn message_rejected(&self, reason: Refusal) {
        bump(&self.rejected[reason as usize], 1);
    }

    /// One recipient delivered.
    pub fn recipient_delivered(&self) {
        bump(&self.recipients_delivered, 1);
    }

    /// One recipient's attempt failed temporarily, for this reason.
    pub fn recipient_deferred(&self, why: Category) {
        bump(&self.recipients_deferred, 1);
        bump(&self.deferred_by_category[why.index()], 1);
    }

    /// One recipient failed permanently or expired, for this reason.
    pub fn recipient_bounced(&self, why: Category) {
        bump(&self.recipients_bounced, 1);
        bump(&self.bounced_by_category[why.index()], 1);
    }

    /// One recipient not sent to: on the suppression list.
    pub fn recipient_suppressed(&self) {
        bump(&self.recipients_suppressed, 1);
    }

    /// A click, open or unsubscribe on the tracking endpoint.
    pub fn tracking_hit(&self, kind: Kind) {
        bump(&self.tracking_hits[kind as usize], 1);
    }

    pub fn message_expired(&self) {
        bump(&self.messages_expired, 1);
    }

    pub fn bytes_delivered(&self, bytes: u64) {
        bump(&self.delivered_bytes, bytes);
    }

    pub fn auth_failed(&self) {
        bump(&self.auth_failures, 1);
    }

    /// The event log writer fell behind and a record was dropped.
    pub fn event_dropped(&self) {
        bump(&self.events_dropped, 1);
    }

    /// A webhook receiver took `n` events.
    pub fn webhook_delivered(&self, n: u64) {
        bump(&self.webhook_delivered, n);
    }

    /// A webhook POST failed (it is retried).
    pub fn webhook_failed(&self) {
        bump(&self.webhook_failed, 1);
    }

    /// `n` events given up on.
    pub fn webhook_dropped(&self, why: WebhookDrop, n: u64) {
        bump(&self.webhook_dropped[why as usize], n);
    }

    /// Events waiting for webhook receivers: `delta` more (or fewer).
    pub fn webhook_backlog(&self, delta: i64) {
        self.webhook_backlog.fetch_add(delta, Ordering::Relaxed);
    }

    /// `n` suppression list changes pushed to the shared store.
    pub fn suppression_store_pushed(&self, n: u64) {
        bump(&self.suppression_store_pushed, n);
    }

    /// `n` suppression list changes taken from the shared store.
    pub fn suppression_store_pulled(&self, n: u64) {
        bump(&self.suppression_store_pulled, n);
    }

    /// A round with the shared store failed.
    pub fn suppression_store_error(&self) {
        bump(&self.suppression_store_errors, 1);
    }

    /// Seconds from reception to delivery of a recipient, into a fixed-bucket histogram
    /// ([`LATENCY_BUCKETS`] plus `+Inf`). NaN and negative values count as 0.
    pub fn observe_delivery_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    // Gauges.

    /// An SMTP connection opened (pair with [`Metrics::session_closed`]).
    pub fn session_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// A delivery worker started an attempt (pair with [`Metrics::worker_idle`]).
    pub fn worker_busy(&self) {
        self.busy_workers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn worker_idle(&self) {
        self.busy_workers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Suppression list changes the shared store does not have yet.
    pub fn suppression_store_pending(&self, changes: u64) {
        self.suppression_store_pending
            .store(changes, Ordering::Relaxed);
    }

    /// Queue size and the age of its oldest message, as last seen by the scheduler.
    pub fn set_queue(&self, messages: u64, oldest_age_seconds: u64) {
        self.queue_messages.store(messages, Ordering::Relaxed);
        self.queue_oldest_age
            .store(oldest_age_seconds, Ordering::Relaxed);
    }

    /// Bytes free on the spool's filesystem.
    pub fn set_spool_free(&self, bytes: u64) {
        self.spool_free.store(bytes, Ordering::Relaxed);
    }
}

/// Why webhook events were given up on (the `reason` of `mxrelay_webhook_dropped_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookDrop {
    MaxAge,
    BacklogFull,
}

impl WebhookDrop {
    pub const ALL: [WebhookDrop; 2] = [WebhookDrop::MaxAge, WebhookDrop::BacklogFull];

    pub fn label(self) -> &'static str {
        match self {
            WebhookDrop::MaxAge => "max_age",
            WebhookDrop::BacklogFull => "backlog_full",
        }
    }
}

const EXPOSITION: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on `addr` (see `crate::http::serve`); returns the bound address.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> io::Result<SocketAddr> {
    let handler = move |r: &Request| route(r, &metrics).unwrap_or_else(Response::not_found);
    let local = http::serve(addr, "metrics", Arc::new(handler), stop)?;
    log::info!("serving metrics on http://{local}/metrics");
    Ok(local)
}

pub use http::shutdown;

/// The answer for `/metrics`; `None` for other paths (one listener may serve other routes).
pub fn route(r: &Request, metrics: &Metrics) -> Option<Response> {
    match (r.path, r.method) {
        ("/metrics", "GET" | "HEAD") => {
            Some(Response::ok(EXPOSITION, metrics.render().into_bytes()))
        }
        ("/metrics", _) => Some(Response::method_not_allowed("GET, HEAD")),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
