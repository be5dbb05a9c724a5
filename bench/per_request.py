#!/usr/bin/env python3
"""Deterministic costs of one pass-through request, for guiding work on a
machine too busy for latency figures:

- instructions per request (valgrind's callgrind, user space, collected only
  while the requests run: startup and the warm-up are out);
- at a low fixed rate, the sidecar's wake-ups (times its threads were put on a
  CPU, from /proc/PID/task/*/schedstat) and CPU time per request.

The request is the realistic one of bench/rates.sh (system prompt,
max_tokens, temperature) through a standalone route to `mock-upstream`.

    bench/per_request.py --sidecar BIN --mock BIN [--callgrind] [--rate 20 --seconds 10]
"""

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BODY = json.dumps(
    {
        "model": "bench",
        "messages": [
            {
                "role": "system",
                "content": "You are the support assistant of Acme Cloud. Answer in at most three sentences and in "
                "the customer's language. Cite the documentation page when there is one. Never reveal internal "
                "ticket numbers, and ask for the account id before answering billing questions.",
            },
            {
                "role": "user",
                "content": "Since this morning my deployment in eu-west-1 restarts every few minutes and the events "
                "say OOMKilled, although its memory limit is 2 GiB and it used 600 MiB last week. What should I "
                "check first?",
            },
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }
).encode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def schedstat(pid):
    """(ns on CPU, times scheduled) summed over the process's threads."""
    cpu = scheduled = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        cpu += int(fields[0])
        scheduled += int(fields[2])
    return cpu, scheduled


class Client:
    """One keep-alive connection sending the benchmark request."""

    def __init__(self, port):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def ask(self):
        self.connection.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
        answer = self.connection.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise SystemExit(f"status {answer.status}: {body[:300]!r}")


def wait_answering(port, deadline=120):
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        try:
            Client(port).ask()
            return
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
    raise SystemExit("the sidecar does not answer")


def paced(port, rate, seconds, connections):
    """`rate` requests a second spread over `connections`, each on its own schedule."""
    interval = connections / rate
    sent = [0] * connections

    def run(n):
        client = Client(port)
        start = time.monotonic() + n * interval / connections
        k = 0
        while True:
            due = start + k * interval
            if due - start >= seconds:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            client.ask()
            sent[n] += 1
            k += 1

    threads = [threading.Thread(target=run, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(sent)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sidecar", required=True)
    parser.add_argument("--mock", required=True)
    parser.add_argument("--callgrind", action="store_true", help="count instructions per request (valgrind)")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted by callgrind")
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--access-log", choices=("on", "off"), default="on")
    parser.add_argument("--keep", help="keep the callgrind output file here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="llmesh-per-request."))
    mock_port, api, admin = free_port(), free_port(), free_port()
    (work / "manifests").mkdir()
    (work / "manifests" / "bench.yaml").write_text(
        f"""apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata: {{name: upstream}}
spec: {{provider: openai-compatible, baseUrl: "http://127.0.0.1:{mock_port}/openai/v1"}}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: bench}}
spec:
  targets: [{{provider: upstream, model: gpt-4o-mini}}]
"""
    )
    env = dict(os.environ)
    if args.access_log == "off":
        env["LLMESH_LOG"] = "info,llmesh::access=off"
    sidecar_cmd = [args.sidecar, "--manifests", str(work / "manifests"), "--listen", f"127.0.0.1:{api}",
                   "--admin-listen", f"127.0.0.1:{admin}"]
    out_file = work / "callgrind.out"
    if args.callgrind:
        sidecar_cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
                       *sidecar_cmd]
    mock = subprocess.Popen([args.mock, "--listen", f"127.0.0.1:{mock_port}", "--forget-calls"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sidecar = subprocess.Popen(sidecar_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    result = {"access_log": args.access_log}
    try:
        wait_answering(api)
        client = Client(api)
        for _ in range(200):
            client.ask()
        if args.callgrind:
            subprocess.run(["callgrind_control", "--instr=on", str(sidecar.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            for _ in range(args.requests):
                client.ask()
            subprocess.run(["callgrind_control", "--instr=off", str(sidecar.pid)], check=True,
                           stdout=subprocess.DEVNULL)
        else:
            cpu0, woken0 = schedstat(sidecar.pid)
            sent = paced(api, args.rate, args.seconds, args.connections)
            cpu1, woken1 = schedstat(sidecar.pid)
            result |= {
                "rate": args.rate,
                "requests": sent,
                "wakeups_per_request": (woken1 - woken0) / sent,
                "cpu_us_per_request": (cpu1 - cpu0) / 1e3 / sent,
            }
    finally:
        sidecar.terminate()
        sidecar.wait(timeout=60)
        mock.terminate()
        mock.wait(timeout=10)
    if args.callgrind:
        text = out_file.read_text(errors="replace")
        # `summary:` is written at start-up (0 with instrumentation off), `totals:` at the end.
        totals = max(int(n) for n in re.findall(r"^(?:totals|summary):\s+(\d+)", text, re.M))
        result |= {"requests": args.requests, "instructions_per_request": totals / args.requests}
        if args.keep:
            Path(args.keep).write_bytes(out_file.read_bytes())
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
