//! `mxrelay check DOMAIN` against a real DNS server: dnsmasq on 127.0.0.1 serving a domain
//! where everything passes and one domain per broken case. The DKIM keys come from `mxrelay
//! dkim-keygen` and the records published are the ones it prints. Each broken case must be
//! the report's only failure, named with its fix, and make the command exit 1.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::TempDir;
use support::dnsmasq::Dnsmasq;

const SOURCE: &str = "192.0.2.10";
const HOSTNAME: &str = "mail.good.test";

fn mxrelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mxrelay"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mxrelay")
}

/// A key made by `mxrelay dkim-keygen`, and the strings of the record it prints.
fn keygen(dir: &Path, domain: &str) -> (PathBuf, Vec<String>) {
    let file = dir.join(format!("{domain}.pem"));
    let o = mxrelay(&[
        "dkim-keygen",
        "--domain",
        domain,
        "--selector",
        "mail",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "dkim-keygen: {o:?}");
    let line = String::from_utf8(o.stdout).unwrap();
    let (_, rest) = line.split_once(" IN TXT ").expect("NAME IN TXT \"...\"");
    let strings = rest
        .split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    (file, strings)
}

/// How a domain's DKIM record is published.
enum Published {
    Right,
    /// The record of another key.
    Other,
    /// Its first string as one record, the rest as another.
    TwoRecords,
    /// Pasted with the quotes between its strings, as web forms that split it themselves get it.
    Quoted,
}

/// One test domain: the good setup, with at most one thing changed.
struct Domain {
    name: &'static str,
    spf: String,
    dkim: Published,
    dmarc: Option<&'static str>,
}

impl Domain {
    fn good(name: &'static str) -> Domain {
        Domain {
            name,
            spf: "v=spf1 mx ip4:192.0.2.10 ip4:192.0.2.11 -all".into(),
            dkim: Published::Right,
            dmarc: Some("v=DMARC1; p=reject; rua=mailto:dmarc@good.test"),
        }
    }

    /// dnsmasq's flags for the domain, and its key file.
    fn records(&self, dir: &Path) -> (Vec<String>, PathBuf) {
        let d = self.name;
        let (file, strings) = keygen(dir, d);
        let key = format!("mail._domainkey.{d}");
        let mut r = vec![
            format!("--txt-record={d},{}", self.spf),
            format!("--mx-host={d},mx.{d},10"),
            format!("--host-record=mx.{d},192.0.2.25"),
        ];
        match self.dkim {
            Published::Right => r.push(format!("--txt-record={key},{}", strings.join(","))),
            Published::Other => {
                let (_, other) = keygen(&dir.join("other"), d);
                r.push(format!("--txt-record={key},{}", other.join(",")));
            }
            Published::TwoRecords => {
                r.push(format!("--txt-record={key},{}", strings[0]));
                r.push(format!("--txt-record={key},{}", strings[1..].join(",")));
            }
            Published::Quoted => {
                let (a, b) = strings[0].split_at(200);
                let rest = strings[1..].concat();
                r.push(format!("--txt-record={key},{a}\",\"{b}{rest}"));
            }
        }
        if let Some(dmarc) = self.dmarc {
            r.push(format!("--txt-record=_dmarc.{d},{dmarc}"));
        }
        (r, file)
    }
}

struct World {
    _dir: TempDir,
    dns: Dnsmasq,
    keys: Vec<(&'static str, PathBuf)>,
}

fn world(name: &str, extra: &[String]) -> World {
    support::dnsmasq::require();
    let dir = TempDir::new(name);
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    let over_limit = (1..=11)
        .map(|i| format!("include:i{i}.spf-limit.test"))
        .collect::<Vec<_>>()
        .join(" ");
    let domains = [
        Domain::good("good.test"),
        Domain {
            spf: "v=spf1 ip4:192.0.2.99 -all".into(),
            ..Domain::good("spf-ip.test")
        },
        Domain {
            spf: format!("v=spf1 ip4:192.0.2.10 {over_limit} -all"),
            ..Domain::good("spf-limit.test")
        },
        Domain {
            spf: "v=spf1 +all".into(),
            ..Domain::good("plus-all.test")
        },
        Domain {
            dkim: Published::Other,
            ..Domain::good("dkim-key.test")
        },
        Domain {
            dkim: Published::TwoRecords,
            ..Domain::good("dkim-split.test")
        },
        Domain {
            dkim: Published::Quoted,
            ..Domain::good("dkim-quoted.test")
        },
        Domain {
            dmarc: None,
            ..Domain::good("no-dmarc.test")
        },
    ];
    let mut args = vec![
        format!("--host-record={HOSTNAME},{SOURCE}"),
        // 192.0.2.11's PTR names a host that resolves elsewhere.
        "--ptr-record=11.2.0.192.in-addr.arpa,host-11.isp.test".into(),
        "--host-record=host-11.isp.test,192.0.2.99".into(),
    ];
    for i in 1..=11 {
        args.push(format!("--txt-record=i{i}.spf-limit.test,v=spf1 -all"));
    }
    let mut keys = Vec::new();
    for d in &domains {
        let (records, key) = d.records(dir.path());
        args.extend(records);
        keys.push((d.name, key));
    }
    args.extend_from_slice(extra);
    let dns = Dnsmasq::start(dir.path(), &args, "good.test");
    World {
        _dir: dir,
        dns,
        keys,
    }
}

impl World {
    fn check(&self, domain: &str, extra: &[&str]) -> (i32, String) {
        let key = &self.keys.iter().find(|(d, _)| *d == domain).unwrap().1;
        let dkim = format!("{domain}:mail:{}", key.display());
        let server = format!("127.0.0.1:{}", self.dns.port);
        let mut args = vec![
            "check",
            domain,
            "--dns-server",
            &server,
            "--hostname",
            HOSTNAME,
            "--dkim",
            &dkim,
        ];
        args.extend_from_slice(extra);
        let o = mxrelay(&args);
        let out = String::from_utf8(o.stdout).unwrap();
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code().unwrap(), out)
    }
}

/// The report's lines of a status ("ok", "WARN", "FAIL"), each with its fix.
fn lines(report: &str, status: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in report.lines() {
        if line.starts_with(&format!("{status} ")) {
            found.push(line.to_string());
        } else if line.trim_start().starts_with("fix: ")
            && let Some(last) = found.last_mut()
            && report.contains(&format!("{last}\n{line}"))
        {
            last.push('\n');
            last.push_str(line.trim_start());
        }
    }
    found
}

#[track_caller]
fn assert_one_failure(world: &World, domain: &str, source: &str, text: &str, fix: &str) {
    let (code, report) = world.check(domain, &["--source-ip", source]);
    let failed = lines(&report, "FAIL");
    assert_eq!(failed.len(), 1, "one failure expected:\n{report}");
    let (line, its_fix) = failed[0].split_once("\nfix: ").expect("a fix");
    assert!(line.contains(text), "{line:?} lacks {text:?}:\n{report}");
    assert!(
        its_fix.contains(fix),
        "{its_fix:?} lacks {fix:?}:\n{report}"
    );
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("1 failed"), "{report}");
}

#[test]
fn a_good_domain_passes_and_each_mistake_is_named_with_its_fix() {
    let w = world("check", &[]);

    let (code, report) = w.check("good.test", &["--source-ip", SOURCE]);
    assert_eq!(code, 0, "{report}");
    assert!(lines(&report, "FAIL").is_empty(), "{report}");
    assert!(lines(&report, "WARN").is_empty(), "{report}");
    for want in [
        "spf           good.test publishes \"v=spf1 mx ip4:192.0.2.10 ip4:192.0.2.11 -all\"",
        "spf           the record needs 1 of the 10 DNS lookups allowed",
        "spf           192.0.2.10 passes",
        "dkim          mail._domainkey.good.test holds the public key of",
        "dmarc         _dmarc.good.test: p=reject",
        "dmarc         mail From: good.test would pass: SPF aligns and DKIM (d=good.test) aligns",
        "mx            good.test receives mail at 10 mx.good.test (192.0.2.25)",
        "ptr           192.0.2.10 is mail.good.test both ways, which is --hostname",
        "0 failed, 0 warnings, 8 ok",
    ] {
        assert!(report.contains(want), "{want:?} missing:\n{report}");
    }

    assert_one_failure(
        &w,
        "spf-ip.test",
        SOURCE,
        "192.0.2.10, which mail leaves from, gets SPF fail",
        "add ip4:192.0.2.10 to the record of spf-ip.test",
    );
    assert_one_failure(&w, "spf-limit.test", SOURCE, "11 DNS lookups", "");
    assert_one_failure(&w, "plus-all.test", SOURCE, "+all", "");
    assert_one_failure(
        &w,
        "dkim-key.test",
        SOURCE,
        "mail._domainkey.dkim-key.test: the published key is not the key in",
        "publish this record: mail._domainkey.dkim-key.test. IN TXT \"v=DKIM1; k=rsa; p=",
    );
    assert_one_failure(
        &w,
        "dkim-split.test",
        SOURCE,
        "the key is split across 2 TXT records",
        "publish this record: mail._domainkey.dkim-split.test. IN TXT",
    );
    assert_one_failure(
        &w,
        "dkim-quoted.test",
        SOURCE,
        "the record contains quote characters",
        "publish this record: mail._domainkey.dkim-quoted.test. IN TXT",
    );
    assert_one_failure(
        &w,
        "no-dmarc.test",
        SOURCE,
        "no DMARC record at _dmarc.no-dmarc.test",
        "publish _dmarc.no-dmarc.test. IN TXT \"v=DMARC1; p=none; rua=mailto:",
    );
    assert_one_failure(
        &w,
        "good.test",
        "192.0.2.11",
        "192.0.2.11 has the PTR name host-11.isp.test, which does not resolve back to 192.0.2.11",
        "give host-11.isp.test the address 192.0.2.11",
    );
}

#[test]
fn the_report_as_json() {
    let w = world("check-json", &[]);
    for (domain, fails) in [("good.test", 0), ("no-dmarc.test", 1)] {
        let (code, json) = w.check(domain, &["--source-ip", SOURCE, "--json"]);
        assert_eq!(code, fails, "{json}");
        let script = "import json, sys\n\
            r = json.load(sys.stdin)\n\
            assert set(r) == {'domain', 'setup', 'checks', 'summary'}, r\n\
            for c in r['checks']:\n    assert set(c) == {'check', 'status', 'text', 'fix'}, c\n\
            print(r['domain'], r['summary']['fail'], sorted({c['check'] for c in r['checks']}))";
        let mut py = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        py.stdin.take().unwrap().write_all(json.as_bytes()).unwrap();
        let o = py.wait_with_output().unwrap();
        assert!(o.status.success(), "{json}");
        assert_eq!(
            String::from_utf8(o.stdout).unwrap().trim(),
            format!("{domain} {fails} ['dkim', 'dmarc', 'mx', 'ptr', 'spf']")
        );
    }
}

/// --reachability connects to the MX host of --reachability-domain at --mx-port, and tells a
/// greeting from a refusal from silence (a dropped SYN, as a blocking firewall does).
#[test]
fn reachability_tells_blocked_from_refused() {
    let greeter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = greeter.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in greeter.incoming().flatten() {
            let _ = (&conn).write_all(b"220 mx.probe.test ESMTP\r\n");
        }
    });
    let w = world(
        "check-reach",
        &[
            "--mx-host=probe.test,mx.probe.test,10".into(),
            "--host-record=mx.probe.test,127.0.0.1".into(),
            "--txt-record=probe.test,probe".into(),
        ],
    );
    let reach = |port: u16| {
        let port = port.to_string();
        let args = [
            "--source-ip",
            SOURCE,
            "--reachability",
            "--reachability-domain",
            "probe.test",
            "--mx-port",
            &port,
            "--connect-timeout",
            "1s",
        ];
        let (_, report) = w.check("good.test", &args);
        report
            .lines()
            .find(|l| l.contains(" reachability "))
            .map(String::from)
            .unwrap_or_else(|| panic!("no reachability line:\n{report}"))
    };
    // Through a smarthost, its own host and port are probed.
    let smarthost = format!("127.0.0.1:{port}");
    let (_, report) = w.check("good.test", &["--smarthost", &smarthost, "--reachability"]);
    assert!(
        report.contains(&format!(
            "ok    reachability  connected to 127.0.0.1 (127.0.0.1) port {port}, which greeted: 220"
        )),
        "{report}"
    );

    let ok = reach(port);
    assert!(ok.starts_with("ok "), "{ok}");
    assert!(
        ok.contains(&format!("connected to mx.probe.test (127.0.0.1) port {port}, which greeted: 220 mx.probe.test ESMTP")),
        "{ok}"
    );

    // Connected, but nothing answers: something in between takes port 25 and says nothing.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_port = mute.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = mute.incoming().take(1).flatten().collect();
        std::thread::sleep(Duration::from_secs(5));
        drop(held);
    });
    let silent = reach(mute_port);
    assert!(silent.starts_with("FAIL "), "{silent}");
    assert!(
        silent.contains(&format!(
            "cannot reach mx.probe.test port {mute_port}: 127.0.0.1: connected, no greeting"
        )),
        "{silent}"
    );

    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = reach(closed_port);
    assert!(refused.starts_with("FAIL "), "{refused}");
    assert!(refused.contains("refused the connection"), "{refused}");

    // A listener whose accept queue is full drops new SYNs: the client sees a timeout.
    let (full, queued) = full_listener();
    let blocked_port = full.local_addr().unwrap().as_socket().unwrap().port();
    let started = Instant::now();
    let blocked = reach(blocked_port);
    assert!(blocked.starts_with("FAIL "), "{blocked}");
    assert!(
        blocked.contains("within 1s: outbound port 25 looks blocked here"),
        "{blocked}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(queued);
}

/// A listener with a backlog of 0 and its queue filled by connections nobody accepts.
fn full_listener() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(c) => queued.push(c),
            Err(_) => break,
        }
    }
    (s, queued)
}

#[test]
fn bad_command_lines_exit_2_with_the_reason() {
    for (args, why) in [
        (&["check"][..], "which domain?"),
        (&["check", "not a domain"][..], "is not a domain"),
        (
            &["check", "a.test", "b.test"][..],
            "unexpected argument \"b.test\"",
        ),
        (
            &["check", "a.test", "--source-ip", "x"][..],
            "--source-ip: \"x\" is not an IP address",
        ),
        (&["check", "a.test", "--dkim", "nonsense"][..], "--dkim"),
        (&["check", "a.test", "--no-such-flag"][..], "no-such-flag"),
    ] {
        let o = mxrelay(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("mxrelay check: ") && err.contains(why),
            "{args:?}: {err}"
        );
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    let o = mxrelay(&["check", "--help"]);
    let help = String::from_utf8(o.stdout).unwrap();
    assert!(o.status.success());
    for flag in [
        "--source-ip",
        "--json",
        "--reachability",
        "--reachability-domain",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let o = mxrelay(&["--help"]);
    assert!(
        String::from_utf8(o.stdout)
            .unwrap()
            .contains("mxrelay check DOMAIN")
    );
}
