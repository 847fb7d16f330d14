//! `mxrelay check DOMAIN`: the deliverability doctor. It looks at the DNS of a sending domain
//! from where the relay runs (SPF, DKIM, DMARC, MX, PTR) and optionally at whether port 25 is
//! reachable, and says for each check ok, warn or fail and what to change.

pub mod lookup;
pub mod spf;
#[cfg(test)]
mod table;
