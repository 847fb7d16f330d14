//! `mxrelay dkim-keygen`: makes a DKIM key pair, writes the private key (PKCS#8 PEM, mode
//! 0600, never over an existing file) and prints the DNS TXT record to publish for it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use openssl::base64::encode_block;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;

use super::key::{MIN_RSA_BITS, check_name};

const USAGE: &str = "Usage: mxrelay dkim-keygen --domain DOMAIN --selector SELECTOR [--type rsa|ed25519] [--bits 2048] [--out FILE]

Writes the private key (default file SELECTOR._domainkey.DOMAIN.pem in the current directory;
an existing file is never replaced) and prints the DNS TXT record to publish.
Use the key with --dkim DOMAIN:SELECTOR:FILE.";

/// The largest RSA key made (signing time grows with the cube of the size).
const MAX_RSA_BITS: u32 = 8192;

#[derive(Debug, PartialEq, Eq)]
struct Args {
    domain: String,
    selector: String,
    kind: Kind,
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rsa(u32),
    Ed25519,
}

fn parse(args: &[String]) -> Result<Option<Args>, String> {
    let mut opts = getopts::Options::new();
    opts.optopt("", "domain", "the signing domain (d=)", "DOMAIN");
    opts.optopt("", "selector", "the selector (s=)", "SELECTOR");
    opts.optopt("", "type", "rsa (default) or ed25519", "TYPE");
    opts.optopt("", "bits", "RSA key size (default 2048)", "BITS");
    opts.optopt("", "out", "where to write the private key", "FILE");
    opts.optflag("h", "help", "this help");
    let m = opts.parse(args).map_err(|e| e.to_string())?;
    if m.opt_present("help") {
        return Ok(None);
    }
    if let Some(extra) = m.free.first() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let domain = m.opt_str("domain").ok_or("--domain is required")?;
    let selector = m.opt_str("selector").ok_or("--selector is required")?;
    check_name("domain", &domain)?;
    check_name("selector", &selector)?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let bits = match m.opt_str("bits") {
        None => None,
        Some(b) => match b.parse::<u32>() {
            Ok(n) if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&n) => Some(n),
            _ => {
                return Err(format!(
                    "--bits {b:?}: give a size from {MIN_RSA_BITS} to {MAX_RSA_BITS} (2048 is usual)"
                ));
            }
        },
    };
    let kind = match m.opt_str("type").as_deref() {
        None | Some("rsa") => Kind::Rsa(bits.unwrap_or(2048)),
        Some("ed25519") if bits.is_none() => Kind::Ed25519,
        Some("ed25519") => return Err("--bits is for RSA keys only".into()),
        Some(other) => return Err(format!("--type {other:?}: use rsa or ed25519")),
    };
    let out = m
        .opt_str("out")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("{selector}._domainkey.{domain}.pem")));
    Ok(Some(Args {
        domain,
        selector,
        kind,
        out,
    }))
}

pub fn main(args: &[String]) -> ExitCode {
    let a = match parse(args) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mxrelay dkim-keygen: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok(record) => {
            eprintln!(
                "mxrelay dkim-keygen: wrote {} (use --dkim {}:{}:{}); publish this record:",
                a.out.display(),
                a.domain,
                a.selector,
                a.out.display()
            );
            println!("{record}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mxrelay dkim-keygen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<String, String> {
    let pkey: PKey<Private> = match a.kind {
        Kind::Rsa(bits) => Rsa::generate(bits)
            .and_then(PKey::from_rsa)
            .map_err(|e| format!("cannot make an RSA key: {e}"))?,
        Kind::Ed25519 => {
            PKey::generate_ed25519().map_err(|e| format!("cannot make an Ed25519 key: {e}"))?
        }
    };
    let pem = pkey
        .private_key_to_pem_pkcs8()
        .map_err(|e| format!("cannot encode the key: {e}"))?;
    let record = txt_record(&a.domain, &a.selector, &pkey)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&a.out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!("{} exists; not replacing it", a.out.display())
            }
            _ => format!("cannot create {}: {e}", a.out.display()),
        })?;
    if let Err(e) = file.write_all(&pem).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(&a.out);
        return Err(format!("cannot write {}: {e}", a.out.display()));
    }
    Ok(record)
}

/// The zone-file line to publish: `S._domainkey.D. IN TXT "..." ...`, the value split into
/// strings of at most 255 characters (RFC 1035 character-strings).
pub fn txt_record(domain: &str, selector: &str, pkey: &PKey<Private>) -> Result<String, String> {
    let value = dns_value(pkey)?;
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    Ok(format!(
        "{selector}._domainkey.{domain}. IN TXT {}",
        strings.join(" ")
    ))
}

/// The key record's text (RFC 6376 3.6.1): RSA as the SubjectPublicKeyInfo DER, Ed25519 as
/// the raw 32-byte public key (RFC 8463 4.2).
pub fn dns_value(pkey: &PKey<Private>) -> Result<String, String> {
    let err = |e: openssl::error::ErrorStack| format!("cannot encode the public key: {e}");
    match pkey.id() {
        openssl::pkey::Id::RSA => Ok(format!(
            "v=DKIM1; k=rsa; p={}",
            encode_block(&pkey.public_key_to_der().map_err(err)?)
        )),
        openssl::pkey::Id::ED25519 => Ok(format!(
            "v=DKIM1; k=ed25519; p={}",
            encode_block(&pkey.raw_public_key().map_err(err)?)
        )),
        _ => Err("unsupported key type".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn parses_flags() {
        assert_eq!(
            parse(&args("--domain Example.com --selector s1")),
            Ok(Some(Args {
                domain: "example.com".into(),
                selector: "s1".into(),
                kind: Kind::Rsa(2048),
                out: "s1._domainkey.example.com.pem".into(),
            }))
        );
        let a = parse(&args(
            "--domain example.com --selector s1 --type ed25519 --out /k/e.pem",
        ))
        .unwrap()
        .unwrap();
        assert_eq!((a.kind, a.out), (Kind::Ed25519, PathBuf::from("/k/e.pem")));
        let a = parse(&args("--domain example.com --selector s1 --bits 3072"))
            .unwrap()
            .unwrap();
        assert_eq!(a.kind, Kind::Rsa(3072));
        assert_eq!(parse(&args("--help")), Ok(None));
        for bad in [
            "--selector s1",
            "--domain example.com",
            "--domain example.com --selector s1 --type dsa",
            "--domain example.com --selector s1 --bits 512",
            "--domain example.com --selector s1 --bits many",
            "--domain example.com --selector s1 --type ed25519 --bits 2048",
            "--domain exa_mple..com --selector s1",
            "--domain example.com --selector s1 extra",
            "--domain example.com --selector s1 --unknown",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_record_is_split_into_strings_of_at_most_255() {
        let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let r = txt_record("example.com", "s1", &rsa).unwrap();
        assert!(r.starts_with("s1._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p=MII"));
        let strings: Vec<&str> = r.split('"').skip(1).step_by(2).collect();
        assert_eq!(strings.len(), 2);
        assert!(strings.iter().all(|s| s.len() <= 255));
        assert_eq!(strings.concat(), dns_value(&rsa).unwrap());
        let ed = PKey::generate_ed25519().unwrap();
        let r = txt_record("example.com", "e1", &ed).unwrap();
        let p = r.split("p=").nth(1).unwrap().trim_end_matches('"');
        assert_eq!(openssl::base64::decode_block(p).unwrap().len(), 32);
        assert!(r.contains("\"v=DKIM1; k=ed25519; p="));
    }
}
