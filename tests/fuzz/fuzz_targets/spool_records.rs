//! The spool's record codecs, on whatever a disk may hold: the slot header, a whole slot as
//! recovery reads it, and the state records. None panics; what they accept encodes back to
//! the same; and a state record made from any envelope fits the room its layout gives it.
#![no_main]

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mxrelay::spool::id::{self, MsgId};
use mxrelay::spool::slot::{self, Header};
use mxrelay::spool::state::{LAST_ERROR_MAX, Layout, Record};
use mxrelay::spool::{Envelope, Kind, RcptState, Recipient};

const ID: &str = "0006452A1B2C3D4E-0001";

/// A scratch file holding the input, as a slot file or a cell would.
fn scratch() -> &'static File {
    static FILE: OnceLock<File> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("mxrelay-fuzz-slot-{}", std::process::id()));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("scratch file");
        let _ = std::fs::remove_file(&path);
        f
    })
}

/// A whole slot, as recovery and the queue listing read it, in a slot file or a cell.
fn read_slot(data: &[u8]) {
    let f = scratch();
    f.set_len(0).unwrap();
    f.write_all_at(data, 0).unwrap();
    for room in [None, Some(mxrelay::spool::CELL)] {
        for verify in [false, true] {
            if let Ok(slot::Content::Live(env, len)) = slot::read(f, 0, room, verify) {
                assert!(env.id.len() == 21 && len <= data.len() as u64);
            }
        }
    }
}

fn state(u: &mut Unstructured) -> Result<RcptState> {
    u.choose(&[
        RcptState::Pending,
        RcptState::Delivered,
        RcptState::Failed,
        RcptState::Suppressed,
    ])
    .copied()
}

/// The structured half: a header, a record and an envelope's record from the input.
fn structured(u: &mut Unstructured) -> Result<()> {
    let id = format!(
        "{:016X}-{:04X}",
        u.arbitrary::<u64>()?,
        u.arbitrary::<u16>()?
    );
    assert!(id::is_valid(&id));
    assert_eq!(MsgId::parse(&id).map(|m| m.to_string()), Some(id.clone()));
    let header = Header {
        state: if u.arbitrary()? {
            slot::State::Live
        } else {
            slot::State::Free
        },
        id: id.clone(),
        msg_len: u.arbitrary()?,
        env_len: u.arbitrary()?,
        crc: u.arbitrary()?,
    };
    assert_eq!(Header::parse(&header.encode()), Some(header));

    // Lengths from a header or a record are whatever the disk says: a whole slot and a
    // record whose lengths run past anything real are refused, not trusted.
    let live = Header {
        state: slot::State::Live,
        id: id.clone(),
        msg_len: u.arbitrary()?,
        env_len: u.int_in_range(0..=(16 << 20) + 1)?,
        crc: u.arbitrary()?,
    };
    let mut bytes = live.encode().to_vec();
    let tail = u.int_in_range(0..=64)?;
    bytes.extend_from_slice(u.bytes(tail)?);
    read_slot(&bytes);
    let body_len: u64 = u.arbitrary()?;
    let seq: u32 = u.arbitrary()?;
    let rec = format!("mxrelay-state 1 {id} {seq} {body_len} 00000000\n0 0 0\nP\n\n");
    assert_eq!(Record::decode(rec.as_bytes(), &id), None);

    let mut env = Envelope::new(id.clone(), Kind::Message);
    env.attempts = u.arbitrary()?;
    env.next_attempt = u.arbitrary()?;
    env.held = u.arbitrary()?;
    env.last_error = u.arbitrary()?;
    let n = u.int_in_range(1..=600)?;
    for _ in 0..n {
        env.recipients.push(Recipient {
            address: "r@x.test".into(),
            state: state(u)?,
        });
    }
    let record = Record::of(&env, u.arbitrary()?);
    assert!(record.last_error.len() <= LAST_ERROR_MAX);
    let bytes = record.encode(&id);
    let layout = Layout::new(u.int_in_range(0..=1 << 30)?, n);
    assert!(
        bytes.len() <= layout.record_len(),
        "a record overflows its room"
    );
    assert_eq!(Record::decode(&bytes, &id).as_ref(), Some(&record));
    let mut applied = env.clone();
    assert!(record.apply(&mut applied));
    assert_eq!(applied.recipients.len(), env.recipients.len());
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    if let Some(h) = Header::parse(data) {
        assert_eq!(Header::parse(&h.encode()).as_ref(), Some(&h));
    }
    if let Some(r) = Record::decode(data, ID) {
        assert_eq!(Record::decode(&r.encode(ID), ID).as_ref(), Some(&r));
    }
    let (a, b) = data.split_at(data.len() / 2);
    let _ = Record::newest([a, b], ID);
    if let Ok(s) = std::str::from_utf8(data)
        && let Some(m) = MsgId::parse(s)
    {
        assert!(id::is_valid(&m.to_string()));
    }

    read_slot(data);
    let _ = structured(&mut Unstructured::new(data));
});
