"""Stage 3, the interop matrix.

Next hops: a private Postfix (127.0.0.20 as the MX of postfix.test, plain and STARTTLS
listeners; implicit TLS on 127.0.0.1) and a private Exim (127.0.0.1: plain, STARTTLS,
and STARTTLS / implicit TLS listeners that require AUTH), both with the test
certificate, delivering into Maildirs. mxrelay reaches them through relays:

  relay M  clients' relay: smtp + submission + smtps listeners; --smarthost Exim
           (STARTTLS, AUTH, certificate verified with --tls-ca-file)
  relay N  --tls-outbound verify: MX postfix.test (dnsmasq), --route exim.test (STARTTLS)
  relay P  --tls-outbound may: the same destinations on listeners without STARTTLS
  relay Q  --smarthost Exim, implicit TLS and AUTH
  relay R  --smarthost Postfix, implicit TLS
  relay V  --tls-outbound verify without the test CA: must not deliver to Postfix
  relay W  --smarthost Exim with a wrong password: must not deliver

Each message is checked where it was delivered: once, with its envelope, the receiver's
Received: (from the relay, with or without TLS and AUTH), mxrelay's Received: below it,
and its body byte for byte (dot-stuffing included).

Clients: swaks, Python smtplib, curl, msmtp, openssl s_client and Perl Net::SMTP each
send relay M one message per way in (clients.CASES); they arrive at Exim (or, without
Exim, at smtp-sink #3).
"""

import os
import re
import time

from . import clients, dns, smtpclient
from .peers import Exim, Postfix, SinkBox
from .procs import free_ports, read, wait_for
from .relay import start_relay
from .relay_c import PW
from .tap import Matrix

PF_MX = "127.0.0.20"  # Postfix as the MX host of postfix.test
LOOP = "127.0.0.1"  # next hops reached by address: the test certificate's IP SAN

CLIENT_COLUMNS = ("plain", "STARTTLS", "STARTTLS+AUTH (submission)", "implicit TLS+AUTH (smtps)")
HOP_COLUMNS = ("plain", "STARTTLS, verified", "implicit TLS, verified", "AUTH (smarthost)")


class Expect:
    """What a Received: field must (WANT) and must not (UNWANTED) contain."""

    def __init__(self, desc, want, unwanted=()):
        self.desc, self.want, self.unwanted = desc, want, unwanted

    def test(self, value):
        missing = [r for r in self.want if not re.search(r, value)]
        extra = [r for r in self.unwanted if re.search(r, value)]
        if not missing and not extra:
            return True, None
        return False, "field: %s\nmissing: %s\nunwanted: %s" % (value, missing, extra)


def relay_received(relay_host, case):
    """mxrelay's own Received:, for a message that came in as CASE (clients.CASES)."""
    host = relay_host.replace(".", r"\.")
    proto = {"plain": "ESMTP", "starttls": "ESMTPS", "submission": "ESMTPSA",
             "smtps": "ESMTPSA"}[case]
    want = [r"^from client\.test \(\[127\.0\.0\.1\]\)",
            r"by %s \(mxrelay\) with %s id " % (host, proto)]
    unwanted = []
    if case == "plain":
        unwanted.append(r"\(using ")
    else:
        want.append(r"\(using TLSv1\.[23]")
    if proto.endswith("A"):
        want.append(r"\(Authenticated sender: alice\)")
    return Expect("%s by %s" % (proto, relay_host), want, unwanted)


def hop_received(peer, relay_host, tls, auth=False):
    """The receiving MTA's Received: for a message from RELAY_HOST."""
    host = relay_host.replace(".", r"\.")
    if peer == "Postfix":
        want = [r"^from %s \(" % host]
        if tls:
            return Expect("ESMTPS, using TLS, from " + relay_host, want + [
                r"\(using TLSv1\.[23] with cipher ", r"by postfix\.test \(Postfix\) with ESMTPS id "])
        return Expect("ESMTP, no TLS, from " + relay_host,
                      want + [r"by postfix\.test \(Postfix\) with ESMTP id "], [r"using TLS"])
    want = [r"\(helo=%s\)" % host]
    if tls:
        proto = "esmtpsa" if auth else "esmtps"
        return Expect("%s (TLS1.x), from %s" % (proto, relay_host),
                      want + [r"by exim\.test with %s\s+\(TLS1\.[23]\) " % proto])
    return Expect("esmtp, no TLS, from " + relay_host,
                  want + [r"by exim\.test with esmtp \(Exim "], [r"TLS1", r"esmtps"])


def check_arrival(tap, label, box, marker, sender, rcpt, msg, hop, relay, deadline):
    """The message MARKER arrived in BOX once, as sent; one check per property."""
    res = []

    def rep(desc, result):
        res.append(tap.check("%s: %s" % (label, desc), result))

    t0 = time.time()
    wait_for(lambda: box.find(marker), max(0.5, deadline - time.time()), step=0.2)
    found = box.find(marker)
    rep("delivered to %s (%d message(s), %.1fs)" % (box.name, len(found), time.time() - t0),
        (len(found) == 1, "want exactly one message with %s in %s" % (marker, box.path)))
    if not found:
        return res
    m = found[0]
    name = os.path.basename(m.path)[:24]
    env = box.envelope(m)
    rep("envelope <%s> -> <%s>" % (sender, rcpt),
        (env == (sender, [rcpt]), "got %r" % (env,)))
    rcv = m.all("received")
    rep("%s's Received: %s" % (box.name, hop.desc), hop.test(rcv[0] if rcv else ""))
    rep("below it mxrelay's Received: %s" % relay.desc,
        relay.test(rcv[1] if len(rcv) > 1 else ""))
    with open(msg, "rb") as f:
        want_body = f.read().replace(b"\r\n", b"\n").partition(b"\n\n")[2]
    rep("body byte-exact (%s)" % name,
        (m.body == want_body, "want %r\ngot  %r" % (want_body, m.body)))
    return res


# ---- setup --------------------------------------------------------------------------------

def allocate(ctx):
    names = ["m", "m_sub", "m_smtps", "n", "p", "q", "r", "v", "w", "pf_smtps",
             "ex_plain", "ex_mx", "ex_sub", "ex_smtps", "pf_plain", "pf_starttls"]
    try:
        ctx.ports.update(zip(names, free_ports([LOOP] * 14 + [PF_MX] * 2)))
    except (OSError, RuntimeError) as e:
        ctx.tap.not_ok("found free ports on 127.0.0.1 and 127.0.0.20", str(e))
        return False
    p = ctx.ports
    print("# matrix: relay M=127.0.0.1:%d (smtp) :%d (submission) :%d (smtps); Postfix %s:%d "
          "(plain) :%d (STARTTLS) 127.0.0.1:%d (smtps); Exim 127.0.0.1:%d (plain) :%d (STARTTLS) "
          ":%d (STARTTLS+AUTH) :%d (smtps+AUTH)" % (
              p["m"], p["m_sub"], p["m_smtps"], PF_MX, p["pf_plain"], p["pf_starttls"],
              p["pf_smtps"], p["ex_plain"], p["ex_mx"], p["ex_sub"], p["ex_smtps"]))
    return True


def start_peers(ctx):
    """The private Postfix and Exim; each None if it cannot run here or did not start."""
    tap, p = ctx.tap, ctx.ports
    tap.check("dnsmasq: postfix.test MX 10 sink.test",
              dns.expect(LOOP, p["dns"], "postfix.test", "MX", "rcode=0 MX 10 sink.test.", 2))
    tap.check("dnsmasq: sink.test A %s" % PF_MX,
              dns.expect(LOOP, p["dns"], "sink.test", "A", "rcode=0 A %s" % PF_MX, 2))
    peers = []
    for cls, make in (
            (Postfix, lambda: Postfix(ctx, PF_MX, LOOP, {
                "plain": p["pf_plain"], "starttls": p["pf_starttls"], "smtps": p["pf_smtps"]},
                ["postfix.test"])),
            (Exim, lambda: Exim(ctx, LOOP, {
                "plain": p["ex_plain"], "mx": p["ex_mx"], "sub": p["ex_sub"],
                "smtps": p["ex_smtps"]}))):
        why = cls.missing()
        if why:
            tap.skip("%s: %s" % (cls.name, why))
            peers.append(None)
            continue
        peer = make()
        up = tap.check("%s (private instance, STARTTLS and implicit TLS) started, listening on "
                       "ports %s" % (cls.name, ", ".join(str(x) for x in sorted(peer.ports.values()))),
                       peer.start())
        peers.append(peer if up else None)
    return peers


def secret(ctx, name, text):
    """A file only its owner can read (mxrelay refuses secrets that others can)."""
    path = ctx.path(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    return path


def start_relays(ctx, pf, ex):
    p, ca, dnsarg = ctx.ports, ctx.ca, ["--dns-server", "127.0.0.1:%d" % ctx.ports["dns"]]
    good_pw = secret(ctx, "smarthost-password", Exim.password)
    bad_pw = secret(ctx, "smarthost-bad-password", "not the password")
    ex_login = ["--smarthost-user", Exim.user, "--tls-ca-file", ca]

    def relay(name, *args):
        n = name.lower()
        os.makedirs(ctx.path("spool-" + n), exist_ok=True)
        log = ctx.path("relay-%s.log" % n)
        ctx.logs.append(log)
        r = start_relay(ctx, name, p[n], log, "--spool", ctx.path("spool-" + n),
                        "--hostname", "relay-%s.test" % n, *(list(args) + dnsarg))
        ctx.relays[name] = r
        return r

    if ex:
        m_next = ["--smarthost", "%s:%d" % (LOOP, p["ex_sub"]), "--smarthost-password-file",
                  good_pw] + ex_login
    else:
        m_next = ["--smarthost", "127.0.0.4:%d" % p["sink3"], "--smarthost-tls", "none"]
    relay("M", "--listen", "127.0.0.1:%d/submission" % p["m_sub"],
          "--listen", "127.0.0.1:%d/smtps" % p["m_smtps"],
          "--tls-cert", os.path.join(ctx.certs, "server-chain.pem"),
          "--tls-key", os.path.join(ctx.certs, "server.key"), "--users", ctx.users, *m_next)
    routes = []
    if ex:
        routes = ["--route", "exim.test=%s:%d" % (LOOP, p["ex_mx"])]
    if pf or ex:
        relay("N", "--tls-outbound", "verify", "--tls-ca-file", ca,
              "--mx-port", str(p["pf_starttls"]), *routes)
        relay("P", "--tls-outbound", "may", "--mx-port", str(p["pf_plain"]),
              *(["--route", "exim.test=%s:%d" % (LOOP, p["ex_plain"])] if ex else []))
    if ex:
        relay("Q", "--smarthost", "%s:%d" % (LOOP, p["ex_smtps"]), "--smarthost-tls", "implicit",
              "--smarthost-password-file", good_pw, *ex_login)
        relay("W", "--smarthost", "%s:%d" % (LOOP, p["ex_sub"]),
              "--smarthost-password-file", bad_pw, *ex_login)
    if pf:
        relay("R", "--smarthost", "%s:%d" % (LOOP, p["pf_smtps"]), "--smarthost-tls", "implicit",
              "--tls-ca-file", ca)
        relay("V", "--tls-outbound", "verify", "--mx-port", str(p["pf_starttls"]))


# ---- next hops ----------------------------------------------------------------------------

def hop_cases(ctx, pf, ex):
    """(row, column, relay, recipient, peer, tls, auth) for each next-hop cell that runs."""
    out = []
    if pf:
        out += [("Postfix", "plain", "P", "plain@postfix.test", pf, False, False),
                ("Postfix", "STARTTLS, verified", "N", "verified@postfix.test", pf, True, False),
                ("Postfix", "implicit TLS, verified", "R", "smtps@postfix.test", pf, True, False)]
    if ex:
        out += [("Exim", "plain", "P", "plain@exim.test", ex, False, False),
                ("Exim", "STARTTLS, verified", "N", "verified@exim.test", ex, True, False),
                ("Exim", "implicit TLS, verified", "Q", "smtps-auth@remote.test", ex, True, True),
                ("Exim", "AUTH (smarthost)", "M", "starttls-auth@remote.test", ex, True, True)]
    return [c for c in out if ctx.relays.get(c[2])]


def send_next_hops(ctx, cases):
    """One message per next-hop cell, by smtplib to the relay's smtp port."""
    sent = []
    for row, col, rname, rcpt, peer, tls, auth in cases:
        marker = "NH_%s_%s" % (row.upper(), rname)
        if rname == "M":
            marker += "_AUTH"
        msg = ctx.write_msg(marker.lower(), "From: hops@client.test\nTo: %s\nSubject: interop %s\n\n"
                            "next hop %s: %s via relay %s\n.leading dot\nend of %s\n" % (
                                rcpt, marker, row, col, rname, marker))
        relay = ctx.relays[rname]
        s = smtpclient.send(ctx.path("py-%s.log" % marker.lower()), LOOP, relay.port,
                            "hops@client.test", [rcpt], msg)
        ok = ctx.tap.check("smtplib -> relay %s for %s (%s): accepted (250 queued as)" % (
            rname, row, col), s.accepted())
        sent.append((row, col, rname, rcpt, peer, tls, auth, marker, msg, ok))
    return sent


def check_next_hops(ctx, sent, table, deadline):
    for row, col, rname, rcpt, peer, tls, auth, marker, msg, ok in sent:
        if not ok:  # refused: nothing to look for
            table.set(row, col, "FAIL")
            continue
        host = "relay-%s.test" % rname.lower()
        res = check_arrival(
            ctx.tap, "%s (%s, relay %s)" % (marker, col, rname), peer.mailbox(), marker,
            "hops@client.test", rcpt, msg, hop_received(row, host, tls, auth),
            relay_received(host, "plain"), deadline)
        table.result(row, col, res)


def negatives(ctx, pf, ex):
    """Deliveries that must not happen: they are sent now and looked for at the end."""
    out = []
    if pf and ctx.relays.get("V"):
        out.append(("V", "noca@postfix.test", pf, "NEG_NOCA",
                    "relay V (--tls-outbound verify, test CA not trusted) -> Postfix",
                    r"deferred .*certificate verify failed"))
    if ex and ctx.relays.get("W"):
        out.append(("W", "badpw@remote.test", ex, "NEG_BADPW",
                    "relay W (smarthost password wrong) -> Exim", r"deferred .*failed: 535 "))
    sent = []
    for rname, rcpt, peer, marker, desc, logged in out:
        msg = ctx.write_msg(marker.lower(), "Subject: interop %s\n\n%s\nend of %s\n" % (
            marker, desc, marker))
        s = smtpclient.send(ctx.path("py-%s.log" % marker.lower()), LOOP, ctx.relays[rname].port,
                            "hops@client.test", [rcpt], msg)
        ctx.tap.check("%s: accepted for delivery (250 queued as)" % desc, s.accepted())
        sent.append((rname, peer, marker, desc, logged))
    return sent


def check_negatives(ctx, sent):
    for rname, peer, marker, desc, logged in sent:
        relay = ctx.relays[rname]
        found = wait_for(lambda: relay.logged(logged, 0)[0], 10)
        lines = [x for x in read(relay.log).splitlines() if "defer" in x.lower() or "fail" in x.lower()]
        ctx.tap.check("%s: the relay logs the failure (/%s/)" % (desc, logged), bool(found),
                      "\n".join(lines[-10:]))
        box = peer.mailbox()
        ctx.tap.check("%s: nothing delivered" % desc, not box.find(marker),
                      "found: %s" % [m.path for m in box.find(marker)])


# ---- clients ------------------------------------------------------------------------------

def send_clients(ctx, table):
    p, relay = ctx.ports, ctx.relays.get("M")
    if relay is None:
        return []
    ports = {"plain": p["m"], "starttls": p["m"], "submission": p["m_sub"], "smtps": p["m_smtps"]}
    sent = []
    for name, send, missing, not_applicable in clients.clients():
        slug = name.split()[-1].replace(":", "").lower()
        table.add_row(name)
        for case, col in zip(clients.CASES, CLIENT_COLUMNS):
            if case in not_applicable:
                table.set(name, col, "n/a")
                continue
            if missing:
                table.set(name, col, "skip")
                continue
            marker = "M_%s_%s" % (slug.upper(), case.upper())
            rcpt = "%s.%s@remote.test" % (slug, case)
            auth = case in ("submission", "smtps")
            msg = ctx.write_msg(marker.lower(), "From: alice@client.test\nTo: %s\n"
                                "Subject: interop %s\n\n%s, %s %s\n.leading dot\n..two dots\n"
                                "end of %s\n" % (rcpt, marker, name, case, marker, marker))
            job = clients.Job(case, LOOP, ports[case], ctx.ca, "alice" if auth else None,
                              PW["alice"] if auth else None, "alice@client.test", rcpt, msg,
                              ctx.path("client-%s.log" % marker.lower()))
            ok = ctx.tap.check("%s -> relay M, %s: accepted" % (name, col), send(job))
            sent.append((name, col, case, marker, rcpt, msg, ok))
        if missing:
            ctx.tap.skip("%s: %s" % (name, missing))
    return sent


def check_clients(ctx, sent, table, box, hop, deadline):
    for name, col, case, marker, rcpt, msg, ok in sent:
        if not ok:  # refused: nothing to look for
            table.set(name, col, "FAIL")
            continue
        res = check_arrival(ctx.tap, "%s (%s via relay M)" % (marker, name), box, marker,
                            "alice@client.test", rcpt, msg, hop,
                            relay_received("relay-m.test", case), deadline)
        table.result(name, col, res)


def run(ctx):
    tap = ctx.tap
    if not getattr(ctx, "ca", None) or not allocate(ctx):
        tap.not_ok("interop matrix: test certificates and ports available")
        return
    hops = Matrix("next hop (mxrelay ->)", HOP_COLUMNS)
    users = Matrix("client (-> mxrelay)", CLIENT_COLUMNS)
    ctx.matrices += [users, hops]
    pf, ex = start_peers(ctx)
    for peer, name in ((pf, "Postfix"), (ex, "Exim")):
        hops.add_row(name)
        if peer is None:
            for col in HOP_COLUMNS:
                hops.set(name, col, "skip")
    if pf:
        hops.set("Postfix", "AUTH (smarthost)", "n/a")
    start_relays(ctx, pf, ex)

    hop_sent = send_next_hops(ctx, hop_cases(ctx, pf, ex))
    neg_sent = negatives(ctx, pf, ex)
    client_sent = send_clients(ctx, users)

    deadline = time.time() + 60
    check_next_hops(ctx, hop_sent, hops, deadline)
    if ex:
        box, hop = ex.mailbox(), hop_received("Exim", "relay-m.test", True, auth=True)
    else:
        box = SinkBox("smtp-sink #3", ctx.path("dump3"))
        hop = Expect("smtp-sink's, from relay-m.test", [r"relay-m\.test", r"\(smtp-sink\)"])
    check_clients(ctx, client_sent, users, box, hop, deadline)
    check_negatives(ctx, neg_sent)
