use std::os::unix::fs::FileExt;

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("mxrelay-outbox-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn put(w: &mut Writer, time: u64, text: &str) {
    w.append(&record(time, text.as_bytes())).unwrap();
}

fn texts(b: &Batch) -> Vec<String> {
    b.events
        .iter()
        .map(|e| String::from_utf8(e.clone()).unwrap())
        .collect()
}

#[test]
fn written_read_committed() {
    let d = Dir::new("basic");
    let (mut w, mut r, shared) = open(&d.0).unwrap();
    assert!(r.next(10, u64::MAX, 0).unwrap().events.is_empty());
    put(&mut w, 1, "a");
    put(&mut w, 2, "b");
    // Not published yet: the reader does not see it.
    assert!(r.next(10, u64::MAX, 0).unwrap().events.is_empty());
    assert_eq!(w.publish(), 2);
    assert_eq!(shared.lock().events, 2);
    put(&mut w, 3, "c");
    w.publish();
    let b = r.next(2, u64::MAX, 0).unwrap();
    assert_eq!(texts(&b), ["a", "b"]);
    // Not committed: read again.
    let b = r.next(2, u64::MAX, 0).unwrap();
    assert_eq!(texts(&b), ["a", "b"]);
    assert_eq!(r.commit(&b).unwrap(), 2);
    let b = r.next(10, u64::MAX, 0).unwrap();
    assert_eq!(texts(&b), ["c"]);
    r.commit(&b).unwrap();
    let p = shared.lock();
    assert_eq!((p.events, p.bytes), (0, 0));
}

#[test]
fn byte_limit_keeps_at_least_one_event() {
    let d = Dir::new("bytes");
    let (mut w, mut r, _) = open(&d.0).unwrap();
    put(&mut w, 1, "aaaa");
    put(&mut w, 1, "bbbb");
    put(&mut w, 1, "cccc");
    w.publish();
    assert_eq!(texts(&r.next(10, 2, 0).unwrap()), ["aaaa"]);
    assert_eq!(texts(&r.next(10, 8, 0).unwrap()), ["aaaa", "bbbb"]);
}

#[test]
fn old_events_at_the_head_are_skipped_on_their_own() {
    let d = Dir::new("age");
    let (mut w, mut r, shared) = open(&d.0).unwrap();
    put(&mut w, 10, "old1");
    put(&mut w, 20, "old2");
    put(&mut w, 100, "new");
    put(&mut w, 30, "late-but-behind-a-new-one");
    w.publish();
    let b = r.next(10, u64::MAX, 50).unwrap();
    assert_eq!((b.expired, b.events.len()), (2, 0));
    assert_eq!(r.commit(&b).unwrap(), 2);
    let b = r.next(10, u64::MAX, 50).unwrap();
    assert_eq!(b.expired, 0);
    assert_eq!(texts(&b), ["new", "late-but-behind-a-new-one"]);
    r.commit(&b).unwrap();
    assert_eq!(shared.lock().events, 0);
}

#[test]
fn a_restart_resumes_at_the_offset_and_counts_what_waits() {
    let d = Dir::new("restart");
    {
        let (mut w, mut r, _) = open(&d.0).unwrap();
        for t in ["a", "b", "c", "d"] {
            put(&mut w, 1, t);
        }
        w.publish();
        w.sync().unwrap();
        let b = r.next(1, u64::MAX, 0).unwrap();
        r.commit(&b).unwrap();
        // "b" in flight when the process dies: not committed.
        assert_eq!(texts(&r.next(1, u64::MAX, 0).unwrap()), ["b"]);
    }
    let (mut w, mut r, shared) = open(&d.0).unwrap();
    assert_eq!(r.count().unwrap(), 3);
    assert_eq!(shared.lock().events, 3);
    put(&mut w, 2, "e");
    w.publish();
    assert_eq!(shared.lock().events, 4);
    let b = r.next(10, u64::MAX, 0).unwrap();
    assert_eq!(texts(&b), ["b", "c", "d", "e"]);
    r.commit(&b).unwrap();
    // The old segment is gone once passed.
    assert_eq!(segments(&d.0).unwrap().len(), 1);
}

#[test]
fn a_torn_record_ends_its_segment_only() {
    let d = Dir::new("torn");
    {
        let (mut w, _, _) = open(&d.0).unwrap();
        put(&mut w, 1, "whole");
        w.publish();
        // A crash in the middle of the next append.
        let rec = record(1, b"torn-in-half");
        w.file.write_all_at(&rec[..rec.len() - 3], w.at.at).unwrap();
    }
    {
        let (mut w, _, _) = open(&d.0).unwrap();
        put(&mut w, 1, "after");
        w.publish();
    }
    let (mut w, mut r, _) = open(&d.0).unwrap();
    put(&mut w, 1, "newest");
    w.publish();
    assert_eq!(r.count().unwrap(), 2);
    let b = r.next(10, u64::MAX, 0).unwrap();
    assert_eq!(texts(&b), ["whole", "after", "newest"]);
}

#[test]
fn an_append_cut_short_by_a_full_disk_leaves_nothing_in_front_of_the_next() {
    use crate::spool::fsio::fault::{self, Fault};
    let d = Dir::new("full");
    let (mut w, mut r, _) = open(&d.0).unwrap();
    put(&mut w, 1, "before");
    let errno = libc::ENOSPC;
    fault::inject(Fault::Write { errno, kept: 20 });
    let e = w.append(&record(1, b"cut short")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(errno));
    fault::inject(Fault::Disk { errno });
    assert!(w.append(&record(1, b"nothing written")).is_err());
    fault::clear();
    put(&mut w, 1, "after");
    w.publish();
    let b = r.next(10, u64::MAX, 0).unwrap();
    assert_eq!(texts(&b), ["before", "after"]);
    let len = fs::metadata(seg_path(&d.0, w.at.seg)).unwrap().len();
    assert_eq!(len, w.at.at, "nothing past the last whole record");
}

#[test]
fn corrupt_records_are_skipped_with_the_rest_of_their_segment() {
    let d = Dir::new("corrupt");
    {
        let (mut w, _, _) = open(&d.0).unwrap();
        put(&mut w, 1, "first");
        put(&mut w, 1, "second");
        w.publish();
    }
    let seg = segments(&d.0).unwrap()[0];
    let path = seg_path(&d.0, seg);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let (mut w, mut r, _) = open(&d.0).unwrap();
    put(&mut w, 1, "third");
    w.publish();
    assert_eq!(texts(&r.next(10, u64::MAX, 0).unwrap()), ["first", "third"]);
}

#[test]
fn segments_rotate_and_are_deleted_behind_the_reader() {
    let d = Dir::new("rotate");
    let (mut w, mut r, shared) = open_sized(&d.0, 64).unwrap();
    for i in 0..20 {
        put(&mut w, 1, &format!("event-{i:02}-padding"));
    }
    w.publish();
    assert!(segments(&d.0).unwrap().len() > 5);
    let mut got = Vec::new();
    loop {
        let b = r.next(3, u64::MAX, 0).unwrap();
        if b.events.is_empty() {
            break;
        }
        got.extend(texts(&b));
        r.commit(&b).unwrap();
    }
    let want: Vec<String> = (0..20).map(|i| format!("event-{i:02}-padding")).collect();
    assert_eq!(got, want);
    assert_eq!(segments(&d.0).unwrap().len(), 1);
    assert_eq!(shared.lock().events, 0);
}

#[test]
fn an_unreadable_offset_resends_from_the_oldest_segment() {
    let d = Dir::new("offset");
    {
        let (mut w, mut r, _) = open(&d.0).unwrap();
        put(&mut w, 1, "a");
        put(&mut w, 1, "b");
        w.publish();
        let b = r.next(1, u64::MAX, 0).unwrap();
        r.commit(&b).unwrap();
    }
    assert_eq!(read_offset(&d.0).map(|p| p.at), Some(17));
    fs::write(d.0.join(OFFSET_FILE), b"garbage").unwrap();
    let (_w, mut r, _) = open(&d.0).unwrap();
    assert_eq!(texts(&r.next(10, u64::MAX, 0).unwrap()), ["a", "b"]);
}
