//! The client side of an SMTP connection as a state machine without I/O: greeting, EHLO
//! (HELO when EHLO gets a 5xx), STARTTLS, AUTH, then transactions (MAIL, RCPT, DATA, the
//! body, the final reply; pipelined when the server offers it), RSET and QUIT.
//!
//! The driver feeds it parsed replies and the completion of what it asked for, and does what
//! each `Action` says: write a command and read the reply, read a reply already asked for
//! (pipelining), do the TLS handshake, stream the dot-stuffed body. The machine decides
//! what comes next; the driver decides what a failure means (error texts, whether to QUIT).

use super::{Needs, mail_from, rcpt_to};
use crate::smtp::ehlo::Extensions;
use crate::smtp::reply::Reply;
use crate::smtp::sasl;

/// When to use TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    Off,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// STARTTLS or nothing.
    Required,
    /// TLS from the first byte (port 465 style): the handshake comes before the greeting.
    Implicit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The name given in EHLO/HELO.
    pub helo: String,
    pub tls: Tls,
    /// Log in (AUTH PLAIN, else LOGIN) once greeted and, as policy wants, encrypted.
    pub auth: Option<Credentials>,
    /// Whether credentials may go out without TLS (a loopback peer).
    pub auth_in_clear: bool,
    /// Send MAIL, every RCPT and DATA in one write when the server offers PIPELINING.
    pub pipelining: bool,
    /// Go on to DATA only when every recipient was accepted (else when one was).
    pub all_recipients: bool,
}

/// How long to wait for a reply: RFC 5321 4.5.3.2 gives these their own minimums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Greeting,
    Command,
    DataEnd,
    Quit,
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write these command lines (CRLF-terminated, several when pipelined) in one write,
    /// then read a reply and pass it to `on_reply`.
    Send(String, Wait),
    /// Read the next reply (to a command already sent) and pass it to `on_reply`.
    Read(Wait),
    /// Read the next reply and drop it; whether it came or not, call `skipped`.
    Skip(Wait),
    /// Do the TLS handshake on the socket now, then call `tls_done`.
    StartTls,
    /// Stream the dot-stuffed body and its end marker, then call `body_sent`.
    SendBody,
    /// Greeted (and as configured encrypted and logged in): ready for `send`.
    Ready,
    /// One message's transaction ended; `is_ready` says whether the next may follow.
    Done(Report),
    /// The connection could not be set up (or reset); `quit` or drop it.
    Failed(Failure),
    /// QUIT was answered: close the socket.
    Closed,
}

/// Why a connection could not be set up, with the reply that said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The greeting was not 220.
    Greeting(Reply),
    /// EHLO got neither 250 nor a 5xx (which falls back to HELO).
    Ehlo(Reply),
    /// HELO got no 250 (the reply cut to its first line).
    Helo(Reply),
    /// STARTTLS got no 220.
    StartTls(Reply),
    /// TLS is required and the server does not offer STARTTLS.
    NoStartTls,
    /// Credentials would go out without TLS.
    AuthNeedsTls,
    /// The server offers neither AUTH PLAIN nor LOGIN.
    NoAuthMechanism,
    /// AUTH LOGIN got no 334.
    AuthLogin(Reply),
    /// The user name (AUTH LOGIN) got no 334.
    AuthUser(Reply),
    /// The credentials got no 235.
    Auth(Reply),
    /// RSET got no 250.
    Rset(Reply),
}

/// One message for `send`.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// Empty for the null sender.
    pub sender: String,
    pub rcpts: Vec<String>,
    pub needs: Needs,
    /// SMTPUTF8 was declared when the message came in.
    pub smtputf8: bool,
}

/// How one message's transaction went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The reply to each RCPT, in the envelope's order (none when MAIL was refused).
    pub rcpts: Vec<Reply>,
    pub ending: Ending,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// MAIL was refused; nothing else was read.
    MailRefused(Reply),
    /// No recipient (with `all_recipients`: not every one) was accepted: no message went.
    RecipientsRefused,
    /// DATA got no 354: this reply stands for every accepted recipient.
    DataRefused(Reply),
    /// The reply to the end of data, for every accepted recipient.
    Sent(Reply),
}

/// Whether a reply to MAIL or RCPT lets the transaction go on.
pub fn accepted(r: &Reply) -> bool {
    r.is_positive()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    /// Implicit TLS: the handshake comes before the greeting.
    ImplicitHandshake,
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Handshake,
    AuthPlain,
    AuthLogin,
    AuthUser,
    AuthPassword,
    Ready,
    Mail,
    Rcpt,
    /// Every recipient refused after a pipelined DATA: its reply is read and dropped.
    SkipData,
    Data,
    Body,
    DataEnd,
    /// A transaction ended early; `unread` pipelined replies are still on their way.
    Dirty {
        unread: usize,
    },
    Draining {
        left: usize,
    },
    Rset,
    Failed,
    Quitting,
    Closed,
}

/// The transaction under way.
#[derive(Default)]
struct Transaction {
    /// RCPT commands not yet sent (sequential mode).
    rcpt_lines: Vec<String>,
    expected: usize,
    replies: Vec<Reply>,
    pipelined: bool,
}

/// One connection's client side: `start` it, then answer each `Action` as it says.
pub struct Client {
    config: Config,
    state: State,
    ext: Extensions,
    tls: bool,
    tx: Transaction,
}

impl Client {
    pub fn new(config: Config) -> Client {
        Client {
            config,
            state: State::Connecting,
            ext: Extensions::default(),
            tls: false,
            tx: Transaction::default(),
        }
    }

    /// The first action on a new connection.
    pub fn start(&mut self) -> Action {
        self.expect(State::Connecting, "start");
        if self.config.tls == Tls::Implicit {
            self.state = State::ImplicitHandshake;
            return Action::StartTls;
        }
        self.state = State::Greeting;
        Action::Read(Wait::Greeting)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What the server offered in its last EHLO reply (nothing after HELO).
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the next message may be sent.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// The TLS handshake asked for by `StartTls` succeeded.
    pub fn tls_done(&mut self) -> Action {
        self.tls = true;
        if self.state == State::ImplicitHandshake {
            self.state = State::Greeting;
            return Action::Read(Wait::Greeting);
        }
        self.expect(State::Handshake, "tls_done");
        // RFC 3207 4.2: forget what was learnt in plaintext and greet again.
        self.ext = Extensions::default();
        self.hello()
    }

    /// The body and its end marker went out.
    pub fn body_sent(&mut self) -> Action {
        self.expect(State::Body, "body_sent");
        self.state = State::DataEnd;
        Action::Read(Wait::DataEnd)
    }

    /// After a `Skip`: the reply was read (or could not be).
    pub fn skipped(&mut self) -> Action {
        match self.state {
            State::SkipData => {
                self.state = State::Dirty { unread: 0 };
                Action::Done(self.report(Ending::RecipientsRefused))
            }
            State::Draining { left } => self.drain(left - 1),
            s => panic!("client: skipped in state {s:?}"),
        }
    }

    /// Starts a transaction for one message.
    pub fn send(&mut self, env: &Envelope) -> Action {
        self.expect(State::Ready, "send");
        let mail = mail_from(&env.sender, &self.ext, &env.needs, env.smtputf8);
        let mut rcpts: Vec<String> = env.rcpts.iter().map(|a| rcpt_to(a)).collect();
        let pipelined = self.config.pipelining && self.ext.pipelining;
        self.state = State::Mail;
        self.tx = Transaction {
            expected: rcpts.len(),
            pipelined,
            ..Default::default()
        };
        if !pipelined {
            rcpts.reverse();
            self.tx.rcpt_lines = rcpts;
            return Action::Send(mail, Wait::Command);
        }
        // MAIL, every RCPT and DATA in one write (RFC 2920).
        let batch = mail + &rcpts.concat() + "DATA\r\n";
        Action::Send(batch, Wait::Command)
    }

    /// Ends a transaction that ended early, so another may follow.
    pub fn rset(&mut self) -> Action {
        match self.state {
            State::Dirty { unread } => self.drain(unread),
            s => panic!("client: rset in state {s:?}"),
        }
    }

    /// Ends the connection politely, in any state but after QUIT.
    pub fn quit(&mut self) -> Action {
        if matches!(self.state, State::Quitting | State::Closed) {
            panic!("client: quit in state {:?}", self.state);
        }
        self.state = State::Quitting;
        Action::Send("QUIT\r\n".into(), Wait::Quit)
    }

    /// The reply a `Send`, `Read` or `Skip` asked for.
    pub fn on_reply(&mut self, r: Reply) -> Action {
        match self.state {
            State::Greeting if r.code == 220 => self.hello(),
            State::Greeting => self.fail(Failure::Greeting(r)),
            State::Ehlo if r.code >= 500 => {
                self.state = State::Helo;
                let helo = format!("HELO {}\r\n", self.config.helo);
                Action::Send(helo, Wait::Command)
            }
            State::Ehlo if r.code == 250 => {
                self.ext = Extensions::parse(&r);
                self.greeted()
            }
            State::Ehlo => self.fail(Failure::Ehlo(r)),
            State::Helo => {
                let mut r = r;
                r.lines.truncate(1);
                if r.code != 250 {
                    return self.fail(Failure::Helo(r));
                }
                self.ext = Extensions::parse(&r);
                self.greeted()
            }
            State::StartTls if r.code == 220 => {
                self.state = State::Handshake;
                Action::StartTls
            }
            State::StartTls => self.fail(Failure::StartTls(r)),
            State::AuthPlain | State::AuthPassword if r.code == 235 => self.ready(),
            State::AuthPlain | State::AuthPassword => self.fail(Failure::Auth(r)),
            State::AuthLogin if r.code == 334 => {
                self.state = State::AuthUser;
                let user = &self.config.auth.as_ref().expect("credentials").user;
                Action::Send(sasl::encode(user.as_bytes()) + "\r\n", Wait::Command)
            }
            State::AuthLogin => self.fail(Failure::AuthLogin(r)),
            State::AuthUser if r.code == 334 => {
                self.state = State::AuthPassword;
                let password = &self.config.auth.as_ref().expect("credentials").password;
                Action::Send(sasl::encode(password.as_bytes()) + "\r\n", Wait::Command)
            }
            State::AuthUser => self.fail(Failure::AuthUser(r)),
            State::Mail | State::Rcpt | State::SkipData | State::Data | State::DataEnd => {
                self.transaction_reply(r)
            }
            State::Rset if r.code == 250 => self.ready(),
            State::Rset => self.fail(Failure::Rset(r)),
            State::Draining { left } => self.drain(left - 1),
            State::Quitting => {
                self.state = State::Closed;
                Action::Closed
            }
            s => panic!("client: a reply in state {s:?}"),
        }
    }

    fn transaction_reply(&mut self, r: Reply) -> Action {
        let pipelined = self.tx.pipelined;
        match self.state {
            State::Mail if !accepted(&r) => {
                // Pipelined: the replies to every RCPT and DATA are still to come.
                let unread = if pipelined { self.tx.expected + 1 } else { 0 };
                self.state = State::Dirty { unread };
                Action::Done(self.report(Ending::MailRefused(r)))
            }
            State::Mail => {
                self.state = State::Rcpt;
                self.next_rcpt()
            }
            State::Rcpt => {
                self.tx.replies.push(r);
                self.next_rcpt()
            }
            State::SkipData => self.skipped(),
            State::Data if r.code == 354 => {
                self.state = State::Body;
                Action::SendBody
            }
            State::Data => {
                self.state = State::Dirty { unread: 0 };
                Action::Done(self.report(Ending::DataRefused(r)))
            }
            State::DataEnd => {
                // After the reply to the end of data the server is ready for the next MAIL.
                self.state = State::Ready;
                Action::Done(self.report(Ending::Sent(r)))
            }
            s => unreachable!("not a transaction state: {s:?}"),
        }
    }

    /// The next RCPT (or its reply), then DATA when the recipients allow it.
    fn next_rcpt(&mut self) -> Action {
        let tx = &mut self.tx;
        if tx.replies.len() < tx.expected {
            return match tx.rcpt_lines.pop() {
                Some(line) => Action::Send(line, Wait::Command),
                None => Action::Read(Wait::Command),
            };
        }
        let go = if self.config.all_recipients {
            tx.replies.iter().all(accepted)
        } else {
            tx.replies.iter().any(accepted)
        };
        match (go, tx.pipelined) {
            (true, true) => {
                self.state = State::Data;
                Action::Read(Wait::Command)
            }
            (true, false) => {
                self.state = State::Data;
                Action::Send("DATA\r\n".into(), Wait::Command)
            }
            // The pipelined DATA is answered with an error: read it before leaving.
            (false, true) => {
                self.state = State::SkipData;
                Action::Skip(Wait::Command)
            }
            (false, false) => {
                self.state = State::Dirty { unread: 0 };
                Action::Done(self.report(Ending::RecipientsRefused))
            }
        }
    }

    fn report(&mut self, ending: Ending) -> Report {
        Report {
            rcpts: std::mem::take(&mut self.tx.replies),
            ending,
        }
    }

    /// Reads `left` replies still due, then sends RSET.
    fn drain(&mut self, left: usize) -> Action {
        if left > 0 {
            self.state = State::Draining { left };
            return Action::Skip(Wait::Command);
        }
        self.state = State::Rset;
        Action::Send("RSET\r\n".into(), Wait::Command)
    }

    /// EHLO, at the start and after the TLS handshake.
    fn hello(&mut self) -> Action {
        self.state = State::Ehlo;
        Action::Send(format!("EHLO {}\r\n", self.config.helo), Wait::Command)
    }

    /// After EHLO/HELO: STARTTLS, AUTH or ready, as configured.
    fn greeted(&mut self) -> Action {
        if !self.tls && matches!(self.config.tls, Tls::Opportunistic | Tls::Required) {
            if self.ext.starttls {
                self.state = State::StartTls;
                return Action::Send("STARTTLS\r\n".into(), Wait::Command);
            }
            if self.config.tls == Tls::Required {
                return self.fail(Failure::NoStartTls);
            }
        }
        let Some(cred) = &self.config.auth else {
            return self.ready();
        };
        if !self.tls && !self.config.auth_in_clear {
            return self.fail(Failure::AuthNeedsTls);
        }
        let offers = |m: &str| self.ext.auth.iter().any(|x| x == m);
        if offers("PLAIN") {
            let token = sasl::encode(format!("\0{}\0{}", cred.user, cred.password).as_bytes());
            self.state = State::AuthPlain;
            Action::Send(format!("AUTH PLAIN {token}\r\n"), Wait::Command)
        } else if offers("LOGIN") {
            self.state = State::AuthLogin;
            Action::Send("AUTH LOGIN\r\n".into(), Wait::Command)
        } else {
            self.fail(Failure::NoAuthMechanism)
        }
    }

    fn ready(&mut self) -> Action {
        self.state = State::Ready;
        Action::Ready
    }

    fn fail(&mut self, f: Failure) -> Action {
        self.state = State::Failed;
        Action::Failed(f)
    }

    fn expect(&self, state: State, call: &str) {
        assert!(
            self.state == state,
            "client: {call} in state {:?}",
            self.state
        );
    }
}
