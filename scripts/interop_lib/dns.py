"""A minimal DNS client (UDP, MX and A answers) to check what dnsmasq serves."""

import random
import socket
import struct
import time

QTYPES = {"MX": 15, "A": 1}


def query(server, port, name, qtype):
    """'rcode=N ANSWERS' where ANSWERS is 'MX pref name.' / 'A ip' joined by ';', sorted."""
    tid = random.randrange(65536)
    qn = b"".join(bytes([len(lab)]) + lab.encode() for lab in name.rstrip(".").split(".")) + b"\0"
    pkt = struct.pack(">HHHHHH", tid, 0x0100, 1, 0, 0, 0) + qn + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(pkt, (server, port))
        data, _ = s.recvfrom(4096)
    rid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", data[:12])
    if rid != tid:
        raise RuntimeError("id mismatch")

    def rname(off):
        labels, end = [], None
        for _ in range(128):
            n = data[off]
            if n & 0xC0 == 0xC0:
                if end is None:
                    end = off + 2
                off = struct.unpack(">H", data[off:off + 2])[0] & 0x3FFF
                continue
            off += 1
            if n == 0:
                break
            labels.append(data[off:off + n].decode())
            off += n
        return ".".join(labels) + ".", (end if end is not None else off)

    off = 12
    for _ in range(qd):
        _, off = rname(off)
        off += 4
    out = []
    for _ in range(an):
        _, off = rname(off)
        t, _c, _ttl, rl = struct.unpack(">HHIH", data[off:off + 10])
        off += 10
        rd = data[off:off + rl]
        if t == 15:
            out.append("MX %d %s" % (struct.unpack(">H", rd[:2])[0], rname(off + 2)[0]))
        elif t == 1:
            out.append("A " + socket.inet_ntoa(rd))
        off += rl
    return "rcode=%d %s" % (flags & 0xF, ";".join(sorted(out)))


def expect(server, port, name, qtype, want, wait=5.0):
    """(True, None) once the answer equals WANT, retrying up to WAIT s; else (False, why)."""
    deadline = time.time() + wait
    while True:
        try:
            got = query(server, port, name, QTYPES[qtype])
        except Exception as e:  # not up yet / timeout
            got = "error: %r" % (e,)
        if got == want or time.time() > deadline:
            break
        time.sleep(0.1)
    return got == want, "%s %s: got %r, want %r" % (name, qtype, got, want)
