//! The envelope codec: `Envelope::decode` never panics on any bytes (recovery reads whatever
//! is on disk), and whatever it accepts encodes to a record that decodes to the same
//! envelope, up to the one normalisation `encode` makes (control characters in values
//! become spaces), after which encoding is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::spool::Envelope;

fn has_control(e: &Envelope) -> bool {
    let strings = [&e.id, &e.client, &e.helo, &e.sender, &e.last_error, &e.tag];
    strings
        .into_iter()
        .chain(e.recipients.iter().map(|r| &r.address))
        .any(|s| s.chars().any(char::is_control))
}

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::decode(data) else {
        return;
    };
    assert!(!env.id.is_empty() && !env.recipients.is_empty() && env.head <= env.size);
    let bytes = env.encode();
    let again = Envelope::decode(&bytes).expect("an encoded envelope decodes");
    if !has_control(&env) {
        assert_eq!(again, env);
    }
    assert!(!has_control(&again));
    assert_eq!(again.encode(), bytes, "encoding is not stable");
});
