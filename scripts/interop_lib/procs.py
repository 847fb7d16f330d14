"""Background servers, bounded waits and free loopback ports."""

import os
import signal
import socket
import subprocess
import time

# Nothing started here may outlive the run, even if the script is killed hard: every
# server runs under timeout(1) with this bound (seconds).
SERVER_LIFETIME = 400


class Procs:
    """Servers started in the background, each in its own process group, all ended by
    stop_all() (called at exit)."""

    def __init__(self):
        self.procs = []

    def start(self, log, argv, env=None, lifetime=SERVER_LIFETIME):
        """Start ARGV with stdout and stderr to the file LOG; return the Popen."""
        out = open(log, "ab")
        p = subprocess.Popen(
            ["timeout", "-k", "3", str(lifetime)] + list(argv),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
        out.close()
        self.procs.append(p)
        return p

    def stop_all(self, grace=3.0):
        """SIGTERM every process group, wait up to GRACE seconds, then SIGKILL."""
        for p in self.procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.time() + grace
        for p in self.procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            _signal_group(p, signal.SIGKILL)
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.procs = []


def _signal_group(p, sig):
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(argv, log=None, timeout=30, input=None, env=None, cwd=None):
    """Run ARGV to completion (killed after TIMEOUT s). Output (stdout then stderr) goes to
    LOG if given. Returns (exit status, stdout text, stderr text); status 124 on timeout,
    127 if the program is missing."""
    try:
        r = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, env=env,
                           cwd=cwd, stdin=None if input is not None else subprocess.DEVNULL)
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, e.stdout or b"", (e.stderr or b"") + b"\n(timed out)\n"
    except FileNotFoundError as e:
        rc, out, err = 127, b"", str(e).encode()
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace")
    if log:
        with open(log, "w") as f:
            f.write(out)
            f.write(err)
    return rc, out, err


def wait_for(cond, secs, step=0.1):
    """Poll COND() until it returns a true value or SECS pass; return its last value."""
    deadline = time.time() + secs
    while True:
        v = cond()
        if v or time.time() >= deadline:
            return v
        time.sleep(step)


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_port(host, port, secs=5):
    return wait_for(lambda: port_open(host, port), secs)


def free_ports(addrs):
    """One free TCP port per address in ADDRS (distinct, and free for UDP too, so that a
    DNS server can take it)."""
    held, out = [], []
    try:
        for a in addrs:
            for _ in range(50):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((a, 0))
                port = s.getsockname()[1]
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    if port in out:
                        raise OSError("taken")
                    u.bind((a, port))
                except OSError:
                    s.close()
                    u.close()
                    continue
                held += [s, u]
                out.append(port)
                break
            else:
                raise RuntimeError("no free port on " + a)
    finally:
        for s in held:
            s.close()
    return out


def tail(path, n=40):
    """The last N lines of a file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""
