//! `mxrelay sendmail` end to end: the real binary submits to a real relay (started on
//! 127.0.0.1:0 with a temp spool), which forwards to a recording sink as its smarthost.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::sink::{Message, Script, Sink};
use support::{Relay, TempDir, WAIT, delivered, finish, sink_on, wait_until};

/// A relay whose smarthost is a recording sink.
struct Daemon {
    sink: Sink,
    relay: Relay,
    _spool: TempDir,
}

fn daemon(name: &str, extra: &[&str]) -> Daemon {
    let sink = sink_on("127.0.0.1", 0, Script::default());
    let spool = TempDir::new(name);
    let addr = sink.addr.to_string();
    let mut args = vec!["--smarthost", &addr, "--smarthost-tls", "none"];
    args.extend(extra);
    let relay = Relay::start(spool.path(), &args);
    Daemon {
        sink,
        relay,
        _spool: spool,
    }
}

impl Daemon {
    fn one(&self) -> Message {
        let msgs = delivered(&self.sink, 1, &self.relay);
        assert_eq!(msgs.len(), 1);
        msgs[0].clone()
    }
}

/// Runs `program` with `args` and `stdin`, $USER set and $MXRELAY_SUBMIT_TO as given (or
/// unset); killed if it takes longer than WAIT.
fn run(program: &Path, args: &[&str], env: Option<&str>, stdin: &[u8]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("USER", "tester")
        .env_remove("MXRELAY_SUBMIT_TO")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(v) = env {
        cmd.env("MXRELAY_SUBMIT_TO", v);
    }
    let mut child = cmd.spawn().expect("run mxrelay sendmail");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // A writer that fails (the command stopped reading early) is fine.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = finish(child, WAIT, &format!("mxrelay sendmail {args:?}"));
    writer.join().unwrap();
    out
}

/// `mxrelay sendmail --submit-to ADDR ARGS...`.
fn sendmail(to: SocketAddr, args: &[&str], stdin: &[u8]) -> Output {
    let to = to.to_string();
    let mut all = vec!["sendmail", "--submit-to", &to];
    all.extend(args);
    run(Path::new(env!("CARGO_BIN_EXE_mxrelay")), &all, None, stdin)
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
}

/// The delivered content without the relay's Received: field, as text.
fn content(m: &Message) -> String {
    let text = String::from_utf8(m.data.clone()).unwrap();
    assert!(text.starts_with("Received: "), "{text}");
    let end = text
        .match_indices("\r\n")
        .map(|(i, _)| i + 2)
        .find(|&i| !text[i..].starts_with([' ', '\t']))
        .unwrap();
    text[end..].to_string()
}

fn header_names(content: &str) -> Vec<String> {
    let head = content.split("\r\n\r\n").next().unwrap();
    head.split("\r\n")
        .filter(|l| !l.starts_with([' ', '\t']))
        .map(|l| l.split(':').next().unwrap().to_ascii_lowercase())
        .collect()
}

#[test]
fn t_takes_recipients_from_headers_and_removes_bcc() {
    let d = daemon("sendmail-t", &[]);
    let msg = "To: a@example.test\n\
               Cc: \"Doe, Jane\" <b@example.test>, (boss) c@example.test\n\
               Bcc: hidden@example.test,\n\tsecret@example.test\n\
               Subject: report\n\
               \n\
               Bcc: this body line stays\n";
    let out = sendmail(
        d.relay.addr,
        &["-t", "-i", "extra@example.test"],
        msg.as_bytes(),
    );
    assert_ok(&out);
    let m = d.one();
    let mut rcpts = m.rcpts.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "a@example.test",
            "b@example.test",
            "c@example.test",
            "extra@example.test",
            "hidden@example.test",
            "secret@example.test"
        ]
    );
    let c = content(&m);
    assert!(!c.contains("hidden") && !c.contains("secret"), "{c}");
    assert!(c.ends_with("\r\n\r\nBcc: this body line stays\r\n"), "{c}");
    assert_eq!(
        header_names(&c),
        ["to", "cc", "subject", "from", "date", "message-id"]
    );
    assert!(c.contains("\r\nFrom: <tester@"), "{c}");
    assert!(m.mail_from.starts_with("<tester@"), "{}", m.mail_from);
}

#[test]
fn f_sets_the_envelope_sender_and_f_names_the_from() {
    let d = daemon("sendmail-f", &[]);
    let out = sendmail(
        d.relay.addr,
        &[
            "-f",
            "bounces@client.test",
            "-F",
            "Cron Daemon",
            "-oi",
            "--",
            "a@example.test",
        ],
        b"Subject: cron\n\nok\n",
    );
    assert_ok(&out);
    let m = d.one();
    assert!(
        m.mail_from.starts_with("<bounces@client.test>"),
        "{}",
        m.mail_from
    );
    assert_eq!(m.rcpts, ["a@example.test"]);
    let c = content(&m);
    assert!(
        c.contains("\r\nFrom: Cron Daemon <bounces@client.test>\r\n"),
        "{c}"
    );
    // An existing From: is kept, attached -f works, -f '<>' is the null sender.
    let out = sendmail(
        d.relay.addr,
        &["-f<>", "-F", "Ignored", "a@example.test"],
        b"From: Me <me@client.test>\n\nhi\n",
    );
    assert_ok(&out);
    let msgs = delivered(&d.sink, 2, &d.relay);
    assert!(msgs[1].mail_from.starts_with("<>"), "{}", msgs[1].mail_from);
    let c = content(&msgs[1]);
    assert!(c.starts_with("From: Me <me@client.test>\r\n"), "{c}");
    assert!(!c.contains("Ignored"), "{c}");
}

const DOTTED: &[u8] = b"Subject: dots\n\nline one\n.\n.leading dot\n..two dots\nlast\n";

#[test]
fn with_i_a_lone_dot_line_is_content() {
    let d = daemon("sendmail-i", &[]);
    assert_ok(&sendmail(d.relay.addr, &["-i", "a@example.test"], DOTTED));
    let m = d.one();
    let c = content(&m);
    assert!(
        c.ends_with("\r\n\r\nline one\r\n.\r\n.leading dot\r\n..two dots\r\nlast\r\n"),
        "{c}"
    );
}

#[test]
fn without_i_a_lone_dot_line_ends_the_message() {
    let d = daemon("sendmail-dot", &[]);
    assert_ok(&sendmail(d.relay.addr, &["a@example.test"], DOTTED));
    let c = content(&d.one());
    assert!(c.ends_with("\r\n\r\nline one\r\n"), "{c}");
    assert!(!c.contains("leading"), "{c}");
}

#[test]
fn bare_lf_becomes_crlf() {
    let d = daemon("sendmail-lf", &[]);
    let msg = b"Subject: lf\nX-Long: folded\n  continuation\n\none\ntwo\r\nthree\n\nfour";
    assert_ok(&sendmail(d.relay.addr, &["a@example.test"], msg));
    let m = d.one();
    assert!(
        m.data
            .iter()
            .enumerate()
            .all(|(i, &b)| b != b'\n' || (i > 0 && m.data[i - 1] == b'\r')),
        "bare LF in {:?}",
        String::from_utf8_lossy(&m.data)
    );
    let c = content(&m);
    assert!(
        c.starts_with("Subject: lf\r\nX-Long: folded\r\n  continuation\r\n"),
        "{c}"
    );
    assert!(
        c.ends_with("\r\n\r\none\r\ntwo\r\nthree\r\n\r\nfour\r\n"),
        "{c}"
    );
}

#[test]
fn daemon_down_exits_75_with_a_clear_message() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = sendmail(closed, &["a@example.test"], b"Subject: x\n\nx\n");
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("mxrelay sendmail: cannot reach the mail daemon at {closed}: connection refused\n")
    );
}

#[test]
fn refused_recipient_exits_67_and_queues_nothing() {
    // Loopback is not trusted here, so the relay refuses external recipients (554 5.7.1).
    let d = daemon("sendmail-refused", &["--trusted-network", "10.0.0.0/8"]);
    let out = sendmail(d.relay.addr, &["a@example.test"], b"Subject: x\n\nx\n");
    assert_eq!(out.status.code(), Some(67), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the recipient <a@example.test>: 554"),
        "{err}"
    );
    assert!(wait_until(WAIT, || d.relay.queued() == 0));
}

#[test]
fn usage_errors_exit_64() {
    let unused: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for (args, needle) in [
        (&["-bs"][..], "-bs is not supported"),
        (&["-bp"][..], "-bp is not supported"),
        (&["-q", "a@example.test"][..], "unknown flag -q"),
        (&[][..], "no recipients"),
        (&["-t"][..], "no recipients"),
    ] {
        let out = sendmail(unused, args, b"Subject: x\n\nx\n");
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("mxrelay sendmail: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn submit_to_from_the_environment() {
    let d = daemon("sendmail-env", &[]);
    let out = run(
        Path::new(env!("CARGO_BIN_EXE_mxrelay")),
        &["sendmail", "a@example.test"],
        Some(&d.relay.addr.to_string()),
        b"Subject: env\n\nvia env\n",
    );
    assert_ok(&out);
    assert!(content(&d.one()).ends_with("\r\n\r\nvia env\r\n"));
}

#[test]
fn invoked_through_a_symlink_named_sendmail() {
    let d = daemon("sendmail-link", &[]);
    let dir = TempDir::new("sendmail-symlink");
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mxrelay"), &link).unwrap();
    // What cron does, with PHP's -t -i on top.
    let out = run(
        &link,
        &[
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "-t",
            "a@example.test",
        ],
        Some(&d.relay.addr.to_string()),
        b"To: b@example.test\nSubject: cron\n\noutput\n",
    );
    assert_ok(&out);
    let m = d.one();
    assert_eq!(m.rcpts, ["a@example.test", "b@example.test"]);
    let c = content(&m);
    assert!(c.contains("\r\nFrom: CronDaemon <tester@"), "{c}");
}

#[test]
fn permanent_refusal_exits_69() {
    let d = daemon("sendmail-big", &["--max-message-size", "1K"]);
    let body = format!("Subject: big\n\n{}\n", "x".repeat(4000));
    let out = sendmail(d.relay.addr, &["a@example.test"], body.as_bytes());
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "mxrelay sendmail: the mail daemon at {} refused ",
            d.relay.addr
        )) && err.contains(" 552 "),
        "{err}"
    );
    assert!(wait_until(WAIT, || d.relay.queued() == 0));
}
