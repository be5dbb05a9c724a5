"""A small Kubernetes API server on loopback, enough for llmesh-operator to
start, win its Lease, serve its webhook and reconcile: /version, typed
lists (from an in-memory store), watches that stay open and idle, and
create/replace/patch that store what they are sent. A test fixture, not a
Kubernetes: no validation, no resource versions, no watch events.

`failing` names (namespace, resource) pairs whose lists answer 500, so a
reconcile fails the way an unreachable API server makes it fail.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": reason, "message": message, "code": code}


def merge(base: dict, patch: dict) -> dict:
    merged = dict(base)
    for key, value in patch.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


class FakeApiServer:
    def __init__(self, objects: list[dict], failing: set[tuple[str, str]] = frozenset()):
        self.store: dict[tuple, dict] = {}
        self.failing = set(failing)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.requests: list[str] = []
        for obj in objects:
            self.put(obj)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeApiServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self) -> str:
        return json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        })

    @staticmethod
    def plural(kind: str) -> str:
        return {"Namespace": "namespaces", "MutatingWebhookConfiguration": "mutatingwebhookconfigurations"}.get(
            kind, kind.lower() + "s")

    def put(self, obj: dict) -> None:
        meta = obj["metadata"]
        key = (self.plural(obj["kind"]), meta.get("namespace"), meta["name"])
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("uid", f"uid-{'-'.join(str(k) for k in key)}")
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        with self.lock:
            self.store[key] = obj

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def route(self) -> tuple[str, str | None, str | None, dict]:
                """(resource, namespace, name, query) of a resource path."""
                parts = urlsplit(self.path)
                segments = [s for s in parts.path.split("/") if s]
                segments = segments[2:] if segments[0] == "api" else segments[3:]
                namespace = name = None
                if segments[0] == "namespaces" and len(segments) >= 3:
                    namespace, segments = segments[1], segments[2:]
                resource = segments[0]
                if len(segments) >= 2:
                    name = segments[1]
                return resource, namespace, name, parse_qs(parts.query)

            def body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                server.requests.append(f"GET {self.path}")
                if path == "/version":
                    return self.reply(200, VERSION)
                if path in ("/api", "/apis"):
                    return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]} if path == "/api"
                                      else {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
                resource, namespace, name, query = self.route()
                if query.get("watch", ["false"])[0] in ("true", "1"):
                    return self.idle_watch()
                if name is not None:
                    with server.lock:
                        found = server.store.get((resource, namespace, name))
                    if found is None:
                        return self.reply(404, status(404, "NotFound", f"{resource} {name} not found"))
                    return self.reply(200, found)
                if (namespace, resource) in server.failing:
                    return self.reply(500, status(500, "InternalError", "the fake API server fails this list"))
                with server.lock:
                    items = [o for (r, ns, _), o in sorted(server.store.items(), key=lambda kv: str(kv[0]))
                             if r == resource and (namespace is None or ns == namespace)]
                if "as=PartialObjectMetadataList" in (self.headers.get("Accept") or ""):
                    items = [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]}
                             for o in items]
                    return self.reply(200, {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                                            "metadata": {"resourceVersion": "1"}, "items": items})
                return self.reply(200, {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"},
                                        "items": items})

            def idle_watch(self) -> None:
                """A watch with nothing to report: open until it times out or the server stops."""
                _, _, _, query = self.route()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                server.stopping.wait(float(query.get("timeoutSeconds", ["290"])[0]))
                try:
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass
                self.close_connection = True

            def store_body(self, code: int) -> None:
                resource, namespace, name, _ = self.route()
                obj = self.body()
                obj.setdefault("metadata", {})
                if namespace is not None:
                    obj["metadata"]["namespace"] = namespace
                key = (resource, namespace, obj["metadata"].get("name") or name)
                obj["metadata"]["name"] = key[2]
                with server.lock:
                    server.store[key] = obj
                obj["metadata"].setdefault("resourceVersion", "1")
                self.reply(code, obj)

            def do_POST(self) -> None:
                server.requests.append(f"POST {self.path}")
                self.store_body(201)

            def do_PUT(self) -> None:
                server.requests.append(f"PUT {self.path}")
                self.store_body(200)

            def do_PATCH(self) -> None:
                server.requests.append(f"PATCH {self.path}")
                resource, namespace, name, _ = self.route()
                patch = self.body()
                with server.lock:
                    current = server.store.get((resource, namespace, name))
                    if isinstance(patch, dict):  # apply or merge patch; a JSON patch leaves the object as it is
                        current = merge(current or {}, patch)
                        current.setdefault("metadata", {}).update(
                            {"name": name, **({"namespace": namespace} if namespace else {})})
                        server.store[(resource, namespace, name)] = current
                if current is None:
                    return self.reply(404, status(404, "NotFound", f"{resource} {name} not found"))
                self.reply(200, current)

        return Handler


def cluster(*namespaces: str) -> list[dict]:
    """A cluster's worth of objects: these Namespaces and llmesh's webhook registration."""
    objects: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}}
        for name in namespaces
    ]
    objects.append({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "llmesh-sidecar-injector"},
        "webhooks": [{"name": "sidecar-injector.llmesh.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                      "clientConfig": {"service": {"name": "llmesh-webhook", "namespace": "llmesh-system",
                                                   "path": "/mutate-pods", "port": 443}}}],
    })
    return objects
