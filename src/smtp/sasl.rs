//! SASL exchanges for SMTP AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN. Decoding only; the
//! credentials are checked by the caller. An authorization identity different from the
//! authentication identity is refused: nobody logs in as someone else.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 4): 501.
    Cancelled,
    /// Not base64, or not the shape the mechanism needs: 501.
    Malformed(&'static str),
    /// authzid ≠ authcid: 535.
    IdentitySwitch,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `334 <text>` (text already base64) and wait for the next line.
    Challenge(&'static str),
    Done {
        user: String,
        password: Vec<u8>,
    },
    Failed(SaslError),
}

pub struct Exchange {
    mechanism: Mechanism,
    user: Option<String>,
}

const USERNAME: &str = "VXNlcm5hbWU6";
const PASSWORD: &str = "UGFzc3dvcmQ6";

impl Exchange {
    /// `None` for a mechanism we do not offer.
    pub fn start(mechanism: &str, initial: Option<&str>) -> Option<(Exchange, Step)> {
        let mechanism = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => Mechanism::Plain,
            "LOGIN" => Mechanism::Login,
            _ => return None,
        };
        let mut ex = Exchange {
            mechanism,
            user: None,
        };
        let step = match initial {
            Some(resp) => ex.respond(resp),
            None if mechanism == Mechanism::Plain => Step::Challenge(""),
            None => Step::Challenge(USERNAME),
        };
        Some((ex, step))
    }

    /// The user name as far as known (for logging a failure; never the password).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn respond(&mut self, line: &str) -> Step {
        let line = line.trim();
        if line == "*" {
            return Step::Failed(SaslError::Cancelled);
        }
        let data = match decode(line) {
            Ok(d) => d,
            Err(e) => return Step::Failed(e),
        };
        match (self.mechanism, &self.user) {
            (Mechanism::Plain, _) => {
                let mut parts = data.splitn(3, |&b| b == 0);
                let (Some(authz), Some(authc), Some(password)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Step::Failed(SaslError::Malformed(
                        "PLAIN needs authzid NUL authcid NUL password",
                    ));
                };
                let Ok(user) = String::from_utf8(authc.to_vec()) else {
                    return Step::Failed(SaslError::Malformed("user name is not UTF-8"));
                };
                if user.is_empty() {
                    return Step::Failed(SaslError::Malformed("empty user name"));
                }
                self.user = Some(user.clone());
                if !authz.is_empty() && authz != authc {
                    return Step::Failed(SaslError::IdentitySwitch);
                }
                Step::Done {
                    user,
                    password: password.to_vec(),
                }
            }
            (Mechanism::Login, None) => match String::from_utf8(data) {
                Ok(user) if !user.is_empty() => {
                    self.user = Some(user);
                    Step::Challenge(PASSWORD)
                }
                _ => Step::Failed(SaslError::Malformed("bad user name")),
            },
            (Mechanism::Login, Some(user)) => Step::Done {
                user: user.clone(),
                password: data,
            },
        }
    }
}

/// RFC 4954: "=" is an empty initial response.
fn decode(s: &str) -> Result<Vec<u8>, SaslError> {
    if s == "=" || s.is_empty() {
        return Ok(Vec::new());
    }
    let ok = s.len().is_multiple_of(4)
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='));
    if !ok {
        return Err(SaslError::Malformed("invalid base64"));
    }
    openssl::base64::decode_block(s).map_err(|_| SaslError::Malformed("invalid base64"))
}

pub fn encode(data: &[u8]) -> String {
    openssl::base64::encode_block(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        encode(s)
    }

    #[test]
    fn plain() {
        let (mut ex, step) = Exchange::start("plain", None).unwrap();
        assert_eq!(step, Step::Challenge(""));
        assert_eq!(
            ex.respond(&b64(b"\0alice\0secret")),
            Step::Done {
                user: "alice".into(),
                password: b"secret".to_vec()
            }
        );
        let (_, step) = Exchange::start("PLAIN", Some(&b64(b"alice\0alice\0pw"))).unwrap();
        assert_eq!(
            step,
            Step::Done {
                user: "alice".into(),
                password: b"pw".to_vec()
            }
        );
        let (ex, step) = Exchange::start("PLAIN", Some(&b64(b"root\0alice\0pw"))).unwrap();
        assert_eq!(step, Step::Failed(SaslError::IdentitySwitch));
        assert_eq!(ex.user(), Some("alice"));
        let cases: &[(&str, Step)] = &[
            ("*", Step::Failed(SaslError::Cancelled)),
            (
                "not base64!",
                Step::Failed(SaslError::Malformed("invalid base64")),
            ),
            (
                "YWJj",
                Step::Failed(SaslError::Malformed(
                    "PLAIN needs authzid NUL authcid NUL password",
                )),
            ),
            (
                "=",
                Step::Failed(SaslError::Malformed(
                    "PLAIN needs authzid NUL authcid NUL password",
                )),
            ),
        ];
        for (line, want) in cases {
            let (mut ex, _) = Exchange::start("PLAIN", None).unwrap();
            assert_eq!(&ex.respond(line), want, "{line}");
        }
    }

    #[test]
    fn login() {
        let (mut ex, step) = Exchange::start("LOGIN", None).unwrap();
        assert_eq!(step, Step::Challenge(USERNAME));
        assert_eq!(ex.respond(&b64(b"bob")), Step::Challenge(PASSWORD));
        assert_eq!(
            ex.respond(&b64(b"hunter2")),
            Step::Done {
                user: "bob".into(),
                password: b"hunter2".to_vec()
            }
        );
        let (mut ex, step) = Exchange::start("login", Some(&b64(b"bob"))).unwrap();
        assert_eq!(step, Step::Challenge(PASSWORD));
        assert_eq!(ex.respond("*"), Step::Failed(SaslError::Cancelled));
        assert!(Exchange::start("CRAM-MD5", None).is_none());
    }
}
