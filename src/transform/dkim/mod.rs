//! DKIM signing (RFC 6376; RFC 8463 for Ed25519) as the last transform: each message whose
//! From: domain (or its nearest parent domain) has keys gets one signature per key, over the
//! header block as it will be sent and the body hashed while it streams. Keys are read at
//! start and can be re-read (`reload`) without a restart; a message in flight keeps the keys
//! it started with. The signer is our own on the `openssl` crate (see research/deps.md §4).

pub mod canon;
pub mod from;
pub mod key;
pub mod keygen;
pub mod sign;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::head::HeaderBlock;
use super::{Context, Message, Order, Pass, Transform, TransformError};
use canon::{BodyCanon, BodyHasher};
use from::Author;
pub use key::{Algorithm, Key, parse_spec};

/// One `--dkim` value: domain, selector, key file.
pub type Spec = (String, String, PathBuf);

/// The DKIM signing transform.
pub struct Dkim {
    specs: Vec<Spec>,
    keys: RwLock<Arc<Vec<Key>>>,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dkim")
            .field("keys", &self.describe())
            .finish()
    }
}

impl Dkim {
    /// Reads every key named by `specs` (as `parse_spec` gives them); the first that cannot be
    /// used is the error, naming its file and why.
    pub fn load(specs: &[Spec]) -> Result<Dkim, String> {
        let keys = read_all(specs)?;
        Ok(Dkim {
            specs: specs.to_vec(),
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// Re-reads the key files (e.g. on SIGHUP) and swaps all keys at once; if any fails, the
    /// keys in use stay and the error says which file and why.
    pub fn reload(&self) -> Result<(), String> {
        let keys = read_all(&self.specs)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(())
    }

    /// The keys in use, one `d=DOMAIN s=SELECTOR a=ALGORITHM` each (for the startup log).
    pub fn describe(&self) -> Vec<String> {
        self.current().iter().map(describe).collect()
    }

    fn current(&self) -> Arc<Vec<Key>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn read_all(specs: &[Spec]) -> Result<Vec<Key>, String> {
    let mut keys: Vec<Key> = Vec::with_capacity(specs.len());
    for (domain, selector, path) in specs {
        key::check_name("domain", domain)?;
        key::check_name("selector", selector)?;
        let k = key::read(domain, selector, path)?;
        if keys
            .iter()
            .any(|o| o.domain == k.domain && o.selector == k.selector)
        {
            return Err(format!(
                "DKIM: domain {domain} has selector {selector} twice"
            ));
        }
        keys.push(k);
    }
    Ok(keys)
}

fn describe(k: &Key) -> String {
    format!("d={} s={} a={}", k.domain, k.selector, k.algorithm.name())
}

/// The keys for a From: domain: its own, or else those of its nearest parent that has some.
pub fn keys_for<'k>(keys: &'k [Key], domain: &str) -> Vec<&'k Key> {
    nearest(keys, domain, |k| &k.domain)
}

/// The items (keys, or `--dkim` flags) whose domain is `domain`, or else its nearest parent
/// that has some.
pub fn nearest<'k, T>(items: &'k [T], domain: &str, domain_of: impl Fn(&T) -> &str) -> Vec<&'k T> {
    let mut d = domain.trim_end_matches('.');
    loop {
        let found: Vec<&T> = items
            .iter()
            .filter(|k| domain_of(k).eq_ignore_ascii_case(d))
            .collect();
        if !found.is_empty() {
            return found;
        }
        match d.split_once('.') {
            Some((_, parent)) if !parent.is_empty() => d = parent,
            _ => return Vec::new(),
        }
    }
}

/// The author's domain of a header block, or why there is none to sign for.
fn author(block: &HeaderBlock) -> Author {
    let mut from = block.fields().iter().filter(|f| f.is("From"));
    match (from.next(), from.next()) {
        (None, _) => Author::Unusable("no From: field"),
        (Some(_), Some(_)) => Author::Unusable("several From: fields"),
        (Some(f), None) => from::author(f.value()),
    }
}

/// The keys of the author's domain, or why there are none (for the log).
fn keys_of_author<'k>(keys: &'k [Key], block: &HeaderBlock) -> Result<Vec<&'k Key>, String> {
    match author(block) {
        Author::Domain(d) => {
            let found = keys_for(keys, &d);
            if found.is_empty() {
                return Err(format!("no key for {d}"));
            }
            Ok(found)
        }
        Author::Unusable(why) => Err(why.to_string()),
    }
}

impl Dkim {
    /// The signing of one message whose header block is `block` (the body follows), or
    /// `None`, logged, when its author's domain has no key. `id` names it in the log.
    pub fn start(&self, block: &HeaderBlock, id: &str) -> Option<Signing> {
        Signing::start(self.current(), block, id)
    }
}

/// One message being signed: its body hashed as it streams, then `finish` over the header
/// block as it will be sent.
pub struct Signing {
    /// The keys in use when it started (a reload meanwhile does not change them).
    keys: Arc<Vec<Key>>,
    body: BodyHasher,
}

impl Signing {
    fn start(keys: Arc<Vec<Key>>, block: &HeaderBlock, id: &str) -> Option<Signing> {
        match keys_of_author(&keys, block) {
            Ok(_) => Some(Signing {
                keys,
                body: BodyHasher::new(BodyCanon::Relaxed),
            }),
            Err(why) => {
                log::info!("{id}: not DKIM-signed: {why}");
                None
            }
        }
    }

    /// The next piece of the body, as it will be sent.
    pub fn body(&mut self, piece: &[u8]) {
        self.body.update(piece);
    }

    /// Puts one signature per key on top of `block` (the first key's topmost) and returns
    /// each as `d=DOMAIN s=SELECTOR a=ALGORITHM`. The block must still have the author's
    /// domain the signing started with; if it lost it, nothing is signed.
    pub fn finish(self, block: &mut HeaderBlock, id: &str) -> Result<Vec<String>, String> {
        let keys = match keys_of_author(&self.keys, block) {
            Ok(keys) => keys,
            Err(why) => {
                log::info!("{id}: not DKIM-signed: {why}");
                return Ok(Vec::new());
            }
        };
        let (body_hash, _) = self.body.finish();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut fields = Vec::with_capacity(keys.len());
        for &k in &keys {
            let field = sign::sign(block.fields(), k, &body_hash, now)
                .map_err(|e| format!("DKIM signing ({}): {e}", describe(k)))?;
            fields.push(field);
        }
        for field in fields.into_iter().rev() {
            block.prepend(field);
        }
        let notes: Vec<String> = keys.iter().map(|k| describe(k)).collect();
        for note in &notes {
            log::debug!("{id}: DKIM-signed {note}");
        }
        Ok(notes)
    }
}

impl Transform for Dkim {
    fn order(&self) -> Order {
        Order::Signing
    }

    fn begin(&self, _cx: &Context) -> Option<Box<dyn Pass>> {
        let keys = self.current();
        if keys.is_empty() {
            return None;
        }
        Some(Box::new(DkimPass {
            keys,
            signing: None,
        }))
    }
}

/// One message at accept: the body is hashed only if its From: domain has a key.
struct DkimPass {
    keys: Arc<Vec<Key>>,
    signing: Option<Signing>,
}

impl Pass for DkimPass {
    fn header(&mut self, msg: &mut Message, cx: &Context) -> Result<(), TransformError> {
        if msg.notes.personal.any() {
            log::debug!("{}: DKIM-signed at delivery, per recipient", cx.id);
            return Ok(());
        }
        self.signing = Signing::start(self.keys.clone(), &msg.block, cx.id);
        Ok(())
    }

    fn body(&mut self, piece: &[u8]) {
        if let Some(s) = self.signing.as_mut() {
            s.body(piece);
        }
    }

    fn finish(&mut self, msg: &mut Message, cx: &Context) -> Result<(), TransformError> {
        let Some(signing) = self.signing.take() else {
            return Ok(());
        };
        // The block as it is now (a transform before us may have changed it after its header).
        let notes = signing
            .finish(&mut msg.block, cx.id)
            .map_err(TransformError::Failed)?;
        msg.notes.signatures.extend(notes);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
