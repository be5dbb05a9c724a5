"""Every query of the dashboards and of the alert rules, run by a real
Prometheus (Debian's package, on loopback) that scrapes a real sidecar and
a real operator after they served traffic covering every panel: each one
parses and returns at least one series with a number.

The sidecar runs standalone from manifests; the operator runs against
fake_apiserver.py (it wins its Lease, reconciles two namespaces, one of
which fails, and answers admission reviews on its webhook).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from conftest import CHART, MODES, find, render, sdk, start_operator
from fake_apiserver import FakeApiServer, cluster

SCRAPE_SECONDS = 1
PRICE = {"input": 1000.0, "output": 1000.0}
# Grafana's own variables, as a panel would have them over the last 10 minutes.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "10m"}
TEMPLATE_VARIABLES = ("$namespace", "$workload", "$route", "$team")


def doc(kind: str, name: str, **body) -> dict:
    api = "v1" if kind == "Secret" else "llmesh.io/v1alpha1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, **body}


def target(provider: str, model: str) -> dict:
    return {"provider": provider, "model": model, "price": PRICE}


MANIFESTS = [
    doc("ProviderSecret", "mock", spec={"provider": "mock"}),
    doc("ProviderSecret", "failing", spec={"provider": "mock", "mock": {"faults": [{"kind": "status", "status": 500}]}}),
    doc("LLMRoute", "smart", spec={"targets": [target("mock", "m")]}),
    doc("LLMRoute", "cached", spec={"targets": [target("mock", "m")], "cache": {"mode": "exact", "ttl": "10m"}}),
    # Every request: two failed attempts (a retry), then the fallback; the breaker opens.
    doc("LLMRoute", "resilient", spec={
        "targets": [target("failing", "f")],
        "retries": {"attempts": 2, "backoff": "10ms"},
        "fallbacks": [{"target": target("mock", "m"), "on": ["server-error"]}],
        "circuitBreaker": {"consecutiveFailures": 2, "cooldown": "10m"},
    }),
    doc("LLMRoute", "doomed", spec={"targets": [target("failing", "f")], "circuitBreaker": {"enabled": False}}),
    doc("Budget", "beta-daily", spec={
        "limitUsd": 0.001, "period": "daily", "thresholds": [50, 100], "action": "block", "maxTokensPerRequest": 200,
    }),
    doc("Secret", "key-a", stringData={"key": "sk-a"}),
    doc("VirtualKey", "key-a", spec={"team": "alpha", "feature": "chat", "secretRef": {"name": "key-a"}}),
    doc("Secret", "key-b", stringData={"key": "sk-b"}),
    doc("VirtualKey", "key-b", spec={
        "team": "beta", "feature": "search", "budget": "beta-daily", "secretRef": {"name": "key-b"},
    }),
    doc("Secret", "key-c", stringData={"key": "sk-c"}),
    doc("VirtualKey", "key-c", spec={"team": "gamma", "secretRef": {"name": "key-c"}, "rateLimits": {"requestsPerMinute": 2}}),
]


def in_namespace(document: dict, namespace: str) -> dict:
    return {**document, "metadata": {**document["metadata"], "namespace": namespace}}


# The operator reconciles `shop` (a provider and a route: resources to count)
# and fails to read `broken`.
CLUSTER = cluster("llmesh-system", "shop", "broken") + [
    in_namespace(doc("ProviderSecret", "mock", spec={"provider": "mock"}), "shop"),
    in_namespace(doc("LLMRoute", "smart", spec={"targets": [{"provider": "mock", "model": "m"}]}), "shop"),
]


def admission_review(uid: str) -> dict:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"generateName": "chat-", "namespace": "shop", "annotations": {"llmesh.io/inject": "enabled"}},
           "spec": {"containers": [{"name": "app", "image": "example/chat:1"}]}}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "resource": {"group": "", "version": "v1", "resource": "pods"},
                        "namespace": "shop", "operation": "CREATE", "object": pod,
                        "userInfo": {"username": "test"}}}


def start_prometheus(work: Path, targets: dict[str, tuple[str, dict]]) -> tuple[sdk.Process, str]:
    address = f"127.0.0.1:{sdk.free_port()}"
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs: [{{targets: ['{addr}'], labels: {json.dumps(labels)}}}]\n"
        for job, (addr, labels) in targets.items()
    )
    config = work / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {SCRAPE_SECONDS}s, evaluation_interval: {SCRAPE_SECONDS}s}}\n"
        f"scrape_configs:\n{jobs}"
    )
    log = work / "prometheus.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [shutil.which("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address={address}"],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    process = sdk.Process("prometheus", popen, log)
    sdk.wait_until_ready(process, f"http://{address}/-/ready")
    return process, f"http://{address}"


def traffic(url: str, webhook: str, round_number: int) -> None:
    """One round of requests that moves every metric a panel or alert reads."""

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=sdk.CLIENT_TIMEOUT_SECONDS)

    def ask(key: str, model: str, **extra) -> int:
        try:
            client(key).chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], **extra)
            return 200
        except openai.APIStatusError as error:
            return error.status_code

    alpha, beta, gamma = "sk-a", "sk-b", "sk-c"
    assert [ask(alpha, "smart") for _ in range(3)] == [200] * 3
    assert ask(alpha, "cached") == 200 and ask(alpha, "cached") == 200  # a miss then a hit (round 1), hits after
    assert [ask(alpha, "resilient") for _ in range(3)] == [200] * 3  # served by the fallback
    assert ask(alpha, "doomed") == 502
    assert ask(alpha, "no-such-route") == 404
    stream = client(alpha).chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "hello"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    # Team beta: its first request spends the budget; then a request over
    # the token ceiling, and one that finds the budget exhausted.
    beta_statuses = [ask(beta, "smart"), ask(beta, "smart", max_tokens=1000), ask(beta, "smart")]
    assert beta_statuses[1:] == [400, 429] and beta_statuses[0] == (200 if round_number == 0 else 429), beta_statuses
    # Team gamma: two requests a minute, then 429.
    assert [ask(gamma, "smart") for _ in range(3)][-1] == 429
    for number in range(3):
        answer = httpx.post(f"{webhook}/mutate-pods", json=admission_review(f"{round_number}-{number}"),
                            verify=False, timeout=10)
        assert answer.status_code == 200 and answer.json()["response"]["allowed"], answer.text


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (scripts/test.sh installs Debian's package)")
    work = tmp_path_factory.mktemp("queries")
    manifests = work / "manifests"
    manifests.mkdir()
    (manifests / "m.yaml").write_text("".join(f"---\n{json.dumps(d)}\n" for d in MANIFESTS))
    api_addr, admin_addr = f"127.0.0.1:{sdk.free_port()}", f"127.0.0.1:{sdk.free_port()}"
    processes: list[sdk.Process] = []
    with FakeApiServer(CLUSTER, failing={("broken", "llmroutes")}) as api:
        try:
            sidecar = sdk.start(
                "llmesh-sidecar", ["--manifests", str(manifests), "--listen", api_addr, "--admin-listen", admin_addr],
                work, {"LLMESH_WORKLOAD_NAMESPACE": "shop", "LLMESH_WORKLOAD_NAME": "checkout"},
            )
            processes.append(sidecar)
            sdk.wait_until_ready(sidecar, f"http://{admin_addr}/readyz")
            operator, operator_admin, webhook = start_operator(work, api)
            processes.append(operator)
            server, prometheus_url = start_prometheus(work, {
                # The labels the PodMonitor's Kubernetes discovery would add.
                "llmesh-sidecars": (admin_addr, {"namespace": "shop", "pod": "checkout-7d9f-abcde"}),
                "llmesh-operator": (operator_admin, {"namespace": "llmesh-system", "pod": "llmesh-operator-0"}),
            })
            processes.append(server)
            url = f"http://{api_addr}/v1"
            # Prometheus must have scraped both before the first round, or
            # the first sample already holds all the traffic and no rate grows.
            deadline = time.monotonic() + 60
            while len(query(prometheus_url, "up == 1")) < 2:
                assert time.monotonic() < deadline, "Prometheus never scraped the sidecar and the operator"
                time.sleep(SCRAPE_SECONDS / 2)
            time.sleep(SCRAPE_SECONDS)
            # Two rounds a few scrapes apart, so every rate has growth in its window.
            for round_number in range(2):
                traffic(url, webhook, round_number)
                time.sleep(4 * SCRAPE_SECONDS)
            # A manifest that does not parse: the sidecar rejects it and keeps serving.
            (manifests / "broken.yaml").write_text("kind: LLMRoute\nspec: [unclosed\n")
            deadline = time.monotonic() + 30
            while not query(prometheus_url, 'llmesh_config_reloads_total{result="rejected"}'):
                assert time.monotonic() < deadline, "the broken manifest was never rejected"
                time.sleep(SCRAPE_SECONDS)
            time.sleep(2 * SCRAPE_SECONDS)
            # Every query is evaluated at this instant, as a dashboard opened
            # right after the traffic would be: the rate windows (1m) must
            # not slide past the traffic while the ~130 tests run.
            EVALUATED_AT.append(time.time())
            yield prometheus_url
        finally:
            for process in reversed(processes):
                process.stop()


EVALUATED_AT: list[float] = []


def query(prometheus: str, promql: str) -> list[dict]:
    params = {"query": promql}
    if EVALUATED_AT:
        params["time"] = f"{EVALUATED_AT[-1]:.3f}"
    response = httpx.get(f"{prometheus}/api/v1/query", params=params, timeout=10)
    assert response.status_code == 200, f"{promql}\n{response.text}"
    return response.json()["data"]["result"]


def as_run(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    for variable in TEMPLATE_VARIABLES:
        expr = expr.replace(variable, ".*")
    assert "$" not in expr, expr
    return expr


def has_a_number(result: list[dict]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def panel_queries() -> list[tuple[str, str, str]]:
    return [
        (f"{path.stem}: {panel['title']} [{target['refId']}]", target["expr"], target["legendFormat"])
        for path in sorted((CHART / "dashboards").glob("*.json"))
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]


def alert_rules() -> list[tuple[str, str]]:
    spec = find(render(MODES["monitoring-on"]), "PrometheusRule")["spec"]
    return [(rule["alert"], rule["expr"]) for group in spec["groups"] for rule in group["rules"]]


@pytest.mark.parametrize(("panel", "expr", "legend"), panel_queries(), ids=[p for p, _, _ in panel_queries()])
def test_every_dashboard_query_returns_data(prometheus, panel, expr, legend):
    result = query(prometheus, as_run(expr))
    assert result, f"{panel}: no series for\n{as_run(expr)}"
    assert has_a_number(result), f"{panel}: only NaN for\n{as_run(expr)}\n{result}"
    # The legend names labels the series have (a misspelt `by (...)` label would not).
    for label in re.findall(r"{{(\w+)}}", legend):
        assert any(label in series["metric"] for series in result), f"{panel}: no series has `{label}`: {result}"


@pytest.mark.parametrize(("alert", "expr"), alert_rules(), ids=[a for a, _ in alert_rules()])
def test_every_alert_condition_is_evaluated_on_real_series(prometheus, alert, expr):
    # `> 0.05` becomes `> bool 0.05`: every series the condition compares
    # is returned (1 firing, 0 not), so a misspelt metric or label shows.
    condition, replaced = re.subn(r"(>=|<=|==|!=|>|<)\s*([0-9.e+-]+)\s*$", r"\1 bool \2", expr.strip())
    assert replaced == 1, f"{alert}: the expression must end in a comparison with a number"
    result = query(prometheus, condition)
    assert result, f"{alert}: no series for\n{condition}"
    assert has_a_number(result), result


def test_every_template_variable_has_values(prometheus):
    board = json.loads((CHART / "dashboards" / "llmesh-cost.json").read_text())
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]["query"]).groups()
        response = httpx.get(f"{prometheus}/api/v1/label/{label}/values",
                             params={"match[]": as_run(selector)}, timeout=10)
        assert response.status_code == 200 and response.json()["data"], (variable["name"], response.text)
