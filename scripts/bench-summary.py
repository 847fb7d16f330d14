#!/usr/bin/env python3
"""Per-case summary of a scripts/bench run: mxrelay against Postfix and the
limit, from the suite's JSON lines (one record per run, see the harness's
bench.py), plus the idle-connection and latency results if given.

  bench-summary.py RESULTS.jsonl [--relay mxrelay] [--postfix postfix|none]
                   [--limit limit] [--base NAME] [--idle idle.json]
                   [--latency latency.json]

With --base, each case also compares the relay with target NAME (an A/B run:
an earlier build, or the unsigned relay of the dkim part): the e2e and
injection rate ratios and the CPU per message ratio, per round, median.

Ratios are taken per round (runs of one round ran back to back) and the
median over rounds is shown, as the harness's report.py does.
"""
import argparse
import json
import statistics
from collections import OrderedDict


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def case_name(c):
    f = c.split(":")
    size = int(f[0])
    s = f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"
    return f"{s}, {f[1]} sess, {f[2]} rcpt" + (", keepalive" if len(f) > 3 and f[3] == "k" else "")


def ratio(by_t, num, den, key):
    d = {r["round"]: r for r in by_t.get(den, []) if r["ok"] and r.get(key)}
    rs = [r[key] / d[r["round"]][key] for r in by_t.get(num, [])
          if r["ok"] and r.get(key) and r["round"] in d]
    return med(rs)


def f2(x, nd=2):
    return f"{x:.{nd}f}" if x is not None else "n/a"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="?")
    ap.add_argument("--relay", default="mxrelay")
    ap.add_argument("--postfix", default="postfix")
    ap.add_argument("--limit", default="limit")
    ap.add_argument("--idle", default="")
    ap.add_argument("--latency", default="")
    ap.add_argument("--base", default="")
    g = ap.parse_args()

    peak50 = None
    if g.results:
        with open(g.results) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        cases = OrderedDict()
        for r in recs:
            if not r.get("warmup"):
                cases.setdefault(r["case"], OrderedDict()).setdefault(r["target"], []).append(r)
        print(f"Per case ({g.relay}; ratios = median over rounds of same-round "
              f"end-to-end (inject) rate ratios):")
        for case, by_t in cases.items():
            mine = [r for r in by_t.get(g.relay, []) if r["ok"]]
            failed = len(by_t.get(g.relay, [])) - len(mine)
            e2e = med([r["e2e_rate"] for r in mine])
            cpu = med([r.get("relay_cpu_ms_per_msg") for r in mine])
            rss = max((r.get("relay_peak_rss_kb") or 0) for r in mine) if mine else None
            nb = med([r.get("non_bench_pct") for r in mine])
            print(f"  {case_name(case)}: {g.relay} e2e {f2(e2e, 0)} msg/s; "
                  f"{g.relay}/Postfix {f2(ratio(by_t, g.relay, g.postfix, 'e2e_rate'))} "
                  f"({f2(ratio(by_t, g.relay, g.postfix, 'inj_rate'))}); "
                  f"{g.relay}/limit {f2(ratio(by_t, g.relay, g.limit, 'e2e_rate'), 3)} "
                  f"({f2(ratio(by_t, g.relay, g.limit, 'inj_rate'), 3)}); "
                  f"CPU {f2(cpu)} ms/msg; peak RSS {f2(rss / 1024 if rss else None, 1)} MiB; "
                  f"non-bench CPU {f2(nb, 0)} %"
                  + (f"; {failed} FAILED run(s)" if failed else ""))
            if g.base:
                print(f"    against {g.base}: e2e x{f2(ratio(by_t, g.relay, g.base, 'e2e_rate'), 3)}, "
                      f"inject x{f2(ratio(by_t, g.relay, g.base, 'inj_rate'), 3)}, "
                      f"CPU/msg x{f2(ratio(by_t, g.relay, g.base, 'relay_cpu_ms_per_msg'), 3)} "
                      f"({g.base} e2e {f2(med([r['e2e_rate'] for r in by_t.get(g.base, []) if r['ok']]), 0)} msg/s, "
                      f"CPU {f2(med([r.get('relay_cpu_ms_per_msg') for r in by_t.get(g.base, []) if r['ok']]))} ms/msg)")
        # peak RSS over every 50-session run of the relay (probe runs included)
        p = [r.get("relay_peak_rss_kb") for r in recs
             if r["target"] == g.relay and r.get("sessions") == 50 and r.get("relay_peak_rss_kb")]
        peak50 = max(p) if p else None

    print("Memory:")
    if g.idle:
        try:
            with open(g.idle) as f:
                idle = json.load(f)
            rss = idle.get("rss_kb_idle")
            print(f"  {g.relay} RSS with {idle.get('opened')} idle sessions: "
                  f"{f2(rss / 1024 if rss else None, 1)} MiB "
                  f"(at rest {f2((idle.get('rss_kb_before') or 0) / 1024, 1)} MiB, "
                  f"{f2(idle.get('rss_kb_per_session'), 1)} KiB/session, "
                  f"{idle.get('threads_idle')} threads); checks "
                  + ("all passed" if idle.get("ok") else
                     "FAILED: " + ", ".join(k for k, v in idle.get("checks", {}).items() if not v)))
        except (OSError, ValueError) as e:
            print(f"  idle test: no result ({e})")
    if g.results:
        print(f"  {g.relay} peak RSS during the 50-session load runs: "
              + (f"{peak50 / 1024:.1f} MiB" if peak50 else "n/a (no 50-session case run)"))
    if g.latency:
        try:
            with open(g.latency) as f:
                lat = json.load(f)
            print(f"Latency: {lat['count']} msgs over {lat['sessions']} sessions: "
                  f"p50 {f2(lat['p50_ms'])} ms, p90 {f2(lat['p90_ms'])} ms, "
                  f"p99 {f2(lat['p99_ms'])} ms, max {f2(lat['max_ms'])} ms, errors {lat['errors']}")
        except (OSError, ValueError, KeyError) as e:
            print(f"Latency: no result ({e})")


if __name__ == "__main__":
    main()
