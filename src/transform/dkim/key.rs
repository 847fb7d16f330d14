//! DKIM signing keys: the `DOMAIN:SELECTOR:KEYFILE` flag value and the private keys it names,
//! read from PEM files in any format OpenSSL reads (PKCS#8, PKCS#1 "RSA PRIVATE KEY", ...).
//! RSA of at least 1024 bits (RFC 8301) and Ed25519 (RFC 8463) are accepted.

use std::path::{Path, PathBuf};

use openssl::pkey::{Id, PKey, Private};

/// The signature algorithm a key makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    RsaSha256,
    Ed25519Sha256,
}

impl Algorithm {
    /// The `a=` tag value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// One signing identity: a domain, a selector and its private key.
pub struct Key {
    /// In lower case.
    pub domain: String,
    pub selector: String,
    pub algorithm: Algorithm,
    pub pkey: PKey<Private>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Key(d={} s={} a={})",
            self.domain,
            self.selector,
            self.algorithm.name()
        )
    }
}

/// The smallest RSA key accepted (RFC 8301 section 3.2).
pub const MIN_RSA_BITS: u32 = 1024;

/// Parses the flag value `DOMAIN:SELECTOR:KEYFILE` (the key file may contain colons).
pub fn parse_spec(s: &str) -> Result<(String, String, PathBuf), String> {
    let mut parts = s.splitn(3, ':');
    let (Some(domain), Some(selector), Some(file)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "--dkim {s:?}: expected DOMAIN:SELECTOR:KEYFILE, e.g. example.com:mail:/etc/mxrelay/mail.pem"
        ));
    };
    check_name("domain", domain).map_err(|e| format!("--dkim {s:?}: {e}"))?;
    check_name("selector", selector).map_err(|e| format!("--dkim {s:?}: {e}"))?;
    if file.is_empty() {
        return Err(format!("--dkim {s:?}: no key file given"));
    }
    Ok((
        domain.trim_end_matches('.').to_ascii_lowercase(),
        selector.to_string(),
        PathBuf::from(file),
    ))
}

/// A domain or selector: dot-separated labels of letters, digits, '-' and '_', each 1 to 63
/// characters (a selector is a sub-domain name, RFC 6376 3.1).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err(format!("empty {what}"));
    }
    if trimmed.len() > 253 {
        return Err(format!("{what} {name:?} is too long"));
    }
    for label in trimmed.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{what} {name:?} is not a DNS name (letters, digits, '-', '_' and dots)"
            ));
        }
    }
    Ok(())
}

/// Reads the private key for one spec, with a clear error naming the file.
pub fn read(domain: &str, selector: &str, path: &Path) -> Result<Key, String> {
    let what = format!(
        "DKIM key for {domain} (selector {selector}) {}",
        path.display()
    );
    let pem = std::fs::read(path).map_err(|e| format!("{what}: cannot read: {e}"))?;
    let pkey = PKey::private_key_from_pem(&pem).map_err(|_| {
        if memchr::memmem::find(&pem, b"PUBLIC KEY").is_some() {
            format!("{what}: is a public key; give the private key")
        } else {
            format!("{what}: not a PEM private key")
        }
    })?;
    let algorithm = match pkey.id() {
        Id::RSA => {
            let bits = pkey.bits();
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "{what}: RSA key of {bits} bits is too weak (at least {MIN_RSA_BITS}, better 2048)"
                ));
            }
            if bits < 2048 {
                log::warn!("{what}: RSA key of {bits} bits; 2048 is recommended (RFC 8301)");
            }
            Algorithm::RsaSha256
        }
        Id::ED25519 => Algorithm::Ed25519Sha256,
        other => {
            return Err(format!(
                "{what}: unsupported key type ({}); DKIM signs with RSA or Ed25519",
                key_type_name(other)
            ));
        }
    };
    Ok(Key {
        domain: domain.to_ascii_lowercase(),
        selector: selector.to_string(),
        algorithm,
        pkey,
    })
}

fn key_type_name(id: Id) -> String {
    match id {
        Id::EC => "EC".into(),
        Id::DSA => "DSA".into(),
        Id::DH => "DH".into(),
        Id::ED448 => "Ed448".into(),
        other => format!("id {}", other.as_raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let ok: &[(&str, (&str, &str, &str))] = &[
            (
                "example.com:mail:/etc/k.pem",
                ("example.com", "mail", "/etc/k.pem"),
            ),
            (
                "Example.COM.:s2026._x:k.pem",
                ("example.com", "s2026._x", "k.pem"),
            ),
            (
                "a.b:sel.sub:/dir/with:colon.pem",
                ("a.b", "sel.sub", "/dir/with:colon.pem"),
            ),
        ];
        for (input, (d, s, f)) in ok {
            assert_eq!(
                parse_spec(input),
                Ok((d.to_string(), s.to_string(), PathBuf::from(f))),
                "{input}"
            );
        }
        for bad in [
            "",
            "example.com",
            "example.com:mail",
            "example.com:mail:",
            ":mail:k.pem",
            "example.com::k.pem",
            "exa mple.com:mail:k.pem",
            "example..com:mail:k.pem",
            "-x.com:mail:k.pem",
            "example.com:ma/il:k.pem",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad:?} is refused");
        }
    }
}
