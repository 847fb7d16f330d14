"""Private receiving MTAs, started for the run and stopped at its end: a Postfix and an
Exim, each delivering every message it accepts into a Maildir inside the temp dir.
Both need root (Postfix's master, Exim's change to its own user)."""

import glob
import os
import shutil
import signal
import subprocess
import time

from .procs import read, run, tail, wait_port

CERT_FILES = ("server-chain.pem", "server.key")


def _copy_tls(ctx, dest, uid=0, gid=0):
    """The test certificate chain and key, for a peer that reads them as UID."""
    os.makedirs(dest, exist_ok=True)
    cert, key = os.path.join(dest, "cert.pem"), os.path.join(dest, "key.pem")
    shutil.copyfile(os.path.join(ctx.certs, "server-chain.pem"), cert)
    shutil.copyfile(os.path.join(ctx.certs, "server.key"), key)
    os.chmod(cert, 0o644)
    os.chmod(key, 0o600)
    os.chown(key, uid, gid)
    return cert, key


# ---- Postfix ----------------------------------------------------------------------------

POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix (its own config_directory and queue_directory, `postfix -c DIR
    start-fg`), never the host's instance. Listeners (master.cf): ADDR:plain (no TLS),
    ADDR:starttls (STARTTLS offered) and SMTPS_ADDR:smtps (implicit TLS). It accepts mail
    for DOMAINS and delivers it with virtual(8) into one Maildir as `nobody`."""

    name = "Postfix"

    def __init__(self, ctx, addr, smtps_addr, ports, domains):
        self.ctx = ctx
        self.addr, self.smtps_addr = addr, smtps_addr
        self.ports = ports  # {"plain": p, "starttls": p, "smtps": p}
        self.domains = domains
        self.dir = ctx.path("postfix")
        self.etc = os.path.join(self.dir, "etc")
        self.log = os.path.join(self.dir, "maillog")
        self.maildir = os.path.join(self.dir, "mail", "maildir")
        self.proc = None

    @staticmethod
    def missing():
        """Why this host cannot run one ('' if it can)."""
        if os.getuid() != 0:
            return "not root: a private Postfix needs root"
        if not shutil.which("postfix"):
            return "postfix not installed"
        return ""

    def _write_config(self):
        d = self.dir
        for sub in ("etc", "spool", "data", "mail"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        os.chmod(d, 0o755)
        shutil.chown(os.path.join(d, "data"), "postfix", "postfix")
        os.chown(os.path.join(d, "mail"), 65534, 65534)
        cert, key = _copy_tls(self.ctx, self.etc)
        main = """\
# a private instance written by scripts/interop
compatibility_level = 3.6
config_directory = {d}/etc
queue_directory = {d}/spool
data_directory = {d}/data
maillog_file = {log}
maillog_file_prefixes = {d}
myhostname = postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:no local delivery
alias_maps =
alias_database =
relay_domains =
relayhost =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
virtual_mailbox_domains = {domains}
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = static:maildir/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 100
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
biff = no
smtputf8_enable = no
""".format(d=d, log=self.log, domains=", ".join(self.domains), cert=cert, key=key)
        p = self.ports
        master = (
            "{a}:{plain} inet n - n - - smtpd -o smtpd_tls_security_level=none\n"
            "{a}:{starttls} inet n - n - - smtpd\n"
            "{s}:{smtps} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes"
            " -o smtpd_tls_security_level=encrypt\n"
        ).format(a=self.addr, s=self.smtps_addr, **p) + POSTFIX_SERVICES
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(main)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(master)

    def start(self):
        """(True, None) once all three listeners accept connections; else (False, why)."""
        self._write_config()
        rc, out, err = run(["postfix", "-c", self.etc, "check"], timeout=60,
                           log=os.path.join(self.dir, "check.log"))
        if rc != 0:
            # postfix(1) reports its errors to syslog only, unless stderr is a terminal
            _, out2, _ = run(["script", "-qec", "postfix -c %s check" % self.etc, "/dev/null"],
                             timeout=60)
            return False, "postfix check failed (%d):\n%s%s%s" % (rc, out, err, out2)
        self.proc = self.ctx.procs.start(os.path.join(self.dir, "start-fg.log"),
                                         ["postfix", "-c", self.etc, "start-fg"])
        self.ctx.stoppers.append(self.stop)
        self.ctx.logs.append(self.log)
        for kind, port in sorted(self.ports.items()):
            addr = self.smtps_addr if kind == "smtps" else self.addr
            if not wait_port(addr, port, 15):
                return False, "no listener on %s:%d after 15 s\n%s\n%s" % (
                    addr, port, read(os.path.join(self.dir, "start-fg.log")), tail(self.log))
        return True, None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        run(["postfix", "-c", self.etc, "stop"], timeout=15)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # Procs.stop_all kills what is left of its process group

    def mailbox(self):
        return Maildir("Postfix", self.maildir, "delivered-to")


# ---- Exim -------------------------------------------------------------------------------

# Debian's exim4-daemon-light conflicts with postfix, so scripts/test only unpacks it here.
EXIM_UNPACKED = "/var/cache/mxrelay-test/exim4/usr/sbin/exim4"
EXIM_USER = "Debian-exim"  # compiled in (EXIM_USER=ref:Debian-exim)
EXIM_USER_PASSWORD = "relay s3cret"

EXIM_CONF = """\
# a private instance written by scripts/interop
exim_path = @d@/exim4
primary_hostname = exim.test
spool_directory = @d@/spool
log_file_path = @d@/log/%slog
pid_file_path = @d@/exim.pid
keep_environment =
local_interfaces = @addr@
daemon_smtp_ports = @plain@ : @mx@ : @sub@ : @smtps@
tls_on_connect_ports = @smtps@
tls_advertise_hosts = ${if eq{$received_port}{@plain@}{}{*}}
tls_certificate = @d@/tls/cert.pem
tls_privatekey = @d@/tls/key.pem
auth_advertise_hosts = ${if def:tls_in_cipher {*}{}}
# no DNS, no ident, nothing that would look past loopback
host_lookup =
rfc1413_hosts =
acl_smtp_mail = acl_mail
acl_smtp_rcpt = acl_rcpt

begin acl
acl_mail:
  deny    condition = ${if or{{eq{$received_port}{@sub@}}{eq{$received_port}{@smtps@}}}}
          !authenticated = *
          message = 530 5.7.0 authentication required
  accept
acl_rcpt:
  accept

begin routers
everything:
  driver = accept
  transport = maildir

begin transports
maildir:
  driver = appendfile
  directory = @d@/maildir
  maildir_format
  create_directory
  delivery_date_add
  envelope_to_add
  return_path_add

begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${if and{{eq{$auth2}{@user@}}{eq{$auth3}{@password@}}}}
  server_set_id = $auth2
login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = Username:: : Password::
  server_condition = ${if and{{eq{$auth1}{@user@}}{eq{$auth2}{@password@}}}}
  server_set_id = $auth1
"""


def fill(template, **values):
    """TEMPLATE with each @name@ replaced by str(values[name])."""
    for k, v in values.items():
        template = template.replace("@%s@" % k, str(v))
    return template


def find_exim():
    for c in (os.environ.get("EXIM"), EXIM_UNPACKED, shutil.which("exim4"), shutil.which("exim")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def _free_id(used, start=64990):
    i = start
    while i in used:
        i -= 1
    return i


class Exim:
    """A private Exim daemon (`exim -bdf -C CONF`) on ADDR with four ports: plain (no
    TLS offered), mx (STARTTLS), sub (STARTTLS, AUTH required) and smtps (implicit TLS,
    AUTH required); AUTH PLAIN and LOGIN, offered only under TLS, for one user.

    Exim drops root for a -C configuration and runs as its compiled-in user, Debian-exim,
    which the host need not have: the daemon runs in a private mount namespace
    (unshare -m) where copies of /etc/passwd and /etc/group with that user are mounted
    over the real ones. Its binary is copied into the temp dir (exim_path), where that
    user can read it."""

    name = "Exim"
    user = "relay"
    password = EXIM_USER_PASSWORD

    def __init__(self, ctx, addr, ports):
        self.ctx = ctx
        self.addr = addr
        self.ports = ports  # {"plain": p, "mx": p, "sub": p, "smtps": p}
        self.dir = ctx.path("exim")
        self.binary = find_exim()
        self.log = os.path.join(self.dir, "log", "mainlog")
        self.proc = None

    @staticmethod
    def missing():
        if os.getuid() != 0:
            return "not root: Exim's private user needs a mount namespace"
        if not find_exim():
            return "exim not installed (scripts/test unpacks exim4-daemon-light into %s)" % (
                os.path.dirname(os.path.dirname(os.path.dirname(EXIM_UNPACKED))))
        if not shutil.which("unshare"):
            return "unshare (util-linux) not installed"
        if run(["unshare", "-m", "true"], timeout=10)[0] != 0:
            return "no private mount namespace here (unshare -m failed)"
        return ""

    def _write_files(self):
        d = self.dir
        os.makedirs(d, exist_ok=True)
        with open("/etc/passwd") as f:
            passwd = [x for x in f.read().splitlines() if not x.startswith(EXIM_USER + ":")]
        with open("/etc/group") as f:
            group = [x for x in f.read().splitlines() if not x.startswith(EXIM_USER + ":")]
        uid = _free_id({int(x.split(":")[2]) for x in passwd if x.count(":") >= 3})
        gid = _free_id({int(x.split(":")[2]) for x in group if x.count(":") >= 2})
        passwd.append("%s:x:%d:%d:Exim (interop):/nonexistent:/usr/sbin/nologin" % (EXIM_USER, uid, gid))
        group.append("%s:x:%d:" % (EXIM_USER, gid))
        with open(os.path.join(d, "passwd"), "w") as f:
            f.write("\n".join(passwd) + "\n")
        with open(os.path.join(d, "group"), "w") as f:
            f.write("\n".join(group) + "\n")
        shutil.copy(self.binary, os.path.join(d, "exim4"))
        os.chmod(os.path.join(d, "exim4"), 0o755)  # no setuid bit: it runs as root anyway
        _copy_tls(self.ctx, os.path.join(d, "tls"), uid, gid)
        with open(os.path.join(d, "exim.conf"), "w") as f:
            f.write(fill(EXIM_CONF, d=d, addr=self.addr, user=self.user,
                         password=self.password, **self.ports))
        for sub in ("spool", "log", "maildir"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        for sub in ("", "spool", "log", "maildir", "tls"):
            os.chown(os.path.join(d, sub), uid, gid)
            os.chmod(os.path.join(d, sub), 0o755)

    def start(self):
        self._write_files()
        d = self.dir
        script = ("mount --bind {d}/passwd /etc/passwd && mount --bind {d}/group /etc/group && "
                  "exec {d}/exim4 -bdf -C {d}/exim.conf").format(d=d)
        self.proc = self.ctx.procs.start(os.path.join(d, "daemon.log"),
                                         ["unshare", "-m", "--propagation", "private",
                                          "sh", "-c", script])
        self.ctx.stoppers.append(self.stop)
        self.ctx.logs += [self.log, os.path.join(d, "log", "paniclog"),
                          os.path.join(d, "daemon.log")]
        for kind, port in sorted(self.ports.items()):
            if not wait_port(self.addr, port, 10):
                return False, "no listener on %s:%d after 10 s\n%s\n%s" % (
                    self.addr, port, read(os.path.join(d, "daemon.log")), tail(self.log))
        return True, None

    def _our_pids(self):
        """Processes running this run's copy of the Exim binary (deliveries that left the
        daemon's process group)."""
        exe = os.path.join(self.dir, "exim4")
        pids = []
        for p in glob.glob("/proc/[0-9]*/exe"):
            try:
                if os.readlink(p) == exe:
                    pids.append(int(p.split("/")[2]))
            except OSError:
                pass
        return pids

    def stop(self):
        for _ in range(2):
            for pid in self._our_pids():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if not self._our_pids():
                break
            time.sleep(0.5)

    def mailbox(self):
        return Maildir("Exim", os.path.join(self.dir, "maildir"), "envelope-to")


# ---- delivered messages -----------------------------------------------------------------

class Delivered:
    """One delivered message: header fields in order (name lower case, value unfolded),
    the body (LF line ends), and where it is."""

    def __init__(self, path, data):
        self.path = path
        data = data.replace(b"\r\n", b"\n")
        head, _, self.body = data.partition(b"\n\n")
        self.headers = []
        for line in head.decode("utf-8", "replace").split("\n"):
            if line[:1] in (" ", "\t") and self.headers:
                self.headers[-1][1] += " " + line.strip()
            else:
                n, _, v = line.partition(":")
                self.headers.append([n.strip().lower(), v.strip()])

    def all(self, name):
        return [v for n, v in self.headers if n == name]

    def first(self, name):
        v = self.all(name)
        return v[0] if v else ""


class Maildir:
    """Where a peer delivered: a Maildir; RCPT_HEADER names the field the delivery agent
    adds with the envelope recipient (Postfix: Delivered-To, Exim: Envelope-to)."""

    def __init__(self, name, path, rcpt_header):
        self.name, self.path, self.rcpt_header = name, path, rcpt_header

    def messages(self):
        out = []
        for f in sorted(glob.glob(os.path.join(self.path, "new", "*")) +
                        glob.glob(os.path.join(self.path, "cur", "*"))):
            try:
                with open(f, "rb") as fh:
                    out.append(Delivered(f, fh.read()))
            except OSError:
                pass
        return out

    def find(self, marker):
        """Messages whose Subject has MARKER and whose body has "end of MARKER"."""
        end = ("end of " + marker).encode()
        return [m for m in self.messages() if marker in m.first("subject") and end in m.body]

    def envelope(self, m):
        """(sender, [recipients]) as the delivery agent recorded them."""
        rcpts = [r.strip() for v in m.all(self.rcpt_header) for r in v.split(",") if r.strip()]
        return m.first("return-path").strip("<>"), rcpts


class SinkBox(Maildir):
    """smtp-sink's dump files (-d DIR/m.), read like a Maildir: the envelope is in its
    X-Mail-Args and X-Rcpt-Args fields."""

    def __init__(self, name, path):
        Maildir.__init__(self, name, path, "x-rcpt-args")

    def messages(self):
        out = []
        for f in sorted(glob.glob(os.path.join(self.path, "m.*"))):
            with open(f, "rb") as fh:
                m = Delivered(f, fh.read())
            if m.body.endswith(b"\n\n"):
                m.body = m.body[:-1]  # smtp-sink adds an empty line after the message
            out.append(m)
        return out

    def envelope(self, m):
        first = lambda v: (v.split() or [""])[0].strip("<>")  # noqa: E731
        return first(m.first("x-mail-args")), [first(v) for v in m.all("x-rcpt-args")]
