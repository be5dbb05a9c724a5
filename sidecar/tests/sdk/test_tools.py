"""Tool calling through the sidecar: the call, the follow-up turn, and streamed calls."""

import json

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
