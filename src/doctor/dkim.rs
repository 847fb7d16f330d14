//! The DKIM check: for each key mxrelay would sign the domain's mail with, the record at
//! `SELECTOR._domainkey.DOMAIN` must exist, parse, and hold the public half of that key
//! (RFC 6376 3.6.1). A mismatch is explained where it can be: a key cut short (a TXT string
//! holds at most 255 characters), split across two records instead of two strings of one
//! record, or pasted with its quotes.

use std::path::Path;

use openssl::pkey::Id;

use super::lookup::Lookup;
use super::report::Finding;
use super::tags;
use crate::transform::dkim::Key;
use crate::transform::dkim::keygen::{dns_value, txt_record};

const CHECK: &str = "dkim";

/// Findings for one signing key, read from `file`.
pub fn check_key(dns: &dyn Lookup, key: &Key, file: &Path) -> Vec<Finding> {
    let name = format!("{}._domainkey.{}", key.selector, key.domain);
    let publish = match txt_record(&key.domain, &key.selector, &key.pkey) {
        Ok(line) => format!("publish this record: {line}"),
        Err(e) => format!("cannot show the record to publish: {e}"),
    };
    let ours = match dns_value(&key.pkey) {
        Ok(v) => v.rsplit_once("p=").map(|(_, p)| p.to_string()).unwrap_or(v),
        Err(e) => {
            return vec![Finding::fail(
                CHECK,
                format!("{}: {e}", file.display()),
                publish,
            )];
        }
    };
    let mut out = Vec::new();
    if key.pkey.id() == Id::RSA && key.pkey.bits() < 2048 {
        out.push(Finding::warn(
            CHECK,
            format!(
                "{}: RSA key of {} bits; receivers expect at least 2048 (RFC 8301)",
                file.display(),
                key.pkey.bits()
            ),
            format!(
                "make a new key (mxrelay dkim-keygen --domain {} --selector NEW) and publish it under a new selector",
                key.domain
            ),
        ));
    }
    let records = match dns.texts(&name) {
        Ok(r) => r,
        Err(e) => {
            out.push(Finding::fail(
                CHECK,
                format!("{name}: {e}"),
                "check that the domain's name servers answer, then run the check again",
            ));
            return out;
        }
    };
    out.push(match records.as_slice() {
        [] => Finding::fail(
            CHECK,
            format!("no DKIM key record at {name}: receivers cannot verify the signatures"),
            publish,
        ),
        [one] => compare(&name, one, &ours, key, file, &publish),
        several => several_records(&name, several, &ours, publish),
    });
    out
}

/// One record at the name: does it hold our key?
fn compare(name: &str, record: &str, ours: &str, key: &Key, file: &Path, publish: &str) -> Finding {
    let bad = |what: String| Finding::fail(CHECK, format!("{name}: {what}"), publish);
    if record.contains('"') {
        return bad(
            "the record contains quote characters: the strings were pasted with their quotes, which became part of the key"
                .into(),
        );
    }
    let tags = match tags::parse(record) {
        Ok(t) => t,
        Err(e) => return bad(format!("the record does not parse ({e})")),
    };
    if let Some(v) = tags::get(&tags, "v")
        && (v != "DKIM1" || tags[0].0 != "v")
    {
        return bad(format!("v={v} must be v=DKIM1 and come first"));
    }
    let want_k = key.algorithm.name().split('-').next().unwrap_or("rsa");
    let k = tags::get(&tags, "k").unwrap_or("rsa");
    if !k.eq_ignore_ascii_case(want_k) {
        return bad(format!(
            "k={k}, but the key in {} is {want_k}",
            file.display()
        ));
    }
    let Some(p) = tags::get(&tags, "p") else {
        return bad("no p= tag: the record holds no key".into());
    };
    let published: String = p.chars().filter(|c| !c.is_whitespace()).collect();
    if published.is_empty() {
        return bad("p= is empty: the key is revoked (RFC 6376 3.6.1)".into());
    }
    if published == ours {
        let testing = tags::get(&tags, "t").is_some_and(|t| t.split(':').any(|f| f.trim() == "y"));
        let what = format!(
            "{name} holds the public key of {} ({} {} bits)",
            file.display(),
            want_k,
            key.pkey.bits()
        );
        if testing {
            return Finding::warn(
                CHECK,
                format!("{what}, flagged t=y (testing): receivers may ignore the signatures"),
                "drop t=y from the record once signatures verify",
            );
        }
        return Finding::ok(CHECK, what);
    }
    if ours.starts_with(&published) {
        return bad(format!(
            "the published key is cut short: {} of its {} characters. A TXT string holds at most 255 characters; publish the value as several strings of one record",
            published.len(),
            ours.len()
        ));
    }
    bad(format!(
        "the published key is not the key in {} (another or an old key)",
        file.display()
    ))
}

/// Several records at the name: verifiers cannot tell which to use. If they join into our key,
/// it was split across records instead of across the strings of one record.
fn several_records(name: &str, records: &[String], ours: &str, publish: String) -> Finding {
    let (first, rest): (Vec<&String>, Vec<&String>) = records
        .iter()
        .partition(|r| r.trim_start().starts_with("v=DKIM1"));
    let joined: String = first.into_iter().chain(rest).map(String::as_str).collect();
    let key_of = |text: &str| -> Option<String> {
        let tags = tags::parse(text).ok()?;
        Some(
            tags::get(&tags, "p")?
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect(),
        )
    };
    let text = if key_of(&joined).as_deref() == Some(ours) {
        format!(
            "the key is split across {} TXT records; DNS returns them in any order and verifiers read one: it must be one record of several strings",
            records.len()
        )
    } else {
        format!(
            "{} TXT records; a key record must be alone at its name",
            records.len()
        )
    };
    Finding::fail(CHECK, format!("{name}: {text}"), publish)
}
