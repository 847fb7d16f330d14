//! The per-recipient MIME rewrite and the HTML link rewriter under it. Fed arbitrary bytes in
//! arbitrary pieces, the rewriter never panics and writes the same output (and report) as
//! for the message in one piece; with nothing to track and no pixel, it changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mxrelay::tracking::html;
use mxrelay::tracking::rewrite::{Report, Rewriter};
use mxrelay_fuzz::{pieces, seed_and_rest};

fn track(url: &str) -> Option<String> {
    // Some links stay as they are, as excluded domains do.
    (!url.contains("keep")).then(|| format!("https://t.test/c/{}?a=1&b=\"2\"", url.len()))
}

fn run(chunks: &[&[u8]], pixel: bool, max_html: usize, tracking: bool) -> (Vec<u8>, Report) {
    let pixel = pixel.then(|| "https://t.test/o/x".to_string());
    let mut rw = Rewriter::new(|u: &str| if tracking { track(u) } else { None }, pixel)
        .with_max_html(max_html);
    let mut out = Vec::new();
    for c in chunks {
        rw.feed(c, &mut out).unwrap();
    }
    let report = rw.finish(&mut out).unwrap();
    (out, report)
}

fuzz_target!(|data: &[u8]| {
    let (seed, input) = seed_and_rest(data);
    let pixel = seed & 1 != 0;
    let max_html = if seed & 2 != 0 { 1 << 20 } else { 200 };

    let whole = run(&[input], pixel, max_html, true);
    let split = run(&pieces(seed, input), pixel, max_html, true);
    assert!(whole == split, "a split changed the output");

    let (same, report) = run(&pieces(seed, input), false, max_html, false);
    assert!(same == input, "nothing to do, yet the message changed");
    assert_eq!((report.links, report.pixels, report.html_parts), (0, 0, 0));

    let (out, edits) = html::rewrite(input, &mut track, pixel.then_some("https://t.test/o"));
    assert_eq!(edits.pixel, pixel);
    if edits.links == 0 && !pixel {
        assert!(out == input);
    }
    let (out, _) = html::rewrite(input, &mut |_| None, None);
    assert!(out == input);
});
