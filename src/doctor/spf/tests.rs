//! check_host() and the audit against zones in memory: the RFC 7208 examples (Appendix A,
//! section 7.4), the limits, and the problems the audit names.

use std::net::IpAddr;

use super::*;
use crate::doctor::table::Table;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

fn check(dns: &Table, client: &str, domain: &str) -> Evaluation {
    check_host(
        dns,
        ip(client),
        domain,
        &format!("user@{domain}"),
        "mx.example.net",
    )
}

fn result(dns: &Table, client: &str, domain: &str) -> SpfResult {
    check(dns, client, domain).result
}

fn one(record: &str) -> Table {
    Table::default().with_txt("example.com", record)
}

/// The zone of RFC 7208 Appendix A.1 (www's CNAME left out: no example uses it).
fn appendix_a() -> Table {
    Table::default()
        .with_mx("example.com", 10, "mail-a.example.com")
        .with_mx("example.com", 20, "mail-b.example.com")
        .with_ip("example.com", "192.0.2.10")
        .with_ip("example.com", "192.0.2.11")
        .with_ip("amy.example.com", "192.0.2.65")
        .with_ip("bob.example.com", "192.0.2.66")
        .with_ip("mail-a.example.com", "192.0.2.129")
        .with_ip("mail-b.example.com", "192.0.2.130")
        .with_mx("example.org", 10, "mail-c.example.org")
        .with_ip("mail-c.example.org", "192.0.2.140")
        .with_ptr("192.0.2.10", "example.com")
        .with_ptr("192.0.2.11", "example.com")
        .with_ptr("192.0.2.65", "amy.example.com")
        .with_ptr("192.0.2.66", "bob.example.com")
        .with_ptr("192.0.2.129", "mail-a.example.com")
        .with_ptr("192.0.2.130", "mail-b.example.com")
        .with_ptr("192.0.2.140", "mail-c.example.org")
        .with_ptr("10.0.0.4", "bob.example.com")
}

#[test]
fn appendix_a1_simple_examples() {
    // The hosts of the zone, and neighbours of the /28 and /30 networks.
    let hosts = [
        "192.0.2.10",
        "192.0.2.11",
        "192.0.2.65",
        "192.0.2.66",
        "192.0.2.127",
        "192.0.2.128",
        "192.0.2.129",
        "192.0.2.130",
        "192.0.2.131",
        "192.0.2.132",
        "192.0.2.139",
        "192.0.2.140",
        "192.0.2.141",
        "192.0.2.143",
        "192.0.2.144",
        "10.0.0.4",
    ];
    // Every host listed passes; every other one fails.
    let cases: &[(&str, &[&str])] = &[
        ("v=spf1 +all", &hosts),
        ("v=spf1 a -all", &["192.0.2.10", "192.0.2.11"]),
        // "no sending hosts pass since example.org has no A records"
        ("v=spf1 a:example.org -all", &[]),
        ("v=spf1 mx -all", &["192.0.2.129", "192.0.2.130"]),
        ("v=spf1 mx:example.org -all", &["192.0.2.140"]),
        (
            "v=spf1 mx mx:example.org -all",
            &["192.0.2.129", "192.0.2.130", "192.0.2.140"],
        ),
        // "any sending host in 192.0.2.128/30 or 192.0.2.140/30 passes"
        (
            "v=spf1 mx/30 mx:example.org/30 -all",
            &[
                "192.0.2.128",
                "192.0.2.129",
                "192.0.2.130",
                "192.0.2.131",
                "192.0.2.140",
                "192.0.2.141",
                "192.0.2.143",
            ],
        ),
        // 65 passes; 140 fails (valid reverse name, not in example.com); 10.0.0.4 fails (its
        // reverse name does not resolve back to it).
        (
            "v=spf1 ptr -all",
            &[
                "192.0.2.10",
                "192.0.2.11",
                "192.0.2.65",
                "192.0.2.66",
                "192.0.2.129",
                "192.0.2.130",
            ],
        ),
        (
            "v=spf1 ip4:192.0.2.128/28 -all",
            &[
                "192.0.2.128",
                "192.0.2.129",
                "192.0.2.130",
                "192.0.2.131",
                "192.0.2.132",
                "192.0.2.139",
                "192.0.2.140",
                "192.0.2.141",
                "192.0.2.143",
            ],
        ),
    ];
    for (record, passing) in cases {
        let dns = appendix_a().with_txt("example.com", record);
        for host in hosts {
            let want = if passing.contains(&host) {
                SpfResult::Pass
            } else {
                SpfResult::Fail
            };
            let got = check(&dns, host, "example.com");
            assert_eq!(got.result, want, "{record} from {host}: {}", got.reason);
        }
    }
}

#[test]
fn appendix_a2_multiple_domains() {
    // A.2 leaves the records of example.com and example.net open; these are ours.
    let dns = appendix_a()
        .with_txt("example.com", "v=spf1 mx -all")
        .with_txt("example.net", "v=spf1 ip4:198.51.100.0/24 -all")
        .with_txt(
            "example.org",
            "v=spf1 include:example.com include:example.net -all",
        )
        .with_txt("la.example.org", "v=spf1 redirect=example.org")
        .with_txt("ny.example.org", "v=spf1 redirect=example.org")
        .with_txt("sf.example.org", "v=spf1 redirect=example.org");
    for domain in [
        "example.org",
        "la.example.org",
        "ny.example.org",
        "sf.example.org",
    ] {
        for (host, want) in [
            ("192.0.2.129", SpfResult::Pass),
            ("198.51.100.7", SpfResult::Pass),
            ("192.0.2.10", SpfResult::Fail),
            ("203.0.113.1", SpfResult::Fail),
        ] {
            let got = check(&dns, host, domain);
            assert_eq!(got.result, want, "{domain} from {host}: {}", got.reason);
        }
    }
    let got = check(&dns, "198.51.100.7", "la.example.org");
    assert_eq!(
        got.reason,
        "redirect=example.org in the record of la.example.org: include:example.net in the \
         record of example.org matched: ip4:198.51.100.0/24 in the record of example.net"
    );
    assert_eq!(got.lookups, 4);
}

#[test]
fn appendix_a3_dnsbl_style() {
    // The record is split into strings at term boundaries, as a long TXT record is published.
    let dns = appendix_a()
        .with_txt_strings(
            "example.com",
            &[
                "v=spf1 mx ",
                "include:mobile-users._spf.%{d} ",
                "include:remote-users._spf.%{d} -all",
            ],
        )
        .with_txt(
            "mobile-users._spf.example.com",
            "v=spf1 exists:%{l1r+}.%{d}",
        )
        .with_txt(
            "remote-users._spf.example.com",
            "v=spf1 exists:%{ir}.%{l1r+}.%{d}",
        )
        .with_ip("mary.mobile-users._spf.example.com", "127.0.0.2")
        .with_ip("fred.mobile-users._spf.example.com", "127.0.0.2")
        .with_ip(
            "15.15.168.192.joel.remote-users._spf.example.com",
            "127.0.0.2",
        )
        .with_ip(
            "16.15.168.192.joel.remote-users._spf.example.com",
            "127.0.0.2",
        );
    for (sender, host, want) in [
        ("mary@example.com", "203.0.113.9", SpfResult::Pass),
        ("fred@example.com", "203.0.113.9", SpfResult::Pass),
        ("fred+bulk@example.com", "203.0.113.9", SpfResult::Pass),
        ("joel@example.com", "192.168.15.15", SpfResult::Pass),
        ("joel@example.com", "192.168.15.16", SpfResult::Pass),
        ("joel@example.com", "192.168.15.17", SpfResult::Fail),
        ("joel@example.com", "203.0.113.9", SpfResult::Fail),
        ("amy@example.com", "192.0.2.129", SpfResult::Pass),
        ("amy@example.com", "203.0.113.9", SpfResult::Fail),
    ] {
        let got = check_host(&dns, ip(host), "example.com", sender, "mx.example.net");
        assert_eq!(got.result, want, "{sender} from {host}: {}", got.reason);
    }
}

#[test]
fn appendix_a4_multiple_requirements() {
    // Erratum 6216: the RFC's "v=spf1 -ptr +all" checks names under ptr._spf.example.com
    // (the current domain of the include), so every host would fail; "-ptr:example.com" is meant.
    let zone = || {
        appendix_a()
            .with_txt(
                "example.com",
                "v=spf1 -include:ip4._spf.%{d} -include:ptr._spf.%{d} +all",
            )
            .with_txt("ip4._spf.example.com", "v=spf1 -ip4:192.0.2.0/24 +all")
            .with_ptr("198.51.100.5", "far.example.com")
            .with_ip("far.example.com", "198.51.100.5")
    };
    let dns = zone().with_txt("ptr._spf.example.com", "v=spf1 -ptr:example.com +all");
    for (host, want) in [
        ("192.0.2.65", SpfResult::Pass), // in 192.0.2.0/24, named in example.com
        ("192.0.2.10", SpfResult::Pass), // in 192.0.2.0/24, named example.com
        ("192.0.2.140", SpfResult::Fail), // in 192.0.2.0/24, named in example.org
        ("192.0.2.127", SpfResult::Fail), // in 192.0.2.0/24, no name
        ("198.51.100.5", SpfResult::Fail), // named in example.com, outside 192.0.2.0/24
        ("10.0.0.4", SpfResult::Fail),   // neither
    ] {
        let got = check(&dns, host, "example.com");
        assert_eq!(got.result, want, "{host}: {}", got.reason);
    }
    let as_printed = zone().with_txt("ptr._spf.example.com", "v=spf1 -ptr +all");
    assert_eq!(
        result(&as_printed, "192.0.2.65", "example.com"),
        SpfResult::Fail
    );
}

#[test]
fn macro_examples_of_section_7_4() {
    let v4 = MacroVars {
        sender: "strong-bad@email.example.com",
        domain: "email.example.com",
        ip: ip("192.0.2.3"),
        helo: "mx.example.org",
        ptr_name: "mx.example.org",
    };
    for (macro_string, want) in [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        (
            "%{ir}.%{v}._spf.%{d2}",
            "3.2.0.192.in-addr._spf.example.com",
        ),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        (
            "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
            "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
        ),
        (
            "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
            "3.2.0.192.in-addr.strong.lp._spf.example.com",
        ),
        (
            "%{d2}.trusted-domains.example.net",
            "example.com.trusted-domains.example.net",
        ),
        // Beyond the RFC's list: p, h, escapes, uppercase (URL-escaped) and case of r.
        ("%{p2}", "example.org"),
        ("%{h}", "mx.example.org"),
        ("%%%_%-", "% %20"),
        ("%{S}", "strong-bad%40email.example.com"),
        ("%{L1R-}", "strong"),
        ("%{d200}", "email.example.com"),
    ] {
        assert_eq!(
            expand(macro_string, &v4).as_deref(),
            Ok(want),
            "{macro_string}"
        );
    }
    let v6 = MacroVars {
        ip: ip("2001:db8::cb01"),
        ..v4
    };
    assert_eq!(
        expand("%{ir}.%{v}._spf.%{d2}", &v6).as_deref(),
        Ok("1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
    );
}

#[test]
fn bad_macros_are_refused() {
    let vars = MacroVars {
        sender: "a@b.example",
        domain: "b.example",
        ip: ip("192.0.2.3"),
        helo: "h.example",
        ptr_name: "unknown",
    };
    for bad in [
        "%{x}", "%{d0}", "%{d", "% ", "%a", "%{c}", "%{r}", "%{t}", "%{d2q}", "ä",
    ] {
        assert!(expand(bad, &vars).is_err(), "{bad}");
    }
}

#[test]
fn expanded_names_lose_labels_on_the_left_past_253() {
    let label = "a".repeat(58);
    let long = format!("{label}.{label}.{label}.{label}.{label}.example.com.");
    let short = truncate_name(&long);
    assert_eq!(
        short,
        format!("{label}.{label}.{label}.{label}.example.com")
    );
    assert!(short.len() <= 253);
    assert_eq!(truncate_name("x.example.com."), "x.example.com");

    // Through an exists: the local part repeated makes a name of 5 × 59 + 11 characters.
    let dns = Table::default()
        .with_txt(
            "example.com",
            "v=spf1 exists:%{l}.%{l}.%{l}.%{l}.%{l}.example.com -all",
        )
        .with_ip(
            &format!("{label}.{label}.{label}.{label}.example.com"),
            "127.0.0.2",
        );
    let got = check_host(
        &dns,
        ip("192.0.2.1"),
        "example.com",
        &format!("{label}@example.com"),
        "h",
    );
    assert_eq!(got.result, SpfResult::Pass, "{}", got.reason);
}

#[test]
fn p_macro_is_a_validated_name_or_unknown() {
    let dns = Table::default()
        .with_txt("example.com", "v=spf1 exists:%{p}.allowed.example.com -all")
        .with_ptr("192.0.2.1", "mail.example.com")
        .with_ip("mail.example.com", "192.0.2.1")
        .with_ip("mail.example.com.allowed.example.com", "127.0.0.2")
        .with_ptr("192.0.2.2", "liar.example.com")
        .with_ip("liar.example.com", "192.0.2.99")
        .with_ip("unknown.allowed.example.com", "127.0.0.3");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);
    let asked = dns.asked.borrow().clone();
    assert!(asked.contains(&"A mail.example.com.allowed.example.com".to_string()));
    // The name does not resolve back to the address: %{p} is "unknown".
    assert_eq!(result(&dns, "192.0.2.2", "example.com"), SpfResult::Pass);
    assert!(
        dns.asked
            .borrow()
            .contains(&"A unknown.allowed.example.com".to_string())
    );
}

#[test]
fn eleven_lookups_are_a_permerror() {
    let includes: Vec<String> = (1..=11)
        .map(|n| format!("include:i{n}.example.net"))
        .collect();
    let mut dns = one(&format!("v=spf1 {} -all", includes.join(" ")));
    for n in 1..=11 {
        dns = dns.with_txt(
            &format!("i{n}.example.net"),
            &format!("v=spf1 ip4:10.0.0.{n} -all"),
        );
    }
    let first = check(&dns, "10.0.0.1", "example.com");
    assert_eq!((first.result, first.lookups), (SpfResult::Pass, 1));
    let tenth = check(&dns, "10.0.0.10", "example.com");
    assert_eq!((tenth.result, tenth.lookups), (SpfResult::Pass, 10));
    let over = check(&dns, "10.0.0.11", "example.com");
    assert_eq!((over.result, over.lookups), (SpfResult::PermError, 11));
    assert_eq!(
        over.reason,
        "more than 10 DNS lookups (include:i11.example.net in the record of example.com)"
    );

    let report = audit(&dns, "example.com");
    assert_eq!(report.lookups, 11);
    assert_eq!(
        report.problems,
        vec![Problem {
            fatal: true,
            text: "example.com: 11 DNS lookups, over the limit of 10 (RFC 7208 4.6.4); receivers \
                   return permerror"
                .into(),
            fix: "replace includes by the ip4/ip6 ranges they stand for, or drop unused ones"
                .into(),
        }]
    );
}

#[test]
fn lookups_are_counted_through_nested_includes_and_every_kind_of_term() {
    let dns = appendix_a()
        .with_txt(
            "example.com",
            "v=spf1 a mx ptr exists:%{i}.bl.example.com include:_spf.example.com ~all",
        )
        .with_txt(
            "_spf.example.com",
            "v=spf1 a:amy.example.com redirect=_more.example.com",
        )
        .with_txt("_more.example.com", "v=spf1 include:_last.example.com -all")
        .with_txt("_last.example.com", "v=spf1 ip4:203.0.113.0/24 -all");
    let got = check(&dns, "203.0.113.5", "example.com");
    assert_eq!(
        (got.result, got.lookups),
        (SpfResult::Pass, 8),
        "{}",
        got.reason
    );
    let report = audit(&dns, "example.com");
    assert_eq!(report.lookups, 8);
}

#[test]
fn three_void_lookups_are_a_permerror() {
    let dns = one(
        "v=spf1 a:gone1.example.com mx:gone2.example.com ip4:192.0.2.1 exists:gone3.example.com -all",
    );
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);
    let got = check(&dns, "192.0.2.2", "example.com");
    assert_eq!(got.result, SpfResult::PermError);
    assert_eq!(
        got.reason,
        "more than 2 void lookups (exists:gone3.example.com in the record of example.com finds nothing)"
    );
    let report = audit(&dns, "example.com");
    assert_eq!(
        report.void_lookups, 2,
        "exists targets are not looked up by the audit"
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // An empty answer (NODATA) is void as NXDOMAIN is; two voids are allowed.
    let dns =
        one("v=spf1 a:empty.example.com a:gone.example.com -all").with_name("empty.example.com");
    assert_eq!(result(&dns, "192.0.2.2", "example.com"), SpfResult::Fail);
    let dns = one("v=spf1 a:empty.example.com a:gone.example.com a:gone2.example.com -all")
        .with_name("empty.example.com");
    assert_eq!(
        result(&dns, "192.0.2.2", "example.com"),
        SpfResult::PermError
    );
    let report = audit(&dns, "example.com");
    assert_eq!(report.void_lookups, 3);
    assert_eq!(report.problems.len(), 1);
    assert!(!report.problems[0].fatal);
    assert!(
        report.problems[0]
            .text
            .contains("a:gone2.example.com in example.com"),
        "{:?}",
        report.problems
    );
}

#[test]
fn include_loops_end() {
    let dns = Table::default().with_txt("loop.example.com", "v=spf1 include:loop.example.com -all");
    let got = check(&dns, "192.0.2.1", "loop.example.com");
    assert_eq!((got.result, got.lookups), (SpfResult::PermError, 11));
    let report = audit(&dns, "loop.example.com");
    assert_eq!(report.lookups, 1);
    assert!(report.problems[0].fatal);
    assert_eq!(
        report.problems[0].text,
        "loop.example.com: include:loop.example.com loops back (loop.example.com → loop.example.com); \
         receivers run out of DNS lookups and return permerror"
    );

    let dns = Table::default()
        .with_txt("a.example.com", "v=spf1 include:b.example.com -all")
        .with_txt("b.example.com", "v=spf1 redirect=a.example.com");
    assert_eq!(
        result(&dns, "192.0.2.1", "a.example.com"),
        SpfResult::PermError
    );
    let report = audit(&dns, "a.example.com");
    assert_eq!(report.lookups, 2);
    assert!(report.problems.iter().any(|p| {
        p.fatal
            && p.text
                .starts_with("b.example.com: redirect=a.example.com loops back")
    }));
}

#[test]
fn the_audit_stops_following_a_huge_tree() {
    // Each level includes the next twice: 510 lookups in all.
    let mut dns = Table::default();
    for level in 0..8 {
        let next = format!("l{}.example.com", level + 1);
        dns = dns.with_txt(
            &format!("l{level}.example.com"),
            &format!("v=spf1 include:{next} include:{next} -all"),
        );
    }
    dns = dns.with_txt("l8.example.com", "v=spf1 ip4:192.0.2.1 -all");
    let report = audit(&dns, "l0.example.com");
    assert!((50..60).contains(&report.lookups), "{}", report.lookups);
    assert!(report.problems[0].fatal);
    assert!(
        report.problems[0]
            .text
            .starts_with("l0.example.com: at least"),
        "{:?}",
        report.problems
    );
    // The first path down passes with 8 lookups; any other address runs out.
    assert_eq!(result(&dns, "192.0.2.1", "l0.example.com"), SpfResult::Pass);
    assert_eq!(
        result(&dns, "192.0.2.2", "l0.example.com"),
        SpfResult::PermError
    );
}

#[test]
fn redirect() {
    let dns = one("v=spf1 redirect=_spf.example.com")
        .with_txt("_spf.example.com", "v=spf1 ip4:192.0.2.1 -all");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);
    assert_eq!(result(&dns, "192.0.2.2", "example.com"), SpfResult::Fail);

    // To a domain without a record: permerror, not none.
    let dns = one("v=spf1 redirect=_spf.example.com");
    let got = check(&dns, "192.0.2.1", "example.com");
    assert_eq!(got.result, SpfResult::PermError);
    assert_eq!(
        got.reason,
        "redirect=_spf.example.com in the record of example.com: no SPF record at _spf.example.com"
    );
    let report = audit(&dns, "example.com");
    assert_eq!(
        report.problems[0].text,
        "example.com: redirect=_spf.example.com has no SPF record (permerror)"
    );
    assert!(report.problems[0].fatal);

    // Ignored when the record has all, wherever it is; used only when nothing matched.
    let dns =
        one("v=spf1 redirect=_spf.example.com ?all").with_txt("_spf.example.com", "v=spf1 -all");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Neutral);
    assert!(
        !audit_texts(&dns)
            .iter()
            .any(|t| t.contains("_spf.example.com has no"))
    );
    let dns = one("v=spf1 ip4:192.0.2.1 redirect=_spf.example.com")
        .with_txt("_spf.example.com", "v=spf1 -all");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);
    assert_eq!(result(&dns, "192.0.2.2", "example.com"), SpfResult::Fail);
}

fn audit_texts(dns: &Table) -> Vec<String> {
    audit(dns, "example.com")
        .problems
        .into_iter()
        .map(|p| p.text)
        .collect()
}

#[test]
fn record_selection() {
    // Other TXT records, and tags that only look like v=spf1, do not count.
    let dns = one("google-site-verification=abc")
        .with_txt("example.com", "v=spf10 -all")
        .with_txt("example.com", "v=spf1-all")
        .with_txt("example.com", "V=SPF1 ip4:192.0.2.1 -all");
    assert_eq!(
        record(&dns, "example.com"),
        Ok(Some("V=SPF1 ip4:192.0.2.1 -all".into()))
    );
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);

    // The strings of one record are joined without a separator.
    let dns = Table::default().with_txt_strings("example.com", &["v=spf1 ip4:192.0.", "2.1 -all"]);
    assert_eq!(
        record(&dns, "example.com"),
        Ok(Some("v=spf1 ip4:192.0.2.1 -all".into()))
    );
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);

    // A bare "v=spf1" is a record that matches nothing.
    assert_eq!(
        result(&one("v=spf1"), "192.0.2.1", "example.com"),
        SpfResult::Neutral
    );
}

#[test]
fn two_records_are_a_permerror() {
    let dns = one("v=spf1 ip4:192.0.2.1 -all").with_txt("example.com", "v=spf1 mx -all");
    let got = check(&dns, "192.0.2.1", "example.com");
    assert_eq!(got.result, SpfResult::PermError);
    assert_eq!(
        got.reason,
        "example.com: 2 SPF records (permerror, RFC 7208 4.5)"
    );
    assert_eq!(
        record(&dns, "example.com"),
        Err("example.com: 2 SPF records (permerror, RFC 7208 4.5)".into())
    );
    let report = audit(&dns, "example.com");
    assert_eq!(
        report.problems,
        vec![Problem {
            fatal: true,
            text: "example.com: several SPF records (2), receivers return permerror".into(),
            fix: "merge them into one".into(),
        }]
    );
}

#[test]
fn none_without_a_record() {
    let dns = Table::default()
        .with_name("example.com")
        .with_txt("other.example.com", "not spf");
    for domain in ["example.com", "nowhere.example.com", "other.example.com"] {
        let got = check(&dns, "192.0.2.1", domain);
        assert_eq!(got.result, SpfResult::None, "{domain}");
        assert_eq!(got.reason, format!("no SPF record at {domain}"));
        assert_eq!(record(&dns, domain), Ok(None));
    }
    // Not a multi-label domain, or malformed: none, without asking.
    let asked = dns.asked.borrow().len();
    for domain in [
        "localhost",
        "a..example.com",
        &format!("{}.example.com", "x".repeat(64)),
    ] {
        assert_eq!(
            result(&dns, "192.0.2.1", domain),
            SpfResult::None,
            "{domain}"
        );
    }
    assert_eq!(dns.asked.borrow().len(), asked);
    let report = audit(&dns, "example.com");
    assert!(report.problems[0].fatal);
    assert!(
        report.problems[0]
            .text
            .starts_with("example.com: no SPF record")
    );
}

#[test]
fn plus_all_is_a_fatal_problem() {
    let dns = one("v=spf1 mx +all").with_mx("example.com", 10, "mail.example.com");
    assert_eq!(result(&dns, "203.0.113.1", "example.com"), SpfResult::Pass);
    let report = audit(&dns, "example.com");
    assert_eq!(
        report.problems,
        vec![Problem {
            fatal: true,
            text: "example.com: \"+all\" lets every host on the Internet pass SPF".into(),
            fix: "end the record with -all (or ~all while testing)".into(),
        }]
    );
    // Also without the +, and in an included record.
    let dns =
        one("v=spf1 include:_spf.provider.test -all").with_txt("_spf.provider.test", "v=spf1 all");
    assert_eq!(result(&dns, "203.0.113.1", "example.com"), SpfResult::Pass);
    assert_eq!(
        audit_texts(&dns),
        vec!["_spf.provider.test: \"all\" lets every host on the Internet pass SPF"]
    );
}

#[test]
fn temporary_dns_failures_are_temperror() {
    let cases = [
        Table::default().with_servfail("example.com"),
        one("v=spf1 include:_spf.provider.test -all").with_servfail("_spf.provider.test"),
        one("v=spf1 a:broken.example.com -all").with_servfail("broken.example.com"),
        one("v=spf1 mx -all")
            .with_mx("example.com", 10, "mx.example.com")
            .with_servfail("mx.example.com"),
        one("v=spf1 exists:%{l}.broken.example.com -all").with_servfail("user.broken.example.com"),
    ];
    for dns in &cases {
        let got = check(dns, "192.0.2.1", "example.com");
        assert_eq!(got.result, SpfResult::TempError, "{}", got.reason);
    }
    assert_eq!(
        check(&cases[2], "192.0.2.1", "example.com").reason,
        "A broken.example.com failed temporarily (SERVFAIL), for a:broken.example.com in the record of example.com"
    );
    assert!(
        record(&cases[0], "example.com")
            .unwrap_err()
            .contains("temporary")
    );
    // A match before the failing term decides first.
    let dns =
        one("v=spf1 ip4:192.0.2.1 a:broken.example.com -all").with_servfail("broken.example.com");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);
    // ptr: a failed lookup of a name skips the name.
    let dns = one("v=spf1 ptr -all")
        .with_ptr("192.0.2.1", "broken.example.com")
        .with_ptr("192.0.2.1", "mail.example.com")
        .with_servfail("broken.example.com")
        .with_ip("mail.example.com", "192.0.2.1");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);
}

#[test]
fn ip4_and_ip6_networks() {
    use SpfResult::{Fail, Pass, PermError};
    for (record, client, want) in [
        ("v=spf1 ip4:0.0.0.0/0 -all", "203.0.113.5", Pass),
        ("v=spf1 ip4:0.0.0.0/0 -all", "2001:db8::1", Fail),
        ("v=spf1 ip4:192.0.2.1/32 -all", "192.0.2.1", Pass),
        ("v=spf1 ip4:192.0.2.1/32 -all", "192.0.2.2", Fail),
        ("v=spf1 ip4:192.0.2.1 -all", "192.0.2.1", Pass),
        ("v=spf1 ip4:192.0.2.1 -all", "192.0.2.0", Fail),
        ("v=spf1 ip4:192.0.2.77/24 -all", "192.0.2.200", Pass),
        ("v=spf1 ip4:192.0.2.0/25 -all", "192.0.2.128", Fail),
        ("v=spf1 ip4:192.0.2.0/33 -all", "192.0.2.1", PermError),
        ("v=spf1 ip4:192.0.2.0/024 -all", "192.0.2.1", PermError),
        ("v=spf1 ip4:192.0.2.0/ -all", "192.0.2.1", PermError),
        ("v=spf1 ip4:192.0.2.0//64 -all", "192.0.2.1", PermError),
        ("v=spf1 ip4:192.0.2.300 -all", "192.0.2.1", PermError),
        ("v=spf1 ip4 -all", "192.0.2.1", PermError),
        ("v=spf1 ip4:2001:db8::1 -all", "192.0.2.1", PermError),
        // IPv4-mapped IPv6 clients are IPv4 clients (RFC 7208 5.6).
        ("v=spf1 ip4:192.0.2.0/24 -all", "::ffff:192.0.2.9", Pass),
        ("v=spf1 ip6:::ffff:0:0/96 -all", "::ffff:192.0.2.9", Fail),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8:ffff::1", Pass),
        ("v=spf1 ip6:2001:db8::/32 -all", "2001:db9::1", Fail),
        ("v=spf1 ip6:2001:db8::/32 -all", "192.0.2.1", Fail),
        ("v=spf1 ip6:2001:db8::1 -all", "2001:db8::1", Pass),
        ("v=spf1 ip6:2001:db8::1/128 -all", "2001:db8::2", Fail),
        (
            "v=spf1 ip6:2001:db8:0:8000::/49 -all",
            "2001:db8:0:7fff::1",
            Fail,
        ),
        (
            "v=spf1 ip6:2001:db8:0:8000::/49 -all",
            "2001:db8:0:ffff::1",
            Pass,
        ),
        ("v=spf1 ip6:::/0 -all", "2001:db8::1", Pass),
        ("v=spf1 ip6:::/0 -all", "192.0.2.1", Fail),
        ("v=spf1 ip6:2001:db8::/129 -all", "2001:db8::1", PermError),
        ("v=spf1 ip6:192.0.2.1 -all", "192.0.2.1", PermError),
    ] {
        let got = check(&one(record), client, "example.com");
        assert_eq!(got.result, want, "{record} from {client}: {}", got.reason);
    }
}

#[test]
fn a_and_mx_use_the_family_of_the_client_and_its_prefix() {
    let dns = one("v=spf1 a/24//64 -all")
        .with_ip("example.com", "192.0.2.1")
        .with_ip("example.com", "2001:db8:1:2::1");
    assert_eq!(result(&dns, "192.0.2.200", "example.com"), SpfResult::Pass);
    assert_eq!(result(&dns, "192.0.3.1", "example.com"), SpfResult::Fail);
    assert_eq!(
        result(&dns, "2001:db8:1:2::99", "example.com"),
        SpfResult::Pass
    );
    assert_eq!(
        result(&dns, "2001:db8:1:3::1", "example.com"),
        SpfResult::Fail
    );
    let asked = dns.asked.borrow().clone();
    assert_eq!(asked.iter().filter(|q| *q == "AAAA example.com").count(), 2);
    assert_eq!(asked.iter().filter(|q| *q == "A example.com").count(), 2);

    let dns = one("v=spf1 mx:mail.example.net//48 -all")
        .with_mx("mail.example.net", 10, "mx1.example.net")
        .with_ip("mx1.example.net", "2001:db8:5::1");
    assert_eq!(
        result(&dns, "2001:db8:5:ff::1", "example.com"),
        SpfResult::Pass
    );
    assert_eq!(
        result(&dns, "2001:db8:6::1", "example.com"),
        SpfResult::Fail
    );

    // exists asks for A records, also for an IPv6 client.
    let dns = one("v=spf1 exists:%{ir}.list.example.com -all").with_ip(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.list.example.com",
        "127.0.0.2",
    );
    assert_eq!(result(&dns, "2001:db8::1", "example.com"), SpfResult::Pass);
    assert!(dns.asked.borrow().iter().all(|q| !q.starts_with("AAAA")));
}

#[test]
fn mx_and_ptr_name_limits() {
    let mut dns = one("v=spf1 mx -all");
    for n in 1..=11 {
        let host = format!("mx{n}.example.com");
        dns = dns
            .with_mx("example.com", n, &host)
            .with_ip(&host, &format!("10.0.1.{n}"));
    }
    assert_eq!(result(&dns, "10.0.1.1", "example.com"), SpfResult::Pass);
    assert_eq!(result(&dns, "10.0.1.10", "example.com"), SpfResult::Pass);
    assert_eq!(
        result(&dns, "10.0.1.11", "example.com"),
        SpfResult::PermError
    );
    assert_eq!(
        result(&dns, "10.0.1.99", "example.com"),
        SpfResult::PermError
    );
    let report = audit(&dns, "example.com");
    assert!(report.problems[0].fatal);
    assert!(
        report.problems[0].text.contains("11 MX hosts"),
        "{:?}",
        report.problems
    );

    // Null MX and no MX: no match, and no implicit MX from the A record.
    let dns = one("v=spf1 mx -all")
        .with_mx("example.com", 0, "")
        .with_ip("example.com", "192.0.2.1");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Fail);
    let dns = one("v=spf1 mx -all").with_ip("example.com", "192.0.2.1");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Fail);

    // Only the first 10 PTR names are validated.
    let mut dns = one("v=spf1 ptr -all");
    for n in 1..=11 {
        let host = format!("h{n}.example.com");
        dns = dns
            .with_ptr("10.0.2.1", &host)
            .with_ip(&host, if n == 11 { "10.0.2.1" } else { "10.9.9.9" });
    }
    assert_eq!(result(&dns, "10.0.2.1", "example.com"), SpfResult::Fail);
}

#[test]
fn names_are_case_insensitive() {
    let dns = appendix_a()
        .with_txt(
            "example.com",
            "V=SPF1 MX A:Amy.Example.COM Ip4:192.0.2.1 INCLUDE:_Spf.Example.Com ~ALL",
        )
        .with_txt("_spf.example.com", "v=Spf1 +IP6:2001:DB8::/32 -All");
    for (client, want) in [
        ("192.0.2.129", SpfResult::Pass),
        ("192.0.2.65", SpfResult::Pass),
        ("192.0.2.1", SpfResult::Pass),
        ("2001:db8::7", SpfResult::Pass),
        ("192.0.2.2", SpfResult::SoftFail),
    ] {
        assert_eq!(result(&dns, client, "Example.COM."), want, "{client}");
    }
}

#[test]
fn syntax_errors_are_permerror_wherever_they_are() {
    for (record, reason) in [
        (
            "v=spf1 ipv4:1.2.3.4 -all",
            "record of example.com: unknown mechanism \"ipv4:1.2.3.4\"",
        ),
        // After a matching term: the whole record is checked first.
        (
            "v=spf1 ip4:192.0.2.1 foo -all",
            "record of example.com: unknown mechanism \"foo\"",
        ),
        (
            "v=spf1 -all:x",
            "record of example.com: \"-all:x\": all takes no argument",
        ),
        (
            "v=spf1 +redirect=x.example.com",
            "record of example.com: unknown mechanism \"+redirect=x.example.com\"",
        ),
        (
            "v=spf1 a:1.2.3.4 -all",
            "record of example.com: \"a:1.2.3.4\": the domain does not end in a top-level label",
        ),
        (
            "v=spf1 include:localhost -all",
            "record of example.com: \"include:localhost\": the domain does not end in a top-level label",
        ),
        (
            "v=spf1 include: -all",
            "record of example.com: \"include:\": a domain is required",
        ),
        (
            "v=spf1 exists -all",
            "record of example.com: \"exists\": a domain is required",
        ),
        (
            "v=spf1 a:%{c}.example.com -all",
            "record of example.com: \"a:%{c}.example.com\": the c, r and t macros are only for explanations",
        ),
        (
            "v=spf1 exists:%{x}.example.com -all",
            "record of example.com: \"exists:%{x}.example.com\": unknown macro letter",
        ),
        (
            "v=spf1 mx/33 -all",
            "record of example.com: \"mx/33\": bad prefix length",
        ),
        (
            "v=spf1 a//129 -all",
            "record of example.com: \"a//129\": bad prefix length",
        ),
        (
            "v=spf1 redirect=a.example.com redirect=b.example.com",
            "record of example.com: redirect= appears twice",
        ),
        (
            "v=spf1 exp=a.example.com exp=b.example.com -all",
            "record of example.com: exp= appears twice",
        ),
        (
            "v=spf1 redirect=",
            "record of example.com: \"redirect=\": a domain is required",
        ),
        (
            "v=spf1 foo=%{ -all",
            "record of example.com: \"foo=%{\": a macro is not closed with }",
        ),
    ] {
        let got = check(&one(record), "192.0.2.1", "example.com");
        assert_eq!(got.result, SpfResult::PermError, "{record}");
        assert_eq!(got.reason, reason, "{record}");
    }
    let texts = audit_texts(&one("v=spf1 ipv4:1.2.3.4 -all"));
    assert_eq!(
        texts,
        vec!["example.com: syntax: unknown mechanism \"ipv4:1.2.3.4\"; receivers return permerror"]
    );
}

#[test]
fn valid_oddities_parse() {
    for record in [
        "v=spf1   ip4:192.0.2.1   -all  ",
        "v=spf1 a:example.com. -all",
        "v=spf1 a:%{d} mx:%{d}/24 -all",
        "v=spf1 exp=why.%{d} -all",
        "v=spf1 foo=bar x-y.z=%{c}%{r}%{t} -all",
        "v=spf1 a:_spf-1.example.com -all",
        "v=spf1 a:x.example.123-4 -all",
        "v=spf1 ?exists:%{ir}.%{L1R+-}._spf.%{d} -all",
    ] {
        assert!(
            Record::parse(record).is_ok(),
            "{record}: {:?}",
            Record::parse(record)
        );
    }
    let record = Record::parse("v=spf1 -mx:mail.example.com/24//64 ~ip6:2001:db8::/48").unwrap();
    assert_eq!(
        record.directives[0],
        Directive {
            qualifier: Qualifier::Fail,
            mechanism: Mechanism::Mx {
                domain: Some("mail.example.com".into()),
                v4: 24,
                v6: 64
            },
            text: "-mx:mail.example.com/24//64".into(),
        }
    );
    assert_eq!(
        record.directives[1].mechanism,
        Mechanism::Ip6 {
            network: "2001:db8::".parse().unwrap(),
            prefix: 48
        }
    );
    assert_eq!(Record::parse("spf2.0/pra -all"), Err(SyntaxError::NotSpf));
}

#[test]
fn unknown_modifiers_and_exp_are_ignored() {
    let dns = one("v=spf1 foo=bar ip4:192.0.2.1 exp=explain.example.com -all");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);
    assert_eq!(result(&dns, "192.0.2.2", "example.com"), SpfResult::Fail);
    assert!(!dns.asked.borrow().iter().any(|q| q.contains("explain")));
}

#[test]
fn include_results() {
    use SpfResult::{Neutral, Pass, PermError, SoftFail, TempError};
    let zone = |included: &str| {
        one("v=spf1 include:_spf.provider.test ~all").with_txt("_spf.provider.test", included)
    };
    for (included, want) in [
        ("v=spf1 ip4:192.0.2.1 -all", Pass),
        ("v=spf1 -ip4:192.0.2.1 +all", SoftFail),
        ("v=spf1 ~all", SoftFail),
        ("v=spf1 ?all", SoftFail),
        ("v=spf1", SoftFail),
        ("v=spf1 ipv4:x", PermError),
        ("v=spf1 redirect=gone.provider.test", PermError),
    ] {
        let got = check(&zone(included), "192.0.2.1", "example.com");
        assert_eq!(got.result, want, "{included}: {}", got.reason);
    }
    assert_eq!(
        check(
            &zone("v=spf1 ip4:192.0.2.1 -all"),
            "192.0.2.1",
            "example.com"
        )
        .reason,
        "include:_spf.provider.test in the record of example.com matched: ip4:192.0.2.1 in the record of _spf.provider.test"
    );
    let missing = one("v=spf1 include:gone.provider.test -all");
    let got = check(&missing, "192.0.2.1", "example.com");
    assert_eq!(got.result, PermError);
    assert_eq!(
        got.reason,
        "include:gone.provider.test in the record of example.com: no SPF record at gone.provider.test (permerror)"
    );
    assert_eq!(
        audit(&missing, "example.com").problems,
        vec![Problem {
            fatal: true,
            text: "example.com: include:gone.provider.test has no SPF record (permerror)".into(),
            fix: "publish the record, or correct or remove the term that names it".into(),
        }]
    );
    let broken = one("v=spf1 include:x.provider.test -all").with_servfail("x.provider.test");
    assert_eq!(result(&broken, "192.0.2.1", "example.com"), TempError);
    assert_eq!(
        check(&one("v=spf1 ip4:10.0.0.1"), "192.0.2.1", "example.com"),
        Evaluation {
            result: Neutral,
            reason: "no mechanism matched in the record of example.com; default ?all".into(),
            lookups: 0
        }
    );
}

#[test]
fn the_sender_fills_the_macros() {
    let dns = one("v=spf1 exists:%{l}.%{o}.users.example.com -all")
        .with_ip("postmaster.example.com.users.example.com", "127.0.0.2")
        .with_ip("joe.mail.example.org.users.example.com", "127.0.0.2");
    for (sender, want) in [
        ("", SpfResult::Pass),
        ("@example.com", SpfResult::Pass),
        ("example.com", SpfResult::Pass),
        ("joe@mail.example.org", SpfResult::Pass),
        ("ann@mail.example.org", SpfResult::Fail),
    ] {
        let got = check_host(
            &dns,
            ip("192.0.2.1"),
            "example.com",
            sender,
            "h.example.net",
        );
        assert_eq!(got.result, want, "{sender:?}: {}", got.reason);
    }
    let dns = one("v=spf1 exists:%{h}.helo.example.com -all")
        .with_ip("mx.example.net.helo.example.com", "127.0.0.2");
    assert_eq!(result(&dns, "192.0.2.1", "example.com"), SpfResult::Pass);
}

#[test]
fn audit_of_a_good_record_finds_nothing() {
    let dns = one("v=spf1 mx include:_spf.provider.test -all")
        .with_mx("example.com", 10, "mail.example.com")
        .with_ip("mail.example.com", "192.0.2.1")
        .with_txt("_spf.provider.test", "v=spf1 ip4:198.51.100.0/24 ?all");
    assert_eq!(
        audit(&dns, "example.com"),
        Audit {
            lookups: 2,
            void_lookups: 0,
            problems: vec![]
        }
    );
}

#[test]
fn audit_advice() {
    let cases: &[(&str, &[&str])] = &[
        (
            "v=spf1 ptr -all",
            &[
                "example.com: the ptr mechanism is deprecated (RFC 7208 5.5) and many receivers skip it",
            ],
        ),
        (
            "v=spf1 ip4:192.0.2.1 ?all",
            &["example.com: \"?all\" makes unmatched hosts neutral, which protects nothing"],
        ),
        (
            "v=spf1 ip4:192.0.2.1",
            &["example.com: no all mechanism or redirect at the end: unmatched hosts are neutral"],
        ),
        (
            "v=spf1 -all ip4:192.0.2.1",
            &["example.com: the terms after \"-all\" are never evaluated"],
        ),
        (
            "v=spf1 include:%{l}.users.example.com -all",
            &[
                "example.com: include:%{l}.users.example.com depends on the sender or the client, so it is not followed here; its lookups are not counted",
            ],
        ),
        (
            "v=spf1 ip4:192.0.2.1 redirect=x.example.com ~all",
            &[
                "example.com: redirect=x.example.com is ignored because the record has an all mechanism",
            ],
        ),
    ];
    for (record, want) in cases {
        let report = audit(&one(record), "example.com");
        let texts: Vec<&str> = report.problems.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(&texts, want, "{record}");
        assert!(report.problems.iter().all(|p| !p.fatal), "{record}");
    }
    // A redirect target decides like the top record, so its ending is checked too.
    let dns =
        one("v=spf1 redirect=_spf.example.com").with_txt("_spf.example.com", "v=spf1 mx ?all");
    assert_eq!(
        audit_texts(&dns),
        vec!["_spf.example.com: \"?all\" makes unmatched hosts neutral, which protects nothing"]
    );
    // %{d} in an include is followed.
    let dns = one("v=spf1 include:_spf.%{d} -all")
        .with_txt("_spf.example.com", "v=spf1 a:mail.%{o} -all")
        .with_ip("mail.example.com", "192.0.2.1");
    assert_eq!(
        audit(&dns, "example.com"),
        Audit {
            lookups: 2,
            void_lookups: 0,
            problems: vec![]
        }
    );
}

#[test]
fn result_names() {
    use SpfResult::*;
    let names: Vec<&str> = [None, Neutral, Pass, Fail, SoftFail, TempError, PermError]
        .map(SpfResult::name)
        .to_vec();
    assert_eq!(
        names,
        [
            "none",
            "neutral",
            "pass",
            "fail",
            "softfail",
            "temperror",
            "permerror"
        ]
    );
}
