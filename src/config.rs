//! Command-line flags → validated, typed configuration. One table (`FLAGS`) feeds getopts,
//! `--help` and the defaults; one function per module (`server`, `auth`, `delivery`, `sites`,
//! `scheduler`, `routes`) reads the flags into that module's own config, and [`Config`] holds
//! them. Every error names its flag. Nothing reads flags after start-up.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::AuthConfig;
use crate::delivery::DeliveryConfig;
use crate::delivery::flow::InFlowConfig;
use crate::delivery::route::RouteTable;
use crate::delivery::scheduler::SchedulerConfig;
use crate::delivery::sites::SiteConfig;
use crate::server::ServerConfig;
use crate::smtp::address::{self, Mailbox};
use crate::transform::TransformConfig;

pub struct FlagDef {
    pub long: &'static str,
    pub short: &'static str,
    /// Empty for switches.
    pub hint: &'static str,
    pub help: &'static str,
    /// Shown in --help; `None` for switches and computed defaults explained in `help`.
    pub default: Option<&'static str>,
    pub multi: bool,
}

const fn opt(
    long: &'static str,
    hint: &'static str,
    help: &'static str,
    default: Option<&'static str>,
) -> FlagDef {
    FlagDef {
        long,
        short: "",
        hint,
        help,
        default,
        multi: false,
    }
}
const fn switch(long: &'static str, help: &'static str) -> FlagDef {
    FlagDef {
        long,
        short: "",
        hint: "",
        help,
        default: None,
        multi: false,
    }
}
const fn multi(
    long: &'static str,
    hint: &'static str,
    help: &'static str,
    default: Option<&'static str>,
) -> FlagDef {
    FlagDef {
        long,
        short: "",
        hint,
        help,
        default,
        multi: true,
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:2525";

pub static FLAGS: &[FlagDef] = &[
    multi(
        "listen",
        "ADDR:PORT[/ROLE]",
        "Accept SMTP here (repeatable; IPv6 as [::1]:2525). ROLE: smtp (relay port), submission \
         (STARTTLS, AUTH required), smtps (implicit TLS, AUTH required)",
        Some(DEFAULT_LISTEN),
    ),
    opt(
        "hostname",
        "NAME",
        "Name used in the greeting, EHLO, Received: and DSNs",
        Some("the system host name"),
    ),
    opt(
        "spool",
        "DIR",
        "Queue directory",
        Some("/var/spool/mxrelay as root, else ~/.local/state/mxrelay"),
    ),
    multi(
        "smarthost",
        "HOST[:PORT]",
        "Send all mail through this host instead of MX lookups (port 25 if omitted); \
         repeatable: tried in order, the next when one is down",
        None,
    ),
    multi(
        "route",
        "DOMAIN=HOST[:PORT]",
        "Send mail for DOMAIN to HOST (repeatable; like a transport map)",
        None,
    ),
    multi(
        "trusted-network",
        "CIDR",
        "Clients allowed to relay (repeatable)",
        Some("127.0.0.0/8 and ::1/128"),
    ),
    opt(
        "postmaster",
        "ADDRESS",
        "Where mail to <postmaster> and copies of double bounces go",
        Some("postmaster@HOSTNAME"),
    ),
    opt("workers", "N", "Delivery threads", Some("4")),
    opt(
        "in-flow-backlog",
        "N",
        "Messages that may wait for their first delivery attempt before clients are slowed",
        Some("1000"),
    ),
    opt(
        "in-flow-delay",
        "DURATION",
        "How long a client's MAIL waits for delivery to catch up past that backlog (0: never)",
        Some("1s"),
    ),
    opt(
        "active-limit",
        "N",
        "Queued messages held in memory for delivery at once; the rest wait on disk",
        Some("10000"),
    ),
    opt(
        "dest-concurrency",
        "N",
        "Deliveries in flight to one destination at most (it starts lower and grows on success)",
        Some("20"),
    ),
    opt(
        "dest-rate",
        "N/PERIOD",
        "Deliveries to one destination at most per period, e.g. 600/h, 10/s",
        Some("no limit"),
    ),
    opt(
        "dest-messages-per-connection",
        "N",
        "Messages sent over one connection before it is closed",
        Some("100"),
    ),
    opt(
        "max-connections",
        "N",
        "Concurrent SMTP clients; more get 421",
        Some("100"),
    ),
    opt(
        "max-message-size",
        "BYTES",
        "Largest message accepted (K, M, G suffixes allowed)",
        Some("25M"),
    ),
    opt(
        "max-recipients",
        "N",
        "Recipients per message",
        Some("1000"),
    ),
    opt(
        "max-errors",
        "N",
        "Bad commands per connection before 421 and disconnect",
        Some("10"),
    ),
    opt(
        "max-line-length",
        "BYTES",
        "Longest SMTP command line",
        Some("2048"),
    ),
    opt(
        "max-hops",
        "N",
        "Refuse mail whose hop count (Received: headers, ours included) exceeds N: a loop",
        Some("50"),
    ),
    opt(
        "idle-timeout",
        "DURATION",
        "Close an SMTP client that sends nothing for this long",
        Some("5m"),
    ),
    opt(
        "retry",
        "LIST",
        "Delays between delivery attempts, the last one repeats (+/-10% jitter)",
        Some("1m,5m,15m,30m,1h,2h,4h"),
    ),
    opt(
        "max-queue-lifetime",
        "DURATION",
        "Bounce what is still undelivered after this long",
        Some("5d"),
    ),
    opt(
        "connect-timeout",
        "DURATION",
        "Timeout for connecting to a next hop",
        Some("30s"),
    ),
    opt(
        "delivery-timeout",
        "DURATION",
        "Cap on each client-side SMTP timeout (RFC 5321 4.5.3.2 values otherwise)",
        None,
    ),
    multi(
        "dns-server",
        "IP[:PORT]",
        "DNS server for MX lookups (repeatable)",
        Some("from /etc/resolv.conf"),
    ),
    opt(
        "mx-port",
        "PORT",
        "Port used to connect to MX hosts (for labs and tests)",
        Some("25"),
    ),
    opt(
        "shutdown-grace",
        "DURATION",
        "On SIGTERM/SIGINT, how long in-flight sessions may finish",
        Some("10s"),
    ),
    opt(
        "tls-cert",
        "FILE",
        "Server certificate chain (PEM), reloaded on SIGHUP and when it changes",
        Some("self-signed, generated into the spool when TLS is needed"),
    ),
    opt(
        "tls-key",
        "FILE",
        "Private key for --tls-cert (PEM: PKCS#8, RSA or EC)",
        None,
    ),
    opt(
        "tls-handshake-timeout",
        "DURATION",
        "Time a client gets to finish the TLS handshake",
        Some("30s"),
    ),
    opt(
        "users",
        "FILE",
        "Accounts for SMTP AUTH: user:hash[:domain,...] per line (bcrypt $2y$ or SHA-512 $6$)",
        None,
    ),
    multi(
        "sender-domain",
        "USER=DOMAIN",
        "Envelope sender domains USER may use (repeatable; default any)",
        None,
    ),
    switch(
        "plaintext-auth-loopback",
        "Allow AUTH without TLS from loopback clients",
    ),
    opt(
        "auth-fail-delay",
        "DURATION",
        "Pause before answering a failed AUTH",
        Some("1s"),
    ),
    opt(
        "auth-max-failures",
        "N",
        "Failed AUTH attempts from one address before 421 and lockout",
        Some("5"),
    ),
    opt(
        "auth-lockout",
        "DURATION",
        "Window for counting failures, and the lockout after them",
        Some("10m"),
    ),
    opt(
        "tls-outbound",
        "may|encrypt|verify",
        "TLS to MX hosts and routes: opportunistic, required, or required and verified",
        Some("may"),
    ),
    opt(
        "smarthost-tls",
        "starttls|implicit|none",
        "TLS to the smarthost (certificate verified unless --smarthost-insecure)",
        Some("starttls"),
    ),
    switch(
        "smarthost-insecure",
        "Do not verify the smarthost's certificate",
    ),
    opt(
        "smarthost-user",
        "USER",
        "Log in to the smarthost as USER",
        None,
    ),
    opt(
        "smarthost-password-file",
        "FILE",
        "File holding the smarthost password (or API key)",
        None,
    ),
    opt(
        "tls-ca-file",
        "FILE",
        "Extra CA certificate (PEM) trusted when verifying next hops",
        None,
    ),
    multi(
        "add-header",
        "\"NAME: VALUE\"",
        "Add this header field to every message (repeatable)",
        None,
    ),
    multi(
        "remove-header",
        "NAME",
        "Remove header fields of this name from every message, any case (repeatable)",
        None,
    ),
    opt(
        "max-header-size",
        "BYTES",
        "Largest header section held while transforms run (header rules, DKIM); larger gets 552 5.3.4",
        Some("256K"),
    ),
    multi(
        "dkim",
        "DOMAIN:SELECTOR:KEYFILE",
        "Sign mail whose From: is in DOMAIN (or a subdomain) with this key (PEM, RSA or Ed25519; repeatable)",
        None,
    ),
    opt(
        "events",
        "FILE",
        "Write one JSON line per message event to FILE (- for standard output)",
        None,
    ),
    opt(
        "metrics-listen",
        "ADDR:PORT",
        "Serve Prometheus metrics at http://ADDR:PORT/metrics",
        None,
    ),
    opt(
        "user",
        "NAME",
        "After binding the listeners, switch to this user (and its group)",
        None,
    ),
    FlagDef {
        long: "verbose",
        short: "v",
        hint: "",
        help: "Debug logging (RUST_LOG overrides)",
        default: None,
        multi: false,
    },
    FlagDef {
        long: "help",
        short: "h",
        hint: "",
        help: "Show this help",
        default: None,
        multi: false,
    },
    FlagDef {
        long: "version",
        short: "V",
        hint: "",
        help: "Show the version",
        default: None,
        multi: false,
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Relay port: trusted networks or authenticated clients may relay; STARTTLS offered
    /// when a certificate is configured.
    Smtp,
    /// Message submission (RFC 6409): STARTTLS, AUTH required before MAIL.
    Submission,
    /// Implicit TLS submission (RFC 8314), AUTH required.
    Smtps,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Smtp => "smtp",
            Role::Submission => "submission",
            Role::Smtps => "smtps",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub role: Role,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsOutbound {
    May,
    Encrypt,
    Verify,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmarthostTls {
    StartTls,
    Implicit,
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Everything the relay runs with: the flags, validated and already shaped into the config of
/// each module that takes one. Built once by [`parse_args`]; nothing reads flags after start-up.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<Listener>,
    pub hostname: String,
    pub spool: PathBuf,
    pub server: ServerConfig,
    /// Certificate chain and key files (`--tls-cert`, `--tls-key`).
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    pub sites: SiteConfig,
    pub scheduler: SchedulerConfig,
    pub in_flow: InFlowConfig,
    pub transforms: TransformConfig,
    /// Empty: the servers of /etc/resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    pub events: Option<String>,
    pub metrics_listen: Option<SocketAddr>,
    pub user: Option<String>,
    pub shutdown_grace: Duration,
    pub verbose: bool,
}

#[derive(Debug)]
pub enum Parsed {
    Run(Box<Config>),
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

fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    for f in FLAGS {
        match (f.hint.is_empty(), f.multi) {
            (true, _) => o.optflag(f.short, f.long, f.help),
            (false, true) => o.optmulti(f.short, f.long, f.help, f.hint),
            (false, false) => o.optopt(f.short, f.long, f.help, f.hint),
        };
    }
    o
}

pub fn usage() -> String {
    let mut s = String::from(
        "Usage: mxrelay [FLAGS]\n       mxrelay hash-password   (reads a password on stdin, prints a bcrypt hash for --users)\n\nmxrelay accepts mail over SMTP, queues it durably and delivers it to the recipients' MX hosts\n\
         or through a smarthost, with retries and bounces.\n\nFlags:\n",
    );
    for f in FLAGS {
        let short = if f.short.is_empty() {
            "    ".to_string()
        } else {
            format!("-{}, ", f.short)
        };
        let head = format!("  {short}--{} {}", f.long, f.hint);
        s.push_str(&format!("{head:<44} {}", f.help));
        if let Some(d) = f.default {
            s.push_str(&format!(" [default: {d}]"));
        }
        s.push('\n');
    }
    s.push_str("\nDurations take s, m, h or d suffixes (ms too), e.g. 30s, 5m, 5d.\nLog level: RUST_LOG (error, warn, info, debug, trace).\n");
    s
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
    let f = Flags(m);
    let listen = f.list("listen", &[DEFAULT_LISTEN], parse_listener)?;
    let hostname = hostname(&f)?;
    let spool = match f.given("spool") {
        Some(s) if s.is_empty() => return Err(bad("spool", "empty path".into())),
        Some(s) => PathBuf::from(s),
        None => default_spool(),
    };
    let postmaster = match f.given("postmaster") {
        Some(p) => Mailbox::parse(&p).map_err(|e| bad("postmaster", format!("{p:?}: {e}")))?,
        None => Mailbox {
            local: "postmaster".into(),
            domain: hostname.clone(),
        },
    };
    let routes = Arc::new(routes(&f)?);
    let delivery = delivery(&f, &hostname, !routes.smarthost.is_empty())?;
    let config = Config {
        server: server(&f, &hostname, &postmaster)?,
        tls_cert: f
            .pair("tls-cert", "tls-key")?
            .map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
        auth: auth(&f)?,
        sites: sites(&f, delivery.workers)?,
        delivery,
        scheduler: scheduler(&f, &hostname, &postmaster, routes)?,
        in_flow: InFlowConfig {
            backlog: f.num("in-flow-backlog", 1)? as usize,
            delay: f.dur("in-flow-delay")?,
        },
        transforms: transforms(&f)?,
        dns_servers: f.list("dns-server", &[], parse_dns_server)?,
        events: f.given("events"),
        metrics_listen: f.opt("metrics-listen", |v| {
            v.parse().map_err(|_| format!("{v:?} is not ADDR:PORT"))
        })?,
        user: f.given("user"),
        shutdown_grace: f.dur("shutdown-grace")?,
        verbose: f.on("verbose"),
        listen,
        hostname,
        spool,
    };
    Ok(Parsed::Run(Box::new(config)))
}

/// getopts' matches, read as the flag table says: a flag not given takes its `[default]`.
struct Flags(getopts::Matches);

fn bad(name: &str, why: String) -> ConfigError {
    ConfigError(format!("--{name}: {why}"))
}

impl Flags {
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

fn transforms(f: &Flags) -> Result<TransformConfig, ConfigError> {
    Ok(TransformConfig {
        add_headers: f.list("add-header", &[], crate::transform::headers::parse_added)?,
        remove_headers: f.list(
            "remove-header",
            &[],
            crate::transform::headers::parse_removed,
        )?,
        max_header_size: f.size("max-header-size", 1024)? as usize,
        dkim: f.list("dkim", &[], crate::transform::dkim::parse_spec)?,
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
    Ok(ServerConfig {
        hostname: hostname.to_string(),
        trusted: f.list("trusted-network", &["127.0.0.0/8", "::1/128"], parse_cidr)?,
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
    let retry = f
        .value("retry")
        .split(',')
        .map(|s| parse_duration(s.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("retry", e))?;
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
    })
}

/// `IP[:PORT]`, port 53 if omitted.
fn parse_dns_server(v: &str) -> Result<SocketAddr, String> {
    v.parse::<SocketAddr>()
        .or_else(|_| v.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{v:?} is not IP[:PORT]"))
}

pub fn default_spool() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    match std::env::var_os("HOME") {
        Some(home) if !root => PathBuf::from(home).join(".local/state/mxrelay"),
        _ => PathBuf::from("/var/spool/mxrelay"),
    }
}

/// `ADDR:PORT[/ROLE]`.
pub fn parse_listener(s: &str) -> Result<Listener, String> {
    let (addr, role) = match s.rsplit_once('/') {
        Some((a, r)) => (a, r),
        None => (s, "smtp"),
    };
    let role = match role {
        "smtp" => Role::Smtp,
        "submission" => Role::Submission,
        "smtps" => Role::Smtps,
        other => return Err(format!("{other:?} is not a role (smtp, submission, smtps)")),
    };
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not ADDR:PORT[/ROLE]"))?;
    Ok(Listener { addr, role })
}

/// `N/PERIOD`: a count per `s`, `m`, `h`, `d` or any duration (`600/h`, `5/10s`).
pub fn parse_rate(v: &str) -> Result<(u32, Duration), String> {
    let (n, period) = v
        .split_once('/')
        .ok_or_else(|| format!("{v:?} is not N/PERIOD"))?;
    let n: u32 = n
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{n:?} is not a positive count"))?;
    let period = match period {
        "s" | "m" | "h" | "d" => parse_duration(&format!("1{period}"))?,
        p => parse_duration(p)?,
    };
    if period.is_zero() {
        return Err("the period must be longer than zero".into());
    }
    Ok((n, period))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 2h, 5d"))?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => None,
    };
    d.ok_or_else(|| format!("{s:?} is not a duration like 30s, 5m, 2h, 5d"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a size like 10485760, 512K, 25M"))
}

pub fn parse_host_port(s: &str, default_port: u16) -> Result<HostPort, String> {
    let err = || format!("{s:?} is not HOST[:PORT]");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(err)?;
        match after.strip_prefix(':') {
            Some(p) => (h, p.parse::<u16>().map_err(|_| err())?),
            None if after.is_empty() => (h, default_port),
            None => return Err(err()),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p.parse::<u16>().map_err(|_| err())?),
            Some(_) if s.parse::<IpAddr>().is_ok() => (s, default_port),
            Some(_) => return Err(err()),
            None => (s, default_port),
        }
    };
    if port == 0 || (host.parse::<IpAddr>().is_err() && !address::is_valid_domain(host)) {
        return Err(err());
    }
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let err = || format!("{s:?} is not an address or CIDR like 192.0.2.0/24");
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (
            ip.parse::<IpAddr>().map_err(|_| err())?,
            Some(p.parse::<u8>().map_err(|_| err())?),
        ),
        None => (s.parse::<IpAddr>().map_err(|_| err())?, None),
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return Err(err());
    }
    Ok(Cidr { addr: ip, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse_args(&args)? {
            Parsed::Run(c) => Ok(*c),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn delivery_shaping_flags() {
        let c = run(&[
            "--hostname",
            "relay.test",
            "--smarthost",
            "a.test",
            "--smarthost",
            "b.test:587",
            "--dest-rate",
            "600/h",
            "--dest-concurrency",
            "3",
            "--active-limit",
            "50",
        ])
        .unwrap();
        let hosts: Vec<_> = c
            .scheduler
            .routes
            .smarthost
            .iter()
            .map(|h| (h.host.as_str(), h.port))
            .collect();
        assert_eq!(
            hosts,
            [("a.test", 25), ("b.test", 587)],
            "in the order given"
        );
        assert_eq!(c.sites.rate, Some((600, Duration::from_secs(3600))));
        assert_eq!((c.sites.concurrency, c.scheduler.active_limit), (3, 50));
        assert_eq!(parse_rate("5/10s"), Ok((5, Duration::from_secs(10))));
        assert_eq!(parse_rate("10/d"), Ok((10, Duration::from_secs(86400))));
    }

    #[test]
    fn defaults() {
        let c = run(&["--hostname", "relay.test"]).unwrap();
        assert_eq!(
            c.listen,
            vec![Listener {
                addr: "127.0.0.1:2525".parse().unwrap(),
                role: Role::Smtp
            }]
        );
        assert_eq!(c.delivery.tls_outbound, TlsOutbound::May);
        assert_eq!(c.delivery.smarthost_tls, SmarthostTls::StartTls);
        assert_eq!(c.server.postmaster.to_string(), "postmaster@relay.test");
        assert_eq!(c.scheduler.retry.len(), 7);
        assert_eq!(
            c.scheduler.max_queue_lifetime,
            Duration::from_secs(5 * 86400)
        );
        assert_eq!(
            (c.in_flow.backlog, c.in_flow.delay),
            (1000, Duration::from_secs(1))
        );
        let off = run(&["--hostname", "relay.test", "--in-flow-delay", "0s"]).unwrap();
        assert!(off.in_flow.delay.is_zero());
        assert_eq!(
            (c.scheduler.active_limit, c.sites.concurrency, c.sites.rate),
            (10_000, 20, None)
        );
        assert_eq!(c.delivery.messages_per_connection, 100);
        assert!(c.scheduler.routes.smarthost.is_empty());
        assert!(
            c.server
                .trusted
                .iter()
                .any(|n| n.contains("127.0.0.9".parse().unwrap()))
        );
        assert!(
            c.server
                .trusted
                .iter()
                .any(|n| n.contains("::1".parse().unwrap()))
        );
        assert!(
            !c.server
                .trusted
                .iter()
                .any(|n| n.contains("192.0.2.1".parse().unwrap()))
        );
    }

    #[test]
    fn errors_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--listen", "nope"], "--listen"),
            (&["--listen", "127.0.0.1:25/bogus"], "--listen"),
            (&["--tls-cert", "c.pem"], "--tls-cert"),
            (&["--smarthost-user", "u"], "--smarthost-user"),
            (
                &["--smarthost-user", "u", "--smarthost-password-file", "f"],
                "needs --smarthost",
            ),
            (&["--tls-outbound", "always"], "--tls-outbound"),
            (&["--smarthost-tls", "ssl"], "--smarthost-tls"),
            (&["--dest-rate", "10"], "--dest-rate"),
            (&["--dest-rate", "0/h"], "--dest-rate"),
            (&["--dest-rate", "5/0s"], "--dest-rate"),
            (&["--active-limit", "0"], "--active-limit"),
            (&["--sender-domain", "alice"], "--sender-domain"),
            (&["--retry", "1m,x"], "--retry"),
            (&["--retry", "0s"], "--retry"),
            (&["--workers", "0"], "--workers"),
            (&["--in-flow-backlog", "0"], "--in-flow-backlog"),
            (&["--in-flow-delay", "soon"], "--in-flow-delay"),
            (&["--smarthost", "a b"], "--smarthost"),
            (&["--route", "example.test"], "--route"),
            (&["--trusted-network", "10.0.0.0/33"], "--trusted-network"),
            (&["--max-message-size", "12Q"], "--max-message-size"),
            (&["--dns-server", "x"], "--dns-server"),
            (&["--bogus"], "bogus"),
            (&["stray"], "stray"),
        ];
        for (args, want) in cases {
            let e = run(args).unwrap_err();
            assert!(e.0.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn listener_roles() {
        let l = |s| parse_listener(s).unwrap();
        assert_eq!(l("127.0.0.1:25").role, Role::Smtp);
        assert_eq!(l("0.0.0.0:587/submission").role, Role::Submission);
        assert_eq!(
            l("[::1]:465/smtps"),
            Listener {
                addr: "[::1]:465".parse().unwrap(),
                role: Role::Smtps
            }
        );
        assert!(parse_listener("127.0.0.1:25/").is_err());
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432000)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("5w").is_err()
                && parse_duration("").is_err()
                && parse_duration("m").is_err()
        );
        assert_eq!(parse_size("25M"), Ok(25 << 20));
        assert_eq!(
            parse_host_port("smtp.test", 25),
            Ok(HostPort {
                host: "smtp.test".into(),
                port: 25
            })
        );
        assert_eq!(
            parse_host_port("smtp.test:587", 25),
            Ok(HostPort {
                host: "smtp.test".into(),
                port: 587
            })
        );
        assert_eq!(
            parse_host_port("[::1]:2526", 25),
            Ok(HostPort {
                host: "::1".into(),
                port: 2526
            })
        );
        assert_eq!(
            parse_host_port("::1", 25),
            Ok(HostPort {
                host: "::1".into(),
                port: 25
            })
        );
        assert!(parse_host_port("h:0", 25).is_err());
        let net = parse_cidr("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.1".parse().unwrap()));
        assert!(
            parse_cidr("fd00::/8")
                .unwrap()
                .contains("fdab::1".parse().unwrap())
        );
        assert!(
            parse_cidr("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn help_lists_every_flag_with_defaults() {
        let u = usage();
        for f in FLAGS {
            assert!(u.contains(&format!("--{}", f.long)), "{}", f.long);
            if let Some(d) = f.default {
                assert!(u.contains(d), "{d}");
            }
        }
    }
}
