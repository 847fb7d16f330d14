use std::io::{Cursor, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::csv::{export_line, import_line, parse_time};
use super::file::{self, FileStore, OpenError};
use super::pending::{self, Queue};
use super::*;

const NOW: u64 = 1_796_000_000_000;
const DAY: u64 = 86_400_000;

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let p = std::env::temp_dir().join(format!(
            "mxrelay-unit-suppression-{}",
            crate::spool::id::new_id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn log(&self) -> PathBuf {
        self.0.join(file::FILE)
    }

    fn open(&self) -> Suppressions {
        self.open_at(NOW)
    }

    fn open_at(&self, now: u64) -> Suppressions {
        let store = FileStore::open(&self.0, Duration::ZERO).unwrap();
        Suppressions::open(Box::new(store), SuppressionConfig::default(), now).unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entry(address: &str, reason: Reason, expires: Option<u64>) -> Entry {
    Entry {
        address: address.into(),
        reason,
        added: NOW,
        expires,
    }
}

fn addresses(list: &Suppressions, now: u64) -> Vec<String> {
    list.entries(now).into_iter().map(|e| e.address).collect()
}

#[test]
fn domains_ignore_case_local_parts_do_not() {
    let list = Suppressions::in_memory(SuppressionConfig::default());
    let e = entry("John@Example.COM", Reason::Manual, None);
    list.add(vec![e.clone()], NOW).unwrap();
    assert_eq!(list.get("John@example.com", NOW), Some(e.clone()));
    assert_eq!(list.get("John@EXAMPLE.com.", NOW), Some(e));
    assert_eq!(list.get("john@example.com", NOW), None);
    assert_eq!(list.get("other@example.com", NOW), None);
}

#[test]
fn entries_expire_and_can_be_removed() {
    let list = Suppressions::in_memory(SuppressionConfig::default());
    list.add(
        vec![
            entry("a@x.test", Reason::Bounce, Some(NOW + DAY)),
            entry("b@x.test", Reason::Unsubscribe, None),
        ],
        NOW,
    )
    .unwrap();
    assert!(list.get("a@x.test", NOW + DAY - 1).is_some());
    assert!(list.get("a@x.test", NOW + DAY).is_none(), "expired");
    assert_eq!(addresses(&list, NOW + 2 * DAY), ["b@x.test"]);
    assert!(list.remove("b@X.TEST", NOW).unwrap());
    assert!(!list.remove("b@x.test", NOW).unwrap(), "already gone");
    assert!(list.get("b@x.test", NOW).is_none());
}

#[test]
fn the_file_survives_a_restart() {
    let dir = Dir::new();
    {
        let list = dir.open();
        list.add(
            vec![
                entry("a@x.test", Reason::Unsubscribe, None),
                entry("\"john doe\"@x.test", Reason::Manual, Some(NOW + DAY)),
                entry("gone@x.test", Reason::Bounce, Some(NOW + DAY)),
            ],
            NOW,
        )
        .unwrap();
        assert!(list.remove("gone@x.test", NOW).unwrap());
        // A second writer waits for this one.
        assert!(matches!(
            FileStore::open(&dir.0, Duration::ZERO),
            Err(OpenError::Locked)
        ));
    }
    let list = dir.open();
    assert_eq!(
        list.get("\"john doe\"@x.test", NOW),
        Some(entry(
            "\"john doe\"@x.test",
            Reason::Manual,
            Some(NOW + DAY)
        ))
    );
    assert_eq!(addresses(&list, NOW), ["\"john doe\"@x.test", "a@x.test"]);
    // Read without the lock, as `list` and `export` do.
    assert_eq!(file::read(&dir.0, NOW).unwrap().len(), 2);
    drop(list);
    // Past the expiry, the entry is gone at the next start.
    assert_eq!(addresses(&dir.open_at(NOW + DAY), NOW + DAY), ["a@x.test"]);
}

#[test]
fn a_torn_last_record_is_ignored_and_cut_off() {
    let dir = Dir::new();
    dir.open()
        .add(vec![entry("a@x.test", Reason::Manual, None)], NOW)
        .unwrap();
    let whole = std::fs::read(dir.log()).unwrap();
    // A crash in the middle of appending the next record.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.log())
        .unwrap();
    f.write_all(b"1234abcd + 1796000000000 - manual b@x.t")
        .unwrap();
    drop(f);
    let list = dir.open();
    assert_eq!(addresses(&list, NOW), ["a@x.test"]);
    assert_eq!(std::fs::read(dir.log()).unwrap(), whole, "cut off");
    list.add(vec![entry("c@x.test", Reason::Manual, None)], NOW)
        .unwrap();
    drop(list);
    assert_eq!(addresses(&dir.open(), NOW), ["a@x.test", "c@x.test"]);
}

#[test]
fn a_damaged_record_is_skipped_and_the_list_rewritten() {
    let dir = Dir::new();
    dir.open()
        .add(
            vec![
                entry("a@x.test", Reason::Manual, None),
                entry("b@x.test", Reason::Manual, None),
                entry("c@x.test", Reason::Manual, None),
            ],
            NOW,
        )
        .unwrap();
    let mut bytes = std::fs::read(dir.log()).unwrap();
    let at = bytes.windows(8).position(|w| w == b"b@x.test").unwrap();
    bytes[at] = b'z';
    std::fs::write(dir.log(), &bytes).unwrap();
    let list = dir.open();
    assert_eq!(addresses(&list, NOW), ["a@x.test", "c@x.test"]);
    let rewritten = std::fs::read(dir.log()).unwrap();
    assert!(!rewritten.windows(8).any(|w| w == b"z@x.test"));
    drop(list);
    assert_eq!(addresses(&dir.open(), NOW), ["a@x.test", "c@x.test"]);
}

#[test]
fn an_unknown_format_is_refused() {
    let dir = Dir::new();
    std::fs::write(dir.log(), b"mxrelay-suppression 9\n").unwrap();
    let store = FileStore::open(&dir.0, Duration::ZERO).unwrap();
    let opened = Suppressions::open(Box::new(store), SuppressionConfig::default(), NOW);
    assert!(opened.is_err());
    assert!(file::read(&dir.0, NOW).is_err());
}

#[test]
fn the_log_is_compacted_when_it_grows() {
    let dir = Dir::new();
    let list = dir.open();
    list.add(vec![entry("keep@x.test", Reason::Manual, None)], NOW)
        .unwrap();
    assert!(list.remove("keep@x.test", NOW).unwrap());
    list.add(vec![entry("keep@x.test", Reason::Manual, None)], NOW)
        .unwrap();
    // One address replaced 2000 times: dead records pile up, 500 at a time.
    let mut sizes = Vec::new();
    for round in 0..4 {
        let batch: Vec<Entry> = (0..500)
            .map(|i| entry("hot@x.test", Reason::Bounce, Some(NOW + round * 500 + i)))
            .collect();
        list.add(batch, NOW).unwrap();
        sizes.push(std::fs::metadata(dir.log()).unwrap().len());
    }
    // Past 2 × live + 1024 records (the third round) the log was rewritten.
    assert!(sizes[2] < sizes[1] / 100, "{sizes:?}");
    assert!(sizes[3] < sizes[1], "{sizes:?}");
    drop(list);
    let list = dir.open();
    assert_eq!(addresses(&list, NOW), ["hot@x.test", "keep@x.test"]);
    assert_eq!(
        list.get("hot@x.test", NOW).unwrap().expires,
        Some(NOW + 1999)
    );
}

#[test]
fn expired_entries_are_compacted_away_at_start() {
    let dir = Dir::new();
    let list = dir.open();
    let many: Vec<Entry> = (0..1500)
        .map(|i| entry(&format!("u{i}@x.test"), Reason::Bounce, Some(NOW + DAY)))
        .collect();
    list.add(many, NOW).unwrap();
    drop(list);
    let before = std::fs::metadata(dir.log()).unwrap().len();
    let list = dir.open_at(NOW + 2 * DAY);
    assert!(list.is_empty());
    assert!(std::fs::metadata(dir.log()).unwrap().len() < before / 100);
}

#[test]
fn entries_encode_on_one_line() {
    for e in [
        entry("a@x.test", Reason::Unsubscribe, None),
        entry("\"a b\"@x.test", Reason::Bounce, Some(NOW + DAY)),
        entry("ü@bücher.test", Reason::Manual, None),
    ] {
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
    }
    for bad in [
        "",
        "1 - manual",
        "x - manual a@x.test",
        "1 y manual a@x.test",
        "1 - sometimes a@x.test",
        "1 - manual not-an-address",
    ] {
        assert_eq!(Entry::decode(bad), None, "{bad}");
    }
}

#[test]
fn unknown_users_are_told_apart_from_other_failures() {
    for (status, reply, want) in [
        (
            "5.1.1",
            "550 5.1.1 <a@x.test>: Recipient address rejected",
            true,
        ),
        (
            "5.1.1",
            "550-5.1.1 The email account that you tried to reach does not exist",
            true,
        ),
        ("5.1.6", "550 5.1.6 mailbox has moved", true),
        ("5.0.0", "550 User unknown", true),
        ("5.0.0", "550 No such user here", true),
        (
            "5.0.0",
            "550 Requested action not taken: mailbox unavailable",
            true,
        ),
        (
            "5.1.0",
            "550 5.1.0 Address rejected: user does not exist",
            true,
        ),
        (
            "5.1.10",
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found",
            true,
        ),
        ("5.1.10", "556 5.1.10 Recipient address has null MX", false),
        (
            "5.1.0",
            "550 5.1.0 <a@client.test>: Sender address rejected: User unknown in local recipient table",
            false,
        ),
        ("5.1.1", "550 5.1.1 Sender unknown", false),
        ("5.1.2", "550 5.1.2 Host unknown: no such domain", false),
        ("5.2.2", "552 5.2.2 Mailbox full", false),
        (
            "5.2.1",
            "550 5.2.1 The email account that you tried to reach is disabled",
            false,
        ),
        ("5.7.1", "550 5.7.1 User unknown or spam", false),
        (
            "5.0.0",
            "550 mailbox unavailable: message looks like spam",
            false,
        ),
        (
            "5.0.0",
            "550 Service unavailable; client host blocked using an RBL",
            false,
        ),
        ("5.0.0", "554 Transaction failed", false),
        ("4.1.1", "450 4.1.1 user unknown, try later", false),
    ] {
        assert_eq!(is_unknown_user(status, reply), want, "{status} {reply}");
    }
}

#[test]
fn hard_bounces_go_on_the_list_with_an_expiry() {
    let list = Suppressions::in_memory(SuppressionConfig::default());
    list.add(vec![entry("forever@x.test", Reason::Manual, None)], NOW)
        .unwrap();
    let added = list.record_bounces(
        &[
            ("gone@x.test", "5.1.1", "550 5.1.1 no such user"),
            ("full@x.test", "5.2.2", "552 5.2.2 mailbox full"),
            ("forever@x.test", "5.1.1", "550 5.1.1 no such user"),
        ],
        NOW,
    );
    assert_eq!(
        added,
        [entry("gone@x.test", Reason::Bounce, Some(NOW + 30 * DAY))]
    );
    assert_eq!(
        list.get("forever@x.test", NOW).unwrap().reason,
        Reason::Manual
    );
    assert!(list.get("full@x.test", NOW).is_none());
    let off = Suppressions::in_memory(SuppressionConfig {
        bounce_expiry: None,
        ..SuppressionConfig::default()
    });
    let failure = ("gone@x.test", "5.1.1", "550 5.1.1 no such user");
    assert!(off.record_bounces(&[failure], NOW).is_empty());
    assert!(off.is_empty());
}

/// Found by the suppression_records fuzz target: an offset with a character of several
/// bytes where its colon goes was cut inside that character, a panic (of `mxrelay
/// suppression import` on such a CSV line, for one).
#[test]
fn a_time_offset_with_a_wide_character_is_refused() {
    for text in [
        "6122-02-07T17:30:08+0\u{3ff}00",
        "2026-12-07T17:33:08+01\u{e9}0",
    ] {
        assert!(parse_time(text).is_err(), "{text}");
        assert!(import_line(&format!("a@b.test,manual,{text}"), 0).is_err());
    }
}

#[test]
fn times_parse_as_rfc3339_dates_or_unix_seconds() {
    for (text, want) in [
        ("1970-01-01T00:00:00Z", Some(0)),
        ("2026-12-07T17:33:08.123Z", Some(1_796_664_788_123)),
        ("2026-12-07T17:33:08.1Z", Some(1_796_664_788_100)),
        ("2026-12-07T18:33:08+01:00", Some(1_796_664_788_000)),
        ("2026-12-07t17:33:08z", Some(1_796_664_788_000)),
        ("2026-12-07", Some(1_796_601_600_000)),
        ("2024-02-29T00:00:00Z", Some(1_709_164_800_000)),
        ("1796664788", Some(1_796_664_788_000)),
        ("2023-02-29T00:00:00Z", None),
        ("2026-13-01T00:00:00Z", None),
        ("2026-12-07T25:00:00Z", None),
        ("2026-12-07T17:33:08", None),
        ("2026-12-07T17:33Z", None),
        ("yesterday", None),
        ("", None),
    ] {
        assert_eq!(parse_time(text).ok(), want, "{text}");
    }
    assert_eq!(
        parse_time(&format_time(1_796_664_788_123)),
        Ok(1_796_664_788_123)
    );
}

#[test]
fn csv_round_trips_and_plain_lines_import() {
    let entries = [
        entry("a@x.test", Reason::Unsubscribe, None),
        entry("\"x, y\"@x.test", Reason::Bounce, Some(NOW + DAY)),
    ];
    for e in &entries {
        let line = export_line(e);
        assert_eq!(import_line(&line, 0), Ok(Some(e.clone())), "{line}");
    }
    assert_eq!(
        export_line(&entries[1]),
        "\"\"\"x, y\"\"@x.test\",bounce,2026-11-30T00:53:20.000Z,2026-12-01T00:53:20.000Z"
    );
    let plain = import_line("  b@x.test\r\n", NOW).unwrap().unwrap();
    assert_eq!(plain, entry("b@x.test", Reason::Manual, None));
    let bracketed = import_line("<b@x.test>,unsubscribe", NOW).unwrap().unwrap();
    assert_eq!(bracketed, entry("b@x.test", Reason::Unsubscribe, None));
    for skipped in ["", "   ", "# a comment", "address,reason,added,expires"] {
        assert_eq!(import_line(skipped, NOW), Ok(None), "{skipped:?}");
    }
    for bad in [
        "not an address",
        "a@x.test,sometimes",
        "a@x.test,manual,yesterday",
        "a@x.test,manual,,never",
        "a@x.test,manual,,,extra",
        "\"a@x.test",
    ] {
        assert!(import_line(bad, NOW).is_err(), "{bad}");
    }
}

#[test]
fn the_control_socket_requests_change_the_list() {
    let list = Suppressions::in_memory(SuppressionConfig::default());
    let entries = [
        entry("a@x.test", Reason::Unsubscribe, None),
        entry("\"a b\"@x.test", Reason::Manual, Some(u64::MAX)),
    ];
    let request = remote::add_request(&entries);
    let (first, rest) = request.split_once('\n').unwrap();
    let verb = first.strip_prefix("SUPPRESSION ").unwrap();
    let mut more = Cursor::new(rest.as_bytes());
    assert_eq!(remote::serve(verb, &mut more, &list), Ok("added 2".into()));
    assert_eq!(list.len(), 2);
    let remove = remote::remove_request("\"a b\"@x.test");
    let verb = remove.trim_end().strip_prefix("SUPPRESSION ").unwrap();
    let mut none = Cursor::new(&b""[..]);
    assert!(remote::serve(verb, &mut none, &list).is_ok());
    assert!(remote::serve(verb, &mut none, &list).is_err(), "not listed");
    for bad in ["ADD 0", "ADD 2", "ADD x", "REMOVE nobody", "FLUSH"] {
        let mut short = Cursor::new(&b"1 - manual a@x.test\n"[..]);
        assert!(remote::serve(bad, &mut short, &list).is_err(), "{bad}");
    }
    assert_eq!(list.len(), 1);
}

#[test]
fn changes_learnt_are_taken_only_where_they_change_something() {
    let list = Suppressions::in_memory(SuppressionConfig::default());
    let a = entry("a@x.test", Reason::Manual, None);
    list.add(vec![a.clone()], NOW).unwrap();
    let b = entry("b@x.test", Reason::Unsubscribe, None);
    let taken = list.learn(
        Learnt::Changes(vec![
            // Already so, or not there: nothing to do.
            Change::Add(a.clone()),
            Change::Remove("c@x.test".into()),
            // In order: b comes and goes, then comes back as something else.
            Change::Add(b.clone()),
            Change::Remove("b@X.TEST".into()),
            Change::Remove("b@x.test".into()),
            Change::Add(entry("b@x.test", Reason::Bounce, Some(NOW + DAY))),
        ]),
        NOW,
    );
    assert_eq!(taken.unwrap(), 3);
    assert_eq!(addresses(&list, NOW), ["a@x.test", "b@x.test"]);
    assert_eq!(list.get("b@x.test", NOW).unwrap().reason, Reason::Bounce);
    assert_eq!(list.learn(Learnt::Changes(vec![]), NOW).unwrap(), 0);
}

#[test]
fn the_whole_list_learnt_replaces_what_is_in_effect() {
    let list = Suppressions::in_memory(SuppressionConfig::default());
    list.add(
        vec![
            entry("same@x.test", Reason::Manual, None),
            entry("changed@x.test", Reason::Manual, None),
            entry("gone@x.test", Reason::Manual, None),
            entry("expired@x.test", Reason::Bounce, Some(NOW - 1)),
        ],
        NOW,
    )
    .unwrap();
    let all = vec![
        entry("same@x.test", Reason::Manual, None),
        entry("changed@X.test", Reason::Unsubscribe, None),
        entry("new@x.test", Reason::Bounce, Some(NOW + DAY)),
        // Expired there too: nothing to take.
        entry("old@x.test", Reason::Bounce, Some(NOW - 1)),
    ];
    // Changed (replaced), gone (removed), new (added); the rest as they are.
    assert_eq!(list.learn(Learnt::All(all.clone()), NOW).unwrap(), 3);
    assert_eq!(
        addresses(&list, NOW),
        ["changed@X.test", "new@x.test", "same@x.test"]
    );
    assert_eq!(list.learn(Learnt::All(all), NOW).unwrap(), 0, "in step");
}

#[test]
fn changes_made_here_wait_in_the_spool_until_the_store_has_them() {
    let dir = Dir::new();
    let mut store = FileStore::open(&dir.0, Duration::ZERO).unwrap();
    let queue = store.share().unwrap();
    let list = Suppressions::open(Box::new(store), SuppressionConfig::default(), NOW).unwrap();
    list.add(
        vec![
            entry("a@x.test", Reason::Unsubscribe, None),
            entry("b@x.test", Reason::Manual, None),
        ],
        NOW,
    )
    .unwrap();
    assert!(list.remove("a@x.test", NOW).unwrap());
    // The latest change per address, in the order they were made.
    let waiting: Vec<Change> = queue.waiting().into_iter().map(|w| w.change).collect();
    assert_eq!(
        waiting,
        [
            Change::Add(entry("b@x.test", Reason::Manual, None)),
            Change::Remove("a@x.test".into()),
        ]
    );
    // Learnt for an address still waiting: dropped (the change made here is newer). Others
    // are taken, written to the log and not queued.
    let taken = list.learn(
        Learnt::Changes(vec![
            Change::Add(entry("a@x.test", Reason::Bounce, None)),
            Change::Add(entry("c@x.test", Reason::Bounce, None)),
        ]),
        NOW,
    );
    assert_eq!(taken.unwrap(), 1);
    assert_eq!(addresses(&list, NOW), ["b@x.test", "c@x.test"]);
    assert_eq!(queue.len(), 2);
    drop(list);
    drop(queue);

    // The queue outlives a restart; the log has every change.
    assert_eq!(addresses(&dir.open(), NOW), ["b@x.test", "c@x.test"]);
    let mut store = FileStore::open(&dir.0, Duration::ZERO).unwrap();
    let queue = store.share().unwrap();
    let waiting = queue.waiting();
    assert_eq!(waiting.len(), 2);
    let list = Suppressions::open(Box::new(store), SuppressionConfig::default(), NOW).unwrap();

    // Confirmed: out of the queue, unless a newer change came meanwhile.
    list.add(vec![entry("b@x.test", Reason::Unsubscribe, None)], NOW)
        .unwrap();
    queue.confirm(&waiting).unwrap();
    let left: Vec<Change> = queue.waiting().into_iter().map(|w| w.change).collect();
    assert_eq!(
        left,
        [Change::Add(entry("b@x.test", Reason::Unsubscribe, None))]
    );
    assert_eq!(
        pending::read(&dir.0).unwrap(),
        left,
        "the file holds what is left"
    );
    queue.confirm(&queue.waiting()).unwrap();
    assert!(queue.is_empty());
    assert_eq!(
        std::fs::read(dir.0.join(pending::FILE)).unwrap(),
        b"mxrelay-suppression 1\n"
    );
    drop(list);

    // No longer shared: the queue and the record of the store joined go.
    queue.set_joined("e1").unwrap();
    assert_eq!(queue.joined().as_deref(), Some("e1"));
    drop(queue);
    let mut store = FileStore::open(&dir.0, Duration::ZERO).unwrap();
    store.unshare().unwrap();
    assert!(!dir.0.join(pending::FILE).exists());
    assert!(!dir.0.join(pending::JOINED).exists());
    let list = Suppressions::open(Box::new(store), SuppressionConfig::default(), NOW).unwrap();
    list.add(vec![entry("d@x.test", Reason::Manual, None)], NOW)
        .unwrap();
    assert!(!dir.0.join(pending::FILE).exists(), "nothing queued");
}

#[test]
fn a_change_queued_just_before_a_crash_counts() {
    let dir = Dir::new();
    let mut store = FileStore::open(&dir.0, Duration::ZERO).unwrap();
    store.share().unwrap();
    let list = Suppressions::open(Box::new(store), SuppressionConfig::default(), NOW).unwrap();
    list.add(vec![entry("a@x.test", Reason::Manual, None)], NOW)
        .unwrap();
    drop(list);
    // Queued, then the crash before the log was written.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&dir.0).unwrap();
    let queue = Queue::open(&dir.0, (meta.uid(), meta.gid()))
        .unwrap()
        .unwrap();
    let late = entry("late@x.test", Reason::Unsubscribe, None);
    queue.add(&[Change::Add(late.clone())]).unwrap();
    queue.add(&[Change::Remove("a@x.test".into())]).unwrap();
    drop(queue);
    // Read as `mxrelay suppression list` reads it, and as the daemon loads it.
    let read: Vec<String> = file::read(&dir.0, NOW)
        .unwrap()
        .into_iter()
        .map(|e| e.address)
        .collect();
    assert_eq!(read, ["late@x.test"]);
    assert_eq!(addresses(&dir.open(), NOW), ["late@x.test"]);
}

#[test]
fn the_command_without_a_daemon_queues_changes_to_a_shared_list() {
    let dir = Dir::new();
    FileStore::open(&dir.0, Duration::ZERO)
        .unwrap()
        .share()
        .unwrap();
    // `mxrelay suppression add` with no daemon opens the store without sharing it itself.
    dir.open()
        .add(vec![entry("a@x.test", Reason::Manual, None)], NOW)
        .unwrap();
    assert_eq!(
        pending::read(&dir.0).unwrap(),
        [Change::Add(entry("a@x.test", Reason::Manual, None))]
    );
}

#[test]
fn changes_encode_on_one_line() {
    for c in [
        Change::Add(entry("\"a b\"@x.test", Reason::Bounce, Some(NOW))),
        Change::Remove("a@x.test".into()),
    ] {
        assert_eq!(Change::decode(&c.encode()), Some(c.clone()));
    }
    for bad in ["", "+ junk", "- ", "- not an address", "* a@x.test"] {
        assert_eq!(Change::decode(bad), None, "{bad}");
    }
}

/// The link to a store ends when asked, even while the store is unreachable (it would retry
/// for ever otherwise), and the list keeps working from the spool's copy.
#[test]
fn sharing_stops_when_asked() {
    let dir = Dir::new();
    let cfg = SuppressionConfig {
        // Nothing listens on port 1 of loopback: refused at once.
        store: Some(shared::parse_url("redis://127.0.0.1:1/0").unwrap()),
        ..SuppressionConfig::default()
    };
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let list = start(&dir.0, &cfg, metrics, Duration::from_secs(1)).unwrap();
    assert!(
        list.stop_sharing(Duration::from_secs(30)),
        "the thread ended"
    );
    assert!(list.stop_sharing(Duration::ZERO), "nothing left to stop");
}
