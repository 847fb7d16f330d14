//! Rate and concurrency limits on clients, shared by all sessions: connections per client
//! address, messages per connection, a message rate per address and per authenticated user,
//! and a recipient rate per user.
//!
//! Addresses are keyed as the AUTH guard keys them (`crate::auth::address_key`: IPv6 per
//! /64, IPv4-mapped as IPv4). Clients in `--limit-exempt` (by default the trusted networks)
//! are spared the per-address limits and the per-connection message limit, so the defaults
//! never slow a trusted local application sending in bulk; the per-user rates, off unless
//! set, apply to every authenticated user. Rates are GCRA tables (`gcra`) of bounded size
//! on an injected clock; the connection counts hold an entry only per address connected now.

pub mod gcra;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::auth::address_key;
use crate::config::Cidr;
use crate::delivery::clock::Clock;
use crate::smtp::session::{Admission, Limited, RateLimit, SessionLimits};
pub use gcra::Rate;
use gcra::Table;

/// Most keys (addresses, users) one rate table holds at once.
const MAX_KEYS: usize = 10_000;

/// The limit flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `--max-connections-per-ip`.
    pub max_connections_per_ip: usize,
    /// `--max-messages-per-connection`.
    pub max_messages_per_connection: u32,
    /// `--rate-limit-ip`: messages per client address.
    pub rate_ip: Option<Rate>,
    /// `--rate-limit-user`: messages per authenticated user.
    pub rate_user: Option<Rate>,
    /// `--rate-limit-rcpt-user`: recipients per authenticated user.
    pub rate_rcpt_user: Option<Rate>,
    /// `--limit-exempt`: clients spared the per-address and per-connection limits.
    pub exempt: Vec<Cidr>,
}

impl LimitsConfig {
    /// No limits at all (tests, tools).
    pub fn none() -> LimitsConfig {
        LimitsConfig {
            max_connections_per_ip: usize::MAX,
            max_messages_per_connection: u32::MAX,
            rate_ip: None,
            rate_user: None,
            rate_rcpt_user: None,
            exempt: Vec::new(),
        }
    }
}

struct Rates {
    ip: Option<Table<IpAddr>>,
    user: Option<Table<String>>,
    rcpt_user: Option<Table<String>>,
}

pub struct Limits {
    cfg: LimitsConfig,
    clock: Arc<dyn Clock>,
    rates: Mutex<Rates>,
    /// Connections open now per address key; an entry only while there is one.
    connections: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection counted against its address's limit, until dropped.
pub struct Slot<'a> {
    limits: &'a Limits,
    /// `None` for an exempt client (not counted).
    key: Option<IpAddr>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = lock(&self.limits.connections);
        if let Some(n) = open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Limits {
    pub fn new(cfg: LimitsConfig, clock: Arc<dyn Clock>) -> Limits {
        let rates = Rates {
            ip: cfg.rate_ip.map(|r| Table::new(r, MAX_KEYS)),
            user: cfg.rate_user.map(|r| Table::new(r, MAX_KEYS)),
            rcpt_user: cfg.rate_rcpt_user.map(|r| Table::new(r, MAX_KEYS)),
        };
        Limits {
            cfg,
            clock,
            rates: Mutex::new(rates),
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the client at `ip` is spared the per-address and per-connection limits.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.cfg.exempt.iter().any(|n| n.contains(ip))
    }

    /// The limits the session of the client at `ip` enforces or asks about.
    pub fn for_session(&self, ip: IpAddr) -> SessionLimits {
        let exempt = self.is_exempt(ip);
        SessionLimits {
            max_messages: Some(self.cfg.max_messages_per_connection)
                .filter(|&n| !exempt && n != u32::MAX),
            ip_messages: !exempt && self.cfg.rate_ip.is_some(),
            user_messages: self.cfg.rate_user.is_some(),
            user_recipients: self.cfg.rate_rcpt_user.is_some(),
        }
    }

    /// A connection from `ip` opens: its slot, or `Err(max)` when its address already has
    /// `max` open.
    pub fn connect(&self, ip: IpAddr) -> Result<Slot<'_>, usize> {
        if self.is_exempt(ip) {
            return Ok(Slot {
                limits: self,
                key: None,
            });
        }
        let key = address_key(ip);
        let max = self.cfg.max_connections_per_ip;
        let mut open = lock(&self.connections);
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            if *n == 0 {
                open.remove(&key);
            }
            return Err(max);
        }
        *n += 1;
        Ok(Slot {
            limits: self,
            key: Some(key),
        })
    }

    /// Whether a message (MAIL) or a recipient (RCPT) of the client at `ip`, logged in as
    /// `user`, goes through its rates; if it does, it is counted against each of them.
    pub fn admit(&self, ip: IpAddr, user: Option<&str>, what: Admission) -> Result<(), Limited> {
        let now = self.clock.now_ms().saturating_mul(1000);
        let exempt = self.is_exempt(ip);
        let mut rates = lock(&self.rates);
        let Rates {
            ip: by_ip,
            user: by_user,
            rcpt_user,
        } = &mut *rates;
        let refused = |limit| move |retry_after| Limited { limit, retry_after };
        match what {
            Admission::Message => {
                let key = address_key(ip);
                let by_ip = by_ip.as_mut().filter(|_| !exempt);
                let ip_tat = match &by_ip {
                    Some(t) => Some(t.check(&key, now).map_err(refused(RateLimit::Ip))?),
                    None => None,
                };
                // The address's count moves only if the user's allows the message too.
                if let (Some(t), Some(user)) = (by_user.as_mut(), user) {
                    t.take(&user.to_string(), now)
                        .map_err(refused(RateLimit::User))?;
                }
                if let (Some(t), Some(tat)) = (by_ip, ip_tat) {
                    t.commit(key, tat, now);
                }
            }
            Admission::Recipient => {
                if let (Some(t), Some(user)) = (rcpt_user.as_mut(), user) {
                    t.take(&user.to_string(), now)
                        .map_err(refused(RateLimit::UserRecipients))?;
                }
            }
        }
        Ok(())
    }

    /// Addresses with connections open now (a bound check for tests).
    pub fn addresses_connected(&self) -> usize {
        lock(&self.connections).len()
    }
}

#[cfg(test)]
mod tests;
