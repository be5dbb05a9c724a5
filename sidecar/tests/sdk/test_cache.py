"""Exact response caching as an app sees it through the OpenAI SDK: repeats
are answered from memory (the upstream mock counts its calls), changes are
not, and streams and complete answers are served from each other's entries."""

import uuid

from conftest import CACHED_ALIAS, PROVIDERS, SEMANTIC_ALIAS

OPENAI = PROVIDERS["openai"]


def question() -> list[dict]:
    """A question no other test asked, so every test starts from a miss."""
    return [{"role": "user", "content": f"cache test {uuid.uuid4().hex}"}]


def ask(client, messages, **params):
    raw = client.chat.completions.with_raw_response.create(model=CACHED_ALIAS, messages=messages, **params)
    return raw.headers.get("x-llmesh-cache"), raw.parse()


def test_an_identical_request_is_served_from_the_cache_without_an_upstream_call(client, gateway):
    messages = question()
    before = len(gateway.calls(OPENAI))
    first_verdict, first = ask(client, messages, temperature=0)
    second_verdict, second = ask(client, messages, temperature=0)

    assert (first_verdict, second_verdict) == ("miss", "hit")
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.id == first.id, "the stored answer itself"
    assert len(gateway.calls(OPENAI)) - before == 1, "the hit made no upstream call"


def test_a_changed_parameter_is_a_miss(client, gateway):
    messages = question()
    assert ask(client, messages, temperature=0)[0] == "miss"
    before = len(gateway.calls(OPENAI))
    assert ask(client, messages, temperature=0.5)[0] == "miss"
    assert ask(client, messages, temperature=0, seed=3)[0] == "miss"
    assert len(gateway.calls(OPENAI)) - before == 2


def stream_text(client, messages) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(model=CACHED_ALIAS, messages=messages, stream=True)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    return raw.headers.get("x-llmesh-cache"), text


def test_a_stream_is_served_from_a_complete_answer_and_the_other_way_round(client, gateway):
    stored_whole = question()
    _, whole = ask(client, stored_whole)
    assert stream_text(client, stored_whole) == ("hit", whole.choices[0].message.content)

    stored_streamed = question()
    verdict, streamed = stream_text(client, stored_streamed)
    assert verdict == "miss"
    before = len(gateway.calls(OPENAI))
    verdict, answer = ask(client, stored_streamed)
    assert (verdict, answer.choices[0].message.content) == ("hit", streamed)
    assert answer.choices[0].finish_reason == "stop"
    assert len(gateway.calls(OPENAI)) == before


def test_requests_can_refresh_or_bypass_the_cache(client, gateway):
    messages = question()
    ask(client, messages)
    before = len(gateway.calls(OPENAI))
    refreshed = client.chat.completions.with_raw_response.create(
        model=CACHED_ALIAS, messages=messages, extra_headers={"Cache-Control": "no-cache"}
    )
    bypassed = client.chat.completions.with_raw_response.create(
        model=CACHED_ALIAS, messages=messages, extra_headers={"x-llmesh-cache": "bypass"}
    )
    assert refreshed.headers["x-llmesh-cache"] == "refresh"
    assert bypassed.headers["x-llmesh-cache"] == "bypass"
    assert len(gateway.calls(OPENAI)) - before == 2


def test_a_reworded_question_in_the_same_conversation_is_a_semantic_hit(client):
    topic = uuid.uuid4().hex
    def conversation(system: str, question: str) -> tuple[str | None, str]:
        raw = client.chat.completions.with_raw_response.create(
            model=SEMANTIC_ALIAS,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        )
        return raw.headers.get("x-llmesh-cache"), raw.parse().choices[0].message.content

    verdict, answer = conversation("Be brief.", f"Please tell me what the capital city of {topic} is")
    assert verdict == "miss"
    assert conversation("Be brief.", f"Tell me what the capital city of {topic} is") == ("semantic-hit", answer)
    assert conversation("Be brief.", f"How tall is mount {topic} in meters")[0] == "miss"
    assert conversation("Answer in French.", f"Tell me what the capital city of {topic} is")[0] == "miss"
