//! The author's domain, from the From: field (RFC 5322 3.6.2 and 3.4): the one mailbox's
//! domain in lower case, or why there is none (several mailboxes, none, a group). Display
//! names, quoted strings and comments may hold commas, '@' and '<'; they are skipped.

#[derive(Debug, PartialEq, Eq)]
pub enum Author {
    Domain(String),
    /// No signature: why.
    Unusable(&'static str),
}

/// Reads a From: field's value (as raw bytes, folds included).
pub fn author(value: &[u8]) -> Author {
    let mut mailboxes: Vec<Vec<u8>> = Vec::new();
    let mut current = Vec::new();
    let mut angle: Option<Vec<u8>> = None;
    let (mut quoted, mut escaped, mut comment) = (false, false, 0usize);
    let mut in_angle = false;
    for &b in value {
        if escaped {
            escaped = false;
            if !quoted && comment == 0 {
                current.push(b);
            }
            continue;
        }
        if b == b'\\' && (quoted || comment > 0) {
            escaped = true;
            continue;
        }
        if quoted {
            if b == b'"' {
                quoted = false;
            }
            continue;
        }
        match b {
            b'(' => comment += 1,
            b')' if comment > 0 => comment -= 1,
            _ if comment > 0 => {}
            b'"' if !in_angle => quoted = true,
            b'<' if !in_angle => {
                in_angle = true;
                angle = Some(Vec::new());
            }
            b'>' if in_angle => in_angle = false,
            _ if in_angle => {
                if let Some(a) = angle.as_mut() {
                    a.push(b);
                }
            }
            b',' => {
                push_mailbox(&mut mailboxes, &mut current, &mut angle);
            }
            b':' | b';' => return Author::Unusable("From: is a group"),
            _ => current.push(b),
        }
    }
    push_mailbox(&mut mailboxes, &mut current, &mut angle);
    match mailboxes.as_slice() {
        [] => Author::Unusable("From: has no address"),
        [one] => domain_of(one),
        _ => Author::Unusable("From: has several addresses"),
    }
}

/// Ends one list element: its address is what was in <> or else the text outside comments.
fn push_mailbox(out: &mut Vec<Vec<u8>>, current: &mut Vec<u8>, angle: &mut Option<Vec<u8>>) {
    let addr = angle.take().unwrap_or_else(|| current.clone());
    current.clear();
    let addr: Vec<u8> = addr
        .into_iter()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .collect();
    if !addr.is_empty() {
        out.push(addr);
    }
}

fn domain_of(addr: &[u8]) -> Author {
    let Some(at) = addr.iter().rposition(|&b| b == b'@') else {
        return Author::Unusable("From: address has no domain");
    };
    let domain = &addr[at + 1..];
    let domain = domain.strip_suffix(b".").unwrap_or(domain);
    match std::str::from_utf8(domain) {
        Ok(d) if !d.is_empty() => Author::Domain(d.to_lowercase()),
        _ => Author::Unusable("From: address has no domain"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_one_author_domain() {
        let table: &[(&str, Result<&str, &str>)] = &[
            (" a@Example.COM\r\n", Ok("example.com")),
            (" <a@example.com>\r\n", Ok("example.com")),
            (" Alice <alice@example.com>\r\n", Ok("example.com")),
            (
                " \"Smith, Alice\" <alice@mail.example.com>\r\n",
                Ok("mail.example.com"),
            ),
            (" \"a@evil.test\" <a@example.com>\r\n", Ok("example.com")),
            (
                " alice@example.com (Alice, <x@evil.test>)\r\n",
                Ok("example.com"),
            ),
            (" (c) a@example.com\r\n", Ok("example.com")),
            (" \"quoted@local\"@example.com\r\n", Ok("example.com")),
            (
                " Very long name\r\n <folded@example.com>\r\n",
                Ok("example.com"),
            ),
            (
                " =?UTF-8?Q?J=C3=B6rg?= <j@example.com>\r\n",
                Ok("example.com"),
            ),
            (" a@example.com.\r\n", Ok("example.com")),
            (" a@example.com,\r\n", Ok("example.com")),
            (
                " a@x.test, b@y.test\r\n",
                Err("From: has several addresses"),
            ),
            (
                " A <a@x.test>, B <b@x.test>\r\n",
                Err("From: has several addresses"),
            ),
            ("\r\n", Err("From: has no address")),
            (" (only a comment)\r\n", Err("From: has no address")),
            (" undisclosed:;\r\n", Err("From: is a group")),
            (" nobody\r\n", Err("From: address has no domain")),
            (" <a@>\r\n", Err("From: address has no domain")),
        ];
        for (value, expected) in table {
            let want = match expected {
                Ok(d) => Author::Domain(d.to_string()),
                Err(why) => Author::Unusable(why),
            };
            assert_eq!(author(value.as_bytes()), want, "{value:?}");
        }
    }
}
