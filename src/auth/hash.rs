//! Password hashes: which formats the users file may hold (checked completely at load time),
//! verifying a password against one, and making a new one (`mxrelay hash-password`).
//!
//! Accepted: bcrypt `$2y$` / `$2b$` / `$2a$` and SHA-crypt `$6$` / `$5$` (optionally
//! `$6$rounds=N$`); everything else is refused with an error that says how to regenerate the
//! entry, and never quotes the hash.
//!
//! # Timing
//!
//! Hash verification is done by the `bcrypt` and `sha-crypt` crates, which compare in constant
//! time. An unknown user name costs one verification against a dummy hash of the cost class most
//! accounts use (see `Scheme::dummy_hash`), so response time does not reveal which users exist.

use std::str::FromStr;

use sha_crypt::{PasswordVerifier, ShaCrypt};

/// What to tell the user when a hash format is not accepted.
pub(super) const REGENERATE: &str =
    "regenerate with `htpasswd -nbB user pass` or `mxrelay hash-password`";

/// bcrypt cost used by [`hash_password`] (the same as `htpasswd -B -C 10`).
pub(super) const HASH_COST: u32 = 10;

/// Longest password [`Users::verify`] will hash. bcrypt only looks at 72 bytes anyway, but
/// SHA-crypt's work grows with the password length, so an enormous AUTH line must not turn into
/// an enormous amount of hashing.
pub(super) const MAX_PASSWORD_LEN: usize = 1024;

/// Salt and digest of a real bcrypt hash, used to build the dummy hash for unknown users.
const DUMMY_BCRYPT_TAIL: &str = "a09IgmsWMZ04doEWAi3R1.j2YbzmrmT1jT8IquKKX9GSN7Xu2GDFO";
/// Salt and digest of a real SHA-512-crypt hash, for the dummy hash.
const DUMMY_SHA512_TAIL: &str = "ohxnF/JmaaINA09R$rjwoAOKTABaqPTb1KSdvfuawzVsxk6Kg.1LG3x5Rv8qIN.rZFAUqG7gEOehAG8EmSbzv8CwAAnsRw5fJFOcDr.";
/// Salt and digest of a real SHA-256-crypt hash, for the dummy hash.
const DUMMY_SHA256_TAIL: &str = "zShh6BBlzu/jG1vO$3xGkT..QAC9DwsykEP6py98SM32eipG9CMchO/oHfe.";

/// SHA-crypt rounds when the hash does not say (`$6$salt$...`).
const SHA_DEFAULT_ROUNDS: u32 = 5_000;
const SHA_MIN_ROUNDS: u32 = 1_000;
const SHA_MAX_ROUNDS: u32 = 999_999_999;

/// A hash format we can verify, with its work factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Scheme {
    Bcrypt { cost: u32 },
    Sha256 { rounds: u32 },
    Sha512 { rounds: u32 },
}

impl Scheme {
    /// A syntactically valid hash of this scheme and cost that no password matches in practice.
    pub(super) fn dummy_hash(self) -> String {
        match self {
            Scheme::Bcrypt { cost } => format!("$2y${cost:02}${DUMMY_BCRYPT_TAIL}"),
            Scheme::Sha256 { rounds } => format!("$5$rounds={rounds}${DUMMY_SHA256_TAIL}"),
            Scheme::Sha512 { rounds } => format!("$6$rounds={rounds}${DUMMY_SHA512_TAIL}"),
        }
    }

    /// Checks `password` against `hash` (which must be of this scheme).
    pub(super) fn verify(self, password: &[u8], hash: &str) -> bool {
        match self {
            Scheme::Bcrypt { .. } => match bcrypt::verify(password, hash) {
                Ok(ok) => ok,
                Err(e) => {
                    log::warn!("bcrypt verification failed: {e}");
                    false
                }
            },
            Scheme::Sha256 { .. } | Scheme::Sha512 { .. } => {
                match ShaCrypt::default().verify_password(password, hash) {
                    Ok(()) => true,
                    Err(password_hash_error) => {
                        if !matches!(
                            password_hash_error,
                            sha_crypt::password_hash::Error::PasswordInvalid
                        ) {
                            log::warn!("SHA-crypt verification failed: {password_hash_error}");
                        }
                        false
                    }
                }
            }
        }
    }
}

fn unsupported(what: &str) -> String {
    format!("{what} is not supported; {REGENERATE}")
}

fn is_crypt_b64(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '/'
}

/// Recognises and fully validates a hash. Error messages never quote the hash itself.
pub(super) fn classify(hash: &str) -> Result<Scheme, String> {
    if hash.is_empty() {
        return Err(format!("empty password hash; {REGENERATE}"));
    }
    for prefix in ["$2y$", "$2b$", "$2a$"] {
        if hash.starts_with(prefix) {
            return classify_bcrypt(hash);
        }
    }
    if let Some(rest) = hash.strip_prefix("$6$") {
        return classify_sha(hash, rest, true);
    }
    if let Some(rest) = hash.strip_prefix("$5$") {
        return classify_sha(hash, rest, false);
    }
    let known: &[(&str, &str)] = &[
        ("$2x$", "`$2x$` (bcrypt of the buggy crypt_blowfish era)"),
        (
            "$apr1$",
            "`$apr1$` (Apache MD5, htpasswd's default without -B)",
        ),
        ("$1$", "`$1$` (MD5-crypt)"),
        ("$y$", "`$y$` (yescrypt, mkpasswd's default)"),
        ("$gy$", "`$gy$` (GOST yescrypt)"),
        ("$7$", "`$7$` (scrypt)"),
        ("$argon2", "argon2"),
        ("$md5", "SunMD5"),
        ("$3$", "`$3$` (NT hash)"),
        ("{SHA}", "`{SHA}` (unsalted SHA-1, htpasswd -s)"),
        ("{SSHA}", "`{SSHA}` (salted SHA-1)"),
        ("{PLAIN}", "`{PLAIN}` (plaintext)"),
        (
            "{CRYPT}",
            "`{CRYPT}` prefixed hash (remove the prefix if the rest is bcrypt or SHA-crypt)",
        ),
    ];
    for (prefix, what) in known {
        if hash.starts_with(prefix) {
            return Err(unsupported(&format!("{what} hash")));
        }
    }
    if let Some(rest) = hash.strip_prefix('$') {
        let id: String = rest
            .chars()
            .take_while(|c| *c != '$')
            .take(16)
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        return Err(unsupported(&format!("hash scheme `${id}$`")));
    }
    if hash.starts_with('{') {
        return Err(unsupported("an LDAP-style `{SCHEME}` hash"));
    }
    if hash.len() == 13 && hash.chars().all(is_crypt_b64) {
        return Err(unsupported(
            "this looks like a plaintext password or a DES crypt hash (htpasswd -d), which",
        ));
    }
    Err(unsupported(
        "this is not a password hash (plaintext passwords are not accepted), which",
    ))
}

fn classify_bcrypt(hash: &str) -> Result<Scheme, String> {
    if hash.len() != 60 {
        return Err(format!(
            "malformed bcrypt hash: expected 60 characters, found {} (was `$...` expanded by a \
             shell? quote the line in single quotes); {REGENERATE}",
            hash.chars().count()
        ));
    }
    let parts = bcrypt::HashParts::from_str(hash)
        .map_err(|e| format!("malformed bcrypt hash ({e}); {REGENERATE}"))?;
    let cost = parts.get_cost();
    if !(4..=31).contains(&cost) {
        return Err(format!(
            "bcrypt cost {cost} is outside the valid range 4-31; {REGENERATE}"
        ));
    }
    Ok(Scheme::Bcrypt { cost })
}

fn classify_sha(hash: &str, rest: &str, sha512: bool) -> Result<Scheme, String> {
    let name = if sha512 {
        "SHA-512-crypt"
    } else {
        "SHA-256-crypt"
    };
    let malformed = |why: &str| format!("malformed {name} hash: {why}; {REGENERATE}");
    let mut fields: Vec<&str> = rest.split('$').collect();
    let mut rounds = SHA_DEFAULT_ROUNDS;
    if let Some(r) = fields.first().and_then(|f| f.strip_prefix("rounds=")) {
        rounds = r
            .parse::<u32>()
            .ok()
            .filter(|r| (SHA_MIN_ROUNDS..=SHA_MAX_ROUNDS).contains(r))
            .ok_or_else(|| {
                malformed(&format!(
                    "rounds must be a number from {SHA_MIN_ROUNDS} to {SHA_MAX_ROUNDS}"
                ))
            })?;
        fields.remove(0);
    }
    let [salt, digest] = fields[..] else {
        return Err(malformed("expected `$salt$digest` after the prefix"));
    };
    if salt.is_empty() || !salt.chars().all(is_crypt_b64) {
        return Err(malformed("bad salt"));
    }
    let digest_len = if sha512 { 86 } else { 43 };
    if digest.len() != digest_len || !digest.chars().all(is_crypt_b64) {
        return Err(malformed(&format!(
            "the digest must be {digest_len} characters of [./0-9A-Za-z]"
        )));
    }
    // The verifier's own parser must accept it too, or every login would fail at run time.
    sha_crypt::PasswordHashRef::new(hash).map_err(|_| malformed("unparsable"))?;
    Ok(if sha512 {
        Scheme::Sha512 { rounds }
    } else {
        Scheme::Sha256 { rounds }
    })
}

/// A new bcrypt hash in the `$2y$` form htpasswd -B writes (cost 10), for `mxrelay hash-password`.
///
/// # Panics
/// If the operating system's random number generator fails.
pub fn hash_password(password: &str) -> String {
    bcrypt::hash_with_result(password, HASH_COST)
        .expect("bcrypt: cannot get random bytes for the salt")
        .format_for_version(bcrypt::Version::TwoY)
}
