#!/usr/bin/env python3
"""Turns one bench/rates.sh run's raw files into the table of every condition
(placement, rate, upstream) with the sidecar's added latency and throughput as
ratios to the nginx hop's in the same run, checks the design targets, and
writes it all as one JSON file.

"Added" latency is hop minus the direct upstream in the same round and
condition, taken per round before the median over rounds, so that a noisy
moment on the machine cancels out of the comparison.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

# The oha figures and the design targets, as bench/run.sh's summary reads them.
from summarize import ADDED_RATIO_MAX, THROUGHPUT_RATIO_MIN, load, oha_figures, verdict

HOPS = ("direct", "nginx-log", "nginx-nolog", "sidecar-log", "sidecar-nolog", "floor")
# Each sidecar setting against its nginx counterpart, and the shipped
# sidecar (log on) against the bare nginx hop (the outside reviewer's view);
# the first two are the checked ones. Last, the hyper floor against nginx:
# how much of the gap any hyper proxy has.
PAIRS = (
    ("sidecar-log", "nginx-log"),
    ("sidecar-nolog", "nginx-nolog"),
    ("sidecar-log", "nginx-nolog"),
    ("floor", "nginx-nolog"),
)
CHECKED_PAIRS = PAIRS[:2]


def ratio(a, b):
    return a / b if b > 0 else None


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("--json-out", type=Path, required=True)
    parser.add_argument("--mode", required=True)
    parser.add_argument("--sched", required=True)
    parser.add_argument("--rates", type=int, nargs="+", required=True)
    parser.add_argument("--placements", nargs="+", required=True)
    parser.add_argument("--upstreams", nargs="+", required=True)
    for name in ("rounds", "latency-connections", "throughput-connections", "load-cpu", "server-cpu"):
        parser.add_argument(f"--{name}", type=int, required=True)
    args = parser.parse_args()
    raw, rounds = args.raw, range(1, args.rounds + 1)
    failed = 0

    latency = []
    for placement in args.placements:
        for rate in args.rates:
            for upstream in args.upstreams:
                runs = {
                    hop: [oha_figures(load(raw / f"latency-{placement}-{rate}-{upstream}-{hop}-{r}.json")) for r in rounds]
                    for hop in HOPS
                }
                failed += sum(run["failed"] for hop_runs in runs.values() for run in hop_runs)
                added = {
                    hop: {
                        k: statistics.median(h[k] - d[k] for h, d in zip(runs[hop], runs["direct"]))
                        for k in ("p50_ms", "p99_ms")
                    }
                    for hop in HOPS
                    if hop != "direct"
                }
                ratios = {
                    f"{a}/{b}": {k: ratio(added[a][k], added[b][k]) for k in ("p50_ms", "p99_ms")} for a, b in PAIRS
                }
                latency.append(
                    {
                        "placement": placement,
                        "rate": rate,
                        "upstream": upstream,
                        "latency_ms": {
                            hop: {k: statistics.median(r[k] for r in runs[hop]) for k in ("p50_ms", "p99_ms")}
                            for hop in HOPS
                        },
                        "added_ms": added,
                        "ratios": ratios,
                    }
                )

    throughput = []
    for placement in args.placements:
        for upstream in args.upstreams:
            runs = {
                hop: [oha_figures(load(raw / f"throughput-{placement}-{upstream}-{hop}-{r}.json")) for r in rounds]
                for hop in HOPS
            }
            cpu = {hop: [load(raw / f"cpu-{placement}-{upstream}-{hop}-{r}.json") for r in rounds] for hop in HOPS}
            failed += sum(run["failed"] for hop_runs in runs.values() for run in hop_runs)
            rps = {hop: statistics.median(r["requests_per_second"] for r in runs[hop]) for hop in HOPS}
            # CPU time of the server under test per request answered: far less
            # disturbed by the machine's other tenants than latency.
            cpu_us = {
                kind: {
                    hop: statistics.median(
                        c[f"{kind}_ticks"] / c["ticks_per_second"] * 1e6 / max(1, o["ok"] + o["failed"])
                        for c, o in zip(cpu[hop], runs[hop])
                    )
                    for hop in HOPS
                }
                for kind in ("user", "system")
            }
            throughput.append(
                {
                    "placement": placement,
                    "upstream": upstream,
                    "requests_per_second": rps,
                    "server_cpu_us_per_request": {
                        hop: cpu_us["user"][hop] + cpu_us["system"][hop] for hop in HOPS
                    },
                    "server_user_us_per_request": cpu_us["user"],
                    "server_system_us_per_request": cpu_us["system"],
                    "ratios": {f"{a}/{b}": ratio(rps[a], rps[b]) for a, b in PAIRS},
                }
            )

    def latency_ok(row, pair):
        return all(r is not None and r <= ADDED_RATIO_MAX for r in row["ratios"][pair].values())

    checks = {
        f"added_within_{ADDED_RATIO_MAX}x_{a}_vs_{b}": all(latency_ok(row, f"{a}/{b}") for row in latency)
        for a, b in CHECKED_PAIRS
    } | {
        f"throughput_at_least_{THROUGHPUT_RATIO_MIN}x_{a}_vs_{b}": all(
            (row["ratios"][f"{a}/{b}"] or 0) >= THROUGHPUT_RATIO_MIN for row in throughput
        )
        for a, b in CHECKED_PAIRS
    } | {"no_failed_requests": failed == 0}
    summary = {
        "setup": {k: v for k, v in vars(args).items() if k not in ("raw", "json_out")},
        "latency": latency,
        "throughput": throughput,
        "failed_requests": failed,
        "checks": checks,
    }
    args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary, args)


def print_table(s, args):
    fmt = lambda r: "  n/a" if r is None else f"{r:5.2f}"  # noqa: E731
    out = [
        f"llmesh sidecar at a pod's rates ({args.mode}: {args.rounds} round(s); pinned = load generator and upstream "
        f"on CPU {args.load_cpu}, proxy on CPU {args.server_cpu}; scheduling {args.sched}; realistic chat body; "
        f"medians over rounds)",
        "",
        f"Added latency over the upstream alone, p50 / p99 (ms), {args.latency_connections} connections; ratios are "
        f"sidecar/nginx in the same run (target <= {ADDED_RATIO_MAX:.2f}x)",
        f"  {'placement':<9}{'rate':>6} {'upstream':<9}{'nginx log':>15}{'nginx off':>15}{'sidecar log':>15}"
        f"{'sidecar off':>15}{'hyper floor':>15}{'log/log':>14}{'off/off':>14}{'log/off':>14}{'floor/off':>14}",
    ]
    for row in s["latency"]:
        a = row["added_ms"]
        cells = "".join(f"{a[h]['p50_ms']:>7.3f}/{a[h]['p99_ms']:<7.3f}" for h in HOPS[1:])
        ratios = "".join(
            f"  {fmt(row['ratios'][f'{x}/{y}']['p50_ms'])}/{fmt(row['ratios'][f'{x}/{y}']['p99_ms'])}" for x, y in PAIRS
        )
        out.append(f"  {row['placement']:<9}{row['rate']:>6} {row['upstream']:<9}{cells}{ratios}")
    out += [
        "",
        f"Max throughput, {args.throughput_connections} connections: req/s (server CPU us per request); "
        f"ratios sidecar/nginx (target >= {THROUGHPUT_RATIO_MIN:.2f}x)",
        f"  {'placement':<9} {'upstream':<9}"
        + "".join(f"{h:>20}" for h in HOPS)
        + f"{'log/log':>9}{'off/off':>9}{'log/off':>9}{'floor/off':>10}",
    ]
    for row in s["throughput"]:
        cells = "".join(
            f"{row['requests_per_second'][h]:>11.0f} ({row['server_cpu_us_per_request'][h]:5.1f})" for h in HOPS
        )
        ratios = "".join(f"{fmt(row['ratios'][f'{x}/{y}']):>9}" for x, y in PAIRS)
        out.append(f"  {row['placement']:<9} {row['upstream']:<9}{cells}{ratios}")
    out += [
        "",
        "Server CPU per request at max throughput, user + system (us)",
        f"  {'placement':<9} {'upstream':<9}" + "".join(f"{h:>16}" for h in HOPS),
    ]
    for row in s["throughput"]:
        user, system = row["server_user_us_per_request"], row["server_system_us_per_request"]
        cells = "".join(f"{user[h]:>9.1f} +{system[h]:>5.1f}" for h in HOPS)
        out.append(f"  {row['placement']:<9} {row['upstream']:<9}{cells}")
    out += ["", "Checks:"]
    out += [f"  {name}: {verdict(ok)}" for name, ok in s["checks"].items()]
    out += [f"Failed requests: {s['failed_requests']}", f"JSON: {args.json_out}"]
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
