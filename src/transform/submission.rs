//! Submission fix-ups (RFC 6409 section 8) for mail from the submission ports and from
//! authenticated clients: add `Date:` and `Message-ID:` when missing, and remove `Bcc:` and
//! `Resent-Bcc:`, so that a blind copy list written into the header by an app never reaches
//! the recipients. Relayed mail from trusted networks on the relay port is left as it is.

use std::time::SystemTime;

use super::head::Field;
use super::{Context, Message, Order, Pass, Transform, TransformError};
use crate::config::Role;

pub struct SubmissionFixups {
    /// Our name, the right-hand side of the Message-IDs we add.
    pub hostname: String,
}

impl Transform for SubmissionFixups {
    fn order(&self) -> Order {
        Order::Submission
    }

    fn begin(&self, cx: &Context) -> Option<Box<dyn Pass>> {
        let submitted = cx.role != Role::Smtp || cx.auth_user.is_some();
        submitted.then(|| {
            Box::new(FixupPass {
                message_id: format!("<{}@{}>", cx.id, self.hostname),
            }) as Box<dyn Pass>
        })
    }
}

struct FixupPass {
    message_id: String,
}

impl Pass for FixupPass {
    fn header(&mut self, msg: &mut Message, _: &Context) -> Result<(), TransformError> {
        let block = &mut msg.block;
        block.remove("Bcc");
        block.remove("Resent-Bcc");
        if block.get("Date").is_none() {
            block.append(Field::new("Date", &crate::date::rfc5322(SystemTime::now())));
        }
        if block.get("Message-ID").is_none() {
            block.append(Field::new("Message-ID", &self.message_id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::header_pass;
    use super::*;

    fn run(role: Role, auth_user: Option<&str>, header: &[u8]) -> Option<Vec<u8>> {
        let fixups = SubmissionFixups {
            hostname: "relay.test".into(),
        };
        let msg = header_pass(&fixups, (role, true, auth_user), header)?;
        Some(msg.block.to_bytes())
    }

    #[test]
    fn submitted_mail_loses_bcc_and_gains_date_and_message_id() {
        let header = b"From: app@b.test\r\nTo: x@y.test\r\nBcc: boss@b.test,\r\n audit@b.test\r\nresent-bcc: r@b.test\r\nSubject: s\r\n\r\n";
        for (role, user) in [
            (Role::Submission, Some("app")),
            (Role::Smtps, Some("app")),
            (Role::Smtp, Some("app")),
        ] {
            let out = String::from_utf8(run(role, user, header).unwrap()).unwrap();
            assert!(!out.to_ascii_lowercase().contains("bcc"), "{out}");
            assert!(out.contains("\r\nDate: "), "{out}");
            assert!(
                out.ends_with("Message-ID: <0006613118200133-0015@relay.test>\r\n\r\n"),
                "{out}"
            );
        }
    }

    #[test]
    fn existing_date_and_message_id_are_kept() {
        let header =
            b"Date: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-Id: <x@app.test>\r\nFrom: a@b.test\r\n\r\n";
        let out = run(Role::Submission, Some("app"), header).unwrap();
        let mut want = b"Received: by relay.test\r\n".to_vec();
        want.extend_from_slice(header);
        assert_eq!(out, want);
    }

    #[test]
    fn relayed_mail_from_the_relay_port_is_left_alone() {
        assert_eq!(run(Role::Smtp, None, b"Bcc: x@y.test\r\n\r\n"), None);
    }
}
