"""The official Anthropic SDK against the sidecar's `/v1/messages`, with a
target of every provider family behind the route."""

import base64
import json

import anthropic
import httpx
import pytest

from conftest import CROSS_FAMILY_ALIAS, PROVIDERS, route_alias

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
QUESTION = {"role": "user", "content": "What is the weather in Lisbon?"}
# A 1x1 transparent PNG.
PIXEL = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
    )
).decode()


def ask(claude, provider, **extra):
    return claude.messages.create(
        model=route_alias(provider), max_tokens=256, messages=[{"role": "user", "content": "Say hello"}], **extra
    )


def test_create_answers_with_text_usage_and_end_turn(claude, provider):
    message = ask(claude, provider, system="You are terse.")

    assert message.type == "message" and message.role == "assistant"
    assert message.stop_reason == "end_turn"
    [block] = message.content
    assert block.type == "text" and block.text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_stream_follows_anthropics_event_order_and_matches_create(claude, provider):
    expected = ask(claude, provider).content[0].text
    with claude.messages.stream(
        model=route_alias(provider), max_tokens=256, messages=[{"role": "user", "content": "Say hello"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()

    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert final.content[0].text == expected
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_a_tool_round_trip(claude, provider):
    first = claude.messages.create(
        model=route_alias(provider), max_tokens=256, messages=[QUESTION], tools=[WEATHER_TOOL]
    )
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict) and call.id

    result = {"type": "tool_result", "tool_use_id": call.id, "content": json.dumps({"celsius": 21})}
    # Apps append the SDK's own content blocks, as Anthropic's docs show.
    second = claude.messages.create(
        model=route_alias(provider),
        max_tokens=256,
        messages=[QUESTION, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}],
        tools=[WEATHER_TOOL],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text


def test_a_streamed_tool_call_reassembles(claude, provider):
    with claude.messages.stream(
        model=route_alias(provider), max_tokens=256, messages=[QUESTION], tools=[WEATHER_TOOL]
    ) as stream:
        final = stream.get_final_message()

    assert final.stop_reason == "tool_use"
    [call] = [block for block in final.content if block.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict)


def test_an_image_block_is_accepted(claude, provider):
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}
    message = claude.messages.create(
        model=route_alias(provider),
        max_tokens=256,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}],
    )
    assert message.content[0].text


def test_a_fallback_across_wire_formats_answers_in_anthropics_shape(claude, gateway):
    gateway.script(PROVIDERS["anthropic"], [{"status": 529}])
    raw = claude.messages.with_raw_response.create(
        model=CROSS_FAMILY_ALIAS, max_tokens=64, messages=[{"role": "user", "content": "Who answers?"}]
    )
    message = raw.parse()
    assert raw.headers["x-llmesh-provider"] == "openai"
    assert raw.headers["x-llmesh-fallback"] == "1"
    assert message.type == "message" and message.content[0].text


def test_overload_at_the_end_of_the_chain_is_a_529(claude, gateway):
    gateway.script(PROVIDERS["anthropic"], [{"status": 529}])
    with pytest.raises(anthropic.APIStatusError) as raised:
        claude.messages.create(
            model=route_alias(PROVIDERS["anthropic"]), max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 529
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "overloaded_error"


def test_a_cut_stream_ends_in_an_error_event(claude, gateway, provider):
    route = gateway.inject(provider, "cut-stream")
    with pytest.raises(anthropic.APIStatusError) as raised:
        with claude.messages.stream(
            model=route, max_tokens=256, messages=[{"role": "user", "content": "Tell me a long story"}]
        ) as stream:
            for _ in stream:
                pass
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] in {"api_error", "timeout_error"}


def test_errors_have_anthropics_shape(claude):
    with pytest.raises(anthropic.NotFoundError) as raised:
        claude.messages.create(model="no-such-route", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(model="openai-route", max_tokens=8, messages=[{"role": "robot", "content": "hi"}])
    assert raised.value.body["error"]["type"] == "invalid_request_error"


def test_count_tokens_is_exact_from_anthropic_and_an_estimate_elsewhere(claude):
    messages = [{"role": "user", "content": "How many tokens is this question?"}]
    anthropic_route = route_alias(PROVIDERS["anthropic"])
    raw = claude.messages.with_raw_response.count_tokens(model=anthropic_route, messages=messages, system="Be terse.")
    exact = raw.parse().input_tokens
    assert raw.headers["x-llmesh-token-count"] == "exact"
    answered = claude.messages.create(model=anthropic_route, max_tokens=64, messages=messages, system="Be terse.")
    assert exact == answered.usage.input_tokens

    raw = claude.messages.with_raw_response.count_tokens(model="openai-route", messages=messages)
    assert raw.headers["x-llmesh-token-count"] == "estimate"
    assert raw.parse().input_tokens > 0


def test_models_list_in_anthropics_shape(claude, gateway):
    ids = [model.id for model in claude.models.list()]
    assert set(ids) == set(gateway.aliases)
    openai_shape = httpx.get(f"{gateway.url}/v1/models").json()
    assert openai_shape["object"] == "list"


def test_a_cached_answer_is_served_to_every_format(claude, client, gateway):
    question = f"Cache me across formats {id(gateway)}"
    openai_calls = len(gateway.calls(PROVIDERS["openai"]))
    chat = client.chat.completions.with_raw_response.create(
        model="openai-cached-route", max_tokens=64, messages=[{"role": "user", "content": question}]
    )
    assert chat.headers["x-llmesh-cache"] == "miss"
    message = claude.messages.with_raw_response.create(
        model="openai-cached-route", max_tokens=64, messages=[{"role": "user", "content": question}]
    )
    assert message.headers["x-llmesh-cache"] == "hit"
    response = client.responses.with_raw_response.create(
        model="openai-cached-route", max_output_tokens=64, input=[{"role": "user", "content": question}]
    )
    assert response.headers["x-llmesh-cache"] == "hit"
    assert len(gateway.calls(PROVIDERS["openai"])) == openai_calls + 1
    text = chat.parse().choices[0].message.content
    assert message.parse().content[0].text == text
    assert response.parse().output_text == text


def test_anthropic_beta_reaches_anthropic_targets_only(claude, gateway):
    beta = {"anthropic-beta": "token-efficient-tools-2025-02-19"}
    for provider in (PROVIDERS["anthropic"], PROVIDERS["openai"]):
        claude.messages.create(
            model=route_alias(provider), max_tokens=64, messages=[{"role": "user", "content": "hi"}], extra_headers=beta
        )
    anthropic_call = gateway.calls(PROVIDERS["anthropic"])[-1]
    assert anthropic_call["headers"].get("anthropic-beta") == beta["anthropic-beta"]
    assert "anthropic-beta" not in gateway.calls(PROVIDERS["openai"])[-1]["headers"]


def test_an_anthropic_target_receives_the_apps_request_as_sent(claude, gateway):
    # Same-family passthrough: what chat does not model (prompt-cache
    # breakpoints, a signed thinking block, service_tier) reaches Anthropic.
    system = [{"type": "text", "text": "You plan trips.", "cache_control": {"type": "ephemeral"}}]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Plan a day out", "cache_control": {"type": "ephemeral"}}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "They want a city.", "signature": "EqQBCkgIARABGAIiQL"},
                {"type": "text", "text": "Where?"},
            ],
        },
        {"role": "user", "content": "Lisbon"},
    ]
    version = "2023-06-01"
    raw = claude.messages.with_raw_response.create(
        model=route_alias(PROVIDERS["anthropic"]),
        max_tokens=64,
        system=system,
        messages=messages,
        extra_body={"service_tier": "auto"},
        extra_headers={"anthropic-version": version, "anthropic-beta": "interleaved-thinking-2025-05-14"},
    )
    assert raw.parse().content[0].text == "Hello from anthropic: Lisbon"
    call = gateway.calls(PROVIDERS["anthropic"])[-1]
    assert call["body"]["model"] == PROVIDERS["anthropic"].model
    assert call["body"]["system"] == system
    assert call["body"]["messages"] == messages
    assert call["body"]["service_tier"] == "auto"
    assert call["headers"]["anthropic-version"] == version
    assert call["headers"]["anthropic-beta"] == "interleaved-thinking-2025-05-14"
    assert call["headers"]["x-api-key"] == PROVIDERS["anthropic"].secret["apiKey"]


def test_a_stream_to_an_anthropic_target_sends_the_apps_request_as_sent(claude, gateway):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Stream me", "cache_control": {"type": "ephemeral"}}]}]
    with claude.messages.stream(model=route_alias(PROVIDERS["anthropic"]), max_tokens=64, messages=messages) as stream:
        text = stream.get_final_text()
    assert text == "Hello from anthropic: Stream me"
    call = gateway.calls(PROVIDERS["anthropic"])[-1]
    assert call["body"]["messages"] == messages
    assert call["body"]["stream"] is True


def test_other_families_get_the_translation_not_anthropics_fields(claude, gateway):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}]
    claude.messages.create(model=route_alias(PROVIDERS["openai"]), max_tokens=64, messages=messages)
    body = gateway.calls(PROVIDERS["openai"])[-1]["body"]
    assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert "cache_control" not in json.dumps(body)
