//! The DMARC check (RFC 7489): the policy record at `_dmarc.DOMAIN` (or, failing that, at a
//! parent domain, standing in for the organizational domain: no public suffix list here), and
//! whether mail from the domain through this relay would pass it, by SPF or DKIM aligned with
//! the From: domain.

use super::lookup::Lookup;
use super::report::Finding;
use super::tags;

const CHECK: &str = "dmarc";

/// What the other checks found, as DMARC needs it.
pub struct Identifiers<'a> {
    /// SPF passes for every address mail leaves from, for the domain itself as MAIL FROM
    /// domain (mxrelay keeps the client's envelope sender, so that is the sender's domain).
    pub spf_pass: bool,
    /// The d= domains of the keys whose records hold the right key.
    pub dkim_domains: &'a [String],
}

pub fn check(dns: &dyn Lookup, domain: &str, ids: &Identifiers) -> Vec<Finding> {
    let (owner, record) = match find(dns, domain) {
        Ok(Some(found)) => found,
        Ok(None) => {
            return vec![Finding::fail(
                CHECK,
                format!(
                    "no DMARC record at _dmarc.{domain}: Gmail and Yahoo require one from bulk senders, and receivers have no policy to apply"
                ),
                format!(
                    "publish _dmarc.{domain}. IN TXT \"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}\" and tighten p= once the reports show only your own mail"
                ),
            )];
        }
        Err(e) => {
            return vec![Finding::fail(
                CHECK,
                format!("_dmarc.{domain}: {e}"),
                "check that the domain's name servers answer, then run the check again",
            )];
        }
    };
    let here = format!("_dmarc.{owner}");
    let tags = match tags::parse(&record) {
        Ok(t) => t,
        Err(e) => {
            return vec![Finding::fail(
                CHECK,
                format!("{here}: the record does not parse ({e})"),
                "fix the record: v=DMARC1; p=none|quarantine|reject; rua=mailto:...",
            )];
        }
    };
    let inherited = owner != domain;
    let policy = match (inherited, tags::get(&tags, "sp")) {
        (true, Some(sp)) => sp,
        _ => tags::get(&tags, "p").unwrap_or(""),
    };
    if !matches!(policy, "none" | "quarantine" | "reject") {
        return vec![Finding::fail(
            CHECK,
            format!(
                "{here}: p={policy:?} is not none, quarantine or reject; receivers ignore the record"
            ),
            "set p=none to start, quarantine or reject once reports show only your own mail",
        )];
    }
    let mut out = Vec::new();
    let rua = tags::get(&tags, "rua").filter(|v| !v.is_empty());
    let from = if inherited {
        format!("{here} (inherited by {domain})")
    } else {
        here.clone()
    };
    out.push(match (policy, rua) {
        ("none", None) => Finding::warn(
            CHECK,
            format!("{from}: p=none and no rua=: the policy neither protects the domain nor reports on it"),
            format!("add rua=mailto:dmarc-reports@{domain} to see who sends as {domain}, then move to p=quarantine"),
        ),
        ("none", Some(rua)) => Finding::ok(
            CHECK,
            format!("{from}: p=none (monitoring), reports to {rua}"),
        ),
        (p, _) => Finding::ok(CHECK, format!("{from}: p={p}")),
    });
    if let Some(pct) = tags::get(&tags, "pct")
        && pct != "100"
    {
        out.push(Finding::warn(
            CHECK,
            format!("{here}: pct={pct}: the policy applies to part of the failing mail only"),
            "drop pct= (100 is the default) once the policy is tested",
        ));
    }
    out.push(alignment(domain, &tags, ids));
    out
}

/// Would mail From: `domain` pass DMARC: SPF or DKIM aligned?
fn alignment(domain: &str, tags: &[(String, String)], ids: &Identifiers) -> Finding {
    let strict = tags::get(tags, "adkim") == Some("s");
    let dkim = ids.dkim_domains.iter().find(|d| {
        d.eq_ignore_ascii_case(domain)
            || !strict && domain.to_ascii_lowercase().ends_with(&format!(".{d}"))
    });
    match (ids.spf_pass, dkim) {
        (true, Some(d)) => Finding::ok(
            CHECK,
            format!("mail From: {domain} would pass: SPF aligns and DKIM (d={d}) aligns"),
        ),
        (false, Some(d)) => Finding::ok(
            CHECK,
            format!(
                "mail From: {domain} would pass through DKIM (d={d}); SPF does not pass for the sending addresses"
            ),
        ),
        (true, None) => Finding::warn(
            CHECK,
            format!(
                "mail From: {domain} would pass through SPF alone; forwarded mail loses SPF and then fails DMARC"
            ),
            format!(
                "sign with a DKIM key of {domain} (--dkim {domain}:SELECTOR:KEYFILE) and publish it"
            ),
        ),
        (false, None) => Finding::fail(
            CHECK,
            format!(
                "mail From: {domain} would fail DMARC: neither SPF nor DKIM passes aligned with {domain}"
            ),
            "fix the SPF and DKIM findings above",
        ),
    }
}

/// The DMARC record for `domain`: its own, else that of the nearest parent with one (two
/// labels at least). `Ok(None)` when there is none.
fn find(dns: &dyn Lookup, domain: &str) -> Result<Option<(String, String)>, String> {
    let mut d = domain.trim_end_matches('.').to_ascii_lowercase();
    loop {
        let name = format!("_dmarc.{d}");
        // RFC 7489 6.6.3: records not starting with v=DMARC1 are discarded; several left is none.
        let mut dmarc = dns.texts(&name).map_err(|e| e.to_string())?;
        dmarc.retain(|r| is_dmarc(r));
        match dmarc.len() {
            1 => return Ok(Some((d, dmarc.remove(0)))),
            n if n > 1 => {
                return Err(format!(
                    "{n} DMARC records at {name}: receivers apply none of them; keep one"
                ));
            }
            _ => {}
        }
        match d.split_once('.') {
            Some((_, parent)) if parent.contains('.') => d = parent.to_string(),
            _ => return Ok(None),
        }
    }
}

fn is_dmarc(record: &str) -> bool {
    match record.trim_start().strip_prefix("v=DMARC1") {
        Some(rest) => {
            let rest = rest.trim_start();
            rest.is_empty() || rest.starts_with(';')
        }
        None => false,
    }
}
