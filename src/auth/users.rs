//! The users file: parsing and validating accounts, the sender domains each may use, and the
//! file as the server sees it ([`UsersFile`], swapped on reload).
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

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::hash::{HASH_COST, MAX_PASSWORD_LEN, Scheme, classify};

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
    pub(super) dummy_hash: String,
    pub(super) dummy_scheme: Scheme,
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
