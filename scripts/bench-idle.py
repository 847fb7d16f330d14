#!/usr/bin/env python3
"""Idle connections against a relay started with --max-connections N.

 1. reads the relay's RSS and thread count (/proc/PID/status) at rest;
 2. opens N connections, reads each 220 greeting, keeps them all open and
    idle; then reads VmRSS / thread count again;
 3. connection N+1 must be refused with 421 (the cap);
 4. closes one idle connection; a new client must then get 220 (retrying
    for up to --reclaim-s while the relay notices the close) and get a
    message accepted (250);
 5. checks that the remaining idle connections are still open (the relay
    sent nothing and did not close them), then closes everything.

Prints one line per step and, with --json FILE, the figures as JSON.
Exit status 1 if any check failed. Needs a file descriptor limit above N
(the bash wrapper raises it). Standard library only.
"""
import argparse
import json
import selectors
import socket
import sys
import time


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def read_line(s, timeout):
    """First reply line (CRLF-terminated), or b'' on EOF."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return buf
        buf += chunk
    return buf.split(b"\r\n", 1)[0]


class Client:
    def __init__(self, host, port, timeout):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.timeout = timeout

    def reply(self):
        self.s.settimeout(self.timeout)
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise OSError("connection closed")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            t = line.decode("utf-8", "replace")
            if len(t) == 3 or t[3:4] == " ":
                return int(t[:3]), t

    def cmd(self, line, want):
        self.s.sendall(line + b"\r\n")
        code, t = self.reply()
        if code != want:
            raise OSError(f"{line.split()[0].decode()}: expected {want}, got {t!r}")


def mib(kb):
    return f"{kb / 1024:.1f} MiB" if kb is not None else "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the relay's pid")
    ap.add_argument("--conns", type=int, default=1000,
                    help="idle connections to open = the relay's --max-connections")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per socket operation")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds to wait with all sessions open before reading RSS")
    ap.add_argument("--reclaim-s", type=float, default=10.0,
                    help="how long a new client may retry after one idle close")
    ap.add_argument("--deadline", type=float, default=120.0,
                    help="stop opening connections after this many seconds")
    ap.add_argument("--json", default="")
    a = ap.parse_args()

    res = {"conns": a.conns, "checks": {}}
    ok = True

    def check(name, cond, detail):
        nonlocal ok
        res["checks"][name] = bool(cond)
        ok = ok and bool(cond)
        print(f"  [{'ok' if cond else 'FAIL'}] {detail}", flush=True)

    st0 = proc_status(a.pid)
    res["rss_kb_before"] = st0.get("VmRSS")
    res["threads_before"] = st0.get("Threads")
    print(f"idle connections: relay pid {a.pid}, at rest RSS {mib(st0.get('VmRSS'))}, "
          f"{st0.get('Threads')} threads", flush=True)

    # 1. open N idle sessions, each greeted with 220
    conns, bad = [], None
    t0 = time.monotonic()
    deadline = t0 + a.deadline
    for i in range(a.conns):
        if time.monotonic() > deadline:
            bad = f"gave up after {a.deadline:.0f} s"
            break
        try:
            s = socket.create_connection((a.host, a.port), timeout=a.timeout)
            line = read_line(s, a.timeout)
        except OSError as e:
            bad = f"connection {i + 1}: {e}"
            break
        conns.append(s)
        if not line.startswith(b"220"):
            bad = f"connection {i + 1}: greeting {line!r}"
            break
    t_open = time.monotonic() - t0
    res["opened"] = len(conns)
    res["open_s"] = round(t_open, 3)
    check("all_greeted", bad is None and len(conns) == a.conns,
          f"{len(conns)}/{a.conns} connections open and greeted with 220 in {t_open:.2f} s"
          + (f" -- {bad}" if bad else ""))

    time.sleep(a.settle)
    st1 = proc_status(a.pid)
    res["rss_kb_idle"] = st1.get("VmRSS")
    res["hwm_kb_idle"] = st1.get("VmHWM")
    res["threads_idle"] = st1.get("Threads")
    per = None
    if st1.get("VmRSS") and st0.get("VmRSS") and conns:
        per = (st1["VmRSS"] - st0["VmRSS"]) / len(conns)
    res["rss_kb_per_session"] = round(per, 1) if per is not None else None
    print(f"  relay with {len(conns)} idle sessions: VmRSS {mib(st1.get('VmRSS'))} "
          f"(+{per:.1f} KiB per session), {st1.get('Threads')} threads"
          if per is not None else
          f"  relay with {len(conns)} idle sessions: VmRSS {mib(st1.get('VmRSS'))}",
          flush=True)

    # 2. one more must get 421
    try:
        s = socket.create_connection((a.host, a.port), timeout=a.timeout)
        line = read_line(s, a.timeout)
        s.close()
    except OSError as e:
        line = f"error: {e}".encode()
    res["over_cap_reply"] = line.decode("utf-8", "replace")
    check("over_cap_421", line.startswith(b"421"),
          f"connection {a.conns + 1} answered {line.decode('utf-8', 'replace')!r}")

    # 3. close one idle session; a new client must get in and send a message
    if conns:
        conns.pop().close()
    t0 = time.monotonic()
    attempts, greeting, cl = 0, b"", None
    while time.monotonic() - t0 < a.reclaim_s:
        attempts += 1
        try:
            cl = Client(a.host, a.port, a.timeout)
            code, greeting = cl.reply()
            greeting = greeting.encode()
        except OSError as e:
            greeting = f"error: {e}".encode()
            code = None
        if code == 220:
            break
        if cl:
            cl.s.close()
            cl = None
        time.sleep(0.02)
    t_reclaim = time.monotonic() - t0
    res["reclaim_attempts"] = attempts
    res["reclaim_s"] = round(t_reclaim, 3)
    check("reclaimed_220", cl is not None,
          f"after closing one idle session a new client got {greeting.decode('utf-8', 'replace')!r} "
          f"(attempt {attempts}, {t_reclaim * 1000:.0f} ms)")
    sent = False
    detail = "no session"
    if cl is not None:
        try:
            cl.cmd(b"EHLO idle.bench.invalid", 250)
            cl.cmd(b"MAIL FROM:<bench@source.example>", 250)
            cl.cmd(b"RCPT TO:<rcpt@dest.example>", 250)
            cl.cmd(b"DATA", 354)
            cl.s.sendall(b"From: <bench@source.example>\r\nTo: <rcpt@dest.example>\r\n"
                         b"Subject: idle test\r\n\r\nhello\r\n.\r\n")
            code, t = cl.reply()
            sent = code == 250
            detail = t
            try:
                cl.cmd(b"QUIT", 221)
            except OSError:
                pass
        except OSError as e:
            detail = str(e)
        cl.s.close()
    check("message_250", sent, f"its message was answered {detail!r}")

    # 4. the other idle sessions must still be open and silent
    sel = selectors.DefaultSelector()
    for s in conns:
        sel.register(s, selectors.EVENT_READ)
    ready = sel.select(timeout=0.2)
    sel.close()
    res["idle_disturbed"] = len(ready)
    check("idle_untouched", not ready,
          f"{len(conns) - len(ready)}/{len(conns)} remaining idle sessions still open and silent")

    for s in conns:
        s.close()
    time.sleep(a.settle)
    st2 = proc_status(a.pid)
    res["rss_kb_after_close"] = st2.get("VmRSS")
    res["threads_after_close"] = st2.get("Threads")
    print(f"  after closing all: VmRSS {mib(st2.get('VmRSS'))}, {st2.get('Threads')} threads, "
          f"peak (VmHWM) {mib(st2.get('VmHWM'))}", flush=True)
    res["ok"] = ok
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
            f.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
