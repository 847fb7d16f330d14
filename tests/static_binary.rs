//! The static appliance binary (`scripts/build-static`) end to end: it has no dynamic
//! dependencies, takes a message over STARTTLS, signs it with DKIM and delivers it to a
//! next hop over verified STARTTLS, all with the OpenSSL built into it. Ignored in a plain
//! `cargo test` (it needs that build); `scripts/test` builds it and runs this with
//! `MXRELAY_STATIC` naming it.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::sink::test_certs;
use support::sink::{Script, SinkTls};
use support::{Relay, TempDir, sink_on};

fn static_binary() -> PathBuf {
    let path = std::env::var_os("MXRELAY_STATIC").expect(
        "MXRELAY_STATIC must name the static build (scripts/build-static; scripts/test sets it)",
    );
    PathBuf::from(path)
}

#[test]
#[ignore = "needs the static build: scripts/build-static, then MXRELAY_STATIC=PATH"]
fn the_static_binary_relays_over_starttls_with_no_shared_libraries() {
    let bin = static_binary();
    let ldd = Command::new("ldd").arg(&bin).output().expect("ldd");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );
    assert!(!said.contains("=>"), "shared libraries: {said}");

    let c = test_certs();
    let sink = sink_on("127.0.0.1", 0, Script::default().tls(SinkTls::test()));
    let spool = TempDir::new("static");
    let key = spool.path().join("dkim.pem");
    let keygen = Command::new(&bin)
        .args([
            "dkim-keygen",
            "--domain",
            "client.test",
            "--selector",
            "s1",
            "--out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let dkim = format!("client.test:s1:{}", key.display());
    let relay = Relay::start_binary(
        &bin,
        &spool.path().join("spool"),
        &[
            "--smarthost",
            &sink.addr.to_string(),
            "--tls-ca-file",
            &c.join("ca.pem").display().to_string(),
            "--tls-cert",
            &c.join("server-chain.pem").display().to_string(),
            "--tls-key",
            &c.join("server.key").display().to_string(),
            "--dkim",
            &dkim,
        ],
    );
    // swaks submits over STARTTLS, checking the relay's certificate against the test CA.
    let out = Command::new("swaks")
        .args(["--server", &relay.addr.to_string(), "--tls", "--tls-verify"])
        .args(["--tls-ca-path", &c.join("ca.pem").display().to_string()])
        .args(["--tls-sni", "localhost", "--ehlo", "client.test"])
        .args(["--from", "app@client.test", "--to", "b@example.test"])
        .args(["--header", "From: app@client.test", "--body", "static"])
        .output()
        .expect("swaks (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("<~  220 2.0.0") || text.contains("STARTTLS"),
        "{text}"
    );
    let m = &support::delivered(&sink, 1, &relay)[0];
    assert!(m.tls.is_some(), "delivered over TLS");
    let data = String::from_utf8_lossy(&m.data);
    assert!(
        data.starts_with("DKIM-Signature: v=1; a=rsa-sha256;"),
        "{data}"
    );
    assert!(data.contains("with ESMTPS"), "received over TLS: {data}");
}
