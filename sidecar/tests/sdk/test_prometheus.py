"""A real Prometheus server scrapes a keyed sidecar and answers the queries
from docs/metrics.md with the numbers the traffic implies.

`scripts/test.sh` installs Debian's `prometheus`; without it this is skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Iterator

import httpx
import openai
import pytest

from conftest import CLIENT_TIMEOUT_SECONDS, Process, free_port, start_sidecar, wait_until_ready

PRICE = 1000.0  # USD per million input and output tokens: a few cents per answer
SCRAPE_SECONDS = 1
QUERY_TIMEOUT_SECONDS = 30


def _doc(kind: str, name: str, **body) -> dict:
    api = "v1" if kind == "Secret" else "llmesh.io/v1alpha1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, **body}


MANIFESTS = [
    _doc("ProviderSecret", "mock", spec={"provider": "mock"}),
    _doc(
        "LLMRoute",
        "smart",
        spec={"targets": [{"provider": "mock", "model": "m", "price": {"input": PRICE, "output": PRICE}}]},
    ),
    _doc(
        "LLMRoute",
        "cached",
        spec={"targets": [{"provider": "mock", "model": "m"}], "cache": {"mode": "exact", "ttl": "10m"}},
    ),
    _doc("Secret", "key-a", stringData={"key": "sk-a"}),
    _doc("VirtualKey", "key-a", spec={"team": "alpha", "secretRef": {"name": "key-a"}}),
    _doc("Secret", "key-b", stringData={"key": "sk-b"}),
    _doc("VirtualKey", "key-b", spec={"team": "beta", "secretRef": {"name": "key-b"}}),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (scripts/test.sh installs Debian's package)")
    work = tmp_path_factory.mktemp("prometheus")
    processes: list[Process] = []
    try:
        sidecar = start_sidecar(
            work, MANIFESTS, {"LLMESH_WORKLOAD_NAMESPACE": "shop", "LLMESH_WORKLOAD_NAME": "checkout"}
        )
        processes.append(sidecar.process)
        admin_addr = sidecar.admin_url.removeprefix("http://")

        prometheus_addr = f"127.0.0.1:{free_port()}"
        config = work / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {SCRAPE_SECONDS}s, evaluation_interval: {SCRAPE_SECONDS}s}}\n"
            f"scrape_configs:\n  - job_name: llmesh\n    static_configs: [{{targets: ['{admin_addr}']}}]\n"
        )
        popen_log = work / "prometheus.log"
        with popen_log.open("wb") as log:
            popen = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address={prometheus_addr}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        processes.append(Process("prometheus", popen, popen_log))
        wait_until_ready(processes[-1], f"http://{prometheus_addr}/-/ready")
        yield f"{sidecar.url}/v1", f"http://{prometheus_addr}"
    finally:
        for process in reversed(processes):
            process.stop()


def query(prometheus: str, promql: str) -> dict[str, float]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    return {
        ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
        for r in response.json()["data"]["result"]
    }


def wait_for(prometheus: str, promql: str, expected: dict[str, float]) -> dict[str, float]:
    deadline = time.monotonic() + QUERY_TIMEOUT_SECONDS
    got: dict[str, float] = {}
    while time.monotonic() < deadline:
        got = query(prometheus, promql)
        if got.keys() == expected.keys() and all(got[k] == pytest.approx(v, rel=1e-6) for k, v in expected.items()):
            return got
        time.sleep(SCRAPE_SECONDS / 2)
    raise AssertionError(f"{promql}: got {got}, expected {expected}")


def ask(url: str, key: str, model: str, prompt: str = "hello"):
    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}]
    )


def spend(url: str, key: str, times: int) -> float:
    return sum(float(ask(url, key, "smart").headers["x-llmesh-cost-usd"]) for _ in range(times))


def cache_results(url: str, prompts: list[str]) -> list[str]:
    return [ask(url, "sk-a", "cached", prompt).headers["x-llmesh-cache"] for prompt in prompts]


def test_prometheus_answers_the_documented_queries(stack):
    url, prometheus = stack
    # Series exist (and are scraped) before the measured traffic, so
    # increase() sees it as growth rather than as the series' first value.
    before = {"alpha": spend(url, "sk-a", 1), "beta": spend(url, "sk-b", 1)}
    wait_for(prometheus, "sum by (team) (llmesh_cost_usd_total)", {f"team={t}": c for t, c in before.items()})
    time.sleep(3 * SCRAPE_SECONDS)
    measured = {"alpha": spend(url, "sk-a", 3), "beta": spend(url, "sk-b", 1)}
    totals = {f"team={t}": before[t] + measured[t] for t in before}
    wait_for(prometheus, "sum by (team) (llmesh_cost_usd_total)", totals)
    time.sleep(3 * SCRAPE_SECONDS)

    # The documented "cost per team per day". increase() extrapolates a
    # little past the first and last samples, by design: allow for it.
    daily = query(prometheus, "sum by (team) (increase(llmesh_cost_usd_total[1d]))")
    assert daily.keys() == {"team=alpha", "team=beta"}
    for team, cost in measured.items():
        assert daily[f"team={team}"] == pytest.approx(cost, rel=0.35), (team, daily)

    by_workload = query(prometheus, "sum by (workload_namespace, workload_name) (llmesh_requests_total)")
    assert by_workload == {"workload_name=checkout,workload_namespace=shop": 6.0}
    by_team = query(prometheus, "sum by (team, status) (llmesh_requests_total)")
    assert by_team == {"status=200,team=alpha": 4.0, "status=200,team=beta": 2.0}


def test_prometheus_answers_the_cache_hit_ratio_query(stack):
    url, prometheus = stack
    documented = (
        'sum by (route) (rate(llmesh_cache_requests_total{result=~"hit|semantic-hit"}[5m]))\n'
        "  / sum by (route) (rate(llmesh_cache_requests_total[5m]))"
    )
    # Both series exist and are scraped before the measured traffic, so the
    # ratio compares growth within the window, not the series' first values.
    assert cache_results(url, ["warm", "warm"]) == ["miss", "hit"]
    wait_for(prometheus, "sum by (result) (llmesh_cache_requests_total)", {"result=hit": 1.0, "result=miss": 1.0})
    time.sleep(3 * SCRAPE_SECONDS)
    measured = cache_results(url, ["a", "a", "a", "a", "b", "b", "b", "b"])
    assert measured == ["miss", "hit", "hit", "hit"] * 2
    wait_for(prometheus, "sum by (result) (llmesh_cache_requests_total)", {"result=hit": 7.0, "result=miss": 3.0})
    time.sleep(3 * SCRAPE_SECONDS)
    # rate() extrapolates both series by the same factor when they share
    # their scrapes; the warm-up pair appearing a scrape apart can skew it a little.
    ratio = query(prometheus, documented)
    assert ratio.keys() == {"route=cached"}, ratio
    assert ratio["route=cached"] == pytest.approx(6 / 8, rel=0.1), ratio

    saved = query(prometheus, "sum by (route) (increase(llmesh_cache_saved_usd_total[1h]))")
    assert saved.keys() == {"route=cached"}, saved
