#!/usr/bin/env python3
"""Streaming through the sidecar: time to first chunk, and chunk pacing.

First chunk: each sample is one streaming chat request on a kept-alive
connection, timed from sending the request to holding the first complete SSE
event (`data: {...}` and its blank line), straight to the upstream and through
the sidecar. Requests to the two targets alternate, so background noise on the
machine hits both alike.

Pacing (optional): streams from a route whose upstream produces a chunk every
`--pace-ms`; the gaps between chunks arriving at the client show whether the
sidecar forwards each one as it comes or holds some back (as Nagle's algorithm
does, for the client's delayed ACK). Standard library only.
"""

import argparse
import http.client
import json
import statistics
import sys
import time
import urllib.parse


def connect(url):
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10), parts.path


def stream(conn, path, body):
    """Arrival times (seconds after sending) of each piece of the answer."""
    started = time.perf_counter()
    conn.request("POST", path, body=body, headers={"content-type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}: {response.read()[:200]!r}")
    arrivals = []
    while True:
        data = response.read1(65536)
        if not data:
            return arrivals
        arrivals.append((time.perf_counter() - started, data))


def first_chunk_seconds(conn, path, body):
    """Seconds until the first complete SSE event; the rest of the stream is drained."""
    seen = b""
    for at, data in stream(conn, path, body):
        seen += data
        start = seen.find(b"data: {")
        if start >= 0 and seen.find(b"\n\n", start) >= 0:
            return at
    raise RuntimeError(f"{path}: the stream carried no chunk")


def chunk_gaps_ms(conn, path, body):
    """Milliseconds between successive pieces of a paced stream, after the first."""
    times = [at for at, _ in stream(conn, path, body)]
    return [(b - a) * 1000 for a, b in zip(times, times[1:])]


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(samples):
    return {
        "p50_ms": statistics.median(samples) * 1000,
        "p99_ms": percentile(samples, 0.99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--direct", required=True, help="upstream chat completions URL")
    parser.add_argument("--sidecar", required=True, help="sidecar chat completions URL")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--requests", type=int, default=1000, help="samples per target")
    parser.add_argument("--warmup", type=int, default=50, help="unrecorded requests per target first")
    parser.add_argument("--paced-model", help="a sidecar route whose upstream paces its chunks")
    parser.add_argument("--pace-ms", type=float, default=5.0, help="that upstream's time between chunks")
    parser.add_argument("--paced-requests", type=int, default=20)
    args = parser.parse_args()

    def body(model, text="Say hello"):
        return json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": text}]}).encode()

    targets = {"direct": connect(args.direct), "sidecar": connect(args.sidecar)}
    samples = {name: [] for name in targets}
    for i in range(args.warmup + args.requests):
        for name, (conn, path) in targets.items():
            first = first_chunk_seconds(conn, path, body(args.model))
            if i >= args.warmup:
                samples[name].append(first)

    deltas = [s - d for s, d in zip(samples["sidecar"], samples["direct"])]
    result = {name: summary(values) for name, values in samples.items()}
    result["added"] = {
        "p50_ms": result["sidecar"]["p50_ms"] - result["direct"]["p50_ms"],
        "p99_ms": result["sidecar"]["p99_ms"] - result["direct"]["p99_ms"],
        "paired_median_ms": statistics.median(deltas) * 1000,
    }
    result["requests"] = args.requests
    if args.paced_model:
        conn, path = targets["sidecar"]
        story = "Tell me a story about the sea, the wind and the lighthouse keeper"
        gaps = [g for _ in range(args.paced_requests) for g in chunk_gaps_ms(conn, path, body(args.paced_model, story))]
        result["paced"] = {
            "pace_ms": args.pace_ms,
            "streams": args.paced_requests,
            "gaps": len(gaps),
            "gap_p50_ms": statistics.median(gaps),
            "gap_p99_ms": percentile(gaps, 0.99),
            "gap_max_ms": max(gaps),
        }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
