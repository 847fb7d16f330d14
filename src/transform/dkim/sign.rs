//! Making one DKIM-Signature field (RFC 6376 section 5, RFC 8463 for Ed25519): chooses the
//! header fields to sign (the RFC's recommended set, those present, repeated fields bottom-up,
//! From: over-signed), writes the tags folded only at the spaces between them and inside `b=`,
//! and signs the relaxed form of exactly the fields given, which are the ones that will be sent.

use openssl::base64::encode_block;
use openssl::hash::MessageDigest;
use openssl::sign::Signer;

use super::canon::relaxed_header;
use super::key::{Algorithm, Key};
use crate::transform::head::Field;

/// The header fields signed when present (RFC 6376 5.4.1, plus the MIME and List-* fields,
/// RFC 8058's List-Unsubscribe-Post and Sender). `From` is always signed, once more than it
/// occurs, so that no From: can be added without breaking the signature.
pub const SIGNED_FIELDS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "Sender",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
];

/// The field name as written, and the line length folding aims for (RFC 5322 2.1.1).
const NAME: &str = "DKIM-Signature";
const LINE: usize = 78;

/// The `h=` list for these fields: each signed name as often as it occurs, From: once more.
pub fn signed_names(fields: &[Field]) -> Vec<&'static str> {
    let mut names = Vec::new();
    for &name in SIGNED_FIELDS {
        let mut n = fields.iter().filter(|f| f.is(name)).count();
        if name == "From" {
            n += 1;
        }
        names.extend(std::iter::repeat_n(name, n));
    }
    names
}

/// The relaxed form of the fields `names` picks, in its order: the k-th time a name is listed
/// means its k-th field counted from the bottom (RFC 6376 5.4.2); a name listed more often than
/// it occurs adds nothing.
pub fn signed_headers(fields: &[Field], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut used: Vec<(&str, usize)> = Vec::new();
    for &name in names {
        let k = match used.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, k)) => {
                *k += 1;
                *k - 1
            }
            None => {
                used.push((name, 1));
                0
            }
        };
        if let Some(f) = fields.iter().rev().filter(|f| f.is(name)).nth(k) {
            relaxed_header(f.raw(), &mut out);
        }
    }
    out
}

/// Signs the header `fields` (as they will be sent, top to bottom) and a body whose relaxed
/// SHA-256 is `body_hash`, at unix time `now`: the DKIM-Signature field to put on top.
pub fn sign(fields: &[Field], key: &Key, body_hash: &[u8; 32], now: u64) -> Result<Field, String> {
    let names = signed_names(fields);
    let tags = [
        "v=1".to_string(),
        format!("a={}", key.algorithm.name()),
        "c=relaxed/relaxed".to_string(),
        format!("d={}", key.domain),
        format!("s={}", key.selector),
        format!("t={now}"),
        format!("h={}", names.join(":")),
        format!("bh={}", encode_block(body_hash)),
        "b=".to_string(),
    ];
    // Folded only at the space after each ';', so the relaxed form is that of one line.
    let mut raw = format!("{NAME}: {}", tags[0]);
    let mut col = raw.len();
    for tag in &tags[1..] {
        // Room for "; ", the tag and the ';' that may end the line.
        if col + 2 + tag.len() + 1 > LINE {
            raw.push_str(";\r\n ");
            col = 1;
        } else {
            raw.push_str("; ");
            col += 2;
        }
        raw.push_str(tag);
        col += tag.len();
    }
    let mut data = signed_headers(fields, &names);
    relaxed_header(raw.as_bytes(), &mut data);
    data.truncate(data.len() - 2); // the signature field is hashed without its CRLF
    let signature = match key.algorithm {
        Algorithm::RsaSha256 => {
            let mut s =
                Signer::new(MessageDigest::sha256(), &key.pkey).map_err(|e| e.to_string())?;
            s.update(&data).map_err(|e| e.to_string())?;
            s.sign_to_vec().map_err(|e| e.to_string())?
        }
        Algorithm::Ed25519Sha256 => {
            // RFC 8463: Ed25519 (pure) over the SHA-256 of the data.
            let mut s = Signer::new_without_digest(&key.pkey).map_err(|e| e.to_string())?;
            s.sign_oneshot_to_vec(&openssl::sha::sha256(&data))
                .map_err(|e| e.to_string())?
        }
    };
    // Folded inside b= (a verifier drops its value with any whitespace in it).
    let b = encode_block(&signature);
    let mut rest = b.as_str();
    while !rest.is_empty() {
        let room = LINE.saturating_sub(col).max(1);
        if room < 8 {
            raw.push_str("\r\n ");
            col = 1;
            continue;
        }
        let n = room.min(rest.len());
        raw.push_str(&rest[..n]);
        col += n;
        rest = &rest[n..];
    }
    raw.push_str("\r\n");
    Field::from_raw(raw.into_bytes()).ok_or_else(|| "signature field malformed".to_string())
}

#[cfg(test)]
mod tests {
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::sign::Verifier;

    use super::*;

    fn fields(text: &str) -> Vec<Field> {
        let mut out: Vec<Field> = Vec::new();
        for line in text.split_inclusive("\r\n") {
            if line.starts_with([' ', '\t']) {
                let last = out.pop().unwrap();
                let mut raw = last.raw().to_vec();
                raw.extend_from_slice(line.as_bytes());
                out.push(Field::from_raw(raw).unwrap());
            } else {
                out.push(Field::from_raw(line.as_bytes().to_vec()).unwrap());
            }
        }
        out
    }

    const HEAD: &str = "Received: by relay.test\r\n\
        From: A <a@example.test>\r\n\
        To: b@x.test,\r\n\tc@y.test\r\n\
        X-Other: not signed\r\n\
        Subject:  two   spaces \r\n\
        To: second@x.test\r\n\
        Message-ID: <1@example.test>\r\n";

    #[test]
    fn picks_present_fields_bottom_up_and_oversigns_from() {
        let f = fields(HEAD);
        let names = signed_names(&f);
        assert_eq!(names, ["From", "From", "Subject", "To", "To", "Message-ID"]);
        let data = String::from_utf8(signed_headers(&f, &names)).unwrap();
        assert_eq!(
            data,
            "from:A <a@example.test>\r\n\
             subject:two spaces\r\n\
             to:second@x.test\r\n\
             to:b@x.test, c@y.test\r\n\
             message-id:<1@example.test>\r\n"
        );
    }

    fn key(algorithm: Algorithm) -> Key {
        let pkey = match algorithm {
            Algorithm::RsaSha256 => PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap(),
            Algorithm::Ed25519Sha256 => PKey::generate_ed25519().unwrap(),
        };
        Key {
            domain: "example.test".into(),
            selector: "sel".into(),
            algorithm,
            pkey,
        }
    }

    /// Verifies a signature the way a verifier does: canonical fields, then the signature
    /// field with b='s value removed.
    fn verify(f: &[Field], sig: &Field, key: &Key) -> bool {
        let text = std::str::from_utf8(sig.raw()).unwrap();
        let b_at = text
            .find("b=")
            .map(|_| text.rfind(" b=").unwrap() + 3)
            .unwrap();
        let b: String = text[b_at..]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let sig_bytes = openssl::base64::decode_block(&b).unwrap();
        let h = text.split("h=").nth(1).unwrap().split(';').next().unwrap();
        let names: Vec<&str> = h.split(':').collect();
        let mut data = signed_headers(f, &names);
        relaxed_header(&sig.raw()[..b_at], &mut data);
        data.truncate(data.len() - 2);
        match key.algorithm {
            Algorithm::RsaSha256 => {
                let mut v = Verifier::new(MessageDigest::sha256(), &key.pkey).unwrap();
                v.update(&data).unwrap();
                v.verify(&sig_bytes).unwrap()
            }
            Algorithm::Ed25519Sha256 => {
                let mut v = Verifier::new_without_digest(&key.pkey).unwrap();
                v.verify_oneshot(&sig_bytes, &openssl::sha::sha256(&data))
                    .unwrap()
            }
        }
    }

    #[test]
    fn signs_and_folds_only_between_tags_and_inside_b() {
        let f = fields(HEAD);
        for algorithm in [Algorithm::RsaSha256, Algorithm::Ed25519Sha256] {
            let k = key(algorithm);
            let sig = sign(&f, &k, &[7; 32], 1_800_000_000).unwrap();
            let text = std::str::from_utf8(sig.raw()).unwrap();
            assert!(text.starts_with(&format!(
                "DKIM-Signature: v=1; a={}; c=relaxed/relaxed; d=example.test;",
                algorithm.name()
            )));
            assert!(text.contains("; h=From:From:Subject:To:To:Message-ID;"));
            assert!(text.contains(&format!("bh={};", encode_block(&[7; 32]))));
            assert!(text.contains("t=1800000000;"));
            for line in text.split("\r\n") {
                assert!(line.len() <= LINE, "line too long: {line:?}");
            }
            // Every fold but those in b= is at a tag boundary.
            let before_b = &text[..text.rfind(" b=").unwrap()];
            for fold in before_b.match_indices("\r\n").map(|(i, _)| i) {
                assert_eq!(&text[fold - 1..fold + 3], ";\r\n ", "{text}");
            }
            assert!(verify(&f, &sig, &k), "{algorithm:?}");
            // The same signature over a changed field fails.
            let mut changed = f.clone();
            changed[4] = Field::new("Subject", "three");
            assert!(!verify(&changed, &sig, &k));
            // So does a From: added anywhere.
            for at in [0, 2, changed.len()] {
                let mut more = f.clone();
                more.insert(at, Field::new("From", "evil@attacker.test"));
                assert!(!verify(&more, &sig, &k), "From added at {at}");
            }
        }
    }

    #[test]
    #[ignore = "timing only; run with --ignored --nocapture"]
    fn signing_speed() {
        let f = fields(HEAD);
        for algorithm in [Algorithm::RsaSha256, Algorithm::Ed25519Sha256] {
            let k = key(algorithm);
            let n = 200;
            let start = std::time::Instant::now();
            for _ in 0..n {
                sign(&f, &k, &[7; 32], 1_800_000_000).unwrap();
            }
            eprintln!("{algorithm:?}: {:?} per signature", start.elapsed() / n);
        }
    }
}
