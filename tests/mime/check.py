"""Reads an original message and its tracked copy with Python's email package
(policy.default) and checks them part by part: the same tree of parts; every part but the
rewritten HTML ones decodes to the same bytes; a rewritten HTML part keeps its charset, has
the open pixel and the tracked links. Prints the tracked link count; exits non-zero on a
mismatch.

usage: check.py ORIGINAL TRACKED TRACKING_BASE [TEXT_THAT_MUST_SURVIVE...]
"""
import email
import email.policy
import sys

orig_path, new_path, base = sys.argv[1:4]
must_keep = sys.argv[4:]
read = lambda p: email.message_from_bytes(open(p, "rb").read(), policy=email.policy.default)
orig, new = read(orig_path), read(new_path)
po, pn = list(orig.walk()), list(new.walk())
assert len(po) == len(pn), f"{len(po)} parts before, {len(pn)} after"
assert not new.defects, new.defects
links = 0
for a, b in zip(po, pn):
    assert a.get_content_type() == b.get_content_type(), (a.get_content_type(), b.get_content_type())
    assert not b.defects, (b.get_content_type(), b.defects)
    if a.is_multipart():
        continue
    da, db = a.get_payload(decode=True), b.get_payload(decode=True)
    if da == db:
        continue
    assert a.get_content_type() == "text/html", f"{a.get_content_type()} changed"
    assert a.get_content_charset() == b.get_content_charset()
    html = b.get_content()
    assert base + "/o/" in html, "no pixel"
    links += html.count(base + "/c/")
    for text in must_keep:
        assert text in html, f"{text!r} lost"
print(links)
