//! Anthropic upstreams through a real sidecar: what the Messages API
//! receives, and what the app gets back in OpenAI's shape.

use llmesh_test_support::anthropic::{self, CACHE_READ_TOKENS, CACHE_WRITE_TOKENS, TOOL_USE_ID};
use llmesh_test_support::harness::{Sidecar, provider, route, secret};
use llmesh_test_support::{Behavior, MockServer};
use serde_json::{Value, json};

const API_KEY: &str = "sk-ant-test-123";

async fn anthropic_sidecar(mock: &MockServer) -> Sidecar {
    let yaml = [
        secret("anthropic-key", "apiKey", API_KEY),
        provider(
            "claude",
            &format!(
                "{{provider: anthropic, baseUrl: '{}', secretRef: {{name: anthropic-key}}, headers: {{x-team: search}}}}",
                mock.url()
            ),
        ),
        route("smart", "{targets: [{provider: claude, model: claude-sonnet-4-5}]}"),
    ]
    .concat();
    Sidecar::start(&yaml).await
}

/// Two instruction words and two user words: the mock counts 4 input tokens.
fn chat(stream: bool) -> Value {
    json!({
        "model": "smart",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        "stream": stream,
    })
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "weather", "description": "Weather by city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    ])
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|frame| frame.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The chunks of a complete stream (which must end with `[DONE]`).
async fn stream_chunks(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let data = sse_data(&response.text().await.expect("body"));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect()
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn the_request_reaches_anthropic_translated() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;
    let request = json!({
        "model": "smart",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris and Lyon?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Lyon\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
            {"role": "developer", "content": "Use Celsius."},
            {"role": "user", "content": [
                {"type": "text", "text": "And what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cloud.jpg"}}
            ]}
        ],
        "tools": weather_tools(),
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "parallel_tool_calls": false,
        "max_completion_tokens": 256,
        "temperature": 0.2,
        "stop": ["END"],
        "user": "user-42",
        "seed": 7,
        "x_custom_field": {"not": "for anthropic"}
    });

    let response = sidecar.post("/v1/chat/completions", &request).await;
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
    assert_eq!(response.headers()["x-llmesh-provider"], "anthropic");
    assert_eq!(response.headers()["x-llmesh-model"], "claude-sonnet-4-5");

    let calls = mock.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.path, "/v1/messages");
    assert_eq!(call.header("x-api-key"), Some(API_KEY));
    assert_eq!(call.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(call.header("x-team"), Some("search"));
    assert_eq!(call.header("authorization"), None);
    let sent = call.json();
    assert_eq!(
        sent,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "system": [{"type": "text", "text": "You are a weather bot."}, {"type": "text", "text": "Use Celsius."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Lyon?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Lyon"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
                    {"type": "text", "text": "And what is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cloud.jpg"}}
                ]}
            ],
            "temperature": 0.2,
            "stop_sequences": ["END"],
            "tools": [
                {"name": "weather", "description": "Weather by city",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                {"name": "lookup", "input_schema": {"type": "object", "properties": {}}}
            ],
            "tool_choice": {"type": "tool", "name": "lookup", "disable_parallel_tool_use": true},
            "metadata": {"user_id": "user-42"}
        })
    );
}

#[tokio::test]
async fn a_complete_answer_comes_back_in_openai_shape_with_cache_usage() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;

    let response = sidecar.post("/v1/chat/completions", &chat(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-llmesh-provider"], "anthropic");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "claude-sonnet-4-5");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hello from anthropic: Say hello");
    assert_eq!(choice["finish_reason"], "stop");
    let cached = CACHE_READ_TOKENS + CACHE_WRITE_TOKENS;
    assert_eq!(
        body["usage"]["prompt_tokens"],
        4 + cached,
        "input plus cache reads and writes"
    );
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["usage"]["total_tokens"], 4 + cached + 5);
    assert_eq!(
        body["usage"]["prompt_tokens_details"],
        json!({"cached_tokens": CACHE_READ_TOKENS, "cache_write_tokens": CACHE_WRITE_TOKENS})
    );
    assert_eq!(
        mock.calls()[0].json()["max_tokens"],
        4096,
        "Anthropic requires a limit; llmesh sets the default"
    );

    let mut short = chat(false);
    short["max_tokens"] = json!(2);
    let body: Value = sidecar
        .post("/v1/chat/completions", &short)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn a_tool_call_comes_back_as_openai_tool_calls() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;
    let mut request = chat(false);
    request["tools"] = weather_tools();

    let body: Value = sidecar
        .post("/v1/chat/completions", &request)
        .await
        .json()
        .await
        .expect("json");
    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], "Calling weather.");
    assert_eq!(message["tool_calls"][0]["id"], TOOL_USE_ID);
    assert_eq!(message["tool_calls"][0]["type"], "function");
    assert_eq!(message["tool_calls"][0]["function"]["name"], "weather");
    let arguments: Value = serde_json::from_str(
        message["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .expect("text"),
    )
    .expect("json");
    assert_eq!(arguments, json!({"echo": "Say hello"}));
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn a_text_stream_is_reassembled_with_usage_when_asked() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;

    let chunks = stream_chunks(sidecar.post("/v1/chat/completions", &chat(true)).await).await;
    assert_eq!(streamed_text(&chunks), "Hello from anthropic: Say hello");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "claude-sonnet-4-5")
    );
    assert_eq!(
        chunks.last().expect("chunks")["choices"][0]["finish_reason"],
        "stop"
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "the app did not ask for usage"
    );
    assert_eq!(mock.calls()[0].json()["stream"], true);

    let mut with_usage = chat(true);
    with_usage["stream_options"] = json!({"include_usage": true});
    let chunks = stream_chunks(sidecar.post("/v1/chat/completions", &with_usage).await).await;
    let usage_chunk = chunks.last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens"],
        4 + CACHE_READ_TOKENS + CACHE_WRITE_TOKENS
    );
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
        CACHE_READ_TOKENS
    );
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn streamed_tool_call_arguments_reassemble_into_valid_json() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;
    let mut request = chat(true);
    request["tools"] = weather_tools();

    let chunks = stream_chunks(sidecar.post("/v1/chat/completions", &request).await).await;
    assert_eq!(streamed_text(&chunks), "Calling weather.");
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(deltas.len() >= 3, "arguments arrive in pieces: {deltas:?}");
    assert!(
        deltas.iter().all(|d| d["index"] == 0),
        "Anthropic's block 1 is OpenAI's tool call 0"
    );
    assert_eq!(deltas[0]["id"], TOOL_USE_ID);
    assert_eq!(deltas[0]["function"]["name"], "weather");
    let arguments: String = deltas
        .iter()
        .filter_map(|d| d["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).expect("valid JSON"),
        json!({"echo": "Say hello"})
    );
    assert_eq!(
        chunks.last().expect("chunks")["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn json_mode_is_answered_through_a_forced_tool_as_json_content() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;
    let schema = json!({"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]});
    let mut request = chat(false);
    request["response_format"] =
        json!({"type": "json_schema", "json_schema": {"name": "echo", "schema": schema}});

    let body: Value = sidecar
        .post("/v1/chat/completions", &request)
        .await
        .json()
        .await
        .expect("json");
    let message = &body["choices"][0]["message"];
    let content: Value =
        serde_json::from_str(message["content"].as_str().expect("content")).expect("JSON content");
    assert_eq!(content, json!({"echo": "Say hello"}));
    assert!(message.get("tool_calls").is_none());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let sent = mock.calls()[0].json();
    assert_eq!(sent["tools"][0]["input_schema"], schema);
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": sent["tools"][0]["name"]})
    );

    request["stream"] = json!(true);
    let chunks = stream_chunks(sidecar.post("/v1/chat/completions", &request).await).await;
    let content: Value = serde_json::from_str(&streamed_text(&chunks)).expect("streamed JSON content");
    assert_eq!(content, json!({"echo": "Say hello"}));
    assert_eq!(
        chunks.last().expect("chunks")["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn upstream_failures_become_openai_errors_with_the_expected_status() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;
    let cases: &[(Behavior, bool, u16, &str)] = &[
        (Behavior::RateLimit(7), false, 429, "rate_limit_exceeded"),
        (Behavior::Status(529), false, 429, "rate_limit_exceeded"),
        // Overloaded as an `error` event before any content: nothing was committed yet.
        (Behavior::Status(529), true, 429, "rate_limit_exceeded"),
        (
            Behavior::ContextWindowExceeded,
            false,
            400,
            "context_length_exceeded",
        ),
        (Behavior::Status(500), false, 502, "upstream_server_error"),
        (Behavior::Status(401), false, 502, "upstream_rejected"),
        // The mock answers 200 and then drops the connection: a broken answer.
        (Behavior::Reset, true, 502, "upstream_broken_answer"),
    ];
    for (behavior, stream, status, code) in cases {
        mock.push([behavior.clone()]);
        let response = sidecar.post("/v1/chat/completions", &chat(*stream)).await;
        assert_eq!(response.status(), *status, "{behavior:?} stream={stream}");
        if *behavior == Behavior::RateLimit(7) {
            assert_eq!(response.headers()["retry-after"], "7");
        }
        assert_eq!(response.headers()["x-llmesh-provider"], "anthropic");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], *code, "{behavior:?}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("provider claude: ")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_refusal_finishes_with_content_filter() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;
    mock.push([Behavior::ContentFilter]);
    let body: Value = sidecar
        .post("/v1/chat/completions", &chat(false))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["choices"][0]["message"]["content"], anthropic::REFUSAL_TEXT);
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_not_a_silent_end() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;
    mock.push([Behavior::CutStream(2)]);

    let response = sidecar.post("/v1/chat/completions", &chat(true)).await;
    assert_eq!(response.status(), 200, "the first chunk was already committed");
    let data = sse_data(&response.text().await.expect("body"));
    assert_eq!(data.len(), 3, "two content chunks, then the error: {data:?}");
    let last: Value = serde_json::from_str(data.last().expect("an event")).expect("json");
    assert!(last["error"]["message"].as_str().is_some(), "{last}");
    assert!(!data.iter().any(|d| d == "[DONE]"));
}

#[tokio::test]
async fn parameters_anthropic_cannot_honour_are_refused_before_any_call() {
    let mock = anthropic::start().await;
    let sidecar = anthropic_sidecar(&mock).await;
    let mut request = chat(false);
    request["n"] = json!(3);

    let response = sidecar.post("/v1/chat/completions", &request).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unsupported");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`n`")),
        "{body}"
    );
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn a_long_system_prompt_is_marked_for_anthropics_prompt_cache() {
    let mock = anthropic::start().await;
    let yaml = [
        secret("anthropic-key", "apiKey", API_KEY),
        provider(
            "claude",
            &format!(
                "{{provider: anthropic, baseUrl: '{}', secretRef: {{name: anthropic-key}}, promptCaching: {{minPrefixTokens: 50}}}}",
                mock.url()
            ),
        ),
        route("smart", "{targets: [{provider: claude, model: claude-sonnet-4-5}]}"),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let long_instructions = "Answer in the house style, citing sources. ".repeat(10);
    for (system, marked) in [("Be brief.", false), (long_instructions.as_str(), true)] {
        let body = json!({"model": "smart", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": "Say hello"},
        ]});
        assert_eq!(sidecar.post("/v1/chat/completions", &body).await.status(), 200);
        let sent = mock.calls().last().expect("a call").json();
        let breakpoint = &sent["system"][0]["cache_control"];
        assert_eq!(breakpoint == &json!({"type": "ephemeral"}), marked, "{sent}");
    }
}
