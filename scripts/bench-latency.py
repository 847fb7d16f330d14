#!/usr/bin/env python3
"""Injection latency of an SMTP relay, as a client sees it.

Opens --sessions parallel client sessions (one OS process each, so the
timings do not queue behind each other on Python's GIL). Each sends
--messages messages of --size bytes, one message per connection like
smtp-source: connect, 220, EHLO, MAIL, RCPT, DATA, 354, then the whole
message and the terminating "\\r\\n.\\r\\n" in one write, the final reply, QUIT.

Latency = from the moment the write holding the last byte of "\\r\\n.\\r\\n"
returned (the bytes are in the kernel's socket buffer) to the moment the
complete final reply line (250) has been read. For a durable relay this
is the time it takes to get the message safely into its queue.

Prints count, p50, p90, p99 and max in milliseconds (nearest-rank
percentiles), and with --json FILE writes the same as one JSON object.
Exit status 1 if any message was not accepted with 250.

Standard library only.
"""
import argparse
import json
import multiprocessing
import os
import socket
import sys
import time


class SmtpError(Exception):
    pass


class Conn:
    """A minimal blocking SMTP client connection."""

    def __init__(self, host, port, timeout):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def reply(self):
        """Reads one (possibly multi-line) reply; returns (code, last line)."""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise SmtpError("connection closed by the relay"
                                    + (f" after {self.buf!r}" if self.buf else ""))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            if len(text) < 3 or not text[:3].isdigit():
                raise SmtpError(f"malformed reply {text!r}")
            if len(text) == 3 or text[3] == " ":
                return int(text[:3]), text

    def cmd(self, line, want):
        self.s.sendall(line.encode() + b"\r\n")
        code, text = self.reply()
        if code != want:
            raise SmtpError(f"{line.split()[0]}: expected {want}, got {text!r}")
        return text

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def make_message(size, session, seq):
    """About `size` bytes of header + body, CRLF lines, no line starting with
    '.', without the final CRLF (the terminator supplies it)."""
    head = (f"From: <bench@source.example>\r\n"
            f"To: <rcpt@dest.example>\r\n"
            f"Subject: latency probe {session}-{seq}\r\n"
            f"Message-ID: <lat-{os.getpid()}-{session}-{seq}@source.example>\r\n"
            f"\r\n").encode()
    line = b"x" * 78 + b"\r\n"
    body = bytearray()
    while len(head) + len(body) < size:
        body += line
    msg = bytes(head + body)[:max(size, len(head) + 1)]
    return msg.rstrip(b"\r\n")


def die_with_parent():
    """Pool initializer: a worker gets SIGTERM if the parent dies (Linux prctl
    PR_SET_PDEATHSIG), so a killed run leaves no clients behind."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def session(args):
    (idx, host, port, count, size, timeout, sender, rcpt, deadline) = args
    lat, errors = [], []
    for seq in range(count):
        if time.monotonic() > deadline:
            errors.append("overall deadline reached")
            break
        c = None
        try:
            c = Conn(host, port, timeout)
            code, text = c.reply()
            if code != 220:
                raise SmtpError(f"greeting: {text!r}")
            c.cmd("EHLO latency.bench.invalid", 250)
            c.cmd(f"MAIL FROM:<{sender}>", 250)
            c.cmd(f"RCPT TO:<{rcpt}>", 250)
            c.cmd("DATA", 354)
            data = make_message(size, idx, seq) + b"\r\n.\r\n"
            c.s.sendall(data)
            t0 = time.perf_counter()
            code, text = c.reply()
            t1 = time.perf_counter()
            if code != 250:
                raise SmtpError(f"end of data: {text!r}")
            lat.append(t1 - t0)
            try:
                c.cmd("QUIT", 221)
            except (OSError, SmtpError):
                pass   # the message is accepted; a sloppy QUIT is not our metric
        except (OSError, SmtpError) as e:
            errors.append(f"session {idx} msg {seq}: {e}")
        finally:
            if c:
                c.close()
    return lat, errors


def pct(sorted_xs, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_xs:
        return None
    k = max(1, -(-len(sorted_xs) * p // 100))   # ceil(n * p / 100)
    return sorted_xs[int(k) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sessions", type=int, default=10, help="parallel sessions (default 10)")
    ap.add_argument("--messages", type=int, default=200,
                    help="messages per session, one per connection (default 200)")
    ap.add_argument("--size", type=int, default=5120, help="message bytes (default 5120)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds per socket operation (default 30)")
    ap.add_argument("--deadline", type=float, default=300.0,
                    help="give up starting new messages after this many seconds (default 300)")
    ap.add_argument("--sender", default="bench@source.example")
    ap.add_argument("--rcpt", default="rcpt@dest.example")
    ap.add_argument("--json", default="", help="also write the results as JSON here")
    a = ap.parse_args()

    deadline = time.monotonic() + a.deadline
    jobs = [(i, a.host, a.port, a.messages, a.size, a.timeout, a.sender, a.rcpt, deadline)
            for i in range(a.sessions)]
    t0 = time.monotonic()
    with multiprocessing.get_context("fork").Pool(a.sessions, initializer=die_with_parent) as pool:
        results = pool.map(session, jobs)
    wall = time.monotonic() - t0

    lat = sorted(x for r in results for x in r[0])
    errors = [e for r in results for e in r[1]]
    ms = [x * 1000.0 for x in lat]
    res = {
        "sessions": a.sessions, "messages_per_session": a.messages, "size": a.size,
        "sent": a.sessions * a.messages, "count": len(ms), "errors": len(errors),
        "wall_s": round(wall, 3),
        "rate_msg_s": round(len(ms) / wall, 1) if wall > 0 else None,
        "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99),
        "max_ms": ms[-1] if ms else None,
        "mean_ms": sum(ms) / len(ms) if ms else None,
        "first_errors": errors[:5],
    }
    for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms"):
        if res[k] is not None:
            res[k] = round(res[k], 3)

    print(f"injection latency, last byte of <CRLF>.<CRLF> sent -> 250 read "
          f"({a.sessions} sessions x {a.messages} msgs of {a.size} B, one per connection):")
    if ms:
        print(f"  count {len(ms)}  p50 {res['p50_ms']:.2f} ms  p90 {res['p90_ms']:.2f} ms  "
              f"p99 {res['p99_ms']:.2f} ms  max {res['max_ms']:.2f} ms  "
              f"(mean {res['mean_ms']:.2f} ms)")
    else:
        print("  no message was accepted")
    print(f"  wall {wall:.2f} s, {res['rate_msg_s']} msg/s injected, errors {len(errors)}")
    for e in errors[:5]:
        print(f"  error: {e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
            f.write("\n")
    return 0 if ms and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
