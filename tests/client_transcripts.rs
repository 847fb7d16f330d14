//! Client transcript tests: each `tests/client-transcripts/*.smtp` file pins one rule of the
//! client state machine (`smtp::client::Client`, what delivery and `mxrelay sendmail` drive)
//! as a dialogue. The runner plays the server and the driver: it feeds the `S:` replies in,
//! makes the driver's calls, and checks every command and event the machine gives back, in
//! order. The machine is started before the first line.
//!
//! One item per line:
//!
//! | line                 | meaning                                                              |
//! |----------------------|----------------------------------------------------------------------|
//! | `# text`             | comment; the first one says which rule the file pins                 |
//! | `! config k=v ...`   | `tls=off\|may\|required\|implicit`, `pipelining=on\|off`, `auth=USER:PASSWORD`, `auth-in-clear=on`, `all-recipients=on` (defaults: off, on, none, off, off) |
//! | `S: text`            | one reply line from the server                                       |
//! | `C: line`            | the machine sends this command                                      |
//! | `P: a\|b\|c`         | the machine sends these commands in one write (pipelining)           |
//! | `= event`            | the machine says: `ready`, `tls` (handshake now; the runner reports it done), `body` (send it now; reported sent), `skip` (the next reply is dropped), `done ENDING[; rcpts C,C]` (ENDING: `sent C`, `data-refused C`, `recipients-refused`, `mail-refused C`), `failed WHAT [C]`, `closed` |
//! | `> mail FROM TO...`  | the driver sends a message (`<>` for the null sender; `size=N` sets its size) |
//! | `> rset`, `> quit`   | the driver resets the transaction or ends the connection             |
//!
//! `C:`, `P:` and `=` lines match exactly, or by prefix when they end in `*`. Every command
//! and event must be checked before the next `S:` or `>` line, and by the end.

mod support;

use std::collections::VecDeque;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use mxrelay::smtp::client::{
    Action, Client, Config, Credentials, Ending, Envelope, Failure, Needs, Report, Tls,
};
use mxrelay::smtp::reply::{Reply, ReplyParser};

fn config(settings: &[&str]) -> Result<Config, String> {
    let mut c = Config {
        helo: "client.test".into(),
        tls: Tls::Off,
        auth: None,
        auth_in_clear: false,
        pipelining: true,
        all_recipients: false,
    };
    for s in settings {
        match s.split_once('=') {
            Some(("tls", "off")) => c.tls = Tls::Off,
            Some(("tls", "may")) => c.tls = Tls::Opportunistic,
            Some(("tls", "required")) => c.tls = Tls::Required,
            Some(("tls", "implicit")) => c.tls = Tls::Implicit,
            Some(("pipelining", v)) => c.pipelining = v == "on",
            Some(("auth-in-clear", v)) => c.auth_in_clear = v == "on",
            Some(("all-recipients", v)) => c.all_recipients = v == "on",
            Some(("auth", v)) => {
                let (user, password) = v.split_once(':').ok_or("auth=USER:PASSWORD")?;
                c.auth = Some(Credentials {
                    user: user.into(),
                    password: password.into(),
                });
            }
            _ => return Err(format!("unknown setting {s}")),
        }
    }
    Ok(c)
}

fn codes(replies: &[Reply]) -> String {
    let codes: Vec<String> = replies.iter().map(|r| r.code.to_string()).collect();
    codes.join(",")
}

fn report(r: &Report) -> String {
    let mut s = match &r.ending {
        Ending::Sent(r) => format!("done sent {}", r.code),
        Ending::DataRefused(r) => format!("done data-refused {}", r.code),
        Ending::RecipientsRefused => "done recipients-refused".into(),
        Ending::MailRefused(r) => format!("done mail-refused {}", r.code),
    };
    if !r.rcpts.is_empty() {
        s += &format!("; rcpts {}", codes(&r.rcpts));
    }
    s
}

fn failure(f: &Failure) -> String {
    match f {
        Failure::Greeting(r) => format!("failed greeting {}", r.code),
        Failure::Ehlo(r) => format!("failed ehlo {}", r.code),
        Failure::Helo(r) => format!("failed helo {}", r.code),
        Failure::StartTls(r) => format!("failed starttls {}", r.code),
        Failure::NoStartTls => "failed no-starttls".into(),
        Failure::AuthNeedsTls => "failed auth-needs-tls".into(),
        Failure::NoAuthMechanism => "failed no-auth-mechanism".into(),
        Failure::AuthLogin(r) => format!("failed auth-login {}", r.code),
        Failure::AuthUser(r) => format!("failed auth-user {}", r.code),
        Failure::Auth(r) => format!("failed auth {}", r.code),
        Failure::Rset(r) => format!("failed rset {}", r.code),
    }
}

/// The machine and what it said that the transcript has not checked yet.
struct Run {
    client: Client,
    out: VecDeque<String>,
    /// The machine asked for a reply.
    reading: bool,
    parser: ReplyParser,
}

impl Run {
    /// Records an action; does what the runner does for the driver (TLS, body) at once.
    fn act(&mut self, mut action: Action) {
        loop {
            let said = match action {
                Action::Send(commands, _) => {
                    self.reading = true;
                    let lines: Vec<&str> = commands.split_terminator("\r\n").collect();
                    match lines.as_slice() {
                        [one] => format!("C: {one}"),
                        _ => format!("P: {}", lines.join("|")),
                    }
                }
                Action::Read(_) => {
                    self.reading = true;
                    return;
                }
                Action::Skip(_) => {
                    self.reading = true;
                    "= skip".into()
                }
                Action::StartTls => {
                    self.out.push_back("= tls".into());
                    action = self.client.tls_done();
                    continue;
                }
                Action::SendBody => {
                    self.out.push_back("= body".into());
                    action = self.client.body_sent();
                    continue;
                }
                Action::Ready => "= ready".into(),
                Action::Done(r) => format!("= {}", report(&r)),
                Action::Failed(f) => format!("= {}", failure(&f)),
                Action::Closed => "= closed".into(),
            };
            self.out.push_back(said);
            return;
        }
    }

    fn unchecked(&self) -> Result<(), String> {
        match self.out.front() {
            Some(said) => Err(format!("unchecked: {said:?}")),
            None => Ok(()),
        }
    }

    fn reply_line(&mut self, line: &str) -> Result<(), String> {
        self.unchecked()?;
        let reply = self
            .parser
            .feed(line)
            .map_err(|e| format!("bad reply line: {e:?}"))?;
        if let Some(r) = reply {
            if !self.reading {
                return Err("a reply, but the client is not reading one".into());
            }
            self.reading = false;
            let next = self.client.on_reply(r);
            self.act(next);
        }
        Ok(())
    }

    fn call(&mut self, call: &str) -> Result<(), String> {
        self.unchecked()?;
        let words: Vec<&str> = call.split_whitespace().collect();
        let next = match words.as_slice() {
            ["quit"] => self.client.quit(),
            ["rset"] => self.client.rset(),
            ["mail", from, rest @ ..] => {
                let mut env = Envelope {
                    sender: from.trim_matches(['<', '>']).to_string(),
                    rcpts: Vec::new(),
                    needs: Needs {
                        size: 0,
                        eight_bit: false,
                        smtputf8: false,
                    },
                    smtputf8: false,
                };
                for w in rest {
                    match w.strip_prefix("size=") {
                        Some(n) => env.needs.size = n.parse().map_err(|_| "bad size")?,
                        None => env.rcpts.push(w.to_string()),
                    }
                }
                self.client.send(&env)
            }
            _ => return Err("unknown call".into()),
        };
        self.act(next);
        Ok(())
    }

    fn expect(&mut self, want: &str) -> Result<(), String> {
        let got = self.out.pop_front();
        let ok = got
            .as_deref()
            .is_some_and(|g| match want.strip_suffix('*') {
                Some(prefix) => g.starts_with(prefix),
                None => g == want,
            });
        if ok {
            return Ok(());
        }
        Err(format!(
            "expected {want:?}, got {:?}",
            got.as_deref().unwrap_or("nothing")
        ))
    }
}

fn run(path: &Path) -> Result<(), String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let mut run: Option<Run> = None;
    for (i, line) in text.lines().enumerate() {
        let at = |e: String| format!("{name}:{}: {e}: {line:?}", i + 1);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(settings) = line.strip_prefix("! config") {
            if run.is_some() {
                return Err(at("`! config` must come first".into()));
            }
            let words: Vec<&str> = settings.split_whitespace().collect();
            run = Some(start(config(&words).map_err(at)?));
            continue;
        }
        let r = run.get_or_insert_with(|| start(config(&[]).unwrap()));
        let result = match line.split_at(line.find([':', ' ']).unwrap_or(0)) {
            ("S", rest) => r.reply_line(rest.trim_start_matches(':').trim_start()),
            (">", rest) => r.call(rest.trim()),
            ("C" | "P", _) | ("=", _) => r.expect(line),
            _ => Err("unknown line type".into()),
        };
        result.map_err(at)?;
    }
    let r = run.ok_or(format!("{name}: empty"))?;
    r.unchecked()
        .map_err(|e| format!("{name}: at the end: {e}"))
}

fn start(config: Config) -> Run {
    let mut r = Run {
        client: Client::new(config),
        out: VecDeque::new(),
        reading: false,
        parser: ReplyParser::default(),
    };
    let first = r.client.start();
    r.act(first);
    r
}

#[test]
fn client_transcripts() {
    let paths = support::smtp_files("tests/client-transcripts");
    let failures: Vec<String> = paths
        .iter()
        .filter_map(|p| match catch_unwind(AssertUnwindSafe(|| run(p))) {
            Ok(result) => result.err(),
            Err(panic) => Some(format!(
                "{}: the client panicked: {:?}",
                p.display(),
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or(panic.downcast_ref::<&str>().copied())
            )),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} client transcripts failed:\n  {}",
        failures.len(),
        paths.len(),
        failures.join("\n  ")
    );
}
