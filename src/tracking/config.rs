//! The tracking flags, checked: `--tracking-url`, `--tracking-secret-file` (repeatable: the
//! first signs, all verify), `--tracking-listen`, `--track`, `--track-exclude`,
//! `--unsubscribe` and `--unsubscribe-mailto`.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Keys, Links, Personal, secret_from_file};
use crate::transform::headers::ControlHeaders;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackingConfig {
    /// The public base URL of the tracking endpoint.
    pub url: Option<String>,
    pub secret_files: Vec<PathBuf>,
    /// Where the endpoint listens (it may be `--metrics-listen` too: one listener serves both).
    pub listen: Option<SocketAddr>,
    /// `--tracking-max-connections`.
    pub max_connections: usize,
    /// `--track` and `--unsubscribe`: what mail from trusted and authenticated clients gets
    /// unless its control headers say otherwise.
    pub defaults: Personal,
    /// Domains (lower case) whose links are never tracked.
    pub exclude: Vec<String>,
    pub mailto: Option<String>,
}

impl TrackingConfig {
    /// Checks that the flags go together.
    pub fn check(&self) -> Result<(), String> {
        match (&self.url, self.secret_files.is_empty()) {
            (Some(_), true) => return Err("--tracking-url needs --tracking-secret-file".into()),
            (None, false) => return Err("--tracking-secret-file needs --tracking-url".into()),
            _ => {}
        }
        if let Some(url) = &self.url {
            // The same check the links make, at start rather than at the first message.
            let keys = Keys::new(&[vec![0; super::token::MIN_SECRET]])?;
            Links::new(url, keys)?;
        } else {
            let d = self.defaults;
            if d.clicks || d.opens {
                return Err("--track needs --tracking-url".into());
            }
            if d.unsubscribe {
                return Err("--unsubscribe needs --tracking-url".into());
            }
            if self.listen.is_some() {
                return Err("--tracking-listen needs --tracking-url".into());
            }
        }
        if self.defaults.unsubscribe && !self.https() {
            return Err("--unsubscribe needs an https --tracking-url (RFC 8058)".into());
        }
        if let Some(m) = &self.mailto {
            super::unsubscribe::fields("https://x/", Some(m))
                .map_err(|e| format!("--unsubscribe-mailto: {e}"))?;
        }
        Ok(())
    }

    fn https(&self) -> bool {
        self.url
            .as_deref()
            .and_then(|u| u.get(..8))
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }

    /// The control-header transform: the defaults, and what can be turned on.
    pub fn control(&self) -> ControlHeaders {
        let tracking = self.url.is_some();
        ControlHeaders {
            defaults: self.defaults,
            available: Personal {
                clicks: tracking,
                opens: tracking,
                unsubscribe: tracking && self.https(),
            },
        }
    }

    /// The links, with the secrets read from their files (at start, while the relay may still
    /// read root's files); `None` without `--tracking-url`.
    pub fn links(&self) -> Result<Option<Links>, String> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let secrets = self
            .secret_files
            .iter()
            .map(|f| secret_from_file(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--tracking-secret-file: {e}"))?;
        Ok(Some(Links::new(url, Keys::new(&secrets)?)?))
    }
}

/// A `--track-exclude` domain, lower case.
pub fn parse_exclude(v: &str) -> Result<String, String> {
    let d = v.trim().trim_end_matches('.').to_ascii_lowercase();
    if !crate::smtp::address::is_valid_domain(&d) {
        return Err(format!("{v:?} is not a domain"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: Option<&str>, secrets: usize, defaults: &str) -> TrackingConfig {
        TrackingConfig {
            url: url.map(String::from),
            secret_files: (0..secrets).map(|i| format!("/s{i}").into()).collect(),
            defaults: Personal::parse(defaults).unwrap(),
            ..TrackingConfig::default()
        }
    }

    #[test]
    fn flags_that_need_each_other() {
        assert!(cfg(None, 0, "").check().is_ok());
        assert!(
            cfg(Some("https://t.example"), 2, "clicks,opens,unsubscribe")
                .check()
                .is_ok()
        );
        assert!(cfg(Some("http://t.example"), 1, "clicks").check().is_ok());
        for (c, why) in [
            (
                cfg(Some("https://t.example"), 0, ""),
                "needs --tracking-secret-file",
            ),
            (cfg(None, 1, ""), "needs --tracking-url"),
            (cfg(None, 0, "opens"), "--track needs"),
            (cfg(None, 0, "unsubscribe"), "--unsubscribe needs"),
            (cfg(Some("http://t.example"), 1, "unsubscribe"), "https"),
            (cfg(Some("ftp://t.example"), 1, ""), "http(s) URL"),
            (cfg(Some("https://t.example/?q"), 1, ""), "without query"),
        ] {
            let e = c.check().unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut c = cfg(Some("https://t.example"), 1, "unsubscribe");
        c.mailto = Some("unsub@example.com".into());
        assert!(c.check().is_ok());
        c.mailto = Some("a b@example.com".into());
        assert!(c.check().is_err());
    }

    #[test]
    fn only_https_allows_unsubscribe_headers() {
        let a = cfg(Some("http://t.example"), 1, "").control().available;
        assert!(a.clicks && a.opens && !a.unsubscribe);
        let a = cfg(Some("HTTPS://t.example"), 1, "").control().available;
        assert!(a.unsubscribe);
        assert!(!cfg(None, 0, "").control().available.any());
    }

    #[test]
    fn excluded_domains() {
        assert_eq!(parse_exclude("Example.COM."), Ok("example.com".into()));
        assert!(parse_exclude("not a domain").is_err());
    }
}
