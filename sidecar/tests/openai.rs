//! OpenAI, Azure OpenAI and OpenAI-compatible upstreams through a real
//! sidecar: what the upstream receives, and what the app gets back.

use llmesh_test_support::harness::{Sidecar, provider, route, secret};
use llmesh_test_support::{Behavior, MockServer, openai};
use serde_json::{Value, json};

async fn openai_sidecar(mock: &MockServer, route_spec: &str) -> Sidecar {
    let yaml = [
        secret("openai-key", "apiKey", "sk-test-123"),
        provider(
            "openai",
            &format!("{{provider: openai, baseUrl: '{}/v1', secretRef: {{name: openai-key}}, headers: {{OpenAI-Organization: org-llmesh}}}}", mock.url()),
        ),
        route("smart", route_spec),
    ]
    .concat();
    Sidecar::start(&yaml).await
}

fn chat(stream: bool) -> Value {
    json!({
        "model": "smart",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is llmesh?"}],
        "temperature": 0.2,
        "stream": stream,
        "logit_bias": {"50256": -100},
    })
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|frame| frame.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_chat_request_reaches_openai_as_the_app_sent_it_with_the_route_model() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(&mock, "{targets: [{provider: openai, model: gpt-4o-mini}]}").await;

    let response = sidecar.post("/v1/chat/completions", &chat(false)).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-llmesh-route"], "smart");
    assert_eq!(headers["x-llmesh-provider"], "openai");
    assert_eq!(headers["x-llmesh-model"], "gpt-4o-mini");
    assert_eq!(headers["x-llmesh-attempts"], "1");
    assert_eq!(headers["x-llmesh-request-id"].len(), 32);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from openai: What is llmesh?"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    let calls = mock.calls();
    assert_eq!(calls.len(), 1);
    let sent = calls[0].json();
    assert_eq!(sent["model"], "gpt-4o-mini");
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(
        sent["logit_bias"],
        json!({"50256": -100}),
        "unknown fields pass through"
    );
    assert_eq!(calls[0].header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(calls[0].header("openai-organization"), Some("org-llmesh"));
}

#[tokio::test]
async fn a_stream_is_relayed_chunk_by_chunk_and_usage_is_requested_upstream() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(&mock, "{targets: [{provider: openai, model: gpt-4o-mini}]}").await;

    let response = sidecar.post("/v1/chat/completions", &chat(true)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = response.text().await.expect("body");
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from openai: What is llmesh?");
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none_or(Value::is_null)),
        "the app did not ask for usage"
    );

    let sent = mock.calls()[0].json();
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "llmesh asks for usage to count it"
    );

    let mut with_usage = chat(true);
    with_usage["stream_options"] = json!({"include_usage": true});
    let body = sidecar
        .post("/v1/chat/completions", &with_usage)
        .await
        .text()
        .await
        .expect("body");
    let data = sse_data(&body);
    let last: Value = serde_json::from_str(&data[data.len() - 2]).expect("usage chunk");
    assert_eq!(last["usage"]["completion_tokens"], 6);
}

#[tokio::test]
async fn upstream_failures_become_openai_errors_with_the_expected_status() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(&mock, "{targets: [{provider: openai, model: gpt-4o-mini}]}").await;
    let cases: &[(Behavior, u16, &str)] = &[
        (Behavior::Status(500), 502, "upstream_server_error"),
        (Behavior::Status(503), 502, "upstream_server_error"),
        (Behavior::Status(401), 502, "upstream_rejected"),
        (Behavior::RateLimit(7), 429, "rate_limit_exceeded"),
        (Behavior::ContextWindowExceeded, 400, "context_length_exceeded"),
        (Behavior::ContentFilter, 400, "content_filter"),
        // The mock answers 200 and then drops the connection: a broken answer.
        (Behavior::Reset, 502, "upstream_broken_answer"),
    ];
    for (behavior, status, code) in cases {
        mock.push([behavior.clone()]);
        let response = sidecar.post("/v1/chat/completions", &chat(false)).await;
        assert_eq!(response.status(), *status, "{behavior:?}");
        if *status == 429 {
            assert_eq!(response.headers()["retry-after"], "7");
        }
        assert_eq!(response.headers()["x-llmesh-provider"], "openai");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], *code, "{behavior:?}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("provider openai: ")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_not_a_silent_end() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(&mock, "{targets: [{provider: openai, model: gpt-4o-mini}]}").await;
    mock.push([Behavior::CutStream(2)]);

    let response = sidecar.post("/v1/chat/completions", &chat(true)).await;
    assert_eq!(response.status(), 200, "the first chunk was already committed");
    let data = sse_data(&response.text().await.expect("body"));
    assert!(data.len() >= 2, "{data:?}");
    let last: Value = serde_json::from_str(data.last().expect("an event")).expect("json");
    assert!(last["error"]["message"].as_str().is_some(), "{last}");
    assert!(!data.iter().any(|d| d == "[DONE]"));
    // The answer began and broke off: said so, not "could not connect".
    assert_eq!(last["error"]["code"], "upstream_broken_answer", "{last}");
    // A committed stream's failure is the request's error type, not a failed attempt.
    let metrics = sidecar.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gen_ai_server_request_duration_count{")
                && l.contains(r#"error_type="broken-answer""#)),
        "{metrics}"
    );
    assert!(!metrics.contains("connect-error"), "{metrics}");
}

#[tokio::test]
async fn a_silent_upstream_is_cut_off_by_the_first_token_timeout() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(
        &mock,
        "{targets: [{provider: openai, model: gpt-4o-mini}], timeouts: {firstToken: 300ms}}",
    )
    .await;
    mock.push([Behavior::Hang, Behavior::Hang]);

    for stream in [false, true] {
        let started = std::time::Instant::now();
        let response = sidecar.post("/v1/chat/completions", &chat(stream)).await;
        assert_eq!(response.status(), 504, "stream={stream}");
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "upstream_timeout");
    }
}

#[tokio::test]
async fn embeddings_pass_through() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(
        &mock,
        "{targets: [{provider: openai, model: text-embedding-3-small}]}",
    )
    .await;
    let response = sidecar
        .post(
            "/v1/embeddings",
            &json!({"model": "smart", "input": ["one two", "three"], "dimensions": 8}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let sent = mock.calls()[0].json();
    assert_eq!(sent["model"], "text-embedding-3-small");
    assert_eq!(sent["dimensions"], 8);
}

#[tokio::test]
async fn azure_is_addressed_by_deployment_and_api_version_with_an_api_key_header() {
    let mock = openai::start().await;
    let yaml = [
        secret("azure-key", "apiKey", "azure-secret"),
        provider(
            "azure",
            &format!(
                "{{provider: azure-openai, baseUrl: '{}', secretRef: {{name: azure-key}}, azure: {{apiVersion: 2024-10-21, deployments: {{gpt-4o: prod-gpt4o}}}}}}",
                mock.url()
            ),
        ),
        route("smart", "{targets: [{provider: azure, model: gpt-4o}]}"),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;

    let response = sidecar.post("/v1/chat/completions", &chat(false)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-llmesh-provider"], "azure-openai");
    let call = &mock.calls()[0];
    assert_eq!(
        call.path,
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(call.header("api-key"), Some("azure-secret"));
    assert_eq!(call.header("authorization"), None);
}

#[tokio::test]
async fn an_openai_compatible_server_without_a_key_gets_no_authorization_header() {
    let mock = openai::start().await;
    let yaml = [
        provider(
            "vllm",
            &format!("{{provider: openai-compatible, baseUrl: '{}/v1'}}", mock.url()),
        ),
        route(
            "local",
            "{targets: [{provider: vllm, model: meta-llama/Llama-3.1-8B-Instruct}]}",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let mut request = chat(false);
    request["model"] = json!("local");
    let response = sidecar.post("/v1/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-llmesh-provider"], "openai-compatible");
    let call = &mock.calls()[0];
    assert_eq!(call.header("authorization"), None);
    assert_eq!(call.json()["model"], "meta-llama/Llama-3.1-8B-Instruct");
}
