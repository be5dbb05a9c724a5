"""Streamed chat completions through the sidecar, sync and async clients."""

import asyncio

from conftest import route_alias

PROMPT = [{"role": "user", "content": "tell me about streaming rivers"}]


def full_answer(client, provider) -> str:
    return client.chat.completions.create(model=route_alias(provider), messages=PROMPT).choices[0].message.content


def test_streamed_deltas_reassemble_to_the_full_answer(client, provider):
    raw = client.chat.completions.with_raw_response.create(model=route_alias(provider), messages=PROMPT, stream=True)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-llmesh-route"] == route_alias(provider)
    assert raw.headers["x-llmesh-provider"] == provider.kind

    chunks = list(raw.parse())

    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 1, "the answer arrives in pieces, not as one block"
    text = "".join(c.choices[0].delta.content for c in content_chunks)
    assert text == full_answer(client, provider)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert all(c.model == provider.model for c in chunks)


def test_include_usage_adds_a_final_usage_chunk(client, provider):
    stream = client.chat.completions.create(
        model=route_alias(provider), messages=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    last = chunks[-1]
    assert last.choices == [], "the usage chunk has no choices"
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1]), "usage comes once, at the end"


def test_without_include_usage_no_chunk_carries_usage(client, provider):
    chunks = list(client.chat.completions.create(model=route_alias(provider), messages=PROMPT, stream=True))

    assert chunks, "the stream is not empty"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "no usage-only chunk the app did not ask for"


def test_async_client_streams(async_client, client, provider):
    async def collect() -> tuple[str, object]:
        stream = await async_client.chat.completions.create(
            model=route_alias(provider), messages=PROMPT, stream=True, stream_options={"include_usage": True}
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        await async_client.close()
        return text, usage

    text, usage = asyncio.run(collect())

    assert text == full_answer(client, provider)
    assert usage is not None and usage.completion_tokens > 0
