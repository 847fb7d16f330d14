//! Tests of the users file and the password hashes, with hashes made by the real tools.

use super::hash::*;
use super::users::*;

// Test vectors produced by the real tools (Debian: apache2-utils 2.4, whois' mkpasswd,
// OpenSSL 3). Password is `secret` unless noted.
/// `htpasswd -nbB alice secret`
const HTPASSWD_B: &str = "$2y$05$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRxfo4eTXPh4i";
/// `htpasswd -nbB -C 5 bob 'p@ss w0rd'`
const HTPASSWD_B_SPACE: &str = "$2y$05$ofkx3XUvr90n05WR4dt.WejDSYmXb/2NhKj19g8M1fWJuuoBh7pKi";
/// `htpasswd -nbB -C 10 carol 'correct horse'`
const HTPASSWD_B10: &str = "$2y$10$a09IgmsWMZ04doEWAi3R1.j2YbzmrmT1jT8IquKKX9GSN7Xu2GDFO";
/// `mkpasswd -m bcrypt`
const MKPASSWD_BCRYPT: &str = "$2b$05$cE88tsgkvdq0MQWhQ2EPwuH3EuKihZtGUD9SqcW3BmbMiDPEq.oNS";
/// `mkpasswd -m bcrypt-a`
const MKPASSWD_BCRYPT_A: &str = "$2a$05$BMSf3NmhOzU5FR1XxWlnhut38XMnIPOvlRDgbhfpzfpjR0yHA0BBm";
/// `mkpasswd -m sha-512`
const MKPASSWD_SHA512: &str = "$6$ohxnF/JmaaINA09R$rjwoAOKTABaqPTb1KSdvfuawzVsxk6Kg.1LG3x5Rv8qIN.rZFAUqG7gEOehAG8EmSbzv8CwAAnsRw5fJFOcDr.";
/// `mkpasswd -m sha-512 -R 10000`
const MKPASSWD_SHA512_ROUNDS: &str = "$6$rounds=10000$tbpKIkqZrbl.88Dx$QxGlEULiIqwJyRm7TbIxh0R4fpgiogAwYqnzsM8xVgnphT7ihIfQdWyih1uScL3zzYpuNno3G87/cpjqxdk/y1";
/// `mkpasswd -m sha-512` with password `pässwörd`
const MKPASSWD_SHA512_UTF8: &str = "$6$Ve1FBkBYABB71lHR$r4WcKdfwo5g05dBtNCpSqt7LgIR3kfmLcN6s1KIDAXW/yibzz58HjL1quRmxj6js3ZLUAdyYhsTFKk7gn8qBc1";
/// `mkpasswd -m sha-256`
const MKPASSWD_SHA256: &str = "$5$LqACpBRDQSUxP5Ok$vWbvJlAdLGQJPNoPNN8VGM8ZEOFMPQjXtqG5dQf8dQ8";
/// `mkpasswd -m sha-256 -R 1000`
const MKPASSWD_SHA256_ROUNDS: &str =
    "$5$rounds=1000$LNJApKiK0sY50a7k$TIbCCDXsNsGnxMfRbNxCsc8Mk0.DchsaxmQjeuMkoy9";
/// `openssl passwd -6 secret`
const OPENSSL_6: &str = "$6$zfA4z1i9x/LKW1qZ$NqpkVtnxEb6bWqZn/1Gfg1II3CS9AC4VGxaCLyKCB58K/UJBPnbGnn0Fll6qgHkwGVhws4ICFd9hbt/ouKUhO1";
/// `openssl passwd -5 secret`
const OPENSSL_5: &str = "$5$zShh6BBlzu/jG1vO$3xGkT..QAC9DwsykEP6py98SM32eipG9CMchO/oHfe.";
/// `htpasswd -nb -5 x secret`
const HTPASSWD_5: &str = "$6$l5YrSLP4Fc9RYbeV$476bHpGolzqWUtRbmv6he628PV5phVHM5R64NzxNjd.hKHNaVr5M5gNmGFL5.hLdKaXgxGHBxvUlPIMeyCLhg.";
/// `htpasswd -nb -2 x secret`
const HTPASSWD_2: &str = "$5$RUP.tQWx6VSEsasF$WBUgUSkcY6l1dxaq7yWspcFzpZzppkcq13gCpMrDIJA";

// Rejected formats, also from the tools (password `secret`).
/// `htpasswd -nb x secret` (default: Apache MD5)
const HTPASSWD_APR1: &str = "$apr1$Srg5BGR9$v2o2ui55wxAx4BuKOIMU8/";
/// `openssl passwd -1 secret`
const OPENSSL_MD5: &str = "$1$ky3d3E11$1BHltRGPSPy9VVLgJsdGG/";
/// `mkpasswd secret` (Debian 12+ default: yescrypt)
const MKPASSWD_YESCRYPT: &str =
    "$y$j9T$uViRq1JV2au87/EPskvGb/$DJOYwS3bqlfjIHTdKjaTswB.nrx8ZG0KGj73xRuMsPC";
/// `htpasswd -nbs x secret`
const HTPASSWD_SHA1: &str = "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=";
/// `htpasswd -nbd x secret`
const HTPASSWD_DES: &str = "JXDpu8AZnr/1M";

fn one(hash: &str) -> Users {
    Users::parse(&format!("u:{hash}\n")).unwrap_or_else(|e| panic!("{e}"))
}

fn line_err(text: &str) -> (usize, String) {
    match Users::parse(text) {
        Err(UsersError::Line { line, reason }) => (line, reason),
        Err(e) => panic!("unexpected error {e}"),
        Ok(u) => panic!("parsed: {u:?}"),
    }
}

#[test]
fn tool_hashes_verify() {
    let cases: &[(&str, &str)] = &[
        (HTPASSWD_B, "secret"),
        (HTPASSWD_B_SPACE, "p@ss w0rd"),
        (HTPASSWD_B10, "correct horse"),
        (MKPASSWD_BCRYPT, "secret"),
        (MKPASSWD_BCRYPT_A, "secret"),
        (MKPASSWD_SHA512, "secret"),
        (MKPASSWD_SHA512_ROUNDS, "secret"),
        (MKPASSWD_SHA512_UTF8, "pässwörd"),
        (MKPASSWD_SHA256, "secret"),
        (MKPASSWD_SHA256_ROUNDS, "secret"),
        (OPENSSL_6, "secret"),
        (OPENSSL_5, "secret"),
        (HTPASSWD_5, "secret"),
        (HTPASSWD_2, "secret"),
    ];
    for &(hash, password) in cases {
        let users = one(hash);
        assert!(
            users.verify("u", password.as_bytes()),
            "right password: {hash}"
        );
        assert!(!users.verify("u", b"Secret"), "wrong password: {hash}");
        assert!(!users.verify("u", b""), "empty password: {hash}");
        assert!(
            !users.verify("U", password.as_bytes()),
            "user names are case-sensitive"
        );
        assert!(!users.verify("nobody", password.as_bytes()));
    }
}

#[test]
fn htpasswd_output_line_parses_as_is() {
    // `htpasswd -nbB` prints `user:hash` followed by an empty line.
    let users = Users::parse(&format!("alice:{HTPASSWD_B}\n\n")).unwrap();
    assert_eq!(users.len(), 1);
    assert!(!users.is_empty());
    let a = users.get("alice").unwrap();
    assert_eq!(a.user, "alice");
    assert_eq!(a.hash, HTPASSWD_B);
    assert!(a.sender_domains.is_empty());
    assert!(users.verify("alice", b"secret"));
    assert!(!users.verify("alice", b"secret "));
}

#[test]
fn rejected_formats_name_line_and_remedy() {
    let cases: &[(&str, &str)] = &[
        (HTPASSWD_APR1, "$apr1$"),
        (OPENSSL_MD5, "$1$"),
        (MKPASSWD_YESCRYPT, "yescrypt"),
        (HTPASSWD_SHA1, "{SHA}"),
        (HTPASSWD_DES, "DES"),
        ("secret", "plaintext"),
        ("hunter2-is-my-password", "plaintext"),
        (
            "$2x$05$cE88tsgkvdq0MQWhQ2EPwuH3EuKihZtGUD9SqcW3BmbMiDPEq.oNS",
            "$2x$",
        ),
        ("$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$hash", "argon2"),
        ("$9$abc$def", "`$9$`"),
        ("{SSHA}abcdef", "{SSHA}"),
    ];
    for &(hash, what) in cases {
        let text = format!("# users\n\nok:{HTPASSWD_B}\nbad:{hash}\n");
        let (line, reason) = line_err(&text);
        assert_eq!(line, 4, "{hash}");
        assert!(reason.contains(what), "{hash}: {reason}");
        assert!(reason.contains("user `bad`"), "{reason}");
        assert!(reason.contains(REGENERATE), "{reason}");
        assert!(
            reason.contains("regenerate with `htpasswd -nbB user pass` or `mxrelay hash-password`")
        );
        assert!(!reason.contains(hash), "hash leaked: {reason}");
        let shown = Users::parse(&text).unwrap_err().to_string();
        assert!(shown.starts_with("line 4: user `bad`: "), "{shown}");
        assert!(!shown.contains(hash), "hash leaked: {shown}");
    }
}

#[test]
fn malformed_supported_hashes() {
    // A shell expanded `$05` and `$4Zzy...`: "$2y.qsu6..." etc.
    let (_, r) = line_err("u:$2y$05$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRx\n");
    assert!(r.contains("expected 60 characters"), "{r}");
    assert!(r.contains(REGENERATE));
    // Invalid base64 in a 60-character bcrypt hash.
    let (_, r) = line_err("u:$2y$05$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRxfo4eTXPh4!\n");
    assert!(r.contains("malformed bcrypt"), "{r}");
    let (_, r) = line_err("u:$2y$99$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRxfo4eTXPh4i\n");
    assert!(r.contains("cost 99"), "{r}");
    let (_, r) = line_err(&format!("u:{}\n", &MKPASSWD_SHA512[..60]));
    assert!(r.contains("malformed SHA-512-crypt"), "{r}");
    let (_, r) = line_err(
        "u:$6$rounds=500$tbpKIkqZrbl.88Dx$QxGlEULiIqwJyRm7TbIxh0R4fpgiogAwYqnzsM8xVgnphT7ihIfQdWyih1uScL3zzYpuNno3G87/cpjqxdk/y1\n",
    );
    assert!(r.contains("rounds"), "{r}");
    let (_, r) = line_err("u:$5$$3xGkT..QAC9DwsykEP6py98SM32eipG9CMchO/oHfe.\n");
    assert!(r.contains("salt"), "{r}");
    let (_, r) = line_err("u:$5$salt\n");
    assert!(r.contains("malformed SHA-256-crypt"), "{r}");
    let (_, r) = line_err("u:\n");
    assert!(r.contains("empty password hash"), "{r}");
}

#[test]
fn comments_blank_lines_and_whitespace() {
    let text = format!(
        "# mxrelay users\n\n   \n\t# indented comment\n  alice:{HTPASSWD_B}  \r\n\
         \tbob : {OPENSSL_6} : Example.COM , example.org \n#carol:{HTPASSWD_B10}\n"
    );
    let users = Users::parse(&text).unwrap();
    assert_eq!(users.len(), 2);
    assert!(users.get("carol").is_none());
    assert!(users.verify("alice", b"secret"));
    assert!(users.verify("bob", b"secret"));
    assert_eq!(
        users.get("bob").unwrap().sender_domains,
        vec!["example.com".to_string(), "example.org".to_string()]
    );
    let empty = Users::parse("# nothing\n\n").unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.len(), 0);
    assert!(!empty.verify("alice", b"secret"));
}

#[test]
fn line_structure_errors() {
    let (line, r) = line_err("\n\njust-a-name\n");
    assert_eq!(line, 3);
    assert!(r.contains("no `:`"), "{r}");
    let (_, r) = line_err(&format!("a:{HTPASSWD_B}:example.com:extra\n"));
    assert!(r.contains("too many"), "{r}");
    let (_, r) = line_err(&format!(":{HTPASSWD_B}\n"));
    assert!(r.contains("empty user name"), "{r}");
    let (_, r) = line_err(&format!("al ice:{HTPASSWD_B}\n"));
    assert!(r.contains("whitespace"), "{r}");
}

#[test]
fn duplicate_user() {
    let text = format!("alice:{HTPASSWD_B}\nbob:{OPENSSL_5}\n\nalice:{MKPASSWD_SHA512}\n");
    let (line, r) = line_err(&text);
    assert_eq!(line, 4);
    assert!(r.contains("duplicate user `alice`"), "{r}");
    assert!(r.contains("line 1"), "{r}");
    // Differently-cased names are different users.
    let users = Users::parse(&format!("alice:{HTPASSWD_B}\nAlice:{OPENSSL_5}\n")).unwrap();
    assert_eq!(users.len(), 2);
}

#[test]
fn sender_domains_column() {
    let text = format!(
        "any:{HTPASSWD_B}\nlimited:{HTPASSWD_B}:Example.com,mail.example.org,example.com\n\
         local:{HTPASSWD_B}:localhost\n"
    );
    let users = Users::parse(&text).unwrap();
    assert_eq!(
        users.get("limited").unwrap().sender_domains,
        vec!["example.com", "mail.example.org"]
    );
    assert!(users.sender_allowed("any", "whatever.test"));
    assert!(users.sender_allowed("limited", "example.com"));
    assert!(users.sender_allowed("limited", "EXAMPLE.COM"));
    assert!(users.sender_allowed("limited", "Mail.Example.Org"));
    assert!(!users.sender_allowed("limited", "example.org"));
    assert!(!users.sender_allowed("limited", "sub.example.com"));
    assert!(!users.sender_allowed("limited", ""));
    assert!(users.sender_allowed("local", "localhost"));
    assert!(!users.sender_allowed("nobody", "example.com"));

    for (domains, expect) in [
        ("", "empty sender domain list"),
        ("example.com,", "empty sender domain"),
        ("@example.com", "without `@`"),
        ("user@example.com", "without `@`"),
        ("bücher.de", "xn--"),
        ("example.com.", "trailing dot"),
        ("exa_mple.com", "only letters"),
        ("-example.com", "`-`"),
        ("example..com", "empty label"),
        ("192.0.2.1", "IP address"),
        ("*.example.com", "only letters"),
    ] {
        let (line, r) = line_err(&format!("u:{HTPASSWD_B}:{domains}\n"));
        assert_eq!(line, 1);
        assert!(r.contains(expect), "{domains}: {r}");
        assert!(r.contains("user `u`"), "{r}");
    }
    let long_label = "a".repeat(64);
    let (_, r) = line_err(&format!("u:{HTPASSWD_B}:{long_label}.com\n"));
    assert!(r.contains("63"), "{r}");
    assert!(Users::parse(&format!("u:{HTPASSWD_B}:xn--bcher-kva.de,a-b.c0m\n")).is_ok());
}

#[test]
fn add_sender_domain_merges() {
    let text = format!("any:{HTPASSWD_B}\nlimited:{HTPASSWD_B}:example.com\n");
    let mut users = Users::parse(&text).unwrap();
    let e = users
        .add_sender_domain("nobody", "example.com")
        .unwrap_err();
    assert!(e.contains("unknown user `nobody`"), "{e}");
    let e = users.add_sender_domain("any", "not a domain").unwrap_err();
    assert!(e.contains("invalid sender domain"), "{e}");
    assert!(
        users.sender_allowed("any", "x.test"),
        "a failed add changes nothing"
    );

    users.add_sender_domain("limited", "Example.NET").unwrap();
    users.add_sender_domain("limited", "example.com").unwrap(); // already there
    assert_eq!(
        users.get("limited").unwrap().sender_domains,
        vec!["example.com", "example.net"]
    );
    assert!(users.sender_allowed("limited", "example.net"));

    // A user that could send as anyone becomes restricted to what the flag adds.
    users.add_sender_domain("any", "example.org").unwrap();
    assert!(users.sender_allowed("any", "EXAMPLE.org"));
    assert!(!users.sender_allowed("any", "x.test"));
}

#[test]
fn hash_password_is_htpasswd_compatible() {
    let h = hash_password("s3cret pass");
    assert!(h.starts_with("$2y$10$"), "{h}");
    assert_eq!(h.len(), 60);
    // What `htpasswd -vb` does: bcrypt-verify the stored string.
    assert!(bcrypt::verify("s3cret pass", &h).unwrap());
    let users = Users::parse(&format!("me:{h}\n")).unwrap();
    assert!(users.verify("me", b"s3cret pass"));
    assert!(!users.verify("me", b"s3cret pas"));
    assert_ne!(h, hash_password("s3cret pass"), "salt is random");
}

#[test]
fn unknown_users_use_dummy_of_common_cost() {
    // Mostly cost-5 bcrypt → dummy is cost-5 bcrypt.
    let users = Users::parse(&format!(
        "a:{HTPASSWD_B}\nb:{MKPASSWD_BCRYPT}\nc:{HTPASSWD_B10}\nd:{OPENSSL_6}\n"
    ))
    .unwrap();
    assert_eq!(users.dummy_scheme, Scheme::Bcrypt { cost: 5 });
    assert!(users.dummy_hash.starts_with("$2y$05$"));
    assert!(classify(&users.dummy_hash).is_ok());
    assert!(!users.verify("zed", b"secret"));

    // Mostly SHA-512-crypt → SHA-512 dummy with the same rounds.
    let users = Users::parse(&format!(
        "a:{OPENSSL_6}\nb:{MKPASSWD_SHA512}\nc:{HTPASSWD_B}\n"
    ))
    .unwrap();
    assert_eq!(users.dummy_scheme, Scheme::Sha512 { rounds: 5000 });
    assert!(classify(&users.dummy_hash).is_ok());
    assert!(!users.verify("zed", b"secret"));

    let users = one(MKPASSWD_SHA256);
    assert_eq!(users.dummy_scheme, Scheme::Sha256 { rounds: 5000 });
    assert!(classify(&users.dummy_hash).is_ok());
    assert!(!users.verify("zed", b"secret"));

    // Nothing loaded: the hash_password cost.
    let users = Users::default();
    assert_eq!(users.dummy_hash, Scheme::Bcrypt { cost: 10 }.dummy_hash());
    assert!(classify(&users.dummy_hash).is_ok());
}

#[test]
fn generated_low_cost_bcrypt_and_long_passwords() {
    let h = bcrypt::hash("pw", 4).unwrap();
    let users = one(&h);
    assert!(users.verify("u", b"pw"));
    let long = vec![b'x'; MAX_PASSWORD_LEN + 1];
    assert!(!users.verify("u", &long));
    assert!(!users.verify("nobody", &long));
}

#[test]
fn debug_does_not_show_hashes() {
    let users = one(HTPASSWD_B);
    let s = format!("{users:?}");
    assert!(s.contains("\"u\""), "{s}");
    assert!(!s.contains(HTPASSWD_B), "{s}");
}

#[test]
fn load_file_and_io_error() {
    let dir = std::env::temp_dir().join(format!("mxrelay-auth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("users");
    std::fs::write(&path, format!("alice:{HTPASSWD_B}:example.com\n")).unwrap();
    let users = Users::load(&path).unwrap();
    assert!(users.verify("alice", b"secret"));
    assert!(users.sender_allowed("alice", "example.com"));

    std::fs::write(&path, format!("alice:{HTPASSWD_APR1}\n")).unwrap();
    let e = Users::load(&path).unwrap_err();
    assert!(matches!(e, UsersError::Line { line: 1, .. }), "{e:?}");

    let e = Users::load(&dir.join("missing")).unwrap_err();
    assert!(matches!(e, UsersError::Io(_)), "{e:?}");
    assert!(std::error::Error::source(&e).is_some());
    assert!(!e.to_string().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}
