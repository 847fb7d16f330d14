//! DKIM signatures made by the transform stage, checked by an independent verifier: dkimpy
//! (Debian's python3-dkim, python3-nacl for Ed25519) reading the public keys with real TXT
//! queries to a dnsmasq this test starts on 127.0.0.1. The keys come from `mxrelay
//! dkim-keygen`, and the records published are the ones it prints. Missing tools fail the
//! test with what to install (scripts/test installs them).

mod support;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mxrelay::config::Role;
use mxrelay::smtp::session::{BodyType, Transaction};
use mxrelay::transform::dkim::{Dkim, parse_spec};
use mxrelay::transform::{Context, Transforms};
use support::TempDir;
use support::dnsmasq::Dnsmasq;

const PYTHON: &str = "/usr/bin/python3";
const RECEIVED: &[u8] = b"Received: from app.internal (app.internal [127.0.0.9])\r\n\
    \tby relay.test with ESMTPSA id 0006613118200133-0015;\r\n\
    \tMon, 7 Dec 2026 16:00:00 +0000\r\n";

/// Fails (never skips) when a tool is missing, saying what to install.
fn require_tools() {
    support::dnsmasq::require();
    let py = Command::new(PYTHON)
        .args(["-c", "import dkim, nacl, dns.resolver"])
        .output();
    assert!(
        py.as_ref().is_ok_and(|o| o.status.success()),
        "{PYTHON} cannot import dkim, nacl and dns.resolver: \
         apt-get install python3-dkim python3-nacl (scripts/test installs them): {py:?}"
    );
}

fn keygen(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mxrelay"))
        .arg("dkim-keygen")
        .args(extra)
        .current_dir(dir)
        .output()
        .expect("run mxrelay dkim-keygen")
}

/// A published record: owner name and its character-strings.
struct Record {
    name: String,
    strings: Vec<String>,
}

/// Runs dkim-keygen and parses the TXT record it prints.
fn make_key(dir: &Path, domain: &str, selector: &str, kind: &str) -> (PathBuf, Record) {
    let out = dir.join(format!("{selector}.{domain}.pem"));
    let o = keygen(
        dir,
        &[
            "--domain",
            domain,
            "--selector",
            selector,
            "--type",
            kind,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "dkim-keygen: {o:?}");
    (out, parse_record(&String::from_utf8(o.stdout).unwrap()))
}

fn parse_record(stdout: &str) -> Record {
    let line = stdout.trim();
    let (name, rest) = line.split_once(" IN TXT ").expect("NAME IN TXT \"...\"");
    let strings: Vec<String> = rest
        .split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    assert!(!strings.is_empty(), "{line}");
    for s in &strings {
        assert!(s.len() <= 255, "a TXT string longer than 255: {s}");
    }
    Record {
        name: name.trim_end_matches('.').to_string(),
        strings,
    }
}

/// dnsmasq serving the records on 127.0.0.1.
fn start_dnsmasq(dir: &Path, records: &[&Record]) -> Dnsmasq {
    // Each string as given: dnsmasq keeps quotes given on its command line.
    let args: Vec<String> = records
        .iter()
        .map(|r| format!("--txt-record={},{}", r.name, r.strings.join(",")))
        .collect();
    Dnsmasq::start(dir, &args, &records[0].name)
}

fn tx() -> Transaction {
    Transaction {
        sender: None,
        declared_size: None,
        body: BodyType::EightBitMime,
        smtputf8: true,
        recipients: Vec::new(),
    }
}

/// Drives `message` through the stage in pieces of `piece` bytes: the stored message (the
/// block, then the body as the stage handed it back), the signatures noted, and the largest
/// piece of body handed back at once.
fn run(t: &Transforms, message: &[u8], piece: usize) -> (Vec<u8>, Vec<String>, usize) {
    let tx = tx();
    let cx = Context {
        id: "0006613118200133-0015",
        role: Role::Submission,
        trusted: false,
        auth_user: Some("app"),
        tx: &tx,
    };
    let mut stage = t.begin(cx, RECEIVED).expect("the DKIM stage takes part");
    let mut body = Vec::new();
    let mut largest = 0;
    for chunk in message.chunks(piece) {
        let out = stage.feed(chunk);
        largest = largest.max(out.len());
        body.extend_from_slice(out);
    }
    let msg = stage.end().expect("the stage ends");
    let mut stored = msg.block.to_bytes();
    stored.extend_from_slice(&body);
    (stored, msg.notes.signatures, largest)
}

/// One verifier line: d, s, a, passed, reason.
#[derive(Debug)]
struct Verdict {
    d: String,
    s: String,
    a: String,
    pass: bool,
    why: String,
}

/// Runs the verifier over the messages: verdicts per file name, and the names it queried.
fn verify(dir: &Path, port: u16, names: &[&str]) -> (HashMap<String, Vec<Verdict>>, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/dkim_verify.py");
    let child = Command::new(PYTHON)
        .arg(&script)
        .arg(port.to_string())
        .args(names.iter().map(|n| dir.join(n)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the verifier");
    let out = support::finish(child, Duration::from_secs(120), "the verifier");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("verifier:\n{stdout}");
    assert!(
        out.status.success(),
        "verifier failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut verdicts: HashMap<String, Vec<Verdict>> = HashMap::new();
    let mut queries = String::new();
    for line in stdout.lines() {
        if let Some(q) = line.strip_prefix("queries ") {
            queries = q.to_string();
            continue;
        }
        let mut w = line.splitn(7, ' ');
        let name = w.next().unwrap().to_string();
        let entry = verdicts.entry(name).or_default();
        if w.next() == Some("-") {
            continue;
        }
        let tag = |t: Option<&str>, p: &str| t.unwrap_or("").trim_start_matches(p).to_string();
        entry.push(Verdict {
            d: tag(w.next(), "d="),
            s: tag(w.next(), "s="),
            a: tag(w.next(), "a="),
            pass: w.next() == Some("pass"),
            why: w.next().unwrap_or("").to_string(),
        });
    }
    (verdicts, queries)
}

/// A message: name, text, the piece size it is fed in, and the signatures (d, s) that must
/// verify on it.
struct Case(
    &'static str,
    Vec<u8>,
    usize,
    Vec<(&'static str, &'static str)>,
);

const HEAD: &str = "From: Alice Example <alice@{D}>\r\n\
    To: Bob <bob@example.net>\r\n\
    Subject: Your order\r\n\
    Date: Mon, 7 Dec 2026 16:00:00 +0000\r\n\
    Message-ID: <order-1@app.internal>\r\n\
    MIME-Version: 1.0\r\n\
    Content-Type: text/plain; charset=utf-8\r\n\
    X-Mailer: app 1.0\r\n";

fn plain(domain: &str, body: &str) -> Vec<u8> {
    format!("{}\r\n{body}", HEAD.replace("{D}", domain)).into_bytes()
}

#[test]
fn an_independent_verifier_checks_the_signatures_through_real_dns() {
    require_tools();
    let tmp = TempDir::new("dkim");
    let dir = tmp.path();
    let (rsa_key, rsa_rec) = make_key(dir, "rsa.test", "r1", "rsa");
    let (ed_key, ed_rec) = make_key(dir, "ed.test", "e1", "ed25519");
    let (both_r, both_r_rec) = make_key(dir, "both.test", "r", "rsa");
    let (both_e, both_e_rec) = make_key(dir, "both.test", "e", "ed25519");
    assert_eq!(
        rsa_rec.strings.len(),
        2,
        "RSA-2048's record takes two strings"
    );
    let specs: Vec<_> = [
        ("rsa.test", "r1", &rsa_key),
        ("ed.test", "e1", &ed_key),
        ("both.test", "r", &both_r),
        ("both.test", "e", &both_e),
    ]
    .iter()
    .map(|(d, s, k)| parse_spec(&format!("{d}:{s}:{}", k.display())).unwrap())
    .collect();
    let dkim = Dkim::load(&specs).expect("keys load");
    let t = Transforms::new(vec![Arc::new(dkim)], 64 * 1024);
    let dns = start_dnsmasq(dir, &[&rsa_rec, &ed_rec, &both_r_rec, &both_e_rec]);

    let mut eight_bit = "From: =?UTF-8?Q?J=C3=B6rg?= <joerg@ed.test>\r\n\
        Subject: Grüße aus Köln ✓\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: 8bit\r\n\r\nGrüße, Jörg — ✓\r\n"
        .as_bytes()
        .to_vec();
    eight_bit.extend_from_slice(b"latin-1: \xe9\xe8\xff\x80\r\n");
    let mut large = HEAD.replace("{D}", "both.test").into_bytes();
    large.extend_from_slice(b"\r\n");
    let mut n = 0u32;
    while large.len() < 1_300_000 {
        n += 1;
        let line = match n % 4 {
            0 => format!("line {n}: the quick brown fox jumps over the lazy dog\r\n"),
            1 => format!("  {n}\tcolumns \t  with   runs of space   \r\n"),
            2 => "\r\n".to_string(),
            _ => format!("Ünïcödé line {n} ✓\r\n"),
        };
        large.extend_from_slice(line.as_bytes());
    }
    large.extend_from_slice(b"\r\n\r\n");
    // name, message, piece size, expected signatures (d, s) that must verify.
    let cases: Vec<Case> = vec![
        Case(
            "rsa",
            plain("rsa.test", "Hello Bob,\r\n\r\nyour order shipped.\r\n"),
            4096,
            vec![("rsa.test", "r1")],
        ),
        Case(
            "ed",
            plain("ed.test", "Hello Bob,\r\n"),
            4096,
            vec![("ed.test", "e1")],
        ),
        Case(
            "folded",
            b"From: \"Example, Alice\"\r\n <alice@rsa.test>\r\n\
          To: bob@example.net,\r\n\tcarol@example.net,\r\n  dave@example.net\r\n\
          Subject: a subject that goes on\r\n and on\r\n\tand on\r\n\
          References: <a@x.test>\r\n <b@x.test>\r\n\
          Message-ID: <folded@app.internal>\r\n\r\nbody\r\n"
                .to_vec(),
            1,
            vec![("rsa.test", "r1")],
        ),
        Case(
            "trailing-blank-lines",
            plain("ed.test", "last line\r\n\r\n\r\n  \r\n\t\r\n\r\n"),
            3,
            vec![("ed.test", "e1")],
        ),
        Case(
            "odd-whitespace",
            b"From:alice@rsa.test\r\n\
          Subject:   lots \t of\t\t space   \r\n\
          To:  bob@example.net  ,  carol@example.net\t\r\n\
          X-Spaces:    \r\n\
          \r\n\
          \t  leading\r\n  runs \t\t of   space\t \r\ntrailing  \t\r\n \r\nend"
                .to_vec(),
            5,
            vec![("rsa.test", "r1")],
        ),
        Case("8bit", eight_bit, 7, vec![("ed.test", "e1")]),
        Case(
            "large",
            large,
            8191,
            vec![("both.test", "r"), ("both.test", "e")],
        ),
        Case(
            "two-keys",
            plain("both.test", "two signatures\r\n"),
            4096,
            vec![("both.test", "r"), ("both.test", "e")],
        ),
        Case(
            "subdomain",
            plain("mail.news.rsa.test", "from a subdomain\r\n"),
            4096,
            vec![("rsa.test", "r1")],
        ),
        Case(
            "no-key",
            plain("nokey.test", "not signed\r\n"),
            4096,
            vec![],
        ),
        Case(
            "empty-body",
            plain("ed.test", ""),
            4096,
            vec![("ed.test", "e1")],
        ),
    ];

    let mut stored: HashMap<&str, Vec<u8>> = HashMap::new();
    for Case(name, message, piece, want) in &cases {
        let (bytes, notes, largest) = run(&t, message, *piece);
        assert!(largest <= *piece, "{name}: the body streams through");
        let want_notes: Vec<String> = want
            .iter()
            .map(|(d, s)| {
                let a = if s.starts_with('e') {
                    "ed25519-sha256"
                } else {
                    "rsa-sha256"
                };
                format!("d={d} s={s} a={a}")
            })
            .collect();
        assert_eq!(notes, want_notes, "{name}");
        let body_start = message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(message.len(), |p| p + 4);
        assert!(
            bytes.ends_with(&message[body_start..]),
            "{name}: the body is unchanged"
        );
        std::fs::write(dir.join(name), &bytes).unwrap();
        stored.insert(name, bytes);
    }

    // Tampered copies: a changed body, and a second From: above or below the first.
    let tamper = |from: &str, f: &dyn Fn(&str) -> String| {
        let text = String::from_utf8(stored[from].clone()).unwrap();
        let changed = f(&text);
        assert_ne!(changed, text, "tampering with {from} changed it");
        changed.into_bytes()
    };
    let tampered: Vec<(&str, Vec<u8>)> = vec![
        (
            "tampered-rsa-body",
            tamper("rsa", &|m| m.replace("shipped", "shipper")),
        ),
        (
            "tampered-ed-body",
            tamper("ed", &|m| format!("{m}one more line\r\n")),
        ),
        (
            "tampered-from-below",
            tamper("two-keys", &|m| {
                m.replace(
                    "From: Alice Example <alice@both.test>\r\n",
                    "From: Alice Example <alice@both.test>\r\nFrom: evil@attacker.test\r\n",
                )
            }),
        ),
        (
            "tampered-from-above",
            tamper("two-keys", &|m| {
                m.replace("Received:", "From: evil@attacker.test\r\nReceived:")
            }),
        ),
    ];
    for (name, bytes) in &tampered {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    let mut names: Vec<&str> = cases.iter().map(|c| c.0).collect();
    names.extend(tampered.iter().map(|c| c.0));
    let (verdicts, queries) = verify(dir, dns.port, &names);
    let mut failures = Vec::new();
    for Case(name, _, _, want) in &cases {
        let got = verdicts.get(*name).map(Vec::as_slice).unwrap_or_default();
        let ok = got.len() == want.len()
            && got
                .iter()
                .zip(want)
                .all(|(v, (d, s))| v.pass && v.d == *d && v.s == *s);
        if !ok {
            failures.push(format!("{name}: want {want:?} verified, got {got:?}"));
        }
    }
    for (name, _) in &tampered {
        let got = verdicts.get(*name).map(Vec::as_slice).unwrap_or_default();
        if got.is_empty() || got.iter().any(|v| v.pass) {
            failures.push(format!("{name}: must fail, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let a_of = |name: &str| -> Vec<String> { verdicts[name].iter().map(|v| v.a.clone()).collect() };
    assert_eq!(a_of("two-keys"), ["rsa-sha256", "ed25519-sha256"]);
    assert!(
        verdicts["tampered-rsa-body"][0].why.contains("body hash"),
        "{:?}",
        verdicts["tampered-rsa-body"]
    );
    // The keys came from the DNS server.
    for r in [
        "r1._domainkey.rsa.test",
        "e1._domainkey.ed.test",
        "r._domainkey.both.test",
        "e._domainkey.both.test",
    ] {
        assert!(
            queries.split(' ').any(|q| q == r),
            "{r} not queried: {queries}"
        );
    }
}

#[test]
fn keygen_writes_a_private_key_once_and_prints_the_record() {
    let tmp = TempDir::new("dkim-keygen");
    let dir = tmp.path();
    // Default file name, in the current directory.
    let o = keygen(dir, &["--domain", "Example.test", "--selector", "s1"]);
    assert!(o.status.success(), "{o:?}");
    let file = dir.join("s1._domainkey.example.test.pem");
    let meta = std::fs::metadata(&file).expect("the key file is written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let pem = std::fs::read(&file).unwrap();
    assert!(pem.starts_with(b"-----BEGIN PRIVATE KEY-----"));
    let rec = parse_record(&String::from_utf8(o.stdout).unwrap());
    assert_eq!(rec.name, "s1._domainkey.example.test");
    assert!(rec.strings[0].starts_with("v=DKIM1; k=rsa; p=MII"));
    // The key loads as the record says.
    let spec = parse_spec(&format!("example.test:s1:{}", file.display())).unwrap();
    let dkim = Dkim::load(&[spec]).unwrap();
    assert_eq!(dkim.describe(), ["d=example.test s=s1 a=rsa-sha256"]);
    // An existing file is never replaced.
    let o = keygen(
        dir,
        &[
            "--domain",
            "example.test",
            "--selector",
            "s1",
            "--type",
            "ed25519",
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("exists"),
        "{o:?}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), pem);
    // Ed25519: a 32-byte raw key in one string.
    let out = dir.join("ed.pem");
    let o = keygen(
        dir,
        &[
            "--domain",
            "example.test",
            "--selector",
            "e1",
            "--type",
            "ed25519",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let rec = parse_record(&String::from_utf8(o.stdout).unwrap());
    assert_eq!(rec.strings.len(), 1);
    let p = rec.strings[0]
        .strip_prefix("v=DKIM1; k=ed25519; p=")
        .unwrap();
    assert_eq!(p.len(), 44);
    // Bad flags: usage and exit 2.
    let o = keygen(dir, &["--domain", "example.test"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--selector is required"));
}

#[test]
fn mail_relayed_over_smtp_arrives_signed_over_the_bytes_sent() {
    require_tools();
    let tmp = TempDir::new("dkim-smtp");
    let dir = tmp.path();
    let (rsa_key, rsa_rec) = make_key(dir, "rsa.test", "r1", "rsa");
    let (ed_key, ed_rec) = make_key(dir, "ed.test", "e1", "ed25519");
    let dns = start_dnsmasq(dir, &[&rsa_rec, &ed_rec]);
    let sink = support::sink_on("127.0.0.1", 0, support::sink::Script::default());
    let events = dir.join("events.jsonl");
    let specs = [
        format!("rsa.test:r1:{}", rsa_key.display()),
        format!("ed.test:e1:{}", ed_key.display()),
    ];
    let events_arg = events.display().to_string();
    let relay = support::Relay::via(
        &sink,
        &dir.join("spool"),
        &[
            "--dkim",
            &specs[0],
            "--dkim",
            &specs[1],
            "--max-header-size",
            "2k",
            "--remove-header",
            "X-Mailer",
            "--events",
            &events_arg,
        ],
    );
    // A message larger than the header limit, with lines that are dot-stuffed on the wire
    // both ways (sent here already stuffed); and a small one that a subdomain's From: gets
    // signed with its parent's key.
    let mut large = plain("rsa.test", "");
    while large.len() < 600_000 {
        large.extend_from_slice(b"..a line that starts with a dot\r\nplain text \t \r\n");
    }
    let small = b"From: Ops <ops@mail.ed.test>\r\nSubject: hi\r\n\r\nhello\r\n".to_vec();
    for body in [&large, &small] {
        let r = support::submit(relay.addr, "app@rsa.test", &["b@example.net"], body);
        assert!(r.starts_with("250"), "{r}");
    }
    let got = sink.wait_for(2, support::WAIT);
    let mut by_subject = HashMap::new();
    for m in &got {
        let text = String::from_utf8_lossy(&m.data);
        let name = if text.contains("Subject: hi") {
            "small"
        } else {
            "large"
        };
        assert!(
            !text.contains("X-Mailer"),
            "header rules ran before signing"
        );
        std::fs::write(dir.join(name), &m.data).unwrap();
        by_subject.insert(name, m.data.clone());
    }
    let mut tampered = by_subject["large"].clone();
    let at = tampered.len() - 10;
    tampered[at] ^= 0x20;
    std::fs::write(dir.join("large-tampered"), &tampered).unwrap();
    let (verdicts, _) = verify(dir, dns.port, &["large", "small", "large-tampered"]);
    let pass = |name: &str| -> Vec<(String, bool)> {
        verdicts[name]
            .iter()
            .map(|v| (v.d.clone(), v.pass))
            .collect()
    };
    assert_eq!(pass("large"), [("rsa.test".to_string(), true)]);
    assert_eq!(pass("small"), [("ed.test".to_string(), true)]);
    assert_eq!(pass("large-tampered"), [("rsa.test".to_string(), false)]);
    // The received events say which key signed.
    let log = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(
        log.contains("\"dkim\":[\"d=rsa.test s=r1 a=rsa-sha256\"]"),
        "{log}"
    );
    assert!(
        log.contains("\"dkim\":[\"d=ed.test s=e1 a=ed25519-sha256\"]"),
        "{log}"
    );
}

#[test]
fn sighup_reloads_the_keys_or_keeps_the_old_ones() {
    let tmp = TempDir::new("dkim-reload");
    let dir = tmp.path();
    let (key, _) = make_key(dir, "rsa.test", "r1", "rsa");
    let good = std::fs::read(&key).unwrap();
    let sink = support::sink_on("127.0.0.1", 0, support::sink::Script::default());
    let spec = format!("rsa.test:r1:{}", key.display());
    let relay = support::Relay::via(&sink, &dir.join("spool"), &["--dkim", &spec]);
    let signed = |n: usize| {
        let body = format!("From: a@rsa.test\r\nSubject: {n}\r\n\r\nhello\r\n");
        let r = support::submit(
            relay.addr,
            "a@rsa.test",
            &["b@example.net"],
            body.as_bytes(),
        );
        assert!(r.starts_with("250"), "{r}");
        let got = sink.wait_for(n, support::WAIT);
        String::from_utf8_lossy(&got[n - 1].data).contains("DKIM-Signature: v=1;")
    };
    assert!(signed(1));
    // A key file that went bad: the old key stays in use.
    support::write_secret(&key, b"not a key");
    relay.signal("HUP");
    relay.wait_log("dkim: keys not reloaded, the old ones stay");
    assert!(signed(2));
    // A good one again: reloaded.
    support::write_secret(&key, &good);
    relay.signal("HUP");
    relay.wait_log("dkim: keys reloaded");
    assert!(signed(3));
}

#[test]
fn tracked_copies_are_signed_after_the_rewrite() {
    require_tools();
    let tmp = TempDir::new("dkim-tracked");
    let dir = tmp.path();
    let (key, rec) = make_key(dir, "example.com", "t1", "rsa");
    let dns = start_dnsmasq(dir, &[&rec]);
    let sink = support::sink_on("127.0.0.1", 0, support::sink::Script::default());
    let secret = dir.join("tracking.key");
    support::write_secret(&secret, "a-tracking-secret-of-some-length\n");
    let spec = format!("example.com:t1:{}", key.display());
    let relay = support::Relay::via(
        &sink,
        &dir.join("spool"),
        &[
            "--dkim",
            &spec,
            "--tracking-url",
            "https://t.example",
            "--tracking-secret-file",
            secret.to_str().unwrap(),
            "--track",
            "clicks,opens",
            "--unsubscribe",
        ],
    );
    // A real sample: multipart/alternative with a quoted-printable HTML part.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mime");
    let original = root.join("alternative-qp.eml");
    let sample = std::fs::read(&original).unwrap();
    let rcpts = ["bob@example.org", "carol@example.org"];
    let r = support::submit(relay.addr, "news@example.com", &rcpts, &sample);
    assert!(r.starts_with("250"), "{r}");
    let got = support::delivered(&sink, 2, &relay);
    // A message too large to be held in memory: its header section is stored after the
    // body, and the copy still starts with it, rewritten and signed.
    let mut large = b"From: news@example.com\r\nSubject: large\r\nMIME-Version: 1.0\r\n\
        Content-Type: text/html; charset=utf-8\r\n\r\n<html><body>\r\n"
        .to_vec();
    while large.len() < 700_000 {
        large.extend_from_slice(b"<p><a href=\"https://example.com/item\">..item</a></p>\r\n");
    }
    large.extend_from_slice(b"</body></html>\r\n");
    let r = support::submit(
        relay.addr,
        "news@example.com",
        &["dave@example.org"],
        &large,
    );
    assert!(r.starts_with("250"), "{r}");
    let dave = support::delivered(&sink, 3, &relay)[2].clone();
    let text = String::from_utf8_lossy(&dave.data);
    assert!(text.starts_with("DKIM-Signature: v=1;"), "{}", &text[..300]);
    assert!(text.contains("\r\nSubject: large\r\n"));
    assert!(text.contains("\r\nList-Unsubscribe: <https://t.example/u/"));
    assert_eq!(
        text.matches("https://t.example/c/").count(),
        text.matches("..item").count()
    );
    assert!(text.contains("https://t.example/o/") && !text.contains("https://example.com/item"));
    std::fs::write(dir.join("dave"), &dave.data).unwrap();
    let mut names = Vec::new();
    for m in &got {
        assert_eq!(m.rcpts.len(), 1, "one copy per recipient");
        let text = String::from_utf8_lossy(&m.data);
        assert!(text.contains("https://t.example/c/"), "not tracked: {text}");
        // RFC 8058 section 4: both unsubscribe fields under the signature.
        let sig = text.split("DKIM-Signature:").nth(1).unwrap();
        let h = sig.split("h=").nth(1).unwrap().split(';').next().unwrap();
        let h: String = h.split_whitespace().collect();
        assert!(h.contains("List-Unsubscribe:List-Unsubscribe-Post"), "{h}");
        let name = m.rcpts[0].split('@').next().unwrap().to_string();
        std::fs::write(dir.join(&name), &m.data).unwrap();
        // Still well-formed MIME, every part but the HTML one unchanged.
        let check = Command::new(PYTHON)
            .arg(root.join("check.py"))
            .arg(&original)
            .arg(dir.join(&name))
            .arg("https://t.example")
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
        names.push(name);
    }
    let mut tampered = std::fs::read(dir.join("bob")).unwrap();
    let at = tampered.len() - 40;
    tampered[at] ^= 0x20;
    std::fs::write(dir.join("bob-tampered"), &tampered).unwrap();
    let (verdicts, _) = verify(dir, dns.port, &["bob", "carol", "dave", "bob-tampered"]);
    for (name, pass) in [
        ("bob", true),
        ("carol", true),
        ("dave", true),
        ("bob-tampered", false),
    ] {
        let v = &verdicts[name];
        assert_eq!(v.len(), 1, "{name}");
        assert_eq!(
            (v[0].d.as_str(), v[0].pass),
            ("example.com", pass),
            "{name}: {}",
            v[0].why
        );
    }
}
