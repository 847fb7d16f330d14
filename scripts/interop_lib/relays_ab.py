"""dnsmasq, the smtp-sinks, and relays A (MX delivery through dnsmasq's answers) and B
(smarthost): plain SMTP from swaks and smtplib, checked in smtp-sink's dump files."""

import os
import re
import time

from . import dns, sinkdump, smtpclient
from .context import read_text, swaks, swaks_ok
from .procs import free_ports, read, wait_for, wait_port
from .relay import start_relay
from .tap import diag


def allocate_ports(ctx):
    """The ports of stages A-C; False if none could be found."""
    names = ["dns", "a", "b", "c", "c_sub", "c_smtps", "sink1", "sink2", "sink3"]
    addrs = ["127.0.0.1"] * 6 + ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    try:
        ctx.ports.update(zip(names, free_ports(addrs)))
    except (OSError, RuntimeError) as e:
        ctx.tap.not_ok("found free ports on 127.0.0.1/2/3/4", str(e))
        return False
    p = ctx.ports
    print("# dns=127.0.0.1:%d relayA=127.0.0.1:%d relayB=127.0.0.1:%d sink1=127.0.0.2:%d "
          "sink2=127.0.0.3:%d" % (p["dns"], p["a"], p["b"], p["sink1"], p["sink2"]))
    print("# relayC=127.0.0.1:%d (smtp) 127.0.0.1:%d (submission) 127.0.0.1:%d (smtps) "
          "sink3=127.0.0.4:%d" % (p["c"], p["c_sub"], p["c_smtps"], p["sink3"]))
    return True


def start_dnsmasq(ctx):
    tap, port = ctx.tap, ctx.ports["dns"]
    log = ctx.path("dnsmasq.log")
    ctx.logs.append(log)
    ctx.procs.start(log, [
        "dnsmasq", "--conf-file=/dev/null", "--keep-in-foreground", "--no-resolv", "--no-hosts",
        "--pid-file=", "--log-facility=-", "--listen-address=127.0.0.1", "--bind-interfaces",
        "--port=%d" % port, "--local=/test/",
        "--mx-host=example.test,mx1.example.test,10",
        "--host-record=mx1.example.test,127.0.0.2",
        "--dns-rr=nullmx.test,15,000000",
        # the interop matrix's private Postfix as an MX, under a name in the test
        # certificate (OpenSSL matches its *.test with nothing: too few labels)
        "--mx-host=postfix.test,sink.test,10", "--host-record=sink.test,127.0.0.20"])
    tap.check("dnsmasq: example.test MX 10 mx1.example.test",
              dns.expect("127.0.0.1", port, "example.test", "MX", "rcode=0 MX 10 mx1.example.test.", 5))
    tap.check("dnsmasq: mx1.example.test A 127.0.0.2",
              dns.expect("127.0.0.1", port, "mx1.example.test", "A", "rcode=0 A 127.0.0.2", 2))
    tap.check("dnsmasq: nullmx.test MX 0 . (null MX)",
              dns.expect("127.0.0.1", port, "nullmx.test", "MX", "rcode=0 MX 0 .", 2))
    tap.check("dnsmasq: client.test is NXDOMAIN",
              dns.expect("127.0.0.1", port, "client.test", "MX", "rcode=3 ", 2))


def start_sinks(ctx):
    """smtp-sink #1-#3, dumping every transaction into T/dump1..3. -a: no AUTH, -C/-F: no
    XCLIENT/XFORWARD; still PIPELINING, 8BITMIME, DSN, ENHANCEDSTATUSCODES."""
    user = ["-u", "root"] if os.getuid() == 0 else []  # smtp-sink insists on -u as root
    for n, addr, helo in ((1, "127.0.0.2", "mx1.example.test"), (2, "127.0.0.3", "smarthost.test"),
                          (3, "127.0.0.4", "sink3.test")):
        os.makedirs(ctx.path("dump%d" % n), exist_ok=True)
        log = ctx.path("sink%d.log" % n)
        ctx.logs.append(log)
        ctx.procs.start(log, ["smtp-sink", "-v", "-a", "-C", "-F", "-t", "30"] + user + [
            "-h", helo, "-d", ctx.path("dump%d" % n, "m."),
            "%s:%d" % (addr, ctx.ports["sink%d" % n]), "64"])
    for n, addr in ((1, "127.0.0.2"), (2, "127.0.0.3"), (3, "127.0.0.4")):
        port = ctx.ports["sink%d" % n]
        ctx.tap.check("smtp-sink #%d listening on %s:%d" % (n, addr, port),
                      wait_port(addr, port, 5))


def selftest(ctx):
    """A message straight to sink #1 must be captured and parsed."""
    msg = ctx.write_msg("selftest", "Subject: interop SELFTEST\n\nselftest\n.dot\nend of SELFTEST\n")
    swaks(ctx.path("swaks-selftest.log"), "--server", "127.0.0.2:%d" % ctx.ports["sink1"],
          "--from", "self@client.test", "--to", "self@example.test",
          "--data", read(msg).rstrip("\n"))
    sinkdump.check_delivery(ctx.tap, ctx.path("dump1"), "smtp-sink #1",
                            "harness self-test (swaks -> smtp-sink directly)", "SELFTEST",
                            "self@client.test", ["self@example.test"], msg, wait=5)


def start_relays(ctx):
    """Relays A (MX) and B (smarthost); False if either did not start."""
    p = ctx.ports
    for n in ("a", "b"):
        ctx.logs.append(ctx.path("relay-%s.log" % n))
        os.makedirs(ctx.path("spool-%s" % n), exist_ok=True)
    ctx.relays["A"] = start_relay(
        ctx, "A", p["a"], ctx.path("relay-a.log"), "--spool", ctx.path("spool-a"),
        "--hostname", "relay-a.test", "--dns-server", "127.0.0.1:%d" % p["dns"],
        "--mx-port", str(p["sink1"]))
    # B also gets --dns-server so that it can never query a real resolver.
    ctx.relays["B"] = start_relay(
        ctx, "B", p["b"], ctx.path("relay-b.log"), "--spool", ctx.path("spool-b"),
        "--hostname", "relay-b.test", "--smarthost", "127.0.0.3:%d" % p["sink2"],
        "--smarthost-tls", "none", "--dns-server", "127.0.0.1:%d" % p["dns"])
    return ctx.relays["A"] is not None and ctx.relays["B"] is not None


def send_messages(ctx):
    """The messages to relays A and B; returns swaks' exit status for the null MX one."""
    tap, a = ctx.tap, "127.0.0.1:%d" % ctx.ports["a"]

    # 1. null MX recipient (sent first so it is processed while the others run)
    nullmx_rc = swaks(ctx.path("swaks-nullmx.log"), "--server", a, "--from", "a@client.test",
                      "--to", "x@nullmx.test", "--header", "Subject: interop NULLMX",
                      "--body", "null mx test\nend of NULLMX")

    # 2. plain swaks --body
    body = "hello from swaks PLAIN\nsecond line\nend of PLAIN"
    log = ctx.path("swaks-plain.log")
    rc = swaks(log, "--server", a, "--from", "a@client.test", "--to", "user@example.test",
               "--header", "Subject: interop PLAIN", "--body", body)
    tap.check("swaks -> relay A: plain message accepted (exit 0, 250 queued as)", swaks_ok(log, rc))
    ctx.write_msg("plain", "Subject: interop PLAIN\n\n%s\n" % body)

    # 3. swaks --pipeline, two recipients
    body = "pipelined PIPE\nend of PIPE"
    log = ctx.path("swaks-pipe.log")
    rc = swaks(log, "--server", a, "--pipeline", "--from", "a@client.test",
               "--to", "user@example.test,other@example.test", "--header", "Subject: interop PIPE",
               "--body", body)
    tap.check("swaks --pipeline -> relay A: accepted (exit 0, 250 queued as)", swaks_ok(log, rc))
    tap.check("relay A advertises PIPELINING",
              re.search(r"^<-  250[ -]PIPELINING", read_text(log), re.M) is not None)
    ctx.write_msg("pipe", "Subject: interop PIPE\n\n%s\n" % body)

    # 4. dot-stuffing: a complete message via --data (sent exactly as written; swaks stuffs
    #    dots). swaks drops a final lone "." line of --data, so the message ending in "."
    #    is sent by smtplib, #6.
    dots = ctx.write_msg("dots", "\n".join([
        "From: a@client.test", "To: user@example.test", "Subject: interop DOTS", "",
        "dot test DOTS", ".leading dot", "..two dots", ".", "...", " .", ". ", ".x.",
        "end of DOTS"]) + "\n")
    log = ctx.path("swaks-dots.log")
    rc = swaks(log, "--server", a, "--from", "a@client.test", "--to", "user@example.test",
               "--data", read(dots).rstrip("\n"))
    tap.check("swaks (lines starting with '.', lone '.') -> relay A: accepted", swaks_ok(log, rc))

    # 5. smtplib, 3 recipients, UTF-8 8-bit body, BODY=8BITMIME
    utf8 = ctx.write_msg("utf8", "\n".join([
        "From: Py Client <a@client.test>", "To: r1@example.test, r2@example.test, r3@example.test",
        "Subject: interop UTF8", "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit", "",
        "Grüße aus Köln — naïve café, Ελληνικά, 日本語, emoji 📬",
        ".starts with a dot", "tabs\tand trailing spaces   ",
        "long line 0123456789" * 20, "end of UTF8"]) + "\n")
    s = smtpclient.send(ctx.path("py-utf8.log"), "127.0.0.1", ctx.ports["a"], "a@client.test",
                        ["r1@example.test", "r2@example.test", "r3@example.test"], utf8)
    tap.check("smtplib -> relay A: 3 recipients, 8-bit body accepted (250 queued as)", s.accepted())
    tap.check("relay A advertises 8BITMIME", s.has("^EXT-8BITMIME yes$"))

    # 6. smtplib through relay B (smarthost): one MX-less domain, one example.test
    smart = ctx.write_msg("smarthost", "\n".join([
        "From: a@client.test", "To: far@remote.test", "Subject: interop SMARTHOST",
        "MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit", "",
        "via smarthost — ünïcödé", "..double dot", "end of SMARTHOST", "."]) + "\n")
    s = smtpclient.send(ctx.path("py-smarthost.log"), "127.0.0.1", ctx.ports["b"], "a@client.test",
                        ["far@remote.test", "other@example.test"], smart)
    tap.check("smtplib -> relay B: 2 recipients accepted (250 queued as)", s.accepted())
    return nullmx_rc


def check_deliveries(ctx):
    deadline = time.time() + 45

    def left():
        return max(1.0, deadline - time.time())

    tap = ctx.tap
    a_chk = dict(dump_dir=ctx.path("dump1"), other_dir=ctx.path("dump2"),
                 sink="smtp-sink #1 (MX 127.0.0.2)", relay_host="relay-a.test",
                 sender="a@client.test")
    m = lambda name: ctx.path("msg", name)  # noqa: E731
    sinkdump.check_delivery(tap, label="PLAIN (swaks)", marker="PLAIN", rcpts=["user@example.test"],
                            msg=m("plain"), mode="body-prefix", wait=left(), **a_chk)
    sinkdump.check_delivery(tap, label="PIPE (swaks --pipeline)", marker="PIPE",
                            rcpts=["user@example.test", "other@example.test"], msg=m("pipe"),
                            mode="body-prefix", wait=left(), **a_chk)
    sinkdump.check_delivery(tap, label="DOTS (dot-stuffing)", marker="DOTS",
                            rcpts=["user@example.test"], msg=m("dots"), wait=left(), **a_chk)
    sinkdump.check_delivery(tap, label="UTF8 (smtplib, 3 rcpts)", marker="UTF8",
                            rcpts=["r1@example.test", "r2@example.test", "r3@example.test"],
                            msg=m("utf8"), want_8bit=True, wait=left(), **a_chk)
    sinkdump.check_delivery(tap, ctx.path("dump2"), "smtp-sink #2 (smarthost 127.0.0.3)",
                            "SMARTHOST (smtplib via relay B)", "SMARTHOST", "a@client.test",
                            ["far@remote.test", "other@example.test"], m("smarthost"),
                            relay_host="relay-b.test", want_8bit=True,
                            other_dir=ctx.path("dump1"), wait=left())


def check_null_mx(ctx, nullmx_rc):
    tap, log = ctx.tap, ctx.relays["A"].log
    bad = re.compile(r"(?i)fail|bounc|permanent|reject|undeliver|null[ _-]mx|5\.[0-9]+\.[0-9]+"
                     r"|\b5[0-9][0-9]\b|error|dsn")

    def nullmx_lines():
        return [line for line in read(log).splitlines() if "nullmx.test" in line.lower()]

    if nullmx_rc == 0:
        tap.ok("x@nullmx.test: accepted by relay A (to be bounced)")
        logged = wait_for(lambda: any(bad.search(line) for line in nullmx_lines()), 10)
        tap.check("x@nullmx.test: relay A logs the delivery failure", bool(logged),
                  "relay A log lines mentioning nullmx.test:\n" + "\n".join(nullmx_lines()[-10:]))
    elif nullmx_rc == 24:
        tap.ok("x@nullmx.test: refused at RCPT by relay A")
    else:
        tap.not_ok("x@nullmx.test: accepted or refused at RCPT (swaks exit %d)" % nullmx_rc)
        diag(read_text(ctx.path("swaks-nullmx.log")).splitlines()[-20:])
    time.sleep(1)  # one --retry period, so that a wrong (re)try would have reached a sink
    tap.check("x@nullmx.test: nothing reached any smtp-sink",
              sinkdump.absent("nullmx.test", "NULLMX", [ctx.path("dump1"), ctx.path("dump2")]))


def run(ctx):
    """Stage A/B. False if the relays did not start (nothing else can run then)."""
    start_dnsmasq(ctx)
    start_sinks(ctx)
    selftest(ctx)
    if not start_relays(ctx):
        print("# relay did not start; skipping message tests")
        return False
    return True


def run_messages(ctx):
    nullmx_rc = send_messages(ctx)
    check_deliveries(ctx)
    check_null_mx(ctx, nullmx_rc)
