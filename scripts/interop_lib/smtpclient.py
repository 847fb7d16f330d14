"""Python smtplib as an SMTP client, run in-process. Each function returns a Session:
`lines` (facts observed, e.g. "EXT-AUTH no", "ERROR SMTPAuthenticationError: (535, ...)"),
`rc` (0 if the session did what was asked) and `transcript` (smtplib's debug output),
and writes the transcript and the facts to LOG (and LOG.out)."""

import base64
import contextlib
import io
import re
import smtplib
import ssl


class Session:
    def __init__(self, log):
        self.log = log
        self.lines = []
        self.rc = 0
        self.transcript = ""

    def say(self, *words):
        self.lines.append(" ".join(str(w) for w in words))

    def has(self, regex):
        """(True, _) if a line matches REGEX; else the lines as the reason."""
        if any(re.search(regex, line) for line in self.lines):
            return True, None
        return False, "want a line matching /%s/ in:\n%s" % (regex, "\n".join(self.lines))

    def accepted(self):
        """smtplib_ok: the session succeeded and the server said "queued as"."""
        if self.rc == 0 and "queued as" in self.transcript:
            return True, None
        tail = "\n".join(self.transcript.splitlines()[-20:])
        return False, "exit %d\n%s\n%s" % (self.rc, "\n".join(self.lines), tail)


@contextlib.contextmanager
def _session(log):
    s = Session(log)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield s
    except Exception as e:
        s.say("ERROR %s: %s" % (type(e).__name__, e))
        s.rc = 1
    finally:
        s.transcript = buf.getvalue()
        with open(log, "w") as f:
            f.write(s.transcript)
        with open(log + ".out", "w") as f:
            f.write("\n".join(s.lines) + "\n")


def crlf(path):
    """The message file's bytes with CRLF line ends (smtplib sends bytes as they are)."""
    with open(path, "rb") as f:
        return re.sub(rb"\r?\n", b"\r\n", f.read())


def _connect(host, port):
    """A plaintext SMTP session, EHLO sent, debug output on."""
    c = smtplib.SMTP(host, port, local_hostname="client.test", timeout=20)
    c.set_debuglevel(1)
    c.ehlo()
    return c


def send(log, host, port, sender, rcpts, msgfile):
    """EHLO, then sendmail() with BODY=8BITMIME."""
    with _session(log) as s:
        c = _connect(host, port)
        s.say("EXT-8BITMIME", "yes" if c.has_extn("8bitmime") else "no")
        s.say("EXT-PIPELINING", "yes" if c.has_extn("pipelining") else "no")
        refused = c.sendmail(sender, rcpts, crlf(msgfile), mail_options=["BODY=8BITMIME"])
        s.say("REFUSED", refused)
        c.quit()
        s.rc = 1 if refused else 0
    return s


def tlssend(log, mode, host, port, cafile, user, password, sender, rcpts, msgfile):
    """smtplib over TLS: MODE "starttls" (SMTP + starttls()) or "ssl" (SMTP_SSL), the
    certificate and host name verified against CAFILE, login() unless USER is None, then
    sendmail()."""
    ctx = ssl.create_default_context(cafile=cafile)
    with _session(log) as s:
        if mode == "starttls":
            c = _connect(host, port)
            s.say("PLAIN-EXT-STARTTLS", "yes" if c.has_extn("starttls") else "no")
            s.say("PLAIN-EXT-AUTH", "yes" if c.has_extn("auth") else "no")
            c.starttls(context=ctx)
        else:
            c = smtplib.SMTP_SSL(host, port, local_hostname="client.test", timeout=20,
                                 context=ctx)
            c.set_debuglevel(1)
        c.ehlo()
        s.say("TLS", c.sock.version(), c.sock.cipher()[0])
        s.say("EXT-AUTH", c.esmtp_features.get("auth", "(none)"))
        if user is not None:
            code, resp = c.login(user, password)
            s.say("LOGIN", code, resp.decode("latin-1"))
        refused = c.sendmail(sender, rcpts, crlf(msgfile))
        s.say("REFUSED", refused)
        c.quit()
        s.rc = 1 if refused else 0
    return s


def probe(log, host, port, user, password):
    """A plaintext session: whether EHLO advertises STARTTLS and AUTH, the reply to an AUTH
    PLAIN with good credentials sent anyway, and the reply to MAIL FROM."""
    with _session(log) as s:
        c = _connect(host, port)
        s.say("EXT-STARTTLS", "yes" if c.has_extn("starttls") else "no")
        s.say("EXT-AUTH", "yes" if c.has_extn("auth") else "no")
        tok = base64.b64encode(("\0%s\0%s" % (user, password)).encode()).decode()
        code, resp = c.docmd("AUTH", "PLAIN " + tok)
        s.say("AUTH-REPLY", code, resp.decode("latin-1"))
        code, resp = c.docmd("MAIL", "FROM:<probe@client.test>")
        s.say("MAIL-REPLY", code, resp.decode("latin-1"))
        c.docmd("RSET")
        c.quit()
    return s
