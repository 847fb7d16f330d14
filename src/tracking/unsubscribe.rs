//! The one-click unsubscribe header fields of a recipient's copy: `List-Unsubscribe` (RFC
//! 2369) with the https link and an optional mailto, and `List-Unsubscribe-Post:
//! List-Unsubscribe=One-Click` (RFC 8058), which tells mailbox providers they may POST to
//! the link. RFC 8058 section 4 wants both fields covered by the DKIM signature.

use crate::transform::head::Field;

/// The two fields for the unsubscribe link `url` (from `Links::unsubscribe`) and an optional
/// `mailto` (an address, or a `mailto:` URI with its own query). Errors name what is wrong.
pub fn fields(url: &str, mailto: Option<&str>) -> Result<[Field; 2], String> {
    let bad = |s: &str| {
        s.is_empty()
            || s.chars()
                .any(|c| c.is_control() || matches!(c, '<' | '>' | ' '))
    };
    if !url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        || bad(url)
    {
        return Err(format!("the unsubscribe link {url:?} must be an https URL"));
    }
    let mut raw = format!("List-Unsubscribe: <{url}>");
    if let Some(m) = mailto {
        let m = if m
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("mailto:"))
        {
            m.to_string()
        } else {
            format!("mailto:{m}")
        };
        if bad(&m) || m.len() == 7 {
            return Err(format!("the unsubscribe address {m:?} is not usable"));
        }
        // Folded before the second entry, so lines stay short (RFC 5322 section 2.1.1).
        raw.push_str(&format!(",\r\n <{m}>"));
    }
    raw.push_str("\r\n");
    let list = Field::from_raw(raw.into_bytes()).ok_or("cannot build List-Unsubscribe")?;
    Ok([
        list,
        Field::new("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_fields() {
        let [list, post] = fields("https://t.example/u/abc", None).unwrap();
        assert_eq!(
            list.raw(),
            b"List-Unsubscribe: <https://t.example/u/abc>\r\n"
        );
        assert_eq!(
            post.raw(),
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        );
        let [list, _] = fields("https://t.example/u/abc", Some("unsub@example.com")).unwrap();
        assert_eq!(
            list.raw(),
            b"List-Unsubscribe: <https://t.example/u/abc>,\r\n <mailto:unsub@example.com>\r\n"
        );
        assert!(list.is("list-unsubscribe"));
        let [list, _] = fields(
            "https://t.example/u/abc",
            Some("mailto:u@example.com?subject=unsubscribe"),
        )
        .unwrap();
        assert!(
            list.raw()
                .ends_with(b" <mailto:u@example.com?subject=unsubscribe>\r\n")
        );
    }

    #[test]
    fn refuses_what_would_break_the_header() {
        for (url, mailto) in [
            ("http://t.example/u/abc", None),
            ("https://t.example/u/a\r\nBcc: x", None),
            ("https://t.example/u/a>b", None),
            ("https://t.example/u/abc", Some("a@b>, <https://evil")),
            ("https://t.example/u/abc", Some("mailto:")),
            ("https://t.example/u/abc", Some("")),
        ] {
            assert!(fields(url, mailto).is_err(), "{url} {mailto:?}");
        }
    }
}
