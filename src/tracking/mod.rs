//! Link and open tracking and one-click unsubscribe: pure building blocks, without I/O of
//! their own. Tokens (`token`), the per-recipient rewrite of a stored message's HTML parts
//! (`rewrite`, with `html` and `qp`), the List-Unsubscribe fields (`unsubscribe`) and the
//! HTTP routes that answer the links (`endpoint`). Tracked mail is personalised at delivery:
//! one copy per recipient, rewritten while it streams to the next hop, then DKIM-signed.

pub mod base64;
pub mod config;
pub mod copy;
pub mod endpoint;
pub mod html;
pub mod links;
pub mod personal;
pub mod qp;
pub mod rewrite;
pub mod token;
pub mod unsubscribe;

pub use config::TrackingConfig;
pub use copy::{Copier, PersonalCopy, Source};
pub use endpoint::{Endpoint, Hit};
pub use links::Links;
pub use personal::Personal;
pub use rewrite::{Report, Rewriter};
pub use token::{Claims, Keys, Kind, secret_from_file};
