//! The transform stage of the accept pipeline: between the end of DATA and the spool commit,
//! each message passes through an ordered list of transforms that see its header block (held
//! in memory, up to a limit) and its body (streamed through, never held whole). Header rules,
//! submission fix-ups and DKIM signing (always last) are transforms. With none configured the
//! stage is not entered at all, and the message takes the plain path into the spool.

pub mod dkim;
pub mod head;
pub mod headers;
pub mod submission;

use std::sync::Arc;

use crate::config::Role;
use crate::smtp::session::Transaction;
use head::{HeadReader, HeaderBlock, Split};

/// What a transform knows about the message it is given.
pub struct Context<'a> {
    pub id: &'a str,
    pub role: Role,
    /// From a trusted network.
    pub trusted: bool,
    pub auth_user: Option<&'a str>,
    pub tx: &'a Transaction,
}

/// Where a transform runs: stages in this order, and in the order given within one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Order {
    /// Control headers: read (and removed) before anything else looks at the block.
    Control,
    /// The operator's header rules.
    HeaderRules,
    /// RFC 6409 section 8 fix-ups for submitted mail.
    Submission,
    /// Signing, over exactly the bytes that will be stored and sent: always last.
    Signing,
}

/// A configured transform. It looks at each message and says whether it takes part.
pub trait Transform: Send + Sync {
    fn order(&self) -> Order;
    /// The pass over this message, or `None` to leave it alone.
    fn begin(&self, cx: &Context) -> Option<Box<dyn Pass>>;
}

/// The message's header block as the transforms shape it, and what they note about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub block: HeaderBlock,
    pub notes: Notes,
}

/// What transforms tell the rest of the relay about a message (for its events and log).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notes {
    /// The client's tag for the message (a control header), copied into its events.
    pub tag: Option<String>,
    /// One entry per signature added, e.g. `d=example.com s=mail a=rsa-sha256`.
    pub signatures: Vec<String>,
    /// What each recipient's copy gets; with any, signing waits for delivery, after it.
    pub personal: crate::tracking::Personal,
}

/// One transform's pass over one message.
pub trait Pass {
    /// The header block is complete: read or edit it.
    fn header(&mut self, _msg: &mut Message, _cx: &Context) -> Result<(), TransformError> {
        Ok(())
    }
    /// The next piece of the body, as it will be stored.
    fn body(&mut self, _piece: &[u8]) {}
    /// The body has ended: the last edits (a signature is added here).
    fn finish(&mut self, _msg: &mut Message, _cx: &Context) -> Result<(), TransformError> {
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransformError {
    /// The header section is longer than `--max-header-size`.
    HeaderTooLarge,
    /// Policy refuses the message for good.
    Refused(String),
    /// The transform could not do its work now (a key or resource missing): try later.
    Failed(String),
}

impl std::fmt::Display for TransformError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransformError::HeaderTooLarge => f.write_str("header section too large"),
            TransformError::Refused(why) => write!(f, "refused: {why}"),
            TransformError::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// The transform flags, checked.
#[derive(Clone, Debug, Default)]
pub struct TransformConfig {
    /// `--add-header`.
    pub add_headers: Vec<head::Field>,
    /// `--remove-header`.
    pub remove_headers: Vec<String>,
    /// `--max-header-size`.
    pub max_header_size: usize,
    /// `--dkim`.
    pub dkim: Vec<dkim::Spec>,
    /// `--track`, `--unsubscribe` and what the tracking flags make possible.
    pub control: headers::ControlHeaders,
}

impl TransformConfig {
    /// The transforms every message passes: control headers, the header rules, submission
    /// fix-ups and (with keys) DKIM signing. The keys are read now; the signer is returned
    /// too, for reloading them.
    pub fn build(&self, hostname: &str) -> Result<(Transforms, Option<Arc<dkim::Dkim>>), String> {
        let mut list: Vec<Arc<dyn Transform>> = vec![
            Arc::new(self.control),
            Arc::new(submission::SubmissionFixups {
                hostname: hostname.to_string(),
            }),
        ];
        if !self.add_headers.is_empty() || !self.remove_headers.is_empty() {
            list.push(Arc::new(headers::HeaderRules {
                remove: self.remove_headers.clone(),
                add: self.add_headers.clone(),
            }));
        }
        let signer = match self.dkim.is_empty() {
            true => None,
            false => Some(Arc::new(dkim::Dkim::load(&self.dkim)?)),
        };
        if let Some(s) = &signer {
            list.push(s.clone());
        }
        Ok((Transforms::new(list, self.max_header_size), signer))
    }
}

/// The configured transforms, in the order they run.
#[derive(Clone, Default)]
pub struct Transforms {
    list: Vec<Arc<dyn Transform>>,
    header_limit: usize,
}

impl Transforms {
    pub fn new(mut list: Vec<Arc<dyn Transform>>, header_limit: usize) -> Transforms {
        list.sort_by_key(|t| t.order());
        Transforms { list, header_limit }
    }

    /// The stage for one message, or `None` if no transform takes part.
    /// `received`: our trace field, the first of the header block.
    pub fn begin<'a>(&self, cx: Context<'a>, received: &[u8]) -> Option<Stage<'a>> {
        let passes: Vec<Box<dyn Pass>> = self.list.iter().filter_map(|t| t.begin(&cx)).collect();
        if passes.is_empty() {
            return None;
        }
        Some(Stage {
            cx,
            passes,
            head: Some(HeadReader::new(received, self.header_limit)),
            msg: Message::default(),
            error: None,
        })
    }
}

/// One message going through the transforms.
pub struct Stage<'a> {
    cx: Context<'a>,
    passes: Vec<Box<dyn Pass>>,
    /// Reading the header section; `None` once the body has started.
    head: Option<HeadReader>,
    msg: Message,
    error: Option<TransformError>,
}

impl Stage<'_> {
    /// Takes the next bytes of the message (from the DATA reader) and returns the part of
    /// them that is body, to be written out. The header block stays here until `end`.
    pub fn feed<'c>(&mut self, content: &'c [u8]) -> &'c [u8] {
        if self.error.is_some() {
            return &[];
        }
        let Some(head) = self.head.as_mut() else {
            return self.body(content);
        };
        match head.feed(content) {
            Split::Head => &[],
            Split::TooLarge => {
                self.error = Some(TransformError::HeaderTooLarge);
                &[]
            }
            Split::Body(n) => {
                self.header_done();
                self.body(&content[n..])
            }
        }
    }

    fn header_done(&mut self) {
        let Some(head) = self.head.take() else { return };
        self.msg.block = head.finish();
        for pass in &mut self.passes {
            if let Err(e) = pass.header(&mut self.msg, &self.cx) {
                self.error = Some(e);
                return;
            }
        }
    }

    fn body<'c>(&mut self, piece: &'c [u8]) -> &'c [u8] {
        if self.error.is_some() {
            return &[];
        }
        self.body_written(piece);
        piece
    }

    /// Whether the header block is complete (and nothing has gone wrong): from here on all
    /// the message is body, which the caller may write out first and then show the passes
    /// with `body_written`, saving a copy.
    pub fn in_body(&self) -> bool {
        self.head.is_none() && self.error.is_none()
    }

    /// Shows the passes a piece of body that has been written out (only while `in_body`).
    pub fn body_written(&mut self, piece: &[u8]) {
        debug_assert!(self.in_body());
        if !piece.is_empty() {
            for pass in &mut self.passes {
                pass.body(piece);
            }
        }
    }

    /// The message has ended: its header block as it is to be stored (before the body), and
    /// the transforms' notes.
    pub fn end(mut self) -> Result<Message, TransformError> {
        if self.head.is_some() {
            // The whole message was header section.
            self.header_done();
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        for pass in &mut self.passes {
            pass.finish(&mut self.msg, &self.cx)?;
        }
        Ok(self.msg)
    }
}

#[cfg(test)]
pub(crate) mod tests;
