//! SMTP AUTH credentials and brute-force protection.
//!
//! # Users file
//!
//! One account per line, `user:hash[:domain,domain...]`; blank lines and lines starting with `#`
//! are ignored and surrounding whitespace is trimmed. The format is compatible with what
//! `htpasswd -nbB user pass` prints, so lines can be appended without our own tool:
//!
//! ```text
//! # alice may send as anyone, bob only from two domains
//! alice:$2y$05$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRxfo4eTXPh4i
//! bob:$6$ohxnF/JmaaINA09R$rjwoAOKT...:example.com,example.org
//! ```
//!
//! Accepted hashes (checked completely at load time, so a typo is a start-up error and never a
//! silent "every login fails"):
//!
//! * bcrypt `$2y$` / `$2b$` / `$2a$` (`htpasswd -nbB`, `mkpasswd -m bcrypt`, `mxrelay hash-password`);
//! * SHA-crypt `$6$` / `$5$`, optionally `$6$rounds=N$` (`mkpasswd -m sha-512`, `openssl passwd -6`,
//!   `openssl passwd -5`, `htpasswd -5` / `-2`, older `/etc/shadow` entries).
//!
//! Everything else — `$apr1$` (htpasswd's default!), `$1$`, `$y$` yescrypt (the `mkpasswd` default
//! on current Debian), `{SHA}`, DES crypt, plaintext — is refused with an error that names the
//! line and says how to regenerate the entry. Error messages never contain a hash (or whatever
//! else was written in the hash column, which might be a plaintext password).
//!
//! The optional third column lists the envelope sender domains the user may use in `MAIL FROM`
//! (exact match, case-insensitive; no subdomain matching). Without it, any sender is allowed.
//!
//! # Timing
//!
//! Hash verification is done by the `bcrypt` and `sha-crypt` crates, which compare in constant
//! time. An unknown user name costs one verification against a dummy hash of the cost class most
//! accounts use, so response time does not reveal which users exist.
//!
//! # Brute-force guard
//!
//! [`FailureGuard`] counts failed AUTH attempts per client address in a sliding window and locks
//! the address out for one window once the limit is reached. IPv6 clients are counted per /64
//! (one host can trivially use a whole /64), IPv4-mapped IPv6 addresses count as their IPv4
//! address. The table is bounded: expired entries are pruned when new addresses are inserted and
//! at most 10 000 addresses are tracked (the least recently failing one is dropped first).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha_crypt::{PasswordVerifier, ShaCrypt};

/// What to tell the user when a hash format is not accepted.
const REGENERATE: &str = "regenerate with `htpasswd -nbB user pass` or `mxrelay hash-password`";

/// bcrypt cost used by [`hash_password`] (the same as `htpasswd -B -C 10`).
const HASH_COST: u32 = 10;

/// Longest password [`Users::verify`] will hash. bcrypt only looks at 72 bytes anyway, but
/// SHA-crypt's work grows with the password length, so an enormous AUTH line must not turn into
/// an enormous amount of hashing.
const MAX_PASSWORD_LEN: usize = 1024;

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

/// One account from the users file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    pub hash: String,
    /// lower-case domains this user may send from; empty = any
    pub sender_domains: Vec<String>,
}

/// Why the users file could not be loaded.
#[derive(Debug)]
pub enum UsersError {
    /// The file could not be read (the message does not include the path; the caller adds it).
    Io(std::io::Error),
    /// A line is malformed. `line` is 1-based.
    Line { line: usize, reason: String },
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsersError::Io(e) => write!(f, "{e}"),
            UsersError::Line { line, reason } => write!(f, "line {line}: {reason}"),
        }
    }
}

impl std::error::Error for UsersError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UsersError::Io(e) => Some(e),
            UsersError::Line { .. } => None,
        }
    }
}

impl From<std::io::Error> for UsersError {
    fn from(e: std::io::Error) -> Self {
        UsersError::Io(e)
    }
}

/// A hash format we can verify, with its work factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Scheme {
    Bcrypt { cost: u32 },
    Sha256 { rounds: u32 },
    Sha512 { rounds: u32 },
}

impl Scheme {
    /// A syntactically valid hash of this scheme and cost that no password matches in practice.
    fn dummy_hash(self) -> String {
        match self {
            Scheme::Bcrypt { cost } => format!("$2y${cost:02}${DUMMY_BCRYPT_TAIL}"),
            Scheme::Sha256 { rounds } => format!("$5$rounds={rounds}${DUMMY_SHA256_TAIL}"),
            Scheme::Sha512 { rounds } => format!("$6$rounds={rounds}${DUMMY_SHA512_TAIL}"),
        }
    }

    /// Checks `password` against `hash` (which must be of this scheme).
    fn verify(self, password: &[u8], hash: &str) -> bool {
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
fn classify(hash: &str) -> Result<Scheme, String> {
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

/// Validates a sender domain and returns it in lower case.
fn normalize_domain(domain: &str) -> Result<String, String> {
    let d = domain.trim();
    if d.is_empty() {
        return Err("empty sender domain".into());
    }
    if d.starts_with('@') || d.contains('@') {
        return Err(format!(
            "sender domain `{}` must be a bare domain like `example.com`, without `@`",
            d.escape_debug()
        ));
    }
    if !d.is_ascii() {
        return Err(format!(
            "sender domain `{}` is not ASCII; write internationalized domains in their \
             `xn--` (A-label) form",
            d.escape_debug()
        ));
    }
    let bad = |why: &str| {
        Err(format!(
            "invalid sender domain `{}`: {why}",
            d.escape_debug()
        ))
    };
    if d.len() > 253 {
        return bad("longer than 253 characters");
    }
    if d.ends_with('.') {
        return bad("remove the trailing dot");
    }
    for label in d.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return bad("only letters, digits, `-` and `.` are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with `-`");
        }
    }
    if d.rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return bad("looks like an IP address, not a domain");
    }
    Ok(d.to_ascii_lowercase())
}

fn validate_user(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("empty user name".into());
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "user name `{}` contains whitespace or control characters",
            user.escape_debug()
        ));
    }
    Ok(())
}

/// The accounts from the users file.
#[derive(Clone)]
pub struct Users {
    accounts: HashMap<String, Account>,
    /// Verified instead of a real hash when the user does not exist.
    dummy_hash: String,
    dummy_scheme: Scheme,
}

impl Default for Users {
    /// No accounts; unknown users are checked against a dummy of [`hash_password`]'s cost.
    fn default() -> Self {
        Users::with_accounts(HashMap::new(), Scheme::Bcrypt { cost: HASH_COST })
    }
}

impl fmt::Debug for Users {
    /// Lists user names only: hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.accounts.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Users").field("users", &names).finish()
    }
}

impl Users {
    /// Reads and parses the users file (see [`Users::parse`]). Warns (log) when the file is
    /// readable by other users.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o007 != 0
            {
                log::warn!(
                    "users file {} is accessible to all users of this machine; chmod 600 or 640 it",
                    path.display()
                );
            }
        }
        Users::parse(&text)
    }

    /// Parses users-file text: one `user:hash[:domain,domain...]` per line; blank lines and `#`
    /// comments ignored; surrounding whitespace trimmed.
    ///
    /// Hash formats accepted: bcrypt `$2y$`/`$2b$`/`$2a$`, SHA-crypt `$6$` / `$5$` including
    /// `$6$rounds=N$`. Anything else is an error naming the line and saying what to use instead.
    /// Duplicate users are an error. Domains must be plain ASCII domain names; they are stored in
    /// lower case and de-duplicated. An empty third column (`user:hash:`) is an error: leave the
    /// column out to allow every sender domain.
    pub fn parse(text: &str) -> Result<Users, UsersError> {
        let mut accounts: HashMap<String, Account> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut schemes: HashMap<Scheme, usize> = HashMap::new();
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| UsersError::Line {
                line: line_no,
                reason,
            };
            let fields: Vec<&str> = line.split(':').map(str::trim).collect();
            let (user, hash, domains) = match fields[..] {
                [_] => {
                    return Err(err(
                        "expected `user:hash[:domain,...]` (no `:` found)".into()
                    ));
                }
                [u, h] => (u, h, None),
                [u, h, d] => (u, h, Some(d)),
                _ => {
                    return Err(err(
                        "too many `:`-separated fields; expected `user:hash[:domain,...]`".into(),
                    ));
                }
            };
            validate_user(user).map_err(&err)?;
            if let Some(first) = first_line.get(user) {
                return Err(err(format!(
                    "duplicate user `{user}` (first defined on line {first})"
                )));
            }
            let scheme = classify(hash).map_err(|r| err(format!("user `{user}`: {r}")))?;
            let mut sender_domains: Vec<String> = Vec::new();
            if let Some(list) = domains {
                if list.is_empty() {
                    return Err(err(format!(
                        "user `{user}`: empty sender domain list (leave out the third field to \
                         allow every sender domain)"
                    )));
                }
                for d in list.split(',') {
                    let d = normalize_domain(d).map_err(|r| err(format!("user `{user}`: {r}")))?;
                    if !sender_domains.contains(&d) {
                        sender_domains.push(d);
                    }
                }
            }
            *schemes.entry(scheme).or_default() += 1;
            first_line.insert(user.to_owned(), line_no);
            accounts.insert(
                user.to_owned(),
                Account {
                    user: user.to_owned(),
                    hash: hash.to_owned(),
                    sender_domains,
                },
            );
        }
        // The dummy hash has the cost class most accounts use (ties: the more expensive one), so
        // an unknown user takes as long as a typical known one. Default: what hash_password makes.
        let dummy_scheme = schemes
            .into_iter()
            .max_by_key(|&(scheme, count)| (count, scheme))
            .map_or(Scheme::Bcrypt { cost: HASH_COST }, |(scheme, _)| scheme);
        Ok(Users::with_accounts(accounts, dummy_scheme))
    }

    fn with_accounts(accounts: HashMap<String, Account>, dummy_scheme: Scheme) -> Users {
        Users {
            accounts,
            dummy_hash: dummy_scheme.dummy_hash(),
            dummy_scheme,
        }
    }

    /// Adds a sender domain for `user` (from `--sender-domain USER=DOMAIN`). A user that had no
    /// domain list (any sender allowed) becomes restricted to the added domain(s). Adding a
    /// domain that is already listed is a no-op. Err if the user does not exist or the domain is
    /// not a valid domain name.
    pub fn add_sender_domain(&mut self, user: &str, domain: &str) -> Result<(), String> {
        let account = self.accounts.get_mut(user).ok_or_else(|| {
            format!(
                "unknown user `{}` (not in the users file)",
                user.escape_debug()
            )
        })?;
        let d = normalize_domain(domain)?;
        if !account.sender_domains.contains(&d) {
            account.sender_domains.push(d);
        }
        Ok(())
    }

    /// The account named `user` (exact, case-sensitive match).
    pub fn get(&self, user: &str) -> Option<&Account> {
        self.accounts.get(user)
    }

    /// Number of accounts.
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    /// True when the file had no accounts.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Verifies in constant time w.r.t. the password (the hash libraries do that). Unknown users
    /// still cost one hash verification against a dummy hash of the most common cost class, so
    /// timing does not reveal which users exist. Passwords longer than 1024 bytes are refused
    /// without hashing.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        if password.len() > MAX_PASSWORD_LEN {
            return false;
        }
        match self.accounts.get(user) {
            Some(account) => match classify(&account.hash) {
                Ok(scheme) => scheme.verify(password, &account.hash),
                Err(_) => false, // not reachable: parse() validated every hash
            },
            None => {
                let _ = self.dummy_scheme.verify(password, &self.dummy_hash);
                false
            }
        }
    }

    /// Whether `user` may use the envelope sender domain `domain` (case-insensitive exact match;
    /// an empty list allows everything). Unknown users are not allowed anything.
    pub fn sender_allowed(&self, user: &str, domain: &str) -> bool {
        match self.accounts.get(user) {
            None => false,
            Some(a) => {
                a.sender_domains.is_empty()
                    || a.sender_domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(domain))
            }
        }
    }
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

/// Most client addresses [`FailureGuard`] tracks at once.
const MAX_TRACKED: usize = 10_000;
/// Below this many entries the guard does not bother pruning.
const MIN_PRUNE: usize = 256;

/// Failures of one address (or IPv6 /64).
struct Record {
    /// Times of the most recent failures within the window, at most `max_failures` of them.
    failures: VecDeque<Instant>,
    /// When the limit was last reached.
    locked_at: Option<Instant>,
    /// Latest failure (for expiry and eviction).
    last: Instant,
}

struct GuardState {
    map: HashMap<IpAddr, Record>,
    /// Prune expired entries when the map reaches this size (amortises the O(n) sweep).
    prune_at: usize,
}

/// Brute-force guard shared by all sessions: counts failed AUTH per client address in a sliding
/// window. IPv6 addresses are grouped by /64. `max_failures == 0` or a zero window disables it.
pub struct FailureGuard {
    max_failures: u32,
    window: Duration,
    max_tracked: usize,
    state: Mutex<GuardState>,
}

impl fmt::Debug for FailureGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailureGuard")
            .field("max_failures", &self.max_failures)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// The key an address is counted under: IPv4-mapped IPv6 becomes IPv4, other IPv6 its /64.
fn guard_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        },
    }
}

impl FailureGuard {
    /// A guard allowing `max_failures` failed attempts per address within `window`.
    pub fn new(max_failures: u32, window: Duration) -> FailureGuard {
        FailureGuard::with_max_tracked(max_failures, window, MAX_TRACKED)
    }

    fn with_max_tracked(max_failures: u32, window: Duration, max_tracked: usize) -> FailureGuard {
        let max_tracked = max_tracked.max(1);
        FailureGuard {
            max_failures,
            window,
            max_tracked,
            state: Mutex::new(GuardState {
                map: HashMap::new(),
                prune_at: MIN_PRUNE.min(max_tracked),
            }),
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn within(&self, t: Instant, now: Instant) -> bool {
        now.saturating_duration_since(t) < self.window
    }

    fn record_locked(&self, r: &Record, now: Instant) -> bool {
        r.locked_at.is_some_and(|t| self.within(t, now))
    }

    fn disabled(&self) -> bool {
        self.max_failures == 0 || self.window.is_zero()
    }

    /// Makes room for one new address: drops expired entries (amortised) and, at the cap, the
    /// entry whose last failure is oldest.
    fn make_room(&self, st: &mut GuardState, now: Instant) {
        if st.map.len() >= st.prune_at {
            st.map.retain(|_, r| self.within(r.last, now));
            st.prune_at = (st.map.len() * 2).max(MIN_PRUNE).min(self.max_tracked);
        }
        while st.map.len() >= self.max_tracked {
            let Some(oldest) = st.map.iter().min_by_key(|(_, r)| r.last).map(|(k, _)| *k) else {
                break;
            };
            st.map.remove(&oldest);
        }
    }

    /// Records a failure at `now`; returns true when the address has now reached max_failures
    /// within the window (caller answers 421 and disconnects). Reaching the limit (again) starts
    /// a lockout of one window from `now`.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> bool {
        if self.disabled() {
            return false;
        }
        let key = guard_key(ip);
        let mut st = self.lock_state();
        if !st.map.contains_key(&key) {
            self.make_room(&mut st, now);
        }
        let r = st.map.entry(key).or_insert_with(|| Record {
            failures: VecDeque::new(),
            locked_at: None,
            last: now,
        });
        let window = self.window;
        r.failures
            .retain(|&t| now.saturating_duration_since(t) < window);
        r.failures.push_back(now);
        while r.failures.len() > self.max_failures as usize {
            r.failures.pop_front();
        }
        r.last = r.last.max(now);
        if r.failures.len() >= self.max_failures as usize {
            r.locked_at = Some(r.locked_at.map_or(now, |t| t.max(now)));
        }
        self.record_locked(r, now)
    }

    /// True while the address is locked out (max_failures reached within the last `window`):
    /// the caller refuses AUTH with 421 right away.
    pub fn is_locked(&self, ip: IpAddr, now: Instant) -> bool {
        if self.disabled() {
            return false;
        }
        let st = self.lock_state();
        st.map
            .get(&guard_key(ip))
            .is_some_and(|r| self.record_locked(r, now))
    }

    /// A successful login clears the address's failures.
    pub fn clear(&self, ip: IpAddr) {
        self.lock_state().map.remove(&guard_key(ip));
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock_state().map.len()
    }
}

/// `--users`, `--sender-domain` and the brute-force guard's flags.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub users: Option<std::path::PathBuf>,
    pub sender_domains: Vec<(String, String)>,
    pub max_failures: u32,
    pub lockout: Duration,
}

impl AuthConfig {
    /// The accounts file, if there is one.
    pub fn load_users(&self) -> std::io::Result<Option<std::sync::Arc<UsersFile>>> {
        let err = |flag: &str, e: String| std::io::Error::other(format!("{flag}: {e}"));
        match &self.users {
            Some(path) => UsersFile::load(path, &self.sender_domains)
                .map(|u| Some(std::sync::Arc::new(u)))
                .map_err(|e| err("--users", e)),
            None if !self.sender_domains.is_empty() => {
                Err(err("--sender-domain", "needs --users".into()))
            }
            None => Ok(None),
        }
    }

    pub fn guard(&self) -> FailureGuard {
        FailureGuard::new(self.max_failures, self.lockout)
    }
}

/// The users file as the server sees it: loaded at start, swapped on reload (SIGHUP)
/// without disturbing sessions in progress.
pub struct UsersFile {
    path: std::path::PathBuf,
    sender_domains: Vec<(String, String)>,
    current: std::sync::RwLock<std::sync::Arc<Users>>,
}

impl UsersFile {
    /// `sender_domains` are the `--sender-domain USER=DOMAIN` flags, merged into every load.
    pub fn load(path: &Path, sender_domains: &[(String, String)]) -> Result<UsersFile, String> {
        let users = Self::read(path, sender_domains)?;
        Ok(UsersFile {
            path: path.to_path_buf(),
            sender_domains: sender_domains.to_vec(),
            current: std::sync::RwLock::new(std::sync::Arc::new(users)),
        })
    }

    fn read(path: &Path, sender_domains: &[(String, String)]) -> Result<Users, String> {
        let mut users = Users::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (user, domain) in sender_domains {
            users
                .add_sender_domain(user, domain)
                .map_err(|e| format!("--sender-domain {user}={domain}: {e}"))?;
        }
        Ok(users)
    }

    pub fn get(&self) -> std::sync::Arc<Users> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the file; a broken file is logged and the old accounts stay in use.
    pub fn reload(&self) -> bool {
        match Self::read(&self.path, &self.sender_domains) {
            Ok(users) => {
                log::info!(
                    "auth: {} accounts reloaded from {}",
                    users.len(),
                    self.path.display()
                );
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    std::sync::Arc::new(users);
                true
            }
            Err(e) => {
                log::error!("auth: reload failed, keeping the old accounts: {e}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    // Test vectors produced by the real tools (Debian: apache2-utils 2.4, whois' mkpasswd,
    // OpenSSL 3). Password is `secret` unless noted.
    /// `htpasswd -nbB alice secret`
    const HTPASSWD_B: &str = "$2y$05$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRxfo4eTXPh4i";
    /// `htpasswd -nbB -C 5 bob 'p@ss w0rd'`
    const HTPASSWD_B_SPACE: &str = "$2y$05$ofkx3XUvr90n05WR4dt.WejDSYmXb/2NhKj19g8M1fWJuuoBh7pKi";
    /// `htpasswd -nbB -C 10 carol 'correct horse'`
    const HTPASSWD_B10: &str = "$2y$10$a09IgmsWMZ04doEWAi3R1.j2YbzmrmT1jT8IquKKX9GSN7Xu2GDFO";
    /// `mkpasswd -m bcrypt`
    const MKPASSWD_BCRYPT: &str = "$2b$05$cE88tsgkvdq0MQWhQ2EPwuH3EuKihZtGUD9SqcW3BmbMiDPEq.oNS";
    /// `mkpasswd -m bcrypt-a`
    const MKPASSWD_BCRYPT_A: &str = "$2a$05$BMSf3NmhOzU5FR1XxWlnhut38XMnIPOvlRDgbhfpzfpjR0yHA0BBm";
    /// `mkpasswd -m sha-512`
    const MKPASSWD_SHA512: &str = "$6$ohxnF/JmaaINA09R$rjwoAOKTABaqPTb1KSdvfuawzVsxk6Kg.1LG3x5Rv8qIN.rZFAUqG7gEOehAG8EmSbzv8CwAAnsRw5fJFOcDr.";
    /// `mkpasswd -m sha-512 -R 10000`
    const MKPASSWD_SHA512_ROUNDS: &str = "$6$rounds=10000$tbpKIkqZrbl.88Dx$QxGlEULiIqwJyRm7TbIxh0R4fpgiogAwYqnzsM8xVgnphT7ihIfQdWyih1uScL3zzYpuNno3G87/cpjqxdk/y1";
    /// `mkpasswd -m sha-512` with password `pässwörd`
    const MKPASSWD_SHA512_UTF8: &str = "$6$Ve1FBkBYABB71lHR$r4WcKdfwo5g05dBtNCpSqt7LgIR3kfmLcN6s1KIDAXW/yibzz58HjL1quRmxj6js3ZLUAdyYhsTFKk7gn8qBc1";
    /// `mkpasswd -m sha-256`
    const MKPASSWD_SHA256: &str = "$5$LqACpBRDQSUxP5Ok$vWbvJlAdLGQJPNoPNN8VGM8ZEOFMPQjXtqG5dQf8dQ8";
    /// `mkpasswd -m sha-256 -R 1000`
    const MKPASSWD_SHA256_ROUNDS: &str =
        "$5$rounds=1000$LNJApKiK0sY50a7k$TIbCCDXsNsGnxMfRbNxCsc8Mk0.DchsaxmQjeuMkoy9";
    /// `openssl passwd -6 secret`
    const OPENSSL_6: &str = "$6$zfA4z1i9x/LKW1qZ$NqpkVtnxEb6bWqZn/1Gfg1II3CS9AC4VGxaCLyKCB58K/UJBPnbGnn0Fll6qgHkwGVhws4ICFd9hbt/ouKUhO1";
    /// `openssl passwd -5 secret`
    const OPENSSL_5: &str = "$5$zShh6BBlzu/jG1vO$3xGkT..QAC9DwsykEP6py98SM32eipG9CMchO/oHfe.";
    /// `htpasswd -nb -5 x secret`
    const HTPASSWD_5: &str = "$6$l5YrSLP4Fc9RYbeV$476bHpGolzqWUtRbmv6he628PV5phVHM5R64NzxNjd.hKHNaVr5M5gNmGFL5.hLdKaXgxGHBxvUlPIMeyCLhg.";
    /// `htpasswd -nb -2 x secret`
    const HTPASSWD_2: &str = "$5$RUP.tQWx6VSEsasF$WBUgUSkcY6l1dxaq7yWspcFzpZzppkcq13gCpMrDIJA";

    // Rejected formats, also from the tools (password `secret`).
    /// `htpasswd -nb x secret` (default: Apache MD5)
    const HTPASSWD_APR1: &str = "$apr1$Srg5BGR9$v2o2ui55wxAx4BuKOIMU8/";
    /// `openssl passwd -1 secret`
    const OPENSSL_MD5: &str = "$1$ky3d3E11$1BHltRGPSPy9VVLgJsdGG/";
    /// `mkpasswd secret` (Debian 12+ default: yescrypt)
    const MKPASSWD_YESCRYPT: &str =
        "$y$j9T$uViRq1JV2au87/EPskvGb/$DJOYwS3bqlfjIHTdKjaTswB.nrx8ZG0KGj73xRuMsPC";
    /// `htpasswd -nbs x secret`
    const HTPASSWD_SHA1: &str = "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=";
    /// `htpasswd -nbd x secret`
    const HTPASSWD_DES: &str = "JXDpu8AZnr/1M";

    fn one(hash: &str) -> Users {
        Users::parse(&format!("u:{hash}\n")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn line_err(text: &str) -> (usize, String) {
        match Users::parse(text) {
            Err(UsersError::Line { line, reason }) => (line, reason),
            Err(e) => panic!("unexpected error {e}"),
            Ok(u) => panic!("parsed: {u:?}"),
        }
    }

    #[test]
    fn tool_hashes_verify() {
        let cases: &[(&str, &str)] = &[
            (HTPASSWD_B, "secret"),
            (HTPASSWD_B_SPACE, "p@ss w0rd"),
            (HTPASSWD_B10, "correct horse"),
            (MKPASSWD_BCRYPT, "secret"),
            (MKPASSWD_BCRYPT_A, "secret"),
            (MKPASSWD_SHA512, "secret"),
            (MKPASSWD_SHA512_ROUNDS, "secret"),
            (MKPASSWD_SHA512_UTF8, "pässwörd"),
            (MKPASSWD_SHA256, "secret"),
            (MKPASSWD_SHA256_ROUNDS, "secret"),
            (OPENSSL_6, "secret"),
            (OPENSSL_5, "secret"),
            (HTPASSWD_5, "secret"),
            (HTPASSWD_2, "secret"),
        ];
        for &(hash, password) in cases {
            let users = one(hash);
            assert!(
                users.verify("u", password.as_bytes()),
                "right password: {hash}"
            );
            assert!(!users.verify("u", b"Secret"), "wrong password: {hash}");
            assert!(!users.verify("u", b""), "empty password: {hash}");
            assert!(
                !users.verify("U", password.as_bytes()),
                "user names are case-sensitive"
            );
            assert!(!users.verify("nobody", password.as_bytes()));
        }
    }

    #[test]
    fn htpasswd_output_line_parses_as_is() {
        // `htpasswd -nbB` prints `user:hash` followed by an empty line.
        let users = Users::parse(&format!("alice:{HTPASSWD_B}\n\n")).unwrap();
        assert_eq!(users.len(), 1);
        assert!(!users.is_empty());
        let a = users.get("alice").unwrap();
        assert_eq!(a.user, "alice");
        assert_eq!(a.hash, HTPASSWD_B);
        assert!(a.sender_domains.is_empty());
        assert!(users.verify("alice", b"secret"));
        assert!(!users.verify("alice", b"secret "));
    }

    #[test]
    fn rejected_formats_name_line_and_remedy() {
        let cases: &[(&str, &str)] = &[
            (HTPASSWD_APR1, "$apr1$"),
            (OPENSSL_MD5, "$1$"),
            (MKPASSWD_YESCRYPT, "yescrypt"),
            (HTPASSWD_SHA1, "{SHA}"),
            (HTPASSWD_DES, "DES"),
            ("secret", "plaintext"),
            ("hunter2-is-my-password", "plaintext"),
            (
                "$2x$05$cE88tsgkvdq0MQWhQ2EPwuH3EuKihZtGUD9SqcW3BmbMiDPEq.oNS",
                "$2x$",
            ),
            ("$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$hash", "argon2"),
            ("$9$abc$def", "`$9$`"),
            ("{SSHA}abcdef", "{SSHA}"),
        ];
        for &(hash, what) in cases {
            let text = format!("# users\n\nok:{HTPASSWD_B}\nbad:{hash}\n");
            let (line, reason) = line_err(&text);
            assert_eq!(line, 4, "{hash}");
            assert!(reason.contains(what), "{hash}: {reason}");
            assert!(reason.contains("user `bad`"), "{reason}");
            assert!(reason.contains(REGENERATE), "{reason}");
            assert!(
                reason.contains(
                    "regenerate with `htpasswd -nbB user pass` or `mxrelay hash-password`"
                )
            );
            assert!(!reason.contains(hash), "hash leaked: {reason}");
            let shown = Users::parse(&text).unwrap_err().to_string();
            assert!(shown.starts_with("line 4: user `bad`: "), "{shown}");
            assert!(!shown.contains(hash), "hash leaked: {shown}");
        }
    }

    #[test]
    fn malformed_supported_hashes() {
        // A shell expanded `$05` and `$4Zzy...`: "$2y.qsu6..." etc.
        let (_, r) = line_err("u:$2y$05$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRx\n");
        assert!(r.contains("expected 60 characters"), "{r}");
        assert!(r.contains(REGENERATE));
        // Invalid base64 in a 60-character bcrypt hash.
        let (_, r) = line_err("u:$2y$05$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRxfo4eTXPh4!\n");
        assert!(r.contains("malformed bcrypt"), "{r}");
        let (_, r) = line_err("u:$2y$99$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRxfo4eTXPh4i\n");
        assert!(r.contains("cost 99"), "{r}");
        let (_, r) = line_err(&format!("u:{}\n", &MKPASSWD_SHA512[..60]));
        assert!(r.contains("malformed SHA-512-crypt"), "{r}");
        let (_, r) = line_err(
            "u:$6$rounds=500$tbpKIkqZrbl.88Dx$QxGlEULiIqwJyRm7TbIxh0R4fpgiogAwYqnzsM8xVgnphT7ihIfQdWyih1uScL3zzYpuNno3G87/cpjqxdk/y1\n",
        );
        assert!(r.contains("rounds"), "{r}");
        let (_, r) = line_err("u:$5$$3xGkT..QAC9DwsykEP6py98SM32eipG9CMchO/oHfe.\n");
        assert!(r.contains("salt"), "{r}");
        let (_, r) = line_err("u:$5$salt\n");
        assert!(r.contains("malformed SHA-256-crypt"), "{r}");
        let (_, r) = line_err("u:\n");
        assert!(r.contains("empty password hash"), "{r}");
    }

    #[test]
    fn comments_blank_lines_and_whitespace() {
        let text = format!(
            "# mxrelay users\n\n   \n\t# indented comment\n  alice:{HTPASSWD_B}  \r\n\
             \tbob : {OPENSSL_6} : Example.COM , example.org \n#carol:{HTPASSWD_B10}\n"
        );
        let users = Users::parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.get("carol").is_none());
        assert!(users.verify("alice", b"secret"));
        assert!(users.verify("bob", b"secret"));
        assert_eq!(
            users.get("bob").unwrap().sender_domains,
            vec!["example.com".to_string(), "example.org".to_string()]
        );
        let empty = Users::parse("# nothing\n\n").unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert!(!empty.verify("alice", b"secret"));
    }

    #[test]
    fn line_structure_errors() {
        let (line, r) = line_err("\n\njust-a-name\n");
        assert_eq!(line, 3);
        assert!(r.contains("no `:`"), "{r}");
        let (_, r) = line_err(&format!("a:{HTPASSWD_B}:example.com:extra\n"));
        assert!(r.contains("too many"), "{r}");
        let (_, r) = line_err(&format!(":{HTPASSWD_B}\n"));
        assert!(r.contains("empty user name"), "{r}");
        let (_, r) = line_err(&format!("al ice:{HTPASSWD_B}\n"));
        assert!(r.contains("whitespace"), "{r}");
    }

    #[test]
    fn duplicate_user() {
        let text = format!("alice:{HTPASSWD_B}\nbob:{OPENSSL_5}\n\nalice:{MKPASSWD_SHA512}\n");
        let (line, r) = line_err(&text);
        assert_eq!(line, 4);
        assert!(r.contains("duplicate user `alice`"), "{r}");
        assert!(r.contains("line 1"), "{r}");
        // Differently-cased names are different users.
        let users = Users::parse(&format!("alice:{HTPASSWD_B}\nAlice:{OPENSSL_5}\n")).unwrap();
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn sender_domains_column() {
        let text = format!(
            "any:{HTPASSWD_B}\nlimited:{HTPASSWD_B}:Example.com,mail.example.org,example.com\n\
             local:{HTPASSWD_B}:localhost\n"
        );
        let users = Users::parse(&text).unwrap();
        assert_eq!(
            users.get("limited").unwrap().sender_domains,
            vec!["example.com", "mail.example.org"]
        );
        assert!(users.sender_allowed("any", "whatever.test"));
        assert!(users.sender_allowed("limited", "example.com"));
        assert!(users.sender_allowed("limited", "EXAMPLE.COM"));
        assert!(users.sender_allowed("limited", "Mail.Example.Org"));
        assert!(!users.sender_allowed("limited", "example.org"));
        assert!(!users.sender_allowed("limited", "sub.example.com"));
        assert!(!users.sender_allowed("limited", ""));
        assert!(users.sender_allowed("local", "localhost"));
        assert!(!users.sender_allowed("nobody", "example.com"));

        for (domains, expect) in [
            ("", "empty sender domain list"),
            ("example.com,", "empty sender domain"),
            ("@example.com", "without `@`"),
            ("user@example.com", "without `@`"),
            ("bücher.de", "xn--"),
            ("example.com.", "trailing dot"),
            ("exa_mple.com", "only letters"),
            ("-example.com", "`-`"),
            ("example..com", "empty label"),
            ("192.0.2.1", "IP address"),
            ("*.example.com", "only letters"),
        ] {
            let (line, r) = line_err(&format!("u:{HTPASSWD_B}:{domains}\n"));
            assert_eq!(line, 1);
            assert!(r.contains(expect), "{domains}: {r}");
            assert!(r.contains("user `u`"), "{r}");
        }
        let long_label = "a".repeat(64);
        let (_, r) = line_err(&format!("u:{HTPASSWD_B}:{long_label}.com\n"));
        assert!(r.contains("63"), "{r}");
        assert!(Users::parse(&format!("u:{HTPASSWD_B}:xn--bcher-kva.de,a-b.c0m\n")).is_ok());
    }

    #[test]
    fn add_sender_domain_merges() {
        let text = format!("any:{HTPASSWD_B}\nlimited:{HTPASSWD_B}:example.com\n");
        let mut users = Users::parse(&text).unwrap();
        let e = users
            .add_sender_domain("nobody", "example.com")
            .unwrap_err();
        assert!(e.contains("unknown user `nobody`"), "{e}");
        let e = users.add_sender_domain("any", "not a domain").unwrap_err();
        assert!(e.contains("invalid sender domain"), "{e}");
        assert!(
            users.sender_allowed("any", "x.test"),
            "a failed add changes nothing"
        );

        users.add_sender_domain("limited", "Example.NET").unwrap();
        users.add_sender_domain("limited", "example.com").unwrap(); // already there
        assert_eq!(
            users.get("limited").unwrap().sender_domains,
            vec!["example.com", "example.net"]
        );
        assert!(users.sender_allowed("limited", "example.net"));

        // A user that could send as anyone becomes restricted to what the flag adds.
        users.add_sender_domain("any", "example.org").unwrap();
        assert!(users.sender_allowed("any", "EXAMPLE.org"));
        assert!(!users.sender_allowed("any", "x.test"));
    }

    #[test]
    fn hash_password_is_htpasswd_compatible() {
        let h = hash_password("s3cret pass");
        assert!(h.starts_with("$2y$10$"), "{h}");
        assert_eq!(h.len(), 60);
        // What `htpasswd -vb` does: bcrypt-verify the stored string.
        assert!(bcrypt::verify("s3cret pass", &h).unwrap());
        let users = Users::parse(&format!("me:{h}\n")).unwrap();
        assert!(users.verify("me", b"s3cret pass"));
        assert!(!users.verify("me", b"s3cret pas"));
        assert_ne!(h, hash_password("s3cret pass"), "salt is random");
    }

    #[test]
    fn unknown_users_use_dummy_of_common_cost() {
        // Mostly cost-5 bcrypt → dummy is cost-5 bcrypt.
        let users = Users::parse(&format!(
            "a:{HTPASSWD_B}\nb:{MKPASSWD_BCRYPT}\nc:{HTPASSWD_B10}\nd:{OPENSSL_6}\n"
        ))
        .unwrap();
        assert_eq!(users.dummy_scheme, Scheme::Bcrypt { cost: 5 });
        assert!(users.dummy_hash.starts_with("$2y$05$"));
        assert!(classify(&users.dummy_hash).is_ok());
        assert!(!users.verify("zed", b"secret"));

        // Mostly SHA-512-crypt → SHA-512 dummy with the same rounds.
        let users = Users::parse(&format!(
            "a:{OPENSSL_6}\nb:{MKPASSWD_SHA512}\nc:{HTPASSWD_B}\n"
        ))
        .unwrap();
        assert_eq!(users.dummy_scheme, Scheme::Sha512 { rounds: 5000 });
        assert!(classify(&users.dummy_hash).is_ok());
        assert!(!users.verify("zed", b"secret"));

        let users = one(MKPASSWD_SHA256);
        assert_eq!(users.dummy_scheme, Scheme::Sha256 { rounds: 5000 });
        assert!(classify(&users.dummy_hash).is_ok());
        assert!(!users.verify("zed", b"secret"));

        // Nothing loaded: the hash_password cost.
        let users = Users::default();
        assert_eq!(users.dummy_hash, Scheme::Bcrypt { cost: 10 }.dummy_hash());
        assert!(classify(&users.dummy_hash).is_ok());
    }

    #[test]
    fn generated_low_cost_bcrypt_and_long_passwords() {
        let h = bcrypt::hash("pw", 4).unwrap();
        let users = one(&h);
        assert!(users.verify("u", b"pw"));
        let long = vec![b'x'; MAX_PASSWORD_LEN + 1];
        assert!(!users.verify("u", &long));
        assert!(!users.verify("nobody", &long));
    }

    #[test]
    fn debug_does_not_show_hashes() {
        let users = one(HTPASSWD_B);
        let s = format!("{users:?}");
        assert!(s.contains("\"u\""), "{s}");
        assert!(!s.contains(HTPASSWD_B), "{s}");
    }

    #[test]
    fn load_file_and_io_error() {
        let dir = std::env::temp_dir().join(format!("mxrelay-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users");
        std::fs::write(&path, format!("alice:{HTPASSWD_B}:example.com\n")).unwrap();
        let users = Users::load(&path).unwrap();
        assert!(users.verify("alice", b"secret"));
        assert!(users.sender_allowed("alice", "example.com"));

        std::fs::write(&path, format!("alice:{HTPASSWD_APR1}\n")).unwrap();
        let e = Users::load(&path).unwrap_err();
        assert!(matches!(e, UsersError::Line { line: 1, .. }), "{e:?}");

        let e = Users::load(&dir.join("missing")).unwrap_err();
        assert!(matches!(e, UsersError::Io(_)), "{e:?}");
        assert!(std::error::Error::source(&e).is_some());
        assert!(!e.to_string().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // ---- FailureGuard ----

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn guard_locks_at_max_within_window() {
        let g = FailureGuard::new(3, 10 * MIN);
        let t0 = Instant::now();
        let ip = v4(1);
        assert!(!g.is_locked(ip, t0));
        assert!(!g.record_failure(ip, t0));
        assert!(!g.record_failure(ip, t0 + MIN));
        assert!(!g.is_locked(ip, t0 + MIN));
        assert!(g.record_failure(ip, t0 + 2 * MIN), "third failure locks");
        assert!(g.is_locked(ip, t0 + 2 * MIN));
        assert!(
            g.is_locked(ip, t0 + 11 * MIN),
            "a full window after the lock"
        );
        assert!(
            !g.is_locked(v4(2), t0 + 2 * MIN),
            "other addresses unaffected"
        );
        // Unlocks once the window has passed since the limit was reached.
        assert!(!g.is_locked(ip, t0 + 12 * MIN));
        // The old failures have expired too: the count starts over.
        assert!(!g.record_failure(ip, t0 + 12 * MIN));
        assert!(!g.is_locked(ip, t0 + 12 * MIN));
    }

    #[test]
    fn guard_window_slides() {
        let g = FailureGuard::new(3, 10 * MIN);
        let t0 = Instant::now();
        let ip = v4(1);
        // Failures spread wider than the window never reach 3 at once.
        for i in 0..10 {
            assert!(!g.record_failure(ip, t0 + i * 6 * MIN), "failure {i}");
        }
        assert!(!g.is_locked(ip, t0 + 60 * MIN));
        // 48 has left the window at 59 (54, 59: two) ...
        assert!(!g.record_failure(ip, t0 + 59 * MIN));
        // ... three within ten minutes (54, 59, 60) lock.
        assert!(g.record_failure(ip, t0 + 60 * MIN));
        assert!(g.is_locked(ip, t0 + 60 * MIN));
    }

    #[test]
    fn guard_failure_while_locked_extends() {
        let g = FailureGuard::new(2, 10 * MIN);
        let t0 = Instant::now();
        let ip = v4(7);
        g.record_failure(ip, t0);
        assert!(g.record_failure(ip, t0));
        // A concurrent session that slipped past is_locked fails again later.
        assert!(g.record_failure(ip, t0 + 5 * MIN));
        assert!(g.is_locked(ip, t0 + 14 * MIN));
        assert!(!g.is_locked(ip, t0 + 15 * MIN));
    }

    #[test]
    fn guard_clear() {
        let g = FailureGuard::new(3, 10 * MIN);
        let t0 = Instant::now();
        let ip = v4(1);
        g.record_failure(ip, t0);
        g.record_failure(ip, t0);
        g.clear(ip);
        assert!(!g.record_failure(ip, t0), "count restarted after clear");
        assert!(!g.record_failure(ip, t0));
        assert!(g.record_failure(ip, t0));
        g.clear(ip);
        assert!(!g.is_locked(ip, t0), "clear also lifts a lock");
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn guard_ipv6_per_64_and_mapped_v4() {
        let g = FailureGuard::new(2, 10 * MIN);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(!g.record_failure(a, t0));
        assert!(g.record_failure(b, t0), "same /64");
        assert!(g.is_locked(a, t0));
        assert!(!g.is_locked(other, t0));

        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert!(!g.record_failure(mapped, t0));
        assert!(g.record_failure(v4(9), t0));
        assert!(g.is_locked(mapped, t0));
        g.clear(mapped);
        assert!(!g.is_locked(v4(9), t0));
    }

    #[test]
    fn guard_disabled() {
        let t0 = Instant::now();
        for g in [
            FailureGuard::new(0, MIN),
            FailureGuard::new(3, Duration::ZERO),
        ] {
            for _ in 0..10 {
                assert!(!g.record_failure(v4(1), t0));
            }
            assert!(!g.is_locked(v4(1), t0));
            assert_eq!(g.tracked(), 0);
        }
    }

    #[test]
    fn guard_max_one() {
        let g = FailureGuard::new(1, MIN);
        let t0 = Instant::now();
        assert!(g.record_failure(v4(1), t0));
        assert!(g.is_locked(v4(1), t0));
    }

    #[test]
    fn guard_size_cap_drops_oldest() {
        let g = FailureGuard::with_max_tracked(5, 10 * MIN, 100);
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        // The first address is a real attacker, then 200 others, all within the window.
        for _ in 0..4 {
            g.record_failure(v4(0), t0);
        }
        for i in 1..=200u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            g.record_failure(ip, t0 + secs(u64::from(i)));
            assert!(g.tracked() <= 100);
        }
        assert_eq!(g.tracked(), 100);
        // The oldest were dropped, the newest kept.
        assert!(!g.lock_state().map.contains_key(&v4(0)));
        assert!(
            g.lock_state()
                .map
                .contains_key(&IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 200)))
        );
    }

    #[test]
    fn guard_prunes_expired_on_insert() {
        let g = FailureGuard::new(5, MIN);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            g.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert_eq!(g.tracked(), 1000);
        // Long after the window, new inserts sweep the expired entries away (the sweep is
        // amortised: it runs when the table has doubled since the last one, here at 1024).
        let later = t0 + 2 * MIN;
        for i in 0..30u32 {
            g.record_failure(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), later);
        }
        assert!(g.tracked() <= 30, "{}", g.tracked());
        assert!(
            !g.lock_state()
                .map
                .contains_key(&IpAddr::V4(Ipv4Addr::from(0x0a00_0000)))
        );
    }

    #[test]
    fn guard_default_cap_holds() {
        let g = FailureGuard::new(5, 10 * MIN);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 500) {
            g.record_failure(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), t0);
        }
        assert_eq!(g.tracked(), MAX_TRACKED);
    }

    #[test]
    fn guard_is_shareable() {
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<FailureGuard>();
        assert_sync::<Users>();
    }
}
