use std::sync::{Arc, Mutex};

use super::head::Field;
use super::*;
use crate::smtp::session::BodyType;

pub(super) fn tx() -> Transaction {
    Transaction {
        sender: None,
        declared_size: None,
        body: BodyType::SevenBit,
        smtputf8: false,
        recipients: Vec::new(),
    }
}

fn cx(tx: &Transaction) -> Context<'_> {
    Context {
        id: "0006613118200133-0015",
        role: Role::Submission,
        trusted: false,
        auth_user: Some("app"),
        tx,
    }
}

const RECEIVED: &[u8] = b"Received: by relay.test\r\n";

/// Runs one transform's pass over a message of just `header` (after our `Received:`), as
/// the client `(role, trusted, auth_user)`; `None` if it does not take part.
pub(super) fn header_pass(
    t: &dyn Transform,
    (role, trusted, auth_user): (Role, bool, Option<&str>),
    header: &[u8],
) -> Option<Message> {
    let tx = tx();
    let cx = Context {
        id: "0006613118200133-0015",
        role,
        trusted,
        auth_user,
        tx: &tx,
    };
    let mut pass = t.begin(&cx)?;
    let mut head = HeadReader::new(RECEIVED, 10_000);
    head.feed(header);
    let mut msg = Message {
        block: head.finish(),
        ..Message::default()
    };
    pass.header(&mut msg, &cx).unwrap();
    pass.finish(&mut msg, &cx).unwrap();
    Some(msg)
}

/// Removes a field and adds one, at the header stage.
struct Rules {
    remove: &'static str,
    add: (&'static str, &'static str),
    order: Order,
    log: Arc<Mutex<Vec<String>>>,
}

impl Transform for Rules {
    fn order(&self) -> Order {
        self.order
    }
    fn begin(&self, _: &Context) -> Option<Box<dyn Pass>> {
        Some(Box::new(RulesPass {
            remove: self.remove,
            add: self.add,
            log: self.log.clone(),
        }))
    }
}

struct RulesPass {
    remove: &'static str,
    add: (&'static str, &'static str),
    log: Arc<Mutex<Vec<String>>>,
}

impl Pass for RulesPass {
    fn header(&mut self, msg: &mut Message, _: &Context) -> Result<(), TransformError> {
        let block = &mut msg.block;
        self.log
            .lock()
            .unwrap()
            .push(format!("header {}", self.add.0));
        if self.remove == "Refuse-Me" && block.get("Refuse-Me").is_some() {
            return Err(TransformError::Refused("no".into()));
        }
        block.remove(self.remove);
        block.append(Field::new(self.add.0, self.add.1));
        Ok(())
    }
}

/// Counts the body and signs the final block with the count and a checksum, like DKIM would.
struct Signer {
    log: Arc<Mutex<Vec<String>>>,
}

impl Transform for Signer {
    fn order(&self) -> Order {
        Order::Signing
    }
    fn begin(&self, cx: &Context) -> Option<Box<dyn Pass>> {
        // Signs only authenticated mail.
        cx.auth_user?;
        Some(Box::new(SignerPass {
            body: crc32fast::Hasher::new(),
            len: 0,
            log: self.log.clone(),
        }))
    }
}

struct SignerPass {
    body: crc32fast::Hasher,
    len: usize,
    log: Arc<Mutex<Vec<String>>>,
}

impl Pass for SignerPass {
    fn header(&mut self, _: &mut Message, _: &Context) -> Result<(), TransformError> {
        self.log.lock().unwrap().push("header signer".into());
        Ok(())
    }
    fn body(&mut self, piece: &[u8]) {
        self.body.update(piece);
        self.len += piece.len();
    }
    fn finish(&mut self, msg: &mut Message, _: &Context) -> Result<(), TransformError> {
        let block = &mut msg.block;
        let names: Vec<&str> = block.fields().iter().map(|f| f.name()).collect();
        let value = format!(
            "l={}; c={:08x}; h={}",
            self.len,
            self.body.clone().finalize(),
            names.join(":")
        );
        block.prepend(Field::new("X-Signature", &value));
        msg.notes.signatures.push("d=test".into());
        Ok(())
    }
}

fn transforms(log: &Arc<Mutex<Vec<String>>>, limit: usize) -> Transforms {
    // Given out of order: the signer must still run last.
    Transforms::new(
        vec![
            Arc::new(Signer { log: log.clone() }),
            Arc::new(Rules {
                remove: "Bcc",
                add: ("X-Rule", "1"),
                order: Order::HeaderRules,
                log: log.clone(),
            }),
            Arc::new(Rules {
                remove: "Refuse-Me",
                add: ("X-Fixup", "2"),
                order: Order::Submission,
                log: log.clone(),
            }),
        ],
        limit,
    )
}

/// Runs `message` through the stage in pieces of `piece` bytes: the stored message (block
/// then body) and the most body the stage handed back at once.
fn run(t: &Transforms, message: &[u8], piece: usize) -> (Result<Vec<u8>, TransformError>, usize) {
    let tx = tx();
    let mut stage = t.begin(cx(&tx), RECEIVED).expect("takes part");
    let mut body = Vec::new();
    let mut largest = 0;
    for chunk in message.chunks(piece) {
        let out = stage.feed(chunk);
        largest = largest.max(out.len());
        body.extend_from_slice(out);
    }
    let stored = stage.end().map(|msg| {
        let mut stored = msg.block.to_bytes();
        stored.extend_from_slice(&body);
        stored
    });
    (stored, largest)
}

#[test]
fn no_transform_means_no_stage() {
    let tx = tx();
    assert!(Transforms::default().begin(cx(&tx), RECEIVED).is_none());
    let log = Arc::default();
    let signer_only = Transforms::new(vec![Arc::new(Signer { log })], 1000);
    let anonymous = Context {
        auth_user: None,
        ..cx(&tx)
    };
    assert!(
        signer_only.begin(anonymous, RECEIVED).is_none(),
        "a transform that declines leaves the plain path"
    );
}

#[test]
fn transforms_edit_the_block_in_order_and_sign_last() {
    let log = Arc::default();
    let t = transforms(&log, 1000);
    let message = b"From: a@b.test\r\nBcc: hidden@b.test\r\nSubject: hi\r\n\r\nHello\r\n..dot\r\n";
    let body = b"Hello\r\n..dot\r\n";
    for piece in [1, 3, 7, message.len()] {
        log.lock().unwrap().clear();
        let (stored, _) = run(&t, message, piece);
        let stored = String::from_utf8(stored.unwrap()).unwrap();
        let crc = crc32fast::hash(body);
        assert_eq!(
            stored,
            format!(
                "X-Signature: l={}; c={crc:08x}; h=Received:From:Subject:X-Rule:X-Fixup\r\n\
                 Received: by relay.test\r\nFrom: a@b.test\r\nSubject: hi\r\nX-Rule: 1\r\nX-Fixup: 2\r\n\r\n\
                 Hello\r\n..dot\r\n",
                body.len()
            ),
            "pieces of {piece}"
        );
        assert_eq!(
            *log.lock().unwrap(),
            ["header X-Rule", "header X-Fixup", "header signer"]
        );
    }
}

#[test]
fn a_body_larger_than_the_header_limit_streams_through() {
    let log = Arc::default();
    let limit = 1024;
    let t = transforms(&log, limit);
    let mut message = b"From: a@b.test\r\nSubject: big\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while message.len() < 100 * limit {
        message.extend_from_slice(line);
    }
    let piece = 4096;
    let (stored, largest) = run(&t, &message, piece);
    let stored = stored.unwrap();
    assert!(stored.ends_with(&message[33..]), "body intact");
    assert!(largest <= piece, "the body is handed back piece by piece");
    // Headers only, no body: the block is all of it.
    let (stored, _) = run(&t, b"From: a@b.test\r\nBcc: x@y.test\r\n", 5);
    assert!(
        stored
            .unwrap()
            .ends_with(b"From: a@b.test\r\nX-Rule: 1\r\nX-Fixup: 2\r\n")
    );
}

#[test]
fn a_header_section_over_the_limit_is_refused_and_nothing_more_is_kept() {
    let log = Arc::default();
    let t = transforms(&log, 1024);
    let mut message = Vec::new();
    while message.len() < 4096 {
        message.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    message.extend_from_slice(b"\r\nbody\r\n");
    let (stored, largest) = run(&t, &message, 100);
    assert_eq!(stored, Err(TransformError::HeaderTooLarge));
    assert_eq!(largest, 0, "nothing went out as body");
    // One endless header line, no line end at all.
    let (stored, _) = run(&t, &[b'x'; 5000], 512);
    assert_eq!(stored, Err(TransformError::HeaderTooLarge));
}

#[test]
fn a_refusal_at_the_header_stage_ends_the_message() {
    let log = Arc::default();
    let t = transforms(&log, 1024);
    let (stored, largest) = run(&t, b"Refuse-Me: yes\r\n\r\nbody\r\n", 4);
    assert_eq!(stored, Err(TransformError::Refused("no".into())));
    assert_eq!(largest, 0);
}
