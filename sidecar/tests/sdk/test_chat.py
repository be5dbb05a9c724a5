"""Non-streaming chat completions through the sidecar, as the OpenAI SDK sees them."""

import base64
import json
import struct
import zlib

from conftest import PROVIDERS, route_alias


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_plain_chat_answers_with_content_usage_and_llmesh_headers(client, gateway, provider):
    raw = client.chat.completions.with_raw_response.create(
        model=route_alias(provider), messages=user("ping marmalade")
    )
    completion = raw.parse()

    choice = completion.choices[0]
    assert "ping marmalade" in choice.message.content, "the mocks echo the prompt"
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert completion.model == provider.model
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    headers = raw.headers
    assert headers["x-llmesh-route"] == route_alias(provider)
    assert headers["x-llmesh-provider"] == provider.kind
    assert headers["x-llmesh-model"] == provider.model
    assert headers["x-llmesh-attempts"] == "1"
    assert headers["x-llmesh-request-id"]


def test_each_request_gets_its_own_request_id(client):
    alias = route_alias(PROVIDERS["mock"])
    ids = {
        client.chat.completions.with_raw_response.create(model=alias, messages=user("hi")).headers[
            "x-llmesh-request-id"
        ]
        for _ in range(3)
    }
    assert len(ids) == 3


def test_upstream_gets_the_target_model_and_the_providers_credential(client, gateway, scripted):
    before = len(gateway.calls(scripted))
    client.chat.completions.create(model=route_alias(scripted), messages=user("which model?"))

    calls = gateway.calls(scripted)
    assert len(calls) == before + 1, "one upstream call per request when nothing fails"
    call = calls[-1]
    assert call["body"]["model"] == scripted.model, "the alias is replaced by the upstream model"
    assert call["body"]["messages"] == user("which model?")
    assert "unused" not in json.dumps(call["headers"]), "the app's own key never reaches the provider"
    scripted.expect_call(call, "chat/completions")


def tiny_png() -> bytes:
    """A valid 1x1 red PNG, built here rather than shipped as a fixture file."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_an_image_content_part_is_accepted(client, gateway, provider):
    data_url = "data:image/png;base64," + base64.b64encode(tiny_png()).decode()
    content = [
        {"type": "text", "text": "describe this picture"},
        {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
    ]
    completion = client.chat.completions.create(
        model=route_alias(provider), messages=[{"role": "user", "content": content}]
    )

    assert "describe this picture" in completion.choices[0].message.content
    if provider.inspectable:
        sent = gateway.calls(provider)[-1]["body"]["messages"][0]["content"]
        assert sent == content, "the image part reaches the upstream intact"


def test_json_object_mode_returns_parseable_json(client, provider):
    completion = client.chat.completions.create(
        model=route_alias(provider),
        messages=user("Answer in JSON: what is the capital of France?"),
        response_format={"type": "json_object"},
    )

    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_json_schema_mode_returns_parseable_json_and_passes_the_schema_on(client, gateway, provider):
    response_format = {
        "type": "json_schema",
        "json_schema": {
            "name": "capital",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
    completion = client.chat.completions.create(
        model=route_alias(provider), messages=user("The capital of France?"), response_format=response_format
    )

    assert isinstance(json.loads(completion.choices[0].message.content), dict)
    if provider.inspectable:
        assert gateway.calls(provider)[-1]["body"]["response_format"] == response_format
