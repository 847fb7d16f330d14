//! The HTML side of tracking, on a decoded HTML part's bytes (in the part's own charset,
//! which is left as it is: the markup and URLs are ASCII): rewrites the `href` of `<a>` and
//! `<area>` tags through the caller's function, and inserts the open pixel before `</body>`.
//! A small byte scanner, not an HTML parser: tags, quoted and unquoted attribute values and
//! comments are enough to find links without being fooled by a `>` inside a value.

/// What was done to one HTML text.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Edits {
    pub links: usize,
    pub pixel: bool,
}

/// Rewrites `html`: each `href` of an `<a>` or `<area>` tag holding an http(s) URL goes to
/// `track` (HTML-unescaped); a `Some` replaces it (escaped). Links on a tag with a
/// `data-notrack` attribute, and any other scheme or a relative link, are left alone. With a
/// `pixel` URL, a 1x1 image is inserted before the last `</body>`, or at the end.
pub fn rewrite(
    html: &[u8],
    track: &mut dyn FnMut(&str) -> Option<String>,
    pixel: Option<&str>,
) -> (Vec<u8>, Edits) {
    let mut out = Vec::with_capacity(html.len() + 1024);
    let mut edits = Edits::default();
    let mut copied = 0;
    let mut i = 0;
    while let Some(lt) = memchr::memchr(b'<', &html[i..]).map(|p| p + i) {
        if html[lt..].starts_with(b"<!--") {
            i = find(html, lt + 4, b"-->").map_or(html.len(), |e| e + 3);
            continue;
        }
        let Some(tag) = scan_tag(html, lt) else {
            break;
        };
        i = tag.end;
        let linking = tag.name.eq_ignore_ascii_case(b"a") || tag.name.eq_ignore_ascii_case(b"area");
        if !linking
            || tag
                .attrs
                .iter()
                .any(|a| a.name.eq_ignore_ascii_case(b"data-notrack"))
        {
            continue;
        }
        for attr in &tag.attrs {
            if !attr.name.eq_ignore_ascii_case(b"href") {
                continue;
            }
            let Some((start, end, quote)) = attr.value else {
                continue;
            };
            let Ok(value) = String::from_utf8(unescape(&html[start..end])) else {
                continue;
            };
            let url = value.trim_matches(|c: char| c.is_ascii_whitespace());
            if !is_http(url) {
                continue;
            }
            if let Some(tracked) = track(url) {
                out.extend_from_slice(&html[copied..start]);
                let q: &[u8] = if quote { b"" } else { b"\"" };
                out.extend_from_slice(q);
                out.extend_from_slice(escape(&tracked).as_bytes());
                out.extend_from_slice(q);
                copied = end;
                edits.links += 1;
            }
        }
    }
    let Some(pixel) = pixel else {
        out.extend_from_slice(&html[copied..]);
        return (out, edits);
    };
    let at = rfind_ci(&html[copied..], b"</body").map_or(html.len(), |p| p + copied);
    out.extend_from_slice(&html[copied..at]);
    out.extend_from_slice(
        format!(
            "<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" \
             style=\"display:block;border:0;width:1px;height:1px\">",
            escape(pixel)
        )
        .as_bytes(),
    );
    out.extend_from_slice(&html[at..]);
    edits.pixel = true;
    (out, edits)
}

fn is_http(url: &str) -> bool {
    let starts = |p: &str| {
        url.get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    };
    starts("http://") || starts("https://")
}

fn find(h: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    h.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The last case-insensitive occurrence of `needle`.
fn rfind_ci(h: &[u8], needle: &[u8]) -> Option<usize> {
    h.windows(needle.len())
        .rposition(|w| w.eq_ignore_ascii_case(needle))
}

struct Attr<'a> {
    name: &'a [u8],
    /// Start and end of the value in the text, and whether it was quoted.
    value: Option<(usize, usize, bool)>,
}

struct Tag<'a> {
    name: &'a [u8],
    attrs: Vec<Attr<'a>>,
    /// Just after the closing `>`.
    end: usize,
}

/// The tag starting at `h[lt] == '<'`; `None` if it never closes. A `<` not followed by a
/// tag name (text, `</x>`, `<!DOCTYPE>`) gives a tag without attributes.
fn scan_tag(h: &[u8], lt: usize) -> Option<Tag<'_>> {
    let is_ws = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c');
    let mut i = lt + 1;
    let name_start = i;
    while i < h.len() && h[i].is_ascii_alphanumeric() {
        i += 1;
    }
    let name = &h[name_start..i];
    if name.is_empty() {
        // Not an opening tag: resume the search after the `<`.
        return Some(Tag {
            name,
            attrs: Vec::new(),
            end: lt + 1,
        });
    }
    let mut attrs = Vec::new();
    loop {
        while i < h.len() && (is_ws(h[i]) || h[i] == b'/') {
            i += 1;
        }
        if *h.get(i)? == b'>' {
            break;
        }
        let s = i;
        while i < h.len() && !is_ws(h[i]) && !matches!(h[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let name = &h[s..i];
        while i < h.len() && is_ws(h[i]) {
            i += 1;
        }
        let mut value = None;
        if h.get(i) == Some(&b'=') {
            i += 1;
            while i < h.len() && is_ws(h[i]) {
                i += 1;
            }
            match *h.get(i)? {
                q @ (b'"' | b'\'') => {
                    let close = memchr::memchr(q, &h[i + 1..])? + i + 1;
                    value = Some((i + 1, close, true));
                    i = close + 1;
                }
                _ => {
                    let s = i;
                    while i < h.len() && !is_ws(h[i]) && h[i] != b'>' {
                        i += 1;
                    }
                    value = Some((s, i, false));
                }
            }
        }
        if name.is_empty() && value.is_none() {
            // A stray character (`=` alone): step over it.
            i += 1;
            continue;
        }
        attrs.push(Attr { name, value });
    }
    Some(Tag {
        name,
        attrs,
        end: i + 1,
    })
}

/// HTML character references in an attribute value: the named ones URLs use, and numeric
/// ones; anything else is kept as written.
fn unescape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'&'
            && let Some((ch, len)) = reference(&v[i + 1..])
        {
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            i += 1 + len;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// The character of the reference at the start of `v` (after the `&`) and its length,
/// the `;` included.
fn reference(v: &[u8]) -> Option<(char, usize)> {
    let semi = v.iter().take(12).position(|&b| b == b';')?;
    let name = std::str::from_utf8(&v[..semi]).ok()?;
    let ch = match name {
        "amp" | "AMP" => '&',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "sol" => '/',
        "equals" => '=',
        "quest" => '?',
        "num" => '#',
        "percnt" => '%',
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((ch, semi + 1))
}

/// Escapes a URL for an attribute value in double quotes.
fn escape(url: &str) -> String {
    if !url.contains(['&', '"', '\'', '<', '>']) {
        return url.to_string();
    }
    let mut out = String::with_capacity(url.len() + 8);
    for c in url.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(html: &str, pixel: Option<&str>) -> (String, Vec<String>) {
        let mut seen = Vec::new();
        let mut f = |u: &str| {
            seen.push(u.to_string());
            (!u.contains("exclude.example")).then(|| format!("https://t/c?u={u}"))
        };
        let (out, _) = rewrite(html.as_bytes(), &mut f, pixel);
        (String::from_utf8(out).unwrap(), seen)
    }

    #[test]
    fn links_in_every_spelling() {
        let table = [
            (
                r#"<a href="http://a/">x</a>"#,
                r#"<a href="https://t/c?u=http://a/">x</a>"#,
            ),
            (
                r#"<A HREF='https://a/'>"#,
                r#"<A HREF='https://t/c?u=https://a/'>"#,
            ),
            (
                r#"<a href = "http://a/">"#,
                r#"<a href = "https://t/c?u=http://a/">"#,
            ),
            (
                r#"<a href=http://a/>"#,
                r#"<a href="https://t/c?u=http://a/">"#,
            ),
            (
                r#"<a class="x" href=http://a/ id=y>"#,
                r#"<a class="x" href="https://t/c?u=http://a/" id=y>"#,
            ),
            (
                r#"<a href="http://a/?x=1&amp;y=2">"#,
                r#"<a href="https://t/c?u=http://a/?x=1&amp;y=2">"#,
            ),
            (
                r#"<a title="a>b" href="http://a/">"#,
                r#"<a title="a>b" href="https://t/c?u=http://a/">"#,
            ),
            (
                "<a\r\n href=\"http://a/\">",
                "<a\r\n href=\"https://t/c?u=http://a/\">",
            ),
            (
                r#"<area href="http://a/">"#,
                r#"<area href="https://t/c?u=http://a/">"#,
            ),
        ];
        for (input, want) in table {
            assert_eq!(track(input, None).0, want, "{input}");
        }
    }

    #[test]
    fn left_alone() {
        for input in [
            r#"<a href="mailto:a@b">"#,
            r##"<a href="#top">"##,
            r#"<a href="tel:+123">"#,
            r#"<a href="/relative">"#,
            r#"<a href="page.html">"#,
            r#"<a data-notrack href="http://a/">"#,
            r#"<a href="http://a/" data-notrack="1">"#,
            r#"<a href="https://exclude.example/x">"#,
            r#"<link href="http://a/style.css">"#,
            r#"<base href="http://a/">"#,
            r#"<!-- <a href="http://a/"> -->"#,
            r#"<a href="http://a/"#,
            "a < b and <a",
        ] {
            assert_eq!(track(input, None).0, input);
        }
    }

    #[test]
    fn passes_the_unescaped_url() {
        let (_, seen) = track(r#"<a href="http://a/?x=1&amp;y=2&#38;z=&#x33;">"#, None);
        assert_eq!(seen, ["http://a/?x=1&y=2&z=3"]);
    }

    #[test]
    fn pixel_before_the_body_end_or_at_the_end() {
        let img = r#"<img src="https://t/o?a=1&amp;b" width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">"#;
        let (out, _) = track("<html><body>hi</BODY></html>", Some("https://t/o?a=1&b"));
        assert_eq!(out, format!("<html><body>hi{img}</BODY></html>"));
        let (out, _) = track("<p>hi", Some("https://t/o?a=1&b"));
        assert_eq!(out, format!("<p>hi{img}"));
    }
}
