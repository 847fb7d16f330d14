//! mxrelay: a small, durable SMTP relay. See README.md for what it does and DESIGN notes in
//! each module for how.

pub mod auth;
pub mod bounce;
pub mod config;
pub mod control;
pub mod date;
pub mod delivery;
pub mod dns;
pub mod doctor;
pub mod events;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod privileges;
pub mod proxy;
pub mod queue_cmd;
pub mod relay;
pub mod sendmail;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod suppression;
pub mod tls;
pub mod tracking;
pub mod transform;
pub mod web;
