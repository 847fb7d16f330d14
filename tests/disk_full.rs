//! A full or failing disk under the spool, on a small filesystem each test makes: a
//! size-limited tmpfs, or a loop-mounted ext4 image where the test needs a disk that turns
//! read-only. The client gets `452 4.3.1` (no space) or `451 4.3.0` (a write error), nothing
//! half-written is ever delivered, nothing already queued is lost, and intake resumes by
//! itself when space returns.
//!
//! Mounting needs root: CI runs these as root. Without it (or without tmpfs, loop devices or
//! mkfs.ext4) they fail and say what is missing; they are never skipped silently.

mod support;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use support::sink::{Message, Script};
use support::*;

const NEEDS: &str = "tests/disk_full.rs mounts a small filesystem for the spool: it must run as \
                     root (CI does; locally: sudo -E cargo test --test disk_full) on a kernel \
                     with tmpfs and loop devices, with mount, umount, findmnt, mkfs.ext4 and \
                     e2fsck installed";

/// A small filesystem mounted for one test; unmounted, and its mount point and image
/// removed, on drop.
struct SmallFs {
    dir: PathBuf,
    image: Option<PathBuf>,
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}\n{NEEDS}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{NEEDS}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn mount_point(name: &str) -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "not root: {NEEDS}");
    let dir = std::env::temp_dir().join(format!("mxrelay-fs-{name}-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

impl SmallFs {
    /// A tmpfs of `size` (`4m`).
    fn tmpfs(name: &str, size: &str) -> SmallFs {
        let dir = mount_point(name);
        let opts = format!("size={size},mode=0700");
        run("mount", &["-t", "tmpfs", "-o", &opts, "tmpfs", path(&dir)]);
        SmallFs { dir, image: None }
    }

    /// An ext4 image of `mib` MiB on a loop device, remounted read-only by the kernel on
    /// the first error (`trigger_error`).
    fn ext4(name: &str, mib: u64) -> SmallFs {
        let dir = mount_point(name);
        let image = dir.with_extension("img");
        File::create(&image).unwrap().set_len(mib << 20).unwrap();
        run("mkfs.ext4", &["-q", "-F", "-m", "0", path(&image)]);
        let fs = SmallFs {
            dir,
            image: Some(image),
        };
        fs.mount();
        fs
    }

    fn mount(&self) {
        let image = self.image.as_deref().expect("an image");
        let opts = "loop,errors=remount-ro";
        run("mount", &["-o", opts, path(image), path(&self.dir)]);
    }

    fn unmount(&self) {
        let dir = path(&self.dir);
        for _ in 0..50 {
            if Command::new("umount")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").args(["-l", dir]).status();
    }

    fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    /// Bytes free, as the relay (root) may use them.
    fn free(&self) -> u64 {
        let c = std::ffi::CString::new(path(&self.dir)).unwrap();
        // SAFETY: a zeroed struct we own and a NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bfree as u64 * st.f_frsize as u64
    }

    /// Writes a filler file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        self.fill_leaving(0)
    }

    /// Writes a filler file until about `leave` bytes are left free.
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let filler = self.dir.join("filler");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .unwrap();
        let chunk = vec![b'f'; 64 * 1024];
        for size in [chunk.len(), 4096, 512, 1] {
            loop {
                if leave > 0 && self.free() < leave + size as u64 {
                    break;
                }
                match f.write_all(&chunk[..size]) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling {}: {e}", filler.display()),
                }
            }
        }
        f.sync_all().unwrap();
        filler
    }

    /// Makes the kernel see an error on this ext4 filesystem: it is remounted read-only
    /// (`errors=remount-ro`), and every write fails with EROFS from then on.
    fn trigger_error(&self) {
        let out = Command::new("findmnt")
            .args(["-no", "SOURCE", path(&self.dir)])
            .output()
            .unwrap_or_else(|e| panic!("findmnt: {e}\n{NEEDS}"));
        let source = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dev = Path::new(&source).file_name().unwrap().to_string_lossy();
        let knob = format!("/sys/fs/ext4/{dev}/trigger_fs_error");
        fs::write(&knob, "mxrelay test: disk failing\n")
            .unwrap_or_else(|e| panic!("{knob}: {e}\n{NEEDS}"));
        let probe = self.dir.join("probe");
        let e = fs::write(&probe, b"x").expect_err("the filesystem is read-only");
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        self.unmount();
        let _ = fs::remove_dir(&self.dir);
        if let Some(image) = &self.image {
            let _ = fs::remove_file(image);
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A relay with its spool on `fs`, sending through a smarthost on `port` (which may not be up
/// yet), retrying every second, and refusing nothing early: what happens when a write fails.
fn start_behind(fs: &SmallFs, port: u16) -> Relay {
    let hop = format!("127.0.0.1:{port}");
    let args = [
        "--smarthost",
        &hop,
        "--smarthost-tls",
        "none",
        "--retry",
        "1s",
        "--connect-timeout",
        "2s",
        "--min-free-space",
        "0",
    ];
    Relay::start(&fs.spool(), &args)
}

/// A session after EHLO.
fn session(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    c
}

/// MAIL, RCPT and DATA on an open session; the reply to MAIL if it is not 250, else the reply
/// at the end of DATA.
fn send(c: &mut Client, mail: &str, subject: &str, body_size: usize) -> String {
    let r = c.cmd(&format!("MAIL FROM:<{mail}>"));
    if !r.starts_with("250") {
        return r;
    }
    let r = c.cmd("RCPT TO:<b@example.test>");
    assert!(r.starts_with("250"), "RCPT: {r}");
    assert!(c.cmd("DATA").starts_with("354"));
    let line = format!("{}\r\n", "x".repeat(76));
    let mut body = format!("Subject: {subject}\r\n\r\n");
    while body.len() < body_size {
        body.push_str(&line);
    }
    c.send(body.as_bytes());
    c.send(b".\r\n");
    c.reply()
}

/// The reply to a MAIL on a session of its own (no message follows).
fn mail_only(addr: SocketAddr) -> String {
    let mut c = session(addr);
    let r = c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("QUIT");
    r
}

/// One message on a session of its own: the reply to MAIL if it is not 250, else the reply
/// at the end of DATA.
fn submit_one(addr: SocketAddr, subject: &str) -> String {
    let mut c = session(addr);
    let r = send(&mut c, "a@client.test", subject, 100);
    c.cmd("QUIT");
    r
}

fn subjects(messages: &[Message]) -> Vec<String> {
    let mut subjects: Vec<String> = messages
        .iter()
        .filter_map(|m| {
            let text = String::from_utf8_lossy(&m.data);
            let start = text.find("\r\nSubject: ")? + 11;
            let end = text[start..].find("\r\n")? + start;
            Some(text[start..end].to_string())
        })
        .collect();
    subjects.sort();
    subjects
}

/// The value of a metric series on the relay's /metrics page.
fn metric(relay: &Relay, series: &str) -> f64 {
    let page = relay.metrics();
    let body = page.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
}

fn assert_no_panic(relay: &Relay) {
    let log = relay.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_full_disk_refuses_new_mail_and_loses_nothing_queued() {
    let fs = SmallFs::tmpfs("full", "4m");
    let port = free_port("127.0.0.1");
    let relay = start_behind(&fs, port);
    // Queued while the next hop is down; the last one's recipient will not exist.
    submit_numbered(relay.addr, 3, "queued ");
    let body = b"Subject: to bounce\r\n\r\nx\r\n";
    let r = submit(relay.addr, "a@client.test", &["nobody@example.test"], body);
    assert!(r.starts_with("250 "), "{r}");
    relay.wait_log_n(": deferred, attempt 1 failed", 4);
    let filler = fs.fill();
    // One that fits a cell and one that needs a slot file of its own: both are refused at
    // the end of DATA, and the session goes on.
    let mut c = session(relay.addr);
    for (subject, size) in [("refused small", 2_000), ("refused large", 600_000)] {
        let r = send(&mut c, "a@client.test", subject, size);
        assert!(r.starts_with("452 4.3.1 "), "{subject}: {r}");
        assert!(c.cmd("RSET").starts_with("250"));
    }
    // The next hop answers while the disk is still full: the failed recipient's DSN cannot
    // be written, so its message stays queued for a later round, as do the deferred ones.
    let script = Script::default().rcpt(|a| match a.starts_with("nobody@") {
        true => "550 5.1.1 no such user".into(),
        false => "451 4.3.0 not now".into(),
    });
    let sink = sink_on("127.0.0.1", port, script);
    relay.signal("USR1");
    relay.wait_log("cannot spool the DSN");
    relay.wait_log(": its DSN could not be spooled: No space left on device");
    assert_eq!(relay.queued(), 4, "{}", relay.log());
    // Space returns: the same session takes the next message, and everything goes out.
    fs::remove_file(&filler).unwrap();
    let r = send(&mut c, "a@client.test", "after", 2_000);
    assert!(r.starts_with("250 2.0.0 "), "{r}");
    c.cmd("QUIT");
    sink.set_script(Script::default().refuse_rcpt("nobody@", "550 5.1.1 no such user"));
    relay.signal("USR1");
    let got = delivered(&sink, 5, &relay);
    thread::sleep(Duration::from_millis(500));
    let (dsns, mail): (Vec<Message>, Vec<Message>) = sink
        .messages()
        .into_iter()
        .partition(|m| m.mail_from.starts_with("<> "));
    assert_eq!(got.len(), 5);
    assert_eq!(
        subjects(&mail),
        ["after", "queued 0", "queued 1", "queued 2"]
    );
    assert_eq!(dsns.len(), 1, "the refused ones are never delivered");
    assert_eq!(dsns[0].rcpts, ["a@client.test"]);
    assert!(relay.log().contains("spool commit failed"));
    assert_no_panic(&relay);
}

#[test]
fn min_free_space_refuses_mail_early_and_takes_it_again_by_itself() {
    let fs = SmallFs::tmpfs("reserve", "16m");
    // Mail to "later@" is deferred at first, and refused for good once the disk is short.
    let defer = |a: &str| match a.starts_with("later@") {
        true => "451 4.3.0 try later".to_string(),
        false => "250 2.1.5 ok".to_string(),
    };
    let sink = sink_on("127.0.0.1", 0, Script::default().rcpt(defer));
    let relay = Relay::via(
        &sink,
        &fs.spool(),
        &[
            "--min-free-space",
            "6M",
            "--retry",
            "1m",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let r = submit(
        relay.addr,
        "a@client.test",
        &["later@example.test"],
        b"Subject: later\r\n\r\nx\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    relay.wait_log(": deferred, attempt 1 failed");
    // About 16M free, 6M kept: a declared SIZE larger than the room above that is refused.
    let mut c = session(relay.addr);
    let r = c.cmd("MAIL FROM:<a@client.test> SIZE=12000000");
    assert!(r.starts_with("452 4.3.1 "), "{r}");
    assert!(
        c.cmd("MAIL FROM:<a@client.test> SIZE=1000")
            .starts_with("250")
    );
    c.cmd("QUIT");
    // Under the reserve, with real space left: MAIL is refused within a second or so.
    let filler = fs.fill_leaving(4 << 20);
    assert!(
        wait_until(WAIT, || mail_only(relay.addr).starts_with("452 4.3.1 ")),
        "MAIL never refused:\n{}",
        relay.log()
    );
    assert!(fs.free() > 3 << 20, "real space remains");
    for _ in 0..3 {
        assert!(submit_one(relay.addr, "early").starts_with("452 4.3.1 "));
    }
    // What is queued is still written: its failure bounces, and the DSN is spooled and sent.
    sink.set_script(Script::default().refuse_rcpt("later@", "550 5.1.1 no such user"));
    relay.signal("USR1");
    let got = delivered(&sink, 1, &relay);
    assert!(
        got[0].mail_from.starts_with("<> "),
        "a DSN: {}",
        got[0].mail_from
    );
    assert_eq!(got[0].rcpts, ["a@client.test"]);
    assert!(
        metric(
            &relay,
            "mxrelay_messages_rejected_total{reason=\"storage\"}"
        ) >= 4.0
    );
    assert!(
        wait_until(WAIT, || metric(&relay, "mxrelay_spool_free_bytes") > 0.0),
        "the free space gauge is set"
    );
    // Space returns: new mail is taken again without a restart.
    fs::remove_file(&filler).unwrap();
    assert!(
        wait_until(WAIT, || submit_one(relay.addr, "back").starts_with("250 ")),
        "MAIL never taken again:\n{}",
        relay.log()
    );
    delivered(&sink, 2, &relay);
    let log = relay.log();
    assert_eq!(
        log.matches("under --min-free-space").count(),
        1,
        "logged once:\n{log}"
    );
    assert_eq!(log.matches("new mail is taken again").count(), 1, "{log}");
    assert_no_panic(&relay);
}

#[test]
fn a_disk_gone_read_only_gives_451_and_keeps_what_was_queued() {
    let fs = SmallFs::ext4("ro", 16);
    let port = free_port("127.0.0.1");
    let mut relay = start_behind(&fs, port);
    submit_numbered(relay.addr, 2, "queued ");
    relay.wait_log_n(": deferred, attempt 1 failed", 2);
    fs.trigger_error();
    let mut c = session(relay.addr);
    for (subject, size) in [("refused small", 2_000), ("refused large", 600_000)] {
        let r = send(&mut c, "a@client.test", subject, size);
        assert!(r.starts_with("451 4.3.0 "), "{subject}: {r}");
        assert!(c.cmd("RSET").starts_with("250"));
    }
    c.cmd("QUIT");
    // Deferrals go on failing to be recorded for a while; the relay stays up.
    thread::sleep(Duration::from_secs(2));
    assert!(Client::try_connect(relay.addr).is_some());
    assert_no_panic(&relay);
    relay.kill9();
    // The disk is repaired and mounted again: what was queued before is all there.
    fs.unmount();
    let image = fs.image.as_deref().unwrap();
    let status = Command::new("e2fsck").args(["-fy", path(image)]).status();
    let code = status
        .unwrap_or_else(|e| panic!("e2fsck: {e}\n{NEEDS}"))
        .code();
    assert!(matches!(code, Some(0..=1)), "e2fsck: {code:?}");
    fs.mount();
    let sink = sink_on("127.0.0.1", port, Script::default());
    let relay = start_behind(&fs, port);
    delivered(&sink, 2, &relay);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(subjects(&sink.messages()), ["queued 0", "queued 1"]);
    let corrupt = fs::read_dir(fs.spool().join("corrupt")).unwrap().count();
    assert_eq!(corrupt, 0, "nothing half-written to quarantine");
    assert_no_panic(&relay);
}
