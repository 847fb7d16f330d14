//! The PROXY protocol parser, on the bytes a connection starts with. Never panics, and keeps
//! the promise its caller relies on: `Incomplete` means every byte so far belongs to the
//! header (more bytes never make it shorter than what was consumed), and a header is decided
//! by its own bytes alone (whatever follows, and however much of it has arrived).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::proxy::{self, MAX_HEADER, Parsed};

fuzz_target!(|data: &[u8]| {
    let full = proxy::parse(data);
    if let Ok(Parsed::Header(h)) = &full {
        assert!(h.len > 0 && h.len <= data.len() && h.len <= MAX_HEADER);
        assert_eq!(proxy::parse(&data[..h.len]), full);
    }
    // Every prefix, as the bytes arrive.
    for k in 0..data.len().min(MAX_HEADER + 1) {
        match proxy::parse(&data[..k]) {
            Ok(Parsed::Incomplete) => match &full {
                Ok(Parsed::Header(h)) => assert!(h.len > k, "a header shorter than consumed"),
                Ok(Parsed::Incomplete) | Err(_) => {}
            },
            Ok(Parsed::Header(h)) => {
                // Decided already: more bytes change nothing.
                assert_eq!(full, Ok(Parsed::Header(h)));
            }
            Err(e) => {
                // Refused already: more bytes cannot make it a header.
                assert!(full.is_err(), "{e} became {full:?}");
            }
        }
    }
});
