//! Addresses as sendmail's callers give them: RFC 5322 address lists (arguments and To:,
//! Cc:, Bcc:), recipients and `-f` senders qualified with the host name, and `-F` display
//! names.

use crate::smtp::address::Mailbox;

/// The addr-specs of an RFC 5322 address list: angle-addrs, bare addr-specs, quoted display
/// names (commas inside are not separators), comments and groups (`team: a@b, c@d;`).
pub(super) fn parse_address_list(s: &str) -> Vec<String> {
    fn quoted(chars: &mut std::str::Chars, out: &mut String, end: char) {
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '\\' {
                out.extend(chars.next());
            } else if c == end {
                return;
            }
        }
    }
    fn flush(out: &mut Vec<String>, word: &mut String, angle: &mut Option<String>) {
        let addr = match angle.take() {
            // A source route (`@a,@b:user@c`) is dropped.
            Some(a) if a.starts_with('@') => {
                a.split_once(':').map_or(a.clone(), |(_, m)| m.to_string())
            }
            Some(a) => a,
            None => word.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        word.clear();
        if !addr.is_empty() {
            out.push(addr);
        }
    }
    let (mut out, mut word, mut angle) = (Vec::new(), String::new(), None);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                word.push(c);
                quoted(&mut chars, &mut word, '"');
            }
            '[' => {
                word.push(c);
                quoted(&mut chars, &mut word, ']');
            }
            '(' => {
                let mut depth = 1;
                while depth > 0 {
                    match chars.next() {
                        Some('\\') => {
                            chars.next();
                        }
                        Some('(') => depth += 1,
                        Some(')') | None => depth -= 1,
                        Some(_) => {}
                    }
                }
                word.push(' ');
            }
            '<' => {
                let mut a = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '>' => break,
                        '"' => {
                            a.push(c);
                            quoted(&mut chars, &mut a, '"');
                        }
                        c if c.is_whitespace() => {}
                        c => a.push(c),
                    }
                }
                angle = Some(a);
            }
            ':' => word.clear(), // a group's display name
            ',' | ';' => flush(&mut out, &mut word, &mut angle),
            c => word.push(c),
        }
    }
    flush(&mut out, &mut word, &mut angle);
    out
}

fn has_domain(addr: &str) -> bool {
    addr.rfind('@').is_some_and(|i| !addr[i..].contains('"'))
}

/// A recipient as given, qualified with the host name when it has no domain (`root` →
/// `root@host`); a bare `postmaster` stays as is (RFC 5321 4.5.1).
pub(super) fn recipient(addr: &str, host: &str) -> Result<String, String> {
    if addr.eq_ignore_ascii_case("postmaster") {
        return Ok("postmaster".into());
    }
    let a = if has_domain(addr) {
        addr.to_string()
    } else {
        format!("{addr}@{host}")
    };
    match Mailbox::parse(&a) {
        Ok(_) => Ok(a),
        Err(why) => Err(format!(
            "invalid recipient address {addr:?}: {why}; nothing was queued"
        )),
    }
}

/// `-f`'s value: None for the null sender (`<>` or empty), else one qualified address.
pub(super) fn parse_sender(raw: &str, host: &str) -> Result<Option<String>, String> {
    let t = raw.trim();
    if t.is_empty() || t == "<>" {
        return Ok(None);
    }
    let bad = |why: &str| format!("invalid sender address -f {raw:?}: {why}");
    if t.chars().any(char::is_control) {
        return Err(bad("control character"));
    }
    let [a] = parse_address_list(t)
        .try_into()
        .map_err(|_| bad("expected one address"))?;
    let a = if has_domain(&a) {
        a
    } else {
        format!("{a}@{host}")
    };
    Mailbox::parse(&a).map_err(bad)?;
    Ok(Some(a))
}

/// `-F`'s value as an RFC 5322 display name: as is when it is atoms, else quoted, else
/// (non-ASCII) RFC 2047 encoded words.
pub(super) fn display_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let name = name.trim();
    if name.is_empty() {
        return String::new();
    }
    if !name.is_ascii() {
        let mut words = vec![String::new()];
        for c in name.chars() {
            let enc = match c {
                ' ' => "_".to_string(),
                c if c.is_ascii_alphanumeric() || "!*+-/".contains(c) => c.to_string(),
                c => c
                    .encode_utf8(&mut [0; 4])
                    .bytes()
                    .map(|b| format!("={b:02X}"))
                    .collect(),
            };
            // An encoded word is at most 75 characters, 12 of them "=?UTF-8?Q?" and "?=".
            if words.last().unwrap().len() + enc.len() > 63 {
                words.push(String::new());
            }
            words.last_mut().unwrap().push_str(&enc);
        }
        let words: Vec<String> = words.iter().map(|w| format!("=?UTF-8?Q?{w}?=")).collect();
        return words.join(" ");
    }
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    if name
        .split(' ')
        .all(|w| !w.is_empty() && w.bytes().all(atext))
    {
        return name.to_string();
    }
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists() {
        let cases: &[(&str, &[&str])] = &[
            ("a@b", &["a@b"]),
            ("a@b, c@d", &["a@b", "c@d"]),
            ("\"Name, Jr.\" <a@b>, c@d", &["a@b", "c@d"]),
            ("Alice <a@b>", &["a@b"]),
            ("a@b (Alice, the boss), c@d", &["a@b", "c@d"]),
            ("(x) <a@b> (y (nested))", &["a@b"]),
            ("team: e@f, \"G\" <g@h>;, i@j", &["e@f", "g@h", "i@j"]),
            ("undisclosed-recipients:;", &[]),
            ("<@relay.x:a@b>", &["a@b"]),
            ("\"john doe\"@b", &["\"john doe\"@b"]),
            ("<\"a>b\"@c>", &["\"a>b\"@c"]),
            ("user@[IPv6:::1]", &["user@[IPv6:::1]"]),
            ("  ", &[]),
            ("<>", &[]),
            ("Bad Name a@b", &["Bad Name a@b"]),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_address_list(input), want, "{input}");
        }
    }

    #[test]
    fn recipients_and_senders() {
        for (input, want) in [
            ("a@b.test", Ok("a@b.test".to_string())),
            ("root", Ok("root@host.test".into())),
            ("Postmaster", Ok("postmaster".into())),
            ("\"x@y\"", Ok("\"x@y\"@host.test".into())),
            (
                "a b@c.test",
                Err(
                    "invalid recipient address \"a b@c.test\": bad local part; nothing was queued"
                        .into(),
                ),
            ),
        ] {
            let got = recipient(input, "host.test");
            assert_eq!(got.is_ok(), want.is_ok(), "{input}: {got:?}");
            if want.is_ok() {
                assert_eq!(got, want, "{input}");
            }
        }
        for (input, want) in [
            ("", Some(None)),
            ("<>", Some(None)),
            ("x@y.test", Some(Some("x@y.test"))),
            ("<x@y.test>", Some(Some("x@y.test"))),
            ("Bounce <x@y.test>", Some(Some("x@y.test"))),
            ("www-data", Some(Some("www-data@host.test"))),
            ("a@b, c@d", None),
            ("x@y.test\r\nRCPT TO:<z@z>", None),
        ] {
            let got = parse_sender(input, "host.test");
            assert_eq!(got.ok(), want.map(|w| w.map(String::from)), "{input}");
        }
    }

    #[test]
    fn display_names() {
        for (input, want) in [
            ("Cron Daemon", "Cron Daemon"),
            ("CronDaemon", "CronDaemon"),
            ("J. Smith", "\"J. Smith\""),
            ("Smith, John", "\"Smith, John\""),
            ("a \"b\" \\c", "\"a \\\"b\\\" \\\\c\""),
            ("evil\r\nBcc: x@y", "\"evil  Bcc: x@y\""),
            ("José Müller", "=?UTF-8?Q?Jos=C3=A9_M=C3=BCller?="),
            (" \t ", ""),
        ] {
            assert_eq!(display_name(input), want, "{input}");
        }
        let long = display_name(&"é".repeat(40));
        assert!(long.split(' ').all(|w| w.len() <= 75), "{long}");
        assert_eq!(long.split(' ').count(), 4, "{long}");
    }
}
