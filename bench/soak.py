#!/usr/bin/env python3
"""Soak: mixed traffic through one sidecar at a steady rate, sampling its
resident memory, open file descriptors, TCP connections and tokio tasks
(`llmesh_runtime_tasks`) every few seconds, then a quiet spell to see them
return to baseline.

Traffic (round robin, RATE requests a second): complete and streamed chat,
tool calls, cache hits and misses, embeddings, a fallback after a failing
target, 4xx (unknown route, bad body), budget refusals and rate-limit
refusals; the cached route keeps answers 30 s, so the cache reaches its
steady size within the warm-up (with a TTL longer than the run, the unique
misses fill it all along and its growth reads as a leak); the manifests
are rewritten every RELOAD seconds (a reload each time). Standard library
only, so it runs wherever the test command runs.

    bench/soak.py [--seconds 600] [--rate 50] [--binary target/release/llmesh-sidecar]
                  [--csv out.csv] [--max-growth 0.05] [--plot out.png]

Exits non-zero when, after the first quarter (warm-up), RSS or fds grew by
more than --max-growth, when fds or connections do not come back to their
warm-up level after the traffic stops, when tokio tasks do not come back to
their idle level from before the traffic, or when a request got an answer
its kind should not get. --plot needs matplotlib (optional).
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

MANIFESTS = """
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata: {{name: mock}}
spec: {{provider: mock, mock: {{timeToFirstToken: 2ms, perToken: 1ms}}}}
---
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata: {{name: down}}
spec: {{provider: mock, mock: {{faults: [{{kind: status, status: 503}}]}}}}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec: {{targets: [{{provider: mock, model: m, price: {{input: 1, output: 1}}}}]}}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: cached}}
spec: {{targets: [{{provider: mock, model: m}}], cache: {{mode: exact, ttl: 30s}}}}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: fallback}}
spec:
  targets: [{{provider: down, model: m}}]
  fallbacks: [{{target: {{provider: mock, model: m}}, on: [server-error]}}]
  circuitBreaker: {{enabled: false}}
---
apiVersion: v1
kind: Secret
metadata: {{name: soak}}
stringData: {{key: sk-soak-key}}
---
apiVersion: llmesh.io/v1alpha1
kind: VirtualKey
metadata: {{name: soak}}
spec: {{}}
---
apiVersion: v1
kind: Secret
metadata: {{name: limited}}
stringData: {{key: sk-soak-limited}}
---
apiVersion: llmesh.io/v1alpha1
kind: VirtualKey
metadata: {{name: limited}}
spec: {{rateLimits: {{requestsPerMinute: 1}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: broke}}
stringData: {{key: sk-soak-broke}}
---
apiVersion: llmesh.io/v1alpha1
kind: VirtualKey
metadata: {{name: broke}}
spec: {{budget: empty}}
---
apiVersion: llmesh.io/v1alpha1
kind: Budget
metadata: {{name: empty}}
spec: {{limitUsd: 0.000000001, period: daily}}
# generation {generation}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat(model, content, stream=False, tools=False):
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    return body


# (name, path, body, key, expected statuses)
def mix(i):
    n = f"question {i}"
    return [
        ("chat", "/v1/chat/completions", chat("chat", n), "sk-soak-key", {200}),
        ("stream", "/v1/chat/completions", chat("chat", n, stream=True), "sk-soak-key", {200}),
        ("tools", "/v1/chat/completions", chat("chat", n, tools=True), "sk-soak-key", {200}),
        ("cache-hit", "/v1/chat/completions", chat("cached", "the same question"), "sk-soak-key", {200}),
        ("cache-miss", "/v1/chat/completions", chat("cached", n), "sk-soak-key", {200}),
        ("embeddings", "/v1/embeddings", {"model": "chat", "input": [n]}, "sk-soak-key", {200}),
        ("fallback", "/v1/chat/completions", chat("fallback", n), "sk-soak-key", {200}),
        ("4xx-route", "/v1/chat/completions", chat("nope", n), "sk-soak-key", {404}),
        ("4xx-body", "/v1/chat/completions", {"model": "chat"}, "sk-soak-key", {400}),
        ("budget", "/v1/chat/completions", chat("chat", n), "sk-soak-broke", {200, 429}),
        ("rate-limit", "/v1/chat/completions", chat("chat", n), "sk-soak-limited", {200, 429}),
    ]


def send(base, path, body, key):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def sample(pid, admin):
    rss_kb = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                sockets += 1
        except OSError:
            pass
    return {"rss_mb": rss_kb / 1024, "fds": fds, "sockets": sockets, "tasks": tasks(admin)}


def tasks(admin):
    """`llmesh_runtime_tasks` from the sidecar's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("llmesh_runtime_tasks "):
                return int(float(line.split()[1]))
    raise RuntimeError("no llmesh_runtime_tasks in /metrics")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--reload", type=float, default=5)
    parser.add_argument("--every", type=float, default=2, help="seconds between samples")
    parser.add_argument("--quiet", type=float, default=6, help="seconds without traffic at the end")
    parser.add_argument("--binary", default="target/release/llmesh-sidecar")
    parser.add_argument("--csv")
    parser.add_argument("--plot")
    parser.add_argument("--max-growth", type=float, default=0.05)
    args = parser.parse_args()

    folder = tempfile.mkdtemp(prefix="llmesh-soak-")
    manifest = os.path.join(folder, "manifests.yaml")
    with open(manifest, "w") as out:
        out.write(MANIFESTS.format(generation=0))
    api, admin = free_port(), free_port()
    env = dict(os.environ, LLMESH_LOG="warn", LLMESH_MANIFESTS=folder,
               LLMESH_LISTEN_ADDR=f"127.0.0.1:{api}", LLMESH_ADMIN_ADDR=f"127.0.0.1:{admin}")
    sidecar = subprocess.Popen([args.binary], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{api}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        run(args, sidecar.pid, base, admin, manifest)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait(timeout=30)


def run(args, pid, base, admin, manifest):
    stop = threading.Event()
    counts, wrong = {}, []
    lock = threading.Lock()
    interval = args.workers / args.rate

    def worker(n):
        i = n
        next_at = time.monotonic()
        while not stop.is_set():
            kinds = mix(i)
            name, path, body, key, expected = kinds[i % len(kinds)]
            status = send(base, path, body, key)
            with lock:
                counts[name] = counts.get(name, 0) + 1
                if status not in expected:
                    wrong.append((name, status))
            i += args.workers
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def reloader():
        generation = 0
        while not stop.wait(args.reload):
            generation += 1
            with open(manifest, "w") as out:
                out.write(MANIFESTS.format(generation=generation))

    # The idle level the tasks must return to (the scrape's own connection included).
    idle = sample(pid, admin)
    print(json.dumps({"idle": idle}), flush=True)
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(args.workers)]
    threads.append(threading.Thread(target=reloader))
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples = []
    while time.monotonic() - started < args.seconds:
        time.sleep(args.every)
        samples.append({"t": round(time.monotonic() - started, 1), "traffic": 1, **sample(pid, admin)})
        print(json.dumps(samples[-1]), flush=True)
    stop.set()
    for thread in threads:
        thread.join()
    quiet_started = time.monotonic()
    while time.monotonic() - quiet_started < args.quiet:
        time.sleep(args.every)
        samples.append({"t": round(time.monotonic() - started, 1), "traffic": 0, **sample(pid, admin)})
        print(json.dumps(samples[-1]), flush=True)

    total = sum(counts.values())
    elapsed = args.seconds
    busy = [s for s in samples if s["traffic"]]
    warm = busy[len(busy) // 4]
    last = busy[-1]
    after = samples[-1]
    growth = {k: (last[k] - warm[k]) / warm[k] for k in ("rss_mb", "fds")}
    report = {
        "requests": total, "rate": round(total / elapsed, 1), "by_kind": counts,
        "unexpected": len(wrong), "idle": idle, "warm": warm, "end_of_traffic": last, "after_quiet": after,
        "peak_tasks": max(s["tasks"] for s in samples),
        "growth_after_warmup": {k: round(v, 4) for k, v in growth.items()},
        "peak_rss_mb": round(max(s["rss_mb"] for s in samples), 1),
    }
    print(json.dumps(report, indent=2))
    if args.csv:
        with open(args.csv, "w") as out:
            out.write("t,traffic,rss_mb,fds,sockets,tasks\n")
            for s in samples:
                out.write(f'{s["t"]},{s["traffic"]},{s["rss_mb"]:.2f},{s["fds"]},{s["sockets"]},{s["tasks"]}\n')
    if args.plot:
        plot(samples, args.plot)
    failures = []
    if wrong:
        failures.append(f"unexpected statuses: {wrong[:10]}")
    if growth["rss_mb"] > args.max_growth:
        failures.append(f"RSS grew {growth['rss_mb']:.1%} after warm-up")
    if last["fds"] - warm["fds"] > max(8, warm["fds"] * args.max_growth):
        failures.append(f"fds grew from {warm['fds']} to {last['fds']}")
    if after["sockets"] > warm["sockets"]:
        failures.append(f"sockets {after['sockets']} after the traffic stopped, {warm['sockets']} at warm-up")
    if after["tasks"] > idle["tasks"]:
        failures.append(f"{after['tasks']} tokio tasks after the traffic stopped, {idle['tasks']} before it")
    if failures:
        print("SOAK FAILED: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


def plot(samples, path):
    import matplotlib  # optional: only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in samples]
    figure, (rss, fds, tasks) = plt.subplots(3, 1, sharex=True, figsize=(8, 7))
    rss.plot(t, [s["rss_mb"] for s in samples])
    rss.set_ylabel("RSS (MiB)")
    fds.plot(t, [s["fds"] for s in samples], label="open fds")
    fds.plot(t, [s["sockets"] for s in samples], label="sockets")
    fds.set_ylabel("count")
    fds.legend()
    tasks.plot(t, [s["tasks"] for s in samples])
    tasks.set_ylabel("tokio tasks")
    tasks.set_xlabel("seconds")
    end = max((s["t"] for s in samples if s["traffic"]), default=0)
    for axis in (rss, fds, tasks):
        axis.axvline(end, color="grey", linestyle="--")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
