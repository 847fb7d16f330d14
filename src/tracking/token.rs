//! Tracking tokens: stateless and authenticated. A token carries what a click, open or
//! unsubscribe link needs (the kind, the message's queue id, the recipient and, for clicks,
//! the original URL) followed by an HMAC-SHA256 over all of it, in URL-safe base64 without
//! padding. Nothing is stored: the endpoint trusts a token only if one of the secrets signed
//! it. Several secrets let keys rotate: the first signs, every one verifies. A forged,
//! truncated or altered token is rejected, so the click endpoint never redirects to a URL it
//! did not sign (no open redirect).
//!
//! Layout before encoding: version (1), kind (1), queue id length (1), queue id, recipient
//! length (2, big-endian), recipient, URL (the rest), then the first 16 bytes of the HMAC
//! (a 128-bit tag, as RFC 2104 section 5 allows; it keeps links short).

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::base64;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Shortest secret accepted from a file.
pub const MIN_SECRET: usize = 16;
/// Longer tokens are refused before any work (URLs in mail are far shorter).
const MAX_TOKEN: usize = 6 * 1024;

/// What a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Click,
    Open,
    Unsubscribe,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Click, Kind::Open, Kind::Unsubscribe];

    fn code(self) -> u8 {
        match self {
            Kind::Click => b'c',
            Kind::Open => b'o',
            Kind::Unsubscribe => b'u',
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        match c {
            b'c' => Some(Kind::Click),
            b'o' => Some(Kind::Open),
            b'u' => Some(Kind::Unsubscribe),
            _ => None,
        }
    }

    /// The event name: `click`, `open`, `unsubscribe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Click => "click",
            Kind::Open => "open",
            Kind::Unsubscribe => "unsubscribe",
        }
    }
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub kind: Kind,
    pub queue_id: String,
    pub recipient: String,
    /// The original URL, for clicks only (http or https, no control characters).
    pub url: Option<String>,
}

/// The tracking secrets: the first signs, all verify.
#[derive(Clone)]
pub struct Keys {
    /// One MAC per secret, keyed once and cloned for each token.
    secrets: Vec<Hmac<Sha256>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        write!(f, "Keys({} secrets)", self.secrets.len())
    }
}

impl Keys {
    /// Keys from secrets in order (the first signs); at least one, none empty.
    pub fn new(secrets: &[Vec<u8>]) -> Result<Keys, String> {
        if secrets.is_empty() {
            return Err("no tracking secret given".into());
        }
        let secrets = secrets
            .iter()
            .map(|s| {
                if s.is_empty() {
                    return Err("a tracking secret is empty".to_string());
                }
                Hmac::<Sha256>::new_from_slice(s)
                    .map_err(|e| format!("cannot use a tracking secret: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Keys { secrets })
    }

    /// A click token for `url`; `None` if the URL is not one the endpoint would redirect to
    /// (see [`redirectable`]) or a field is too long to encode.
    pub fn click(&self, queue_id: &str, recipient: &str, url: &str) -> Option<String> {
        if !redirectable(url) {
            return None;
        }
        self.sign(Kind::Click, queue_id, recipient, url)
    }

    pub fn open(&self, queue_id: &str, recipient: &str) -> Option<String> {
        self.sign(Kind::Open, queue_id, recipient, "")
    }

    pub fn unsubscribe(&self, queue_id: &str, recipient: &str) -> Option<String> {
        self.sign(Kind::Unsubscribe, queue_id, recipient, "")
    }

    fn sign(&self, kind: Kind, queue_id: &str, recipient: &str, url: &str) -> Option<String> {
        let id_len = u8::try_from(queue_id.len()).ok()?;
        let rcpt_len = u16::try_from(recipient.len()).ok()?;
        let mut buf = Vec::with_capacity(4 + queue_id.len() + recipient.len() + url.len() + 32);
        buf.extend_from_slice(&[VERSION, kind.code(), id_len]);
        buf.extend_from_slice(queue_id.as_bytes());
        buf.extend_from_slice(&rcpt_len.to_be_bytes());
        buf.extend_from_slice(recipient.as_bytes());
        buf.extend_from_slice(url.as_bytes());
        let tag = mac(&self.secrets[0], &buf);
        buf.extend_from_slice(&tag[..TAG_LEN]);
        let token = base64::encode_url(&buf);
        (token.len() <= MAX_TOKEN).then_some(token)
    }

    /// The claims of a token one of the secrets signed; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let raw = base64::decode_url(token)?;
        let body_len = raw.len().checked_sub(TAG_LEN)?;
        let (body, tag) = raw.split_at(body_len);
        let signed = self.secrets.iter().any(|key| {
            let mut m = key.clone();
            m.update(body);
            m.verify_truncated_left(tag).is_ok()
        });
        if !signed {
            return None;
        }
        parse(body)
    }
}

fn mac(key: &Hmac<Sha256>, data: &[u8]) -> [u8; 32] {
    let mut m = key.clone();
    m.update(data);
    m.finalize().into_bytes().into()
}

/// A signed body, checked as strictly as if it were not signed.
fn parse(body: &[u8]) -> Option<Claims> {
    let (&[version, kind, id_len], rest) = body.split_first_chunk::<3>()?;
    if version != VERSION {
        return None;
    }
    let kind = Kind::from_code(kind)?;
    let (id, rest) = rest.split_at_checked(usize::from(id_len))?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let (rcpt, url) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
    let text = |b: &[u8]| {
        let s = std::str::from_utf8(b).ok()?;
        (!s.chars().any(char::is_control)).then(|| s.to_string())
    };
    let url = match kind {
        Kind::Click => {
            let url = text(url)?;
            if !redirectable(&url) {
                return None;
            }
            Some(url)
        }
        _ if url.is_empty() => None,
        _ => return None,
    };
    Some(Claims {
        kind,
        queue_id: text(id)?,
        recipient: text(rcpt)?,
        url,
    })
}

/// Whether the click endpoint may redirect to `url`: http or https (any case), something
/// after the scheme, and no control characters or spaces (no header injection).
pub fn redirectable(url: &str) -> bool {
    let lower = |n: usize| url.get(..n).map(str::to_ascii_lowercase);
    let rest = if lower(7).as_deref() == Some("http://") {
        &url[7..]
    } else if lower(8).as_deref() == Some("https://") {
        &url[8..]
    } else {
        return false;
    };
    !rest.is_empty() && !url.chars().any(|c| c.is_control() || c == ' ')
}

/// A secret from a file (`config::read_secret`), refused when shorter than 16 bytes.
pub fn secret_from_file(path: &Path) -> Result<Vec<u8>, String> {
    let s = crate::config::read_secret(path)?;
    if s.len() < MIN_SECRET {
        return Err(format!(
            "the secret in {} is {} bytes; at least {MIN_SECRET} are needed",
            path.display(),
            s.len()
        ));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secrets: &[&str]) -> Keys {
        let v: Vec<Vec<u8>> = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
        Keys::new(&v).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = keys(&["0123456789abcdef"]);
        let url = "https://example.com/a?b=1&c=%20#x";
        let t = k.click("1A2B3C", "bob@example.org", url).unwrap();
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            k.verify(&t),
            Some(Claims {
                kind: Kind::Click,
                queue_id: "1A2B3C".into(),
                recipient: "bob@example.org".into(),
                url: Some(url.into()),
            })
        );
        let o = k.verify(&k.open("q", "r@x").unwrap()).unwrap();
        assert_eq!((o.kind, o.url), (Kind::Open, None));
        let u = k.verify(&k.unsubscribe("q", "r@x").unwrap()).unwrap();
        assert_eq!((u.kind, u.queue_id.as_str()), (Kind::Unsubscribe, "q"));
    }

    #[test]
    fn rotation_first_signs_all_verify() {
        let old = keys(&["old-secret-0123456789"]);
        let both = keys(&["new-secret-0123456789", "old-secret-0123456789"]);
        let new_only = keys(&["new-secret-0123456789"]);
        let t_old = old.open("q", "r@x").unwrap();
        assert!(both.verify(&t_old).is_some());
        assert!(new_only.verify(&t_old).is_none());
        let t_new = both.open("q", "r@x").unwrap();
        assert!(new_only.verify(&t_new).is_some());
        assert!(old.verify(&t_new).is_none());
    }

    #[test]
    fn forged_truncated_or_altered_tokens_are_refused() {
        let k = keys(&["0123456789abcdef"]);
        let other = keys(&["fedcba9876543210"]);
        let t = k
            .click("q1", "bob@example.org", "https://good.example/")
            .unwrap();
        assert!(other.verify(&t).is_none(), "signed with another secret");
        for n in 0..t.len() {
            assert!(k.verify(&t[..n]).is_none(), "truncated to {n}");
        }
        // Every single-character change is refused.
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            assert!(k.verify(&String::from_utf8(b).unwrap()).is_none(), "at {i}");
        }
        // The URL swapped for another, the tag kept.
        let raw = base64::decode_url(&t).unwrap();
        let evil = String::from_utf8_lossy(&raw).replace("good", "evil");
        let mut forged = evil.into_bytes();
        forged.truncate(raw.len());
        assert!(k.verify(&base64::encode_url(&forged)).is_none());
        assert!(k.verify("").is_none());
        assert!(k.verify("not a token!").is_none());
        assert!(k.verify(&"A".repeat(MAX_TOKEN + 1)).is_none());
    }

    #[test]
    fn only_http_urls_are_signed() {
        let k = keys(&["0123456789abcdef"]);
        for bad in [
            "javascript:alert(1)",
            "mailto:a@b",
            "https://",
            "//evil.example/",
            "https://x/\r\nSet-Cookie: a",
            "https://x/ y",
        ] {
            assert!(k.click("q", "r", bad).is_none(), "{bad}");
        }
        assert!(k.click("q", "r", "HTTP://x/").is_some());
    }

    #[test]
    fn secrets_from_files() {
        let dir = std::env::temp_dir().join(format!("mxrelay-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, data: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        assert_eq!(
            secret_from_file(&write("a", b"0123456789abcdef\n")).unwrap(),
            b"0123456789abcdef"
        );
        assert_eq!(
            secret_from_file(&write("b", b"0123456789abcdef\n\n")).unwrap(),
            b"0123456789abcdef\n"
        );
        assert_eq!(
            secret_from_file(&write("c", b"0123456789abcdef\r\n")).unwrap(),
            b"0123456789abcdef"
        );
        let e = secret_from_file(&write("d", b"\n")).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = secret_from_file(&write("e", b"short\n")).unwrap_err();
        assert!(e.contains("at least 16"), "{e}");
        let e = secret_from_file(&dir.join("missing")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
