//! Tracking tokens: `Keys::verify` never panics on any string, accepts what the keys signed
//! with the claims they were signed with, and accepts no other spelling of it: a token
//! changed anywhere (a character replaced, inserted or removed, cut short or extended) is
//! refused, so the click endpoint never redirects to a URL it did not sign.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mxrelay::tracking::{Claims, Keys, Kind};

#[derive(Arbitrary, Debug)]
struct Input {
    kind: u8,
    queue_id: String,
    recipient: String,
    url: String,
    /// Where to change the token, and how.
    at: u16,
    edit: u8,
    with: u8,
    other_secret: bool,
}

fn keys() -> (Keys, Keys) {
    let old = b"an older secret, still verifying".to_vec();
    let new = b"the current secret that signs!!!".to_vec();
    (
        Keys::new(&[new.clone(), old.clone()]).unwrap(),
        Keys::new(&[old]).unwrap(),
    )
}

fuzz_target!(|data: &[u8]| {
    let (keys, old_keys) = keys();
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = keys.verify(s);
    }
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    // Tokens signed by the older secret still verify while it is listed.
    let signer = if input.other_secret { &old_keys } else { &keys };
    let kind = Kind::ALL[usize::from(input.kind) % 3];
    let token = match kind {
        Kind::Click => signer.click(&input.queue_id, &input.recipient, &input.url),
        Kind::Open => signer.open(&input.queue_id, &input.recipient),
        Kind::Unsubscribe => signer.unsubscribe(&input.queue_id, &input.recipient),
    };
    let Some(token) = token else {
        return;
    };
    // What was signed verifies (unless a field holds what claims may not: control
    // characters), with the claims it was signed with.
    if let Some(claims) = keys.verify(&token) {
        let url = (kind == Kind::Click).then(|| input.url.clone());
        let want = Claims {
            kind,
            queue_id: input.queue_id.clone(),
            recipient: input.recipient.clone(),
            url,
        };
        assert_eq!(claims, want);
    } else {
        let fields = [&input.queue_id, &input.recipient];
        assert!(fields.iter().any(|f| f.chars().any(char::is_control)));
    }

    // Any other spelling is refused.
    let mut bytes = token.clone().into_bytes();
    let at = usize::from(input.at) % (bytes.len() + 1);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=. ";
    let c = alphabet[usize::from(input.with) % alphabet.len()];
    match input.edit % 4 {
        0 if at < bytes.len() => bytes[at] = c,
        1 => bytes.insert(at, c),
        2 if at < bytes.len() => {
            bytes.remove(at);
        }
        _ => bytes.truncate(at),
    }
    let changed = String::from_utf8(bytes).unwrap();
    if changed != token {
        assert_eq!(
            keys.verify(&changed),
            None,
            "{token} changed to {changed} verifies"
        );
    }
});
