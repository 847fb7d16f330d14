//! The server-side SMTP session as a pure state machine: `feed` takes one line and returns
//! at most one reply plus at most one effect for the driver to carry out. Outcomes come back
//! by method call: `tls_started`, `auth_result`, `data_done`. No sockets, files, threads or
//! clocks here.

use super::address::{ForwardPath, Mailbox, Param};
use super::command::{self, Command, CommandError};
use super::ehlo::Extensions;
use super::reply::{self, Reply};
use super::sasl::{self, Exchange, SaslError};

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Bad commands tolerated before 421 and disconnect.
    pub max_errors: u32,
    /// Whether this client may relay without authenticating (trusted network on a relay port).
    pub relay_allowed: bool,
    /// Where `<postmaster>` and `postmaster@hostname` go.
    pub postmaster: Mailbox,
    /// STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// The session runs under TLS from the start (implicit TLS, RFC 8314).
    pub implicit_tls: bool,
    /// AUTH can be offered (there are accounts).
    pub auth_available: bool,
    /// MAIL needs a successful AUTH first (submission and smtps roles).
    pub require_auth: bool,
    /// AUTH is allowed without TLS (loopback clients, when configured).
    pub plaintext_auth: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// MAIL accepted: a transaction starts. The driver may hold the reply back here while
    /// delivery lags (in-flow control).
    MailAccepted,
    /// Reply sent; now read the message with `smtp::data` and report with `data_done`.
    BeginData,
    /// Reply sent; close the connection.
    Close,
    /// Reply (220) sent; run the TLS handshake, then call `tls_started`.
    StartTls,
    /// No reply yet: check these credentials and answer with `auth_result`. `password` is
    /// `None` when the exchange is refused as such (an authorization identity other than the
    /// user): it is answered, logged and counted like a wrong password.
    Authenticate {
        user: String,
        password: Option<Vec<u8>>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub reply: Option<Reply>,
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
    tls: bool,
    tx: Option<Transaction>,
    errors: u32,
    sasl: Option<Exchange>,
    /// The user whose credentials are being checked by the driver.
    pending_user: Option<String>,
    auth_user: Option<String>,
    /// Envelope sender domains the authenticated user may use; empty = any.
    sender_domains: Vec<String>,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        let tls = cfg.implicit_tls;
        Session {
            cfg,
            state: State::Connected,
            helo: None,
            esmtp: false,
            tls,
            tx: None,
            errors: 0,
            sasl: None,
            pending_user: None,
            auth_user: None,
            sender_domains: Vec::new(),
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

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// Lines fed now are SASL responses (secrets), not commands.
    pub fn in_auth_exchange(&self) -> bool {
        self.sasl.is_some()
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        self.tx.as_ref()
    }

    fn auth_offered(&self) -> bool {
        self.cfg.auth_available && (self.tls || self.cfg.plaintext_auth)
    }

    pub fn extensions(&self) -> Extensions {
        Extensions {
            pipelining: true,
            size: Some(self.cfg.max_message_size),
            eight_bit_mime: true,
            enhanced_status_codes: true,
            smtputf8: true,
            starttls: self.cfg.tls_available && !self.tls,
            auth: if self.auth_offered() && self.auth_user.is_none() {
                vec!["PLAIN".into(), "LOGIN".into()]
            } else {
                Vec::new()
            },
        }
    }

    /// A line the driver could not even read as a command (too long): counts as an error.
    pub fn line_too_long(&mut self) -> Step {
        if self.sasl.take().is_some() {
            return step(reply::auth_malformed("line too long"));
        }
        self.error(reply::line_too_long())
    }

    pub fn feed(&mut self, line: &[u8]) -> Step {
        debug_assert!(self.state != State::InData, "feed during DATA");
        if self.sasl.is_some() {
            return self.sasl_response(line);
        }
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(CommandError::Syntax(s)) => return self.error(reply::syntax(s)),
            Err(CommandError::Address(why)) => return self.error(reply::bad_address(why)),
        };
        match cmd {
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
                reply: Some(reply::bye()),
                effect: Effect::Close,
            },
            Command::Vrfy => step(reply::vrfy()),
            Command::Help => step(reply::help()),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial.as_deref()),
            Command::Expn | Command::NotImplemented => self.error(reply::not_implemented()),
            Command::Unknown => self.error(reply::unrecognized()),
        }
    }

    /// The handshake after STARTTLS succeeded: back to the just-connected state (RFC 3207 4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.state = State::Connected;
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        self.auth_user = None;
        self.sender_domains.clear();
    }

    /// The verdict on the credentials from `Effect::Authenticate`; `sender_domains` are the
    /// envelope sender domains the user may use (empty = any).
    pub fn auth_result(&mut self, ok: bool, sender_domains: Vec<String>) -> Reply {
        let user = self.pending_user.take();
        if ok {
            self.auth_user = user;
            self.sender_domains = sender_domains;
            reply::auth_ok()
        } else {
            reply::auth_failed()
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
                reply: Some(reply::too_many_errors()),
                effect: Effect::Close,
            };
        }
        step(r)
    }

    fn starttls(&mut self) -> Step {
        if self.tls {
            return self.error(reply::tls_already_active());
        }
        if !self.cfg.tls_available {
            return self.error(reply::not_implemented());
        }
        Step {
            reply: Some(reply::ready_for_tls()),
            effect: Effect::StartTls,
        }
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Step {
        if !self.cfg.auth_available {
            return self.error(reply::not_implemented());
        }
        if self.state != State::Greeted || !self.esmtp {
            return self.error(reply::need_helo());
        }
        if self.auth_user.is_some() {
            return self.error(reply::already_authenticated());
        }
        if self.tx.is_some() {
            return self.error(reply::auth_during_transaction());
        }
        if !self.auth_offered() {
            return self.error(reply::encryption_required());
        }
        match Exchange::start(mechanism, initial) {
            None => self.error(reply::mechanism_unsupported()),
            Some((ex, first)) => {
                self.sasl = Some(ex);
                self.sasl_step(first)
            }
        }
    }

    fn sasl_response(&mut self, line: &[u8]) -> Step {
        let step = match std::str::from_utf8(line) {
            Ok(text) => self.sasl.as_mut().expect("in SASL").respond(text),
            Err(_) => sasl::Step::Failed(SaslError::Malformed("invalid base64")),
        };
        self.sasl_step(step)
    }

    fn sasl_step(&mut self, s: sasl::Step) -> Step {
        match s {
            sasl::Step::Challenge(text) => step(reply::auth_challenge(text)),
            sasl::Step::Done { user, password } => {
                self.sasl = None;
                self.pending_user = Some(user.clone());
                Step {
                    reply: None,
                    effect: Effect::Authenticate {
                        user,
                        password: Some(password),
                    },
                }
            }
            sasl::Step::Failed(SaslError::IdentitySwitch) => {
                let user = self
                    .sasl
                    .take()
                    .and_then(|ex| ex.user().map(str::to_string))
                    .unwrap_or_default();
                self.pending_user = Some(user.clone());
                Step {
                    reply: None,
                    effect: Effect::Authenticate {
                        user,
                        password: None,
                    },
                }
            }
            sasl::Step::Failed(e) => {
                self.sasl = None;
                match e {
                    SaslError::Cancelled => self.error(reply::auth_cancelled()),
                    SaslError::Malformed(why) => self.error(reply::auth_malformed(why)),
                    SaslError::IdentitySwitch => unreachable!("handled above"),
                }
            }
        }
    }

    fn mail(&mut self, from: Option<Mailbox>, params: Vec<Param>) -> Step {
        if self.state != State::Greeted {
            return self.error(reply::need_helo());
        }
        if self.cfg.require_auth && self.auth_user.is_none() {
            return self.error(reply::auth_required());
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
                // RFC 4954 5: AUTH=<> or an identity we cannot vouch for is accepted and ignored.
                ("AUTH", Some(_)) if self.auth_user.is_some() => {}
                (k, _) => return self.error(reply::param_not_recognized(k)),
            }
        }
        if tx.sender.as_ref().is_some_and(|m| !m.is_ascii()) && !tx.smtputf8 {
            return step(reply::utf8_address_without_smtputf8());
        }
        if self.auth_user.is_some() && !self.sender_domains.is_empty() {
            let allowed = tx.sender.as_ref().is_some_and(|m| {
                self.sender_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&m.domain))
            });
            if !allowed {
                return step(reply::sender_not_allowed());
            }
        }
        self.tx = Some(tx);
        Step {
            reply: Some(reply::sender_ok()),
            effect: Effect::MailAccepted,
        }
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
                if !self.cfg.relay_allowed && self.auth_user.is_none() {
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
                    reply: Some(reply::start_data()),
                    effect: Effect::BeginData,
                }
            }
        }
    }
}

fn step(reply: Reply) -> Step {
    Step {
        reply: Some(reply),
        effect: Effect::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_accepted_mail_says_a_transaction_started() {
        let mut s = Session::new(SessionConfig {
            hostname: "relay.test".into(),
            max_message_size: 1000,
            max_recipients: 10,
            max_errors: 10,
            relay_allowed: true,
            postmaster: Mailbox::parse("postmaster@relay.test").unwrap(),
            tls_available: false,
            implicit_tls: false,
            auth_available: false,
            require_auth: false,
            plaintext_auth: false,
        });
        let effect = |s: &mut Session, line: &str| s.feed(line.as_bytes()).effect;
        assert_eq!(
            effect(&mut s, "MAIL FROM:<a@b.test>"),
            Effect::None,
            "before EHLO"
        );
        assert_eq!(effect(&mut s, "EHLO client.test"), Effect::None);
        let too_big = "MAIL FROM:<a@b.test> SIZE=5000";
        assert_eq!(effect(&mut s, too_big), Effect::None);
        assert_eq!(effect(&mut s, "MAIL FROM:<a@b.test>"), Effect::MailAccepted);
        assert_eq!(
            effect(&mut s, "MAIL FROM:<a@b.test>"),
            Effect::None,
            "nested"
        );
        assert_eq!(effect(&mut s, "RSET"), Effect::None);
        assert_eq!(effect(&mut s, "MAIL FROM:<>"), Effect::MailAccepted);
    }
}
