//! The Bedrock adapter through a real sidecar against the Bedrock mock, which
//! checks every request's SigV4 signature and answers in Bedrock's wire format.

use llmesh_test_support::harness::{provider, route};
use llmesh_test_support::{Behavior, MockServer, Sidecar, bedrock};
use serde_json::{Value, json};

/// A model id with the `:` and `/` that must be percent-encoded in the path.
const PROFILE_ARN: &str = "arn:aws:bedrock:eu-central-1:123456789012:inference-profile/eu.anthropic.claude-3-5-sonnet-20240620-v1:0";
const TITAN: &str = "amazon.titan-embed-text-v2:0";
const COHERE: &str = "cohere.embed-v4:0";
/// An embeddings model of a family llmesh does not speak to.
const NOVA_EMBED: &str = "amazon.nova-2-multimodal-embeddings-v1:0";

/// A Secret holding AWS keys, optionally with a session token.
fn aws_secret(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> String {
    let token = session_token
        .map(|t| format!(", sessionToken: \"{t}\""))
        .unwrap_or_default();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: aws}}\nstringData: {{accessKeyId: \"{access_key_id}\", secretAccessKey: \"{secret_access_key}\"{token}}}\n"
    )
}

fn manifests(mock: &MockServer, secret: &str, secret_ref: &str) -> String {
    let spec = format!(
        "{{provider: bedrock, region: {}, baseUrl: \"{}\", secretRef: {secret_ref}}}",
        bedrock::REGION,
        mock.url()
    );
    [
        secret.to_owned(),
        provider("bedrock-main", &spec),
        route(
            "smart",
            &format!("{{targets: [{{provider: bedrock-main, model: \"{PROFILE_ARN}\"}}]}}"),
        ),
        route(
            "embed",
            &format!("{{targets: [{{provider: bedrock-main, model: \"{TITAN}\"}}]}}"),
        ),
        route(
            "cohere-embed",
            &format!("{{targets: [{{provider: bedrock-main, model: \"{COHERE}\"}}]}}"),
        ),
        route(
            "nova-embed",
            &format!("{{targets: [{{provider: bedrock-main, model: \"{NOVA_EMBED}\"}}]}}"),
        ),
    ]
    .concat()
}

async fn start() -> (MockServer, Sidecar) {
    let mock = bedrock::start().await;
    let secret = aws_secret(bedrock::ACCESS_KEY_ID, bedrock::SECRET_ACCESS_KEY, None);
    let sidecar = Sidecar::start(&manifests(&mock, &secret, "{name: aws}")).await;
    (mock, sidecar)
}

async fn chat(sidecar: &Sidecar, body: Value) -> (u16, Value) {
    let response = sidecar.post("/v1/chat/completions", &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// The `data:` payloads of an SSE body.
async fn sse(sidecar: &Sidecar, body: Value) -> Vec<String> {
    let response = sidecar.post("/v1/chat/completions", &body).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("an SSE body");
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn parse_chunks(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("JSON chunk"))
        .collect()
}

#[tokio::test]
async fn a_conversation_is_signed_translated_and_answered_in_openai_shape() {
    let (mock, sidecar) = start().await;
    let response = sidecar
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "smart",
                "messages": [
                    {"role": "system", "content": "You are a weather bot."},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Weather where this photo was taken?"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}}
                    ]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "tooluse_a", "type": "function", "function": {"name": "locate", "arguments": "{\"photo\":1}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "tooluse_a", "content": "{\"city\":\"Lyon\"}"},
                    {"role": "user", "content": "And tomorrow?"}
                ],
                "tools": [
                    {"type": "function", "function": {"name": "forecast", "description": "Weather forecast",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                    {"type": "function", "function": {"name": "locate", "parameters": {"type": "object"}}}
                ],
                "tool_choice": "required",
                "max_completion_tokens": 200, "temperature": 0.3, "top_p": 0.8, "stop": ["###"]
            }),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("x-llmesh-provider")
            .and_then(|v| v.to_str().ok()),
        Some("bedrock")
    );
    let answer: Value = response.json().await.expect("JSON");

    let calls = mock.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(
        call.path,
        "/model/arn%3Aaws%3Abedrock%3Aeu-central-1%3A123456789012%3Ainference-profile%2Feu.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    let authorization = call.header("authorization").expect("signed");
    assert!(
        authorization.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={}/",
            bedrock::ACCESS_KEY_ID
        )),
        "{authorization}"
    );
    assert!(
        authorization.contains(&format!("/{}/bedrock/aws4_request", bedrock::REGION)),
        "{authorization}"
    );
    assert_eq!(call.header("x-amz-security-token"), None);
    let sent = call.json();
    assert_eq!(sent["system"], json!([{"text": "You are a weather bot."}]));
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": [
                {"text": "Weather where this photo was taken?"},
                {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQSkZJRg=="}}}
            ]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_a", "name": "locate", "input": {"photo": 1}}}]},
            {"role": "user", "content": [
                {"toolResult": {"toolUseId": "tooluse_a", "content": [{"json": {"city": "Lyon"}}]}},
                {"text": "And tomorrow?"}
            ]}
        ])
    );
    assert_eq!(sent["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(
        sent["toolConfig"]["tools"][0],
        json!({"toolSpec": {"name": "forecast", "description": "Weather forecast",
        "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}}}})
    );
    assert_eq!(
        sent["inferenceConfig"],
        json!({"maxTokens": 200, "temperature": 0.3, "topP": 0.8, "stopSequences": ["###"]})
    );

    let choice = &answer["choices"][0];
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "forecast");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("text")).expect("JSON");
    assert_eq!(arguments, json!({"echo": "And tomorrow?"}));
}

#[tokio::test]
async fn a_text_answer_counts_cached_input_as_prompt_tokens() {
    let (_mock, sidecar) = start().await;
    let (status, answer) = chat(&sidecar, json!({
        "model": "smart",
        "messages": [{"role": "system", "content": "Answer in four words"}, {"role": "user", "content": "Say hello"}]
    }))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from bedrock: Say hello"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    // 2 fresh input tokens + 4 read from the cache (the mock caches the system prompt).
    assert_eq!(answer["usage"]["prompt_tokens"], 6);
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert_eq!(answer["usage"]["total_tokens"], 11);

    let (_, short) = chat(
        &sidecar,
        json!({"model": "smart", "max_tokens": 2, "messages": [{"role": "user", "content": "Say hello"}]}),
    )
    .await;
    assert_eq!(short["choices"][0]["finish_reason"], "length");
    assert_eq!(short["choices"][0]["message"]["content"], "Hello from");
}

#[tokio::test]
async fn a_wrong_secret_key_is_a_502_that_says_why() {
    let mock = bedrock::start().await;
    let secret = aws_secret(bedrock::ACCESS_KEY_ID, "not-the-right-secret-key", None);
    let sidecar = Sidecar::start(&manifests(&mock, &secret, "{name: aws}")).await;
    let (status, answer) = chat(
        &sidecar,
        json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 502);
    let message = answer["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("signature we calculated does not match"),
        "{message}"
    );
    assert!(!message.contains("not-the-right-secret-key"), "{message}");
    assert_eq!(answer["error"]["code"], "upstream_rejected");
    assert!(mock.calls().is_empty(), "the mock refuses before answering");
}

#[tokio::test]
async fn temporary_credentials_are_signed_with_their_session_token() {
    let mock = bedrock::start().await;
    let secret = aws_secret(
        bedrock::TEMPORARY_ACCESS_KEY_ID,
        bedrock::TEMPORARY_SECRET_ACCESS_KEY,
        Some(bedrock::SESSION_TOKEN),
    );
    let sidecar = Sidecar::start(&manifests(
        &mock,
        &secret,
        "{name: aws, sessionTokenKey: sessionToken}",
    ))
    .await;
    let (status, answer) = chat(
        &sidecar,
        json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let calls = mock.calls();
    assert_eq!(
        calls[0].header("x-amz-security-token"),
        Some(bedrock::SESSION_TOKEN)
    );
    assert!(
        calls[0]
            .header("authorization")
            .is_some_and(|a| a.contains("x-amz-security-token"))
    );
}

#[tokio::test]
async fn a_stream_reassembles_text_and_reports_usage_when_asked() {
    let (mock, sidecar) = start().await;
    let events = sse(&sidecar, json!({
        "model": "smart", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": "Be nice"}, {"role": "user", "content": "Tell me a story"}]
    }))
    .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(mock.calls()[0].path.ends_with("/converse-stream"));
    let chunks = parse_chunks(&events);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from bedrock: Tell me a story");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0].get("finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let usage = &chunks.last().expect("a usage chunk")["usage"];
    assert_eq!(usage["prompt_tokens"], 6);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 2);
    assert_eq!(usage["completion_tokens"], 7);

    let without_usage = sse(
        &sidecar,
        json!({"model": "smart", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert!(
        parse_chunks(&without_usage)
            .iter()
            .all(|c| c.get("usage").is_none())
    );
}

#[tokio::test]
async fn a_streamed_tool_call_reassembles_into_valid_json_arguments() {
    let (_mock, sidecar) = start().await;
    let events = sse(
        &sidecar,
        json!({
            "model": "smart", "stream": true,
            "messages": [{"role": "user", "content": "Forecast for Oslo"}],
            "tools": [{"type": "function", "function": {"name": "forecast",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
        }),
    )
    .await;
    let chunks = parse_chunks(&events);
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["id"], "tooluse_mock_1");
    assert_eq!(calls[0]["function"]["name"], "forecast");
    assert!(calls.iter().all(|c| c["index"] == 0));
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).expect("JSON"),
        json!({"echo": "Forecast for Oslo"})
    );
    let last_choice = chunks
        .iter()
        .rev()
        .find(|c| !c["choices"].as_array().is_none_or(Vec::is_empty))
        .expect("a choice");
    assert_eq!(last_choice["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn an_exception_mid_stream_ends_with_an_error_event_and_no_done() {
    let (_mock, sidecar) = start().await;
    let prompt = format!(
        "Write a poem {}",
        bedrock::exception_marker("throttlingException")
    );
    let events = sse(
        &sidecar,
        json!({"model": "smart", "stream": true, "messages": [{"role": "user", "content": prompt}]}),
    )
    .await;
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("JSON");
    assert_eq!(last["error"]["code"], "rate_limit_exceeded", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("throttlingException")),
        "{last}"
    );
    let text: String = parse_chunks(&events[..events.len() - 1])
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from");
}

#[tokio::test]
async fn bedrock_errors_become_the_statuses_apps_expect() {
    let (mock, sidecar) = start().await;
    let hello = json!({"model": "smart", "messages": [{"role": "user", "content": "hi"}]});

    mock.push([Behavior::RateLimit(1)]);
    let (status, answer) = chat(&sidecar, hello.clone()).await;
    assert_eq!(status, 429, "{answer}");

    mock.push([Behavior::ContextWindowExceeded]);
    let (status, answer) = chat(&sidecar, hello.clone()).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["code"], "context_length_exceeded", "{answer}");

    mock.push([Behavior::Status(503)]);
    let (status, _) = chat(&sidecar, hello.clone()).await;
    assert_eq!(status, 502);

    mock.push([Behavior::ContentFilter]);
    let (status, answer) = chat(&sidecar, hello.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["choices"][0]["finish_reason"], "content_filter");

    let calls_before = mock.calls().len();
    let (status, answer) = chat(
        &sidecar,
        json!({"model": "smart", "seed": 42, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("seed")),
        "{answer}"
    );
    assert_eq!(mock.calls().len(), calls_before, "refused before calling Bedrock");
}

#[tokio::test]
async fn response_format_json_schema_comes_back_as_json_content() {
    let (mock, sidecar) = start().await;
    let (status, answer) = chat(
        &sidecar,
        json!({
            "model": "smart",
            "messages": [{"role": "user", "content": "Name a colour"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "colour",
                "schema": {"type": "object", "properties": {"echo": {"type": "string"}}}}}
        }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none());
    let content: Value =
        serde_json::from_str(choice["message"]["content"].as_str().expect("text")).expect("JSON content");
    assert_eq!(content, json!({"echo": "Name a colour"}));
    assert_eq!(
        mock.calls()[0].json()["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "json_response"}})
    );
}

#[tokio::test]
async fn titan_embeddings_are_one_call_per_input() {
    let (mock, sidecar) = start().await;
    let response = sidecar
        .post(
            "/v1/embeddings",
            &json!({"model": "embed", "input": ["first text", "the second text"], "dimensions": 256}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["object"], "list");
    let data = answer["data"].as_array().expect("vectors");
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert!(
        data.iter()
            .all(|d| d["embedding"].as_array().map(Vec::len) == Some(256))
    );
    assert_eq!(answer["usage"]["prompt_tokens"], 5);
    let calls = mock.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].path, "/model/amazon.titan-embed-text-v2%3A0/invoke");
    assert_eq!(
        calls[1].json(),
        json!({"inputText": "the second text", "dimensions": 256})
    );
}

/// The message and finish reason of an answer, streamed or not, put together
/// as an app does: content concatenated, tool-call arguments by index.
async fn answer_of(sidecar: &Sidecar, mut body: Value, stream: bool) -> (Value, String) {
    if !stream {
        let (status, answer) = chat(sidecar, body).await;
        assert_eq!(status, 200, "{answer}");
        let choice = &answer["choices"][0];
        let finish = choice["finish_reason"].as_str().expect("a finish reason");
        return (choice["message"].clone(), finish.to_owned());
    }
    body["stream"] = json!(true);
    let chunks = parse_chunks(&sse(sidecar, body).await);
    let mut content = String::new();
    let mut calls: Vec<Value> = Vec::new();
    let mut finish = String::new();
    for choice in chunks.iter().filter_map(|c| c["choices"].get(0)) {
        let delta = &choice["delta"];
        content.push_str(delta["content"].as_str().unwrap_or_default());
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"]
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .expect("an index");
            if calls.len() <= index {
                calls.resize(index + 1, json!({"function": {"name": "", "arguments": ""}}));
            }
            let function = &call["function"];
            let mut arguments = calls[index]["function"]["arguments"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            arguments.push_str(function["arguments"].as_str().unwrap_or_default());
            calls[index]["function"]["arguments"] = json!(arguments);
            if let Some(name) = function["name"].as_str() {
                calls[index]["function"]["name"] = json!(name);
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.to_owned();
        }
    }
    let message =
        json!({"content": content, "tool_calls": if calls.is_empty() { Value::Null } else { json!(calls) }});
    (message, finish)
}

/// The content blocks of every turn of the last Converse request.
fn sent_blocks(mock: &MockServer) -> Vec<Value> {
    let calls = mock.calls();
    let sent = calls.last().expect("a call").json();
    sent["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_tool_without_parameters_is_called_with_empty_json_arguments() {
    let (_mock, sidecar) = start().await;
    let request = json!({
        "model": "smart",
        "messages": [{"role": "user", "content": "What time is it?"}],
        "tools": [{"type": "function", "function": {"name": "current_time",
            "parameters": {"type": "object", "properties": {}}}}]
    });
    for stream in [false, true] {
        let (message, finish) = answer_of(&sidecar, request.clone(), stream).await;
        assert_eq!(finish, "tool_calls", "stream: {stream}");
        let call = &message["tool_calls"][0]["function"];
        assert_eq!(call["name"], "current_time");
        assert_eq!(call["arguments"], "{}", "stream: {stream}");
    }
}

/// A finished tool round: the question, the model's call, the tool's answer.
fn tool_round(result: &str) -> Vec<Value> {
    vec![
        json!({"role": "user", "content": "How warm is it in Oslo?"}),
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "tooluse_w1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}
        ]}),
        json!({"role": "tool", "tool_call_id": "tooluse_w1", "content": result}),
    ]
}

#[tokio::test]
async fn a_tool_history_with_no_tool_on_offer_gets_a_prose_answer() {
    let (mock, sidecar) = start().await;
    let weather = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let mut no_tools = json!({"model": "smart", "messages": tool_round("{\"celsius\":21}")});
    no_tools["messages"]
        .as_array_mut()
        .expect("messages")
        .push(json!({"role": "user", "content": "Now answer in prose."}));
    let mut tool_choice_none = no_tools.clone();
    tool_choice_none["tools"] = weather;
    tool_choice_none["tool_choice"] = json!("none");
    for (request, case) in [(no_tools, "no tools"), (tool_choice_none, "tool_choice none")] {
        for stream in [false, true] {
            let (message, finish) = answer_of(&sidecar, request.clone(), stream).await;
            assert_eq!(finish, "stop", "{case}, stream: {stream}");
            assert!(message["tool_calls"].is_null(), "{case}: {message}");
            assert_eq!(
                message["content"],
                "Hello from bedrock: [Result of tool weather (call id tooluse_w1): {\"celsius\":21}] Now answer in prose.",
                "{case}, stream: {stream}"
            );
            let sent = mock.calls().last().expect("a call").json();
            assert_eq!(sent.get("toolConfig"), None, "{case}");
            assert_eq!(
                sent_blocks(&mock)[1],
                json!({"text": "[Called tool weather with {\"city\":\"Oslo\"} (call id tooluse_w1)]"})
            );
        }
    }
}

#[tokio::test]
async fn an_empty_tool_result_reaches_bedrock_as_a_readable_placeholder() {
    let (mock, sidecar) = start().await;
    let request = json!({
        "model": "smart",
        "messages": tool_round(""),
        "tools": [{"type": "function", "function": {"name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    });
    for stream in [false, true] {
        let (message, finish) = answer_of(&sidecar, request.clone(), stream).await;
        assert_eq!(finish, "stop", "stream: {stream}");
        assert!(
            message["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("Hello from bedrock")),
            "stream: {stream}: {message}"
        );
        assert_eq!(
            sent_blocks(&mock)[2],
            json!({"toolResult": {"toolUseId": "tooluse_w1", "content": [{"text": "(the tool returned no output)"}]}})
        );
    }
}

#[tokio::test]
async fn cohere_embeddings_go_in_batches_with_an_input_type() {
    let (mock, sidecar) = start().await;
    let texts: Vec<String> = (0..100).map(|i| format!("text number {i}")).collect();
    let response = sidecar
        .post(
            "/v1/embeddings",
            &json!({"model": "cohere-embed", "input": texts, "dimensions": 256, "input_type": "search_query"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("JSON");
    let data = answer["data"].as_array().expect("vectors");
    assert_eq!(data.len(), 100);
    assert_eq!(data[99]["index"], 99);
    assert!(
        data.iter()
            .all(|d| d["embedding"].as_array().map(Vec::len) == Some(256))
    );
    // Three words a text, from Bedrock's token-count header.
    assert_eq!(answer["usage"]["prompt_tokens"], 300);
    let calls = mock.calls();
    assert_eq!(calls.len(), 2, "96 texts, then 4");
    assert_eq!(calls[0].path, "/model/cohere.embed-v4%3A0/invoke");
    let last = calls[1].json();
    assert_eq!(
        last,
        json!({"texts": ["text number 96", "text number 97", "text number 98", "text number 99"],
            "input_type": "search_query", "embedding_types": ["float"], "output_dimension": 256})
    );

    let (_, one) = chat_at(
        &sidecar,
        "/v1/embeddings",
        json!({"model": "cohere-embed", "input": "hello"}),
    )
    .await;
    assert_eq!(mock.calls()[2].json()["input_type"], "search_document");
    assert_eq!(one["data"][0]["embedding"].as_array().map(Vec::len), Some(1536));
}

#[tokio::test]
async fn an_embeddings_model_of_another_family_is_refused_before_any_call() {
    let (mock, sidecar) = start().await;
    let (status, answer) = chat_at(
        &sidecar,
        "/v1/embeddings",
        json!({"model": "nova-embed", "input": "hello"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "unsupported");
    let message = answer["error"]["message"].as_str().expect("a message");
    assert!(
        message.contains("amazon.titan-embed") && message.contains("cohere.embed"),
        "{message}"
    );
    assert!(mock.calls().is_empty());
}

async fn chat_at(sidecar: &Sidecar, path: &str, body: Value) -> (u16, Value) {
    let response = sidecar.post(path, &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}
