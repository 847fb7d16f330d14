use super::*;

#[test]
fn signature_is_hmac_sha256_over_timestamp_dot_body() {
    // python3: hmac.new(b"Jefe", b'1765130400.[{"a":1}]', hashlib.sha256).hexdigest()
    assert_eq!(
        signature(b"Jefe", 1_765_130_400, br#"[{"a":1}]"#).unwrap(),
        "t=1765130400,v1=20f547baea29d8a81a7fb9b45b55445ad157e6f14dd5c2fe9d8a879fb078f6ec"
    );
}

#[test]
fn batches_are_json_arrays() {
    assert_eq!(body(&[]), b"[]");
    let events = vec![br#"{"a":1}"#.to_vec(), br#"{"b":2}"#.to_vec()];
    assert_eq!(body(&events), br#"[{"a":1},{"b":2}]"#);
    let rec = record("{\"v\":1}\n", UNIX_EPOCH + Duration::from_millis(5));
    assert!(rec.ends_with(b"{\"v\":1}"), "the newline is not kept");
}

#[test]
fn urls() {
    for ok in [
        "http://127.0.0.1:8080/",
        "https://hooks.example/in?token=x",
        "https://h.example",
    ] {
        assert_eq!(parse_url(ok).as_deref(), Ok(ok));
    }
    for bad in [
        "ftp://h/",
        "https://",
        "https:///x",
        "http://a b/",
        "hooks.example",
    ] {
        assert!(parse_url(bad).is_err(), "{bad}");
    }
    assert_eq!(
        shown("https://user:pw@hooks.example:8443/in/x?token=secret#f"),
        "https://hooks.example:8443/in/x"
    );
    assert_eq!(shown("http://u@h.example"), "http://h.example");
    // python3: hashlib.sha256(b"https://hooks.example/in").hexdigest()[:16]
    assert_eq!(
        outbox_dir(Path::new("/s"), "https://hooks.example/in"),
        Path::new("/s/webhooks/0b3eddc91c879a31")
    );
}

#[test]
fn the_secret_file_loses_one_trailing_newline() {
    let dir = std::env::temp_dir().join(format!("mxrelay-hook-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = |name: &str, contents: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        WebhookConfig {
            urls: vec!["http://127.0.0.1/".into()],
            secret_file: Some(path),
            max_age: Duration::from_secs(60),
            max_backlog: 1 << 20,
            retry: (Duration::from_secs(1), Duration::from_secs(2)),
        }
    };
    let key = |c: WebhookConfig| c.load_secret().unwrap().unwrap();
    assert_eq!(key(cfg("a", b"s3cret\n")), b"s3cret");
    assert_eq!(key(cfg("b", b"s3cret\r\n")), b"s3cret");
    assert_eq!(key(cfg("c", b"s3cret\n\n")), b"s3cret\n");
    assert_eq!(key(cfg("d", b" s3cret ")), b" s3cret ");
    assert!(cfg("e", b"\n").load_secret().is_err());
    let mut none = cfg("f", b"x");
    none.secret_file = Some(dir.join("missing"));
    let e = none.load_secret().unwrap_err().to_string();
    assert!(e.contains("--webhook-secret-file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_backlog_drops_new_events_and_counts_them() {
    let dir = std::env::temp_dir().join(format!("mxrelay-hook-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (writer, _reader, _shared) = outbox::open(&dir).unwrap();
    let mut outbox = Outbox {
        url: "http://127.0.0.1/".into(),
        writer,
        dropped: 0,
        failing: 0,
    };
    let metrics = Metrics::new();
    let event = record("{\"event\":\"delivered\"}", std::time::SystemTime::now());
    // Room for two records and a half.
    let max = event.len() as u64 * 5 / 2;
    for _ in 0..5 {
        outbox.append(&event, max, &metrics);
    }
    outbox.publish(&metrics);
    assert_eq!(outbox.dropped, 3);
    assert_eq!(outbox.writer.backlog_bytes(), 2 * event.len() as u64);
    let page = metrics.render();
    assert!(
        page.contains("mxrelay_webhook_dropped_total{reason=\"backlog_full\"} 3"),
        "{page}"
    );
    assert!(page.contains("mxrelay_webhook_backlog_events 2"), "{page}");
    let _ = std::fs::remove_dir_all(&dir);
}
