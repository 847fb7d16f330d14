"""Postfix smtp-sink dump files (-d DIR/m.): one file per transaction, the envelope as
X-Mail-Args / X-Rcpt-Args headers, then smtp-sink's Received:, then the message."""

import os
import re
import time


def parse_dump(path):
    with open(path, "rb") as f:
        data = f.read()
    idx = data.find(b"\n\n")
    if idx < 0:
        return None
    raw = data[:idx].split(b"\n")
    headers = []
    for line in raw:
        if line[:1] in (b" ", b"\t") and headers:
            headers[-1][1] += b" " + line.strip()
        else:
            n, _, v = line.partition(b":")
            headers.append([n.strip().lower(), v.strip()])
    d = {"path": path, "raw": raw, "headers": headers, "body": data[idx + 2:]}
    d["mail"] = [v for n, v in headers if n == b"x-mail-args"]
    d["rcpts"] = [v.split()[0].decode("latin-1") if v.split() else "" for n, v in headers
                  if n == b"x-rcpt-args"]
    # headers of the message itself: everything after smtp-sink's Received
    sink_rcv = [i for i, (n, v) in enumerate(headers)
                if n == b"received" and b"(smtp-sink)" in v]
    d["msg_headers"] = headers[sink_rcv[0] + 1:] if sink_rcv else []
    subj = [v for n, v in d["msg_headers"] if n == b"subject"]
    d["subject"] = subj[0] if subj else b""
    return d


def load_all(dirs):
    out = []
    for dd in dirs:
        for f in sorted(os.listdir(dd)):
            try:
                d = parse_dump(os.path.join(dd, f))
            except OSError:
                continue
            if d is not None:
                out.append(d)
    return out


def split_msg(b):
    i = b.find(b"\n\n")
    return b[:i].split(b"\n"), b[i + 2:]


def check_delivery(tap, dump_dir, sink, label, marker, sender, rcpts, msg, mode="exact",
                   relay_host="", received_has=(), want_8bit=False, other_dir=None, wait=30):
    """The message MARKER (in its Subject, "end of MARKER" in its body) reached DUMP_DIR
    once per recipient with the right envelope, body and headers; one check per property.
    MSG is the file the client sent (LF line ends). MODE "exact": body and header lines
    byte-exact; "body-prefix": the body starts with MSG's (swaks may add blank lines)."""
    res = []

    def rep(cond, what, why=""):
        res.append(tap.check(label + ": " + what, cond, why or None))

    want = sorted(r.lower() for r in rcpts)
    wantb = sorted("<%s>" % w for w in want)
    mark = marker.encode()
    endtok = b"end of " + mark

    def matching():
        return [d for d in load_all([dump_dir]) if mark in d["subject"] and endtok in d["body"]]

    def got_rcpts(ds):
        return sorted(r.lower() for d in ds for r in d["rcpts"])

    t0 = time.time()
    deadline = t0 + max(wait, 0.5)
    while True:
        got = got_rcpts(matching())
        if all(w in got for w in wantb) or time.time() > deadline:
            break
        time.sleep(0.2)
    time.sleep(0.3)  # give a duplicate / late transaction a chance to show up
    ds = matching()
    got = got_rcpts(ds)

    missing = [w for w in wantb if w not in got]
    rep(not missing, "delivered to %s (%d file(s), %.1fs)" % (sink, len(ds), time.time() - t0),
        "missing recipients: %s; got: %s" % (missing, got))
    if not ds:
        return False
    rep(got == wantb, "each envelope recipient exactly once, no others",
        "want %s\ngot  %s" % (wantb, got))
    senders = sorted(set(d["mail"][0].split()[0].decode("latin-1") if d["mail"] else "?"
                         for d in ds))
    rep(senders == ["<%s>" % sender], "envelope sender <%s>" % sender,
        "got MAIL args: %s" % senders)
    if want_8bit:
        bad = [d["mail"] for d in ds
               if not re.search(rb"(?i)\bBODY=8BITMIME\b", b" ".join(d["mail"]))]
        rep(not bad, "BODY=8BITMIME passed on to the next hop", "MAIL args: %s" % bad)

    with open(msg, "rb") as f:
        exp_hdr, exp_body = split_msg(f.read())
    if not exp_body.endswith(b"\n"):
        exp_body += b"\n"
    for d in ds:
        body = d["body"]  # smtp-sink appends one empty line after the message
        name = os.path.basename(d["path"])
        if mode == "exact":
            rep(body == exp_body + b"\n", "body byte-exact (%s)" % name,
                "file %s\nwant %r\ngot  %r" % (name, exp_body + b"\n", body))
            # Submitted mail may get Date: and Message-ID: appended when it had none
            # (RFC 6409 section 8 fix-ups); everything else stays as sent.
            raw = list(d["raw"])
            added = []
            while raw and re.match(rb"(?i)(date|message-id): ", raw[-1]) and not any(
                    h.lower().startswith(raw[-1].split(b":")[0].lower() + b":") for h in exp_hdr):
                added.insert(0, raw.pop().split(b":")[0].decode())
            tail = raw[-len(exp_hdr):]
            note = (", then %s added" % " and ".join(added)) if added else ""
            rep(tail == exp_hdr, "original header lines unchanged%s (%s)" % (note, name),
                "want %r\ngot  %r" % (exp_hdr, tail))
        else:
            cond = body.startswith(exp_body) and body[len(exp_body):].strip(b"\n") == b""
            rep(cond, "body lines intact (%s)" % name,
                "want prefix %r (+ blank lines)\ngot %r" % (exp_body, body))
        mh = d["msg_headers"]
        first = mh[0] if mh else [b"", b""]
        if relay_host:
            rep(first[0] == b"received" and relay_host.encode().lower() in first[1].lower(),
                "Received: header naming %s prepended (%s)" % (relay_host, name),
                "first message header: %r" % (first,))
        for want_txt in received_has:
            rep(first[0] == b"received" and want_txt.encode() in first[1],
                "relay's Received: has '%s' (%s)" % (want_txt, name),
                "first message header: %r" % (first,))
    if other_dir:
        stray = [d["path"] for d in load_all([other_dir]) if mark in d["subject"]]
        rep(not stray, "not delivered to the other sink", "found: %s" % stray)
    return all(res)


def absent(domain, marker, dirs):
    """(True, _) if nothing for DOMAIN or with MARKER in its subject is in any dump."""
    dom, mark = domain.lower(), marker.encode()
    hits = [d["path"] for d in load_all(dirs)
            if mark in d["subject"] or any(r.lower().endswith("@%s>" % dom) for r in d["rcpts"])]
    return not hits, "reached a sink: %s" % hits


def no_duplicates(dirs):
    """(True, _) if no (subject, recipient) pair was delivered twice."""
    seen, dups = {}, []
    for d in load_all(dirs):
        for r in d["rcpts"]:
            k = (d["subject"] or d["body"][:200], r.lower())
            if k in seen:
                dups.append("duplicate: %r -> %s in %s and %s" % (k[0], k[1], seen[k], d["path"]))
            seen[k] = d["path"]
    return not dups, "\n".join(dups)
