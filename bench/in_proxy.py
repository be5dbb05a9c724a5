#!/usr/bin/env python3
"""Time each request spends inside a proxy, from a loopback packet capture.

For every request the capture holds four moments: the client's request
reaching the proxy (a), the proxy's request to the upstream (b), the
upstream's answer (c) and the proxy's answer to the client (d). The proxy's
own time is (b - a) + (d - c): its wake-up and work on the way in and on the
way out, with the upstream's time and the load generator's taken out. Timings
from the client side (oha's) carry the load generator's own scheduling; these
do not, so they separate two proxies more sharply on a noisy machine.

Requests are told apart by connection: an answer on a client connection
closes the request open on it; an upstream request is paired with the oldest
client request not yet forwarded (proxies forward in arrival order), and the
upstream's answer with the request open on that upstream connection.

    in_proxy.py CAPTURE.pcap --proxy-port P --upstream-port U
prints JSON: count, and p50/p90/p99 in microseconds of the way in, the way
out, and their sum.
"""

import argparse
import collections
import json
import struct
import sys

LINKTYPE_ETHERNET = 1
LINKTYPE_LINUX_SLL = 113


def packets(path):
    """(time, source port, destination port, first payload bytes) of each TCP
    segment with a payload, from a classic pcap file of IPv4 traffic."""
    with open(path, "rb") as capture:
        header = capture.read(24)
        if len(header) < 24:
            return
        magic = struct.unpack("<I", header[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            sys.exit(f"{path}: not a little-endian pcap file")
        fraction = 1e9 if magic == 0xA1B23C4D else 1e6
        link = struct.unpack("<I", header[20:24])[0]
        link_header = {LINKTYPE_ETHERNET: 14, LINKTYPE_LINUX_SLL: 16}.get(link, 4)
        while True:
            record = capture.read(16)
            if len(record) < 16:
                return
            seconds, part, captured, _ = struct.unpack("<IIII", record)
            frame = capture.read(captured)
            ip = frame[link_header:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            tcp = ip[(ip[0] & 0x0F) * 4 :]
            if len(tcp) < 20:
                continue
            source, destination = struct.unpack(">HH", tcp[:4])
            payload = tcp[(tcp[12] >> 4) * 4 :]
            if payload:
                yield seconds + part / fraction, source, destination, payload


def quantile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def measure(path, proxy_port, upstream_port):
    opened = {}  # client port -> [a, b, c]
    waiting = collections.deque()  # client ports whose request is not forwarded yet
    forwarded = {}  # proxy's upstream-side port -> client port
    way_in, way_out = [], []
    for time, source, destination, payload in packets(path):
        if destination == proxy_port and payload.startswith(b"POST "):
            opened[source] = [time, None, None]
            waiting.append(source)
        elif destination == upstream_port and payload.startswith(b"POST ") and waiting:
            client = waiting.popleft()
            if client in opened:
                opened[client][1] = time
                forwarded[source] = client
        elif source == upstream_port and payload.startswith(b"HTTP/"):
            client = forwarded.pop(destination, None)
            if client in opened:
                opened[client][2] = time
        elif source == proxy_port and payload.startswith(b"HTTP/"):
            moments = opened.pop(destination, None)
            if moments and None not in moments:
                a, b, c = moments
                way_in.append((b - a) * 1e6)
                way_out.append((time - c) * 1e6)
    total = [i + o for i, o in zip(way_in, way_out)]
    summary = {"count": len(total)}
    for name, values in (("in", way_in), ("out", way_out), ("total", total)):
        for q in (0.5, 0.9, 0.99):
            value = quantile(values, q)
            summary[f"{name}_p{round(q * 100)}_us"] = None if value is None else round(value, 1)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capture")
    parser.add_argument("--proxy-port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    arguments = parser.parse_args()
    print(json.dumps(measure(arguments.capture, arguments.proxy_port, arguments.upstream_port)))


if __name__ == "__main__":
    main()
