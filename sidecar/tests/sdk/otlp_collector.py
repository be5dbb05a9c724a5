"""Real OTLP trace receivers for tests, one per transport: OTLP/HTTP on the
standard library's server, OTLP/gRPC on `grpcio` with the
`opentelemetry-proto` package's generated servicer. Both decode with
`opentelemetry-proto` (not llmesh's own encoder) and keep the spans."""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    resource: dict[str, Any]


class SpanStore:
    """What a collector received: the spans, the content types and headers
    of the exports, and the payloads it refused (to see retries)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.content_types: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.refused: list[bytes] = []
        # Hang: accept and never answer. Unavailable: answer "try later"
        # (HTTP 503, gRPC UNAVAILABLE).
        self.hang = False
        self.unavailable = False
        self._lock = threading.Lock()

    def refuse(self, body: bytes) -> None:
        with self._lock:
            self.refused.append(body)

    def receive(self, request: ExportTraceServiceRequest, content_type: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.content_types.append(content_type)
            self.headers.append(headers)
            for resource_spans in request.resource_spans:
                resource = {a.key: plain(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Span(
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_span_id=span.parent_span_id.hex(),
                                name=span.name,
                                kind=span.kind,
                                start_ns=span.start_time_unix_nano,
                                end_ns=span.end_time_unix_nano,
                                attributes={a.key: plain(a.value) for a in span.attributes},
                                events=[(e.name, {a.key: plain(a.value) for a in e.attributes}) for e in span.events],
                                status_code=span.status.code,
                                resource=resource,
                            )
                        )

    def trace(self, trace_id: str, count: int, timeout: float = 10) -> list[Span]:
        """The trace's spans, once at least `count` have arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [s for s in self.spans if s.trace_id == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{len(found)} of {count} spans of trace {trace_id} arrived")


class Collector(SpanStore):
    """OTLP/HTTP: `POST /v1/traces` on loopback."""

    protocol = "http/protobuf"

    def __init__(self) -> None:
        super().__init__()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if collector.hang:
                    time.sleep(30)
                    return
                if collector.unavailable:
                    collector.refuse(body)
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.receive(request, self.headers.get("content-type", ""), {k.lower(): v for k, v in self.headers.items()})
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A hung export the sidecar gave up on ends in a broken pipe: expected, not news.
        self.server.handle_error = lambda *_: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_ca(folder: Path) -> tuple[Path, bytes, bytes]:
    """A CA of its own (the file to trust) and a `localhost` certificate it
    signed (key and chain), made with the openssl command."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=llmesh test CA")
    openssl("req", *curve, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    (folder / "leaf.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "leaf.pem", "-days", "1", "-extfile", "leaf.ext")
    return folder / "ca.pem", (folder / "leaf.key").read_bytes(), (folder / "leaf.pem").read_bytes()


class GrpcCollector(SpanStore):
    """OTLP/gRPC: the `TraceService` on loopback, h2c, or TLS with a
    certificate for `localhost` when given its key and chain."""

    protocol = "grpc"

    def __init__(self, tls: tuple[bytes, bytes] | None = None) -> None:
        super().__init__()
        collector = self

        class Service(TraceServiceServicer):
            def Export(self, request: ExportTraceServiceRequest, context: grpc.ServicerContext) -> ExportTraceServiceResponse:  # noqa: N802
                metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                if collector.hang:
                    # Until the sidecar gives up on the call; what it sent is lost.
                    deadline = time.monotonic() + 30
                    while context.is_active() and time.monotonic() < deadline:
                        time.sleep(0.01)
                    return ExportTraceServiceResponse()
                if collector.unavailable:
                    collector.refuse(request.SerializeToString())
                    context.abort(grpc.StatusCode.UNAVAILABLE, "collector queue full: try later")
                # grpcio takes a call only as application/grpc (and keeps the
                # header out of the metadata).
                collector.receive(request, "application/grpc", metadata)
                return ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        add_TraceServiceServicer_to_server(Service(), self.server)
        if tls is None:
            port = self.server.add_insecure_port("127.0.0.1:0")
            self.url = f"http://127.0.0.1:{port}"
        else:
            port = self.server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([tls]))
            self.url = f"https://localhost:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=0).wait()
