//! The suppression list's records: `Entry::decode` and `Change::decode` never panic and
//! what they accept encodes back to the same text; the log reader takes any bytes, and the
//! good length it reports is where a whole record ends; times parse without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::suppression::{self, Change, Entry, file};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(e) = Entry::decode(s) {
            assert_eq!(Entry::decode(&e.encode()).as_ref(), Some(&e));
            let _ = suppression::key(&e.address);
        }
        if let Some(c) = Change::decode(s) {
            assert_eq!(Change::decode(&c.encode()).as_ref(), Some(&c));
            let _ = c.key();
        }
        if let Ok(ms) = suppression::parse_time(s) {
            let _ = suppression::format_time(ms);
        }
    }
    if let Ok(scan) = file::scan(data) {
        assert!(scan.good_len <= data.len());
        assert!(scan.good_len == 0 || data[scan.good_len - 1] == b'\n');
        assert!(scan.entries.len() <= scan.records);
    }
});
