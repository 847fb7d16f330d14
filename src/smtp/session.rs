//! The server-side SMTP session as a pure state machine: `feed` takes one line and returns
//! at most one reply plus at most one effect for the driver to carry out, and says why when it
//! refuses. Outcomes come back by method call: `tls_started`, `auth_result`, `data_verdict`,
//! `data_done`. No sockets, files, threads or clocks here.

use super::address::{ForwardPath, Mailbox, Param};
use super::command::{self, Command, CommandError};
use super::data::Summary;
use super::ehlo::Extensions;
use super::reply::{self, Reply};
use super::sasl::{self, Exchange, SaslError};

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    /// `Received:` fields a message may carry before it is refused as a loop.
    pub max_hops: u32,
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
    /// The limits on this client's messages and recipients.
    pub limits: SessionLimits,
}

/// The limits a session enforces itself (messages per connection) or asks its driver about
/// (rate limits, through `Effect::Admit`). The default is none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionLimits {
    /// Transactions (accepted MAIL commands) per connection; the next MAIL gets 421 and the
    /// connection closes.
    pub max_messages: Option<u32>,
    /// A message rate applies to this client's address: ask before every MAIL.
    pub ip_messages: bool,
    /// A message rate applies to authenticated users: ask before their MAIL.
    pub user_messages: bool,
    /// A recipient rate applies to authenticated users: ask before their RCPT.
    pub user_recipients: bool,
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
    /// No reply yet: ask the rate limits whether this message (MAIL) or recipient (RCPT) of
    /// this client and `auth_user()` may go ahead, and answer with `admitted`.
    Admit(Admission),
}

/// What `Effect::Admit` asks the rate limits about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A new message (MAIL).
    Message,
    /// One more recipient (RCPT).
    Recipient,
}

/// The rate limits, as the session names them in its refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimit {
    /// Messages per client address (`--rate-limit-ip`).
    Ip,
    /// Messages per authenticated user (`--rate-limit-user`).
    User,
    /// Recipients per authenticated user (`--rate-limit-rcpt-user`).
    UserRecipients,
}

impl RateLimit {
    fn refusal(self) -> Refusal {
        match self {
            RateLimit::Ip => Refusal::RateLimitIp,
            RateLimit::User => Refusal::RateLimitUser,
            RateLimit::UserRecipients => Refusal::RateLimitRcptUser,
        }
    }

    /// What the reply says was reached.
    fn described(self) -> &'static str {
        match self {
            RateLimit::Ip => "Message rate limit for your address",
            RateLimit::User => "Message rate limit for your account",
            RateLimit::UserRecipients => "Recipient rate limit for your account",
        }
    }
}

/// A refusal by a rate limit: which one, and how long until it lets the next one through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub limit: RateLimit,
    pub retry_after: std::time::Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub reply: Option<Reply>,
    pub effect: Effect,
    /// Set when the reply refuses something (4xx/5xx): what, and why.
    pub refused: Option<Refused>,
}

/// Why the session refused something: the label of the rejection metric and event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    RelayDenied,
    Size,
    Hops,
    Auth,
    Syntax,
    TooManyErrors,
    /// A connection over `--max-connections-per-ip`.
    MaxConnectionsPerIp,
    /// A MAIL over `--max-messages-per-connection`.
    MaxMessagesPerConnection,
    /// A MAIL over `--rate-limit-ip`.
    RateLimitIp,
    /// A MAIL over `--rate-limit-user`.
    RateLimitUser,
    /// A RCPT over `--rate-limit-rcpt-user`.
    RateLimitRcptUser,
    /// The spool could not take the message: short of space, or a write failed.
    Storage,
    Other,
}

impl Refusal {
    /// Every reason, in the order they are rendered.
    pub const ALL: [Refusal; 13] = [
        Refusal::RelayDenied,
        Refusal::Size,
        Refusal::Hops,
        Refusal::Auth,
        Refusal::Syntax,
        Refusal::TooManyErrors,
        Refusal::MaxConnectionsPerIp,
        Refusal::MaxMessagesPerConnection,
        Refusal::RateLimitIp,
        Refusal::RateLimitUser,
        Refusal::RateLimitRcptUser,
        Refusal::Storage,
        Refusal::Other,
    ];

    /// Whether this is one of the rate and concurrency limits (named after its flag).
    pub fn is_limit(self) -> bool {
        matches!(
            self,
            Refusal::MaxConnectionsPerIp
                | Refusal::MaxMessagesPerConnection
                | Refusal::RateLimitIp
                | Refusal::RateLimitUser
                | Refusal::RateLimitRcptUser
        )
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::RelayDenied => "relay_denied",
            Refusal::Size => "size",
            Refusal::Hops => "hops",
            Refusal::Auth => "auth",
            Refusal::Syntax => "syntax",
            Refusal::TooManyErrors => "too_many_errors",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
            Refusal::MaxMessagesPerConnection => "max_messages_per_connection",
            Refusal::RateLimitIp => "rate_limit_ip",
            Refusal::RateLimitUser => "rate_limit_user",
            Refusal::RateLimitRcptUser => "rate_limit_rcpt_user",
            Refusal::Storage => "storage",
            Refusal::Other => "other",
        }
    }
}

/// A refusal, for the event log: the command refused and, for MAIL and RCPT, its path and
/// parameters. Lines of a SASL exchange are secrets and never described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: Refusal,
    pub command: String,
    pub argument: Option<String>,
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
    /// Transactions started on this connection.
    messages: u32,
    /// The MAIL or RCPT waiting for the driver's `admitted`.
    admitting: Option<Admitting>,
}

/// A MAIL or RCPT that passed the session's checks and waits for the rate limits, with its
/// argument as a refusal would describe it.
enum Admitting {
    Mail(Transaction, String),
    Rcpt(Mailbox, String),
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
            messages: 0,
            admitting: None,
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
            return refuse(Refusal::Syntax, reply::auth_malformed("line too long"))
                .about("AUTH".into(), None);
        }
        self.error(Refusal::Syntax, reply::line_too_long())
            .about("(line too long)".into(), None)
    }

    pub fn feed(&mut self, line: &[u8]) -> Step {
        debug_assert!(self.state != State::InData, "feed during DATA");
        debug_assert!(self.admitting.is_none(), "feed before admitted");
        if self.sasl.is_some() {
            return self.sasl_response(line);
        }
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                let r = match e {
                    CommandError::Syntax(s) => reply::syntax(s),
                    CommandError::Address(why) => reply::bad_address(why),
                };
                let (verb, argument) = describe_unparsed(line);
                return self.error(Refusal::Syntax, r).about(verb, argument);
            }
        };
        let verb = cmd.verb();
        let step = match cmd {
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
                effect: Effect::Close,
                ..step(reply::bye())
            },
            Command::Vrfy => step(reply::vrfy()),
            Command::Help => step(reply::help()),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial.as_deref()),
            Command::Expn | Command::NotImplemented => {
                self.error(Refusal::Syntax, reply::not_implemented())
            }
            Command::Unknown => self.error(Refusal::Syntax, reply::unrecognized()),
        };
        match verb {
            Some(verb) => step.about_command(verb),
            None if step.refused.is_some() => {
                let verb = describe_unparsed(line).0;
                step.about_command(&verb)
            }
            None => step,
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
    pub fn auth_result(&mut self, ok: bool, sender_domains: Vec<String>) -> Step {
        let user = self.pending_user.take();
        if ok {
            self.auth_user = user;
            self.sender_domains = sender_domains;
            step(reply::auth_ok())
        } else {
            refuse(Refusal::Auth, reply::auth_failed()).about_command("AUTH")
        }
    }

    /// The rate limits' verdict on the MAIL or RCPT of `Effect::Admit`.
    pub fn admitted(&mut self, verdict: Result<(), Limited>) -> Step {
        let admitting = self
            .admitting
            .take()
            .expect("Effect::Admit before admitted");
        match (admitting, verdict) {
            (Admitting::Mail(tx, _), Ok(())) => self.start_transaction(tx),
            (Admitting::Rcpt(mailbox, _), Ok(())) => self.add_recipient(mailbox),
            (admitting, Err(limited)) => {
                let (verb, argument) = match admitting {
                    Admitting::Mail(_, a) => ("MAIL", a),
                    Admitting::Rcpt(_, a) => ("RCPT", a),
                };
                let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let r = reply::rate_limited(limited.limit.described(), secs);
                refuse(limited.limit.refusal(), r).about(verb.into(), Some(argument))
            }
        }
    }

    /// Whether the message just read may be committed, from what the DATA reader found.
    pub fn data_verdict(&self, summary: &Summary) -> Result<(), (Refusal, Reply)> {
        debug_assert_eq!(self.state, State::InData);
        if summary.oversize {
            return Err((Refusal::Size, reply::message_too_big()));
        }
        // Ours will be one more.
        if summary.received_headers + 1 > self.cfg.max_hops {
            return Err((Refusal::Hops, reply::too_many_hops()));
        }
        Ok(())
    }

    /// Takes back the MAIL just accepted (`Effect::MailAccepted`), which the driver refuses
    /// for a reason outside the protocol (the spool is short of space): the transaction is
    /// dropped and `r` answers the MAIL instead of its 250. Not counted as a client error.
    pub fn mail_refused(&mut self, why: Refusal, r: Reply) -> Step {
        let sender = self.tx.take().and_then(|tx| tx.sender);
        let path = sender.as_ref().map(Mailbox::to_string).unwrap_or_default();
        refuse(why, r).about("MAIL".into(), Some(format!("<{path}>")))
    }

    /// Reports the end of DATA: `Ok(queue id)` once the message is durably queued, or why
    /// not. Either way the transaction is over.
    pub fn data_done(&mut self, result: Result<String, (Refusal, Reply)>) -> Step {
        debug_assert_eq!(self.state, State::InData);
        self.state = State::Greeted;
        self.tx = None;
        match result {
            Ok(id) => step(reply::queued(&id)),
            Err((why, r)) => refuse(why, r).about_command("DATA"),
        }
    }

    fn greeted(&mut self, name: String, esmtp: bool) {
        self.helo = Some(name);
        self.esmtp = esmtp;
        self.state = State::Greeted;
        self.tx = None;
    }

    /// A refusal that counts towards the error limit.
    fn error(&mut self, why: Refusal, r: Reply) -> Step {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            return Step {
                effect: Effect::Close,
                ..refuse(Refusal::TooManyErrors, reply::too_many_errors())
            };
        }
        refuse(why, r)
    }

    fn starttls(&mut self) -> Step {
        if self.tls {
            return self.error(Refusal::Syntax, reply::tls_already_active());
        }
        if !self.cfg.tls_available {
            return self.error(Refusal::Syntax, reply::not_implemented());
        }
        Step {
            effect: Effect::StartTls,
            ..step(reply::ready_for_tls())
        }
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) -> Step {
        if !self.cfg.auth_available {
            return self.error(Refusal::Syntax, reply::not_implemented());
        }
        if self.state != State::Greeted || !self.esmtp {
            return self.error(Refusal::Syntax, reply::need_helo());
        }
        if self.auth_user.is_some() {
            return self.error(Refusal::Syntax, reply::already_authenticated());
        }
        if self.tx.is_some() {
            return self.error(Refusal::Syntax, reply::auth_during_transaction());
        }
        if !self.auth_offered() {
            return self.error(Refusal::Auth, reply::encryption_required());
        }
        match Exchange::start(mechanism, initial) {
            None => self.error(Refusal::Syntax, reply::mechanism_unsupported()),
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
        self.sasl_step(step).about_command("AUTH")
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
                    refused: None,
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
                    refused: None,
                }
            }
            sasl::Step::Failed(e) => {
                self.sasl = None;
                match e {
                    SaslError::Cancelled => self.error(Refusal::Syntax, reply::auth_cancelled()),
                    SaslError::Malformed(why) => {
                        self.error(Refusal::Syntax, reply::auth_malformed(why))
                    }
                    SaslError::IdentitySwitch => unreachable!("handled above"),
                }
            }
        }
    }

    fn mail(&mut self, from: Option<Mailbox>, params: Vec<Param>) -> Step {
        let described = |from: &Option<Mailbox>| {
            let path = from.as_ref().map(Mailbox::to_string).unwrap_or_default();
            path_argument(&path, &params)
        };
        match self.check_mail(from.as_ref(), &params) {
            Ok(mut tx) => {
                let limits = self.cfg.limits;
                if limits.ip_messages || (limits.user_messages && self.auth_user.is_some()) {
                    let argument = described(&from);
                    tx.sender = from;
                    self.admitting = Some(Admitting::Mail(tx, argument));
                    return admit(Admission::Message);
                }
                tx.sender = from;
                self.start_transaction(tx)
            }
            Err(refusal) => refusal.with_argument(described(&from)),
        }
    }

    fn start_transaction(&mut self, tx: Transaction) -> Step {
        self.messages += 1;
        self.tx = Some(tx);
        Step {
            effect: Effect::MailAccepted,
            ..step(reply::sender_ok())
        }
    }

    /// The transaction MAIL would start (its sender still to be filled in), or the refusal.
    #[allow(clippy::result_large_err)] // Returned by value once per command, like any Step.
    fn check_mail(
        &mut self,
        from: Option<&Mailbox>,
        params: &[Param],
    ) -> Result<Transaction, Step> {
        if self.state != State::Greeted {
            return Err(self.error(Refusal::Syntax, reply::need_helo()));
        }
        if self.cfg.require_auth && self.auth_user.is_none() {
            return Err(self.error(Refusal::Auth, reply::auth_required()));
        }
        if self.tx.is_some() {
            return Err(self.error(Refusal::Syntax, reply::nested_mail()));
        }
        if let Some(max) = self.cfg.limits.max_messages.filter(|&m| self.messages >= m) {
            // The limit is the connection's: only a new one can go on (RFC 5321 3.8).
            let r = reply::too_many_messages(max);
            return Err(Step {
                effect: Effect::Close,
                ..refuse(Refusal::MaxMessagesPerConnection, r)
            });
        }
        let mut tx = Transaction {
            sender: None,
            declared_size: None,
            body: BodyType::SevenBit,
            smtputf8: false,
            recipients: Vec::new(),
        };
        for p in params {
            if !self.esmtp {
                return Err(self.error(Refusal::Syntax, reply::param_not_recognized(&p.keyword)));
            }
            match (p.keyword.as_str(), p.value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.cfg.max_message_size => {
                        return Err(refuse(Refusal::Size, reply::message_too_big()));
                    }
                    Ok(n) => tx.declared_size = Some(n),
                    Err(_) => {
                        return Err(self.error(Refusal::Syntax, reply::bad_param_value("SIZE")));
                    }
                },
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => tx.body = BodyType::SevenBit,
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                    tx.body = BodyType::EightBitMime
                }
                ("BODY", _) | ("SIZE", None) => {
                    return Err(self.error(Refusal::Syntax, reply::bad_param_value(&p.keyword)));
                }
                ("SMTPUTF8", None) => tx.smtputf8 = true,
                // RFC 4954 5: AUTH=<> or an identity we cannot vouch for is accepted and ignored.
                ("AUTH", Some(_)) if self.auth_user.is_some() => {}
                (k, _) => return Err(self.error(Refusal::Syntax, reply::param_not_recognized(k))),
            }
        }
        if from.is_some_and(|m| !m.is_ascii()) && !tx.smtputf8 {
            return Err(refuse(
                Refusal::Other,
                reply::utf8_address_without_smtputf8(),
            ));
        }
        if self.auth_user.is_some() && !self.sender_domains.is_empty() {
            let allowed = from.is_some_and(|m| {
                self.sender_domains
                    .iter()
                    .any(|d| d.eq_ignore_ascii_case(&m.domain))
            });
            if !allowed {
                return Err(refuse(Refusal::Auth, reply::sender_not_allowed()));
            }
        }
        Ok(tx)
    }

    fn rcpt(&mut self, to: ForwardPath, params: Vec<Param>) -> Step {
        let described = || {
            let path = match &to {
                ForwardPath::Postmaster => "Postmaster".to_string(),
                ForwardPath::Mailbox(m) => m.to_string(),
            };
            path_argument(&path, &params)
        };
        match self.check_rcpt(&to, &params) {
            Ok(mailbox) if self.cfg.limits.user_recipients && self.auth_user.is_some() => {
                self.admitting = Some(Admitting::Rcpt(mailbox, described()));
                admit(Admission::Recipient)
            }
            Ok(mailbox) => self.add_recipient(mailbox),
            Err(refusal) => refusal.with_argument(described()),
        }
    }

    fn add_recipient(&mut self, mailbox: Mailbox) -> Step {
        let tx = self.tx.as_mut().expect("checked");
        tx.recipients.push(mailbox);
        step(reply::recipient_ok())
    }

    /// The recipient RCPT adds, or the refusal.
    #[allow(clippy::result_large_err)] // As check_mail.
    fn check_rcpt(&mut self, to: &ForwardPath, params: &[Param]) -> Result<Mailbox, Step> {
        let Some(tx) = self.tx.as_ref() else {
            return Err(self.error(Refusal::Syntax, reply::need_mail()));
        };
        if let Some(p) = params.first() {
            return Err(self.error(Refusal::Syntax, reply::param_not_recognized(&p.keyword)));
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
                    return Err(refuse(Refusal::RelayDenied, reply::relay_denied()));
                }
                m.clone()
            }
        };
        if !mailbox.is_ascii() && !tx.smtputf8 {
            return Err(refuse(
                Refusal::Other,
                reply::utf8_address_without_smtputf8(),
            ));
        }
        if tx.recipients.len() >= self.cfg.max_recipients {
            return Err(refuse(Refusal::Other, reply::too_many_recipients()));
        }
        Ok(mailbox)
    }

    fn data(&mut self) -> Step {
        match &self.tx {
            None => self.error(Refusal::Syntax, reply::need_mail()),
            Some(tx) if tx.recipients.is_empty() => {
                refuse(Refusal::Other, reply::no_valid_recipients())
            }
            Some(_) => {
                self.state = State::InData;
                Step {
                    effect: Effect::BeginData,
                    ..step(reply::start_data())
                }
            }
        }
    }
}

impl Step {
    /// Names the refused command, unless already named.
    fn about_command(mut self, verb: &str) -> Step {
        if let Some(r) = self.refused.as_mut().filter(|r| r.command.is_empty()) {
            r.command = verb.to_string();
        }
        self
    }

    fn about(mut self, command: String, argument: Option<String>) -> Step {
        if let Some(r) = self.refused.as_mut() {
            r.command = command;
            r.argument = argument;
        }
        self
    }

    fn with_argument(mut self, argument: String) -> Step {
        if let Some(r) = self.refused.as_mut() {
            r.argument = Some(argument);
        }
        self
    }
}

/// `<path> PARAM=VALUE ...`, as a MAIL or RCPT argument is described.
fn path_argument(path: &str, params: &[Param]) -> String {
    let mut out = format!("<{path}>");
    for p in params {
        out.push(' ');
        out.push_str(&p.keyword);
        if let Some(v) = &p.value {
            out.push('=');
            out.push_str(v);
        }
    }
    out
}

/// The verb (and for MAIL/RCPT the rest) of a line that did not parse as a command.
fn describe_unparsed(line: &[u8]) -> (String, Option<String>) {
    let text = String::from_utf8_lossy(&line[..line.len().min(600)]);
    let mut words = text.splitn(2, ' ');
    let verb: String = words.next().unwrap_or("").to_ascii_uppercase();
    let argument = match verb.as_str() {
        "MAIL" | "RCPT" => words.next().map(|a| {
            let a = a.trim();
            // Drop the FROM:/TO: keyword; keep the path and parameters.
            a.find(':')
                .filter(|&i| i <= 4)
                .map_or(a, |i| a[i + 1..].trim_start())
                .to_string()
        }),
        _ => None,
    };
    (verb.chars().take(16).collect(), argument)
}

fn refuse(why: Refusal, reply: Reply) -> Step {
    Step {
        refused: Some(Refused {
            reason: why,
            command: String::new(),
            argument: None,
        }),
        ..step(reply)
    }
}

/// No reply yet: the driver asks the rate limits and calls `admitted`.
fn admit(what: Admission) -> Step {
    Step {
        reply: None,
        effect: Effect::Admit(what),
        refused: None,
    }
}

fn step(reply: Reply) -> Step {
    Step {
        reply: Some(reply),
        effect: Effect::None,
        refused: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::Enhanced;

    fn config() -> SessionConfig {
        SessionConfig {
            hostname: "relay.test".into(),
            max_message_size: 1000,
            max_hops: 30,
            max_recipients: 10,
            max_errors: 10,
            relay_allowed: true,
            postmaster: Mailbox::parse("postmaster@relay.test").unwrap(),
            tls_available: false,
            implicit_tls: false,
            auth_available: false,
            require_auth: false,
            plaintext_auth: false,
            limits: SessionLimits::default(),
        }
    }

    #[test]
    fn only_an_accepted_mail_says_a_transaction_started() {
        let mut s = Session::new(config());
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

    #[test]
    fn a_mail_the_driver_refuses_starts_no_transaction() {
        let mut s = Session::new(config());
        s.feed(b"EHLO client.test");
        let step = s.feed(b"MAIL FROM:<a@b.test> SIZE=100");
        assert_eq!(step.effect, Effect::MailAccepted);
        let step = s.mail_refused(Refusal::Storage, reply::insufficient_storage());
        assert_eq!(
            step.reply.unwrap().render(),
            "452 4.3.1 Insufficient system storage\r\n"
        );
        let refused = step.refused.unwrap();
        assert_eq!(
            (refused.reason, refused.command.as_str()),
            (Refusal::Storage, "MAIL")
        );
        assert_eq!(refused.argument.as_deref(), Some("<a@b.test>"));
        assert!(s.transaction().is_none());
        // No MAIL to add recipients to; a later MAIL starts afresh.
        assert_eq!(s.feed(b"RCPT TO:<c@d.test>").reply.unwrap().code, 503);
        assert_eq!(s.feed(b"MAIL FROM:<a@b.test>").effect, Effect::MailAccepted);
    }

    #[test]
    fn refusals_say_what_and_why() {
        let mut s = Session::new(SessionConfig {
            max_hops: 3,
            max_recipients: 1,
            max_errors: 4,
            relay_allowed: false,
            ..config()
        });
        type Want = Option<(Refusal, &'static str, Option<&'static str>)>;
        let cases: &[(&str, Want)] = &[
            (
                "MAIL FROM:<a@b.test>",
                Some((Refusal::Syntax, "MAIL", Some("<a@b.test>"))),
            ),
            ("EHLO client.test", None),
            (
                "MAIL FROM:<a@b.test> SIZE=5000",
                Some((Refusal::Size, "MAIL", Some("<a@b.test> SIZE=5000"))),
            ),
            (
                "MAIL FROM:<a@b.test",
                Some((Refusal::Syntax, "MAIL", Some("<a@b.test"))),
            ),
            ("XYZZY", Some((Refusal::Syntax, "XYZZY", None))),
            ("MAIL FROM:<>", None),
            (
                "RCPT TO:<x@elsewhere.test>",
                Some((Refusal::RelayDenied, "RCPT", Some("<x@elsewhere.test>"))),
            ),
            ("RCPT TO:<Postmaster>", None),
            (
                "RCPT TO:<postmaster@relay.test>",
                Some((Refusal::Other, "RCPT", Some("<postmaster@relay.test>"))),
            ),
            ("AUTH PLAIN", Some((Refusal::TooManyErrors, "AUTH", None))),
        ];
        for (line, want) in cases {
            let step = s.feed(line.as_bytes());
            let got = step
                .refused
                .as_ref()
                .map(|r| (r.reason, r.command.as_str(), r.argument.as_deref()));
            assert_eq!(got, *want, "{line}");
        }
    }

    #[test]
    fn rate_limits_are_asked_and_their_refusals_say_what_and_why() {
        let mut s = Session::new(SessionConfig {
            limits: SessionLimits {
                max_messages: Some(2),
                ip_messages: true,
                user_messages: false,
                user_recipients: true,
            },
            ..config()
        });
        s.feed(b"EHLO c.test");
        let ask = s.feed(b"MAIL FROM:<a@b.test> SIZE=10");
        assert_eq!(
            (ask.reply, ask.effect),
            (None, Effect::Admit(Admission::Message))
        );
        let limited = Limited {
            limit: RateLimit::Ip,
            retry_after: std::time::Duration::from_millis(200),
        };
        let no = s.admitted(Err(limited));
        let reply = no.reply.unwrap();
        assert_eq!((reply.code, reply.enhanced), (450, Some(Enhanced(4, 7, 1))));
        assert!(
            reply.lines[0].ends_with("try again in 1 second"),
            "{reply:?}"
        );
        let refused = no.refused.unwrap();
        assert_eq!(
            (
                refused.reason,
                refused.command.as_str(),
                refused.argument.as_deref()
            ),
            (Refusal::RateLimitIp, "MAIL", Some("<a@b.test> SIZE=10"))
        );
        assert!(s.transaction().is_none(), "refused: no transaction");
        // Recipient rates are per user: no login, no question.
        s.feed(b"MAIL FROM:<a@b.test>");
        let yes = s.admitted(Ok(()));
        assert_eq!(yes.effect, Effect::MailAccepted);
        assert_eq!(s.feed(b"RCPT TO:<c@d.test>").effect, Effect::None);
        s.feed(b"RSET");
        // The refused MAIL did not count: this is the second message.
        s.feed(b"MAIL FROM:<a@b.test>");
        assert_eq!(s.admitted(Ok(())).effect, Effect::MailAccepted);
        s.feed(b"RSET");
        let over = s.feed(b"MAIL FROM:<a@b.test>");
        assert_eq!(over.effect, Effect::Close);
        assert_eq!(
            over.refused.map(|r| r.reason),
            Some(Refusal::MaxMessagesPerConnection)
        );
    }

    #[test]
    fn the_session_gives_the_data_verdict() {
        let mut s = Session::new(SessionConfig {
            max_hops: 3,
            ..config()
        });
        for line in [
            "EHLO c.test",
            "MAIL FROM:<a@b.test>",
            "RCPT TO:<c@d.test>",
            "DATA",
        ] {
            s.feed(line.as_bytes());
        }
        let fine = Summary {
            size: 100,
            received_headers: 2,
            ..Summary::default()
        };
        assert_eq!(s.data_verdict(&fine), Ok(()));
        let looped = Summary {
            received_headers: 3,
            ..fine.clone()
        };
        assert_eq!(s.data_verdict(&looped).unwrap_err().0, Refusal::Hops);
        let big = Summary {
            oversize: true,
            ..fine
        };
        let (why, reply) = s.data_verdict(&big).unwrap_err();
        assert_eq!((why, reply.code), (Refusal::Size, 552));
        let step = s.data_done(Err((why, reply)));
        let refused = step.refused.unwrap();
        assert_eq!(
            (refused.reason, refused.command.as_str()),
            (Refusal::Size, "DATA")
        );
        assert!(s.transaction().is_none());
    }
}
