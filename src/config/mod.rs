//! Command-line flags → validated, typed configuration. One table (`FLAGS`) feeds getopts,
//! `--help` and the defaults; one function per module (`server`, `auth`, `delivery`, `sites`,
//! `scheduler`, `routes`, `transforms`, `suppression`) reads the flags into that module's own
//! config, and [`Config`] holds them. Every error names its flag. Nothing reads flags after
//! start-up.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthConfig;
use crate::delivery::DeliveryConfig;
use crate::delivery::flow::InFlowConfig;
use crate::delivery::route::RouteTable;
use crate::delivery::scheduler::SchedulerConfig;
use crate::delivery::sites::SiteConfig;
use crate::events::webhook::{self, WebhookConfig};
use crate::limits::{LimitsConfig, Rate};
use crate::server::ServerConfig;
use crate::smtp::address::{self, Mailbox};
use crate::suppression::SuppressionConfig;
use crate::tracking::{Personal, TrackingConfig};
use crate::transform::TransformConfig;

mod flags;
mod print;
mod values;

use flags::{DEFAULT_LISTEN, options};
pub use flags::{FLAGS, FlagDef, describe, multi, opt, switch, usage};
pub use values::*;

/// Everything the relay runs with: the flags, validated and already shaped into the config of
/// each module that takes one. Built once by [`parse_args`]; nothing reads flags after start-up.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<Listener>,
    pub hostname: String,
    pub spool: PathBuf,
    /// `--min-free-space`.
    pub min_free_space: crate::spool::MinFree,
    pub server: ServerConfig,
    /// Certificate chain and key files (`--tls-cert`, `--tls-key`).
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    pub sites: SiteConfig,
    pub scheduler: SchedulerConfig,
    pub in_flow: InFlowConfig,
    pub transforms: TransformConfig,
    pub suppression: SuppressionConfig,
    /// Empty: the servers of /etc/resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    pub events: Option<String>,
    pub webhooks: WebhookConfig,
    pub tracking: TrackingConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub user: Option<String>,
    pub shutdown_grace: Duration,
    pub verbose: bool,
}

#[derive(Debug)]
pub enum Parsed {
    Run(Box<Config>),
    /// `--print-config`: the effective configuration as flags.
    Print(String),
    Help(String),
    Version,
}

/// An invalid flag: printed as one line, exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn parse_args(args: &[String]) -> Result<Parsed, ConfigError> {
    let m = options()
        .parse(args)
        .map_err(|e| ConfigError(e.to_string()))?;
    if m.opt_present("help") {
        return Ok(Parsed::Help(usage()));
    }
    if m.opt_present("version") {
        return Ok(Parsed::Version);
    }
    if let Some(extra) = m.free.first() {
        return Err(ConfigError(format!(
            "unexpected argument {extra:?} (see --help)"
        )));
    }
    let f = Flags(&m);
    let config = build(&f)?;
    if f.on("print-config") {
        return Ok(Parsed::Print(print::command_line(&f, &config)));
    }
    Ok(Parsed::Run(Box::new(config)))
}

/// For a subcommand that takes the daemon's command line (`mxrelay check`): the daemon's flags
/// plus the subcommand's own (`extra`, which must not share names with `FLAGS`). Gives the
/// daemon's config and the matches, from which the subcommand reads its flags and arguments.
pub fn parse_with(
    args: &[String],
    extra: &[FlagDef],
) -> Result<(Config, getopts::Matches), ConfigError> {
    let mut o = options();
    flags::add(&mut o, extra);
    let m = o.parse(args).map_err(|e| ConfigError(e.to_string()))?;
    let config = build(&Flags(&m))?;
    Ok((config, m))
}

fn build(f: &Flags) -> Result<Config, ConfigError> {
    let listen = f.list("listen", &[DEFAULT_LISTEN], parse_listener)?;
    let hostname = hostname(f)?;
    let spool = match f.given("spool") {
        Some(s) if s.is_empty() => return Err(bad("spool", "empty path".into())),
        Some(s) => PathBuf::from(s),
        None => default_spool(),
    };
    let min_free_space = crate::spool::MinFree::parse(&f.value("min-free-space"))
        .map_err(|e| bad("min-free-space", e))?;
    let postmaster = match f.given("postmaster") {
        Some(p) => Mailbox::parse(&p).map_err(|e| bad("postmaster", format!("{p:?}: {e}")))?,
        None => Mailbox {
            local: "postmaster".into(),
            domain: hostname.clone(),
        },
    };
    let routes = Arc::new(routes(f)?);
    let delivery = delivery(f, &hostname, !routes.smarthost.is_empty())?;
    let tracking = tracking(f)?;
    let server = server(f, &hostname, &postmaster)?;
    check_proxy(&listen, &server.proxy_from)?;
    let config = Config {
        server,
        tls_cert: f
            .pair("tls-cert", "tls-key")?
            .map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
        auth: auth(f)?,
        sites: sites(f, delivery.workers)?,
        delivery,
        scheduler: scheduler(f, &hostname, &postmaster, routes)?,
        in_flow: InFlowConfig {
            backlog: f.num("in-flow-backlog", 1)? as usize,
            delay: f.dur("in-flow-delay")?,
        },
        transforms: transforms(f, &tracking)?,
        tracking,
        suppression: suppression(f)?,
        dns_servers: f.list("dns-server", &[], parse_dns_server)?,
        events: f.given("events"),
        webhooks: webhooks(f)?,
        metrics_listen: f.opt("metrics-listen", |v| {
            v.parse().map_err(|_| format!("{v:?} is not ADDR:PORT"))
        })?,
        user: f.given("user"),
        shutdown_grace: f.dur("shutdown-grace")?,
        verbose: f.on("verbose"),
        listen,
        hostname,
        spool,
        min_free_space,
    };
    Ok(config)
}

impl Config {
    /// The files that hold secrets, each with its flag: keys, passwords, HMAC secrets.
    pub fn secret_files(&self) -> Vec<(&'static str, &Path)> {
        let mut files: Vec<(&'static str, &Path)> = Vec::new();
        if let Some((_, key)) = &self.tls_cert {
            files.push(("tls-key", key));
        }
        if let Some(users) = &self.auth.users {
            files.push(("users", users));
        }
        if let Some((_, file)) = &self.delivery.smarthost_login {
            files.push(("smarthost-password-file", file));
        }
        for (_, _, key) in &self.transforms.dkim {
            files.push(("dkim", key));
        }
        if let Some(file) = &self.webhooks.secret_file {
            files.push(("webhook-secret-file", file));
        }
        for file in &self.tracking.secret_files {
            files.push(("tracking-secret-file", file));
        }
        files
    }
}

/// getopts' matches, read as the flag table says: a flag not given takes its `[default]`.
struct Flags<'m>(&'m getopts::Matches);

fn bad(name: &str, why: String) -> ConfigError {
    ConfigError(format!("--{name}: {why}"))
}

impl Flags<'_> {
    /// The value given on the command line.
    fn given(&self, name: &str) -> Option<String> {
        self.0.opt_str(name)
    }

    fn on(&self, name: &str) -> bool {
        self.0.opt_present(name)
    }

    /// The value given, else the flag's default from `FLAGS` (for flags whose default is a
    /// value, not a description).
    fn value(&self, name: &str) -> String {
        self.given(name).unwrap_or_else(|| {
            let flag = FLAGS.iter().find(|f| f.long == name);
            flag.and_then(|f| f.default).unwrap_or_default().to_string()
        })
    }

    fn num(&self, name: &str, min: u64) -> Result<u64, ConfigError> {
        let v = self.value(name);
        match v.parse::<u64>() {
            Ok(n) if n >= min => Ok(n),
            Ok(_) => Err(bad(name, format!("must be at least {min}"))),
            Err(_) => Err(bad(name, format!("{v:?} is not a number"))),
        }
    }

    /// A size in bytes (K/M/G suffixes), at least `min`.
    fn size(&self, name: &str, min: u64) -> Result<u64, ConfigError> {
        match parse_size(&self.value(name)).map_err(|e| bad(name, e))? {
            n if n >= min => Ok(n),
            _ => Err(bad(name, format!("must be at least {min} bytes"))),
        }
    }

    fn dur(&self, name: &str) -> Result<Duration, ConfigError> {
        parse_duration(&self.value(name)).map_err(|e| bad(name, e))
    }

    /// A comma-separated list of durations.
    fn durations(&self, name: &str) -> Result<Vec<Duration>, ConfigError> {
        self.value(name)
            .split(',')
            .map(|s| parse_duration(s.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(name, e))
    }

    /// A duration that must not be zero.
    fn positive_dur(&self, name: &str) -> Result<Duration, ConfigError> {
        let d = self.dur(name)?;
        if d.is_zero() {
            return Err(bad(name, "must be greater than zero".into()));
        }
        Ok(d)
    }

    /// An optional value, parsed when given.
    fn opt<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        self.given(name)
            .map(|v| parse(&v).map_err(|e| bad(name, e)))
            .transpose()
    }

    /// Every value of a repeatable flag, or `defaults` when it is not given.
    fn list<T>(
        &self,
        name: &str,
        defaults: &[&str],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ConfigError> {
        let given = self.0.opt_strs(name);
        let values: Vec<&str> = if given.is_empty() {
            defaults.to_vec()
        } else {
            given.iter().map(String::as_str).collect()
        };
        values
            .into_iter()
            .map(|v| parse(v).map_err(|e| bad(name, e)))
            .collect()
    }

    /// Two flags that go together: both or neither.
    fn pair(&self, a: &str, b: &str) -> Result<Option<(String, String)>, ConfigError> {
        match (self.given(a), self.given(b)) {
            (Some(x), Some(y)) => Ok(Some((x, y))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(bad(a, format!("needs --{b} too"))),
            (None, Some(_)) => Err(bad(b, format!("needs --{a} too"))),
        }
    }

    /// One of a few names.
    fn choice<T: Copy>(&self, name: &str, choices: &[(&str, T)]) -> Result<T, ConfigError> {
        let v = self.value(name);
        if let Some((_, t)) = choices.iter().find(|(n, _)| *n == v) {
            return Ok(*t);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let (last, rest) = names.split_last().expect("choices");
        Err(bad(
            name,
            format!("{v:?} is not {} or {last}", rest.join(", ")),
        ))
    }
}

fn tracking(f: &Flags) -> Result<TrackingConfig, ConfigError> {
    let (clicks, opens) = Personal::parse_track(&f.value("track")).map_err(|e| bad("track", e))?;
    let cfg = TrackingConfig {
        url: f.given("tracking-url"),
        secret_files: f.list("tracking-secret-file", &[], |v| Ok(PathBuf::from(v)))?,
        listen: f.opt("tracking-listen", |v| {
            v.parse().map_err(|_| format!("{v:?} is not ADDR:PORT"))
        })?,
        max_connections: f.num("tracking-max-connections", 1)? as usize,
        defaults: Personal {
            clicks,
            opens,
            unsubscribe: f.on("unsubscribe"),
        },
        exclude: f.list("track-exclude", &[], crate::tracking::config::parse_exclude)?,
        mailto: f.given("unsubscribe-mailto"),
    };
    cfg.check().map_err(ConfigError)?;
    Ok(cfg)
}

fn transforms(f: &Flags, tracking: &TrackingConfig) -> Result<TransformConfig, ConfigError> {
    Ok(TransformConfig {
        add_headers: f.list("add-header", &[], crate::transform::headers::parse_added)?,
        remove_headers: f.list(
            "remove-header",
            &[],
            crate::transform::headers::parse_removed,
        )?,
        max_header_size: f.size("max-header-size", 1024)? as usize,
        dkim: f.list("dkim", &[], crate::transform::dkim::parse_spec)?,
        control: tracking.control(),
    })
}

fn suppression(f: &Flags) -> Result<SuppressionConfig, ConfigError> {
    let bounces = f.dur("suppress-bounces")?;
    Ok(SuppressionConfig {
        bounce_expiry: Some(bounces).filter(|d| !d.is_zero()),
        store: f.opt("suppression-store", crate::suppression::shared::parse_url)?,
    })
}

fn webhooks(f: &Flags) -> Result<WebhookConfig, ConfigError> {
    let urls = f.list("webhook", &[], webhook::parse_url)?;
    if let Some((_, u)) = urls
        .iter()
        .enumerate()
        .find(|(i, u)| urls[..*i].contains(u))
    {
        return Err(bad("webhook", format!("{u:?} is given twice")));
    }
    let secret_file = f.given("webhook-secret-file").map(PathBuf::from);
    match (urls.is_empty(), &secret_file) {
        (false, None) => return Err(bad("webhook", "needs --webhook-secret-file".into())),
        (true, Some(_)) => return Err(bad("webhook-secret-file", "needs --webhook".into())),
        _ => {}
    }
    let retry = f.durations("webhook-retry")?;
    let retry = match retry[..] {
        [first, max] if !first.is_zero() && first <= max => (first, max),
        _ => {
            return Err(bad(
                "webhook-retry",
                "wants FIRST,MAX with 0 < FIRST <= MAX".into(),
            ));
        }
    };
    Ok(WebhookConfig {
        urls,
        secret_file,
        max_age: f.positive_dur("webhook-max-age")?,
        max_backlog: f.size("webhook-max-backlog", 64 * 1024)?,
        retry,
    })
}

fn hostname(f: &Flags) -> Result<String, ConfigError> {
    let hostname = match f.given("hostname") {
        Some(h) => h,
        None => dns_lookup::get_hostname().unwrap_or_else(|_| "localhost".into()),
    };
    if !address::is_valid_domain(&hostname) {
        return Err(bad(
            "hostname",
            format!("{hostname:?} is not a valid host name"),
        ));
    }
    Ok(hostname)
}

fn server(f: &Flags, hostname: &str, postmaster: &Mailbox) -> Result<ServerConfig, ConfigError> {
    let trusted = f.list("trusted-network", print::TRUSTED_DEFAULT, parse_cidr)?;
    Ok(ServerConfig {
        hostname: hostname.to_string(),
        limits: limits(f, &trusted)?,
        trusted,
        proxy_from: f.list("proxy-from", &[], parse_cidr)?,
        postmaster: postmaster.clone(),
        max_connections: f.num("max-connections", 1)? as usize,
        max_message_size: f.size("max-message-size", 1)?,
        max_recipients: f.num("max-recipients", 1)? as usize,
        max_errors: f.num("max-errors", 1)? as u32,
        max_line_length: f.num("max-line-length", 512)? as usize,
        max_hops: f.num("max-hops", 1)? as u32,
        idle_timeout: f.positive_dur("idle-timeout")?,
        tls_handshake_timeout: f.dur("tls-handshake-timeout")?,
        plaintext_auth_loopback: f.on("plaintext-auth-loopback"),
        auth_fail_delay: f.dur("auth-fail-delay")?,
    })
}

/// The rate and concurrency limits; `--limit-exempt` defaults to the trusted networks.
fn limits(f: &Flags, trusted: &[Cidr]) -> Result<LimitsConfig, ConfigError> {
    let rate = |name| Ok(f.opt(name, parse_rate)?.map(Rate::new));
    let exempt = match f.0.opt_strs("limit-exempt").as_slice() {
        [] => trusted.to_vec(),
        [none] if none == "none" => Vec::new(),
        _ => f.list("limit-exempt", &[], parse_cidr)?,
    };
    Ok(LimitsConfig {
        max_connections_per_ip: f.num("max-connections-per-ip", 1)? as usize,
        max_messages_per_connection: f
            .num("max-messages-per-connection", 1)?
            .min(u32::MAX.into()) as u32,
        rate_ip: rate("rate-limit-ip")?,
        rate_user: rate("rate-limit-user")?,
        rate_rcpt_user: rate("rate-limit-rcpt-user")?,
        exempt,
    })
}

/// A `+proxy` listener takes headers only from `--proxy-from`, and `--proxy-from` is only
/// for `+proxy` listeners: either without the other is a mistake.
fn check_proxy(listen: &[Listener], proxy_from: &[Cidr]) -> Result<(), ConfigError> {
    match (listen.iter().find(|l| l.proxy), proxy_from.is_empty()) {
        (Some(l), true) => Err(bad(
            "listen",
            format!(
                "{}/{}+proxy needs --proxy-from (the balancers' addresses)",
                l.addr,
                l.role.name()
            ),
        )),
        (None, false) => Err(bad(
            "proxy-from",
            "no --listen has the +proxy suffix".into(),
        )),
        _ => Ok(()),
    }
}

fn auth(f: &Flags) -> Result<AuthConfig, ConfigError> {
    Ok(AuthConfig {
        users: f.given("users").map(PathBuf::from),
        sender_domains: f.list("sender-domain", &[], |v| match v.split_once('=') {
            Some((u, d)) if !u.is_empty() && address::is_valid_domain(d) => {
                Ok((u.to_string(), d.to_ascii_lowercase()))
            }
            _ => Err(format!("{v:?} is not USER=DOMAIN")),
        })?,
        max_failures: f.num("auth-max-failures", 1)? as u32,
        lockout: f.dur("auth-lockout")?,
    })
}

/// `--smarthost` and `--route`.
fn routes(f: &Flags) -> Result<RouteTable, ConfigError> {
    let smarthost = f.list("smarthost", &[], |v| parse_host_port(v, 25))?;
    let routes = f.list("route", &[], |v| {
        let (domain, target) = v
            .split_once('=')
            .ok_or_else(|| format!("{v:?} is not DOMAIN=HOST[:PORT]"))?;
        if !address::is_valid_domain(domain) {
            return Err(format!("{domain:?} is not a domain"));
        }
        Ok((address::domain_key(domain), parse_host_port(target, 25)?))
    })?;
    Ok(RouteTable {
        smarthost: smarthost.into(),
        routes: routes.into_iter().collect(),
    })
}

fn delivery(f: &Flags, hostname: &str, smarthost: bool) -> Result<DeliveryConfig, ConfigError> {
    let mx_port = f.num("mx-port", 1)?;
    if mx_port > 65535 {
        return Err(bad("mx-port", "must be at most 65535".into()));
    }
    let smarthost_login = f.pair("smarthost-user", "smarthost-password-file")?;
    if smarthost_login.is_some() && !smarthost {
        return Err(bad("smarthost-user", "needs --smarthost".into()));
    }
    Ok(DeliveryConfig {
        workers: f.num("workers", 1)? as usize,
        hostname: hostname.to_string(),
        mx_port: mx_port as u16,
        connect_timeout: f.positive_dur("connect-timeout")?,
        delivery_timeout: f.opt("delivery-timeout", parse_duration)?,
        tls_outbound: f.choice(
            "tls-outbound",
            &[
                ("may", TlsOutbound::May),
                ("encrypt", TlsOutbound::Encrypt),
                ("verify", TlsOutbound::Verify),
            ],
        )?,
        smarthost_tls: f.choice(
            "smarthost-tls",
            &[
                ("starttls", SmarthostTls::StartTls),
                ("implicit", SmarthostTls::Implicit),
                ("none", SmarthostTls::None),
            ],
        )?,
        smarthost_insecure: f.on("smarthost-insecure"),
        smarthost_login: smarthost_login.map(|(u, file)| (u, PathBuf::from(file))),
        tls_ca_file: f.given("tls-ca-file").map(PathBuf::from),
        messages_per_connection: f.num("dest-messages-per-connection", 1)? as usize,
    })
}

fn sites(f: &Flags, workers: usize) -> Result<SiteConfig, ConfigError> {
    Ok(SiteConfig {
        workers,
        concurrency: f.num("dest-concurrency", 1)? as usize,
        rate: f.opt("dest-rate", parse_rate)?,
        dead_time: Duration::from_secs(60),
        max_dead_time: Duration::from_secs(600),
    })
}

fn scheduler(
    f: &Flags,
    hostname: &str,
    postmaster: &Mailbox,
    routes: Arc<RouteTable>,
) -> Result<SchedulerConfig, ConfigError> {
    let retry = f.durations("retry")?;
    if retry.iter().any(Duration::is_zero) {
        return Err(bad("retry", "delays must be greater than zero".into()));
    }
    Ok(SchedulerConfig {
        hostname: hostname.to_string(),
        postmaster: postmaster.to_string(),
        retry,
        max_queue_lifetime: f.dur("max-queue-lifetime")?,
        routes,
        active_limit: f.num("active-limit", 1)? as usize,
        active_recipients: f.num("active-recipients", 1)? as usize,
    })
}

/// `IP[:PORT]`, port 53 if omitted.
fn parse_dns_server(v: &str) -> Result<SocketAddr, String> {
    v.parse::<SocketAddr>()
        .or_else(|_| v.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{v:?} is not IP[:PORT]"))
}

#[cfg(test)]
mod tests;
