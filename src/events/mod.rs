//! What happened to each message, reported once (`Events::report` with an `Event`): the log
//! line, the metric and the JSON event come from one place.
//!
//! The event log: one JSON object per line for every step in a message's life, for
//! pipelines and dashboards; the webhooks (`webhook/`) get the same objects. Emitting never
//! blocks an SMTP session or a delivery: lines go through a bounded channel to one writer
//! thread, which writes the event log and appends to each webhook's outbox; when it falls
//! behind, events are dropped, counted and logged.
//!
//! Schema version 1. Every event has `v` (1), `event` (its kind), `time` (RFC 3339, UTC, ms):
//!
//! | event | fields |
//! |---|---|
//! | `received` | `id`, `client_ip`, `auth_user` (or null), `tls` (bool), `sender`, `recipients` [..], `size`, `message_id` (or null), `dkim` [..] (the signatures added, `d=.. s=.. a=..`) |
//! | `delivered` | `id`, `recipient`, `relay`, `reply`, `tls` (bool), `delay_s` (since reception) |
//! | `deferred` | `id`, `recipients` [..] (still pending), `reason`, `category`, `attempt`, `next_try` |
//! | `bounced` | `id`, `recipient`, `status`, `reason`, `category`, `relay` (or null), `dsn_id` (or null when none was sent) |
//! | `expired` | `id`, `recipients` [..], `age_s` |
//! | `deleted` | `id`, `recipients` [..] (still pending) |
//! | `suppressed` | `id`, `recipient`, `reason` (`unsubscribe`, `bounce`, `manual`): not sent, on the suppression list |
//! | `rejected` | `client_ip`, `auth_user` (or null), `reason` (the label of `mxrelay_messages_rejected_total`), `command` (`CONNECT` for a connection refused over `--max-connections-per-ip`), `argument` (or null), `reply` |
//!
//! Every event about a message that a trusted or authenticated client tagged
//! (`X-MxRelay-Tag:`) also has `tag`.
//!
//! `category` says why, in one word, from the enhanced status code and the reply text (the
//! rules and their real-world samples are in `category.rs`): `invalid_recipient`,
//! `mailbox_full`, `spam_block`, `sender_auth` (SPF/DKIM/DMARC wanted), `policy`,
//! `rate_limited`, `greylisted`, `auth` (logging in to the next hop), `dns`, `tls`,
//! `connection`, `message_size` or `other`. New values may be added; treat an unknown one as
//! `other`.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};

use crate::metrics::Metrics;

pub mod category;
mod event;
pub mod webhook;
pub use event::Event;
use webhook::{Outbox, SYNC_EVERY, Webhooks};

pub const SCHEMA_VERSION: u32 = 1;

/// Lines waiting for the writer before events are dropped.
const BACKLOG: usize = 10_000;
/// Lines the writer takes before it flushes, at most.
const ROUND: usize = 1024;

/// What the writer thread is sent.
enum Msg {
    Line(String),
    /// Write and sync everything before this, then answer.
    Flush(Sender<()>),
}

pub struct Events {
    tx: Option<Sender<Msg>>,
    dropped: AtomicU64,
    metrics: Arc<Metrics>,
    /// The webhook senders, stopped by `close`.
    senders: Mutex<webhook::Senders>,
}

/// A JSON value as the events need them.
pub enum V<'a> {
    Str(&'a str),
    Text(String),
    OptStr(Option<&'a str>),
    Num(u64),
    Float(f64),
    Bool(bool),
    List(&'a [String]),
}

/// A message's tag as events carry it: `None` when it has none.
pub fn tag(tag: &str) -> Option<&str> {
    Some(tag).filter(|t| !t.is_empty())
}

impl Events {
    /// `target`: `None`, no event log; `-`, standard output; otherwise a file, appended to.
    /// `webhooks`: their outboxes get every event too. With neither, events are only logged
    /// and counted.
    pub fn open(
        target: Option<&str>,
        webhooks: Option<Webhooks>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Events> {
        let out: Option<Box<dyn Write + Send>> = match target {
            None => None,
            Some("-") => Some(Box::new(io::stdout())),
            Some(path) => Some(Box::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
        };
        let (hooks, max_backlog, senders) = match webhooks {
            Some(w) => {
                let max = w.max_backlog;
                let (outboxes, senders) = w.split();
                (outboxes, max, senders)
            }
            None => (Vec::new(), 0, Vec::new()),
        };
        if out.is_none() && hooks.is_empty() {
            return Ok(Events {
                tx: None,
                dropped: AtomicU64::new(0),
                metrics,
                senders: Mutex::default(),
            });
        }
        let (tx, rx) = bounded::<Msg>(BACKLOG);
        let writer = Writer {
            out,
            hooks,
            max_backlog,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || writer.run(rx))?;
        Ok(Events {
            tx: Some(tx),
            dropped: AtomicU64::new(0),
            metrics,
            senders: Mutex::new(senders),
        })
    }

    /// Writes one JSON line (see `Event` for what reports one).
    fn emit(&self, kind: &str, fields: &[(&str, V)]) {
        let Some(tx) = &self.tx else { return };
        let line = to_json(kind, SystemTime::now(), fields);
        match tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.event_dropped();
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    log::warn!("events: writer behind, {n} events dropped so far");
                }
            }
        }
    }

    /// On stop: writes and syncs what is queued (waiting up to `wait`), then stops the
    /// webhook senders (a POST in flight is sent again on the next start).
    pub fn close(&self, wait: Duration) {
        if let Some(tx) = &self.tx {
            let (ack, done) = bounded(1);
            if tx.send_timeout(Msg::Flush(ack), wait).is_err() || done.recv_timeout(wait).is_err() {
                log::warn!("events: the writer did not finish in {wait:?}");
            }
        }
        let senders = std::mem::take(&mut *self.senders.lock().unwrap_or_else(|e| e.into_inner()));
        Webhooks::stop_senders(senders, Duration::from_secs(1));
    }
}

/// The events writer thread: the event log and the webhook outboxes.
struct Writer {
    out: Option<Box<dyn Write + Send>>,
    hooks: Vec<Outbox>,
    max_backlog: u64,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        // Since when outboxes hold appends not yet synced.
        let mut unsynced: Option<Instant> = None;
        loop {
            let first = match unsynced {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(t) => rx.recv_timeout(SYNC_EVERY.saturating_sub(t.elapsed())),
            };
            let first = match first {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    self.sync();
                    unsynced = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut acks = Vec::new();
            let mut ok = true;
            let mut next = Some(first);
            let mut taken = 0;
            // Write what else is waiting before flushing once.
            while let Some(msg) = next {
                match msg {
                    Msg::Line(line) => ok &= self.write(&line),
                    Msg::Flush(ack) => acks.push(ack),
                }
                taken += 1;
                next = if taken < ROUND {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if let Some(out) = &mut self.out
                && (!ok || out.flush().is_err())
            {
                log::error!("events: write failed");
            }
            for hook in &mut self.hooks {
                hook.publish(&self.metrics);
            }
            if unsynced.is_none() && self.hooks.iter().any(Outbox::unsynced) {
                unsynced = Some(Instant::now());
            }
            if unsynced.is_some_and(|t| t.elapsed() >= SYNC_EVERY) || !acks.is_empty() {
                self.sync();
                unsynced = None;
            }
            for ack in acks {
                let _ = ack.send(());
            }
        }
        self.sync();
    }

    fn write(&mut self, line: &str) -> bool {
        let ok = match &mut self.out {
            Some(out) => out.write_all(line.as_bytes()).is_ok(),
            None => true,
        };
        if !self.hooks.is_empty() {
            let record = webhook::record(line, SystemTime::now());
            for hook in &mut self.hooks {
                hook.append(&record, self.max_backlog, &self.metrics);
            }
        }
        ok
    }

    fn sync(&mut self) {
        for hook in &mut self.hooks {
            hook.sync();
        }
    }
}

pub fn to_json(kind: &str, time: SystemTime, fields: &[(&str, V)]) -> String {
    let mut s = String::with_capacity(256);
    let _ = write!(s, "{{\"v\":{SCHEMA_VERSION},\"event\":");
    string(&mut s, kind);
    s.push_str(",\"time\":");
    string(&mut s, &rfc3339(time));
    for (k, v) in fields {
        s.push(',');
        string(&mut s, k);
        s.push(':');
        match v {
            V::Str(x) => string(&mut s, x),
            V::Text(x) => string(&mut s, x),
            V::OptStr(Some(x)) => string(&mut s, x),
            V::OptStr(None) => s.push_str("null"),
            V::Num(n) => {
                let _ = write!(s, "{n}");
            }
            V::Float(f) if f.is_finite() => {
                let _ = write!(s, "{f:.3}");
            }
            V::Float(_) => s.push_str("null"),
            V::Bool(b) => s.push_str(if *b { "true" } else { "false" }),
            V::List(items) => {
                s.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    string(&mut s, item);
                }
                s.push(']');
            }
        }
    }
    s.push_str("}\n");
    s
}

/// A JSON string literal (RFC 8259 escaping; non-ASCII passes through as UTF-8).
pub fn string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `2026-11-26T15:34:57.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let (y, mo, day, h, mi, s) = crate::date::utc(d.as_secs());
    format!(
        "{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_707_297_123);
        let rcpts = vec!["a@b.test".to_string(), "q\"uote@c.test".to_string()];
        let line = to_json(
            "received",
            t,
            &[
                ("id", V::Str("X")),
                ("auth_user", V::OptStr(None)),
                ("size", V::Num(42)),
                ("tls", V::Bool(true)),
                ("recipients", V::List(&rcpts)),
                ("delay_s", V::Float(1.5)),
            ],
        );
        assert_eq!(
            line,
            "{\"v\":1,\"event\":\"received\",\"time\":\"2026-11-26T15:34:57.123Z\",\"id\":\"X\",\"auth_user\":null,\"size\":42,\"tls\":true,\"recipients\":[\"a@b.test\",\"q\\\"uote@c.test\"],\"delay_s\":1.500}\n"
        );
    }

    #[test]
    fn escaping() {
        let mut s = String::new();
        string(&mut s, "a\r\nb\\c\u{1}é");
        assert_eq!(s, "\"a\\r\\nb\\\\c\\u0001é\"");
    }
}
