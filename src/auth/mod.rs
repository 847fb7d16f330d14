//! SMTP AUTH: accounts from the users file (`users`), their password hashes (`hash`) and the
//! brute-force guard (`guard`), with the flags that configure them ([`AuthConfig`]).

mod guard;
mod hash;
#[cfg(test)]
mod tests;
mod users;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use guard::{FailureGuard, address_key};
pub use hash::hash_password;
pub use users::{Account, Users, UsersError, UsersFile};

/// `--users`, `--sender-domain` and the brute-force guard's flags.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub users: Option<PathBuf>,
    pub sender_domains: Vec<(String, String)>,
    pub max_failures: u32,
    pub lockout: Duration,
}

impl AuthConfig {
    /// The accounts file, if there is one.
    pub fn load_users(&self) -> std::io::Result<Option<Arc<UsersFile>>> {
        let err = |flag: &str, e: String| std::io::Error::other(format!("{flag}: {e}"));
        match &self.users {
            Some(path) => UsersFile::load(path, &self.sender_domains)
                .map(|u| Some(Arc::new(u)))
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
