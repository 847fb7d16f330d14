//! The SMTP protocol core: parsing, replies, the server session state machine, the DATA
//! reader and the client-side transaction logic. No sockets, files, threads or clocks.

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod ehlo;
pub mod reply;
pub mod sasl;
pub mod session;
