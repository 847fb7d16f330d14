//! The text exposition format 0.0.4, written by hand: [`Metrics::render`] and the few line
//! writers it needs (`# HELP` and `# TYPE`, samples with escaped label values).
//!
//! No crate: `prometheus-client` was weighed (10 more crates, +110 KB release binary, +21% CPU
//! for a clean release build) and writes OpenMetrics text, which would change what scrapers see,
//! for what is here a fixed set of atomics and one function.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Histogram, LATENCY_BUCKETS, Metrics, Refusal, WebhookDrop};
use crate::events::category::Category;
use crate::tracking::Kind;

/// A plain counter: (name, help, value).
type Counter<'a> = (&'static str, &'static str, &'a AtomicU64);

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    /// Everything in the Prometheus text exposition format 0.0.4: `# HELP` and `# TYPE` per
    /// family, names prefixed `mxrelay_`, counters ending in `_total`, label values escaped,
    /// the histogram as cumulative `_bucket{le=".."}` plus `_sum` and `_count`.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        counters(&mut out, &self.intake_counters());
        labelled(
            &mut out,
            ("mxrelay_messages_rejected_total", "reason"),
            "Messages or transactions refused, by reason.",
            Refusal::ALL.map(|r| (r.label(), load(&self.rejected[r as usize]))),
        );
        counters(&mut out, &self.delivery_counters());
        by_category(
            &mut out,
            "mxrelay_recipients_deferred_by_category_total",
            "Recipient delivery attempts that failed temporarily, by why.",
            &self.deferred_by_category,
        );
        by_category(
            &mut out,
            "mxrelay_recipients_bounced_by_category_total",
            "Recipients that failed permanently or expired, by why.",
            &self.bounced_by_category,
        );
        counters(&mut out, &self.webhook_counters());
        labelled(
            &mut out,
            ("mxrelay_webhook_dropped_total", "reason"),
            "Webhook events given up on, by reason.",
            WebhookDrop::ALL.map(|w| (w.label(), load(&self.webhook_dropped[w as usize]))),
        );
        labelled(
            &mut out,
            ("mxrelay_tracking_hits_total", "kind"),
            "Tracked links followed, by kind.",
            Kind::ALL.map(|k| (k.as_str(), load(&self.tracking_hits[k as usize]))),
        );
        counters(&mut out, &self.suppression_store_counters());
        self.latency.render(
            &mut out,
            "mxrelay_delivery_latency_seconds",
            "Seconds from reception to delivery, per recipient.",
        );
        self.gauges(&mut out);
        let name = "mxrelay_build_info";
        let help = "Always 1; the mxrelay version is in the label.";
        family(&mut out, name, help, "gauge");
        let version = env!("CARGO_PKG_VERSION");
        sample(&mut out, name, &[("version", version)], 1u64);
        out
    }

    /// The counters of what clients did, in the order they are rendered.
    fn intake_counters(&self) -> [Counter<'_>; 5] {
        [
            (
                "mxrelay_connections_total",
                "SMTP connections accepted.",
                &self.connections,
            ),
            (
                "mxrelay_connections_refused_total",
                "SMTP connections refused: a connection cap (total or per address) was reached, or a +proxy listener's peer is not in --proxy-from.",
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
        ]
    }

    /// The counters of delivery and the rest, in the order they are rendered.
    fn delivery_counters(&self) -> [Counter<'_>; 8] {
        [
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
                "mxrelay_recipients_suppressed_total",
                "Recipients not sent to because they are on the suppression list.",
                &self.recipients_suppressed,
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
        ]
    }

    fn webhook_counters(&self) -> [Counter<'_>; 2] {
        [
            (
                "mxrelay_webhook_delivered_total",
                "Events a webhook receiver accepted.",
                &self.webhook_delivered,
            ),
            (
                "mxrelay_webhook_failed_total",
                "Webhook POSTs that failed and are retried.",
                &self.webhook_failed,
            ),
        ]
    }

    fn suppression_store_counters(&self) -> [Counter<'_>; 3] {
        [
            (
                "mxrelay_suppression_store_pushed_total",
                "Suppression list changes made here and pushed to the shared store.",
                &self.suppression_store_pushed,
            ),
            (
                "mxrelay_suppression_store_pulled_total",
                "Suppression list changes taken from the shared store.",
                &self.suppression_store_pulled,
            ),
            (
                "mxrelay_suppression_store_errors_total",
                "Rounds with the shared suppression store that failed and are retried.",
                &self.suppression_store_errors,
            ),
        ]
    }

    fn gauges(&self, out: &mut String) {
        let signed = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed);
        let name = "mxrelay_open_connections";
        family(out, name, "SMTP connections open now.", "gauge");
        sample(out, name, &[], signed(&self.open_connections));
        let name = "mxrelay_busy_workers";
        family(out, name, "Delivery workers busy now.", "gauge");
        sample(out, name, &[], signed(&self.busy_workers));
        let name = "mxrelay_queue_messages";
        family(out, name, "Messages in the queue.", "gauge");
        sample(out, name, &[], load(&self.queue_messages));
        let name = "mxrelay_queue_oldest_message_age_seconds";
        let help = "Age in seconds of the oldest message in the queue.";
        family(out, name, help, "gauge");
        sample(out, name, &[], load(&self.queue_oldest_age));
        let name = "mxrelay_spool_free_bytes";
        let help = "Bytes free on the spool's filesystem.";
        family(out, name, help, "gauge");
        sample(out, name, &[], load(&self.spool_free));
        let name = "mxrelay_webhook_backlog_events";
        let help = "Events waiting on disk for webhook receivers.";
        family(out, name, help, "gauge");
        sample(out, name, &[], signed(&self.webhook_backlog));
        let name = "mxrelay_suppression_store_pending";
        let help = "Suppression list changes made here that the shared store does not have yet.";
        family(out, name, help, "gauge");
        sample(out, name, &[], load(&self.suppression_store_pending));
    }
}

impl Histogram {
    /// Cumulative `_bucket{le=".."}` samples, then `_sum` and `_count`.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, help, "histogram");
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += load(count);
            let le = match LATENCY_BUCKETS.get(i) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_string(),
            };
            sample(out, &bucket, &[("le", &le)], cumulative);
        }
        let sum = load(&self.sum_micros) as f64 / 1e6;
        sample(out, &format!("{name}_sum"), &[], sum);
        sample(out, &format!("{name}_count"), &[], cumulative);
    }
}

/// A counter family with one sample per category, every category present.
fn by_category(out: &mut String, name: &str, help: &str, values: &[AtomicU64]) {
    let samples = Category::ALL.map(|c| (c.label(), load(&values[c.index()])));
    labelled(out, (name, "category"), help, samples);
}

/// A counter family with one sample per value of its one label.
fn labelled<const N: usize>(
    out: &mut String,
    (name, label): (&str, &str),
    help: &str,
    samples: [(&str, u64); N],
) {
    family(out, name, help, "counter");
    for (value, n) in samples {
        sample(out, name, &[(label, value)], n);
    }
}

/// Plain counters, each with its help line.
fn counters(out: &mut String, table: &[Counter<'_>]) {
    for &(name, help, value) in table {
        family(out, name, help, "counter");
        sample(out, name, &[], load(value));
    }
}

/// `# HELP` and `# TYPE` lines of a family.
pub(super) fn family(out: &mut String, name: &str, help: &str, kind: &str) {
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
pub(super) fn sample(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    value: impl std::fmt::Display,
) {
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
