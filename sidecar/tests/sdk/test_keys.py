"""Virtual keys, rate limits, cost and budgets as the OpenAI SDK sees them,
against a sidecar of their own (the shared one takes no keys)."""

from __future__ import annotations

import json
import time
from typing import Iterator

import anthropic
import openai
import pytest

from conftest import CLIENT_TIMEOUT_SECONDS, Process, start_sidecar

PROMPT = [{"role": "user", "content": "What does this cost?"}]

# Priced from the built-in table (the mock answers as gpt-4o-mini) and by a
# target's own price; USD per million tokens.
TABLE_PRICE = (0.15, 0.6)
OWN_PRICE = (1000.0, 1000.0)


def _doc(kind: str, name: str, **body) -> dict:
    api = "v1" if kind == "Secret" else "llmesh.io/v1alpha1"
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, **body}


def _key(name: str, secret: str, **spec) -> list[dict]:
    return [_doc("Secret", name, stringData={"key": secret}), _doc("VirtualKey", name, spec=spec)]


MANIFESTS = [
    _doc("ProviderSecret", "mock", spec={"provider": "mock"}),
    _doc("LLMRoute", "table", spec={"targets": [{"provider": "mock", "model": "gpt-4o-mini"}]}),
    _doc(
        "LLMRoute",
        "own",
        spec={"targets": [{"provider": "mock", "model": "x", "price": {"input": OWN_PRICE[0], "output": OWN_PRICE[1]}}]},
    ),
    _doc(
        "LLMRoute",
        "logged",
        spec={"targets": [{"provider": "mock", "model": "gpt-4o-mini"}], "logContent": True},
    ),
    *_key("team", "sk-team", team="a"),
    *_key("off", "sk-off", disabled=True),
    *_key("old", "sk-old", expiresAt="2020-01-01T00:00:00Z"),
    *_key("narrow", "sk-narrow", allowedRoutes=["table"]),
    *_key("rpm", "sk-rpm", rateLimits={"requestsPerMinute": 2}),
    *_key("tpm", "sk-tpm", rateLimits={"tokensPerMinute": 50}),
    *_key("blocked", "sk-blocked", budget="tiny"),
    *_key("downgraded", "sk-downgraded", budget="tiny-downgrade"),
    *_key("alerted", "sk-alerted", budget="tiny-alert"),
    *_key("agent", "sk-agent", budget="agents"),
    *_key("blocked-sdk", "sk-blocked-sdk", budget="tiny-sdk"),
    _doc("Budget", "tiny", spec={"limitUsd": 0.0001, "period": "monthly", "timeZone": "America/New_York"}),
    _doc("Budget", "tiny-downgrade", spec={"limitUsd": 0.0001, "action": "downgrade", "downgradeTo": "table"}),
    _doc("Budget", "tiny-alert", spec={"limitUsd": 0.0001, "action": "alert"}),
    _doc("Budget", "agents", spec={"limitUsd": 100, "maxTokensPerSession": 40}),
    _doc("Budget", "tiny-sdk", spec={"limitUsd": 0.0001, "period": "monthly"}),
]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Process]]:
    work = tmp_path_factory.mktemp("keys")
    sidecar = start_sidecar(work, MANIFESTS, {"LLMESH_STATE_FILE": str(work / "state.json")})
    try:
        yield f"{sidecar.url}/v1", sidecar.process
    finally:
        sidecar.process.stop()


@pytest.fixture
def keyed_url(keyed) -> str:
    return keyed[0]


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_SECONDS)


def ask(url: str, key: str, model: str = "table", **extra):
    return client(url, key).chat.completions.with_raw_response.create(model=model, messages=PROMPT, **extra)


def expected_cost(price: tuple[float, float], usage) -> float:
    return (usage.prompt_tokens * price[0] + usage.completion_tokens * price[1]) / 1e6


def test_a_valid_key_is_served(keyed_url):
    raw = ask(keyed_url, "sk-team")
    assert raw.parse().choices[0].message.content


@pytest.mark.parametrize(
    ("key", "code"),
    [("sk-wrong", "invalid_api_key"), ("sk-off", "key_disabled"), ("sk-old", "key_expired")],
)
def test_invalid_disabled_and_expired_keys_are_refused(keyed_url, key, code):
    with pytest.raises(openai.AuthenticationError) as raised:
        ask(keyed_url, key)
    assert raised.value.status_code == 401
    assert raised.value.code == code


def test_a_route_outside_the_allowlist_is_forbidden_by_name(keyed_url):
    assert ask(keyed_url, "sk-narrow", "table").parse().choices
    with pytest.raises(openai.PermissionDeniedError) as raised:
        ask(keyed_url, "sk-narrow", "own")
    assert "route own" in raised.value.message


def test_requests_per_minute_headers_and_429(keyed_url):
    remaining = [ask(keyed_url, "sk-rpm").headers["x-ratelimit-remaining-requests"] for _ in range(2)]
    assert remaining == ["1", "0"]
    with pytest.raises(openai.RateLimitError) as raised:
        ask(keyed_url, "sk-rpm")
    assert int(raised.value.response.headers["retry-after"]) >= 1
    assert raised.value.response.headers["x-ratelimit-limit-requests"] == "2"


def test_tokens_per_minute_refuse_a_request_that_does_not_fit(keyed_url):
    raw = ask(keyed_url, "sk-tpm", max_tokens=10)
    assert raw.headers["x-ratelimit-limit-tokens"] == "50"
    with pytest.raises(openai.RateLimitError) as raised:
        ask(keyed_url, "sk-tpm", max_tokens=49)
    assert raised.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize(("model", "price"), [("table", TABLE_PRICE), ("own", OWN_PRICE)])
def test_the_cost_header_is_the_price_applied_to_the_usage(keyed_url, model, price):
    raw = ask(keyed_url, "sk-team", model)
    usage = raw.parse().usage
    assert float(raw.headers["x-llmesh-cost-usd"]) == pytest.approx(expected_cost(price, usage), rel=1e-6)


def test_a_stream_reports_its_cost_after_the_usage(keyed_url):
    with client(keyed_url, "sk-team").chat.completions.with_streaming_response.create(
        model="own", messages=PROMPT, stream=True, stream_options={"include_usage": True}
    ) as response:
        lines = list(response.iter_lines())
    usage = next(json.loads(l[6:])["usage"] for l in lines if l.startswith("data: {") and '"usage":{' in l)
    cost = next(float(l.split()[-1]) for l in lines if l.startswith(": x-llmesh-cost-usd"))
    expected = (usage["prompt_tokens"] * OWN_PRICE[0] + usage["completion_tokens"] * OWN_PRICE[1]) / 1e6
    assert cost == pytest.approx(expected, rel=1e-6)


def test_an_exhausted_budget_blocks_downgrades_or_alerts(keyed_url):
    for key in ("sk-blocked", "sk-downgraded", "sk-alerted"):
        ask(keyed_url, key, "own")
    with pytest.raises(openai.RateLimitError) as raised:
        ask(keyed_url, "sk-blocked", "own")
    assert raised.value.code == "budget_exceeded"
    assert "budget tiny" in raised.value.message
    assert ask(keyed_url, "sk-downgraded", "own").headers["x-llmesh-route"] == "table"
    assert ask(keyed_url, "sk-alerted", "own").headers["x-llmesh-route"] == "own"


def test_a_budget_block_reaches_each_sdk_in_its_own_error_shape(keyed_url):
    # One answer at the route's own price spends far past the limit.
    ask(keyed_url, "sk-blocked-sdk", "own")
    claude = anthropic.Anthropic(
        base_url=keyed_url.removesuffix("/v1"),
        api_key="sk-blocked-sdk",
        max_retries=0,
        timeout=CLIENT_TIMEOUT_SECONDS,
    )
    with pytest.raises(anthropic.RateLimitError) as raised:
        claude.messages.create(model="own", max_tokens=16, messages=PROMPT)
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert "budget tiny-sdk is exhausted" in raised.value.body["error"]["message"]
    assert int(raised.value.response.headers["retry-after"]) >= 1
    # A stream is refused the same way, before its first event.
    with pytest.raises(anthropic.RateLimitError):
        with claude.messages.stream(model="own", max_tokens=16, messages=PROMPT) as stream:
            for _ in stream:
                pass
    responses = client(keyed_url, "sk-blocked-sdk").responses
    with pytest.raises(openai.RateLimitError) as raised:
        responses.create(model="own", input="What does this cost?")
    assert raised.value.code == "budget_exceeded"
    assert raised.value.body["type"] == "budget_error"
    assert "budget tiny-sdk" in raised.value.message
    with pytest.raises(openai.RateLimitError) as raised:
        with responses.stream(model="own", input="What does this cost?") as stream:
            for _ in stream:
                pass
    assert raised.value.code == "budget_exceeded"


def test_a_session_ceiling_stops_an_agent_loop(keyed_url):
    session = {"x-llmesh-session-id": "loop-1"}
    turns = 0
    with pytest.raises(openai.RateLimitError) as raised:
        while turns < 50:
            client(keyed_url, "sk-agent").chat.completions.create(
                model="table", messages=PROMPT, extra_headers=session
            )
            turns += 1
    assert turns >= 1
    assert raised.value.code == "session_token_ceiling"
    assert "loop-1" in raised.value.message


def access_lines(process: Process, since: int) -> list[dict]:
    lines = [json.loads(l) for l in process.log_text(since).splitlines() if l.startswith("{")]
    return [l for l in lines if l.get("target") == "llmesh::access"]


def test_only_routes_that_opt_in_log_content_and_it_is_redacted(keyed):
    url, process = keyed
    since = process.log_size()
    secret_prompt = [{"role": "user", "content": "my key is sk-live-0123456789abcdef please"}]
    ids = set()
    raw = client(url, "sk-team").chat.completions.with_raw_response.create(model="logged", messages=secret_prompt)
    ids.add(raw.headers["x-llmesh-request-id"])
    with client(url, "sk-team").chat.completions.with_streaming_response.create(
        model="logged", messages=secret_prompt, stream=True
    ) as response:
        ids.add(response.headers["x-llmesh-request-id"])
        streamed = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    raw = client(url, "sk-team").chat.completions.with_raw_response.create(model="table", messages=secret_prompt)
    ids.add(raw.headers["x-llmesh-request-id"])
    # Lines of earlier tests' requests may still arrive after `since`: keep ours.
    deadline = time.monotonic() + 5
    while len(lines := [l for l in access_lines(process, since) if l["request_id"] in ids]) < 3:
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    logged = [l for l in lines if l["route"] == "logged"]
    plain = [l for l in lines if l["route"] == "table"]
    assert len(logged) == 2 and len(plain) == 1, lines
    for line in logged:
        assert line["prompt"] == "my key is [OPENAI_KEY] please"
        assert line["answer"] == "Mock reply to: my key is [OPENAI_KEY] please"
        assert line["virtual_key"] == "team"
    assert streamed.startswith("Mock reply to: my key is sk-live"), "only the log is redacted"
    assert "prompt" not in plain[0] and "answer" not in plain[0]
    assert "sk-live" not in process.log_text(since)
