#!/usr/bin/env python3
"""Writes the committed seed corpus of the fuzz targets (tests/fuzz/corpus/TARGET/) from
the project's own test material: the SMTP transcripts, the MIME samples and records in the
formats the code writes (envelopes, slot headers, state records, suppression logs, PROXY
headers). Run it from anywhere after changing a format; crash inputs found by fuzzing live
beside these seeds as `crash-*` files and are left alone.

Targets that stream their input take a first byte that seeds how it is cut into pieces (see
tests/fuzz/src/lib.rs); the session target takes a configuration byte and a verdict byte.
"""

import base64
import pathlib
import struct
import zlib

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent.parent
CORPUS = FUZZ / "corpus"
SEEDS = (0x07, 0xA6)
MSG_ID = "0006452A1B2C3D4E-0001"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def transcript_items(path):
    """(kind, text) for the C:, P:, D: and S: lines of a transcript."""
    out = []
    for line in path.read_text().splitlines():
        if len(line) >= 2 and line[1] == ":" and line[0] in "CPDS":
            out.append((line[0], line[3:]))
    return out


def transcripts():
    for d in ("transcripts", "client-transcripts"):
        for p in sorted((ROOT / "tests" / d).glob("*.smtp")):
            yield d, p


def mime_samples():
    # large-html.eml is left out: libFuzzer sizes its inputs after the largest seed.
    for p in sorted((ROOT / "tests" / "mime").glob("*.eml")):
        if p.name != "large-html.eml":
            yield p.stem, p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def smtp():
    commands, session_lines = set(), {}
    for d, p in transcripts():
        if d != "transcripts":
            continue
        lines, in_data = [], False
        for kind, text in transcript_items(p):
            if in_data and kind != "D":
                # The transcripts leave the end marker implied.
                lines.append(".")
            in_data = kind == "D"
            if kind == "C":
                commands.add(text)
                lines.append(text)
            elif kind == "P":
                for c in text.split("|"):
                    commands.add(c)
                    lines.append(c)
            elif kind == "D":
                lines.append(text)
        if in_data:
            lines.append(".")
        session_lines[p.stem] = lines
    commands |= {
        "MAIL FROM:<\"quoted local\"@[IPv6:2001:db8::1]> SIZE=100 BODY=8BITMIME",
        "RCPT TO:<@a.test,@b.test:user@c.test> NOTIFY=NEVER",
        "MAIL FROM:<用户@例子.测试> SMTPUTF8",
        "AUTH LOGIN dXNlcg==",
    }
    for i, c in enumerate(sorted(commands)):
        write("smtp_command", f"seed-{i:03}", c)
    # Flags: bit 0 relay, 1 tls, 2 implicit tls, 3 auth, 4 require auth, 5 plaintext auth,
    # 6 max messages and recipient rates, 7 message rates.
    for i, (name, lines) in enumerate(sorted(session_lines.items())):
        flags = [0b00101001, 0b11101010, 0b00000001][i % 3]
        body = "\r\n".join(lines) + "\r\n"
        write("smtp_session", f"seed-{name}", bytes([flags, i & 0xFF]) + body.encode())


def data_and_replies():
    for name, msg in mime_samples():
        write("smtp_data", f"seed-{name}", bytes([SEEDS[0]]) + msg + b".\r\n")
    wire = [
        b"Subject: x\r\n\r\n..leading dot\r\n.\r\nMAIL FROM:<a@b.test>\r\n",
        b"a\n.\nb\r\n.\r\n",
        b"a\r\n.\rb\r.\r\n\r\n.\r\n",
        b".\r\n",
    ]
    for i, w in enumerate(wire):
        write("smtp_data", f"seed-wire-{i}", bytes([SEEDS[i % 2]]) + w)
    n = 0
    for d, p in transcripts():
        if d != "client-transcripts":
            continue
        replies = [t for k, t in transcript_items(p) if k == "S"]
        if replies:
            text = "\r\n".join(replies) + "\r\n"
            write("smtp_reply", f"seed-{p.stem}", bytes([SEEDS[n % 2]]) + text.encode())
            n += 1
    write("smtp_reply", "seed-enhanced", b"\x40250-2.1.5 first\r\n250 2.1.5 second\r\n"
          b"550-5.1.1 <x@y.test>: unknown\r\n550 5.1.1 user\r\n421 4.4.2 timeout\n")


def auth():
    plain = base64.b64encode(b"\0alice\0secret").decode()
    write("sasl_users", "seed-plain", f"PLAIN {plain}\n")
    write("sasl_users", "seed-login", "LOGIN\ndXNlcg==\ncGFzcw==\n")
    write("sasl_users", "seed-plain-raw", b"alice\0alice\0pw")
    users = [
        "alice:$2y$05$4Zzy7LLvu2W3hFPywO.qsu6.QAsRU8v8l.Bhoz6jnRxfo4eTXPh4i",
        "bob:$6$ohxnF/JmaaINA09R$rjwoAOKTABaqPTb1KSdvfuawzVsxk6Kg.1LG3x5Rv8qIN.rZFAUqG7gEOehAG8EmSbzv8CwAAnsRw5fJFOcDr.:example.com,Mail.Example.org",
        "# comment",
        "carol:$5$rounds=1000$LNJApKiK0sY50a7k$TIbCCDXsNsGnxMfRbNxCsc8Mk0.DchsaxmQjeuMkoy9",
    ]
    write("sasl_users", "seed-users", "\n".join(users) + "\n")


def envelope(rcpts, extra=""):
    lines = [
        "version: 1", f"id: {MSG_ID}", "kind: message", "received: 1790000000123",
        "client: 192.0.2.1", "helo: client.test", "sender: a@client.test", "size: 1234",
        "8bit: no", "smtputf8: no", "attempts: 2", "next-attempt: 1790000060000",
        "last-error: 451 4.7.1 try later", "held: no",
    ]
    text = "\n".join(lines) + "\n" + extra
    for state, addr in rcpts:
        text += f"rcpt: {state} {addr}\n"
    return (text + "end\n").encode()


def spool():
    envs = [
        envelope([("pending", "b@dest.test")]),
        envelope([("delivered", "b@dest.test"), ("failed", "c@dest.test"),
                  ("suppressed", "\"d e\"@dest.test")],
                 "head-after-body: 300\ntag: newsletter\npersonal: clicks,opens,unsubscribe\n"),
        envelope([("pending", "b@dest.test")]).replace(b"kind: message", b"kind: bounce")
        .replace(b"sender: a@client.test", b"sender:"),
    ]
    for i, e in enumerate(envs):
        write("spool_envelope", f"seed-{i}", e)
    # A whole slot: header, message, envelope.
    msg = b"Subject: x\r\n\r\nbody\r\n"
    env = envelope([("pending", "b@dest.test")]).replace(b"size: 1234", f"size: {len(msg)}".encode())
    crc = zlib.crc32(msg + env)
    line = f"mxrelay-slot 1 L {MSG_ID} {len(msg)} {len(env)} {crc:08x}".encode()
    header = line.ljust(255, b" ") + b"\n"
    write("spool_records", "seed-slot", header + msg + env)
    # A state record of the same message.
    body = b"2 1790000060000 0\nPDFS\n451 4.7.1 try later\n"
    rec = f"mxrelay-state 1 {MSG_ID} 3 {len(body)} {zlib.crc32(body):08x}\n".encode() + body
    write("spool_records", "seed-state", rec)
    write("spool_records", "seed-id", MSG_ID)


def tracking():
    for name, msg in mime_samples():
        write("tracking_rewrite", f"seed-{name}", bytes([SEEDS[0]]) + msg)
        write("dkim_canon", f"seed-{name}", bytes([SEEDS[1]]) + msg.split(b"\r\n\r\n", 1)[-1])
    write("tracking_rewrite", "seed-html", bytes([SEEDS[1]]) +
          b"Content-Type: text/html\r\n\r\n<html><body><a href=\"http://a.test/x?a=1&amp;b=2\">x</a>"
          b"<area HREF=https://b.test/keep><a data-notrack href=\"http://c.test/\">"
          b"<!-- <a href=\"http://d.test/\"> --></body></html>\r\n")
    write("dkim_canon", "seed-wsp", bytes([SEEDS[0]]) + b"a  b\t c \r\n\r\n \t\r\nd\r\r\n\r\n\r\n")
    write("dkim_canon", "seed-header", b"\x00Subject :  Hello \r\n\t World\r\n")
    write("tracking_codecs", "seed-html", b"<a href=\"https://example.test/?x=1\">caf\xc3\xa9</a> \t\r\n")
    write("tracking_codecs", "seed-qp", b"caf=C3=A9 soft=\r\nbreak  \r\n=3D")
    write("tracking_codecs", "seed-b64", b"PGh0bWw+PC9odG1sPg==\r\nZm9v")
    write("tracking_token", "seed-0", b"\x00\x00\x00" + MSG_ID.encode() + b"b@dest.test https://a.test/")
    write("tracking_token", "seed-1", bytes(range(64)))


def proxy():
    write("proxy_header", "seed-v1-tcp4", b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO x\r\n")
    write("proxy_header", "seed-v1-tcp6", b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 587\r\n")
    write("proxy_header", "seed-v1-unknown", b"PROXY UNKNOWN\r\n")
    sig = b"\r\n\r\n\0\r\nQUIT\n"
    v4 = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack(">HH", 40000, 25) + bytes([4, 0, 3, 0, 0, 0])
    write("proxy_header", "seed-v2-inet", sig + bytes([0x21, 0x11]) + struct.pack(">H", len(v4)) + v4 + b"EHLO")
    v6 = bytes(16) + bytes(16) + struct.pack(">HH", 5555, 587)
    write("proxy_header", "seed-v2-inet6", sig + bytes([0x21, 0x21]) + struct.pack(">H", len(v6)) + v6)
    write("proxy_header", "seed-v2-local", sig + bytes([0x20, 0x00, 0, 0]))


def suppression():
    entry = "1790000000123 - manual a@b.test"
    write("suppression_records", "seed-entry", entry)
    write("suppression_records", "seed-expiring", "1790000000123 1800000000000 bounce \"x y\"@B.Test.")
    write("suppression_records", "seed-change", "- a@b.test")
    write("suppression_records", "seed-time", "2026-12-07T17:33:08.123+01:00")
    log = b"mxrelay-suppression 1\n"
    for body in ("+ " + entry, "+ 1790000000124 - unsubscribe c@d.test", "- a@b.test"):
        log += f"{zlib.crc32(body.encode()):08x} {body}\n".encode()
    write("suppression_records", "seed-log", log + b"0000 cut sh")


if __name__ == "__main__":
    smtp()
    data_and_replies()
    auth()
    spool()
    tracking()
    proxy()
    suppression()
