//! The Gemini adapter end to end: a real sidecar in front of a mock that
//! speaks Gemini's wire format, driven with OpenAI requests.

use llmesh_test_support::gemini::{self, SAFETY_TRIGGER};
use llmesh_test_support::harness::{provider, route, secret};
use llmesh_test_support::{Behavior, MockServer, Sidecar};
use serde_json::{Value, json};

const API_KEY: &str = "AIza-test-key-123";

async fn gateway(mock: &MockServer) -> Sidecar {
    let spec = format!(
        "{{provider: gemini, baseUrl: \"{}\", secretRef: {{name: gemini-key}}, headers: {{x-team: search}}}}",
        mock.url()
    );
    let manifests = [
        secret("gemini-key", "apiKey", API_KEY),
        provider("gemini", &spec),
        route(
            "smart",
            "{targets: [{provider: gemini, model: gemini-2.5-flash}]}",
        ),
        route(
            "embed",
            "{targets: [{provider: gemini, model: text-embedding-004}]}",
        ),
    ]
    .concat();
    Sidecar::start(&manifests).await
}

async fn setup() -> (MockServer, Sidecar) {
    let mock = gemini::start().await;
    let sidecar = gateway(&mock).await;
    (mock, sidecar)
}

fn chat(text: &str) -> Value {
    json!({"model": "smart", "messages": [{"role": "user", "content": text}]})
}

fn streaming(mut body: Value, include_usage: bool) -> Value {
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The `data:` payloads of an SSE body, in order.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|frame| frame.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// Posts a streaming request; returns the status, the JSON chunks and whether `[DONE]` ended it.
async fn stream(sidecar: &Sidecar, body: &Value) -> (u16, Vec<Value>, bool) {
    let response = sidecar.post("/v1/chat/completions", body).await;
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let data = sse_data(&text);
    let done = data.last().is_some_and(|d| d == "[DONE]");
    let chunks = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    (status, chunks, done)
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn finish_reasons(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_upstream_receives_a_translated_request() {
    let (mock, sidecar) = setup().await;
    let body = json!({
        "model": "smart",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is the weather here?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/street.png"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_abc", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Lyon\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "weather", "description": "Current weather",
            "parameters": {"type": "object", "additionalProperties": false,
                           "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"], "enum": ["c", "f"]}},
                           "required": ["city"]}
        }}],
        "tool_choice": "auto",
        "temperature": 0.3, "top_p": 0.8, "max_tokens": 256, "stop": ["END"], "seed": 42,
        "presence_penalty": 0.5, "frequency_penalty": 0.25
    });
    let response = sidecar.post("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from gemini: weather returned {\"result\":\"sunny\"}"
    );

    let calls = mock.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.path, "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(call.header("x-goog-api-key"), Some(API_KEY));
    assert_eq!(call.header("x-team"), Some("search"));
    assert_eq!(call.header("authorization"), None);
    let sent = call.json();
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "You are terse."}, {"text": "Answer in French."}]})
    );
    assert_eq!(
        sent["contents"],
        json!([
            {"role": "user", "parts": [
                {"text": "What is the weather here?"},
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/street.png"}}
            ]},
            {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"city": "Lyon"}},
                                         "thoughtSignature": "skip_thought_signature_validator"}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"result": "sunny"}}}]}
        ])
    );
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [{"name": "weather", "description": "Current weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "nullable": true, "enum": ["c", "f"]}},
            "required": ["city"]
        }}]}])
    );
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    assert_eq!(
        sent["generationConfig"],
        json!({"temperature": 0.3, "topP": 0.8, "maxOutputTokens": 256, "stopSequences": ["END"], "seed": 42,
               "presencePenalty": 0.5, "frequencyPenalty": 0.25})
    );
}

#[tokio::test]
async fn a_complete_answer_comes_back_in_openai_shape() {
    let (_mock, sidecar) = setup().await;
    let mut body = chat("hi there");
    body["reasoning_effort"] = json!("low");
    let response = sidecar.post("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-llmesh-provider"], "gemini");
    assert_eq!(response.headers()["x-llmesh-model"], "gemini-2.5-flash");
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["id"], "chatcmpl-mock-response-1");
    assert_eq!(answer["model"], "gemini-2.5-flash");
    assert_eq!(
        answer["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hello from gemini: hi there"})
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    // Two prompt words; five answer words plus the seven thinking tokens the budget allowed.
    assert_eq!(answer["usage"]["prompt_tokens"], 2);
    assert_eq!(answer["usage"]["completion_tokens"], 12);
    assert_eq!(answer["usage"]["total_tokens"], 14);
    assert_eq!(
        answer["usage"]["completion_tokens_details"]["reasoning_tokens"],
        7
    );
}

#[tokio::test]
async fn tool_calls_come_back_with_json_arguments() {
    let (mock, sidecar) = setup().await;
    let mut body = chat("find flights to Oslo");
    body["tools"] = json!([
        {"type": "function", "function": {"name": "hotels", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "flights", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}
    ]);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "flights"}});

    let answer: Value = sidecar
        .post("/v1/chat/completions", &body)
        .await
        .json()
        .await
        .expect("json");
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "flights");
    assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")));
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("text")).expect("valid JSON");
    assert_eq!(arguments, json!({"echo": "find flights to Oslo"}));
    assert_eq!(
        mock.calls()[0].json()["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["flights"]}})
    );

    let (status, chunks, done) = stream(&sidecar, &streaming(body, false)).await;
    assert_eq!((status, done), (200, true));
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0][0]["function"]["name"], "flights");
    let streamed: Value =
        serde_json::from_str(deltas[0][0]["function"]["arguments"].as_str().expect("text")).expect("json");
    assert_eq!(streamed, arguments);
    assert_eq!(finish_reasons(&chunks), vec!["tool_calls"]);
}

#[tokio::test]
async fn a_stream_is_translated_chunk_by_chunk() {
    let (mock, sidecar) = setup().await;
    let (status, chunks, done) = stream(&sidecar, &streaming(chat("tell me a story"), true)).await;
    assert_eq!((status, done), (200, true));
    assert_eq!(
        mock.calls()[0].path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "chatcmpl-mock-stream-1")
    );
    assert_eq!(streamed_text(&chunks), "Hello from gemini: tell me a story");
    assert!(
        chunks.len() > 5,
        "one chunk per upstream event, not one at the end"
    );
    assert_eq!(finish_reasons(&chunks), vec!["stop"]);
    let usage_chunk = chunks.last().expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["prompt_tokens"], 4);
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 7);

    let (_, chunks, done) = stream(&sidecar, &streaming(chat("tell me a story"), false)).await;
    assert!(done);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage chunk unless asked"
    );
}

#[tokio::test]
async fn safety_stops_finish_with_content_filter() {
    let (_mock, sidecar) = setup().await;
    let prompt = format!("write something {SAFETY_TRIGGER} please");
    let answer: Value = sidecar
        .post("/v1/chat/completions", &chat(&prompt))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");

    let (status, chunks, done) = stream(&sidecar, &streaming(chat(&prompt), false)).await;
    assert_eq!((status, done), (200, true));
    assert_eq!(streamed_text(&chunks), "Hello from gemini:");
    assert_eq!(finish_reasons(&chunks), vec!["content_filter"]);
}

#[tokio::test]
async fn json_mode_and_several_candidates_are_translated() {
    let (mock, sidecar) = setup().await;
    let mut body = chat("give me json");
    body["n"] = json!(2);
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "answer", "strict": true,
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"], "additionalProperties": false}}});
    let answer: Value = sidecar
        .post("/v1/chat/completions", &body)
        .await
        .json()
        .await
        .expect("json");
    let choices = answer["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 2);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        let content: Value =
            serde_json::from_str(choice["message"]["content"].as_str().expect("text")).expect("JSON content");
        assert_eq!(content["answer"], "Hello from gemini: give me json");
    }
    let config = &mock.calls()[0].json()["generationConfig"];
    assert_eq!(config["candidateCount"], 2);
    assert_eq!(config["responseMimeType"], "application/json");
    assert_eq!(
        config["responseSchema"],
        json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]})
    );
}

#[tokio::test]
async fn provider_errors_map_to_openai_errors() {
    let (mock, sidecar) = setup().await;
    let cases = [
        (Behavior::RateLimit(7), 429, "rate_limit_exceeded"),
        (Behavior::ContextWindowExceeded, 400, "context_length_exceeded"),
        (Behavior::Status(500), 502, "upstream_server_error"),
        (Behavior::Status(503), 502, "upstream_server_error"),
        (Behavior::Status(403), 502, "upstream_rejected"),
        (Behavior::ContentFilter, 400, "content_filter"),
    ];
    for (behavior, status, code) in cases {
        for stream_it in [false, true] {
            mock.push([behavior.clone()]);
            let body = if stream_it {
                streaming(chat("hello"), false)
            } else {
                chat("hello")
            };
            let response = sidecar.post("/v1/chat/completions", &body).await;
            assert_eq!(response.status(), status, "{behavior:?} stream={stream_it}");
            assert_eq!(response.headers()["x-llmesh-provider"], "gemini");
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().expect("ascii").to_owned());
            let error: Value = response.json().await.expect("OpenAI error JSON");
            assert_eq!(
                error["error"]["code"], code,
                "{behavior:?} stream={stream_it}: {error}"
            );
            if behavior == Behavior::RateLimit(7) {
                assert_eq!(
                    retry_after.as_deref(),
                    Some("7"),
                    "Gemini's RetryInfo becomes Retry-After"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_stream_cut_midway_ends_with_an_error_event() {
    let (mock, sidecar) = setup().await;
    mock.push([Behavior::CutStream(2)]);
    let response = sidecar
        .post(
            "/v1/chat/completions",
            &streaming(chat("tell me a long story"), true),
        )
        .await;
    assert_eq!(response.status(), 200);
    let data = sse_data(&response.text().await.expect("body"));
    assert!(
        !data.iter().any(|d| d == "[DONE]"),
        "a cut stream must not look complete"
    );
    let last: Value = serde_json::from_str(data.last().expect("events")).expect("json");
    assert!(last["error"]["message"].is_string(), "{last}");
    let text: String = data[..data.len() - 1]
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello from", "the two pieces before the cut were forwarded");
}

#[tokio::test]
async fn embeddings_are_translated_both_ways() {
    let (mock, sidecar) = setup().await;
    let body = json!({"model": "embed", "input": ["hello world", "bye"], "dimensions": 4});
    let response = sidecar.post("/v1/embeddings", &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-llmesh-provider"], "gemini");
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["object"], "list");
    let data = answer["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert!(
        data.iter()
            .enumerate()
            .all(|(i, d)| d["index"] == i && d["embedding"].as_array().is_some_and(|v| v.len() == 4))
    );
    // Estimated at four characters a token: 11 characters → 3, 3 → 1.
    assert_eq!(answer["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));

    let call = &mock.calls()[0];
    assert_eq!(call.path, "/v1beta/models/text-embedding-004:batchEmbedContents");
    assert_eq!(call.header("x-goog-api-key"), Some(API_KEY));
    assert_eq!(
        call.json(),
        json!({"requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello world"}]}, "outputDimensionality": 4},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "bye"}]}, "outputDimensionality": 4}
        ]})
    );

    let tokens = json!({"model": "embed", "input": [[15339, 1917]]});
    let response = sidecar.post("/v1/embeddings", &tokens).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["code"], "unsupported");
    assert_eq!(mock.calls().len(), 1, "refused without calling Gemini");
}

#[tokio::test]
async fn parameters_gemini_cannot_honour_are_refused_before_calling_it() {
    let (mock, sidecar) = setup().await;
    let mut body = chat("hi");
    body["logit_bias"] = json!({"1234": -100});
    let response = sidecar.post("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("json");
    assert_eq!(error["error"]["code"], "unsupported");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("logit_bias")),
        "{error}"
    );
    assert!(mock.calls().is_empty());
}
