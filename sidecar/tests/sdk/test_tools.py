"""Tool calling through the sidecar: the call, the follow-up turn, and streamed calls."""

import json

import pytest
from conftest import route_alias

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
QUESTION = {"role": "user", "content": "What is the weather in Lisbon?"}
# A tool that takes no parameters: models may call it with no input at all.
CLOCK_TOOL = {
    "type": "function",
    "function": {
        "name": "current_time",
        "description": "The current time.",
        "parameters": {"type": "object", "properties": {}},
    },
}


def ask_for_tool(client, provider):
    return client.chat.completions.create(model=route_alias(provider), messages=[QUESTION], tools=[WEATHER_TOOL])


def test_the_sdk_parses_tool_calls_with_json_arguments(client, provider):
    completion = ask_for_tool(client, provider)

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)


def test_a_tool_result_turn_gets_a_text_answer(client, gateway, provider):
    first = ask_for_tool(client, provider).choices[0].message
    [call] = first.tool_calls
    result = {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21})}

    # Apps append the SDK's own message object, as the OpenAI docs show.
    completion = client.chat.completions.create(
        model=route_alias(provider), messages=[QUESTION, first, result], tools=[WEATHER_TOOL]
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert choice.message.content
    if provider.inspectable:
        sent = gateway.calls(provider)[-1]["body"]["messages"]
        assert sent[1]["tool_calls"][0]["id"] == call.id
        assert sent[2] == result


def test_streamed_tool_calls_reassemble(client, provider):
    expected = ask_for_tool(client, provider).choices[0].message.tool_calls[0]
    stream = client.chat.completions.create(
        model=route_alias(provider), messages=[QUESTION], tools=[WEATHER_TOOL], stream=True
    )

    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        finish = chunk.choices[0].finish_reason or finish
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            if delta.function:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""

    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"]
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == json.loads(expected.function.arguments)


def reassemble(stream) -> tuple[str, list[dict], str | None]:
    """Content, tool calls and finish reason of a stream, put together as apps do."""
    content = ""
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            if delta.function:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    return content, [calls[i] for i in sorted(calls)], finish


def answer(client, provider, stream: bool, **request) -> tuple[str | None, list[dict], str | None]:
    """The answer's content, tool calls and finish reason, streamed or not."""
    if stream:
        return reassemble(client.chat.completions.create(model=route_alias(provider), stream=True, **request))
    choice = client.chat.completions.create(model=route_alias(provider), **request).choices[0]
    calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls or []]
    return choice.message.content, calls, choice.finish_reason


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
def test_a_tool_without_parameters_gets_json_arguments(client, provider, stream):
    question = {"role": "user", "content": "What time is it?"}
    _, calls, finish = answer(client, provider, stream, messages=[question], tools=[CLOCK_TOOL])

    assert finish == "tool_calls"
    [call] = calls
    assert call["name"] == "current_time"
    # OpenAI's contract: arguments is a JSON object, even an empty one.
    assert isinstance(json.loads(call["arguments"]), dict)


def finished_tool_round(client, provider, result: str) -> list:
    first = ask_for_tool(client, provider).choices[0].message
    [call] = first.tool_calls
    return [QUESTION, first, {"role": "tool", "tool_call_id": call.id, "content": result}]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
@pytest.mark.parametrize(
    "offer", [{}, {"tools": [WEATHER_TOOL], "tool_choice": "none"}], ids=["no-tools", "tool-choice-none"]
)
def test_a_tool_history_with_no_tool_on_offer_gets_prose(client, provider, stream, offer):
    messages = finished_tool_round(client, provider, json.dumps({"celsius": 21}))

    content, calls, finish = answer(client, provider, stream, messages=messages, **offer)

    assert finish == "stop"
    assert calls == []
    assert content


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
def test_an_empty_tool_result_gets_an_answer(client, provider, stream):
    messages = finished_tool_round(client, provider, "")

    content, calls, finish = answer(client, provider, stream, messages=messages, tools=[WEATHER_TOOL])

    assert finish == "stop"
    assert calls == []
    assert content
