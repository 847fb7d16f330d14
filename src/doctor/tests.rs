//! The checks against zones in memory: each broken case must be named, with its fix.

use std::path::Path;
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::rsa::Rsa;

use super::report::{Finding, Status};
use super::table::Table;
use super::*;
use crate::transform::dkim::Algorithm;
use crate::transform::dkim::keygen::dns_value;

fn ed25519(domain: &str, selector: &str) -> Key {
    Key {
        domain: domain.into(),
        selector: selector.into(),
        algorithm: Algorithm::Ed25519Sha256,
        pkey: PKey::generate_ed25519().unwrap(),
    }
}

fn rsa(domain: &str, selector: &str, bits: u32) -> Key {
    Key {
        domain: domain.into(),
        selector: selector.into(),
        algorithm: Algorithm::RsaSha256,
        pkey: PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap(),
    }
}

fn value(key: &Key) -> String {
    dns_value(&key.pkey).unwrap()
}

fn one(findings: Vec<Finding>) -> Finding {
    assert_eq!(findings.len(), 1, "{findings:#?}");
    findings.into_iter().next().unwrap()
}

#[track_caller]
fn assert_finding(f: &Finding, status: Status, text: &str) {
    assert_eq!(f.status, status, "{f:#?}");
    assert!(f.text.contains(text), "{:?} lacks {text:?}", f.text);
    assert_eq!(f.fix.is_some(), status != Status::Ok, "{f:#?}");
}

const FILE: &str = "/etc/mxrelay/mail.pem";

#[test]
fn dkim_record_matches_the_key() {
    let key = ed25519("example.com", "mail");
    let name = "mail._domainkey.example.com";
    let dns = Table::default().with_txt(name, &value(&key));
    let f = one(dkim::check_key(&dns, &key, Path::new(FILE)));
    assert_finding(
        &f,
        Status::Ok,
        "holds the public key of /etc/mxrelay/mail.pem",
    );

    // Whitespace in p= is folding, and strings of one record are joined as they are.
    let v = value(&key);
    let (a, b) = v.split_at(30);
    let dns = Table::default().with_txt_strings(name, &[a, &format!(" {b}")]);
    assert_finding(
        &one(dkim::check_key(&dns, &key, Path::new(FILE))),
        Status::Ok,
        "holds",
    );

    let dns = Table::default().with_txt(name, &format!("{}; t=y", value(&key)));
    let f = one(dkim::check_key(&dns, &key, Path::new(FILE)));
    assert_finding(&f, Status::Warn, "t=y");
}

#[test]
fn dkim_broken_records_are_explained() {
    let key = rsa("example.com", "mail", 2048);
    let name = "mail._domainkey.example.com";
    let v = value(&key);
    let check = |dns: Table| one(dkim::check_key(&dns, &key, Path::new(FILE)));
    let publish = "publish this record: mail._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p=";

    let f = check(Table::default());
    assert_finding(
        &f,
        Status::Fail,
        "no DKIM key record at mail._domainkey.example.com",
    );
    assert!(f.fix.as_ref().unwrap().starts_with(publish), "{f:?}");

    // Cut at 255 characters: what a web form taking one string does.
    let f = check(Table::default().with_txt(name, &v[..255]));
    assert_finding(&f, Status::Fail, "cut short: 237 of its");
    assert!(f.fix.as_ref().unwrap().starts_with(publish));

    // Split across two records instead of two strings of one record.
    let (a, b) = v.split_at(200);
    let f = check(Table::default().with_txt(name, b).with_txt(name, a));
    assert_finding(&f, Status::Fail, "split across 2 TXT records");

    // Pasted with the quotes of a zone file.
    let quoted = format!("{a}\" \"{b}");
    let f = check(Table::default().with_txt(name, &quoted));
    assert_finding(&f, Status::Fail, "quote characters");

    let other = value(&rsa("example.com", "mail", 2048));
    let f = check(Table::default().with_txt(name, &other));
    assert_finding(&f, Status::Fail, "not the key in /etc/mxrelay/mail.pem");

    let f = check(Table::default().with_txt(name, "v=DKIM1; k=rsa; p="));
    assert_finding(&f, Status::Fail, "revoked");
    let f = check(Table::default().with_txt(name, &v.replace("k=rsa", "k=ed25519")));
    assert_finding(&f, Status::Fail, "k=ed25519, but the key");
    let f = check(Table::default().with_txt(name, "v=DKIM1; k=rsa; MIIB"));
    assert_finding(&f, Status::Fail, "does not parse");
    let f = check(Table::default().with_servfail(name));
    assert_finding(&f, Status::Fail, "temporary dns failure");
}

#[test]
fn dkim_small_rsa_keys_are_warned_about() {
    let key = rsa("example.com", "old", 1024);
    let dns = Table::default().with_txt("old._domainkey.example.com", &value(&key));
    let found = dkim::check_key(&dns, &key, Path::new(FILE));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_finding(&found[0], Status::Warn, "RSA key of 1024 bits");
    assert_finding(&found[1], Status::Ok, "rsa 1024 bits");
}

fn ids(spf_pass: bool, dkim: &[&str]) -> (bool, Vec<String>) {
    (spf_pass, dkim.iter().map(|d| d.to_string()).collect())
}

fn dmarc_of(dns: &Table, domain: &str, (spf_pass, dkim): (bool, Vec<String>)) -> Vec<Finding> {
    let ids = dmarc::Identifiers {
        spf_pass,
        dkim_domains: &dkim,
    };
    dmarc::check(dns, domain, &ids)
}

#[test]
fn dmarc_policies() {
    let d = "example.com";
    let rec = |r: &str| Table::default().with_txt("_dmarc.example.com", r);

    let f = dmarc_of(&Table::default(), d, ids(true, &[d]));
    assert_finding(
        &one(f),
        Status::Fail,
        "no DMARC record at _dmarc.example.com",
    );

    let f = dmarc_of(
        &rec("v=DMARC1; p=reject; rua=mailto:d@example.com"),
        d,
        ids(true, &[d]),
    );
    assert_finding(&f[0], Status::Ok, "p=reject");
    assert_finding(
        &f[1],
        Status::Ok,
        "SPF aligns and DKIM (d=example.com) aligns",
    );

    let f = dmarc_of(&rec("v=DMARC1; p=none"), d, ids(true, &[d]));
    assert_finding(&f[0], Status::Warn, "p=none and no rua=");
    let f = dmarc_of(
        &rec("v=DMARC1; p=none; rua=mailto:d@example.com"),
        d,
        ids(true, &[d]),
    );
    assert_finding(&f[0], Status::Ok, "monitoring");
    let f = dmarc_of(&rec("v=DMARC1; p=quarantine; pct=20"), d, ids(true, &[d]));
    assert_finding(&f[1], Status::Warn, "pct=20");
    let f = dmarc_of(&rec("v=DMARC1; p=maybe"), d, ids(true, &[d]));
    assert_finding(&one(f), Status::Fail, "is not none, quarantine or reject");
    let f = dmarc_of(&rec("v=DMARC1 p=reject"), d, ids(true, &[d]));
    assert_finding(&one(f), Status::Fail, "no DMARC record");
    let two = rec("v=DMARC1; p=reject").with_txt("_dmarc.example.com", "v=DMARC1; p=none");
    assert_finding(
        &one(dmarc_of(&two, d, ids(true, &[d]))),
        Status::Fail,
        "2 DMARC records",
    );

    // Alignment.
    let r = rec("v=DMARC1; p=reject");
    assert_finding(
        &dmarc_of(&r, d, ids(false, &[d]))[1],
        Status::Ok,
        "through DKIM",
    );
    assert_finding(
        &dmarc_of(&r, d, ids(true, &[]))[1],
        Status::Warn,
        "SPF alone",
    );
    assert_finding(
        &dmarc_of(&r, d, ids(false, &[]))[1],
        Status::Fail,
        "would fail DMARC",
    );
    assert_finding(
        &dmarc_of(&r, d, ids(false, &["other.org"]))[1],
        Status::Fail,
        "would fail",
    );
}

#[test]
fn dmarc_of_a_subdomain_comes_from_its_parent() {
    let dns =
        Table::default().with_txt("_dmarc.example.com", "v=DMARC1; p=reject; sp=none; adkim=s");
    let f = dmarc_of(&dns, "news.example.com", ids(false, &["example.com"]));
    assert_finding(
        &f[0],
        Status::Warn,
        "_dmarc.example.com (inherited by news.example.com): p=none",
    );
    // adkim=s: a key of the parent does not align with the subdomain.
    assert_finding(&f[1], Status::Fail, "would fail DMARC");
    let dns = Table::default().with_txt("_dmarc.example.com", "v=DMARC1; p=reject");
    let f = dmarc_of(&dns, "news.example.com", ids(false, &["example.com"]));
    assert_finding(&f[1], Status::Ok, "through DKIM (d=example.com)");
}

#[test]
fn mx_records() {
    let ok = Table::default()
        .with_mx("example.com", 10, "mx.example.com")
        .with_ip("mx.example.com", "192.0.2.25");
    assert_finding(
        &mx::check(&ok, "example.com"),
        Status::Ok,
        "10 mx.example.com (192.0.2.25)",
    );
    let null = Table::default().with_mx("example.com", 0, "");
    assert_finding(&mx::check(&null, "example.com"), Status::Fail, "null MX");
    let implicit = Table::default().with_ip("example.com", "192.0.2.1");
    assert_finding(&mx::check(&implicit, "example.com"), Status::Warn, "no MX");
    let nothing = Table::default().with_name("example.com");
    assert_finding(
        &mx::check(&nothing, "example.com"),
        Status::Fail,
        "no MX and no address",
    );
    let dangling = Table::default().with_mx("example.com", 10, "gone.example.com");
    assert_finding(
        &mx::check(&dangling, "example.com"),
        Status::Fail,
        "have no addresses",
    );
    assert_finding(
        &mx::check(&Table::default(), "example.com"),
        Status::Fail,
        "NXDOMAIN",
    );
}

#[test]
fn reverse_dns() {
    let ip = "192.0.2.10".parse().unwrap();
    let good = Table::default()
        .with_ptr("192.0.2.10", "mail.example.com")
        .with_ip("mail.example.com", "192.0.2.10");
    assert_finding(
        &ptr::check(&good, ip, "mail.example.com"),
        Status::Ok,
        "both ways",
    );
    assert_finding(
        &ptr::check(&good, ip, "relay.example.com"),
        Status::Warn,
        "--hostname (the EHLO name) is relay.example.com",
    );
    let none = Table::default();
    let f = ptr::check(&none, ip, "mail.example.com");
    assert_finding(&f, Status::Fail, "no PTR record");
    assert!(f.fix.unwrap().contains("reverse DNS to mail.example.com"));
    let unconfirmed = Table::default()
        .with_ptr("192.0.2.10", "host-192-0-2-10.isp.example")
        .with_ip("host-192-0-2-10.isp.example", "192.0.2.99");
    assert_finding(
        &ptr::check(&unconfirmed, ip, "mail.example.com"),
        Status::Fail,
        "does not resolve back",
    );
}

#[test]
fn reports_as_text_and_json() {
    let report = Report {
        domain: "example.com".into(),
        setup: "mail leaves \"here\"".into(),
        findings: vec![
            Finding::ok("spf", "fine"),
            Finding::warn("dmarc", "so-so", "do \"this\""),
            Finding::fail("ptr", "bad", "fix it"),
        ],
    };
    assert!(report.failed());
    let text = report.text();
    assert!(text.contains("ok    spf           fine\n"), "{text}");
    assert!(
        text.contains("FAIL  ptr           bad\n                    fix: fix it\n"),
        "{text}"
    );
    assert!(text.ends_with("1 failed, 1 warnings, 1 ok\n"), "{text}");
    assert_eq!(
        report.json(),
        "{\"domain\":\"example.com\",\"setup\":\"mail leaves \\\"here\\\"\",\"checks\":[\
         {\"check\":\"spf\",\"status\":\"ok\",\"text\":\"fine\",\"fix\":null},\
         {\"check\":\"dmarc\",\"status\":\"warn\",\"text\":\"so-so\",\"fix\":\"do \\\"this\\\"\"},\
         {\"check\":\"ptr\",\"status\":\"fail\",\"text\":\"bad\",\"fix\":\"fix it\"}],\
         \"summary\":{\"ok\":1,\"warn\":1,\"fail\":1}}\n"
    );
}

/// A zone where everything about example.com is right for 192.0.2.10 and `key`.
fn good_zone(key: &Key) -> Table {
    Table::default()
        .with_txt("example.com", "v=spf1 ip4:192.0.2.10 -all")
        .with_txt(
            &format!("{}._domainkey.{}", key.selector, key.domain),
            &value(key),
        )
        .with_txt(
            "_dmarc.example.com",
            "v=DMARC1; p=reject; rua=mailto:d@example.com",
        )
        .with_mx("example.com", 10, "mx.example.com")
        .with_ip("mx.example.com", "192.0.2.25")
        .with_ptr("192.0.2.10", "mail.example.com")
        .with_ip("mail.example.com", "192.0.2.10")
}

fn setup(domain: &str, senders: Senders, keys: Vec<(&str, Result<Key, String>)>) -> Setup {
    Setup {
        domain: domain.into(),
        senders,
        hostname: "mail.example.com".into(),
        keys: keys
            .into_iter()
            .map(|(domain, key)| KeySpec {
                domain: domain.into(),
                file: FILE.into(),
                key,
            })
            .collect(),
        reach: None,
        probe_timeout: Duration::from_secs(1),
    }
}

fn summary(report: &Report) -> Vec<(&'static str, Status)> {
    report
        .findings
        .iter()
        .map(|f| (f.check, f.status))
        .collect()
}

#[test]
fn whole_reports_for_each_way_mail_leaves() {
    use Status::{Fail, Ok, Warn};
    let key = || ed25519("example.com", "mail");
    let k = key();
    let dns = good_zone(&k);
    let direct = Senders::Direct(vec!["192.0.2.10".parse().unwrap()]);
    let r = run(
        &dns,
        &setup("example.com", direct, vec![("example.com", Result::Ok(k))]),
    );
    assert!(!r.failed(), "{}", r.text());
    assert_eq!(r.count(Ok), 8, "{}", r.text());
    assert_eq!(
        r.setup,
        "mail leaves straight to the MX hosts from 192.0.2.10, as mail.example.com"
    );

    // Through a smarthost: SPF of its address is the provider's include, PTR its business.
    let k = key();
    let dns = good_zone(&k).with_ip("smtp.provider.test", "198.51.100.7");
    let via = Senders::Smarthost {
        host: "smtp.provider.test".into(),
        addrs: vec!["198.51.100.7".parse().unwrap()],
    };
    let r = run(
        &dns,
        &setup("example.com", via, vec![("example.com", Result::Ok(k))]),
    );
    let spf = r.findings.iter().find(|f| f.status == Warn).unwrap();
    assert!(
        spf.text.contains(
            "through the smarthost smtp.provider.test; its address 198.51.100.7 gets SPF fail"
        ),
        "{spf:?}"
    );
    assert!(spf.fix.as_ref().unwrap().contains("include:"));
    // The SPF verdict on the address is a warning; the rest as for direct mail, without PTR.
    let without_ptr = [
        ("spf", Ok),
        ("spf", Ok),
        ("spf", Warn),
        ("dkim", Ok),
        ("dmarc", Ok),
        ("dmarc", Ok),
        ("mx", Ok),
    ];
    assert_eq!(summary(&r), without_ptr);

    // Unknown address: said, not guessed.
    let k = key();
    let dns = good_zone(&k);
    let unknown = Senders::Unknown("behind NAT".into());
    let r = run(
        &dns,
        &setup("example.com", unknown, vec![("example.com", Result::Ok(k))]),
    );
    assert_eq!(summary(&r), [&without_ptr[..], &[("ptr", Warn)]].concat());

    // A subdomain signed with its parent's key; a key that cannot be read is a failure; keys
    // of unrelated domains are not looked at.
    let k = key();
    let dns = good_zone(&k)
        .with_txt("news.example.com", "v=spf1 ip4:192.0.2.10 -all")
        .with_mx("news.example.com", 10, "mx.example.com");
    let keys = vec![
        ("other.org", Result::Ok(ed25519("other.org", "x"))),
        ("example.com", Result::Ok(k)),
        (
            "example.com",
            Err("DKIM key for example.com (selector old) /gone.pem: cannot read".into()),
        ),
        (
            "other.org",
            Err("DKIM key for other.org: not looked at".into()),
        ),
    ];
    let direct = Senders::Direct(vec!["192.0.2.10".parse().unwrap()]);
    let r = run(&dns, &setup("news.example.com", direct, keys));
    let dkim: Vec<&Finding> = r.findings.iter().filter(|f| f.check == "dkim").collect();
    assert_eq!(dkim.len(), 2, "{}", r.text());
    assert!(
        dkim[0].text.contains("mail._domainkey.example.com holds"),
        "{}",
        r.text()
    );
    assert_eq!(dkim[1].status, Fail);
    assert!(
        dkim[1].text.contains("/gone.pem: cannot read"),
        "{}",
        r.text()
    );
    let dmarc = r
        .findings
        .iter()
        .filter(|f| f.check == "dmarc")
        .collect::<Vec<_>>();
    assert!(
        dmarc[0].text.contains("inherited by news.example.com"),
        "{}",
        r.text()
    );
    assert!(
        dmarc[1].text.contains("DKIM (d=example.com) aligns"),
        "{}",
        r.text()
    );
}

/// An address that gets permerror or temperror is told apart from one left out of the record:
/// the fix differs.
#[test]
fn spf_errors_for_a_sending_address_say_what_receivers_make_of_them() {
    let ip = "192.0.2.10".parse().unwrap();
    let check = |dns: &Table| {
        let senders = Senders::Direct(vec![ip]);
        let (found, pass) = spf_check::check(dns, "example.com", &senders, "mail.example.com");
        assert!(!pass);
        found.last().cloned().unwrap()
    };
    let broken = Table::default().with_txt("example.com", "v=spf1 include:gone.example.net -all");
    let f = check(&broken);
    assert_finding(&f, Status::Fail, "gets SPF permerror");
    assert!(f.text.contains("receivers see a broken record"), "{f:?}");
    assert!(
        f.fix
            .unwrap()
            .contains("fix the record's errors, and make it cover ip4:192.0.2.10"),
    );
    let down = Table::default()
        .with_txt("example.com", "v=spf1 include:dns.example.net -all")
        .with_servfail("dns.example.net");
    let f = check(&down);
    assert_finding(&f, Status::Fail, "gets SPF temperror");
    assert!(f.fix.unwrap().contains("name servers of every domain"));
    let soft = Table::default().with_txt("example.com", "v=spf1 ip4:192.0.2.99 ~all");
    let f = check(&soft);
    assert_finding(&f, Status::Fail, "gets SPF softfail");
    assert!(f.text.contains("DMARC needs a pass"), "{f:?}");
    assert!(
        f.fix
            .unwrap()
            .contains("add ip4:192.0.2.10 to the record of example.com")
    );
}
