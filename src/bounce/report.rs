//! The DSN message itself: an RFC 6522 multipart/report with a notification for people, the
//! RFC 3464 (or RFC 6533 global) delivery-status fields, and the original message's headers.

use std::net::IpAddr;
use std::time::SystemTime;

use super::wire::{lines_to_bytes, pick_boundary, put_line, quoted_printable};
use super::{Diagnostic, FailedRecipient, Original};
use crate::date::rfc5322;

pub(super) const MAX_DIAGNOSTIC: usize = 1000;

/// Returns the whole message (headers + body) with CRLF line ends, ready to be spooled.
pub fn build(
    reporting_mta: &str,
    postmaster: &str,
    original: &Original,
    failed: &[FailedRecipient],
    now: SystemTime,
    unique: &str,
) -> Vec<u8> {
    let mta = clean(reporting_mta);
    let rcpts: Vec<Rcpt> = failed.iter().map(Rcpt::new).collect();
    let notice = lines_to_bytes(notification(&mta, &clean(postmaster), original, &rcpts));
    let report = lines_to_bytes(delivery_status(&mta, original, &rcpts, now));
    // message/delivery-status is ASCII only. A UTF-8 address (RFC 6533 3: "utf-8;" with raw
    // UTF-8) or reason needs message/global-delivery-status, and so does a DSN to a UTF-8
    // sender, which travels as SMTPUTF8 mail anyway.
    let global = !report.is_ascii() || !original.sender.is_ascii();
    let report_type = if global {
        "global-delivery-status"
    } else {
        "delivery-status"
    };
    let mut parts = parts(notice, report, original_headers(original.headers), global);
    let boundary = pick_boundary(unique, &parts.each_ref().map(|p| p.body.as_slice()));

    let mut out = lines_to_bytes(vec![
        format!("From: Mail Delivery System <MAILER-DAEMON@{mta}>"),
        format!("To: <{}>", clean(original.sender)),
        "Subject: Undelivered Mail Returned to Sender".into(),
        format!("Date: {}", rfc5322(now)),
        format!("Message-ID: <{}@{mta}>", clean(unique)),
        "Auto-Submitted: auto-replied".into(),
        "MIME-Version: 1.0".into(),
        format!("Content-Type: multipart/report; report-type={report_type};"),
        format!(" boundary=\"{boundary}\""),
        String::new(),
        "This is a MIME-formatted delivery status notification.".into(),
    ]);
    for part in &mut parts {
        part.put(&mut out, &boundary);
    }
    out.extend(lines_to_bytes(vec![
        String::new(),
        format!("--{boundary}--"),
    ]));
    out
}

/// One part of the multipart/report.
struct Part {
    content_type: String,
    description: &'static str,
    body: Vec<u8>,
}

/// The notification for people, the delivery report, and the original headers.
fn parts(notice: Vec<u8>, report: Vec<u8>, headers: Vec<u8>, global: bool) -> [Part; 3] {
    let charset = if notice.is_ascii() {
        "us-ascii"
    } else {
        "utf-8"
    };
    let report_type = if global {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    // In a global report, UTF-8 header fields (RFC 6532) go back as they are; otherwise, and
    // for bytes that are not UTF-8 at all, as text that quoted-printable keeps 7-bit.
    let headers_type = if global && !headers.is_ascii() && std::str::from_utf8(&headers).is_ok() {
        "message/global-headers"
    } else {
        "text/rfc822-headers"
    };
    [
        Part {
            content_type: format!("text/plain; charset={charset}"),
            description: "Notification",
            body: notice,
        },
        Part {
            content_type: report_type.into(),
            description: "Delivery report",
            body: report,
        },
        Part {
            content_type: headers_type.into(),
            description: "Undelivered message headers",
            body: headers,
        },
    ]
}

impl Part {
    /// Appends the boundary, the part's header fields and its body, encoded.
    fn put(&mut self, out: &mut Vec<u8>, boundary: &str) {
        // A DSN must get through 7-bit hops: text parts with 8-bit bytes (an original
        // Subject in UTF-8, a remote reply) go quoted-printable. Only the message/global-*
        // parts of a global report stay 8-bit, and their bytes make the DSN need 8BITMIME.
        let encoding = if self.body.is_ascii() {
            "7bit"
        } else if self.content_type.starts_with("text/") {
            self.body = quoted_printable(&self.body);
            "quoted-printable"
        } else {
            "8bit"
        };
        out.extend(lines_to_bytes(vec![
            String::new(),
            format!("--{boundary}"),
            format!("Content-Type: {}", self.content_type),
            format!("Content-Transfer-Encoding: {encoding}"),
            format!("Content-Description: {}", self.description),
            String::new(),
        ]));
        out.extend_from_slice(&self.body);
    }
}

/// A failed recipient with every value made safe for a header field.
struct Rcpt {
    address: String,
    status: String,
    /// The relay as delivery named it, for people to read.
    remote_mta: Option<String>,
    /// Its host name alone, for `Remote-MTA:`.
    mta_name: Option<String>,
    diagnostic_type: &'static str,
    diagnostic: Vec<String>,
}

impl Rcpt {
    fn new(f: &FailedRecipient) -> Rcpt {
        let status = if valid_status(&f.status) {
            f.status.clone()
        } else {
            "5.0.0".into()
        };
        let diagnostic = f.diagnostic.as_ref().map_or_else(Vec::new, |d| {
            let d = d.text();
            let mut end = d.len().min(MAX_DIAGNOSTIC);
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            // Blank lines would end the field block, so drop them.
            d[..end]
                .split('\n')
                .map(clean)
                .filter(|l| !l.trim().is_empty())
                .collect()
        });
        let remote_mta = f.remote_mta.as_deref().map(clean).filter(|h| !h.is_empty());
        Rcpt {
            address: clean(&f.address),
            status,
            mta_name: remote_mta.as_deref().and_then(mta_name),
            remote_mta,
            diagnostic_type: f.diagnostic.as_ref().map_or("smtp", Diagnostic::kind),
            diagnostic,
        }
    }
}

/// The host name in a relay such as `mx.example.net[192.0.2.1]:25`, for `Remote-MTA: dns;`.
/// RFC 3464 2.3.5 types that value "dns": a domain name, which an address literal is not.
/// The field is optional, so a relay known only by its address gets none rather than a
/// value a DSN parser would misread; the notification text still names it.
pub(super) fn mta_name(relay: &str) -> Option<String> {
    let host = relay.split_once('[').map_or(relay, |(name, _)| name);
    let host = match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    let name_bytes = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
    (!host.is_empty()
        && host.len() <= 253
        && host.bytes().all(name_bytes)
        && host.parse::<IpAddr>().is_err())
    .then(|| host.to_string())
}

fn notification(mta: &str, postmaster: &str, original: &Original, rcpts: &[Rcpt]) -> Vec<String> {
    let mut l = vec![
        format!("This is the mail delivery system at {mta}."),
        String::new(),
        format!(
            "Your message (queue ID {}) could not be delivered",
            clean(original.queue_id)
        ),
        "to the recipients listed below. Delivery failed permanently or the".into(),
        "message expired in the queue; no further attempts will be made.".into(),
    ];
    for r in rcpts {
        l.push(String::new());
        l.push(format!("<{}>", r.address));
        l.push(format!("    Status: {}", r.status));
        if let Some(host) = &r.remote_mta {
            l.push(format!("    Remote server: {host}"));
        }
        for (i, d) in r.diagnostic.iter().enumerate() {
            l.push(format!(
                "{}{d}",
                if i == 0 {
                    "    Reason: "
                } else {
                    "            "
                }
            ));
        }
    }
    l.push(String::new());
    l.push(format!(
        "If you need help, contact the postmaster: {postmaster}"
    ));
    l.push("The delivery report and the headers of your message are attached.".into());
    l
}

fn delivery_status(mta: &str, original: &Original, rcpts: &[Rcpt], now: SystemTime) -> Vec<String> {
    let mut l = vec![
        format!("Reporting-MTA: dns; {mta}"),
        format!("X-Mxrelay-Queue-ID: {}", clean(original.queue_id)),
        format!("Arrival-Date: {}", rfc5322(original.arrival)),
    ];
    let now = rfc5322(now);
    for r in rcpts {
        // RFC 6533 3: SMTPUTF8 addresses are typed "utf-8"; raw UTF-8 is its form for
        // message/global-delivery-status, which `build` picks for any non-ASCII report.
        let kind = if r.address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        l.push(String::new());
        l.push(format!("Final-Recipient: {kind}; {}", r.address));
        l.push("Action: failed".into());
        l.push(format!("Status: {}", r.status));
        if let Some(host) = &r.mta_name {
            l.push(format!("Remote-MTA: dns; {host}"));
        }
        for (i, d) in r.diagnostic.iter().enumerate() {
            l.push(if i == 0 {
                format!("Diagnostic-Code: {}; {d}", r.diagnostic_type)
            } else {
                format!(" {d}")
            });
        }
        l.push(format!("Last-Attempt-Date: {now}"));
    }
    l
}

/// The original header lines, re-terminated with CRLF; stray CR and NUL bytes and
/// blank lines (which would end the header block early) are dropped.
fn original_headers(headers: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + 64);
    for line in headers.split(|&b| b == b'\n') {
        let line: Vec<u8> = line
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != 0)
            .collect();
        if !line.is_empty() {
            put_line(&mut out, &line);
        }
    }
    out
}

/// Drops control characters (CR, LF, NUL, DEL, C1, ...) so a value stays on its line.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

fn valid_status(s: &str) -> bool {
    let mut it = s.split('.');
    let short_num = |n: &str| (1..=3).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit());
    matches!(it.next(), Some("2" | "4" | "5"))
        && it.next().is_some_and(short_num)
        && it.next().is_some_and(short_num)
        && it.next().is_none()
}
