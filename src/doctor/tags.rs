//! Tag lists (`name=value; name=value`) of DKIM key records (RFC 6376 3.2) and DMARC records
//! (RFC 7489 6.4): names are case-insensitive, whitespace around names and values is folding.

/// The tags in order, names in lower case and values trimmed; an error names the first
/// malformed or repeated tag.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut tags: Vec<(String, String)> = Vec::new();
    let text = text.trim().strip_suffix(';').unwrap_or(text.trim());
    for spec in text.split(';') {
        let Some((name, value)) = spec.split_once('=') else {
            return Err(format!("{:?} is not name=value", spec.trim()));
        };
        let name = name.trim().to_ascii_lowercase();
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!("{:?} is not a tag name", name));
        }
        if tags.iter().any(|(n, _)| *n == name) {
            return Err(format!("tag {name}= appears twice"));
        }
        tags.push((name, value.trim().to_string()));
    }
    Ok(tags)
}

/// The value of a tag.
pub fn get<'t>(tags: &'t [(String, String)], name: &str) -> Option<&'t str> {
    tags.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists() {
        let t = parse(" v=DKIM1 ; K = rsa;p=MIIB\r\n\tAQAB ;").unwrap();
        assert_eq!(get(&t, "v"), Some("DKIM1"));
        assert_eq!(get(&t, "k"), Some("rsa"));
        assert_eq!(get(&t, "p"), Some("MIIB\r\n\tAQAB"));
        assert_eq!(get(&t, "t"), None);
        assert_eq!(parse("p=").unwrap(), vec![("p".into(), String::new())]);
        assert!(parse("v=DKIM1; p=a; p=b").unwrap_err().contains("twice"));
        assert!(
            parse("v=DKIM1; junk")
                .unwrap_err()
                .contains("not name=value")
        );
        assert!(parse("v=DKIM1; 1x=y").unwrap_err().contains("tag name"));
    }
}
