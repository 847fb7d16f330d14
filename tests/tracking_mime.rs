//! The per-recipient rewrite of real MIME samples (`tests/mime/*.eml`): links rewritten
//! through signed tokens, the pixel added, every byte outside the rewritten HTML bodies
//! identical, the same output for any split of the input, and the result read back by
//! Python's `email` package (`tests/mime/check.py`).

use std::path::{Path, PathBuf};
use std::process::Command;

use mxrelay::tracking::{Keys, Kind, Links, Report, Rewriter};

const BASE: &str = "https://t.example";
const ID: &str = "0006613118200133";
const RCPT: &str = "bob@example.org";

fn keys() -> Keys {
    Keys::new(&[b"tracking-secret-0123456789".to_vec()]).unwrap()
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/mime")
            .join(name),
    )
    .unwrap()
}

/// Tracks `msg` for RCPT, fed in pieces of `chunk` bytes (0: whole).
fn track(msg: &[u8], chunk: usize, max_html: Option<usize>) -> (Vec<u8>, Report) {
    let size = if chunk == 0 { msg.len().max(1) } else { chunk };
    track_pieces(msg.chunks(size), max_html)
}

fn track_pieces<'a>(
    pieces: impl Iterator<Item = &'a [u8]>,
    max_html: Option<usize>,
) -> (Vec<u8>, Report) {
    let links = Links::new(BASE, keys()).unwrap();
    let exclude = ["exclude.example".to_string()];
    let pixel = links.open(ID, RCPT);
    let mut rw = Rewriter::new(links.click_tracker(ID, RCPT, &exclude), pixel);
    if let Some(max) = max_html {
        rw = rw.with_max_html(max);
    }
    let mut out = Vec::new();
    for piece in pieces {
        rw.feed(piece, &mut out).unwrap();
    }
    let report = rw.finish(&mut out).unwrap();
    (out, report)
}

/// The bytes outside the bodies of parts announced by `Content-Type: text/html` (exact
/// case: the samples spell HTML they expect left alone differently), each body running from
/// the empty line after its header to the next CRLF `--`.
fn outside_html(msg: &[u8]) -> Vec<&[u8]> {
    let find = |from: usize, needle: &[u8]| {
        msg[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut pieces = Vec::new();
    let mut at = 0;
    while let Some(ct) = find(at, b"Content-Type: text/html") {
        let start = find(ct, b"\r\n\r\n").unwrap() + 4;
        let end = find(start, b"\r\n--").unwrap_or(msg.len());
        pieces.push(&msg[at..start]);
        at = end;
    }
    pieces.push(&msg[at..]);
    pieces
}

/// Every line ends in CRLF, none is longer than 998 octets.
fn well_formed(msg: &[u8]) {
    for line in msg.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r\n").expect("a bare LF");
        assert!(!line.contains(&b'\r'), "a bare CR");
        assert!(line.len() <= 998);
    }
}

/// Python's reading of the tracked copy; returns the tracked link count it saw.
fn python_check(name: &str, tracked: &[u8], keep: &[&str]) -> usize {
    let dir = std::env::temp_dir().join(format!("mxrelay-mime-{}-{name}", std::process::id()));
    std::fs::write(&dir, tracked).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mime");
    let out = Command::new("/usr/bin/python3")
        .arg(root.join("check.py"))
        .arg(root.join(name))
        .arg(&dir)
        .arg(BASE)
        .args(keep)
        .output()
        .expect("/usr/bin/python3 (scripts/test installs it)");
    std::fs::remove_file(&dir).unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The URLs the tracked links of `msg` lead to, from their tokens.
fn tracked_urls(msg: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(msg);
    let k = keys();
    text.split(&format!("{BASE}/c/"))
        .skip(1)
        .map(|rest| {
            let token: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            let claims = k.verify(&token).expect("a valid token");
            assert_eq!((claims.kind, claims.queue_id.as_str()), (Kind::Click, ID));
            assert_eq!(claims.recipient, RCPT);
            claims.url.unwrap()
        })
        .collect()
}

fn check_sample(name: &str, links: usize, keep: &[&str]) -> Vec<u8> {
    let msg = sample(name);
    let (out, report) = track(&msg, 0, None);
    assert_eq!(report.links, links, "{name}: {report:?}");
    assert_eq!(
        outside_html(&msg),
        outside_html(&out),
        "{name}: other bytes changed"
    );
    well_formed(&out);
    for chunk in [1, 2, 3, 7, 76, 1000] {
        assert_eq!(track(&msg, chunk, None).0, out, "{name}: pieces of {chunk}");
    }
    assert_eq!(python_check(name, &out, keep), links, "{name}");
    out
}

#[test]
fn quoted_printable_html_in_multipart_alternative() {
    let out = check_sample(
        "alternative-qp.eml",
        3,
        &["Café du jour", "mailto:help@example.com"],
    );
    // The QP-decoded URLs, with the soft break inside one joined and `&amp;` undone; mailto,
    // the anchor, tel:, data-notrack and the excluded domain are left alone.
    assert_eq!(
        tracked_urls(&qp_decode_lossy(&out)),
        [
            "https://example.com/news?id=1&src=mail",
            "https://example.com/very/long/path/that/goes/on/and/on?campaign=winter&utm_source=newsletter",
            "http://example.com/unquoted",
        ]
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("href=3D\"https://example.com/private\""));
    assert!(text.contains("href=3D\"https://exclude.example/x\""));
}

/// Good enough to find tokens in a QP body: soft breaks and `=3D` undone.
fn qp_decode_lossy(msg: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(msg)
        .replace("=\r\n", "")
        .replace("=3D", "=")
        .into_bytes()
}

#[test]
fn base64_html() {
    let out = check_sample("html-base64.eml", 12, &["<h1>Sale</h1>"]);
    let body = String::from_utf8_lossy(&out);
    let b64 = body.split("base64\r\n\r\n").nth(1).unwrap();
    assert!(b64.lines().all(|l| l.len() <= 76));
}

#[test]
fn nested_multipart_with_attachments() {
    // Only the inline HTML part: the attached HTML file and the forwarded message stay.
    let out = check_sample("mixed-nested.eml", 1, &["report</a>"]);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("<a href=\"https://attached.example/\">"));
    assert!(text.contains("<a href=\"https://forwarded.example/\">"));
    assert_eq!(tracked_urls(&out), ["https://example.com/report"]);
}

#[test]
fn iso_8859_1_html() {
    // The link whose URL is not ASCII (a Latin-1 byte) is left alone.
    let out = check_sample("latin1.eml", 1, &["Café crème brûlée", "la carte"]);
    assert_eq!(
        tracked_urls(&qp_decode_lossy(&out)),
        ["https://cafe.example/menu?lang=fr"]
    );
}

#[test]
fn no_html_is_byte_identical() {
    let msg = sample("no-html.eml");
    let (out, report) = track(&msg, 0, None);
    assert_eq!(out, msg);
    assert_eq!(report, Report::default());
}

#[test]
fn html_over_the_limit_passes_untracked() {
    let msg = sample("large-html.eml");
    let (out, report) = track(&msg, 0, Some(16 * 1024));
    assert_eq!(out, msg);
    assert_eq!(report.too_large, 1);
    assert_eq!(report.links, 0);
    for chunk in [1, 5, 4096] {
        assert_eq!(track(&msg, chunk, Some(16 * 1024)).0, msg);
    }
    // Under the default limit it is tracked.
    assert_eq!(track(&msg, 0, None).1.links, 600);
}

#[test]
fn nothing_to_track_changes_nothing() {
    for name in [
        "alternative-qp.eml",
        "html-base64.eml",
        "mixed-nested.eml",
        "latin1.eml",
    ] {
        let msg = sample(name);
        let mut rw = Rewriter::new(|_: &str| None, None);
        let mut out = Vec::new();
        rw.feed(&msg, &mut out).unwrap();
        rw.finish(&mut out).unwrap();
        assert_eq!(out, msg, "{name}");
    }
}

/// Pieces that make MIME-like messages, broken ones included.
fn mime_piece() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        Just(b"Content-Type: multipart/mixed; boundary=b\r\n".to_vec()),
        Just(b"Content-Type: multipart/alternative; boundary=\"c\"\r\n".to_vec()),
        Just(b"Content-Type: text/html\r\n".to_vec()),
        Just(b"Content-Type: message/rfc822\r\n".to_vec()),
        Just(b"Content-Transfer-Encoding: quoted-printable\r\n".to_vec()),
        Just(b"Content-Transfer-Encoding: base64\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"--b\r\n".to_vec()),
        Just(b"--c\r\n".to_vec()),
        Just(b"--b--\r\n".to_vec()),
        Just(b"--c--\r\n".to_vec()),
        Just(b"<a href=\"http://x/?a=1&amp;b\">l</a>=\r\n".to_vec()),
        Just(b"<a href=http://y/>".to_vec()),
        Just(b"</body>\r\n".to_vec()),
        Just(b"PGEgaHJlZj0iaHR0cDovL3ovIj4=\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

proptest::proptest! {
    #[test]
    fn any_split_same_output_and_never_a_panic(
        pieces in proptest::collection::vec(mime_piece(), 0..40),
        cuts in proptest::collection::vec(0usize..2000, 0..8),
    ) {
        let msg = pieces.concat();
        let (whole, _) = track(&msg, 0, Some(300));
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(msg.len())).collect();
        cuts.sort();
        let mut bounds = vec![0];
        bounds.extend(cuts);
        bounds.push(msg.len());
        let (out, _) = track_pieces(bounds.windows(2).map(|w| &msg[w[0]..w[1]]), Some(300));
        proptest::prop_assert_eq!(&out, &whole);
        // Nothing to do: nothing changes.
        let mut rw = Rewriter::new(|_: &str| None, None);
        let mut same = Vec::new();
        rw.feed(&msg, &mut same).unwrap();
        rw.finish(&mut same).unwrap();
        proptest::prop_assert_eq!(same, msg);
    }
}
