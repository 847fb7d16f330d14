use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::slot::HEADER_LEN;
use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxrelay-unit-{name}-{}", id::new_id()));
    fs::create_dir_all(&d).unwrap();
    d
}

fn env(id: &str) -> Envelope {
    Envelope::sample(id, &["x@y.test"])
}

fn commit(spool: &Spool, body: &[u8]) -> (Envelope, Place) {
    let mut inc = spool.create();
    inc.write_all(body).unwrap();
    let mut e = env(&inc.id.clone());
    e.size = body.len() as u64;
    let place = spool.commit(inc, &e).unwrap();
    (e, place)
}

/// Everything recovery finds, sorted by id, as the relay's ledger takes it (a second
/// slot with the same id is refused).
fn recover(spool: &Spool) -> Vec<Envelope> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    spool
        .begin_recovery()
        .unwrap()
        .run(spool, |f| {
            if !seen.insert(f.env.id.clone()) {
                return false;
            }
            found.push(f.env);
            true
        })
        .unwrap();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// A spool whose messages all get slot files.
fn without_cells(root: &Path) -> Spool {
    let mut spool = Spool::open(root).unwrap();
    spool.keep.cells = 0;
    spool
}

/// A spool with cells, or one whose messages all get slot files.
fn open_with(root: &Path, cells: bool) -> Spool {
    match cells {
        true => Spool::open(root).unwrap(),
        false => without_cells(root),
    }
}

fn at(spool: &Spool, place: Place) -> Location {
    match place.slot {
        SlotRef::Cell(k) => Location {
            path: spool.queue.join(CELLS_FILE),
            base: k as u64 * CELL,
        },
        SlotRef::File(n) => Location {
            path: spool.slot_path(n),
            base: 0,
        },
    }
}

fn read_slot(at: &Location, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    let n = slot::read_full_at(&File::open(&at.path).unwrap(), &mut bytes, at.base).unwrap();
    bytes.truncate(n);
    bytes
}

fn write_slot(at: &Location, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(&at.path).unwrap();
    file.write_all_at(bytes, at.base).unwrap();
}

fn holds(at: &Location, id: &str) -> bool {
    slot::holds(&File::open(&at.path).unwrap(), at.base, id).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn listed(root: &Path) -> Vec<Envelope> {
    let mut out = Vec::new();
    list_each(&root.join("queue"), |_, e| out.push(e)).unwrap();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

#[test]
fn commit_recover_record_remove() {
    let root = temp_dir("spool");
    let spool = Spool::open(&root).unwrap();
    let (e, place) = commit(&spool, b"Subject: hi\r\n\r\nbody\r\n");
    // One cell: header, message, envelope.
    let loc = at(&spool, place);
    assert_eq!(loc.path, root.join("queue/cells"));
    let stored = read_slot(&loc, CELL as usize);
    assert!(stored.starts_with(format!("mxrelay-slot 1 L {} 21 ", e.id).as_bytes()));
    assert_eq!(
        &stored[HEADER_LEN..HEADER_LEN + 21],
        b"Subject: hi\r\n\r\nbody\r\n"
    );
    let end = HEADER_LEN + 21 + e.encode().len();
    assert_eq!(&stored[HEADER_LEN + 21..end], &e.encode()[..]);
    // An unfinished message is a free slot; stray and damaged files are quarantined.
    let mut stray = spool.create();
    stray.write_all(&[b'p'; 300_000]).unwrap();
    drop(stray);
    fs::write(root.join("queue/notes.txt"), b"?").unwrap();
    fs::write(
        root.join("queue/0000000000000002-0000.env"),
        b"version: 1\n",
    )
    .unwrap();
    let (other, other_place) = commit(&spool, b"Subject: other\r\n\r\nx\r\n");
    let other_at = at(&spool, other_place);
    let mut bytes = read_slot(&other_at, HEADER_LEN + 4);
    bytes[HEADER_LEN + 3] ^= 1;
    write_slot(&other_at, &bytes);
    let spool = Spool::open(&root).unwrap();
    assert_eq!(recover(&spool), vec![e.clone()]);
    assert!(root.join("corrupt/notes.txt").exists());
    assert!(root.join("corrupt/0000000000000002-0000.env").exists());
    let cell = format!("cell-{}", other_at.base / CELL);
    let reason = fs::read_to_string(root.join(format!("corrupt/{cell}.reason"))).unwrap();
    assert!(reason.contains("checksum"), "{reason}");
    let kept = fs::read(root.join(format!("corrupt/{cell}"))).unwrap();
    assert!(kept.starts_with(&bytes), "the damaged cell is kept");
    assert!(!holds(&other_at, &other.id), "its cell is free");
    assert_eq!(
        spool.read_headers(place, (e.size, e.head), 1000).unwrap(),
        b"Subject: hi\r\n"
    );
    // A state record overrides the envelope as committed, for recovery, loading and listing,
    // and it takes no new file.
    let before = names(&root.join("queue"));
    let mut updated = e.clone();
    updated.attempts = 3;
    updated.next_attempt = 99;
    updated.last_error = "451 later".into();
    updated.recipients[0].state = RcptState::Delivered;
    spool.record(place, 1, &updated).unwrap();
    assert_eq!(spool.load(place, &e.id).unwrap(), (updated.clone(), 1));
    assert_eq!(names(&root.join("queue")), before);
    assert_eq!(recover(&Spool::open(&root).unwrap()), vec![updated.clone()]);
    assert_eq!(listed(&root), vec![updated.clone()]);
    // Removed: the cell is marked free and reused for the next message, no file created.
    assert!(holds(&loc, &e.id));
    spool.remove(place).unwrap();
    spool.mark_freed_cells(Duration::ZERO);
    assert!(!holds(&loc, &e.id));
    assert!(listed(&root).is_empty());
    let (e2, place2) = commit(&spool, b"y");
    assert_eq!(names(&root.join("queue")), before);
    assert_eq!(at(&spool, place2), loc, "the lowest free cell");
    // The old message's state record in the reused cell is not the new one's.
    assert_eq!(spool.load(place2, &e2.id).unwrap(), (e2.clone(), 0));
    assert_eq!(recover(&Spool::open(&root).unwrap()), vec![e2]);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_torn_state_record_leaves_the_one_before() {
    for cells in [true, false] {
        let root = temp_dir("torn-state");
        let spool = open_with(&root, cells);
        let (e, place) = commit(&spool, b"torn");
        let mut first = e.clone();
        first.attempts = 1;
        spool.record(place, 1, &first).unwrap();
        let mut second = e.clone();
        second.attempts = 2;
        second.recipients[0].state = RcptState::Delivered;
        // Record 2 cannot be written (a full disk), or synced: record 1 stands, and record 2
        // is written again, with the same number, once it works.
        let errno = libc::ENOSPC;
        fsio::fault::inject(fsio::fault::Fault::Write { errno, kept: 30 });
        assert!(spool.record(place, 2, &second).is_err());
        assert_eq!(spool.load(place, &e.id).unwrap(), (first.clone(), 1));
        fsio::fault::inject(fsio::fault::Fault::Sync { errno: libc::EIO });
        assert!(spool.record(place, 2, &second).is_err());
        fsio::fault::clear();
        spool.record(place, 2, &second).unwrap();
        assert_eq!(spool.load(place, &e.id).unwrap(), (second.clone(), 2));
        // The write of record 2 cut short: record 1 is the state.
        let loc = at(&spool, place);
        let record_at = loc.base + place.layout.offset(2);
        let f = OpenOptions::new().write(true).open(&loc.path).unwrap();
        f.write_all_at(b"garbage", record_at + 40).unwrap();
        assert_eq!(spool.load(place, &e.id).unwrap(), (first.clone(), 1));
        assert_eq!(recover(&Spool::open(&root).unwrap()), vec![first]);
        fs::remove_dir_all(root).unwrap();
    }
}

#[test]
fn recovery_finds_thousands_in_every_state_once() {
    let root = temp_dir("thousands");
    let mut spool = Spool::open(&root).unwrap();
    spool.keep.cells = 2500;
    let mut expect = Vec::new();
    let mut removed = Vec::new();
    for i in 0..3000u32 {
        // Every sixth is too large for a cell; past 2500 cells, all get slot files.
        let body = match i % 6 {
            5 => vec![b'L'; 260_000],
            _ => format!("message {i}\r\n").into_bytes(),
        };
        let (mut e, place) = commit(&spool, &body);
        match i % 5 {
            0 => removed.push(place),
            1 => {
                e.attempts = 1;
                e.next_attempt = 1000 + i as u64;
                spool.record(place, 1, &e).unwrap();
                expect.push(e);
            }
            2 => {
                e.held = true;
                spool.record(place, 1, &e).unwrap();
                e.held = false;
                e.attempts = 4;
                spool.record(place, 2, &e).unwrap();
                expect.push(e);
            }
            _ => expect.push(e),
        }
    }
    for place in removed {
        spool.remove(place).unwrap();
    }
    spool.mark_freed_cells_at_once();
    // An unfinished message in a slot file.
    let mut unfinished = spool.create();
    unfinished.write_all(&[b'u'; 300_000]).unwrap();
    drop(unfinished);
    expect.sort_by(|a, b| a.id.cmp(&b.id));
    let spool = Spool::open(&root).unwrap();
    assert_eq!(recover(&spool), expect);
    assert!(names(&root.join("corrupt")).is_empty());
    // Free cells found are reused; new slot file numbers do not collide.
    let (_, place) = commit(&spool, b"again");
    assert!(matches!(place.slot, SlotRef::Cell(k) if k < 2500));
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn new_mail_during_recovery_goes_past_the_scanned_cells() {
    let root = temp_dir("during");
    let spool = Spool::open(&root).unwrap();
    let (a, _) = commit(&spool, b"a");
    let spool = Spool::open(&root).unwrap();
    let recovery = spool.begin_recovery().unwrap();
    let (b, place) = commit(&spool, b"b");
    assert_eq!(
        place.slot,
        SlotRef::Cell(1),
        "a new cell, not one being scanned"
    );
    let mut found = Vec::new();
    recovery
        .run(&spool, |f| {
            found.push(f.env);
            true
        })
        .unwrap();
    assert_eq!(found, vec![a]);
    assert_eq!(listed(&root).len(), 2);
    drop(b);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn an_envelope_of_an_earlier_version_is_recorded_in_place_and_removed() {
    let root = temp_dir("legacy");
    let spool = Spool::open(&root).unwrap();
    let (e, place) = commit(&spool, b"old");
    let mut newer = e.clone();
    newer.attempts = 2;
    newer.recipients[0].state = RcptState::Failed;
    let legacy = root.join(format!("queue/{}.env", e.id));
    fs::write(&legacy, newer.encode()).unwrap();
    assert_eq!(listed(&root), vec![newer.clone()]);
    let spool = Spool::open(&root).unwrap();
    assert_eq!(recover(&spool), vec![newer.clone()]);
    assert!(!legacy.exists());
    assert_eq!(spool.load(place, &e.id).unwrap(), (newer.clone(), 1));
    assert_eq!(recover(&Spool::open(&root).unwrap()), vec![newer]);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_message_that_fits_a_cell_gets_one_and_a_larger_one_a_slot_file() {
    let root = temp_dir("cells");
    let mut spool = Spool::open(&root).unwrap();
    spool.keep.cells = 2;
    let mut probe = env(&id::new_id());
    probe.size = 200_000; // as many digits as the sizes below
    let env_len = probe.encode().len() as u64;
    // The largest message whose slot, with its state records, fits a cell.
    let room = (0..CELL)
        .rev()
        .find(|&m| Place::new(SlotRef::Cell(0), m, env_len, 1).layout.end() <= CELL)
        .unwrap() as usize;
    let (fits, fits_at) = commit(&spool, &vec![b'f'; room]);
    let (_, larger_at) = commit(&spool, &vec![b'l'; room + 1]);
    assert_eq!(fits_at.slot, SlotRef::Cell(0));
    assert!(matches!(larger_at.slot, SlotRef::File(_)));
    // Past the number of cells, small messages get slot files too.
    let (_, second) = commit(&spool, b"second");
    let (_, third) = commit(&spool, b"third");
    assert_eq!(second.slot, SlotRef::Cell(1));
    assert!(matches!(third.slot, SlotRef::File(_)));
    assert_eq!(names(&root.join("queue")), ["0", "1", "cells"]);
    let mut read = Vec::new();
    let stored = spool.open_message(fits_at).unwrap();
    std::io::Read::read_to_end(&mut stored.reader(fits.size, fits.head), &mut read).unwrap();
    assert_eq!(read, vec![b'f'; room]);
    // Its state records fit too.
    let mut deferred = fits.clone();
    deferred.attempts = 1;
    spool.record(fits_at, 1, &deferred).unwrap();
    spool.record(fits_at, 2, &deferred).unwrap();
    assert_eq!(spool.load(fits_at, &fits.id).unwrap().1, 2);
    assert_eq!(recover(&Spool::open(&root).unwrap()).len(), 4);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_freed_cell_is_marked_after_a_moment_unless_reused_first() {
    let root = temp_dir("marks");
    let spool = Spool::open(&root).unwrap();
    let ((a, a_place), (b, b_place)) = (commit(&spool, b"a"), commit(&spool, b"b"));
    let (a_at, b_at) = (at(&spool, a_place), at(&spool, b_place));
    spool.remove_soon(a_place).unwrap();
    spool.remove_soon(b_place).unwrap();
    // Not yet: a crash now would bring both back.
    let due = spool.mark_freed_cells(Duration::from_secs(60));
    assert!(due.is_some_and(|d| d > Duration::from_secs(59)), "{due:?}");
    assert!(holds(&a_at, &a.id) && holds(&b_at, &b.id));
    // b's cell is reused first: its new message must never get the old one's mark.
    let (c, c_place) = commit(&spool, b"c");
    assert_eq!(at(&spool, c_place), b_at);
    assert_eq!(spool.mark_freed_cells(Duration::ZERO), None);
    assert!(!holds(&a_at, &a.id), "marked free");
    assert!(holds(&b_at, &c.id), "the reused cell keeps its new message");
    // At shutdown nothing will mark them later: from then on a freed cell is marked at once.
    spool.mark_freed_cells_at_once();
    let (d, d_place) = commit(&spool, b"d");
    spool.remove_soon(d_place).unwrap();
    assert!(!holds(&at(&spool, d_place), &d.id));
    // A message removed with `remove` is marked at once.
    let (e, e_place) = commit(&spool, b"e");
    spool
        .marks_at_once
        .store(false, std::sync::atomic::Ordering::SeqCst);
    spool.remove(e_place).unwrap();
    assert!(!holds(&at(&spool, e_place), &e.id));
    assert_eq!(recover(&Spool::open(&root).unwrap()), vec![c]);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_cell_whose_commit_failed_is_reused() {
    let root = temp_dir("cell-fails");
    let spool = Spool::open(&root).unwrap();
    // No queue/ to open the cells file in: the commit fails, and its cell goes back.
    fs::rename(root.join("queue"), root.join("away")).unwrap();
    let mut inc = spool.create();
    inc.write_all(b"lost").unwrap();
    let mut e = env(&inc.id.clone());
    e.size = 4;
    assert!(spool.commit(inc, &e).is_err());
    assert_eq!(spool.alloc().free_cells, [0]);
    assert!(spool.alloc().freed.contains_key(&0));
    fs::rename(root.join("away"), root.join("queue")).unwrap();
    let (next, place) = commit(&spool, b"next");
    assert_eq!(place.slot, SlotRef::Cell(0));
    assert_eq!(recover(&Spool::open(&root).unwrap()), vec![next]);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn freed_cells_are_cut_back_while_the_cells_keep_more_than_their_budget() {
    use std::os::unix::fs::MetadataExt;
    let root = temp_dir("cut");
    let mut spool = Spool::open(&root).unwrap();
    spool.keep.cell_bytes = 250_000;
    let msgs: Vec<(Envelope, Place)> = (0..3).map(|_| commit(&spool, &[b'c'; 100_000])).collect();
    let allocated = || fs::metadata(root.join("queue/cells")).unwrap().blocks() * 512;
    assert!(allocated() >= 300_000, "{}", allocated());
    for (_, place) in &msgs {
        spool.remove(*place).unwrap();
    }
    // Reused at once, a freed cell keeps its blocks; one that stays free is cut back to
    // 64 KiB while the cells keep more than their budget: two of the three here.
    let each = (HEADER_LEN + 100_000 + msgs[0].0.encode().len()) as u64;
    assert_eq!(spool.alloc().extent_total, 3 * each);
    spool.mark_freed_cells(Duration::ZERO);
    let extents = spool.alloc().extents.clone();
    assert_eq!(extents.iter().filter(|&&e| e == 64 * 1024).count(), 2);
    assert!(extents.iter().any(|&e| e > 100_000));
    let total = spool.alloc().extent_total;
    assert_eq!(total, extents.iter().map(|&e| e as u64).sum::<u64>());
    assert!(total <= 250_000, "{total}");
    assert!(allocated() <= total + 8192, "{} > {total}", allocated());
    // A cut cell still takes a message of any size that fits.
    let (again, _) = commit(&spool, &[b'd'; 150_000]);
    // Over the budget, a freed cell that used no more than 64 KiB gives back all it took; a
    // larger one keeps 64 KiB.
    spool.keep.cell_bytes = 0;
    let small: Vec<(Envelope, Place)> = (0..3).map(|_| commit(&spool, b"small")).collect();
    let cell = |p: &Place| match p.slot {
        SlotRef::Cell(k) => k as usize,
        SlotRef::File(_) => panic!("a cell"),
    };
    let before: Vec<u32> = small
        .iter()
        .map(|(_, p)| spool.alloc().extents[cell(p)])
        .collect();
    for (_, place) in &small {
        spool.remove(*place).unwrap();
    }
    spool.mark_freed_cells(Duration::ZERO);
    for ((_, place), was) in small.iter().zip(before) {
        let want = if was as u64 > alloc::CELL_KEPT {
            alloc::CELL_KEPT as u32
        } else {
            0
        };
        assert_eq!(spool.alloc().extents[cell(place)], want, "it was {was}");
    }
    assert_eq!(recover(&Spool::open(&root).unwrap()), vec![again]);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_discarded_cell_is_reused_only_after_a_restart() {
    let root = temp_dir("discard");
    let spool = Spool::open(&root).unwrap();
    let (a, a_place) = commit(&spool, b"a");
    spool.discard(a_place).unwrap();
    assert!(!holds(&at(&spool, a_place), &a.id), "marked free on disk");
    // A delivery may still read it: the next message takes another cell.
    let (b, b_place) = commit(&spool, b"b");
    assert_ne!(b_place.slot, a_place.slot);
    let spool = Spool::open(&root).unwrap();
    assert_eq!(recover(&spool), vec![b]);
    let (_, c_place) = commit(&spool, b"c");
    assert_eq!(c_place.slot, a_place.slot);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_message_in_a_cell_and_in_a_slot_file_is_recovered_once() {
    let root = temp_dir("twice");
    let spool = Spool::open(&root).unwrap();
    let (e, place) = commit(&spool, b"twice");
    let copy = read_slot(&at(&spool, place), CELL as usize);
    fs::write(root.join("queue/7"), &copy).unwrap();
    let spool = Spool::open(&root).unwrap();
    assert_eq!(recover(&spool), vec![e.clone()]);
    assert_eq!(
        names(&root.join("corrupt")),
        [
            format!("{}.slot-7", e.id),
            format!("{}.slot-7.reason", e.id)
        ]
    );
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn pieces_large_and_small_are_stored_in_order() {
    let root = temp_dir("pieces");
    let spool = Spool::open(&root).unwrap();
    let pieces: Vec<Vec<u8>> = vec![
        b"Subject: pieces\r\n\r\n".to_vec(),
        vec![b'L'; 20_000],
        b"small\r\n".to_vec(),
        vec![b'M'; 270_000],
        b"end\r\n".to_vec(),
    ];
    let mut inc = spool.create();
    for (i, p) in pieces.iter().enumerate() {
        if i % 2 == 0 {
            inc.write_all(p).unwrap();
        } else {
            // As the DATA reader writes: into the buffer, then out once it is full.
            inc.fill(|out| out.extend_from_slice(p));
            inc.write_if_full().unwrap();
        }
    }
    let mut e = env(&inc.id.clone());
    let whole = pieces.concat();
    e.size = whole.len() as u64;
    let place = spool.commit(inc, &e).unwrap();
    let spool = Spool::open(&root).unwrap();
    assert_eq!(recover(&spool), vec![e.clone()], "the checksum matches");
    let mut stored = Vec::new();
    let s = spool.open_message(place).unwrap();
    std::io::Read::read_to_end(&mut s.reader(e.size, e.head), &mut stored).unwrap();
    assert_eq!(stored, whole);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_crash_while_a_slot_is_reused_is_caught_by_the_checksum() {
    for cells in [true, false] {
        let root = temp_dir("torn");
        let open = || match cells {
            true => Spool::open(&root).unwrap(),
            false => without_cells(&root),
        };
        let spool = open();
        let (x, place) = commit(&spool, &[b'x'; 5000]);
        let loc = at(&spool, place);
        let old = read_slot(&loc, HEADER_LEN + 6000);
        spool.remove(place).unwrap();
        spool.mark_freed_cells_at_once();
        // The freeing byte never reached the disk: the message comes back (a duplicate).
        write_slot(&loc, &old);
        assert_eq!(recover(&open()), vec![x.clone()]);
        // The slot is being reused when the crash comes: old header, part new content.
        let spool = open();
        recover(&spool);
        spool.remove(place).unwrap();
        let (_, y) = commit(&spool, &[b'y'; 3000]);
        assert_eq!(at(&spool, y), loc);
        let mut torn = read_slot(&loc, HEADER_LEN + 3000);
        torn[..HEADER_LEN].copy_from_slice(&old[..HEADER_LEN]);
        write_slot(&loc, &torn);
        let spool = open();
        assert!(recover(&spool).is_empty());
        assert_eq!(names(&root.join("corrupt")).len(), 2, "cells: {cells}");
        fs::remove_dir_all(root).unwrap();
    }
}

#[test]
fn free_slots_are_kept_within_their_count_bytes_and_open_files() {
    let root = temp_dir("keep");
    let mut spool = without_cells(&root);
    spool.keep = alloc::Keep {
        cells: 0,
        cell_bytes: 0,
        slots: 2,
        bytes: 8_000,
        open: 1,
    };
    let msgs: Vec<(Envelope, Place)> = (0..3).map(|_| commit(&spool, &[b'k'; 5000])).collect();
    let paths: Vec<PathBuf> = msgs.iter().map(|(_, p)| at(&spool, *p).path).collect();
    for (_, place) in &msgs {
        spool.remove(*place).unwrap();
    }
    // The first keeps its blocks; the second would pass the byte budget, so it is cut
    // to nothing; the third is past the count and deleted.
    let len = |p: &PathBuf| fs::metadata(p).map(|m| m.len()).ok();
    assert!(len(&paths[0]).is_some_and(|l| l > 5000));
    assert_eq!(len(&paths[1]), Some(0));
    assert_eq!(len(&paths[2]), None);
    let a = spool.alloc();
    assert_eq!(a.free.len(), 2);
    assert_eq!(a.free_bytes, len(&paths[0]).unwrap());
    let open = a.free.iter().filter(|s| s.file.is_some()).count();
    assert_eq!(open, 1, "only one free slot keeps its file open");
    drop(a);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_slot_shorter_than_its_header_says_is_quarantined() {
    for cells in [true, false] {
        let root = temp_dir("short");
        let spool = match cells {
            true => Spool::open(&root).unwrap(),
            false => without_cells(&root),
        };
        let (_, place) = commit(&spool, &[b's'; 3000]);
        let loc = at(&spool, place);
        OpenOptions::new()
            .write(true)
            .open(&loc.path)
            .unwrap()
            .set_len(1000)
            .unwrap();
        let spool = Spool::open(&root).unwrap();
        assert!(recover(&spool).is_empty());
        let name = match cells {
            true => "cell-0".to_string(),
            false => format!("slot-{}", loc.path.file_name().unwrap().to_string_lossy()),
        };
        let reason = fs::read_to_string(root.join(format!("corrupt/{name}.reason"))).unwrap();
        assert!(reason.contains("shorter than its header says"), "{reason}");
        fs::remove_dir_all(root).unwrap();
    }
}

#[test]
fn big_slots_are_kept_without_their_blocks_and_reused_last() {
    let root = temp_dir("big");
    let spool = without_cells(&root);
    let (_, big) = commit(&spool, &vec![b'b'; 1_100_000]);
    let (_, small) = commit(&spool, b"small");
    let (big_path, small_path) = (at(&spool, big).path, at(&spool, small).path);
    spool.remove(big).unwrap();
    spool.remove(small).unwrap();
    assert_eq!(fs::metadata(&big_path).unwrap().len(), 0);
    let (next, next_at) = commit(&spool, b"next");
    assert_eq!(
        at(&spool, next_at).path,
        small_path,
        "a slot with blocks first"
    );
    let (last, last_at) = commit(&spool, b"last");
    assert_eq!(at(&spool, last_at).path, big_path, "then the emptied one");
    let mut both = vec![next, last];
    both.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(recover(&Spool::open(&root).unwrap()), both);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_batch_records_many_states_and_syncs_once() {
    let root = temp_dir("batch");
    let spool = Spool::open(&root).unwrap();
    let msgs: Vec<(Envelope, Place)> = (0..20)
        .map(|i| commit(&spool, &vec![b'b'; 100 + i]))
        .collect();
    let mut batch = spool.batch();
    for (e, place) in &msgs {
        let mut held = e.clone();
        held.held = true;
        batch.record(*place, 1, &held).unwrap();
    }
    batch.finish().unwrap();
    for (e, place) in &msgs {
        let (loaded, seq) = spool.load(*place, &e.id).unwrap();
        assert!(loaded.held && seq == 1);
    }
    assert!(recover(&Spool::open(&root).unwrap()).iter().all(|e| e.held));
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_header_section_written_last_reads_back_in_order() {
    let head = b"DKIM-Signature: v=1\r\nFrom: a@b.test\r\n\r\n";
    for body_len in [10, 300_000] {
        let root = temp_dir("head-after-body");
        let spool = Spool::open(&root).unwrap();
        let body = vec![b'b'; body_len];
        let mut inc = spool.create();
        inc.write_all(&body).unwrap();
        let after = inc.write_head(head).unwrap();
        // A message still in memory gets its header section in front; one written out
        // already, after its body.
        assert_eq!(
            after,
            if body_len < 1000 {
                0
            } else {
                head.len() as u64
            }
        );
        let mut e = env(&inc.id.clone());
        e.size = (body.len() + head.len()) as u64;
        e.head = after;
        let place = spool.commit(inc, &e).unwrap();
        let mut want = head.to_vec();
        want.extend_from_slice(&body);
        let mut read = Vec::new();
        let stored = spool.open_message(place).unwrap();
        std::io::Read::read_to_end(&mut stored.reader(e.size, e.head), &mut read).unwrap();
        assert_eq!(read, want, "{body_len}");
        assert_eq!(
            spool.read_headers(place, (e.size, e.head), 1000).unwrap(),
            &head[..head.len() - 2]
        );
        drop(spool);
        // Recovery checks the slot as stored and gives the envelope back as written.
        let spool = Spool::open(&root).unwrap();
        assert_eq!(recover(&spool), [e], "{body_len}");
    }
}

/// A message of `body` that fails to commit with `fault`; its id.
fn failed_commit(spool: &Spool, body: &[u8], fault: fsio::fault::Fault) -> (String, io::Error) {
    let mut inc = spool.create();
    inc.write_all(body).unwrap();
    let mut e = env(&inc.id.clone());
    e.size = body.len() as u64;
    fsio::fault::inject(fault);
    let err = spool.commit(inc, &e).unwrap_err();
    fsio::fault::clear();
    (e.id, err)
}

#[test]
fn a_commit_cut_short_by_a_full_disk_is_never_recovered() {
    use fsio::fault::Fault;
    for cells in [true, false] {
        let root = temp_dir("cut-short");
        let open = || open_with(&root, cells);
        let spool = open();
        let (kept, _) = commit(&spool, b"kept");
        // The header and part of the message reach the page cache, then the disk is full.
        let fault = Fault::Write {
            errno: libc::ENOSPC,
            kept: HEADER_LEN + 100,
        };
        let (id, err) = failed_commit(&spool, &[b'z'; 5000], fault);
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "cells: {cells}");
        // A crash now: the part written is not taken for a message (a cell with a header is
        // quarantined: shorter than its header says).
        assert_eq!(recover(&open()), vec![kept.clone()], "cells: {cells}");
        assert!(!listed(&root).iter().any(|e| e.id == id));
        if cells {
            let reason = fs::read_to_string(root.join("corrupt/cell-1.reason")).unwrap();
            assert!(reason.contains("shorter"), "{reason}");
        }
        // No crash: space comes back, and the next message takes the same place.
        let (next, place) = commit(&spool, b"next");
        if cells {
            assert_eq!(place.slot, SlotRef::Cell(1), "the cell is reused");
        }
        let mut want = vec![kept, next];
        want.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(recover(&open()), want, "cells: {cells}");
        fs::remove_dir_all(root).unwrap();
    }
}

#[test]
fn a_slot_whose_sync_failed_is_given_up_and_never_sent() {
    use fsio::fault::Fault;
    for cells in [true, false] {
        let root = temp_dir("sync-fails");
        let open = || open_with(&root, cells);
        let spool = open();
        let (kept, _) = commit(&spool, b"kept");
        let fault = Fault::Sync { errno: libc::EIO };
        let (id, err) = failed_commit(&spool, b"whole in the page cache", fault);
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        // Not trusted from now on: a cell is set aside (marked free, not reused before a
        // restart), a slot file deleted.
        let (next, place) = commit(&spool, b"next");
        match cells {
            true => assert_eq!(place.slot, SlotRef::Cell(2), "cell 1 is set aside"),
            false => assert_eq!(names(&root.join("queue")).len(), 3, "cells and two slots"),
        }
        assert!(!listed(&root).iter().any(|e| e.id == id));
        let mut want = vec![kept, next];
        want.sort_by(|a, b| a.id.cmp(&b.id));
        let spool = open();
        assert_eq!(recover(&spool), want);
        // After the restart the cell is free for use again.
        if cells {
            let (_, reused) = commit(&spool, b"again");
            assert_eq!(reused.slot, SlotRef::Cell(1));
        }
        fs::remove_dir_all(root).unwrap();
    }
}

#[test]
fn recovery_goes_on_past_a_slot_it_cannot_quarantine() {
    let root = temp_dir("no-quarantine");
    let spool = Spool::open(&root).unwrap();
    let (_, damaged) = commit(&spool, b"damaged");
    let (good, _) = commit(&spool, b"good");
    let loc = at(&spool, damaged);
    let mut bytes = read_slot(&loc, HEADER_LEN + 3);
    bytes[HEADER_LEN + 2] ^= 1;
    write_slot(&loc, &bytes);
    // corrupt/ cannot be written (as on a full disk): the damaged cell stays as it is, neither
    // sent nor reused, and the scan goes on.
    let spool = Spool::open(&root).unwrap();
    fs::rename(root.join("corrupt"), root.join("away")).unwrap();
    assert_eq!(recover(&spool), vec![good.clone()]);
    let (_, next) = commit(&spool, b"next");
    assert_eq!(next.slot, SlotRef::Cell(2), "cell 0 is left alone");
    // The next start quarantines it.
    fs::rename(root.join("away"), root.join("corrupt")).unwrap();
    let spool = Spool::open(&root).unwrap();
    assert_eq!(recover(&spool).len(), 2);
    assert!(root.join("corrupt/cell-0.reason").exists());
    fs::remove_dir_all(root).unwrap();
}
