# Independent DKIM verifier for tests/dkim.rs: dkimpy (Debian python3-dkim, python3-nacl for
# Ed25519), the public keys read with a real TXT query to the test's DNS server.
# Usage: dkim_verify.py PORT FILE...   Prints per signature:
#   NAME IDX d=D s=S a=A pass|fail REASON      (or "NAME - none" for an unsigned message)
# and last "queries NAME..." (every TXT name the verifier asked for).
import logging
import os
import re
import sys

import dkim
import dns.resolver

port = int(sys.argv[1])
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = port
resolver.timeout = 3
resolver.lifetime = 5
queried = set()


def txt(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    queried.add(n.rstrip("."))
    try:
        answer = resolver.resolve(n, "TXT", lifetime=min(timeout, 5))
    except dns.resolver.NXDOMAIN:
        return None
    for rr in answer:
        return b"".join(rr.strings)
    return None


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def tag(value, name):
    flat = re.sub(rb"\s+", b"", value)
    m = re.search(rb"(?:^|;)" + name + rb"=([^;]*)", flat)
    return m.group(1).decode() if m else "?"


for path in sys.argv[2:]:
    name = os.path.basename(path)
    with open(path, "rb") as f:
        msg = f.read()
    headers, _ = dkim.rfc822_parse(msg)
    sigs = [v for (k, v) in headers if k.lower() == b"dkim-signature"]
    if not sigs:
        print(name, "-", "none", flush=True)
        continue
    for i, value in enumerate(sigs):
        log = logging.getLogger("dkim-%s-%d" % (name, i))
        log.setLevel(logging.DEBUG)
        collect = Collect()
        log.addHandler(collect)
        try:
            ok = dkim.DKIM(msg, logger=log, minkey=1024).verify(idx=i, dnsfunc=txt)
            why = "" if ok else " | ".join(collect.lines[-2:])
        except Exception as e:  # a verifier error is a failure with its reason
            ok, why = False, "%s: %s" % (type(e).__name__, e)
        print(name, i, "d=" + tag(value, b"d"), "s=" + tag(value, b"s"),
              "a=" + tag(value, b"a"), "pass" if ok else "fail",
              why.replace("\n", " "), flush=True)
print("queries", " ".join(sorted(queried)), flush=True)
