"""SMTP clients driven against mxrelay: one function per client, each sending one message
in one of four ways (a Job), and answering (accepted, why).

  plain       relay port, no TLS, no AUTH (127.0.0.1 is a trusted network)
  starttls    relay port, STARTTLS with the certificate verified, no AUTH
  submission  submission port: STARTTLS (verified) and AUTH
  smtps       smtps port: implicit TLS (verified) and AUTH
"""

import base64
import os
import queue
import re
import shutil
import subprocess
import threading
import time

from . import smtpclient
from .context import swaks, swaks_auth_ok, swaks_ok, swaks_verify_args
from .procs import read, run, tail

CASES = ("plain", "starttls", "submission", "smtps")


class Job:
    def __init__(self, case, host, port, ca, user, password, sender, rcpt, msg, log):
        self.case, self.host, self.port, self.ca = case, host, port, ca
        self.user, self.password = user, password  # user None: no AUTH
        self.sender, self.rcpt, self.msg, self.log = sender, rcpt, msg, log

    @property
    def tls(self):
        return {"plain": None, "starttls": "starttls", "submission": "starttls",
                "smtps": "implicit"}[self.case]

    @property
    def hostport(self):
        return "%s:%d" % (self.host, self.port)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _want(text, regexes):
    """(True, None) if TEXT has a line matching each regex; else which are missing."""
    missing = [r for r in regexes if not re.search(r, text, re.M)]
    return not missing, "no line matching %s" % ", ".join("/%s/" % r for r in missing)


# ---- swaks ------------------------------------------------------------------------------

def send_swaks(job):
    args = ["--server", job.hostport, "--from", job.sender, "--to", job.rcpt,
            "--data", read(job.msg).rstrip("\n")]
    verify = swaks_verify_args(job.ca)
    if job.tls == "starttls":
        args += ["--tls"] + verify
    elif job.tls == "implicit":
        args += ["--tlsc"] + verify
    if job.user:
        mech = "PLAIN" if job.case == "submission" else "LOGIN"
        args += ["--auth", mech, "--auth-user", job.user, "--auth-password", job.password]
    rc = swaks(job.log, *args)
    if job.user:
        return swaks_auth_ok(job.log, rc)
    ok, why = swaks_ok(job.log, rc)
    if ok and job.tls and not re.search(r"^=== TLS started with cipher", read(job.log), re.M):
        return False, "no '=== TLS started' line\n" + tail(job.log, 25)
    return ok, why


# ---- Python smtplib ---------------------------------------------------------------------

def send_smtplib(job):
    if job.tls is None:
        s = smtpclient.send(job.log, job.host, job.port, job.sender, [job.rcpt], job.msg)
    else:
        s = smtpclient.tlssend(job.log, "starttls" if job.tls == "starttls" else "ssl", job.host,
                               job.port, job.ca, job.user, job.password, job.sender, [job.rcpt],
                               job.msg)
    ok, why = s.accepted()
    if ok and job.tls:
        ok, why = s.has(r"^TLS TLSv1\.[23] ")
    return ok, why


# ---- curl -------------------------------------------------------------------------------

def send_curl(job):
    scheme = "smtps" if job.tls == "implicit" else "smtp"
    argv = ["curl", "-sS", "-v", "--max-time", "20", "--url",
            "%s://%s/client.test" % (scheme, job.hostport),
            "--mail-from", job.sender, "--mail-rcpt", job.rcpt, "--upload-file", job.msg, "--crlf"]
    if job.tls:
        argv += ["--cacert", job.ca]
    if job.tls == "starttls":
        argv += ["--ssl-reqd"]
    if job.user:
        argv += ["--user", "%s:%s" % (job.user, job.password)]
    rc, _, err = run(argv, timeout=30)
    _write(job.log, err)
    want = [r"^< 250[ -].*queued as"]
    if job.tls == "starttls":
        want.append(r"^> STARTTLS")
    if job.tls:
        want.append(r"^\* .*(TLSv1\.[23]|SSL connection using)")
    if job.user:
        want.append(r"^< 235[ -]")
    ok, why = _want(err, want)
    if rc != 0 or not ok:
        lines = [x for x in err.splitlines() if re.match(r"[<>*] ", x)]
        return False, "curl exit %d; %s\n%s" % (rc, why, "\n".join(lines[-25:]))
    return True, None


# ---- msmtp ------------------------------------------------------------------------------

def send_msmtp(job):
    argv = ["msmtp", "-C", "/dev/null", "--debug", "--host=" + job.host, "--port=%d" % job.port,
            "--domain=client.test", "--from=" + job.sender,
            "--tls=" + ("on" if job.tls else "off"),
            "--tls-starttls=" + ("off" if job.tls == "implicit" else "on")]
    if job.tls:
        argv.append("--tls-trust-file=" + job.ca)
    if job.user:
        pwfile = job.log + ".password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(job.password + "\n")
        argv += ["--auth=on", "--user=" + job.user, "--passwordeval=cat " + pwfile]
    else:
        argv.append("--auth=off")
    argv += ["--", job.rcpt]
    with open(job.msg, "rb") as f:
        rc, out, err = run(argv, input=f.read(), timeout=30)
    _write(job.log, out + err)
    want = [r"<-- 250[ -].*queued as"]
    if job.tls:
        want.append(r"(?i)TLS session parameters|TLS certificate information")
    if job.user:
        want.append(r"<-- 235[ -]")
    ok, why = _want(out + err, want)
    if rc != 0 or not ok:
        return False, "msmtp exit %d; %s\n%s" % (rc, why, tail(job.log, 25))
    return True, None


# ---- openssl s_client -------------------------------------------------------------------

class _Lines:
    """The lines a process writes to stdout, read by a thread, taken with a deadline."""

    def __init__(self, stream, transcript):
        self.q = queue.Queue()
        self.transcript = transcript
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream):
        for line in iter(stream.readline, b""):
            self.q.put(line.decode("utf-8", "replace").rstrip("\r\n"))
        self.q.put(None)

    def reply(self, secs=20):
        """One SMTP reply: (code, lines); code 0 if the stream ended or timed out."""
        lines, deadline = [], time.time() + secs
        while True:
            try:
                line = self.q.get(timeout=max(0.05, deadline - time.time()))
            except queue.Empty:
                return 0, lines
            if line is None:
                return 0, lines
            self.transcript.append("<- " + line)
            lines.append(line)
            m = re.match(r"^([0-9]{3})( |$)", line)
            if m:
                return int(m.group(1)), lines


def send_s_client(job):
    """openssl s_client as a typed-in session (-quiet -crlf): the script waits for each
    reply before sending the next command, stuffs dots itself, and checks every code."""
    argv = ["openssl", "s_client", "-connect", job.hostport, "-CAfile", job.ca,
            "-verify_ip", job.host, "-verify_return_error", "-quiet", "-crlf"]
    if job.tls == "starttls":
        argv += ["-starttls", "smtp", "-name", "client.test"]
    transcript = []
    p = subprocess.Popen(["timeout", "-k", "2", "40"] + argv, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = _Lines(p.stdout, transcript)
    err_chunks = []
    err_reader = threading.Thread(target=lambda: err_chunks.append(p.stderr.read()), daemon=True)
    err_reader.start()

    def send(text):
        transcript.append("-> " + text)
        p.stdin.write(text.encode() + b"\n")
        p.stdin.flush()

    steps = []
    if job.tls == "implicit":
        steps.append((None, 220))  # the greeting (s_client ate it for -starttls)
    steps.append(("EHLO client.test", 250))
    if job.user:
        tok = base64.b64encode(("\0%s\0%s" % (job.user, job.password)).encode()).decode()
        steps.append(("AUTH PLAIN " + tok, 235))
    steps += [("MAIL FROM:<%s>" % job.sender, 250), ("RCPT TO:<%s>" % job.rcpt, 250),
              ("DATA", 354)]
    body = [("." + x if x.startswith(".") else x) for x in read(job.msg).rstrip("\n").split("\n")]
    steps += [("\n".join(body + ["."]), 250), ("QUIT", 221)]
    why = None
    try:
        for cmd, want in steps:
            if cmd is not None:
                send(cmd)
            code, got = lines.reply()
            if code != want:
                why = "after %r: want %d, got %r" % ((cmd or "connect")[:40], want, got)
                break
            if want == 250 and cmd and cmd.endswith("\n.") and "queued as" not in got[-1]:
                why = "no 'queued as' in %r" % got[-1]
                break
    except (BrokenPipeError, OSError) as e:
        why = "s_client: %s" % e
    try:
        p.stdin.close()
    except OSError:
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    err_reader.join(timeout=2)
    err = b"".join(err_chunks).decode("utf-8", "replace")
    _write(job.log, "\n".join(transcript) + "\n---- stderr ----\n" + err)
    if why is None and "verify return:1" not in err:
        why = "s_client did not report a verified chain (verify return:1)"
    if why:
        return False, why + "\n" + tail(job.log, 25)
    return True, None


# ---- Perl Net::SMTP ---------------------------------------------------------------------

NETSMTP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netsmtp.pl")


def send_netsmtp(job):
    mode = {None: "plain", "starttls": "starttls", "implicit": "ssl"}[job.tls]
    rc, out, err = run(["perl", NETSMTP, mode, job.host, str(job.port), job.ca,
                        job.user or "-", job.password or "-", job.sender, job.rcpt, job.msg],
                       timeout=30)
    _write(job.log, out + "---- transcript ----\n" + err)
    want = [r"^QUEUED 250 .*queued as"]
    if job.tls:
        want.append(r"^TLS TLSv1[._]?[23]")
    ok, why = _want(out, want)
    if rc != 0 or not ok:
        return False, "perl exit %d; %s\n%s" % (rc, why, tail(job.log, 25))
    return True, None


def perl_has(*modules):
    rc, _, _ = run(["perl"] + ["-M" + m for m in modules] + ["-e1"], timeout=20)
    return rc == 0


# name -> (send function, why it cannot run here or "", cases it does not apply to)
def clients():
    have = shutil.which
    return [
        ("swaks", send_swaks, "" if have("swaks") else "swaks not installed", ()),
        ("Python smtplib", send_smtplib, "", ()),
        ("curl", send_curl, "" if have("curl") else "curl not installed", ()),
        ("msmtp", send_msmtp, "" if have("msmtp") else "msmtp not installed", ()),
        ("openssl s_client", send_s_client, "", ("plain",)),
        ("Perl Net::SMTP", send_netsmtp,
         "" if perl_has("Net::SMTP", "IO::Socket::SSL", "Authen::SASL") else
         "Perl IO::Socket::SSL or Authen::SASL missing (libio-socket-ssl-perl, "
         "libauthen-sasl-perl)", ()),
    ]
