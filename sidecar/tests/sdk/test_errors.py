"""Failures as the OpenAI SDK raises them: bad requests and upstream faults."""

import time

import openai
import pytest

from conftest import PROVIDERS, Gateway, Provider, route_alias

PROMPT = [{"role": "user", "content": "one two three four five"}]


class UpstreamCalls:
    """Counts a scripted provider's upstream calls around a fault, so a test
    also proves its scripted behavior was used up and cannot leak into the next."""

    def __init__(self, gateway: Gateway, provider: Provider):
        self.gateway, self.provider = gateway, provider
        self.before = self.count()

    def count(self) -> int:
        return len(self.gateway.calls(self.provider)) if self.provider.mock is not None else 0

    def assert_one_more(self) -> None:
        if self.provider.mock is not None:
            assert self.count() == self.before + 1, "exactly one upstream call, no retry"


def test_an_unknown_route_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="no-such-route", messages=PROMPT)

    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"
    assert "no-such-route" in raised.value.message


def test_an_invalid_body_is_a_bad_request_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=route_alias(PROVIDERS["mock"]), messages=[{"role": "wizard", "content": "hi"}]
        )

    assert raised.value.status_code == 400
    assert "messages[0].role" in raised.value.message


def test_an_upstream_500_is_a_502(client, gateway, provider):
    calls = UpstreamCalls(gateway, provider)
    alias = gateway.inject(provider, "server-error")

    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=alias, messages=PROMPT)

    assert raised.value.status_code == 502
    assert raised.value.response.headers["x-llmesh-provider"] == provider.kind
    calls.assert_one_more()


def test_an_upstream_429_is_a_rate_limit_with_retry_after(client, gateway, provider):
    calls = UpstreamCalls(gateway, provider)
    alias = gateway.inject(provider, "rate-limit")

    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=alias, messages=PROMPT)

    assert raised.value.status_code == 429
    assert raised.value.response.headers["retry-after"] == "2", "the provider's wait is passed on"
    calls.assert_one_more()


# test-support's `broken_body` yields its pieces and the error in one go, so
# hyper resets the connection before flushing anything: mock-upstream's
# `cut-stream` arrives as an empty reply, not as a stream cut mid-way.
# Pausing before the error (as `paced_body` does) fixes it; then drop this.
CUT_STREAM_MOCK_BUG = pytest.mark.xfail(
    strict=True,
    reason="mock-upstream cut-stream sends nothing before the reset (test-support broken_body)",
)


def test_a_stream_cut_midway_raises_while_iterating(client, gateway, provider, request):
    if provider.mock is not None:
        request.applymarker(CUT_STREAM_MOCK_BUG)
    full = client.chat.completions.create(model=route_alias(provider), messages=PROMPT).choices[0].message.content
    calls = UpstreamCalls(gateway, provider)
    alias = gateway.inject(provider, "cut-stream")

    received = ""
    with pytest.raises(openai.APIError) as raised:
        for chunk in client.chat.completions.create(model=alias, messages=PROMPT, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received += chunk.choices[0].delta.content

    assert received, "the first pieces arrived before the cut"
    assert full.startswith(received) and received != full
    assert raised.value.message, "the error says what happened"
    calls.assert_one_more()


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_a_hanging_upstream_times_out_at_the_first_token_limit(client, gateway, provider, stream):
    calls = UpstreamCalls(gateway, provider)
    alias = gateway.inject(provider, "hang")

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=alias, messages=PROMPT, stream=stream)
    waited = time.monotonic() - started

    assert raised.value.status_code == 504
    assert isinstance(raised.value, openai.InternalServerError)
    assert 0.9 <= waited < 10, f"the route's 1s first-token limit applies, waited {waited:.1f}s"
    calls.assert_one_more()
