#!/usr/bin/env python3
"""What an idle sidecar costs: CPU time per minute and wake-ups per second,
per thread, read from /proc/PID/task/*/schedstat (time on CPU, times put on
a CPU) while it serves nothing, as in a pod whose app is quiet.

The sidecar is set up as in a pod: a route to an upstream, a virtual key with
a budget and a rate limit, a state file; one request is sent first so that
every part that works after a request (log writer, state file, connection
pool) has had work, then it idles. `--strace` also counts its system calls
over the same window (strace slows nothing that does not run).

    bench/idle.py --binary target/release/llmesh-sidecar --seconds 60
"""

import argparse
import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MANIFESTS = """
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata: {name: m}
spec: {provider: mock}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: smart}
spec:
  targets: [{provider: m, model: m, price: {input: 1000, output: 1000}}]
---
apiVersion: v1
kind: Secret
metadata: {name: k}
stringData: {key: sk-idle}
---
apiVersion: llmesh.io/v1alpha1
kind: VirtualKey
metadata: {name: k}
spec: {budget: b, rateLimits: {requestsPerMinute: 600}}
---
apiVersion: llmesh.io/v1alpha1
kind: Budget
metadata: {name: b}
spec: {limitUsd: 10, period: total}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads(pid):
    """Per thread: (name, ns on CPU, times scheduled)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            on_cpu, _, scheduled = (task / "schedstat").read_text().split()[:3]
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        out[task.name] = (name, int(on_cpu), int(scheduled))
    return out


def wait_serving(url, deadline=30):
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the sidecar does not answer {url}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--settle", type=float, default=3, help="seconds after the request before measuring")
    parser.add_argument("--strace", action="store_true", help="count system calls too (needs strace)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmesh-idle."))
    (work / "manifests").mkdir()
    (work / "manifests" / "idle.yaml").write_text(MANIFESTS)
    api, admin = free_port(), free_port()
    env = dict(os.environ, LLMESH_STATE_FILE=str(work / "state.json"))
    sidecar = subprocess.Popen(
        [args.binary, "--manifests", str(work / "manifests"), "--listen", f"127.0.0.1:{api}",
         "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=subprocess.DEVNULL, env=env,
    )
    tracer = None
    try:
        wait_serving(f"http://127.0.0.1:{admin}/readyz")
        request = urllib.request.Request(
            f"http://127.0.0.1:{api}/v1/chat/completions",
            data=json.dumps({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}).encode(),
            headers={"content-type": "application/json", "authorization": "Bearer sk-idle"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200, answer.status
        time.sleep(args.settle)
        if args.strace:
            tracer = subprocess.Popen(
                ["strace", "-f", "-c", "-q", "-p", str(sidecar.pid), "-o", str(work / "strace.txt")],
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
        before = threads(sidecar.pid)
        time.sleep(args.seconds)
        after = threads(sidecar.pid)
        if tracer:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=10)
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=10)

    per_name = collections.defaultdict(lambda: [0, 0, 0])
    for tid, (name, on_cpu, scheduled) in after.items():
        was = before.get(tid, (name, 0, 0))
        entry = per_name[name]
        entry[0] += on_cpu - was[1]
        entry[1] += scheduled - was[2]
        entry[2] += 1
    total_cpu_ns = sum(e[0] for e in per_name.values())
    total_wakeups = sum(e[1] for e in per_name.values())
    result = {
        "seconds": args.seconds,
        "cpu_ms_per_minute": total_cpu_ns / 1e6 * 60 / args.seconds,
        "cpu_share_of_a_core": total_cpu_ns / 1e9 / args.seconds,
        "wakeups_per_second": total_wakeups / args.seconds,
        "threads": {
            name: {"count": e[2], "cpu_ms": e[0] / 1e6, "wakeups_per_second": e[1] / args.seconds}
            for name, e in sorted(per_name.items())
        },
    }
    if tracer:
        result["syscalls_per_second"] = parse_strace((work / "strace.txt").read_text(), args.seconds)
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"idle for {args.seconds:g} s: {result['cpu_ms_per_minute']:.2f} ms CPU per minute "
        f"({100 * result['cpu_share_of_a_core']:.4f} % of a core), {result['wakeups_per_second']:.2f} wake-ups/s"
    )
    for name, t in result["threads"].items():
        print(f"  {name:<20} x{t['count']:<3} {t['cpu_ms']:>9.3f} ms CPU {t['wakeups_per_second']:>8.2f} wake-ups/s")
    for name, rate in result.get("syscalls_per_second", {}).items():
        print(f"  syscall {name:<20} {rate:>8.2f}/s")


def parse_strace(text, seconds):
    """`strace -c`'s table: calls per second by system call."""
    rates = {}
    for line in text.splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[0].replace(".", "", 1).isdigit() and fields[-1] != "total":
            rates[fields[-1]] = int(fields[3]) / seconds
    return dict(sorted(rates.items(), key=lambda kv: -kv[1]))


if __name__ == "__main__":
    sys.exit(main())
