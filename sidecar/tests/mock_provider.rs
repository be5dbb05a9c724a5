//! The built-in mock provider, as used in demos and fallback drills:
//! deterministic answers, configurable latency, and every injectable fault.

use std::time::{Duration, Instant};

use llmesh_test_support::harness::{Sidecar, provider, route};
use serde_json::{Value, json};

async fn mock_sidecar(mock_settings: &str, route_spec: &str) -> Sidecar {
    let yaml = [
        provider("mock", &format!("{{provider: mock, mock: {mock_settings}}}")),
        route("demo", route_spec),
    ]
    .concat();
    Sidecar::start(&yaml).await
}

const ROUTE: &str = "{targets: [{provider: mock, model: mock-1}]}";

fn ask(stream: bool) -> Value {
    json!({"model": "demo", "stream": stream, "messages": [{"role": "user", "content": "ping the mock"}]})
}

#[tokio::test]
async fn answers_are_deterministic_and_shaped_by_the_request() {
    let sidecar = mock_sidecar("{}", ROUTE).await;
    let plain: Value = sidecar
        .post("/v1/chat/completions", &ask(false))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        plain["choices"][0]["message"]["content"],
        "Mock reply to: ping the mock"
    );
    assert_eq!(
        plain["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9})
    );

    let mut limited = ask(false);
    limited["max_tokens"] = json!(2);
    let body: Value = sidecar
        .post("/v1/chat/completions", &limited)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["choices"][0]["message"]["content"], "Mock reply");
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let mut json_mode = ask(false);
    json_mode["response_format"] = json!({"type": "json_object"});
    let body: Value = sidecar
        .post("/v1/chat/completions", &json_mode)
        .await
        .json()
        .await
        .expect("json");
    let content: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().expect("text"))
            .expect("JSON content");
    assert_eq!(content["reply"], "Mock reply to: ping the mock");

    let mut tools = ask(false);
    tools["tools"] =
        json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let body: Value = sidecar
        .post("/v1/chat/completions", &tools)
        .await
        .json()
        .await
        .expect("json");
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("text")).expect("JSON");
    assert_eq!(arguments["input"], "ping the mock");
}

#[tokio::test]
async fn latency_settings_shape_time_to_first_token_and_stream_pacing() {
    let sidecar = mock_sidecar("{timeToFirstToken: 200ms, perToken: 50ms}", ROUTE).await;
    let started = Instant::now();
    let mut response = sidecar.post("/v1/chat/completions", &ask(true)).await;
    let first = response.chunk().await.expect("read").expect("a first chunk");
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    assert!(
        first_at >= Duration::from_millis(200),
        "first chunk after {first_at:?}"
    );
    while response.chunk().await.expect("read").is_some() {}
    let total = started.elapsed();
    // Six words: five pauses between them.
    assert!(total >= Duration::from_millis(400), "whole stream took {total:?}");
    assert!(total < Duration::from_secs(3), "whole stream took {total:?}");
}

#[tokio::test]
async fn every_injectable_fault_ends_in_the_error_an_app_expects() {
    let cases = [
        (
            "{faults: [{kind: status, status: 503}]}",
            false,
            502,
            "upstream_server_error",
        ),
        (
            "{faults: [{kind: status, status: 400}]}",
            false,
            400,
            "upstream_bad_request",
        ),
        (
            "{faults: [{kind: rate-limit, retryAfterSeconds: 3}]}",
            false,
            429,
            "rate_limit_exceeded",
        ),
        ("{faults: [{kind: reset}]}", true, 502, "upstream_connect_error"),
        (
            "{faults: [{kind: truncate}]}",
            false,
            502,
            "upstream_broken_answer",
        ),
    ];
    for (settings, stream, status, code) in cases {
        let sidecar = mock_sidecar(settings, ROUTE).await;
        let response = sidecar.post("/v1/chat/completions", &ask(stream)).await;
        assert_eq!(response.status().as_u16(), status, "{settings}");
        if status == 429 {
            assert_eq!(response.headers()["retry-after"], "3");
        }
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], code, "{settings}");
    }
}

#[tokio::test]
async fn a_truncated_stream_ends_with_an_error_event_after_the_chunks_it_sent() {
    let sidecar = mock_sidecar("{faults: [{kind: truncate, afterChunks: 2}]}", ROUTE).await;
    let response = sidecar.post("/v1/chat/completions", &ask(true)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("body");
    let data: Vec<&str> = body
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .collect();
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Mock reply");
    let last: Value = serde_json::from_str(data.last().expect("event")).expect("json");
    assert_eq!(last["error"]["code"], "upstream_broken_answer");
    assert!(!body.contains("[DONE]"));
}

#[tokio::test]
async fn a_hang_is_ended_by_the_route_timeout() {
    let sidecar = mock_sidecar(
        "{faults: [{kind: hang}]}",
        "{targets: [{provider: mock, model: m, timeout: 250ms}]}",
    )
    .await;
    let started = Instant::now();
    let response = sidecar.post("/v1/chat/completions", &ask(false)).await;
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_target_idle_timeout_cuts_a_stream_that_goes_quiet_between_chunks() {
    // The route allows any silence; the target does not.
    let sidecar = mock_sidecar(
        "{perToken: 400ms}",
        "{targets: [{provider: mock, model: m, idleTimeout: 100ms}]}",
    )
    .await;
    let started = Instant::now();
    let response = sidecar.post("/v1/chat/completions", &ask(true)).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.expect("body");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut early, not after the whole answer"
    );
    let last = body
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .last()
        .expect("an event");
    let last: Value = serde_json::from_str(last).expect("an error event");
    assert_eq!(last["error"]["code"], "upstream_timeout", "{body}");
    assert!(!body.contains("[DONE]"));
}

#[tokio::test]
async fn faults_hit_about_the_configured_share_of_requests() {
    // The breaker is off: with it, a run of failures would shed the target
    // and every later request would fail, hiding the fault rate.
    let sidecar = mock_sidecar(
        "{faults: [{kind: status, status: 500, rate: 0.3}]}",
        "{targets: [{provider: mock, model: mock-1}], circuitBreaker: {enabled: false}}",
    )
    .await;
    let mut failed = 0;
    for _ in 0..400 {
        if sidecar.post("/v1/chat/completions", &ask(false)).await.status() == 502 {
            failed += 1;
        }
    }
    // Binomial(400, 0.3): mean 120, standard deviation about 9; ±40 is over 4 sigma.
    assert!((80..=160).contains(&failed), "{failed} of 400 failed");
}

#[tokio::test]
async fn embeddings_of_similar_texts_are_similar() {
    let sidecar = mock_sidecar("{}", ROUTE).await;
    let body: Value = sidecar
        .post(
            "/v1/embeddings",
            &json!({"model": "demo", "input": ["How do I reset my password?", "how do i reset my password", "Weather in Paris tomorrow"]}),
        )
        .await
        .json()
        .await
        .expect("json");
    let vector = |i: usize| -> Vec<f64> {
        body["data"][i]["embedding"]
            .as_array()
            .expect("vector")
            .iter()
            .filter_map(Value::as_f64)
            .collect()
    };
    let cosine = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(cosine(&vector(0), &vector(1)) > 0.99);
    assert!(cosine(&vector(0), &vector(2)) < 0.5);
}
