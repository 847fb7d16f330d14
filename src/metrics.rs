//! Prometheus metrics: a fixed set of counters, gauges and one histogram kept in atomics
//! ([`Metrics`], one instance shared as `Arc<Metrics>`), rendered by hand in the text
//! exposition format 0.0.4 ([`Metrics::render`]) and served at `/metrics` by the small HTTP
//! endpoint of `crate::http` ([`serve`]). No crate: the format is a few lines of text
//! (`prometheus-client` would bring its own registry and encoder for what is here a fixed set
//! of atomics and one function).
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
//! | `mxrelay_connections_refused_total` | counter | | SMTP connections refused over the connection cap |
//! | `mxrelay_in_flow_delays_total` | counter | | MAIL commands held back because delivery lagged (`--in-flow-delay`) |
//! | `mxrelay_messages_received_total` | counter | | messages accepted (answered 250 at end of data) |
//! | `mxrelay_received_bytes_total` | counter | | bytes of the messages accepted |
//! | `mxrelay_messages_rejected_total` | counter | `reason` | messages or transactions refused; every reason is always present |
//! | `mxrelay_recipients_delivered_total` | counter | | recipients delivered to the next hop |
//! | `mxrelay_recipients_deferred_total` | counter | | recipient delivery attempts failed temporarily |
//! | `mxrelay_recipients_bounced_total` | counter | | recipients failed permanently or expired |
//! | `mxrelay_messages_expired_total` | counter | | messages given up on after the maximum queue time |
//! | `mxrelay_delivered_bytes_total` | counter | | bytes sent to next hops in successful deliveries |
//! | `mxrelay_auth_failures_total` | counter | | failed SMTP AUTH attempts |
//! | `mxrelay_events_dropped_total` | counter | | event log records dropped because the writer fell behind |
//! | `mxrelay_delivery_latency_seconds` | histogram | `le` | seconds from reception to delivery, per recipient |
//! | `mxrelay_open_connections` | gauge | | SMTP connections open now |
//! | `mxrelay_busy_workers` | gauge | | delivery workers busy now |
//! | `mxrelay_queue_messages` | gauge | | messages in the queue (set by the scheduler) |
//! | `mxrelay_queue_oldest_message_age_seconds` | gauge | | age of the oldest queued message (set by the scheduler) |
//! | `mxrelay_build_info` | gauge | `version` | always 1; the version is in the label |
//!
//! Values of `reason`: `relay_denied`, `size`, `hops`, `auth`, `syntax`, `too_many_errors`,
//! `other` (see [`Refusal`]). Histogram buckets (`le`, seconds): see [`LATENCY_BUCKETS`],
//! plus `+Inf`.
//!
//! # HTTP endpoint
//!
//! `GET /metrics` (also `HEAD`; a query string is ignored) answers 200 with
//! `Content-Type: text/plain; version=0.0.4; charset=utf-8`. Any other path is 404, another
//! method on `/metrics` is 405; the limits and the other answers are `crate::http`'s.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::http::{self, Request, Response};
use crate::smtp::session::Refusal;

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
    messages_expired: AtomicU64,
    delivered_bytes: AtomicU64,
    auth_failures: AtomicU64,
    events_dropped: AtomicU64,
    latency: Histogram,
    // Up/down gauges are signed: an unbalanced close shows as a negative value instead of
    // wrapping around to 2^64 - 1.
    open_connections: AtomicI64,
    busy_workers: AtomicI64,
    queue_messages: AtomicU64,
    queue_oldest_age: AtomicU64,
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
            messages_expired: AtomicU64::new(0),
            delivered_bytes: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            latency: Histogram::new(),
            open_connections: AtomicI64::new(0),
            busy_workers: AtomicI64::new(0),
            queue_messages: AtomicU64::new(0),
            queue_oldest_age: AtomicU64::new(0),
        }
    }

    // Counters.

    pub fn connection_accepted(&self) {
        bump(&self.connections, 1);
    }

    /// A connection refused over the connection cap.
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

    /// One recipient's attempt failed temporarily.
    pub fn recipient_deferred(&self) {
        bump(&self.recipients_deferred, 1);
    }

    /// One recipient failed permanently or expired.
    pub fn recipient_bounced(&self) {
        bump(&self.recipients_bounced, 1);
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

    /// Queue size and the age of its oldest message, as last seen by the scheduler.
    pub fn set_queue(&self, messages: u64, oldest_age_seconds: u64) {
        self.queue_messages.store(messages, Ordering::Relaxed);
        self.queue_oldest_age
            .store(oldest_age_seconds, Ordering::Relaxed);
    }

    /// Everything in the Prometheus text exposition format 0.0.4: `# HELP` and `# TYPE` per
    /// family, names prefixed `mxrelay_`, counters ending in `_total`, label values escaped,
    /// the histogram as cumulative `_bucket{le=".."}` plus `_sum` and `_count`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        counters(
            &mut out,
            &[
                (
                    "mxrelay_connections_total",
                    "SMTP connections accepted.",
                    &self.connections,
                ),
                (
                    "mxrelay_connections_refused_total",
                    "SMTP connections refused because the connection cap was reached.",
                    &self.connections_refused,
                ),
                (
                    "mxrelay_in_flow_delays_total",
                    "MAIL commands held back because delivery lagged behind intake.",
                    &self.in_flow_delays,
                ),
                (
                    "mxrelay_messages_received_total",
                    "Messages accepted for relaying.",
                    &self.messages_received,
                ),
                (
                    "mxrelay_received_bytes_total",
                    "Bytes of the messages accepted for relaying.",
                    &self.received_bytes,
                ),
            ],
        );

        let name = "mxrelay_messages_rejected_total";
        family(
            &mut out,
            name,
            "Messages or transactions refused, by reason.",
            "counter",
        );
        for reason in Refusal::ALL {
            let value = load(&self.rejected[reason as usize]);
            sample(&mut out, name, &[("reason", reason.label())], value);
        }

        counters(
            &mut out,
            &[
                (
                    "mxrelay_recipients_delivered_total",
                    "Recipients delivered to the next hop.",
                    &self.recipients_delivered,
                ),
                (
                    "mxrelay_recipients_deferred_total",
                    "Recipient delivery attempts that failed temporarily.",
                    &self.recipients_deferred,
                ),
                (
                    "mxrelay_recipients_bounced_total",
                    "Recipients that failed permanently or expired.",
                    &self.recipients_bounced,
                ),
                (
                    "mxrelay_messages_expired_total",
                    "Messages given up on after the maximum queue time.",
                    &self.messages_expired,
                ),
                (
                    "mxrelay_delivered_bytes_total",
                    "Bytes sent to next hops in successful deliveries.",
                    &self.delivered_bytes,
                ),
                (
                    "mxrelay_auth_failures_total",
                    "Failed SMTP AUTH attempts.",
                    &self.auth_failures,
                ),
                (
                    "mxrelay_events_dropped_total",
                    "Event log records dropped because the writer fell behind.",
                    &self.events_dropped,
                ),
            ],
        );

        let name = "mxrelay_delivery_latency_seconds";
        family(
            &mut out,
            name,
            "Seconds from reception to delivery, per recipient.",
            "histogram",
        );
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, count) in self.latency.buckets.iter().enumerate() {
            cumulative += load(count);
            let le = match LATENCY_BUCKETS.get(i) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_string(),
            };
            sample(&mut out, &bucket, &[("le", &le)], cumulative);
        }
        let sum = load(&self.latency.sum_micros) as f64 / 1e6;
        sample(&mut out, &format!("{name}_sum"), &[], sum);
        sample(&mut out, &format!("{name}_count"), &[], cumulative);

        let load_i = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let name = "mxrelay_open_connections";
        family(&mut out, name, "SMTP connections open now.", "gauge");
        sample(&mut out, name, &[], load_i(&self.open_connections));
        let name = "mxrelay_busy_workers";
        family(&mut out, name, "Delivery workers busy now.", "gauge");
        sample(&mut out, name, &[], load_i(&self.busy_workers));
        let name = "mxrelay_queue_messages";
        family(&mut out, name, "Messages in the queue.", "gauge");
        sample(&mut out, name, &[], load(&self.queue_messages));
        let name = "mxrelay_queue_oldest_message_age_seconds";
        family(
            &mut out,
            name,
            "Age in seconds of the oldest message in the queue.",
            "gauge",
        );
        sample(&mut out, name, &[], load(&self.queue_oldest_age));

        let name = "mxrelay_build_info";
        family(
            &mut out,
            name,
            "Always 1; the mxrelay version is in the label.",
            "gauge",
        );
        sample(
            &mut out,
            name,
            &[("version", env!("CARGO_PKG_VERSION"))],
            1u64,
        );
        out
    }
}

/// `# HELP` and `# TYPE` lines of a family.
/// Plain counters, each with its help line: (name, help, value).
fn counters(out: &mut String, table: &[(&str, &str, &AtomicU64)]) {
    for &(name, help, value) in table {
        family(out, name, help, "counter");
        sample(out, name, &[], value.load(Ordering::Relaxed));
    }
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape_help(help, out);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// One sample line: `name{label="value",...} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(value, out);
            out.push('"');
        }
        out.push('}');
    }
    // Writing into a String cannot fail.
    let _ = writeln!(out, " {value}");
}

/// Label values: backslash, double quote and line feed are escaped.
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: backslash and line feed are escaped (a quote is not special there).
fn escape_help(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
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
    let handler = move |r: &Request| route(r, &metrics);
    let local = http::serve(addr, "metrics", Arc::new(handler), stop)?;
    log::info!("serving metrics on http://{local}/metrics");
    Ok(local)
}

pub use http::shutdown;

fn route(r: &Request, metrics: &Metrics) -> Response {
    match (r.path, r.method) {
        ("/metrics", "GET" | "HEAD") => Response::ok(EXPOSITION, metrics.render().into_bytes()),
        ("/metrics", _) => Response::method_not_allowed("GET, HEAD"),
        _ => Response::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    }

    /// Strips a histogram suffix to get the family a sample belongs to.
    fn family_of(sample_name: &str) -> &str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample_name.strip_suffix(suffix)
                && base == "mxrelay_delivery_latency_seconds"
            {
                return base;
            }
        }
        sample_name
    }

    #[test]
    fn routes() {
        let m = Metrics::new();
        let status = |method, path| {
            let r = Request {
                method,
                path,
                query: None,
            };
            route(&r, &m).status
        };
        assert_eq!(status("GET", "/metrics"), "200 OK");
        assert_eq!(status("HEAD", "/metrics"), "200 OK");
        assert_eq!(status("GET", "/"), "404 Not Found");
        assert_eq!(status("GET", "/metrics/x"), "404 Not Found");
        assert_eq!(status("POST", "/other"), "404 Not Found");
        assert_eq!(status("POST", "/metrics"), "405 Method Not Allowed");
        assert_eq!(status("get", "/metrics"), "405 Method Not Allowed");
    }

    #[test]
    fn every_family_has_help_then_type_and_contiguous_samples() {
        let m = Metrics::new();
        m.message_rejected(Refusal::Size);
        let text = m.render();
        assert!(text.ends_with('\n'));
        let mut declared: Vec<(String, String)> = Vec::new();
        let mut pending_help: Option<String> = None;
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(!help.is_empty(), "{line}");
                pending_help = Some(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(
                    pending_help.take().as_deref(),
                    Some(name),
                    "HELP before {line}"
                );
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    !declared.iter().any(|(n, _)| n == name),
                    "{name} declared twice"
                );
                assert!(name.starts_with("mxrelay_"), "{line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{line}");
                } else {
                    assert!(!name.ends_with("_total"), "{line}");
                }
                declared.push((name.to_string(), kind.to_string()));
                current = Some(name.to_string());
            } else {
                assert!(!line.starts_with('#'), "{line}");
                let name_end = line.find(['{', ' ']).unwrap();
                let name = &line[..name_end];
                assert_eq!(
                    Some(family_of(name)),
                    current.as_deref(),
                    "sample outside its family: {line}"
                );
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        let names: Vec<&str> = declared.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "mxrelay_connections_total",
                "mxrelay_connections_refused_total",
                "mxrelay_in_flow_delays_total",
                "mxrelay_messages_received_total",
                "mxrelay_received_bytes_total",
                "mxrelay_messages_rejected_total",
                "mxrelay_recipients_delivered_total",
                "mxrelay_recipients_deferred_total",
                "mxrelay_recipients_bounced_total",
                "mxrelay_messages_expired_total",
                "mxrelay_delivered_bytes_total",
                "mxrelay_auth_failures_total",
                "mxrelay_events_dropped_total",
                "mxrelay_delivery_latency_seconds",
                "mxrelay_open_connections",
                "mxrelay_busy_workers",
                "mxrelay_queue_messages",
                "mxrelay_queue_oldest_message_age_seconds",
                "mxrelay_build_info",
            ]
        );
        assert!(text.contains(
            "# HELP mxrelay_connections_total SMTP connections accepted.\n\
             # TYPE mxrelay_connections_total counter\n\
             mxrelay_connections_total 0\n"
        ));
    }

    #[test]
    fn counters_and_gauges_render_their_values() {
        let m = Metrics::new();
        m.connection_accepted();
        m.connection_accepted();
        m.connection_refused();
        m.in_flow_delayed();
        m.message_received(100);
        m.message_received(23);
        m.message_rejected(Refusal::RelayDenied);
        m.message_rejected(Refusal::TooManyErrors);
        m.message_rejected(Refusal::TooManyErrors);
        m.recipient_delivered();
        m.recipient_deferred();
        m.recipient_deferred();
        m.recipient_bounced();
        m.message_expired();
        m.bytes_delivered(4096);
        m.auth_failed();
        m.event_dropped();
        m.session_opened();
        m.session_opened();
        m.session_closed();
        m.worker_busy();
        m.worker_busy();
        m.worker_busy();
        m.worker_idle();
        m.set_queue(42, 3600);
        let t = m.render();
        for (series, want) in [
            ("mxrelay_connections_total", "2"),
            ("mxrelay_connections_refused_total", "1"),
            ("mxrelay_in_flow_delays_total", "1"),
            ("mxrelay_messages_received_total", "2"),
            ("mxrelay_received_bytes_total", "123"),
            (
                "mxrelay_messages_rejected_total{reason=\"relay_denied\"}",
                "1",
            ),
            (
                "mxrelay_messages_rejected_total{reason=\"too_many_errors\"}",
                "2",
            ),
            ("mxrelay_recipients_delivered_total", "1"),
            ("mxrelay_recipients_deferred_total", "2"),
            ("mxrelay_recipients_bounced_total", "1"),
            ("mxrelay_messages_expired_total", "1"),
            ("mxrelay_delivered_bytes_total", "4096"),
            ("mxrelay_auth_failures_total", "1"),
            ("mxrelay_events_dropped_total", "1"),
            ("mxrelay_open_connections", "1"),
            ("mxrelay_busy_workers", "2"),
            ("mxrelay_queue_messages", "42"),
            ("mxrelay_queue_oldest_message_age_seconds", "3600"),
        ] {
            assert_eq!(value_of(&t, series), want, "{series}");
        }
        // Every reason is present, also at zero, in a fixed order.
        let reasons: Vec<&str> = t
            .lines()
            .filter_map(|l| l.strip_prefix("mxrelay_messages_rejected_total{reason=\""))
            .map(|l| l.split('"').next().unwrap())
            .collect();
        assert_eq!(
            reasons,
            [
                "relay_denied",
                "size",
                "hops",
                "auth",
                "syntax",
                "too_many_errors",
                "other"
            ]
        );
        assert_eq!(
            value_of(&t, "mxrelay_messages_rejected_total{reason=\"hops\"}"),
            "0"
        );
        let build = format!(
            "mxrelay_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value_of(&t, &build), "1");
    }

    #[test]
    fn an_unbalanced_gauge_goes_negative_rather_than_wrapping() {
        let m = Metrics::new();
        m.session_closed();
        assert_eq!(value_of(&m.render(), "mxrelay_open_connections"), "-1");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_inf_equals_count() {
        let m = Metrics::new();
        for s in [0.05, 0.1, 0.7, 2.0, 100_000.0, f64::NAN, -3.0] {
            m.observe_delivery_latency(s);
        }
        let t = m.render();
        let buckets: Vec<(String, u64)> = t
            .lines()
            .filter_map(|l| l.strip_prefix("mxrelay_delivery_latency_seconds_bucket{le=\""))
            .map(|l| {
                let (le, rest) = l.split_once("\"} ").unwrap();
                (le.to_string(), rest.parse().unwrap())
            })
            .collect();
        let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
        assert_eq!(
            les,
            [
                "0.1", "0.5", "1", "5", "30", "60", "300", "1800", "3600", "21600", "86400", "+Inf"
            ]
        );
        // 0.05, 0.1 (a bound is inclusive), NaN and -3 (both as 0) are <= 0.1.
        let counts: Vec<u64> = buckets.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, [4, 4, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7]);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(value_of(&t, "mxrelay_delivery_latency_seconds_count"), "7");
        assert_eq!(
            value_of(&t, "mxrelay_delivery_latency_seconds_sum"),
            "100002.85"
        );
        // The family is declared once, as a histogram, before its samples.
        assert!(t.contains(
            "# TYPE mxrelay_delivery_latency_seconds histogram\n\
             mxrelay_delivery_latency_seconds_bucket{le=\"0.1\"} 4\n"
        ));
        assert!(t.contains(
            "mxrelay_delivery_latency_seconds_bucket{le=\"+Inf\"} 7\n\
             mxrelay_delivery_latency_seconds_sum 100002.85\n\
             mxrelay_delivery_latency_seconds_count 7\n"
        ));
    }

    #[test]
    fn an_empty_histogram_renders_zeros() {
        let t = Metrics::new().render();
        assert_eq!(
            value_of(&t, "mxrelay_delivery_latency_seconds_bucket{le=\"+Inf\"}"),
            "0"
        );
        assert_eq!(value_of(&t, "mxrelay_delivery_latency_seconds_sum"), "0");
        assert_eq!(value_of(&t, "mxrelay_delivery_latency_seconds_count"), "0");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = String::new();
        sample(
            &mut out,
            "x",
            &[("a", "back\\slash \"quoted\"\nnext"), ("b", "plain")],
            1u64,
        );
        assert_eq!(
            out,
            "x{a=\"back\\\\slash \\\"quoted\\\"\\nnext\",b=\"plain\"} 1\n"
        );
        let mut out = String::new();
        family(&mut out, "x", "a \\ b \"c\"\nd", "gauge");
        assert_eq!(out, "# HELP x a \\\\ b \"c\"\\nd\n# TYPE x gauge\n");
    }
}
