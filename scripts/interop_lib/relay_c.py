"""Relay C: TLS and AUTH. Listens on 127.0.0.1 as submission (STARTTLS, AUTH required),
smtps (implicit TLS, AUTH required) and smtp (STARTTLS offered, AUTH only under TLS), with
scripts/test-certs' certificate and a users file (mxrelay hash-password, openssl passwd -6
and, when installed, htpasswd -nbB accounts); --smarthost smtp-sink #3 (no TLS).

Each accepted message must reach smtp-sink #3 with relay C's Received: saying "with
ESMTPSA" and naming the account. The refusals come last: every failed AUTH counts towards
relay C's lockout of 127.0.0.1 (--auth-max-failures, default 5)."""

import os
import re
import time

from . import sinkdump, smtpclient
from .context import (have, has_line, read_text, swaks, swaks_auth_ok, swaks_has_tls,
                      swaks_noauth_plain, swaks_refused, swaks_verify_args)
from .procs import run
from .relay import start_relay

PW = {
    "alice": "alice s3cret pass",  # mxrelay hash-password      ($2y$, bcrypt)
    "bob": "bob:pa55 w0rd",  # openssl passwd -6          ($6$, SHA-512 crypt)
    "carol": "carol-Pa55word",  # htpasswd -nbB, if installed ($2y$, bcrypt)
}


def make_certs(ctx):
    """scripts/test-certs into T/certs; sets ctx.certs and ctx.ca."""
    ctx.certs = ctx.path("certs")
    ctx.ca = os.path.join(ctx.certs, "ca.pem")
    log = ctx.path("test-certs.log")
    rc, out, err = run([os.path.join(ctx.root, "scripts", "test-certs"), ctx.certs], log=log,
                       timeout=60)
    if rc != 0:
        return False, out + err
    need = ("ca.pem", "server-chain.pem", "server.key")
    missing = [f for f in need if not os.path.getsize(os.path.join(ctx.certs, f))]
    return not missing, "empty: %s" % missing


def hash_of(argv, stdin):
    rc, out, err = run(argv, input=stdin.encode(), timeout=30)
    return out.strip()


def write_users(ctx, path, accounts):
    """A users file (mode 0600: mxrelay refuses secrets others can read) with ACCOUNTS:
    [(description, name, prefix, hash)], one check per account."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for desc, name, prefix, h in accounts:
            good = h.startswith(prefix)
            ctx.tap.check(desc, good, "got '%s'" % h)
            if good:
                f.write("%s:%s\n" % (name, h))


def setup(ctx):
    """Certificates, the users file and relay C. False if relay C did not start."""
    tap = ctx.tap
    ctx.users = ctx.path("users")
    ctx.have_htpasswd = have("htpasswd")
    tap.check("scripts/test-certs made a CA and a server certificate", make_certs(ctx))
    accounts = [
        ("users file: alice from 'mxrelay hash-password' ($2y$)", "alice", "$2y$",
         hash_of([ctx.mxrelay, "hash-password"], PW["alice"] + "\n")),
        ("users file: bob from 'openssl passwd -6' ($6$)", "bob", "$6$",
         hash_of(["openssl", "passwd", "-6", "-stdin"], PW["bob"] + "\n")),
    ]
    if ctx.have_htpasswd:
        line = hash_of(["htpasswd", "-nbB", "carol", PW["carol"]], "")
        accounts.append(("users file: carol from 'htpasswd -nbB' ($2y$)", "carol", "$2y$",
                         line[len("carol:"):] if line.startswith("carol:") else line))
    write_users(ctx, ctx.users, accounts)
    if not ctx.have_htpasswd:
        tap.skip("htpasswd not installed (apache2-utils): no htpasswd -nbB account")

    p = ctx.ports
    os.makedirs(ctx.path("spool-c"), exist_ok=True)
    ctx.logs.append(ctx.path("relay-c.log"))
    ctx.relays["C"] = start_relay(
        ctx, "C", p["c"], ctx.path("relay-c.log"), "--spool", ctx.path("spool-c"),
        "--hostname", "relay-c.test",
        "--listen", "127.0.0.1:%d/submission" % p["c_sub"],
        "--listen", "127.0.0.1:%d/smtps" % p["c_smtps"],
        "--tls-cert", os.path.join(ctx.certs, "server-chain.pem"),
        "--tls-key", os.path.join(ctx.certs, "server.key"), "--users", ctx.users,
        "--smarthost", "127.0.0.4:%d" % p["sink3"], "--smarthost-tls", "none",
        "--dns-server", "127.0.0.1:%d" % p["dns"])
    return ctx.relays["C"] is not None


def curl_ok(rc, log):
    """curl -v transcript: STARTTLS, 235 to AUTH, 250 queued as."""
    text = read_text(log)
    if rc == 0 and re.search(r"^> STARTTLS", text, re.M) and re.search(r"^< 235[ -]", text, re.M) \
            and re.search(r"^< 250[ -]2\.0\.0 .*queued as", text, re.M):
        return True, None
    lines = [line for line in text.splitlines() if re.match(r"[<>*] ", line)]
    return False, "curl exit %d\n%s" % (rc, "\n".join(lines[-25:]))


def auth_only_under_tls(s):
    """smtplib tlssend: AUTH advertised under TLS and, for starttls, not before it."""
    if s.has(r"^EXT-AUTH .*PLAIN")[0] and not s.has(r"^PLAIN-EXT-AUTH yes")[0]:
        return True, None
    return False, "\n".join(s.lines)


def no_ragged_eof(err):
    """openssl s_client's stderr: the peer closed without a TLS close_notify alert."""
    if "unexpected eof while reading" not in err:
        return True, None
    return False, "\n".join(line for line in err.splitlines() if "eof" in line.lower())


def checks(ctx):
    tap, p, ca, relay = ctx.tap, ctx.ports, ctx.ca, ctx.relays["C"]
    sub, smtps, smtp = ("127.0.0.1:%d" % p[k] for k in ("c_sub", "c_smtps", "c"))
    c2_user = "carol" if ctx.have_htpasswd else "alice"
    used = ["alice", "bob"]
    swaks_tls = swaks_has_tls()
    verify = swaks_verify_args(ca)
    if not verify:
        print("# this swaks has no --tls-verify: its TLS sessions are not verified")
    vflag = "--tls-verify " if verify else ""

    # 1. swaks STARTTLS + AUTH PLAIN -> submission
    body1 = "swaks STARTTLS, AUTH PLAIN SUBM_SWAKS\n.dot line\nend of SUBM_SWAKS"
    ctx.write_msg("subm-swaks", "Subject: interop SUBM_SWAKS\n\n%s\n" % body1)
    # 2. swaks implicit TLS + AUTH LOGIN -> smtps
    body2 = "swaks implicit TLS, AUTH LOGIN SMTPS_SWAKS\nend of SMTPS_SWAKS"
    ctx.write_msg("smtps-swaks", "Subject: interop SMTPS_SWAKS\n\n%s\n" % body2)
    if swaks_tls:
        log = ctx.path("swaks-c-subm.log")
        rc = swaks(log, "--server", sub, "--tls", *verify, "--auth", "PLAIN", "--auth-user", "alice",
                   "--auth-password", PW["alice"], "--from", "alice@client.test",
                   "--to", "far@remote.test", "--header", "Subject: interop SUBM_SWAKS",
                   "--body", body1)
        tap.check("swaks --tls %s--auth PLAIN (alice) -> relay C submission: accepted "
                  "(TLS, 235, 250 queued as)" % vflag, swaks_auth_ok(log, rc))
        log = ctx.path("swaks-c-smtps.log")
        rc = swaks(log, "--server", smtps, "--tlsc", *verify, "--auth", "LOGIN",
                   "--auth-user", c2_user, "--auth-password", PW[c2_user],
                   "--from", "%s@client.test" % c2_user, "--to", "far@remote.test",
                   "--header", "Subject: interop SMTPS_SWAKS", "--body", body2)
        tap.check("swaks --tlsc %s--auth LOGIN (%s) -> relay C smtps: accepted "
                  "(TLS, 235, 250 queued as)" % (vflag, c2_user), swaks_auth_ok(log, rc))
        if c2_user == "carol":
            used.append("carol")
        if verify:
            rc = swaks(ctx.path("swaks-c-badca.log"), "--server", smtps, "--tlsc", "--tls-verify",
                       "--tls-ca-path", os.path.join(ctx.certs, "other.pem"), "--quit-after", "TLS")
            tap.check("swaks --tls-verify with an unrelated CA -> relay C smtps: handshake fails "
                      "(verification is real)", rc != 0)
    else:
        tap.skip("swaks has no TLS support (Perl Net::SSLeay, Debian libnet-ssleay-perl): "
                 "swaks --tls/--tlsc")

    # 3. smtplib: starttls + login -> submission (alice); SMTP_SSL + login -> smtps (bob, $6$)
    subm_py = ctx.write_msg("subm-py", "\n".join([
        "From: Alice <alice@client.test>", "To: far@remote.test, other@remote.test",
        "Subject: interop SUBM_PY", "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit", "",
        "smtplib starttls + login SUBM_PY — ünïcödé", ".leading dot", "end of SUBM_PY"]) + "\n")
    s = smtpclient.tlssend(ctx.path("py-c-subm.log"), "starttls", "127.0.0.1", p["c_sub"], ca,
                           "alice", PW["alice"], "alice@client.test",
                           ["far@remote.test", "other@remote.test"], subm_py)
    tap.check("smtplib starttls(verified) + login (alice) -> relay C submission: accepted "
              "(250 queued as)", s.accepted())
    tap.check("relay C submission: AUTH advertised only after STARTTLS (smtplib)",
              auth_only_under_tls(s))
    smtps_py = ctx.write_msg("smtps-py", "\n".join([
        "From: bob@client.test", "To: far@remote.test", "Subject: interop SMTPS_PY", "",
        "smtplib SMTP_SSL + login SMTPS_PY", "end of SMTPS_PY"]) + "\n")
    s = smtpclient.tlssend(ctx.path("py-c-smtps.log"), "ssl", "127.0.0.1", p["c_smtps"], ca, "bob",
                           PW["bob"], "bob@client.test", ["far@remote.test"], smtps_py)
    tap.check("smtplib SMTP_SSL(verified) + login (bob, openssl passwd -6) -> relay C smtps: "
              "accepted (250 queued as)", s.accepted())

    # 4. curl -> submission
    subm_curl = ctx.write_msg("subm-curl", "\n".join([
        "From: alice@client.test", "To: far@remote.test", "Subject: interop SUBM_CURL", "",
        "curl --ssl-reqd SUBM_CURL", "end of SUBM_CURL"]) + "\n")
    have_curl = have("curl")
    if have_curl:
        log = ctx.path("curl-c.log")
        rc, out, err = run(["curl", "-sS", "-v", "--max-time", "20", "--ssl-reqd", "--cacert", ca,
                            "--url", "smtp://%s/client.test" % sub, "--mail-from", "alice@client.test",
                            "--mail-rcpt", "far@remote.test", "--user", "alice:" + PW["alice"],
                            "--upload-file", subm_curl, "--crlf"], timeout=30)
        with open(log, "w") as f:
            f.write(err)
        tap.check("curl --ssl-reqd --cacert --user alice -> relay C submission: accepted "
                  "(STARTTLS, 235, 250 queued as)", curl_ok(rc, log))
    else:
        tap.skip("curl not installed")

    # 5. openssl s_client -starttls smtp -> smtp (relay) port
    rc, out, err = run(["openssl", "s_client", "-starttls", "smtp", "-connect", smtp, "-CAfile", ca,
                        "-verify_ip", "127.0.0.1", "-verify_return_error", "-crlf", "-ign_eof"],
                       input=b"EHLO client.test\nQUIT\n", timeout=20)
    with open(ctx.path("s_client.out"), "w") as f:
        f.write(out)
    with open(ctx.path("s_client.err"), "w") as f:
        f.write(err)
    print("# openssl s_client exit %d" % rc)
    tap.check("openssl s_client -starttls smtp -> relay C smtp port: Verify return code: 0 (ok)",
              has_line(out, r"^ *Verify return code: 0 \(ok\)"))
    tap.check("openssl s_client -starttls smtp -> relay C smtp port: negotiated TLSv1.3",
              has_line(out, r"^(New, TLSv1\.3, |    Protocol  ?: TLSv1\.3$)"))
    tap.check("relay C smtp port: EHLO under TLS advertises AUTH (s_client)",
              has_line(out, r"^250[ -]AUTH .*PLAIN"))
    tap.check("relay C smtp port: QUIT under TLS answered 221 (s_client)", has_line(out, r"^221[ -]"))
    tap.check("relay C sends a TLS close_notify before closing (s_client: no 'unexpected eof "
              "while reading')", no_ragged_eof(err))

    # 6. refusals
    s = smtpclient.probe(ctx.path("probe-c-subm.log"), "127.0.0.1", p["c_sub"], "alice", PW["alice"])
    tap.check("relay C submission, plaintext: STARTTLS advertised", s.has("^EXT-STARTTLS yes$"))
    tap.check("relay C submission, plaintext: AUTH not advertised", s.has("^EXT-AUTH no$"))
    tap.check("relay C submission, plaintext: AUTH PLAIN with good credentials refused (538/530)",
              s.has("^AUTH-REPLY (538|530) "))
    tap.check("relay C submission, plaintext: MAIL refused (530)", s.has("^MAIL-REPLY 530 "))
    s = smtpclient.probe(ctx.path("probe-c-smtp.log"), "127.0.0.1", p["c"], "alice", PW["alice"])
    tap.check("relay C smtp port, plaintext: STARTTLS advertised (certificate configured)",
              s.has("^EXT-STARTTLS yes$"))
    tap.check("relay C smtp port, plaintext: AUTH not advertised", s.has("^EXT-AUTH no$"))
    tap.check("relay C smtp port, plaintext: AUTH PLAIN with good credentials refused (538/530)",
              s.has("^AUTH-REPLY (538|530) "))

    log = ctx.path("swaks-c-notls.log")
    rc = swaks(log, "--server", sub, "--auth", "PLAIN", "--auth-user", "alice",
               "--auth-password", PW["alice"], "--from", "alice@client.test", "--to", "far@remote.test",
               "--header", "Subject: interop REFUSED_NOTLS", "--body", "no TLS\nend of REFUSED_NOTLS")
    tap.check("swaks --auth without TLS -> relay C submission: refused (AUTH not advertised, "
              "or 538)", swaks_noauth_plain(log, rc))
    auth_failed = r"authentication failed for user=alice from \[127\.0\.0\.1\]"
    if swaks_tls:
        log = ctx.path("swaks-c-noauth.log")
        rc = swaks(log, "--server", sub, "--tls", *verify, "--from", "alice@client.test",
                   "--to", "far@remote.test", "--header", "Subject: interop REFUSED_NOAUTH",
                   "--body", "TLS but no AUTH\nend of REFUSED_NOAUTH")
        tap.check("swaks --tls without AUTH, external recipient -> relay C submission: refused (530)",
                  swaks_refused(log, rc, "530"))
        log = ctx.path("swaks-c-badpw.log")
        rc = swaks(log, "--server", sub, "--tls", *verify, "--auth", "PLAIN", "--auth-user", "alice",
                   "--auth-password", "not the password", "--from", "alice@client.test",
                   "--to", "far@remote.test", "--header", "Subject: interop REFUSED_BADPW",
                   "--body", "wrong password\nend of REFUSED_BADPW")
        tap.check("swaks --tls --auth PLAIN, wrong password -> relay C submission: refused "
                  "(exit != 0, 535)", swaks_refused(log, rc, "535"))
    else:  # the same refusals through smtplib
        print("# swaks has no TLS support: unauthenticated and wrong-password sessions by smtplib")
        s = smtpclient.tlssend(ctx.path("py-c-noauth.log"), "starttls", "127.0.0.1", p["c_sub"], ca,
                               None, None, "alice@client.test", ["far@remote.test"], subm_py)
        tap.check("smtplib starttls without login, external recipient -> relay C submission: "
                  "refused (530)", s.has(r"^ERROR SMTP[A-Za-z]+: \(530,"))
        s = smtpclient.tlssend(ctx.path("py-c-badpw.log"), "starttls", "127.0.0.1", p["c_sub"], ca,
                               "alice", "not the password", "alice@client.test",
                               ["far@remote.test"], subm_py)
        tap.check("smtplib starttls + login, wrong password -> relay C submission: refused (535)",
                  s.has(r"^ERROR SMTPAuthenticationError: \(535,"))
    tap.check("relay C logs 'authentication failed for user=alice from [127.0.0.1]'",
              relay.logged(auth_failed))

    # deliveries
    for u in used:
        tap.check("relay C logs 'authenticated user=%s from [127.0.0.1]'" % u,
                  relay.logged(r"authenticated user=%s from \[127\.0\.0\.1\]" % u))
    deadline = time.time() + 30

    def chk(label, marker, user, rcpts, msg, mode="exact"):
        sinkdump.check_delivery(
            tap, ctx.path("dump3"), "smtp-sink #3 (smarthost 127.0.0.4)", label, marker,
            "%s@client.test" % user, rcpts, ctx.path("msg", msg), mode=mode,
            relay_host="relay-c.test",
            received_has=["with ESMTPSA", "Authenticated sender: %s" % user],
            wait=max(1.0, deadline - time.time()))

    if swaks_tls:
        chk("SUBM_SWAKS (swaks STARTTLS, AUTH PLAIN)", "SUBM_SWAKS", "alice", ["far@remote.test"],
            "subm-swaks", "body-prefix")
        chk("SMTPS_SWAKS (swaks implicit TLS, AUTH LOGIN)", "SMTPS_SWAKS", c2_user,
            ["far@remote.test"], "smtps-swaks", "body-prefix")
    chk("SUBM_PY (smtplib starttls, 2 rcpts)", "SUBM_PY", "alice",
        ["far@remote.test", "other@remote.test"], "subm-py")
    chk("SMTPS_PY (smtplib SMTP_SSL, $6$ account)", "SMTPS_PY", "bob", ["far@remote.test"],
        "smtps-py")
    if have_curl:
        chk("SUBM_CURL (curl --ssl-reqd)", "SUBM_CURL", "alice", ["far@remote.test"], "subm-curl")
    # never queued, so no retry can bring them later
    tap.check("refused messages (REFUSED_*) reached no smtp-sink",
              sinkdump.absent("none.invalid", "REFUSED_",
                              [ctx.path("dump%d" % n) for n in (1, 2, 3)]))
