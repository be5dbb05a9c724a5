"""The operator limited to some namespaces (the chart's
operator.watchNamespaces) asks the API server only about those: no
cluster-wide Secret, ConfigMap, pod or llmesh resource list or watch, which
is what lets the chart grant it namespaced Roles only. Checked on the
requests a real llmesh-operator sends to fake_apiserver.py."""

from __future__ import annotations

import re
import time

import pytest

from conftest import start_operator
from fake_apiserver import FakeApiServer, cluster

NAMESPACED = ("secrets", "configmaps", "pods", "llmroutes", "providersecrets", "virtualkeys", "budgets")
# A list or watch of a namespaced kind across all namespaces: `/api/v1/secrets?…`.
CLUSTER_WIDE = re.compile(rf"^GET /apis?(/[^/]+)?/v1(alpha1)?/({'|'.join(NAMESPACED)})(\?|$)")
IN_NAMESPACE = re.compile(rf"^GET /apis?(/[^/]+)?/v1(alpha1)?/namespaces/([^/]+)/({'|'.join(NAMESPACED)})(\?|$)")


def requests_of(tmp_path, env: dict[str, str]) -> list[str]:
    with FakeApiServer(cluster("llmesh-system", "team-a", "team-b", "other")) as api:
        operator, _, _ = start_operator(tmp_path, api, env)
        try:
            # Ready means it leads and every watch has listed; give the reconciles a moment.
            deadline = time.monotonic() + 20
            while not any("/namespaces/team-a/llmroutes" in r and "watch" not in r for r in api.requests):
                assert time.monotonic() < deadline, "team-a was never reconciled:\n" + "\n".join(api.requests)
                time.sleep(0.1)
            time.sleep(1)
        finally:
            operator.stop()
        return list(api.requests)


def test_a_limited_operator_reads_only_its_namespaces(tmp_path):
    requests = requests_of(tmp_path, {"LLMESH_WATCH_NAMESPACES": "team-a,team-b"})
    assert [r for r in requests if CLUSTER_WIDE.match(r)] == []
    # Lists and watches in the listed namespaces only (its own Secret and
    # Lease it reads by name).
    touched = {m.group(3) for r in requests if (m := IN_NAMESPACE.match(r))}
    assert touched == {"team-a", "team-b"}, touched


def test_an_unlimited_operator_watches_cluster_wide(tmp_path):
    requests = requests_of(tmp_path, {})
    kinds = {m.group(3) for r in requests if (m := CLUSTER_WIDE.match(r))}
    assert {"secrets", "configmaps", "pods", "llmroutes"} <= kinds, kinds
