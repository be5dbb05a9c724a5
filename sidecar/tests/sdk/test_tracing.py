"""OpenTelemetry traces as a platform team sees them: the sidecar joins the
app's trace, exports one span per request and one per upstream attempt to a
real OTLP collector (decoded with `opentelemetry-proto`; every test runs
once over OTLP/HTTP and once over OTLP/gRPC), passes `traceparent` on to
the upstream, and a collector that is dead, hanging or overloaded costs
requests nothing."""

from __future__ import annotations

import secrets
import statistics
import time
from typing import Iterator

import anthropic
import httpx
import openai
import pytest

from conftest import CLIENT_TIMEOUT_SECONDS, PROVIDERS, free_port, start, start_sidecar, wait_until_ready
from otlp_collector import Collector, GrpcCollector, SpanStore, make_ca

OPENAI = PROVIDERS["openai"]
ANTHROPIC = PROVIDERS["anthropic"]
FAILOVER = "traced-failover"
LOGGED = "traced-logged"
SERVER, CLIENT = 2, 3
COLLECTOR_TOKEN = "tenant%20shop"


def _doc(kind: str, name: str, **body) -> dict:
    api = "v1" if kind == "Secret" else "llmesh.io/v1alpha1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, **body}


def manifests(mock_url: str) -> list[dict]:
    documents = []
    for provider in (OPENAI, ANTHROPIC):
        documents.append(_doc("Secret", f"{provider.kind}-credentials", stringData=provider.secret))
        spec = {"provider": provider.kind, "secretRef": {"name": f"{provider.kind}-credentials"}, **provider.spec(mock_url)}
        documents.append(_doc("ProviderSecret", provider.kind, spec=spec))
    failover = {
        "targets": [{"provider": "openai", "model": OPENAI.model}],
        "retries": {"attempts": 2, "backoff": "1ms", "maxBackoff": "2ms"},
        "fallbacks": [{"target": {"provider": "anthropic", "model": ANTHROPIC.model}, "on": ["server-error"]}],
        "circuitBreaker": {"enabled": False},
    }
    logged = {"targets": [{"provider": "openai", "model": OPENAI.model}], "logContent": True}
    documents.append(_doc("LLMRoute", FAILOVER, spec=failover))
    documents.append(_doc("LLMRoute", LOGGED, spec=logged))
    return documents


class Traced:
    def __init__(self, url: str, admin_url: str, mock_url: str, collector: SpanStore) -> None:
        self.url, self.admin_url, self.mock_url, self.collector = url, admin_url, mock_url, collector

    def script(self, mock: str, behaviors: list) -> None:
        httpx.post(f"{self.mock_url}/_mock/{mock}/script", json=behaviors).raise_for_status()

    def calls(self, mock: str) -> list[dict]:
        return httpx.get(f"{self.mock_url}/_mock/{mock}/calls").json()["calls"]

    def metric(self, name: str, labels: str = "") -> float:
        text = httpx.get(f"{self.admin_url}/metrics").text
        line = next((l for l in text.splitlines() if l.startswith(name + labels)), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0


@pytest.fixture(scope="module", params=["http", "grpc", "grpc-tls"])
def traced(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    work = tmp_path_factory.mktemp("traced")
    trust = {}
    if request.param == "http":
        collector: SpanStore = Collector()
    elif request.param == "grpc":
        collector = GrpcCollector()
    else:
        ca, key, chain = make_ca(work)
        collector = GrpcCollector(tls=(key, chain))
        # The sidecar's roots, as for any upstream behind an internal CA.
        trust = {"SSL_CERT_FILE": str(ca)}
    mock_addr = f"127.0.0.1:{free_port()}"
    processes = [start("mock-upstream", ["--listen", mock_addr], work)]
    try:
        mock_url = f"http://{mock_addr}"
        wait_until_ready(processes[0], f"{mock_url}/_mock/openai/calls")
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": collector.protocol,
            "OTEL_EXPORTER_OTLP_HEADERS": f"x-collector-token={COLLECTOR_TOKEN}",
            "OTEL_SERVICE_NAME": "checkout-llmesh",
            "OTEL_BSP_SCHEDULE_DELAY": "20",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "300",
            **trust,
        }
        sidecar = start_sidecar(work, manifests(mock_url), env)
        processes.append(sidecar.process)
        yield Traced(sidecar.url, sidecar.admin_url, mock_url, collector)
    finally:
        for process in reversed(processes):
            process.stop()
        collector.stop()


def app_context() -> tuple[str, str, str]:
    """A trace id, the app's span id, and the `traceparent` naming them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def openai_client(traced: Traced, traceparent: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{traced.url}/v1",
        api_key="unused",
        max_retries=0,
        timeout=CLIENT_TIMEOUT_SECONDS,
        default_headers={"traceparent": traceparent, "tracestate": "shop=checkout"},
    )


def test_a_retry_and_a_fallback_are_sibling_spans_under_the_request_in_the_apps_trace(traced):
    trace_id, app_span, traceparent = app_context()
    traced.script("openai", [{"status": 500}, {"status": 500}])
    openai_before = len(traced.calls("openai"))
    anthropic_before = len(traced.calls("anthropic"))

    answer = openai_client(traced, traceparent).chat.completions.create(
        model=FAILOVER, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content

    spans = traced.collector.trace(trace_id, 4)
    (request,) = [s for s in spans if s.kind == SERVER]
    attempts = sorted((s for s in spans if s.kind == CLIENT), key=lambda s: s.start_ns)
    assert request.parent_span_id == app_span, "the request span is a child of the app's span"
    assert request.name == f"chat {FAILOVER}"
    assert request.resource["service.name"] == "checkout-llmesh"
    attrs = request.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == FAILOVER
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.response.model"] == ANTHROPIC.model
    assert attrs["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["llmesh.route"] == FAILOVER
    assert attrs["llmesh.attempts"] == 3 and attrs["llmesh.fallback_step"] == 1
    assert "error.type" not in attrs and request.status_code == 0

    assert [len(attempts), {s.parent_span_id for s in attempts}] == [3, {request.span_id}]
    failures = [(s.attributes["gen_ai.provider.name"], s.attributes.get("error.type")) for s in attempts]
    assert failures == [("openai", "server-error"), ("openai", "server-error"), ("anthropic", None)]
    assert [s.attributes["llmesh.try"] for s in attempts] == [1, 2, 1]
    assert [s.attributes["llmesh.fallback_step"] for s in attempts] == [0, 0, 1]
    assert [s.status_code for s in attempts] == [2, 2, 0]
    assert all(request.start_ns <= s.start_ns <= s.end_ns <= request.end_ns for s in attempts)

    # Each upstream call carried the traceparent of its own attempt span.
    upstream = traced.calls("openai")[openai_before:] + traced.calls("anthropic")[anthropic_before:]
    sent = [call["headers"]["traceparent"] for call in upstream]
    assert sent == [f"00-{trace_id}-{s.span_id}-01" for s in attempts]


def test_every_inbound_format_is_traced(traced):
    trace_ids = {}
    for api in ("messages", "responses"):
        trace_id, _, traceparent = app_context()
        trace_ids[api] = trace_id
        if api == "messages":
            claude = anthropic.Anthropic(
                base_url=traced.url, api_key="unused", max_retries=0, default_headers={"traceparent": traceparent}
            )
            claude.messages.create(model=LOGGED, max_tokens=20, messages=[{"role": "user", "content": "hi"}])
        else:
            openai_client(traced, traceparent).responses.create(model=LOGGED, input="hi")
    for api, trace_id in trace_ids.items():
        spans = traced.collector.trace(trace_id, 2)
        (request,) = [s for s in spans if s.kind == SERVER]
        assert request.attributes["llmesh.api"] == api
        assert request.attributes["gen_ai.usage.output_tokens"] > 0


def test_a_new_trace_starts_without_a_traceparent_and_content_events_are_redacted(traced):
    client = openai.OpenAI(base_url=f"{traced.url}/v1", api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=LOGGED, messages=[{"role": "user", "content": "my key is sk-proj-Abc123def456GHI789jkl012"}]
    )
    request_id = raw.headers["x-llmesh-request-id"]
    calls = traced.calls("openai")
    trace_id = calls[-1]["headers"]["traceparent"].split("-")[1]
    spans = traced.collector.trace(trace_id, 2)
    (request,) = [s for s in spans if s.kind == SERVER]
    assert request.parent_span_id == "", "a root span"
    assert request.attributes["llmesh.request_id"] == request_id
    events = dict(request.events)
    assert "sk-proj-Abc123def456GHI789jkl012" not in events["gen_ai.user.message"]["content"]
    assert "[OPENAI_KEY]" in events["gen_ai.user.message"]["content"]
    # The mock echoes the prompt: the answer passes the same redaction.
    answer = raw.parse().choices[0].message.content
    assert events["gen_ai.choice"]["content"] == answer.replace("sk-proj-Abc123def456GHI789jkl012", "[OPENAI_KEY]")


def test_exports_carry_the_protocols_content_type_and_the_configured_headers(traced):
    trace_id, _, traceparent = app_context()
    openai_client(traced, traceparent).chat.completions.create(model=LOGGED, messages=[{"role": "user", "content": "hi"}])
    traced.collector.trace(trace_id, 2)
    expected = {"http/protobuf": "application/x-protobuf", "grpc": "application/grpc"}[traced.collector.protocol]
    assert set(traced.collector.content_types) == {expected}
    assert {h.get("x-collector-token") for h in traced.collector.headers} == {"tenant shop"}


def median_latency(traced: Traced, count: int = 15) -> float:
    client = openai_client(traced, app_context()[2])
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.chat.completions.create(model=LOGGED, messages=[{"role": "user", "content": "hi"}])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_a_collector_that_says_try_later_gets_the_batch_again_and_requests_do_not_wait(traced, capsys):
    healthy = median_latency(traced)
    dropped_before = traced.metric("llmesh_trace_spans_dropped_total", '{reason="export-failed"}')

    traced.collector.unavailable = True
    overloaded = median_latency(traced)
    time.sleep(0.6)  # the last batch's tries, within the 300 ms export timeout
    traced.collector.unavailable = False

    with capsys.disabled():
        print(
            f"\n[{traced.collector.protocol} {traced.collector.url.split(':')[0]}] median request latency: collector healthy {healthy * 1000:.1f} ms, "
            f"answering UNAVAILABLE/503 {overloaded * 1000:.1f} ms"
        )
    assert overloaded < healthy + 0.1
    refused = list(traced.collector.refused)
    assert len(refused) > len(set(refused)), "a refused batch was sent again after the backoff"
    assert traced.metric("llmesh_trace_spans_dropped_total", '{reason="export-failed"}') > dropped_before
    # Taken again as soon as the collector is.
    trace_id, _, traceparent = app_context()
    openai_client(traced, traceparent).chat.completions.create(model=LOGGED, messages=[{"role": "user", "content": "hi"}])
    assert len(traced.collector.trace(trace_id, 2)) == 2


def test_a_hanging_or_stopped_collector_never_delays_a_request(traced, capsys):
    healthy = median_latency(traced)
    dropped_before = traced.metric("llmesh_trace_spans_dropped_total", '{reason="export-failed"}')

    traced.collector.hang = True
    hanging = median_latency(traced)
    time.sleep(0.5)  # past the 300 ms export timeout
    traced.collector.stop()
    stopped = median_latency(traced)
    time.sleep(0.3)

    with capsys.disabled():
        print(
            f"\n[{traced.collector.protocol} {traced.collector.url.split(':')[0]}] median request latency: collector healthy {healthy * 1000:.1f} ms, "
            f"hanging {hanging * 1000:.1f} ms, stopped {stopped * 1000:.1f} ms"
        )
    # Generous for a busy 2-core machine; an export on the request path would add 300 ms.
    assert hanging < healthy + 0.1 and stopped < healthy + 0.1
    assert traced.metric("llmesh_trace_spans_dropped_total", '{reason="export-failed"}') > dropped_before
    assert traced.metric("llmesh_trace_spans_exported_total") > 0
