#!/usr/bin/env python3
"""Many concurrent slow streams through one sidecar (a paced in-process
mock: a chunk every --per-token), then new requests' time to first chunk
while they are all open, then the sidecar's memory per open stream, then
what a request past the concurrency cap gets.

    bench/streams.py [--streams 10000] [--binary target/release/llmesh-sidecar]

The cap (`LLMESH_MAX_CONCURRENT_REQUESTS`) is set to the streams plus
--headroom; at the end more held streams are opened one at a time until
one is refused, and --over further requests must each get 503 with
`Retry-After` at once.

Raises the open-file limit to what the streams need (the sidecar inherits
it). Standard library only (asyncio, raw HTTP/1.1 over loopback).
"""

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

MANIFESTS = """
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata: {{name: paced}}
spec: {{provider: mock, mock: {{timeToFirstToken: {ttft}, perToken: {per_token}}}}}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {{name: paced}}
spec: {{targets: [{{provider: paced, model: m}}]}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def request(port, words):
    body = json.dumps({"model": "paced", "stream": True,
                       "messages": [{"role": "user", "content": " ".join(["word"] * words)}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode()
    return head + body


async def open_stream(port, words, opened, errors):
    """Sends one streamed request, waits for its first chunk, then keeps reading until cancelled."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(port, words))
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            errors.append(status.decode(errors="replace").strip())
            writer.close()
            return
        while True:
            line = await reader.readline()
            if line.startswith(b"data: {"):
                break
            if not line:
                errors.append("closed before the first chunk")
                return
        opened.append(1)
        # Read until the stream ends or the run cancels this task (no timer
        # per read: 10,000 of them a second starve the client's event loop).
        try:
            while line := await reader.readline():
                if b'"error"' in line:
                    errors.append(line.decode(errors="replace")[:200])
                    break
        finally:
            writer.close()
    except OSError as error:
        errors.append(str(error))


async def first_chunk(port):
    return await asyncio.wait_for(first_chunk_unbounded(port), 30)


async def first_chunk_unbounded(port):
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request(port, 1))
    await writer.drain()
    while True:
        line = await reader.readline()
        if line.startswith(b"data: {") or not line:
            break
    took = time.perf_counter() - started
    writer.close()
    return took


async def past_the_cap(port):
    """One request while the cap is full: its status, `Retry-After` and how long the answer took."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request(port, 1))
    await writer.drain()
    status = (await reader.readline()).decode(errors="replace").split()[1]
    retry_after = None
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode(errors="replace").partition(":")
        if name.lower() == "retry-after":
            retry_after = value.strip()
    took = time.perf_counter() - started
    writer.close()
    return status, retry_after, took


async def run(args, port, pid):
    baseline = rss_mb(pid)
    idle_ttfc = [await first_chunk(port) for _ in range(args.probes)]
    opened, errors = [], []
    started = time.perf_counter()
    tasks = []
    for i in range(args.streams):
        tasks.append(asyncio.create_task(open_stream(port, args.words, opened, errors)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    while len(opened) + len(errors) < args.streams and time.perf_counter() - started < args.ramp:
        await asyncio.sleep(1)
        print(f"{len(opened)} open, {len(errors)} errors", file=sys.stderr, flush=True)
    ramp = time.perf_counter() - started
    await asyncio.sleep(2)
    loaded = rss_mb(pid)
    busy_ttfc = [await first_chunk(port) for _ in range(args.probes)]
    # Fill the cap: more held streams, one at a time, until one is refused
    # (a probe's slot is freed when its next chunk finds the client gone).
    await asyncio.sleep(2)
    filled, refusals = [], []
    while not refusals and len(filled) <= args.headroom + args.probes:
        tasks.append(asyncio.create_task(open_stream(port, args.words, filled, refusals)))
        while len(filled) + len(refusals) < len(tasks) - args.streams:
            await asyncio.sleep(0.01)
    refused = [await asyncio.wait_for(past_the_cap(port), 30) for _ in range(args.over)]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ms = lambda xs: {"p50": round(statistics.median(xs) * 1000, 2),
                     "p99": round(sorted(xs)[max(0, int(len(xs) * 0.99) - 1)] * 1000, 2)}
    return {
        "streams_open": len(opened), "errors": len(errors), "first_errors": errors[:5],
        "ramp_seconds": round(ramp, 1),
        "rss_mb_idle": round(baseline, 1), "rss_mb_with_streams": round(loaded, 1),
        "kib_per_stream": round((loaded - baseline) * 1024 / max(1, len(opened)), 1),
        "ttfc_ms_idle": ms(idle_ttfc), "ttfc_ms_with_streams": ms(busy_ttfc),
        "mock_ttft_ms": args.ttft_ms,
        "past_the_cap": {
            "cap": args.streams + args.headroom,
            "open_when_refused": len(opened) + len(filled),
            "refusal": refusals[:1],
            "statuses": sorted({status for status, _, _ in refused}),
            "retry_after": sorted({str(r) for _, r, _ in refused}),
            "answered_ms": ms([took for _, _, took in refused]) if refused else None,
        },
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--binary", default="target/release/llmesh-sidecar")
    parser.add_argument("--ttft-ms", type=int, default=5)
    parser.add_argument("--per-token", default="1s")
    parser.add_argument("--words", type=int, default=120, help="prompt words: the mock echoes them, one chunk each")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--over", type=int, default=20, help="requests sent past the cap")
    parser.add_argument("--headroom", type=int, default=10, help="the cap is the streams plus this")
    parser.add_argument("--ramp", type=float, default=120, help="seconds allowed to open the streams")
    args = parser.parse_args()

    need = args.streams * 2 + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    folder = tempfile.mkdtemp(prefix="llmesh-streams-")
    with open(os.path.join(folder, "manifests.yaml"), "w") as out:
        out.write(MANIFESTS.format(ttft=f"{args.ttft_ms}ms", per_token=args.per_token))
    api, admin = free_port(), free_port()
    env = dict(os.environ, LLMESH_LOG="warn", LLMESH_MANIFESTS=folder,
               LLMESH_LISTEN_ADDR=f"127.0.0.1:{api}", LLMESH_ADMIN_ADDR=f"127.0.0.1:{admin}",
               LLMESH_MAX_CONCURRENT_REQUESTS=str(args.streams + args.headroom),
               LLMESH_MAX_CONNECTIONS=str(args.streams + 1000))
    sidecar = subprocess.Popen([args.binary], env=env, stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        print(json.dumps(asyncio.run(run(args, api, sidecar.pid)), indent=2))
    finally:
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait(timeout=60)


if __name__ == "__main__":
    main()
