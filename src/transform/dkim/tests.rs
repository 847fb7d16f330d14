use std::path::Path;
use std::sync::Arc;

use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

use super::*;
use crate::config::Role;
use crate::smtp::session::{BodyType, Transaction};
use crate::transform::Transforms;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("mxrelay-dkim-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rsa_pem(bits: u32) -> Vec<u8> {
    Rsa::generate(bits).unwrap().private_key_to_pem().unwrap() // PKCS#1
}

fn ed_pem() -> Vec<u8> {
    PKey::generate_ed25519()
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap()
}

fn spec(d: &str, s: &str, p: &Path) -> Spec {
    (d.into(), s.into(), p.to_path_buf())
}

#[test]
fn loading_says_what_is_wrong_with_a_key() {
    let dir = Dir::new("load");
    let rsa = dir.write("rsa.pem", &rsa_pem(2048));
    let ed = dir.write("ed.pem", &ed_pem());
    let weak = dir.write("weak.pem", &rsa_pem(768));
    let public = dir.write(
        "pub.pem",
        &Rsa::generate(1024).unwrap().public_key_to_pem().unwrap(),
    );
    let ec = EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
    let ec = dir.write("ec.pem", &ec.private_key_to_pem().unwrap());
    let junk = dir.write("junk.pem", b"hello\n");
    let dkim = Dkim::load(&[
        spec("Example.test", "r", &rsa),
        spec("example.test", "e", &ed),
    ])
    .unwrap();
    assert_eq!(
        dkim.describe(),
        [
            "d=example.test s=r a=rsa-sha256",
            "d=example.test s=e a=ed25519-sha256"
        ]
    );
    let cases: &[(&Path, &str)] = &[
        (&dir.0.join("missing.pem"), "cannot read"),
        (&weak, "RSA key of 768 bits is too weak"),
        (&public, "is a public key"),
        (&ec, "unsupported key type (EC)"),
        (&junk, "not a PEM private key"),
    ];
    for (path, want) in cases {
        let err = Dkim::load(&[
            spec("example.test", "r", &rsa),
            spec("example.test", "x", path),
        ])
        .unwrap_err();
        assert!(err.contains(want), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
    let twice = Dkim::load(&[
        spec("example.test", "r", &rsa),
        spec("EXAMPLE.test", "r", &ed),
    ]);
    assert!(twice.unwrap_err().contains("twice"));
}

#[test]
fn reload_swaps_all_keys_or_none() {
    let dir = Dir::new("reload");
    let a = dir.write("a.pem", &ed_pem());
    let b = dir.write("b.pem", &ed_pem());
    let dkim = Dkim::load(&[spec("a.test", "s", &a), spec("b.test", "s", &b)]).unwrap();
    let before = dkim.current();
    let pub_a = before[0].pkey.raw_public_key().unwrap();
    // A new key in a.pem and a broken b.pem: nothing changes.
    std::fs::write(&a, ed_pem()).unwrap();
    std::fs::write(&b, b"broken").unwrap();
    assert!(dkim.reload().unwrap_err().contains("b.pem"));
    assert_eq!(dkim.current()[0].pkey.raw_public_key().unwrap(), pub_a);
    // Both fine: both swapped; a message begun before keeps the keys it had.
    std::fs::write(&b, rsa_pem(1024)).unwrap();
    dkim.reload().unwrap();
    assert_ne!(dkim.current()[0].pkey.raw_public_key().unwrap(), pub_a);
    assert_eq!(dkim.describe()[1], "d=b.test s=s a=rsa-sha256");
    assert_eq!(before[0].pkey.raw_public_key().unwrap(), pub_a);
}

#[test]
fn a_subdomain_uses_its_nearest_parent_with_a_key() {
    let dir = Dir::new("parent");
    let k = dir.write("k.pem", &ed_pem());
    let dkim = Dkim::load(&[
        spec("example.test", "top", &k),
        spec("mail.example.test", "mail", &k),
    ])
    .unwrap();
    let keys = dkim.current();
    let table: &[(&str, &[&str])] = &[
        ("example.test", &["top"]),
        ("EXAMPLE.test", &["top"]),
        ("mail.example.test", &["mail"]),
        ("a.mail.example.test", &["mail"]),
        ("news.example.test", &["top"]),
        ("x.y.news.example.test", &["top"]),
        ("other.test", &[]),
        ("test", &[]),
        ("badexample.test", &[]),
    ];
    for (domain, want) in table {
        let got: Vec<&str> = keys_for(&keys, domain)
            .iter()
            .map(|k| k.selector.as_str())
            .collect();
        assert_eq!(got, *want, "{domain}");
    }
}

fn tx() -> Transaction {
    Transaction {
        sender: None,
        declared_size: None,
        body: BodyType::EightBitMime,
        smtputf8: false,
        recipients: Vec::new(),
    }
}

/// The stored message (block, then body) and the notes.
fn run(t: &Transforms, message: &[u8], piece: usize) -> (Vec<u8>, Vec<String>) {
    let tx = tx();
    let cx = Context {
        id: "test-1",
        role: Role::Submission,
        trusted: false,
        auth_user: Some("app"),
        tx: &tx,
    };
    let mut stage = t.begin(cx, b"Received: by relay.test\r\n").unwrap();
    let mut body = Vec::new();
    for chunk in message.chunks(piece) {
        body.extend_from_slice(stage.feed(chunk));
    }
    let msg = stage.end().unwrap();
    let mut stored = msg.block.to_bytes();
    stored.extend_from_slice(&body);
    (stored, msg.notes.signatures)
}

#[test]
fn signs_by_from_domain_once_per_key() {
    let dir = Dir::new("pass");
    let r = dir.write("r.pem", &rsa_pem(2048));
    let e = dir.write("e.pem", &ed_pem());
    let dkim = Dkim::load(&[spec("example.test", "r", &r), spec("example.test", "e", &e)]).unwrap();
    let t = Transforms::new(vec![Arc::new(dkim)], 64 * 1024);
    let msg = |from: &str| format!("From: {from}\r\nSubject: hi\r\n\r\nHello\r\n\r\n");

    let (stored, notes) = run(&t, msg("A <a@news.example.test>").as_bytes(), 5);
    assert_eq!(
        notes,
        [
            "d=example.test s=r a=rsa-sha256",
            "d=example.test s=e a=ed25519-sha256"
        ]
    );
    let text = String::from_utf8(stored).unwrap();
    let first = text.find("DKIM-Signature: v=1; a=rsa-sha256").unwrap();
    let second = text.find("DKIM-Signature: v=1; a=ed25519-sha256").unwrap();
    assert!(first == 0 && first < second && second < text.find("Received:").unwrap());
    assert!(text.ends_with("From: A <a@news.example.test>\r\nSubject: hi\r\n\r\nHello\r\n\r\n"));
    let bh = openssl::base64::encode_block(&openssl::sha::sha256(b"Hello\r\n"));
    assert_eq!(text.matches(&format!("bh={bh};")).count(), 2);

    for from in [
        "a@other.test",
        "a@x.test, b@example.test",
        "undisclosed-recipients:;",
    ] {
        let m = msg(from);
        let (stored, notes) = run(&t, m.as_bytes(), 3);
        assert!(notes.is_empty(), "{from}");
        assert_eq!(
            stored,
            [b"Received: by relay.test\r\n".as_slice(), m.as_bytes()].concat()
        );
    }
    // Two From: fields: left alone.
    let m = b"From: a@example.test\r\nFrom: b@example.test\r\n\r\nx\r\n";
    assert!(run(&t, m, 7).1.is_empty());
    // No From: at all.
    assert!(run(&t, b"Subject: x\r\n\r\nx\r\n", 7).1.is_empty());
    // Headers only, no body: signed (empty body).
    let (stored, notes) = run(&t, b"From: a@example.test\r\n", 4);
    assert_eq!(notes.len(), 2);
    let empty = openssl::base64::encode_block(&openssl::sha::sha256(b""));
    assert!(
        String::from_utf8(stored)
            .unwrap()
            .contains(&format!("bh={empty};"))
    );
}
