#!/usr/bin/env python3
"""A deliberately slow SMTP server: a next hop that answers every command late.

Each reply -- the 220 greeting, EHLO/HELO, MAIL, RCPT, DATA's 354, the reply
after the final ".", RSET, NOOP, QUIT -- is sent after --delay seconds
(default 5). Mail is accepted (250) and thrown away; the server only counts
it. Used by scripts/bench-queue's "slow" scenario as the slow next hop beside
a healthy one.

Bounded everywhere: it listens on a 127.x address only; at most --max-conns
concurrent sessions (one thread each; more get an immediate 421 and are
closed); command lines are capped at 2048 bytes and messages at --max-size
bytes; a client silent for --idle-timeout seconds is dropped; and the server
stops by itself after --lifetime seconds (default 3600). SIGTERM/SIGINT stop
it at once.

Counters: with --stats FILE, one JSON object {"conns", "messages",
"active", "refused"} is rewritten there every second and at exit; the last
one is also printed on stdout at exit. Standard library only.
"""
import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time

MAX_LINE = 2048


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.conns = 0
        self.messages = 0
        self.active = 0
        self.refused = 0

    def add(self, field, n=1):
        with self.lock:
            setattr(self, field, getattr(self, field) + n)

    def snapshot(self):
        with self.lock:
            return {"conns": self.conns, "messages": self.messages,
                    "active": self.active, "refused": self.refused}


class Session:
    def __init__(self, sock, args, stats, stop):
        self.sock = sock
        self.args = args
        self.stats = stats
        self.stop = stop
        self.buf = b""
        sock.settimeout(args.idle_timeout)

    def reply(self, text):
        """Send one reply after the delay (cut short when the server stops)."""
        if self.stop.wait(self.args.delay):
            raise OSError("server stopping")
        self.sock.sendall(text.encode() + b"\r\n")

    def line(self, limit=MAX_LINE):
        """One line without CRLF; None on EOF. Over-long lines raise."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                ln, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return ln.rstrip(b"\r\n")
            if len(self.buf) > limit:
                raise OSError("line too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk

    def data(self):
        """Read a message up to CRLF.CRLF; returns False when it was too big."""
        size = 0
        while True:
            ln = self.line(limit=1 << 20)
            if ln is None:
                raise OSError("EOF in DATA")
            if ln == b".":
                return size <= self.args.max_size
            size += len(ln) + 2

    def run(self):
        self.reply(f"220 {self.args.hostname} ESMTP slow-smtp (delay {self.args.delay:g}s)")
        in_mail = False
        rcpts = 0
        while not self.stop.is_set():
            ln = self.line()
            if ln is None:
                return
            verb = ln[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                in_mail, rcpts = False, 0
                if verb == b"EHLO":
                    self.reply(f"250-{self.args.hostname}\r\n250-PIPELINING\r\n"
                               f"250-SIZE {self.args.max_size}\r\n250 8BITMIME")
                else:
                    self.reply(f"250 {self.args.hostname}")
            elif verb == b"MAIL":
                in_mail, rcpts = True, 0
                self.reply("250 2.1.0 Ok")
            elif verb == b"RCPT":
                if not in_mail:
                    self.reply("503 5.5.1 MAIL first")
                else:
                    rcpts += 1
                    self.reply("250 2.1.5 Ok")
            elif verb == b"DATA":
                if not rcpts:
                    self.reply("503 5.5.1 RCPT first")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                ok = self.data()
                in_mail, rcpts = False, 0
                if ok:
                    self.stats.add("messages")
                    self.reply("250 2.0.0 Ok: queued")
                else:
                    self.reply("552 5.3.4 Message too big")
            elif verb == b"RSET":
                in_mail, rcpts = False, 0
                self.reply("250 2.0.0 Ok")
            elif verb == b"NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Command not implemented")


def serve(args):
    addr = ipaddress.ip_address(args.listen)
    if not (addr.version == 4 and addr in ipaddress.ip_network("127.0.0.0/8")):
        sys.exit("slow-smtp: --listen must be a 127.x address")
    stats = Stats()
    stop = threading.Event()
    sessions = threading.BoundedSemaphore(args.max_conns)

    def on_signal(_sig, _frame):
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((args.listen, args.port))
    ls.listen(256)
    ls.settimeout(0.2)

    def write_stats():
        if args.stats:
            tmp = args.stats + ".tmp"
            with open(tmp, "w") as f:
                json.dump(stats.snapshot(), f)
            os.replace(tmp, args.stats)

    def handle(conn):
        stats.add("active")
        try:
            Session(conn, args, stats, stop).run()
        except OSError:
            pass
        finally:
            stats.add("active", -1)
            conn.close()
            sessions.release()

    deadline = time.monotonic() + args.lifetime
    last_stats = 0.0
    print(f"slow-smtp: listening on {args.listen}:{args.port}, delay {args.delay:g}s, "
          f"max {args.max_conns} sessions", flush=True)
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            if now - last_stats >= 1.0:
                write_stats()
                last_stats = now
            try:
                conn, _peer = ls.accept()
            except socket.timeout:
                continue
            stats.add("conns")
            if not sessions.acquire(blocking=False):
                stats.add("refused")
                try:
                    conn.settimeout(1)
                    conn.sendall(b"421 4.3.2 Too many sessions\r\n")
                except OSError:
                    pass
                conn.close()
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    finally:
        stop.set()
        ls.close()
        write_stats()
        print(json.dumps(stats.snapshot()), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1", help="127.x address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=5.0, help="seconds before each reply (default 5)")
    ap.add_argument("--max-conns", type=int, default=200, help="concurrent sessions (default 200)")
    ap.add_argument("--max-size", type=int, default=10 << 20, help="largest message (default 10 MiB)")
    ap.add_argument("--idle-timeout", type=float, default=120.0,
                    help="drop a client silent this long (default 120 s)")
    ap.add_argument("--lifetime", type=float, default=3600.0,
                    help="stop after this many seconds (default 3600)")
    ap.add_argument("--hostname", default="slow.test")
    ap.add_argument("--stats", help="rewrite JSON counters to this file every second")
    serve(ap.parse_args())


if __name__ == "__main__":
    main()
