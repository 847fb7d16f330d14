//! Tests of the counters, the text format and the `/metrics` route.

use super::render::{family, sample};
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
            ..Request::default()
        };
        route(&r, &m).map_or("404 Not Found", |r| r.status)
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
            "mxrelay_recipients_suppressed_total",
            "mxrelay_messages_expired_total",
            "mxrelay_delivered_bytes_total",
            "mxrelay_auth_failures_total",
            "mxrelay_events_dropped_total",
            "mxrelay_recipients_deferred_by_category_total",
            "mxrelay_recipients_bounced_by_category_total",
            "mxrelay_webhook_delivered_total",
            "mxrelay_webhook_failed_total",
            "mxrelay_webhook_dropped_total",
            "mxrelay_tracking_hits_total",
            "mxrelay_suppression_store_pushed_total",
            "mxrelay_suppression_store_pulled_total",
            "mxrelay_suppression_store_errors_total",
            "mxrelay_delivery_latency_seconds",
            "mxrelay_open_connections",
            "mxrelay_busy_workers",
            "mxrelay_queue_messages",
            "mxrelay_queue_oldest_message_age_seconds",
            "mxrelay_spool_free_bytes",
            "mxrelay_webhook_backlog_events",
            "mxrelay_suppression_store_pending",
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
    m.recipient_suppressed();
    m.recipient_suppressed();
    m.recipient_deferred(Category::Greylisted);
    m.recipient_deferred(Category::Connection);
    m.recipient_bounced(Category::InvalidRecipient);
    m.webhook_delivered(5);
    m.webhook_failed();
    m.webhook_dropped(WebhookDrop::MaxAge, 2);
    m.webhook_backlog(7);
    m.webhook_backlog(-3);
    m.suppression_store_pushed(3);
    m.suppression_store_pulled(4);
    m.suppression_store_error();
    m.suppression_store_pending(6);
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
    m.set_spool_free(1 << 30);
    m.tracking_hit(crate::tracking::Kind::Open);
    m.tracking_hit(crate::tracking::Kind::Open);
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
        ("mxrelay_recipients_suppressed_total", "2"),
        (
            "mxrelay_recipients_deferred_by_category_total{category=\"greylisted\"}",
            "1",
        ),
        (
            "mxrelay_recipients_deferred_by_category_total{category=\"connection\"}",
            "1",
        ),
        (
            "mxrelay_recipients_deferred_by_category_total{category=\"dns\"}",
            "0",
        ),
        (
            "mxrelay_recipients_bounced_by_category_total{category=\"invalid_recipient\"}",
            "1",
        ),
        (
            "mxrelay_recipients_bounced_by_category_total{category=\"other\"}",
            "0",
        ),
        ("mxrelay_webhook_delivered_total", "5"),
        ("mxrelay_webhook_failed_total", "1"),
        ("mxrelay_webhook_dropped_total{reason=\"max_age\"}", "2"),
        (
            "mxrelay_webhook_dropped_total{reason=\"backlog_full\"}",
            "0",
        ),
        ("mxrelay_webhook_backlog_events", "4"),
        ("mxrelay_tracking_hits_total{kind=\"open\"}", "2"),
        ("mxrelay_tracking_hits_total{kind=\"click\"}", "0"),
        ("mxrelay_suppression_store_pushed_total", "3"),
        ("mxrelay_suppression_store_pulled_total", "4"),
        ("mxrelay_suppression_store_errors_total", "1"),
        ("mxrelay_suppression_store_pending", "6"),
        ("mxrelay_messages_expired_total", "1"),
        ("mxrelay_delivered_bytes_total", "4096"),
        ("mxrelay_auth_failures_total", "1"),
        ("mxrelay_events_dropped_total", "1"),
        ("mxrelay_open_connections", "1"),
        ("mxrelay_busy_workers", "2"),
        ("mxrelay_queue_messages", "42"),
        ("mxrelay_queue_oldest_message_age_seconds", "3600"),
        ("mxrelay_spool_free_bytes", "1073741824"),
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
            "max_connections_per_ip",
            "max_messages_per_connection",
            "rate_limit_ip",
            "rate_limit_user",
            "rate_limit_rcpt_user",
            "storage",
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
