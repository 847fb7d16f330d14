//! The list as CSV, for `export` and `import`: `address,reason,added,expires`, times in
//! RFC 3339 (UTC), `expires` empty for an entry that does not expire. Fields holding a comma,
//! a quote or surrounding spaces are quoted (RFC 4180). Import also takes one address per
//! line, and lines with fewer fields (reason `manual`, added now, no expiry).

use std::time::{Duration, UNIX_EPOCH};

use super::{Entry, Reason, check_address};

pub const HEADING: &str = "address,reason,added,expires";

/// `2026-12-07T17:33:08.123Z` for unix ms.
pub fn format_time(ms: u64) -> String {
    crate::events::rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Unix ms from RFC 3339 (`2026-12-07T17:33:08Z`, fractions and `+01:00` offsets too), a
/// date (`2026-12-07`, midnight UTC) or unix seconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a time like 2026-12-07T17:33:08Z");
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .ok()
            .and_then(|secs| secs.checked_mul(1000))
            .ok_or_else(bad);
    }
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0, 4), num(5, 2), num(8, 2));
    let (Some(year), Some(month), Some(day)) = (year, month, day) else {
        return Err(bad());
    };
    if b[4] != b'-' || b[7] != b'-' || !(1..=12).contains(&month) || day == 0 || day > 31 {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day).ok_or_else(bad)?;
    if s.len() == 10 {
        return Ok(days * 86_400_000);
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return Err(bad());
    }
    let (Some(h), Some(mi)) = (num(11, 2), num(14, 2)) else {
        return Err(bad());
    };
    let (sec, mut rest) = match (b.get(16), num(17, 2)) {
        (Some(b':'), Some(sec)) => (sec, &s[19..]),
        _ => return Err(bad()),
    };
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let padded = format!("{:0<3}", &frac[..digits.min(3)]);
        ms = padded.parse::<u64>().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_s: i64 = match rest {
        "Z" | "z" => 0,
        r if r.len() == 6
            && (r.starts_with('+') || r.starts_with('-'))
            && r.as_bytes()[3] == b':' =>
        {
            let (Some(oh), Some(om)) = (num(s.len() - 5, 2), num(s.len() - 2, 2)) else {
                return Err(bad());
            };
            let off = (oh * 3600 + om * 60) as i64;
            if r.starts_with('-') { -off } else { off }
        }
        _ => return Err(bad()),
    };
    if h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let local = (days * 86_400 + h * 3600 + mi * 60 + sec) as i64;
    let utc = u64::try_from(local - offset_s).map_err(|_| bad())?;
    Ok(utc * 1000 + ms)
}

/// Days since 1970-01-01 of a date on or after it (proleptic Gregorian calendar).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let month_len = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if day > month_len || year < 1970 {
        return None;
    }
    // Howard Hinnant's days_from_civil, shifted so the year starts in March.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// A CSV field, quoted when it must be.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) || s.trim() != s {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One entry as an export line (without the line end).
pub fn export_line(e: &Entry) -> String {
    format!(
        "{},{},{},{}",
        field(&e.address),
        e.reason.name(),
        format_time(e.added),
        e.expires.map(format_time).unwrap_or_default()
    )
}

/// The fields of one CSV line (RFC 4180 quoting; no line breaks inside fields).
fn fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut f = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        f.push('"');
                    }
                    Some('"') => break,
                    Some(c) => f.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            }
            match chars.next() {
                None => {
                    out.push(f);
                    return Ok(out);
                }
                Some(',') => out.push(f),
                Some(_) => return Err("text after a quoted field".into()),
            }
        } else {
            loop {
                match chars.next() {
                    Some(',') => break,
                    Some(c) => f.push(c),
                    None => {
                        out.push(f.trim().to_string());
                        return Ok(out);
                    }
                }
            }
            out.push(f.trim().to_string());
        }
    }
}

/// One import line: `None` for a blank line, a `#` comment or the heading.
pub fn import_line(line: &str, now: u64) -> Result<Option<Entry>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == HEADING {
        return Ok(None);
    }
    let f = fields(line)?;
    if f.len() > 4 {
        return Err(format!("{} fields; at most 4 ({HEADING})", f.len()));
    }
    let get = |i: usize| f.get(i).map(String::as_str).unwrap_or("");
    let address = get(0);
    let address = address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address);
    check_address(address)?;
    let reason = match get(1) {
        "" => Reason::Manual,
        r => Reason::parse(r)
            .ok_or_else(|| format!("{r:?} is not a reason (unsubscribe, bounce, manual)"))?,
    };
    let added = match get(2) {
        "" => now,
        t => parse_time(t)?,
    };
    let expires = match get(3) {
        "" => None,
        t => Some(parse_time(t)?),
    };
    Ok(Some(Entry {
        address: address.to_string(),
        reason,
        added,
        expires,
    }))
}
