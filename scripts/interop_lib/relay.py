"""Starting mxrelay instances and reading their logs."""

import os
import re

from .procs import read, tail, wait_for
from .tap import diag


class Relay:
    def __init__(self, name, port, log, proc):
        self.name = name
        self.port = port
        self.log = log
        self.proc = proc

    def running(self):
        return self.proc.poll() is None

    def logged(self, regex, secs=5):
        """(True, _) once a line of the log matches REGEX (bounded wait); else some of its
        auth lines as the reason."""
        if wait_for(lambda: re.search(regex, read(self.log), re.M), secs):
            return True, None
        lines = [line for line in read(self.log).splitlines() if re.search("(?i)auth", line)]
        return False, "no line matching /%s/ in relay %s's log; its auth lines:\n%s" % (
            regex, self.name, "\n".join(lines[-10:]))


def start_relay(ctx, name, port, log, *args):
    """Start mxrelay listening on 127.0.0.1:PORT (plus any --listen ADDR:PORT/ROLE among
    ARGS) and check that it logged every listener. Returns a Relay, or None if it did not
    start."""
    tap = ctx.tap
    args = list(args)
    extra = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--listen"]
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    env["RUST_BACKTRACE"] = "1"
    argv = [ctx.mxrelay, "--listen", "127.0.0.1:%d" % port, "--retry", "1s",
            "--delivery-timeout", "10s", "-v"] + args
    proc = ctx.procs.start(log, argv, env=env)

    def up():
        return read(log).count("listening on") > len(extra) or proc.poll() is not None

    wait_for(up, 10)
    text = read(log)
    if text.count("listening on") > len(extra):
        m = (re.search(r"listening on 127\.0\.0\.1:(%d)\b" % port, text)
             or re.search(r"listening on 127\.0\.0\.1:([0-9]+)", text))
        real = m.group(1) if m else "?"
        tap.ok("relay %s started (listening on 127.0.0.1:%s)" % (name, real))
        if m and real != str(port):
            tap.not_ok("relay %s listens on the requested port %d (log says %s)" % (name, port, real))
        for a in extra:  # ADDR:PORT/ROLE: the log line names the role
            addr, _, role = a.partition("/")
            tap.check("relay %s listens on %s" % (name, a),
                      re.search(r"listening on %s \(%s\)" % (re.escape(addr), re.escape(role)), text)
                      is not None)
        return Relay(name, port, log, proc)
    if proc.poll() is not None:
        why = "it exited with status %d before logging 'listening on'" % proc.returncode
    else:
        why = "no 'listening on' in its log within 10 s"
    tap.not_ok("relay %s started (%s)" % (name, why))
    print("# ---- tail of %s ----" % os.path.basename(log))
    diag(tail(log))
    return None
