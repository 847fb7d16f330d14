//! The public URLs of tracking tokens: the operator's base URL (`--tracking-url`) followed by
//! `/c/TOKEN` (click), `/o/TOKEN` (open pixel) or `/u/TOKEN` (unsubscribe), the routes
//! `endpoint` answers.

use super::token::Keys;

/// Builds the links of one relay's tracking endpoint.
#[derive(Clone, Debug)]
pub struct Links {
    base: String,
    keys: Keys,
}

impl Links {
    /// `base` is the public base URL, http or https, without query or fragment (a trailing
    /// `/` is dropped).
    pub fn new(base: &str, keys: Keys) -> Result<Links, String> {
        let b = base.trim_end_matches('/');
        if !super::token::redirectable(b) || b.contains(['?', '#']) {
            return Err(format!(
                "the tracking URL {base:?} must be an http(s) URL without query or fragment"
            ));
        }
        Ok(Links {
            base: b.to_string(),
            keys,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The tracking link for `url`; `None` when it cannot be tracked (not http(s)).
    pub fn click(&self, queue_id: &str, recipient: &str, url: &str) -> Option<String> {
        let token = self.keys.click(queue_id, recipient, url)?;
        Some(format!("{}/c/{token}", self.base))
    }

    pub fn open(&self, queue_id: &str, recipient: &str) -> Option<String> {
        let token = self.keys.open(queue_id, recipient)?;
        Some(format!("{}/o/{token}", self.base))
    }

    pub fn unsubscribe(&self, queue_id: &str, recipient: &str) -> Option<String> {
        let token = self.keys.unsubscribe(queue_id, recipient)?;
        Some(format!("{}/u/{token}", self.base))
    }

    /// The link function for a `Rewriter`: tracks each http(s) link for this recipient,
    /// except this endpoint's own links (the unsubscribe link among them) and links to the
    /// `exclude`d domains or their subdomains (`--track-exclude`, lower case).
    pub fn click_tracker<'a>(
        &'a self,
        queue_id: &'a str,
        recipient: &'a str,
        exclude: &'a [String],
    ) -> impl FnMut(&str) -> Option<String> + 'a {
        move |url: &str| {
            if self.is_own(url) {
                return None;
            }
            let host = host(url)?;
            let excluded = exclude.iter().any(|d| {
                host == *d
                    || host
                        .strip_suffix(d.as_str())
                        .is_some_and(|p| p.ends_with('.'))
            });
            if excluded {
                return None;
            }
            self.click(queue_id, recipient, url)
        }
    }

    /// Whether `url` is one of this endpoint's own links (never tracked again).
    pub fn is_own(&self, url: &str) -> bool {
        url.get(..self.base.len())
            .is_some_and(|b| b.eq_ignore_ascii_case(&self.base))
            && url[self.base.len()..].starts_with('/')
    }
}

/// The host of an http(s) URL, lower case, without user info or port.
fn host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(h, _)| &h[1..])
    } else {
        host.split(':').next().unwrap_or(host)
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::Kind;

    #[test]
    fn urls_carry_verifiable_tokens() {
        let keys = Keys::new(&[b"0123456789abcdef".to_vec()]).unwrap();
        let links = Links::new("https://t.example/", keys.clone()).unwrap();
        let c = links.click("q", "r@x", "https://a/").unwrap();
        let token = c.strip_prefix("https://t.example/c/").unwrap();
        assert_eq!(
            keys.verify(token).unwrap().url.as_deref(),
            Some("https://a/")
        );
        let u = links.unsubscribe("q", "r@x").unwrap();
        let token = u.strip_prefix("https://t.example/u/").unwrap();
        assert_eq!(keys.verify(token).unwrap().kind, Kind::Unsubscribe);
        assert!(
            links
                .open("q", "r@x")
                .unwrap()
                .starts_with("https://t.example/o/")
        );
        assert!(links.is_own(&u));
        assert!(!links.is_own("https://t.example.evil/x"));
        assert!(links.click("q", "r", "mailto:a@b").is_none());
        for bad in ["t.example", "ftp://t.example", "https://t.example/?x", ""] {
            assert!(Links::new(bad, keys.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_tracker_skips_own_and_excluded_links() {
        let keys = Keys::new(&[b"0123456789abcdef".to_vec()]).unwrap();
        let links = Links::new("https://t.example", keys).unwrap();
        let exclude = vec!["example.net".to_string()];
        let mut track = links.click_tracker("q", "r@x", &exclude);
        assert!(track("https://shop.example/a").is_some());
        assert!(track("https://notexample.net/").is_some());
        for left in [
            "https://example.net/",
            "https://www.EXAMPLE.net./x",
            "http://user@a.example.net:8080/?x",
            "https://t.example/u/abc",
            "mailto:a@b",
        ] {
            assert_eq!(track(left), None, "{left}");
        }
        assert_eq!(host("http://[::1]:80/").as_deref(), Some("::1"));
        assert_eq!(host("https://a.b?x=http://c").as_deref(), Some("a.b"));
    }
}
