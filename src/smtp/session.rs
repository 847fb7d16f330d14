//! The server-side SMTP session as a pure state machine: `feed` takes one command line and
//! returns one reply plus at most one effect for the driver to carry out. The outcome of
//! DATA comes back through `data_done`. No sockets, files, threads or clocks here.

use super::address::{ForwardPath, Mailbox, Param};
use super::command::{self, Command, CommandError};
use super::ehlo::Extensions;
use super::reply::{self, Reply};

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Bad commands tolerated before 421 and disconnect.
    pub max_errors: u32,
    /// Whether this client may relay (trusted network; later also AUTH).
    pub relay_allowed: bool,
    /// Where `<postmaster>` and `postmaster@hostname` go.
    pub postmaster: Mailbox,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Reply sent; now read the message with `smtp::data` and report with `data_done`.
    BeginData,
    /// Reply sent; close the connection.
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub reply: Reply,
    pub effect: Effect,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// `None` is the null reverse-path `<>`.
    pub sender: Option<Mailbox>,
    pub declared_size: Option<u64>,
    pub body: BodyType,
    pub smtputf8: bool,
    pub recipients: Vec<Mailbox>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connected,
    Greeted,
    InData,
}

pub struct Session {
    cfg: SessionConfig,
    state: State,
    helo: Option<String>,
    esmtp: bool,
    tx: Option<Transaction>,
    errors: u32,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        Session {
            cfg,
            state: State::Connected,
            helo: None,
            esmtp: false,
            tx: None,
            errors: 0,
        }
    }

    pub fn greeting(&self) -> Reply {
        reply::greeting(&self.cfg.hostname)
    }

    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    pub fn is_esmtp(&self) -> bool {
        self.esmtp
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        self.tx.as_ref()
    }

    pub fn extensions(&self) -> Extensions {
        Extensions {
            pipelining: true,
            size: Some(self.cfg.max_message_size),
            eight_bit_mime: true,
            enhanced_status_codes: true,
            smtputf8: true,
            ..Extensions::default()
        }
    }

    /// A line the driver could not even read as a command (too long): counts as an error.
    pub fn line_too_long(&mut self) -> Step {
        self.error(reply::line_too_long())
    }

    pub fn feed(&mut self, line: &[u8]) -> Step {
        debug_assert!(self.state != State::InData, "feed during DATA");
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(CommandError::Syntax(s)) => return self.error(reply::syntax(s)),
            Err(CommandError::Address(why)) => return self.error(reply::bad_address(why)),
        };
        match cmd {
            Command::Ehlo(name) | Command::Helo(name) if name.is_empty() => {
                self.error(reply::syntax("EHLO domain"))
            }
            Command::Ehlo(name) => {
                let greet = reply::helo_ok(&self.cfg.hostname, &name);
                self.greeted(name, true);
                step(self.extensions().reply(greet.lines[0].clone()))
            }
            Command::Helo(name) => {
                let r = reply::helo_ok(&self.cfg.hostname, &name);
                self.greeted(name, false);
                step(r)
            }
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Rset => {
                self.tx = None;
                step(reply::ok())
            }
            Command::Noop => step(reply::ok()),
            Command::Quit => Step {
                reply: reply::bye(),
                effect: Effect::Close,
            },
            Command::Vrfy => step(reply::vrfy()),
            Command::Help => step(reply::help()),
            Command::Expn | Command::NotImplemented => self.error(reply::not_implemented()),
            Command::Unknown => self.error(reply::unrecognized()),
        }
    }

    /// Reports the end of DATA: `Ok(queue id)` once the message is durably queued, or the
    /// reply that says why not. Either way the transaction is over.
    pub fn data_done(&mut self, result: Result<String, Reply>) -> Reply {
        debug_assert_eq!(self.state, State::InData);
        self.state = State::Greeted;
        self.tx = None;
        match result {
            Ok(id) => reply::queued(&id),
            Err(r) => r,
        }
    }

    fn greeted(&mut self, name: String, esmtp: bool) {
        self.helo = Some(name);
        self.esmtp = esmtp;
        self.state = State::Greeted;
        self.tx = None;
    }

    fn error(&mut self, r: Reply) -> Step {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            return Step {
                reply: reply::too_many_errors(),
                effect: Effect::Close,
            };
        }
        step(r)
    }

    fn mail(&mut self, from: Option<Mailbox>, params: Vec<Param>) -> Step {
        if self.state != State::Greeted {
            return self.error(reply::need_helo());
        }
        if self.tx.is_some() {
            return self.error(reply::nested_mail());
        }
        let mut tx = Transaction {
            sender: from,
            declared_size: None,
            body: BodyType::SevenBit,
            smtputf8: false,
            recipients: Vec::new(),
        };
        for p in params {
            if !self.esmtp {
                return self.error(reply::param_not_recognized(&p.keyword));
            }
            match (p.keyword.as_str(), p.value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.cfg.max_message_size => return step(reply::message_too_big()),
                    Ok(n) => tx.declared_size = Some(n),
                    Err(_) => return self.error(reply::bad_param_value("SIZE")),
                },
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => tx.body = BodyType::SevenBit,
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                    tx.body = BodyType::EightBitMime
                }
                ("BODY", _) | ("SIZE", None) => {
                    return self.error(reply::bad_param_value(&p.keyword));
                }
                ("SMTPUTF8", None) => tx.smtputf8 = true,
                (k, _) => return self.error(reply::param_not_recognized(k)),
            }
        }
        if tx.sender.as_ref().is_some_and(|m| !m.is_ascii()) && !tx.smtputf8 {
            return step(reply::utf8_address_without_smtputf8());
        }
        self.tx = Some(tx);
        step(reply::sender_ok())
    }

    fn rcpt(&mut self, to: ForwardPath, params: Vec<Param>) -> Step {
        let Some(tx) = self.tx.as_ref() else {
            return self.error(reply::need_mail());
        };
        if let Some(p) = params.first() {
            return self.error(reply::param_not_recognized(&p.keyword));
        }
        let mailbox = match to {
            ForwardPath::Postmaster => self.cfg.postmaster.clone(),
            ForwardPath::Mailbox(m)
                if m.local.trim_matches('"').eq_ignore_ascii_case("postmaster")
                    && m.domain.eq_ignore_ascii_case(&self.cfg.hostname) =>
            {
                self.cfg.postmaster.clone()
            }
            ForwardPath::Mailbox(m) => {
                if !self.cfg.relay_allowed {
                    return step(reply::relay_denied());
                }
                m
            }
        };
        if !mailbox.is_ascii() && !tx.smtputf8 {
            return step(reply::utf8_address_without_smtputf8());
        }
        if tx.recipients.len() >= self.cfg.max_recipients {
            return step(reply::too_many_recipients());
        }
        self.tx
            .as_mut()
            .expect("checked above")
            .recipients
            .push(mailbox);
        step(reply::recipient_ok())
    }

    fn data(&mut self) -> Step {
        match &self.tx {
            None => self.error(reply::need_mail()),
            Some(tx) if tx.recipients.is_empty() => step(reply::no_valid_recipients()),
            Some(_) => {
                self.state = State::InData;
                Step {
                    reply: reply::start_data(),
                    effect: Effect::BeginData,
                }
            }
        }
    }
}

fn step(reply: Reply) -> Step {
    Step {
        reply,
        effect: Effect::None,
    }
}
