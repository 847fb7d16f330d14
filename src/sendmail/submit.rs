//! Submission: hands the message to the local daemon over plain SMTP by driving the client
//! machine (`smtp::client`), and turns what the daemon says into an exit code and a message.
//! Nothing is queued unless every recipient is accepted and the end of data gets a 2xx.

use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::{EX_NOUSER, EX_TEMPFAIL, EX_UNAVAILABLE, Failure, fail};
use crate::net::{LineReader, ReplyError, Stream};
use crate::smtp::client::{self, Action, Client, Ending, Envelope, Needs, Report, Tls};
use crate::smtp::data::DotStuffer;
use crate::smtp::reply::{ParseError, Reply};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_REPLY_LINE: usize = 4096;

/// A reply as messages show it: the code, then its lines (each with the enhanced code)
/// joined by spaces.
fn shown(r: &Reply) -> String {
    let wire = r.render();
    let lines: Vec<&str> = wire.lines().map(|l| l.get(4..).unwrap_or("")).collect();
    format!("{} {}", r.code, lines.join(" "))
}

/// The failure for an unexpected reply: 4xx is temporary (75), 5xx permanent (69).
fn refused(target: &str, what: &str, r: &Reply) -> Failure {
    let code = if r.code >= 500 {
        EX_UNAVAILABLE
    } else {
        EX_TEMPFAIL
    };
    fail(
        code,
        format!("the mail daemon at {target} refused {what}: {}", shown(r)),
    )
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".into(),
        _ => e.to_string(),
    }
}

/// The connection to the daemon and the client machine on it.
struct Daemon<'a> {
    target: &'a str,
    reader: LineReader<Stream>,
    client: Client,
}

impl<'a> Daemon<'a> {
    fn connect(target: &'a str, helo: &str) -> Result<Daemon<'a>, Failure> {
        let unreachable = |why: String| {
            fail(
                EX_TEMPFAIL,
                format!("cannot reach the mail daemon at {target}: {why}"),
            )
        };
        let addrs = target
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    s.set_write_timeout(Some(IO_TIMEOUT))
                        .map_err(|e| unreachable(describe(&e)))?;
                    let client = Client::new(client::Config {
                        helo: helo.to_string(),
                        tls: Tls::Off,
                        auth: None,
                        auth_in_clear: false,
                        pipelining: false,
                        all_recipients: true,
                    });
                    return Ok(Daemon {
                        target,
                        reader: LineReader::new(Stream::Plain(s), 2 * MAX_REPLY_LINE),
                        client,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(unreachable(describe(&last)))
    }

    fn lost(&self, e: &io::Error) -> Failure {
        let target = self.target;
        fail(
            EX_TEMPFAIL,
            match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    format!("timed out waiting for the mail daemon at {target}")
                }
                _ => format!(
                    "lost the connection to the mail daemon at {target}: {}",
                    describe(e)
                ),
            },
        )
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let sent = self.reader.get_mut().write_all(bytes);
        sent.map_err(|e| self.lost(&e))
    }

    fn reply(&mut self) -> Result<Reply, Failure> {
        let e = match self.reader.read_reply(MAX_REPLY_LINE, IO_TIMEOUT) {
            Ok(r) => return Ok(r),
            Err(ReplyError::Closed) => {
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the daemon")
            }
            Err(ReplyError::Timeout) => io::ErrorKind::TimedOut.into(),
            Err(ReplyError::Io(e)) => e,
            Err(ReplyError::Malformed(ParseError::Malformed(text))) => {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {text:?}"))
            }
            Err(e) => io::Error::new(io::ErrorKind::InvalidData, format!("bad reply ({e:?})")),
        };
        Err(self.lost(&e))
    }

    /// Does the I/O a `Send`, `Read` or `Skip` asks for and passes the reply on.
    fn exchange(&mut self, action: Action) -> Result<Action, Failure> {
        Ok(match action {
            Action::Send(command, _) => {
                self.send(command.as_bytes())?;
                let r = self.reply()?;
                self.client.on_reply(r)
            }
            Action::Read(_) => {
                let r = self.reply()?;
                self.client.on_reply(r)
            }
            Action::Skip(_) => {
                let _ = self.reply();
                self.client.skipped()
            }
            other => unreachable!("not an exchange: {other:?}"),
        })
    }

    /// The message, dot-stuffed, and the end marker.
    fn send_body(&mut self, msg: &[u8]) -> Result<(), Failure> {
        let mut stuffer = DotStuffer::default();
        let mut wire = Vec::with_capacity(64 * 1024 + 1024);
        for chunk in msg.chunks(64 * 1024) {
            wire.clear();
            stuffer.stuff(chunk, &mut wire);
            self.send(&wire)?;
        }
        wire.clear();
        stuffer.finish(&mut wire);
        self.send(&wire)
    }

    /// QUIT, and its reply; whatever goes wrong no longer matters.
    fn quit(&mut self) {
        if let Action::Send(command, _) = self.client.quit() {
            let _ = self.send(command.as_bytes());
            let _ = self.reply();
        }
    }
}

pub(super) fn submit(
    target: &str,
    helo: &str,
    sender: Option<&str>,
    rcpts: &[String],
    msg: &[u8],
) -> Result<(), Failure> {
    let mut d = Daemon::connect(target, helo)?;
    let mut action = d.client.start();
    loop {
        action = match action {
            Action::Ready => break,
            Action::Failed(f) => return Err(setup_failed(&mut d, f)),
            other => d.exchange(other)?,
        };
    }
    let sender = sender.unwrap_or("");
    let env = Envelope {
        sender: sender.to_string(),
        rcpts: rcpts.to_vec(),
        needs: Needs {
            size: (msg.len() + msg.iter().filter(|&&b| b == b'\n').count()) as u64,
            eight_bit: !msg.is_ascii(),
            smtputf8: !(sender.is_ascii() && rcpts.iter().all(|r| r.is_ascii())),
        },
        smtputf8: false,
    };
    let mut action = d.client.send(&env);
    let report = loop {
        action = match action {
            Action::SendBody => {
                d.send_body(msg)?;
                d.client.body_sent()
            }
            Action::Done(report) => break report,
            other => d.exchange(other)?,
        };
    };
    let result = outcome(target, &d.client, &env, &report);
    d.quit();
    result
}

/// The failure for a connection that could not be set up; after a refused HELO, QUIT.
fn setup_failed(d: &mut Daemon, f: client::Failure) -> Failure {
    let target = d.target;
    match f {
        client::Failure::Greeting(r) => refused(target, "the connection", &r),
        client::Failure::Ehlo(r) => refused(target, "EHLO", &r),
        client::Failure::Helo(r) => {
            d.quit();
            refused(target, "HELO", &r)
        }
        // Neither TLS nor AUTH is asked for.
        other => fail(
            EX_TEMPFAIL,
            format!("the mail daemon at {target} failed: {other:?}"),
        ),
    }
}

/// Whether the message was queued, from the transaction's report.
fn outcome(target: &str, c: &Client, env: &Envelope, report: &Report) -> Result<(), Failure> {
    match &report.ending {
        Ending::MailRefused(r) => {
            let mail = client::mail_from(&env.sender, c.extensions(), &env.needs, env.smtputf8);
            Err(refused(target, mail.trim_end(), r))
        }
        Ending::RecipientsRefused => {
            let refusals: Vec<(&String, &Reply)> = env
                .rcpts
                .iter()
                .zip(&report.rcpts)
                .filter(|(_, r)| !client::accepted(r))
                .collect();
            let permanent = refusals.iter().any(|(_, r)| r.code >= 500);
            let mut text: Vec<String> = refusals
                .iter()
                .map(|(a, r)| {
                    let r = shown(r);
                    format!("the mail daemon at {target} refused the recipient <{a}>: {r}")
                })
                .collect();
            text.push("nothing was queued".into());
            let code = if permanent { EX_NOUSER } else { EX_TEMPFAIL };
            Err(fail(code, text.join("\n")))
        }
        Ending::DataRefused(r) => Err(refused(target, "DATA", r)),
        Ending::Sent(r) if !(200..300).contains(&r.code) => Err(refused(target, "the message", r)),
        Ending::Sent(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::Enhanced;

    #[test]
    fn reply_failures() {
        for (reply, code, text) in [
            (
                Reply::new(421, Some(Enhanced(4, 3, 2)), "shutting down"),
                EX_TEMPFAIL,
                "421 4.3.2 shutting down",
            ),
            (
                Reply::new(554, Some(Enhanced(5, 7, 1)), "no"),
                EX_UNAVAILABLE,
                "554 5.7.1 no",
            ),
        ] {
            let f = refused("h:1", "the message", &reply);
            assert_eq!(f.code, code);
            assert_eq!(
                f.message,
                format!("the mail daemon at h:1 refused the message: {text}")
            );
        }
    }

    #[test]
    fn replies_are_shown_with_their_lines_joined() {
        let r = |lines: &[&str]| Reply {
            code: 550,
            enhanced: Some(Enhanced(5, 1, 1)),
            lines: lines.iter().map(|l| l.to_string()).collect(),
        };
        assert_eq!(shown(&r(&["no such user"])), "550 5.1.1 no such user");
        assert_eq!(shown(&r(&["a", "b"])), "550 5.1.1 a 5.1.1 b");
        assert_eq!(shown(&Reply::new(250, None, "")), "250 ");
    }

    /// A daemon on loopback that answers each command with the reply of the first
    /// `(prefix, reply)` that matches (else 250), 354 to DATA then 250 after the body, and
    /// returns the commands it got.
    fn daemon(
        script: &'static [(&'static str, &'static str)],
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let (mut out, _) = listener.accept().unwrap();
            let mut lines = BufReader::new(out.try_clone().unwrap()).lines();
            let mut got = Vec::new();
            out.write_all(b"220 d.test ESMTP\r\n").unwrap();
            while let Some(Ok(line)) = lines.next() {
                got.push(line.clone());
                let found = script.iter().find(|(p, _)| line.starts_with(p));
                let default = if line == "DATA" {
                    "354 go ahead"
                } else {
                    "250 ok"
                };
                let answer = found.map_or(default, |f| f.1);
                out.write_all(format!("{answer}\r\n").as_bytes()).unwrap();
                if answer.starts_with("354") {
                    while lines.next().is_some_and(|l| l.is_ok_and(|l| l != ".")) {}
                    out.write_all(b"250 2.0.0 queued\r\n").unwrap();
                }
                if line == "QUIT" {
                    break;
                }
            }
            got
        });
        (target, handle)
    }

    fn submitted(
        script: &'static [(&'static str, &'static str)],
        rcpts: &[&str],
    ) -> (Result<(), Failure>, Vec<String>) {
        let (target, daemon) = daemon(script);
        let rcpts: Vec<String> = rcpts.iter().map(|r| r.to_string()).collect();
        let result = submit(
            &target,
            "h.test",
            Some("a@h.test"),
            &rcpts,
            b"Subject: x\r\n\r\n",
        );
        let commands = daemon.join().unwrap();
        (
            result.map_err(|f| fail(f.code, f.message.replace(&target, "D"))),
            commands,
        )
    }

    #[test]
    fn submission_over_the_wire() {
        let (result, commands) = submitted(
            &[("EHLO", "502 5.5.2 no"), ("HELO", "250 d.test")],
            &["b@x.test"],
        );
        assert_eq!(result, Ok(()));
        let want = [
            "EHLO h.test",
            "HELO h.test",
            "MAIL FROM:<a@h.test>",
            "RCPT TO:<b@x.test>",
            "DATA",
            "QUIT",
        ];
        assert_eq!(commands, want);
        // One refused recipient: no DATA, nothing queued.
        let (result, commands) = submitted(
            &[
                ("EHLO", "250-d.test\r\n250-PIPELINING\r\n250 SIZE 100"),
                ("RCPT TO:<c", "550 5.1.1 unknown"),
            ],
            &["b@x.test", "c@x.test"],
        );
        let message = "the mail daemon at D refused the recipient <c@x.test>: 550 5.1.1 unknown\n\
                       nothing was queued";
        assert_eq!(result, Err(fail(EX_NOUSER, message)));
        let want = [
            "EHLO h.test",
            "MAIL FROM:<a@h.test> SIZE=16",
            "RCPT TO:<b@x.test>",
            "RCPT TO:<c@x.test>",
            "QUIT",
        ];
        assert_eq!(commands, want);
        // A refused MAIL names the command; a 4xx is temporary.
        let (result, _) = submitted(&[("MAIL", "451 4.3.0 later")], &["b@x.test"]);
        let message = "the mail daemon at D refused MAIL FROM:<a@h.test>: 451 4.3.0 later";
        assert_eq!(result, Err(fail(EX_TEMPFAIL, message)));
    }
}
