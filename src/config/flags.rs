//! The one flag table (`FLAGS`): getopts' options, `--help` and the defaults all come from
//! it.

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

pub const fn opt(
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
pub const fn switch(long: &'static str, help: &'static str) -> FlagDef {
    FlagDef {
        long,
        short: "",
        hint: "",
        help,
        default: None,
        multi: false,
    }
}
pub const fn multi(
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
        "ADDR:PORT[/ROLE[+proxy]]",
        "Accept SMTP here (repeatable; IPv6 as [::1]:2525). ROLE: smtp (relay port), submission \
         (STARTTLS, AUTH required), smtps (implicit TLS, AUTH required); ROLE+proxy: behind a \
         load balancer speaking the PROXY protocol (v1 or v2), see --proxy-from",
        Some(DEFAULT_LISTEN),
    ),
    multi(
        "proxy-from",
        "CIDR",
        "Load balancers allowed to connect to +proxy listeners and name the real client in a \
         PROXY header (repeatable); connections from elsewhere are closed",
        None,
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
    opt(
        "min-free-space",
        "BYTES|N%",
        "Refuse new mail (452 4.3.1 at MAIL) while less than this is free on the spool's \
         filesystem, keeping room to deliver and bounce what is queued; 0 turns it off",
        Some("64M"),
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
        "active-recipients",
        "N",
        "Recipients of the messages held in memory, at most (a message with more is taken alone)",
        Some("100000"),
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
        "max-connections-per-ip",
        "N",
        "Concurrent SMTP clients from one address (IPv6: one /64) outside --limit-exempt; \
         more get 421",
        Some("20"),
    ),
    opt(
        "max-messages-per-connection",
        "N",
        "Messages (accepted MAIL commands) per connection from clients outside --limit-exempt; \
         the next MAIL gets 421 and the connection closes",
        Some("1000"),
    ),
    opt(
        "rate-limit-ip",
        "N/PERIOD",
        "Messages per client address (IPv6: one /64) outside --limit-exempt, e.g. 600/h; \
         more get 450 at MAIL",
        Some("no limit"),
    ),
    opt(
        "rate-limit-user",
        "N/PERIOD",
        "Messages per authenticated user, e.g. 10000/d; more get 450 at MAIL",
        Some("no limit"),
    ),
    opt(
        "rate-limit-rcpt-user",
        "N/PERIOD",
        "Recipients per authenticated user, e.g. 5000/h; more get 450 at RCPT",
        Some("no limit"),
    ),
    multi(
        "limit-exempt",
        "CIDR|none",
        "Clients spared --max-connections-per-ip, --max-messages-per-connection and \
         --rate-limit-ip (repeatable; none: nobody)",
        Some("the --trusted-network networks"),
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
        "Time a client gets for the whole TLS handshake (and a balancer to send its PROXY header)",
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
        "suppress-bounces",
        "DURATION",
        "Put recipients whose mailbox does not exist (5.1.1-style hard bounces) on the \
         suppression list for this long; 0: never",
        Some("30d"),
    ),
    opt(
        "tracking-url",
        "URL",
        "Public base URL of the tracking and unsubscribe endpoint, e.g. https://t.example.com",
        None,
    ),
    multi(
        "tracking-secret-file",
        "FILE",
        "Key that signs tracking tokens: the file's contents, one trailing newline trimmed \
         (repeatable: the first signs, all verify, for key rotation)",
        None,
    ),
    opt(
        "tracking-listen",
        "ADDR:PORT",
        "Serve the tracking and unsubscribe links here (plain HTTP; may equal --metrics-listen)",
        None,
    ),
    opt(
        "tracking-max-connections",
        "N",
        "Requests answered at once by that endpoint; more get 503",
        Some("256"),
    ),
    opt(
        "track",
        "clicks,opens|none",
        "Track clicks and/or opens in the HTML of mail from trusted and authenticated clients \
         (X-MxRelay-Track overrides per message)",
        Some("none"),
    ),
    multi(
        "track-exclude",
        "DOMAIN",
        "Never track links to this domain or its subdomains (repeatable)",
        None,
    ),
    FlagDef {
        long: "unsubscribe",
        short: "",
        hint: "",
        help: "Add one-click List-Unsubscribe fields (RFC 8058) to each recipient's copy \
               (X-MxRelay-Unsubscribe: yes|no overrides per message)",
        default: None,
        multi: false,
    },
    opt(
        "unsubscribe-mailto",
        "ADDRESS",
        "Also offer this mailto: address in List-Unsubscribe",
        None,
    ),
    opt(
        "suppression-store",
        "redis://HOST:PORT/N",
        "Share the suppression list with other instances through this Redis database; each \
         keeps a copy in its spool, which decides while Redis is unreachable",
        Some("the spool's own list"),
    ),
    opt(
        "events",
        "FILE",
        "Write one JSON line per message event to FILE (- for standard output)",
        None,
    ),
    multi(
        "webhook",
        "URL",
        "POST every event, in signed JSON batches, to this http(s) URL (repeatable; needs --webhook-secret-file)",
        None,
    ),
    opt(
        "webhook-secret-file",
        "FILE",
        "Key for the webhooks' HMAC-SHA256 signature: the file's contents, one trailing newline trimmed",
        None,
    ),
    opt(
        "webhook-max-age",
        "DURATION",
        "Retry a webhook's events this long, then drop them",
        Some("3d"),
    ),
    opt(
        "webhook-max-backlog",
        "BYTES",
        "Events kept on disk per webhook while its receiver is down; newer ones are dropped past it",
        Some("1G"),
    ),
    opt(
        "webhook-retry",
        "FIRST,MAX",
        "Delay after a failed webhook POST, doubling up to MAX",
        Some("5s,10m"),
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
        long: "print-config",
        short: "",
        hint: "",
        help: "Print the effective configuration as the flags that reproduce it, then exit",
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

pub(super) fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    add(&mut o, FLAGS);
    o
}

pub(super) fn add(o: &mut getopts::Options, flags: &[FlagDef]) {
    for f in flags {
        match (f.hint.is_empty(), f.multi) {
            (true, _) => o.optflag(f.short, f.long, f.help),
            (false, true) => o.optmulti(f.short, f.long, f.help, f.hint),
            (false, false) => o.optopt(f.short, f.long, f.help, f.hint),
        };
    }
}

pub fn usage() -> String {
    let mut s = String::from(
        "Usage: mxrelay [FLAGS]\n       mxrelay hash-password   (reads a password on stdin, prints a bcrypt hash for --users)\n       mxrelay queue|suppression ...   (see mxrelay queue --help, mxrelay suppression --help)\n       mxrelay check DOMAIN [FLAGS]   (deliverability: SPF, DKIM, DMARC, MX, PTR; see mxrelay check --help)\n\nmxrelay accepts mail over SMTP, queues it durably and delivers it to the recipients' MX hosts\n\
         or through a smarthost, with retries and bounces.\n\nFlags:\n",
    );
    s.push_str(&describe(FLAGS));
    s.push_str("\nDurations take s, m, h or d suffixes (ms too), e.g. 30s, 5m, 5d.\nLog level: RUST_LOG (error, warn, info, debug, trace).\n");
    s
}

/// One line per flag: name, value hint, help and default.
pub fn describe(flags: &[FlagDef]) -> String {
    let mut s = String::new();
    for f in flags {
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
    s
}
