"""The official OpenAI SDK's Responses API against the sidecar's
`/v1/responses`, with a target of every provider family behind the route."""

import json

import openai
import pytest
from pydantic import BaseModel

from conftest import PROVIDERS, route_alias

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
QUESTION = {"role": "user", "content": "What is the weather in Lisbon?"}


class Capital(BaseModel):
    city: str


def test_create_answers_with_output_text_and_usage(client, provider):
    response = client.responses.create(
        model=route_alias(provider), instructions="You are terse.", input="Say hello", max_output_tokens=256
    )

    assert response.object == "response" and response.status == "completed"
    assert response.output_text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_stream_follows_the_responses_event_order_and_matches_create(client, provider):
    expected = client.responses.create(model=route_alias(provider), input="Say hello").output_text
    with client.responses.stream(model=route_alias(provider), input="Say hello") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()

    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_item.added" in kinds and "response.output_text.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert final.output_text == expected
    assert final.usage.output_tokens > 0


def test_a_function_tool_round_trip(client, provider):
    first = client.responses.create(model=route_alias(provider), input=[QUESTION], tools=[WEATHER_TOOL])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    assert isinstance(json.loads(call.arguments), dict)

    output = {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"celsius": 21})}
    # Stateless: the app sends the call back with its output.
    second = client.responses.create(
        model=route_alias(provider), input=[QUESTION, call, output], tools=[WEATHER_TOOL]
    )
    assert second.output_text
    assert not [item for item in second.output if item.type == "function_call"]


def test_a_streamed_function_call_reassembles(client, provider):
    with client.responses.stream(model=route_alias(provider), input=[QUESTION], tools=[WEATHER_TOOL]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()

    assert "response.function_call_arguments.delta" in kinds or "response.function_call_arguments.done" in kinds
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments), dict)


def test_structured_output_is_json_and_the_schema_reaches_the_target(client, gateway, provider):
    schema = Capital.model_json_schema() | {"additionalProperties": False}
    text = {"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}}
    response = client.responses.create(model=route_alias(provider), input="The capital of France?", text=text)

    # The mocks answer any JSON object; a real model follows the schema.
    assert isinstance(json.loads(response.output_text), dict)
    assert response.text.format.type == "json_schema"
    if provider.inspectable:
        sent = gateway.calls(provider)[-1]["body"]["response_format"]
        assert sent == {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema, "strict": True}}


def test_a_cut_stream_ends_in_response_failed(client, gateway, provider):
    route = gateway.inject(provider, "cut-stream")
    events = []
    with client.responses.create(model=route, input="Tell me a long story", stream=True) as stream:
        events = [event.type for event in stream]
    assert events[-1] == "response.failed"


@pytest.mark.parametrize("stateful", [{"store": True}, {"previous_response_id": "resp_123"}])
def test_stored_state_is_refused_as_stateless(client, stateful):
    with pytest.raises(openai.BadRequestError) as raised:
        client.responses.create(model="openai-route", input="hi", **stateful)
    assert raised.value.code == "stateless_gateway"
    assert "send the whole conversation in `input`" in raised.value.message


def test_claude_reasoning_comes_back_as_a_reasoning_item_and_goes_back_signed(client, gateway):
    # `reasoning.effort` gives an Anthropic target a thinking budget; its
    # signed thinking comes back as a reasoning item, which the app sends
    # back with the call's output, as Anthropic requires while thinking.
    alias = route_alias(PROVIDERS["anthropic"])
    question = {"role": "user", "content": f"What is the weather in Faro? {id(gateway)}"}
    first = client.responses.create(
        model=alias, input=[question], tools=[WEATHER_TOOL], reasoning={"effort": "low"}
    )
    assert [item.type for item in first.output][0] == "reasoning"
    reasoning = first.output[0]
    assert "Faro" in reasoning.summary[0].text and reasoning.encrypted_content
    sent = gateway.calls(PROVIDERS["anthropic"])[-1]["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    [call] = [item for item in first.output if item.type == "function_call"]

    result = {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"celsius": 24})}
    items = [item.model_dump(exclude_none=True) for item in first.output]
    second = client.responses.create(
        model=alias, input=[question, *items, result], tools=[WEATHER_TOOL], reasoning={"effort": "low"}
    )
    # The mock refuses a thinking turn that does not start with its signed block.
    assert second.status == "completed" and second.output_text
    turn = gateway.calls(PROVIDERS["anthropic"])[-1]["body"]["messages"][1]
    assert turn["content"][0]["type"] == "thinking"
    assert turn["content"][0]["thinking"] == reasoning.summary[0].text

    without = [item for item in items if item["type"] != "reasoning"]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model=alias, input=[question, *without, result], tools=[WEATHER_TOOL], reasoning={"effort": "low"}
        )


def test_claude_reasoning_streams_as_summary_events_and_matches_create(client, gateway):
    alias = route_alias(PROVIDERS["anthropic"])
    prompt = f"Think it over {id(gateway)}"
    complete = client.responses.create(model=alias, input=prompt, reasoning={"effort": "medium"})
    with client.responses.stream(model=alias, input=prompt, reasoning={"effort": "medium"}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()

    assert kinds.index("response.reasoning_summary_text.delta") < kinds.index("response.output_text.delta")
    assert "response.reasoning_summary_part.done" in kinds
    assert final.output[0].type == "reasoning"
    assert final.output[0].summary[0].text == complete.output[0].summary[0].text
    assert final.output[0].encrypted_content == complete.output[0].encrypted_content
    assert final.output_text == complete.output_text
