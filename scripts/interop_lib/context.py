"""What every check group needs: paths, the relay binary, the tally, the servers."""

import os
import re
import shutil

from .procs import Procs, run, tail
from .procs import read as read_text
from .tap import Tap, diag


class Ctx:
    def __init__(self, root, tmp, mxrelay):
        self.root = root
        self.T = tmp
        self.mxrelay = mxrelay
        self.tap = Tap()
        self.procs = Procs()
        self.matrices = []
        self.ports = {}
        self.relays = {}  # name -> Relay
        self.logs = []  # shown when a check failed
        self.stoppers = []  # called at exit, before the servers are killed
        for d in ("msg",):
            os.makedirs(self.path(d), exist_ok=True)

    def path(self, *parts):
        return os.path.join(self.T, *parts)

    def write_msg(self, name, text):
        """Write a message file under T/msg (UTF-8, as given) and return its path."""
        p = self.path("msg", name)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
        return p

    def stop_peers(self):
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as e:  # cleanup goes on
                print("# stopping a peer: %s: %s" % (type(e).__name__, e))

    def show_logs(self):
        for f in self.logs:
            if os.path.isfile(f):
                print("# ---- tail of %s ----" % os.path.relpath(f, self.T))
                diag(tail(f))


def have(tool):
    return shutil.which(tool) is not None


# ---- swaks -------------------------------------------------------------------------

def swaks(log, *args, timeout=30):
    """Run swaks (--timeout 20 --helo client.test ARGS); return its exit status."""
    rc, _, _ = run(["swaks", "--timeout", "20", "--helo", "client.test"] + list(args),
                   log=log, timeout=timeout)
    return rc


def _tail(log, n=25):
    return tail(log, n)


def swaks_ok(log, rc):
    """swaks exited 0 and the end of DATA got "250 2.0.0 ... queued as ID"."""
    if rc != 0:
        return False, "swaks exit %d\n%s" % (rc, _tail(log))
    if not re.search(r"^<[-~]  250[ -]2\.0\.0 .*queued as [^ ]+", read_text(log), re.M):
        return False, "no '250 2.0.0 Ok: queued as <ID>' reply\n" + _tail(log)
    return True, None


def swaks_auth_ok(log, rc):
    """swaks_ok, and the session was encrypted and AUTH got 235."""
    ok, why = swaks_ok(log, rc)
    if not ok:
        return ok, why
    text = read_text(log)
    if not re.search(r"^=== TLS started with cipher", text, re.M) or \
            not re.search(r"^<~  235[ -]", text, re.M):
        return False, "no '=== TLS started' line or no 235 reply to AUTH\n" + _tail(log)
    return True, None


def swaks_refused(log, rc, codes):
    """swaks failed, with one of CODES (regex) as a server reply, and nothing was queued."""
    text = read_text(log)
    if rc != 0 and re.search(r"^<[-~*]{1,2} +(%s)[ -]" % codes, text, re.M) and \
            "queued as" not in text:
        return True, None
    return False, "swaks exit %d; want a non-zero exit and a %s reply\n%s" % (rc, codes, _tail(log))


def swaks_noauth_plain(log, rc):
    """swaks --auth on a plaintext session: AUTH not advertised (swaks gives up) or 538."""
    text = read_text(log)
    if rc != 0 and not re.search(r"^<[-~*]{1,2} +235[ -]", text, re.M) and \
            "queued as" not in text and \
            re.search(r"did not advertise authentication|^<[-~*]{1,2} +538[ -]", text, re.M):
        return True, None
    return False, "swaks exit %d; want: AUTH not advertised, or 538\n%s" % (rc, _tail(log))


def swaks_has_tls():
    rc, out, err = run(["swaks", "--support"], timeout=20)
    return re.search(r"^=== TLS supported", out + err, re.M) is not None


def swaks_verify_args(ca):
    """swaks 20201014+ verifies with --tls-verify (its --help needs perldoc: read the
    script); [] for an older swaks."""
    path = shutil.which("swaks")
    try:
        with open(path, "rb") as f:
            if b"tls-ca-path" in f.read():
                return ["--tls-verify", "--tls-ca-path", ca]
    except (OSError, TypeError):
        pass
    return []


def has_line(text, regex):
    """(True, _) if TEXT has a line matching REGEX."""
    if re.search(regex, text, re.M):
        return True, None
    return False, "want a line matching /%s/ in:\n%s" % (regex, text)
