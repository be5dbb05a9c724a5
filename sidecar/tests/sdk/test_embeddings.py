"""Embeddings through the sidecar, for providers that have them."""

import base64
import struct

import pytest

from conftest import embeddings_alias


def test_embeddings_return_one_vector_per_input(client, gateway, provider):
    if provider.embedding_model is None:
        pytest.skip(f"{provider.kind} has no embeddings API")
    raw = client.embeddings.with_raw_response.create(
        model=embeddings_alias(provider), input=["the cat sat on the mat", "stock prices fell sharply"]
    )
    response = raw.parse()

    assert [d.index for d in response.data] == [0, 1]
    first, second = (d.embedding for d in response.data)
    assert len(first) == len(second) > 0
    assert all(isinstance(x, float) for x in first)
    assert first != second, "different texts, different vectors"
    assert response.usage.prompt_tokens > 0
    assert raw.headers["x-llmesh-model"] == provider.embedding_model
    if provider.inspectable:
        call = gateway.calls(provider)[-1]
        assert call["body"]["model"] == provider.embedding_model
        provider.expect_call(call, "embeddings")


def test_base64_embeddings_decode_to_the_float_vectors(client, provider):
    if provider.embedding_model is None:
        pytest.skip(f"{provider.kind} has no embeddings API")
    text = "the cat sat on the mat"
    floats = client.embeddings.create(model=embeddings_alias(provider), input=text).data[0].embedding

    encoded = client.embeddings.create(model=embeddings_alias(provider), input=text, encoding_format="base64")

    packed = encoded.data[0].embedding
    assert isinstance(packed, str), "asked for base64, the SDK hands back the string as sent"
    raw = base64.b64decode(packed)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(floats)
