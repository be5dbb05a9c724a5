#!/usr/bin/env python3
"""The app's latency with and without a slow shadow, and with tracing on.

Starts `mock-upstream` and the sidecar (the binaries under target/debug, or
`--binaries DIR`) with one plain route, one route mirrored to a candidate
that takes `--shadow-ms` to answer, an eval file and an OTLP endpoint that
refuses connections (the worst case for the exporter). Requests to the two
routes alternate on one kept-alive connection, so background noise hits both
alike; prints the median and p95 of each. Standard library only.
"""

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"not ready: {url}")


def manifests(mock: str) -> str:
    docs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k"}, "stringData": {"apiKey": "sk-test"}},
        {"apiVersion": "llmesh.io/v1alpha1", "kind": "ProviderSecret", "metadata": {"name": "primary"},
         "spec": {"provider": "openai", "baseUrl": f"{mock}/openai/v1", "secretRef": {"name": "k"}}},
        {"apiVersion": "llmesh.io/v1alpha1", "kind": "ProviderSecret", "metadata": {"name": "slow"},
         "spec": {"provider": "anthropic", "baseUrl": f"{mock}/anthropic", "secretRef": {"name": "k"}}},
        {"apiVersion": "llmesh.io/v1alpha1", "kind": "LLMRoute", "metadata": {"name": "plain"},
         "spec": {"targets": [{"provider": "primary", "model": "gpt-4o-mini"}]}},
        {"apiVersion": "llmesh.io/v1alpha1", "kind": "LLMRoute", "metadata": {"name": "shadowed"},
         "spec": {"targets": [{"provider": "primary", "model": "gpt-4o-mini"}],
                  "mirror": {"target": {"provider": "slow", "model": "claude-sonnet-4-5"}, "percent": 100}}},
    ]
    return "".join(f"---\n{json.dumps(d)}\n" for d in docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--binaries", default=str(REPO / "target/debug"))
    parser.add_argument("--requests", type=int, default=100, help="per route")
    parser.add_argument("--shadow-ms", type=int, default=2000)
    args = parser.parse_args()
    binaries = Path(args.binaries)
    work = Path(tempfile.mkdtemp(prefix="llmesh-shadow-bench-"))
    mock_addr, api_addr, admin_addr = (f"127.0.0.1:{free_port()}" for _ in range(3))
    processes = [subprocess.Popen([binaries / "mock-upstream", "--listen", mock_addr], stdout=subprocess.DEVNULL)]
    try:
        wait(f"http://{mock_addr}/_mock/openai/calls")
        (work / "manifests").mkdir()
        (work / "manifests" / "bench.yaml").write_text(manifests(f"http://{mock_addr}"))
        env = {
            "LLMESH_EVAL_FILE": str(work / "eval.jsonl"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "LLMESH_LOG": "warn",
        }
        processes.append(subprocess.Popen(
            [binaries / "llmesh-sidecar", "--manifests", work / "manifests", "--listen", api_addr, "--admin-listen", admin_addr],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait(f"http://{admin_addr}/readyz")
        script = json.dumps([{"delay-ms": args.shadow_ms}] * (args.requests + 10)).encode()
        urllib.request.urlopen(urllib.request.Request(
            f"http://{mock_addr}/_mock/anthropic/script", data=script, method="POST",
            headers={"content-type": "application/json"},
        ))
        conn = http.client.HTTPConnection(*api_addr.split(":"), timeout=10)
        times = {"plain": [], "shadowed": []}
        for i in range(args.requests * 2 + 10):
            route = "plain" if i % 2 == 0 else "shadowed"
            body = json.dumps({"model": route, "messages": [{"role": "user", "content": "hi"}]})
            started = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 200, answer.status
            if i >= 10:  # warm-up done
                times[route].append((time.perf_counter() - started) * 1000)
        for route, samples in times.items():
            samples.sort()
            p95 = samples[int(len(samples) * 0.95) - 1]
            print(f"{route:9} median {statistics.median(samples):6.2f} ms  p95 {p95:6.2f} ms  ({len(samples)} requests)")
        time.sleep(args.shadow_ms / 1000 + 1)
        kinds = [json.loads(line)["kind"] for line in (work / "eval.jsonl").read_text().splitlines()]
        print(f"eval records: {kinds.count('primary')} primary, {kinds.count('shadow')} shadow "
              f"(each shadow answered after {args.shadow_ms} ms)")
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=10)


if __name__ == "__main__":
    main()
