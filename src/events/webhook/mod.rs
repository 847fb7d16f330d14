//! Webhooks: every JSON event, as the event log writes it, POSTed in batches to each
//! `--webhook` URL, signed, durable and retried.
//!
//! The events writer thread appends each event to every webhook's outbox on disk
//! (`SPOOL/webhooks/<hash of the URL>/`, see `outbox.rs`) and fsyncs the outboxes at most
//! [`SYNC_EVERY`] apart; one sender thread per webhook reads them in order and POSTs a JSON
//! array of up to [`MAX_EVENTS`] events (about [`MAX_BYTES`] at most) with
//!
//! ```text
//! Content-Type: application/json
//! X-MxRelay-Timestamp: 1765130400
//! X-MxRelay-Signature: t=1765130400,v1=<hex HMAC-SHA256 of "1765130400." + body>
//! ```
//!
//! The key is the contents of `--webhook-secret-file`. A 2xx answer commits the batch (the
//! offset is saved); anything else (no connection, timeout, another status) is retried after
//! a delay that doubles from the first to the second value of `--webhook-retry`. Events
//! older than `--webhook-max-age` are dropped when they come up for sending, and new events
//! are dropped while a webhook's backlog is over `--webhook-max-backlog`; both are logged
//! and counted. Nothing here ever waits on a receiver in a session or a delivery: the events
//! channel is bounded and emitting never blocks.
//!
//! What is guaranteed: an event the writer appended is sent until a receiver answers 2xx
//! or it is older than the maximum age, across restarts and crashes. A crash or kill can
//! send the batch in flight again (its POST may have arrived without its commit). A clean
//! stop writes the events still queued in memory first; a crash loses those (normally none:
//! the writer keeps up), and a power loss can also lose what was appended in the last
//! [`SYNC_EVERY`].

pub mod outbox;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

use crate::delivery::scheduler::human;
use crate::metrics::{Metrics, WebhookDrop};
use outbox::{Reader, Shared, Writer};

/// Events per POST at most.
pub const MAX_EVENTS: usize = 100;
/// Bytes of events per POST at most (one larger event goes alone).
pub const MAX_BYTES: u64 = 1024 * 1024;
/// The outboxes are fsynced at most this long after an append.
pub const SYNC_EVERY: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole request and response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The webhook flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookConfig {
    pub urls: Vec<String>,
    pub secret_file: Option<PathBuf>,
    pub max_age: Duration,
    /// Bytes on disk per webhook.
    pub max_backlog: u64,
    /// The first delay after a failure and the longest.
    pub retry: (Duration, Duration),
}

impl WebhookConfig {
    /// The signing key: the secret file's contents, one trailing newline trimmed. Read at
    /// start, while the relay may still be root.
    pub fn load_secret(&self) -> std::io::Result<Option<Vec<u8>>> {
        let Some(file) = &self.secret_file else {
            return Ok(None);
        };
        let key = crate::config::read_secret(file)
            .map_err(|e| std::io::Error::other(format!("--webhook-secret-file: {e}")))?;
        Ok(Some(key))
    }
}

/// A URL's validity as far as the flags go: http or https, a host, no spaces.
pub fn parse_url(v: &str) -> Result<String, String> {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"))
        .ok_or_else(|| format!("{v:?} is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{v:?} is not a valid URL"));
    }
    Ok(v.to_string())
}

/// The URL as logs show it: scheme, host and path, no user information or query (either
/// may hold a token).
pub fn shown(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let rest = match rest.split_once('/') {
        Some((authority, path)) => {
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{host}/{path}")
        }
        None => rest.rsplit('@').next().unwrap_or(rest).to_string(),
    };
    format!("{scheme}://{rest}")
}

/// One webhook as the events writer sees it.
pub struct Outbox {
    url: String,
    writer: Writer,
    dropped: u64,
    /// Appends that failed in a row (a full disk): logged at powers of two.
    failing: u64,
}

/// The running senders, to stop.
pub type Senders = Vec<(Arc<Shared>, JoinHandle<()>)>;

/// The running webhooks: the outboxes (moved into the events writer thread) and the
/// senders.
pub struct Webhooks {
    outboxes: Vec<Outbox>,
    senders: Senders,
    /// Bytes on disk per webhook at most (`--webhook-max-backlog`).
    pub max_backlog: u64,
}

/// Where a webhook's outbox lives: named after its URL, so reordering the flags keeps
/// each backlog with its receiver.
pub fn outbox_dir(spool: &Path, url: &str) -> PathBuf {
    let digest = openssl::sha::sha256(url.as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    spool.join("webhooks").join(name)
}

impl Webhooks {
    /// Opens each webhook's outbox in the spool and starts its sender.
    pub fn start(
        cfg: &WebhookConfig,
        secret: Vec<u8>,
        spool: &Path,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Webhooks> {
        let secret = Arc::new(secret);
        let mut outboxes = Vec::new();
        let mut senders = Vec::new();
        let mut dirs = Vec::new();
        for url in &cfg.urls {
            let dir = outbox_dir(spool, url);
            let (writer, reader, shared) = outbox::open(&dir)
                .map_err(|e| std::io::Error::other(format!("webhooks: {}: {e}", dir.display())))?;
            // For the operator: which receiver a directory is for.
            let _ = std::fs::write(dir.join("url"), format!("{url}\n"));
            let sender = Sender {
                url: url.clone(),
                secret: secret.clone(),
                reader,
                shared: shared.clone(),
                metrics: metrics.clone(),
                max_age: cfg.max_age,
                retry: cfg.retry,
            };
            let handle = thread::Builder::new()
                .name("webhook".into())
                .spawn(move || sender.run())?;
            senders.push((shared, handle));
            outboxes.push(Outbox {
                url: url.clone(),
                writer,
                dropped: 0,
                failing: 0,
            });
            dirs.push(dir);
            log::info!("webhooks: sending events to {}", shown(url));
        }
        warn_about_orphans(spool, &dirs);
        Ok(Webhooks {
            outboxes,
            senders,
            max_backlog: cfg.max_backlog,
        })
    }

    /// Tells the senders to stop (a POST in flight is abandoned; it is sent again on the
    /// next start) and waits a moment for them.
    pub fn stop_senders(senders: Senders, wait: Duration) {
        for (shared, _) in &senders {
            shared.stop();
        }
        let deadline = Instant::now() + wait;
        for (_, handle) in senders {
            while !handle.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Splits into the outboxes (for the writer thread) and the senders (to stop).
    pub fn split(self) -> (Vec<Outbox>, Senders) {
        (self.outboxes, self.senders)
    }
}

/// Logs backlogs left for URLs no longer given.
fn warn_about_orphans(spool: &Path, dirs: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(spool.join("webhooks")) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !dirs.contains(&path) && path.is_dir() {
            log::warn!(
                "webhooks: {} holds events for a webhook no longer configured ({}); \
                 delete it when they are not wanted",
                path.display(),
                std::fs::read_to_string(path.join("url"))
                    .map(|u| shown(u.trim()))
                    .unwrap_or_else(|_| "unknown URL".into())
            );
        }
    }
}

impl Outbox {
    /// Appends one event record (see [`record`]), unless the backlog is full.
    pub fn append(&mut self, record: &[u8], max_backlog: u64, metrics: &Metrics) {
        if self.writer.backlog_bytes() + record.len() as u64 > max_backlog {
            metrics.webhook_dropped(WebhookDrop::BacklogFull, 1);
            if once_more(&mut self.dropped) {
                log::warn!(
                    "webhooks: {}: backlog full (--webhook-max-backlog), {} events dropped so far",
                    shown(&self.url),
                    self.dropped
                );
            }
            return;
        }
        match self.writer.append(record) {
            Ok(()) if self.failing > 0 => {
                log::info!(
                    "webhooks: {}: writing the outbox again after {} failed events",
                    shown(&self.url),
                    std::mem::take(&mut self.failing)
                );
            }
            Ok(()) => {}
            Err(e) => {
                if once_more(&mut self.failing) {
                    log::error!(
                        "webhooks: {}: cannot write the outbox: {e} ({} events lost so far)",
                        shown(&self.url),
                        self.failing
                    );
                }
            }
        }
    }

    /// Makes what was appended visible to the sender.
    pub fn publish(&mut self, metrics: &Metrics) {
        let n = self.writer.publish();
        if n > 0 {
            metrics.webhook_backlog(n as i64);
        }
    }

    pub fn unsynced(&self) -> bool {
        self.writer.unsynced()
    }

    pub fn sync(&mut self) {
        if let Err(e) = self.writer.sync() {
            log::error!(
                "webhooks: {}: cannot sync the outbox: {e}",
                shown(&self.url)
            );
        }
    }
}

/// Counts one more of a repeated problem; true at 1, 2, 4, 8...: when to log it again.
fn once_more(count: &mut u64) -> bool {
    *count += 1;
    count.is_power_of_two()
}

/// An outbox record for an event line as the event log writes it.
pub fn record(line: &str, now: SystemTime) -> Vec<u8> {
    let ms = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64;
    outbox::record(ms, line.trim_end_matches('\n').as_bytes())
}

/// `t=TIMESTAMP,v1=HEX`: HMAC-SHA256 with `key` over `TIMESTAMP.BODY`.
pub fn signature(
    key: &[u8],
    timestamp: u64,
    body: &[u8],
) -> Result<String, openssl::error::ErrorStack> {
    let key = PKey::hmac(key)?;
    let mut signer = Signer::new(MessageDigest::sha256(), &key)?;
    signer.update(timestamp.to_string().as_bytes())?;
    signer.update(b".")?;
    signer.update(body)?;
    let mac = signer.sign_to_vec()?;
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("t={timestamp},v1={hex}"))
}

/// The events as one JSON array.
fn body(events: &[Vec<u8>]) -> Vec<u8> {
    let len = events.iter().map(|e| e.len() + 1).sum::<usize>() + 2;
    let mut b = Vec::with_capacity(len);
    b.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(e);
    }
    b.push(b']');
    b
}

/// One webhook's sender thread.
struct Sender {
    url: String,
    secret: Arc<Vec<u8>>,
    reader: Reader,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    max_age: Duration,
    retry: (Duration, Duration),
}

impl Sender {
    fn run(mut self) {
        let name = shown(&self.url);
        match self.reader.count() {
            Ok(0) => {}
            Ok(n) => {
                log::info!("webhooks: {name}: {n} events waiting from before");
                self.metrics.webhook_backlog(n as i64);
            }
            Err(e) => log::error!("webhooks: {name}: cannot read the outbox: {e}"),
        }
        let agent = agent();
        let mut delay = self.retry.0;
        let mut failing = false;
        let mut max_events = MAX_EVENTS;
        loop {
            if self.shared.lock().stopping {
                return;
            }
            let too_old = now_ms().saturating_sub(self.max_age.as_millis() as u64);
            let batch = match self.reader.next(max_events, MAX_BYTES, too_old) {
                Ok(b) => b,
                Err(e) => {
                    log::error!("webhooks: {name}: cannot read the outbox: {e}");
                    if self.shared.pause(self.retry.1) {
                        return;
                    }
                    continue;
                }
            };
            if batch.expired > 0 {
                log::warn!(
                    "webhooks: {name}: {} events older than --webhook-max-age dropped",
                    batch.expired
                );
                self.metrics
                    .webhook_dropped(WebhookDrop::MaxAge, batch.expired);
                self.commit(&batch, &name);
                continue;
            }
            if batch.events.is_empty() {
                // Nothing waiting: sleep until the writer has more.
                if self.shared.wait_past(batch.seen, Duration::from_secs(1)) {
                    return;
                }
                continue;
            }
            match self.post(&agent, &batch.events) {
                Ok(()) => {
                    self.metrics.webhook_delivered(batch.events.len() as u64);
                    self.commit(&batch, &name);
                    if failing {
                        log::info!("webhooks: {name}: delivering again");
                    }
                    failing = false;
                    delay = self.retry.0;
                    max_events = MAX_EVENTS;
                }
                Err(Failure { reason, too_large }) => {
                    self.metrics.webhook_failed();
                    if too_large && max_events > 1 {
                        max_events = (max_events / 2).max(1);
                    }
                    let waiting = self.shared.lock().events;
                    log::warn!(
                        "webhooks: {name}: {reason}; {waiting} events wait, next try in {}",
                        human(delay)
                    );
                    failing = true;
                    if self.shared.pause(delay) {
                        return;
                    }
                    delay = (delay * 2).min(self.retry.1);
                }
            }
        }
    }

    fn commit(&mut self, batch: &outbox::Batch, name: &str) {
        match self.reader.commit(batch) {
            Ok(n) => self.metrics.webhook_backlog(-(n as i64)),
            Err(e) => log::error!("webhooks: {name}: cannot save the outbox offset: {e}"),
        }
    }

    fn post(&self, agent: &ureq::Agent, events: &[Vec<u8>]) -> Result<(), Failure> {
        let body = body(events);
        let timestamp = now_ms() / 1000;
        let signature = signature(&self.secret, timestamp, &body).map_err(|e| Failure {
            reason: format!("cannot sign: {e}"),
            too_large: false,
        })?;
        let answer = agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("User-Agent", concat!("mxrelay/", env!("CARGO_PKG_VERSION")))
            .header("X-MxRelay-Timestamp", &timestamp.to_string())
            .header("X-MxRelay-Signature", &signature)
            .send(&body[..]);
        match answer {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(Failure {
                reason: format!("the receiver answered {}", r.status()),
                too_large: r.status().as_u16() == 413,
            }),
            Err(e) => Err(Failure {
                reason: e.to_string(),
                too_large: false,
            }),
        }
    }
}

struct Failure {
    reason: String,
    too_large: bool,
}

/// The HTTP client: OpenSSL through native-tls with the system's roots, timeouts on
/// connecting and on the whole exchange, no redirects, no proxy, statuses as answers.
fn agent() -> ureq::Agent {
    use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
    let tls = TlsConfig::builder()
        .provider(TlsProvider::NativeTls)
        .root_certs(RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .build()
        .into()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

#[cfg(test)]
mod tests;
