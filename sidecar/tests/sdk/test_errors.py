"""Failures as the OpenAI SDK raises them: bad requests and upstream faults."""

import time

import openai
import pytest

from conftest import MAX_BODY_BYTES, PROVIDERS, Gateway, Provider, route_alias

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
    assert_openai_error_shape(raised.value)


def test_a_body_over_the_limit_is_refused_with_413(client):
    huge = "x" * (MAX_BODY_BYTES + 1)

    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model=route_alias(PROVIDERS["mock"]), messages=[{"role": "user", "content": huge}]
        )

    assert raised.value.status_code == 413
    assert_openai_error_shape(raised.value)


def assert_openai_error_shape(error: openai.APIStatusError) -> None:
    """The fields SDK users branch on are filled in, as OpenAI fills them."""
    assert error.message and error.type and error.code, error.body


STREAM_OR_NOT = pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])


@STREAM_OR_NOT
def test_an_upstream_500_is_a_502(client, gateway, provider, stream):
    calls = UpstreamCalls(gateway, provider)
    alias = gateway.inject(provider, "server-error")

    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=alias, messages=PROMPT, stream=stream)

    assert raised.value.status_code == 502
    assert_openai_error_shape(raised.value)
    assert raised.value.response.headers["x-llmesh-provider"] == provider.kind
    calls.assert_one_more()


@STREAM_OR_NOT
def test_an_upstream_429_is_a_rate_limit_with_retry_after(client, gateway, provider, stream):
    calls = UpstreamCalls(gateway, provider)
    alias = gateway.inject(provider, "rate-limit")

    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model=alias, messages=PROMPT, stream=stream)

    assert raised.value.status_code == 429
    assert_openai_error_shape(raised.value)
    if provider.sends_retry_after:
        assert raised.value.response.headers["retry-after"] == "2", "the provider's wait is passed on"
    else:
        assert raised.value.response.headers["retry-after"] == "1", "llmesh's default wait when the provider names none"
    calls.assert_one_more()


def test_a_stream_cut_midway_raises_while_iterating(client, gateway, provider):
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


@STREAM_OR_NOT
def test_a_hanging_upstream_times_out_at_the_first_token_limit(client, gateway, provider, stream):
    calls = UpstreamCalls(gateway, provider)
    alias = gateway.inject(provider, "hang")

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model=alias, messages=PROMPT, stream=stream)
    waited = time.monotonic() - started

    assert raised.value.status_code == 504
    assert isinstance(raised.value, openai.InternalServerError)
    assert_openai_error_shape(raised.value)
    assert 0.9 <= waited < 10, f"the route's 1s first-token limit applies, waited {waited:.1f}s"
    calls.assert_one_more()
