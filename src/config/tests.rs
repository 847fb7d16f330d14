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
            role: Role::Smtp,
            proxy: false,
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
    assert_eq!(c.scheduler.active_recipients, 100_000);
    assert_eq!(c.delivery.messages_per_connection, 100);
    assert_eq!(
        c.suppression.bounce_expiry,
        Some(Duration::from_secs(30 * 86400))
    );
    let off = run(&["--hostname", "relay.test", "--suppress-bounces", "0"]).unwrap();
    assert_eq!(off.suppression.bounce_expiry, None);
    assert_eq!(c.suppression.store, None);
    let shared = run(&["--suppression-store", "redis://:pw@10.0.0.5:6380/2"]).unwrap();
    let store = shared.suppression.store.unwrap();
    assert_eq!(store.to_string(), "redis://10.0.0.5:6380/2");
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
fn limit_flags() {
    use crate::limits::Rate;
    let c = run(&["--hostname", "relay.test"]).unwrap();
    let l = &c.server.limits;
    assert_eq!(
        (l.max_connections_per_ip, l.max_messages_per_connection),
        (20, 1000)
    );
    assert_eq!(
        (l.rate_ip, l.rate_user, l.rate_rcpt_user),
        (None, None, None)
    );
    assert_eq!(l.exempt, c.server.trusted, "exempt: the trusted networks");
    let c = run(&[
        "--trusted-network",
        "10.0.0.0/8",
        "--rate-limit-ip",
        "600/h",
        "--rate-limit-user",
        "10000/d",
        "--rate-limit-rcpt-user",
        "5/10s",
        "--max-connections-per-ip",
        "3",
        "--max-messages-per-connection",
        "50",
    ])
    .unwrap();
    let l = &c.server.limits;
    let rate = |count, secs| {
        Some(Rate {
            count,
            period: Duration::from_secs(secs),
        })
    };
    assert_eq!(
        (l.rate_ip, l.rate_user, l.rate_rcpt_user),
        (rate(600, 3600), rate(10000, 86400), rate(5, 10))
    );
    assert_eq!(
        (l.max_connections_per_ip, l.max_messages_per_connection),
        (3, 50)
    );
    assert_eq!(l.exempt, vec![parse_cidr("10.0.0.0/8").unwrap()]);
    let none = run(&["--limit-exempt", "none"]).unwrap();
    assert!(none.server.limits.exempt.is_empty());
    let some = run(&["--limit-exempt", "192.0.2.0/24", "--limit-exempt", "::1"]).unwrap();
    assert_eq!(some.server.limits.exempt.len(), 2);
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
        (&["--rate-limit-ip", "600"], "--rate-limit-ip"),
        (&["--rate-limit-user", "0/d"], "--rate-limit-user"),
        (
            &["--rate-limit-rcpt-user", "5/soon"],
            "--rate-limit-rcpt-user",
        ),
        (
            &["--max-connections-per-ip", "0"],
            "--max-connections-per-ip",
        ),
        (
            &["--max-messages-per-connection", "x"],
            "--max-messages-per-connection",
        ),
        (&["--limit-exempt", "10.0.0.0/99"], "--limit-exempt"),
        (&["--active-limit", "0"], "--active-limit"),
        (&["--active-recipients", "0"], "--active-recipients"),
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
        (
            &["--add-header", "X-Env: prod\r\nBcc: spy@evil.test"],
            "--add-header: header X-Env: the value must not contain a line break",
        ),
        (&["--add-header", "no colon"], "--add-header"),
        (&["--remove-header", "User Agent"], "--remove-header"),
        (
            &["--max-header-size", "10"],
            "--max-header-size: must be at least 1024",
        ),
        (&["--dkim", "example.com:sel"], "--dkim"),
        (&["--suppress-bounces", "a month"], "--suppress-bounces"),
        (
            &["--suppression-store", "rediss://h.test/0"],
            "--suppression-store: \"rediss://h.test/0\": only redis://",
        ),
        (
            &["--suppression-store", "redis://h.test/db"],
            "--suppression-store",
        ),
        (
            &["--webhook", "http://h.test/"],
            "needs --webhook-secret-file",
        ),
        (&["--webhook-secret-file", "k"], "needs --webhook"),
        (
            &["--webhook", "ftp://h.test/", "--webhook-secret-file", "k"],
            "--webhook",
        ),
        (
            &["--webhook", "https:///x", "--webhook-secret-file", "k"],
            "--webhook",
        ),
        (
            &[
                "--webhook",
                "http://h.test/",
                "--webhook",
                "http://h.test/",
                "--webhook-secret-file",
                "k",
            ],
            "given twice",
        ),
        (&["--webhook-retry", "5s"], "--webhook-retry"),
        (&["--webhook-retry", "1m,5s"], "--webhook-retry"),
        (&["--webhook-max-age", "0s"], "--webhook-max-age"),
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
            role: Role::Smtps,
            proxy: false,
        }
    );
    assert!(parse_listener("127.0.0.1:25/").is_err());
    // A role ending in +proxy: a PROXY header comes first.
    for (s, role) in [
        ("0.0.0.0:25/smtp+proxy", Role::Smtp),
        ("0.0.0.0:587/submission+proxy", Role::Submission),
        ("[::]:465/smtps+proxy", Role::Smtps),
    ] {
        assert_eq!((l(s).role, l(s).proxy), (role, true), "{s}");
    }
    assert!(!l("0.0.0.0:25/smtp").proxy);
    for bad in [
        "0.0.0.0:25/+proxy",
        "0.0.0.0:25/proxy",
        "0.0.0.0:25/smtp+proxy+proxy",
    ] {
        assert!(parse_listener(bad).is_err(), "{bad}");
    }
}

#[test]
fn proxy_listeners_need_proxy_from_and_the_other_way_round() {
    let c = run(&[
        "--hostname",
        "relay.test",
        "--listen",
        "127.0.0.1:2525/smtp+proxy",
        "--listen",
        "127.0.0.1:2526",
        "--proxy-from",
        "10.0.0.0/8",
        "--proxy-from",
        "2001:db8::/32",
    ])
    .unwrap();
    assert_eq!(
        c.listen.iter().map(|l| l.proxy).collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(c.server.proxy_from.len(), 2);
    let plain = run(&["--hostname", "relay.test"]).unwrap();
    assert!(plain.server.proxy_from.is_empty());
    let cases: [(&[&str], &str); 3] = [
        (
            &["--listen", "127.0.0.1:25/submission+proxy"],
            "--listen: 127.0.0.1:25/submission+proxy needs --proxy-from",
        ),
        (
            &["--proxy-from", "10.0.0.0/8"],
            "--proxy-from: no --listen has the +proxy suffix",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:25/smtp+proxy",
                "--proxy-from",
                "10.0.0.0/33",
            ],
            "--proxy-from: \"10.0.0.0/33\"",
        ),
    ];
    for (args, want) in cases {
        let args = [&["--hostname", "relay.test"], args].concat();
        let e = run(&args).unwrap_err();
        assert!(e.0.contains(want), "{args:?}: {e}");
    }
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
fn webhook_flags() {
    let c = run(&["--hostname", "relay.test"]).unwrap();
    assert!(c.webhooks.urls.is_empty());
    assert_eq!(c.webhooks.max_age, Duration::from_secs(3 * 86400));
    assert_eq!(c.webhooks.max_backlog, 1 << 30);
    assert_eq!(
        c.webhooks.retry,
        (Duration::from_secs(5), Duration::from_secs(600))
    );
    let c = run(&[
        "--hostname",
        "relay.test",
        "--webhook",
        "https://hooks.example/in?token=x",
        "--webhook",
        "http://127.0.0.1:8080/",
        "--webhook-secret-file",
        "/etc/mxrelay/hook.key",
        "--webhook-max-age",
        "1h",
        "--webhook-retry",
        "1s,30s",
    ])
    .unwrap();
    assert_eq!(
        c.webhooks.urls,
        ["https://hooks.example/in?token=x", "http://127.0.0.1:8080/"]
    );
    assert_eq!(
        c.webhooks.secret_file.as_deref(),
        Some(std::path::Path::new("/etc/mxrelay/hook.key"))
    );
    assert_eq!(c.webhooks.max_age, Duration::from_secs(3600));
    assert_eq!(
        c.webhooks.retry,
        (Duration::from_secs(1), Duration::from_secs(30))
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

#[test]
fn tracking_flags() {
    let c = run(&["--hostname", "relay.test"]).unwrap();
    assert!(!c.tracking.defaults.any() && c.tracking.url.is_none());
    assert!(!c.transforms.control.available.any());
    let c = run(&[
        "--hostname",
        "relay.test",
        "--tracking-url",
        "https://t.example/",
        "--tracking-secret-file",
        "new.key",
        "--tracking-secret-file",
        "old.key",
        "--tracking-listen",
        "127.0.0.1:8080",
        "--track",
        "clicks,opens",
        "--track-exclude",
        "Partner.Example",
        "--unsubscribe",
    ])
    .unwrap();
    let t = &c.tracking;
    assert_eq!(t.secret_files, [PathBuf::from("new.key"), "old.key".into()]);
    assert_eq!(t.defaults.name(), "clicks,opens,unsubscribe");
    assert_eq!(t.exclude, ["partner.example"]);
    assert_eq!(t.max_connections, 256);
    assert_eq!(c.transforms.control.defaults, t.defaults);
    for (args, why) in [
        (&["--track", "clicks"][..], "--track needs --tracking-url"),
        (&["--track", "everything"], "--track"),
        (&["--track", "unsubscribe"], "--track"),
        (&["--unsubscribe"], "--unsubscribe needs"),
        (
            &["--tracking-url", "https://t.example"],
            "--tracking-secret-file",
        ),
        (&["--track-exclude", "not a domain"], "--track-exclude"),
    ] {
        let mut a = vec!["--hostname", "relay.test"];
        a.extend_from_slice(args);
        let e = run(&a).unwrap_err().0;
        assert!(e.contains(why), "{args:?}: {e}");
    }
}

#[test]
fn min_free_space_takes_bytes_or_a_percentage() {
    use crate::spool::MinFree;
    let c = |extra: &[&str]| {
        let mut args = vec!["--hostname", "relay.test"];
        args.extend_from_slice(extra);
        run(&args).map(|c| c.min_free_space)
    };
    assert_eq!(c(&[]), Ok(MinFree::Bytes(64 << 20)), "the default");
    assert_eq!(c(&["--min-free-space", "2%"]), Ok(MinFree::Percent(2.0)));
    assert_eq!(c(&["--min-free-space", "0"]), Ok(MinFree::Bytes(0)), "off");
    let e = c(&["--min-free-space", "lots"]).unwrap_err();
    assert!(e.0.starts_with("--min-free-space: "), "{e}");
}
