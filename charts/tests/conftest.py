"""Renders charts/llmesh with the real Helm engine (helm-python-sdk) for the
chart tests, and finds the binaries the live tests run.

The process helpers (start, wait, free ports) are the SDK tests' own:
sidecar/tests/sdk/conftest.py, loaded under another module name.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import helm_python
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llmesh"
RELEASE = "llmesh"
NAMESPACE = "llmesh-system"
# The oldest and newest Kubernetes versions the chart supports (Chart.yaml's kubeVersion).
KUBE_VERSIONS = ["1.29.0", "1.37.0"]

# Each non-default way to install the chart, as the values that select it.
MODES: dict[str, dict] = {
    "default": {},
    "cert-manager": {"webhook": {"certificates": "cert-manager"}},
    "cert-manager-own-issuer": {
        "webhook": {"certificates": "cert-manager", "certManager": {"issuerName": "corp-ca", "issuerKind": "ClusterIssuer"}}
    },
    "monitoring-on": {"monitoring": {"skipApiCheck": True}},
    "monitoring-off": {
        "monitoring": {
            "skipApiCheck": True,
            "podMonitor": {"enabled": False},
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
        },
        "grafana": {"dashboards": {"enabled": False}},
    },
    "ha-off": {"operator": {"replicas": 1, "leaderElection": False}},
    "namespace-limited": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
}

_sdk_spec = importlib.util.spec_from_file_location("sdk_conftest", REPO / "sidecar" / "tests" / "sdk" / "conftest.py")
assert _sdk_spec is not None and _sdk_spec.loader is not None
sdk = importlib.util.module_from_spec(_sdk_spec)
sys.modules["sdk_conftest"] = sdk
_sdk_spec.loader.exec_module(sdk)

BINARIES = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug"


def render(values: dict) -> list[dict]:
    """Every object the chart renders with `values` (NOTES.txt and empty documents left out)."""
    chart = helm_python.Chart.load(str(CHART))
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def chart_crds() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted((CHART / "crds").glob("*.yaml"))}


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def binary(name: str) -> Path:
    path = BINARIES / name
    if not path.exists():
        pytest.exit(f"{path} is missing: run `cargo build -p llmesh-operator -p llmesh-sidecar --bins` first", returncode=2)
    return path


def start_operator(work: Path, api, env: dict[str, str] | None = None) -> tuple["sdk.Process", str, str]:
    """Starts llmesh-operator against `api` (a FakeApiServer); returns it, its admin address and webhook URL."""
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(api.kubeconfig())
    admin, webhook = f"127.0.0.1:{sdk.free_port()}", f"127.0.0.1:{sdk.free_port()}"
    log = work / "operator.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [binary("llmesh-operator"), "--admin-addr", admin, "--webhook-addr", webhook],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": "llmesh-system", "POD_NAME": "llmesh-operator-0",
                 "LLMESH_LOG": "info", "PATH": "/usr/bin:/bin", **(env or {})},
        )
    process = sdk.Process("llmesh-operator", popen, log)
    sdk.wait_until_ready(process, f"http://{admin}/readyz")
    return process, admin, f"https://{webhook}"
