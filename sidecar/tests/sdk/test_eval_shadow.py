"""Eval sampling and shadow traffic as a platform team uses them: a share of
a route's real requests lands, redacted, in a JSON-lines file and at an HTTP
endpoint; a shadow candidate answers the same requests in the background,
paired by request id, without the app waiting or its breakers noticing."""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from conftest import CLIENT_TIMEOUT_SECONDS, PROVIDERS, free_port, start, start_sidecar, wait_until_ready
from otlp_collector import Collector
from test_tracing import _doc, app_context

OPENAI = PROVIDERS["openai"]
ANTHROPIC = PROVIDERS["anthropic"]
SAMPLED = "eval-ten-percent"
ALL = "eval-everything"
SHADOWED = "shadowed"
PLAIN = "not-shadowed"
CANDIDATE_DIRECT = "candidate-direct"
QUEUE, BATCH = 50, 10


def manifests(mock_url: str) -> list[dict]:
    documents = []
    for provider in (OPENAI, ANTHROPIC):
        documents.append(_doc("Secret", f"{provider.kind}-credentials", stringData=provider.secret))
        spec = {"provider": provider.kind, "secretRef": {"name": f"{provider.kind}-credentials"}, **provider.spec(mock_url)}
        documents.append(_doc("ProviderSecret", provider.kind, spec=spec))
    primary = [{"provider": "openai", "model": OPENAI.model}]
    candidate = {"provider": "anthropic", "model": ANTHROPIC.model}
    routes = {
        SAMPLED: {"targets": primary, "evalSampling": {"percent": 10}},
        ALL: {"targets": primary, "evalSampling": {"percent": 100}},
        SHADOWED: {"targets": primary, "mirror": {"target": candidate, "percent": 100}},
        PLAIN: {"targets": primary},
        CANDIDATE_DIRECT: {"targets": [candidate], "circuitBreaker": {"consecutiveFailures": 3}},
    }
    documents += [_doc("LLMRoute", alias, spec=spec) for alias, spec in routes.items()]
    return documents


def in_share(request_id: str, percent: float) -> bool:
    """The documented sampling rule, recomputed from the request id."""
    first = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big")
    return first % 10_000 < round(percent * 100)


class Receiver:
    """An HTTP eval endpoint on a fixed port, started when the test says so."""

    def __init__(self, port: int) -> None:
        self.port, self.lines, self.server = port, [], None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.lines += [json.loads(line) for line in body.decode().splitlines()]
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


class Sampled:
    def __init__(self, url, admin_url, mock_url, eval_file: Path, receiver: Receiver, collector: Collector):
        self.url, self.admin_url, self.mock_url = url, admin_url, mock_url
        self.eval_file, self.receiver, self.collector = eval_file, receiver, collector
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS)

    def ask(self, route: str, text: str = "hi", **headers) -> tuple[str, float]:
        started = time.perf_counter()
        raw = self.client.chat.completions.with_raw_response.create(
            model=route, messages=[{"role": "user", "content": text}], extra_headers=headers
        )
        raw.parse()
        return raw.headers["x-llmesh-request-id"], time.perf_counter() - started

    def records(self) -> list[dict]:
        if not self.eval_file.exists():
            return []
        return [json.loads(line) for line in self.eval_file.read_text().splitlines()]

    def wait_for(self, predicate, timeout: float = 15) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records()
            if predicate(records):
                return records
            time.sleep(0.05)
        raise AssertionError(f"eval file never matched; {len(self.records())} records")

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"{self.admin_url}/metrics").text
        return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name + labels))

    def script(self, mock: str, behaviors: list) -> None:
        httpx.post(f"{self.mock_url}/_mock/{mock}/script", json=behaviors).raise_for_status()


@pytest.fixture(scope="module")
def sampled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sampled]:
    work = tmp_path_factory.mktemp("eval")
    collector = Collector()
    # Reserved, then freed: the sink's endpoint is down until the test starts it.
    receiver = Receiver(free_port())
    mock_addr = f"127.0.0.1:{free_port()}"
    processes = [start("mock-upstream", ["--listen", mock_addr], work)]
    try:
        mock_url = f"http://{mock_addr}"
        wait_until_ready(processes[0], f"{mock_url}/_mock/openai/calls")
        eval_file = work / "eval.jsonl"
        env = {
            "LLMESH_EVAL_FILE": str(eval_file),
            "LLMESH_EVAL_URL": f"http://127.0.0.1:{receiver.port}/records",
            "LLMESH_EVAL_QUEUE": str(QUEUE),
            "LLMESH_EVAL_BATCH": str(BATCH),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "20",
        }
        sidecar = start_sidecar(work, manifests(mock_url), env)
        processes.append(sidecar.process)
        yield Sampled(sidecar.url, sidecar.admin_url, mock_url, eval_file, receiver, collector)
    finally:
        for process in reversed(processes):
            process.stop()
        receiver.stop()
        collector.stop()


def test_ten_percent_of_a_thousand_requests_are_sampled_by_request_id(sampled):
    ids = [sampled.ask(SAMPLED)[0] for _ in range(1000)]
    expected = {i for i in ids if in_share(i, 10)}
    records = sampled.wait_for(lambda rs: len([r for r in rs if r["route"] == SAMPLED]) >= len(expected))
    got = {r["request_id"] for r in records if r["route"] == SAMPLED}
    assert got == expected, "the sink holds exactly the requests the rule picks"
    # 10 % of 1,000 is 100 with a standard deviation under 10.
    assert 70 <= len(got) <= 130, len(got)


def test_a_record_is_complete_redacted_and_names_its_trace(sampled):
    trace_id, _, traceparent = app_context()
    request_id, _ = sampled.ask(ALL, "my key is sk-proj-Abc123def456GHI789jkl012 thanks", traceparent=traceparent)
    (record,) = [r for r in sampled.wait_for(lambda rs: any(r["request_id"] == request_id for r in rs)) if r["request_id"] == request_id]
    assert record["kind"] == "primary"
    assert record["trace_id"] == trace_id
    assert (record["route"], record["api"], record["provider"], record["model"]) == (ALL, "chat_completions", "openai", OPENAI.model)
    assert record["status"] == 200 and record["finish_reasons"] == ["stop"]
    assert record["input_tokens"] > 0 and record["output_tokens"] > 0 and record["cost_usd"] > 0
    assert record["latency_ms"] >= 0
    assert "sk-proj-Abc123def456GHI789jkl012" not in json.dumps(record)
    assert record["prompt"] == "my key is [OPENAI_KEY] thanks"
    assert "[OPENAI_KEY]" in record["answer"], "the mock echoes the prompt; the answer is redacted too"
    # The span says the same request.
    spans = sampled.collector.trace(trace_id, 2)
    assert any(s.attributes.get("llmesh.request_id") == request_id for s in spans)


def test_a_shadow_request_is_a_span_of_its_own_under_the_request_span(sampled):
    trace_id, app_span, traceparent = app_context()
    anthropic_before = len(httpx.get(f"{sampled.mock_url}/_mock/anthropic/calls").json()["calls"])
    request_id, _ = sampled.ask(SHADOWED, traceparent=traceparent)

    spans = sampled.collector.trace(trace_id, 3)
    (request,) = [s for s in spans if s.kind == 2]
    assert request.parent_span_id == app_span
    assert "llmesh.shadow" not in request.attributes
    (attempt,) = [s for s in spans if s.kind == 3 and not s.attributes.get("llmesh.shadow")]
    (shadow,) = [s for s in spans if s.attributes.get("llmesh.shadow") is True]
    assert shadow.kind == 3 and shadow.parent_span_id == request.span_id
    assert attempt.parent_span_id == request.span_id and attempt.attributes["gen_ai.provider.name"] == "openai"
    attrs = shadow.attributes
    assert (attrs["gen_ai.provider.name"], attrs["gen_ai.request.model"], attrs["llmesh.provider"]) == (
        "anthropic",
        ANTHROPIC.model,
        "anthropic",
    )
    assert attrs["llmesh.route"] == SHADOWED and attrs["llmesh.request_id"] == request_id
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["llmesh.cost_usd"] > 0 and "error.type" not in attrs and shadow.status_code == 0
    assert shadow.name == f"chat {ANTHROPIC.model}"
    # The shadow's own cost is on its span, as in its eval record.
    (record,) = [
        r
        for r in sampled.wait_for(lambda rs: any(r["request_id"] == request_id and r["kind"] == "shadow" for r in rs))
        if r["request_id"] == request_id and r["kind"] == "shadow"
    ]
    assert attrs["llmesh.cost_usd"] == pytest.approx(record["cost_usd"])
    # The candidate was called with the shadow span's traceparent.
    calls = httpx.get(f"{sampled.mock_url}/_mock/anthropic/calls").json()["calls"][anthropic_before:]
    assert [c["headers"]["traceparent"] for c in calls] == [f"00-{trace_id}-{shadow.span_id}-01"]


def test_a_failed_shadow_span_names_its_failure(sampled):
    sampled.script("anthropic", [{"status": 500}])
    trace_id, _, traceparent = app_context()
    sampled.ask(SHADOWED, traceparent=traceparent)
    spans = sampled.collector.trace(trace_id, 3)
    (shadow,) = [s for s in spans if s.attributes.get("llmesh.shadow") is True]
    assert shadow.attributes["error.type"] == "server-error" and shadow.status_code == 2
    assert "llmesh.cost_usd" not in shadow.attributes
    (request,) = [s for s in spans if s.kind == 2]
    assert "error.type" not in request.attributes, "the app's request did not fail"


def test_a_sink_that_is_down_loses_at_most_its_bounded_queue_and_counts_it(sampled):
    # Everything so far went to the file while the HTTP endpoint was down.
    assert sampled.metric("llmesh_eval_records_dropped_total", '{reason="queue-full",sink="file"}') == 0
    written_to_file = sampled.metric("llmesh_eval_records_written_total", '{sink="file"}')
    dropped = sampled.metric("llmesh_eval_records_dropped_total", '{reason="queue-full",sink="http"}')
    assert written_to_file > QUEUE + BATCH and dropped > 0
    sampled.receiver.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(sampled.receiver.lines) + dropped < written_to_file:
        time.sleep(0.1)
    kept = len(sampled.receiver.lines)
    assert kept + dropped == written_to_file, "every record was delivered or counted as dropped"
    assert 0 < kept <= QUEUE + BATCH + 1, "what was held while down: the queue and one batch"
    # Once up, records flow again.
    request_id, _ = sampled.ask(ALL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(r["request_id"] == request_id for r in sampled.receiver.lines):
        time.sleep(0.05)
    assert any(r["request_id"] == request_id for r in sampled.receiver.lines)


def test_a_slow_shadow_costs_the_app_no_latency_and_pairs_with_the_primary(sampled, capsys):
    rounds = 12
    sampled.script("anthropic", [{"delay-ms": 1500}] * rounds)
    plain = [sampled.ask(PLAIN)[1] for _ in range(rounds)]
    shadowed_ids, shadowed = zip(*(sampled.ask(SHADOWED) for _ in range(rounds)))
    with capsys.disabled():
        print(
            f"\nmedian app latency: no shadow {statistics.median(plain) * 1000:.1f} ms, "
            f"shadow target taking 1500 ms {statistics.median(shadowed) * 1000:.1f} ms"
        )
    assert statistics.median(shadowed) < statistics.median(plain) + 0.05
    assert max(shadowed) < 1.0, "no request waited for its shadow"

    records = sampled.wait_for(
        lambda rs: all(sum(r["request_id"] == i for r in rs) == 2 for i in shadowed_ids), timeout=30
    )
    for request_id in shadowed_ids:
        pair = {r["kind"]: r for r in records if r["request_id"] == request_id}
        assert set(pair) == {"primary", "shadow"}
        assert pair["primary"]["provider"] == "openai" and pair["shadow"]["provider"] == "anthropic"
        assert pair["shadow"]["model"] == ANTHROPIC.model and pair["shadow"]["latency_ms"] >= 1500
        assert pair["primary"]["cost_usd"] > 0 and pair["shadow"]["cost_usd"] > 0
        assert pair["shadow"]["prompt"] == pair["primary"]["prompt"]
        assert pair["shadow"]["answer"]
    # Spend is attributed apart: the route's cost counts only its primary.
    assert sampled.metric("llmesh_shadow_cost_usd_total", f'{{model="{ANTHROPIC.model}",provider="anthropic",route="{SHADOWED}"}}') > 0
    assert sampled.metric("llmesh_cost_usd_total", '{feature="",model="claude') == 0
    assert sampled.metric("llmesh_shadow_requests_total", f'{{result="ok",route="{SHADOWED}"}}') >= rounds


def test_shadow_failures_never_open_a_breaker(sampled):
    sampled.script("anthropic", [{"status": 500}] * 6)
    before = sampled.metric("llmesh_shadow_requests_total", f'{{result="error",route="{SHADOWED}"}}')
    for _ in range(6):
        sampled.ask(SHADOWED)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sampled.metric("llmesh_shadow_requests_total", f'{{result="error",route="{SHADOWED}"}}') < before + 6:
        time.sleep(0.05)
    assert sampled.metric("llmesh_shadow_requests_total", f'{{result="error",route="{SHADOWED}"}}') == before + 6
    # Six failures of the candidate, and a route that serves from it with a
    # three-failure breaker still finds it closed and answering.
    targets = httpx.get(f"{sampled.admin_url}/debug/targets").json()
    candidate = [t for t in targets if t["provider"] == "anthropic"]
    assert candidate and all(t["breaker"] == "closed" for t in candidate), candidate
    assert all(t["consecutive_failures"] == 0 and t["last_failure"] is None for t in candidate), candidate
    sampled.ask(CANDIDATE_DIRECT)
