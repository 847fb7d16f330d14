//! TLS: the server side (an openssl acceptor built from PEM files, TLS 1.2 minimum and 1.3
//! offered, reloadable without dropping sessions, or a self-signed certificate generated
//! once into the spool) and the client side (native-tls connectors for delivery).

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::ssl::{ErrorCode, HandshakeError, SslAcceptor, SslMethod, SslStream, SslVersion};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};

#[derive(Debug)]
pub struct TlsError(pub String);

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn err(context: &str) -> impl Fn(openssl::error::ErrorStack) -> TlsError + '_ {
    move |e| TlsError(format!("{context}: {e}"))
}

/// The server certificate and key, swappable while sessions run.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<Arc<SslAcceptor>>,
    loaded: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ServerTls {
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let acceptor = build_acceptor(cert, key)?;
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            acceptor: RwLock::new(Arc::new(acceptor)),
            loaded: Mutex::new((mtime(cert), mtime(key))),
        })
    }

    /// Uses `spool/tls/{cert,key}.pem`, generating a self-signed pair on first use.
    pub fn self_signed(spool: &Path, hostname: &str) -> Result<ServerTls, TlsError> {
        let dir = spool.join("tls");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if !cert.exists() || !key.exists() {
            fs::create_dir_all(&dir).map_err(|e| TlsError(format!("{}: {e}", dir.display())))?;
            let (c, k) = generate_self_signed(hostname)?;
            write_private(&key, &k)?;
            write_private(&cert, &c)?;
            log::warn!(
                "tls: no --tls-cert given; generated a self-signed certificate for {hostname} in {}",
                dir.display()
            );
        } else {
            log::info!(
                "tls: using the self-signed certificate in {}",
                dir.display()
            );
        }
        ServerTls::load(&cert, &key)
    }

    pub fn acceptor(&self) -> Arc<SslAcceptor> {
        self.acceptor.read().expect("tls lock").clone()
    }

    /// Reloads the files if they changed (or always, with `force`). New handshakes use the
    /// new certificate; sessions already under TLS keep theirs. A broken new pair is logged
    /// and the old one stays in use.
    pub fn reload(&self, force: bool) -> bool {
        let now = (mtime(&self.cert), mtime(&self.key));
        let mut loaded = self.loaded.lock().expect("tls lock");
        if !force && *loaded == now {
            return false;
        }
        *loaded = now;
        match build_acceptor(&self.cert, &self.key) {
            Ok(a) => {
                *self.acceptor.write().expect("tls lock") = Arc::new(a);
                log::info!("tls: certificate reloaded from {}", self.cert.display());
                true
            }
            Err(e) => {
                log::error!("tls: reload failed, keeping the old certificate: {e}");
                false
            }
        }
    }

    /// The server side of a handshake, which must be over by `deadline` however the client
    /// paces its bytes (a per-read timeout alone would let one byte every few seconds hold the
    /// session for an hour). The socket is non-blocking meanwhile and blocking again after.
    pub fn accept(
        &self,
        tcp: TcpStream,
        deadline: Instant,
    ) -> Result<SslStream<TcpStream>, String> {
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut attempt = self.acceptor().accept(tcp);
        loop {
            match attempt {
                Ok(s) => {
                    s.get_ref()
                        .set_nonblocking(false)
                        .map_err(|e| e.to_string())?;
                    return Ok(s);
                }
                Err(HandshakeError::WouldBlock(mid)) => {
                    let write = mid.error().code() == ErrorCode::WANT_WRITE;
                    if !ready(mid.get_ref(), write, deadline) {
                        return Err("not finished in time".into());
                    }
                    attempt = mid.handshake();
                }
                Err(HandshakeError::SetupFailure(e)) => return Err(e.to_string()),
                Err(HandshakeError::Failure(m)) => return Err(m.error().to_string()),
            }
        }
    }
}

/// Waits until the socket can be read (or written) or `deadline` passes; whether it can.
fn ready(tcp: &TcpStream, write: bool, deadline: Instant) -> bool {
    let events = if write { libc::POLLOUT } else { libc::POLLIN };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fd = libc::pollfd {
            fd: tcp.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, for the duration of the call.
        match unsafe { libc::poll(&mut fd, 1, ms) } {
            n if n > 0 => return true,
            0 => {}
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

/// "TLSv1.3 TLS_AES_256_GCM_SHA384", for `Received:` and logs.
pub fn describe(s: &SslStream<TcpStream>) -> String {
    let ssl = s.ssl();
    format!(
        "{} {}",
        ssl.version_str(),
        ssl.current_cipher().map_or("unknown", |c| c.name())
    )
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn build_acceptor(cert: &Path, key: &Path) -> Result<SslAcceptor, TlsError> {
    let read = |p: &Path| fs::read(p).map_err(|e| TlsError(format!("{}: {e}", p.display())));
    let chain = X509::stack_from_pem(&read(cert)?).map_err(err("certificate"))?;
    let Some((leaf, rest)) = chain.split_first() else {
        return Err(TlsError(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    };
    // Any PEM key form: PKCS#8, PKCS#1 RSA, SEC1 EC.
    let pkey = PKey::private_key_from_pem(&read(key)?).map_err(err("private key"))?;
    let mut b =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(err("tls setup"))?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(err("tls setup"))?;
    b.set_certificate(leaf).map_err(err("certificate"))?;
    for c in rest {
        b.add_extra_chain_cert(c.clone())
            .map_err(err("certificate chain"))?;
    }
    b.set_private_key(&pkey).map_err(err("private key"))?;
    b.check_private_key()
        .map_err(err("the key does not match the certificate"))?;
    Ok(b.build())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| TlsError(format!("{}: {e}", path.display())))
}

/// RSA-2048 (widest client support), SAN with the host name and localhost, ten years.
pub fn generate_self_signed(hostname: &str) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let e = err("self-signed certificate");
    let key = PKey::from_rsa(Rsa::generate(2048).map_err(&e)?).map_err(&e)?;
    let mut name = X509NameBuilder::new().map_err(&e)?;
    name.append_entry_by_text("CN", hostname).map_err(&e)?;
    let name = name.build();
    let mut b = X509::builder().map_err(&e)?;
    b.set_version(2).map_err(&e)?;
    let mut serial = BigNum::new().map_err(&e)?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false).map_err(&e)?;
    let serial = serial.to_asn1_integer().map_err(&e)?;
    b.set_serial_number(&serial).map_err(&e)?;
    b.set_subject_name(&name).map_err(&e)?;
    b.set_issuer_name(&name).map_err(&e)?;
    b.set_pubkey(&key).map_err(&e)?;
    let (from, until) = (
        Asn1Time::days_from_now(0).map_err(&e)?,
        Asn1Time::days_from_now(3650).map_err(&e)?,
    );
    b.set_not_before(&from).map_err(&e)?;
    b.set_not_after(&until).map_err(&e)?;
    b.append_extension(BasicConstraints::new().build().map_err(&e)?)
        .map_err(&e)?;
    b.append_extension(
        KeyUsage::new()
            .digital_signature()
            .key_encipherment()
            .build()
            .map_err(&e)?,
    )
    .map_err(&e)?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build().map_err(&e)?)
        .map_err(&e)?;
    let san = SubjectAlternativeName::new()
        .dns(hostname)
        .dns("localhost")
        .build(&b.x509v3_context(None, None))
        .map_err(&e)?;
    b.append_extension(san).map_err(&e)?;
    b.sign(&key, MessageDigest::sha256()).map_err(&e)?;
    Ok((
        b.build().to_pem().map_err(&e)?,
        key.private_key_to_pem_pkcs8().map_err(&e)?,
    ))
}

/// Client-side TLS for delivery: a connector that verifies (system roots plus an optional
/// extra CA) and one that does not (opportunistic TLS to MX hosts). Both are built on first
/// use: loading the system trust store costs a few MB, which a relay that never speaks TLS
/// outbound should not pay.
pub struct Outbound {
    extra_ca: Option<native_tls::Certificate>,
    verifying: std::sync::OnceLock<Result<native_tls::TlsConnector, String>>,
    lenient: std::sync::OnceLock<Result<native_tls::TlsConnector, String>>,
}

impl Outbound {
    /// Reads and checks the extra CA now, so a bad `--tls-ca-file` stops the start.
    pub fn new(extra_ca: Option<&Path>) -> Result<Outbound, TlsError> {
        let extra_ca = match extra_ca {
            Some(path) => {
                let pem =
                    fs::read(path).map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
                Some(
                    native_tls::Certificate::from_pem(&pem)
                        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?,
                )
            }
            None => None,
        };
        Ok(Outbound {
            extra_ca,
            verifying: Default::default(),
            lenient: Default::default(),
        })
    }

    pub fn connector(&self, verify: bool) -> Result<&native_tls::TlsConnector, String> {
        let cell = if verify {
            &self.verifying
        } else {
            &self.lenient
        };
        cell.get_or_init(|| {
            let mut b = native_tls::TlsConnector::builder();
            b.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
            if verify {
                if let Some(ca) = &self.extra_ca {
                    b.add_root_certificate(ca.clone());
                }
            } else {
                b.danger_accept_invalid_certs(true)
                    .danger_accept_invalid_hostnames(true);
            }
            b.build().map_err(|e| format!("tls client setup: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pair_loads_and_reloads() {
        let dir = std::env::temp_dir().join(format!("mxrelay-tls-{}", crate::spool::id::new_id()));
        let tls = ServerTls::self_signed(&dir, "relay.test").unwrap();
        let first = tls.acceptor();
        assert!(!tls.reload(false), "unchanged files are not reloaded");
        assert!(tls.reload(true));
        assert!(!Arc::ptr_eq(&first, &tls.acceptor()));
        // A second start reuses the pair instead of generating a new one.
        let cert = fs::read(dir.join("tls/cert.pem")).unwrap();
        ServerTls::self_signed(&dir, "relay.test").unwrap();
        assert_eq!(cert, fs::read(dir.join("tls/cert.pem")).unwrap());
        // A broken replacement keeps the old acceptor.
        fs::write(dir.join("tls/cert.pem"), b"junk").unwrap();
        let before = tls.acceptor();
        assert!(!tls.reload(true));
        assert!(Arc::ptr_eq(&before, &tls.acceptor()));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("mxrelay-tls-{}", crate::spool::id::new_id()));
        fs::create_dir_all(&dir).unwrap();
        let (c1, _) = generate_self_signed("a.test").unwrap();
        let (_, k2) = generate_self_signed("b.test").unwrap();
        fs::write(dir.join("c.pem"), c1).unwrap();
        fs::write(dir.join("k.pem"), k2).unwrap();
        let e = ServerTls::load(&dir.join("c.pem"), &dir.join("k.pem"))
            .err()
            .unwrap();
        assert!(e.0.contains("mismatch"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }
}
