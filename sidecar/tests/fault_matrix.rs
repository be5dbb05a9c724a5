//! The fault matrix: every fault a mock provider can inject, streaming and
//! not, with a fallback in the same provider family and in another one —
//! each ends in the expected status, body, headers and call counts.

use llmesh_test_support::harness::{Sidecar, provider, route, secret};
use llmesh_test_support::{Behavior, MockServer, anthropic, openai};
use serde_json::{Value, json};

const ALL_CLASSES: &str =
    "[rate-limit, server-error, timeout, connect-error, context-window-exceeded, content-filter]";

struct Setup {
    primary: MockServer,
    backup: MockServer,
    sidecar: Sidecar,
    backup_kind: &'static str,
}

/// The breaker is off: each case must see the primary fail for itself.
async fn setup(cross_family: bool) -> Setup {
    let primary = openai::start().await;
    let (backup, backup_spec, backup_kind) = if cross_family {
        let mock = anthropic::start().await;
        let spec = format!(
            "{{provider: anthropic, baseUrl: '{}', secretRef: {{name: key}}}}",
            mock.url()
        );
        (mock, spec, "anthropic")
    } else {
        let mock = openai::start().await;
        let spec = format!("{{provider: openai-compatible, baseUrl: '{}/v1'}}", mock.url());
        (mock, spec, "openai-compatible")
    };
    let yaml = [
        secret("key", "apiKey", "sk-test"),
        provider("primary", &format!("{{provider: openai, baseUrl: '{}/v1', secretRef: {{name: key}}}}", primary.url())),
        provider("backup", &backup_spec),
        route(
            "smart",
            &format!(
                "{{targets: [{{provider: primary, model: gpt-4o}}], fallbacks: [{{target: {{provider: backup, model: backup-model}}, on: {ALL_CLASSES}}}], timeouts: {{firstToken: 500ms}}, circuitBreaker: {{enabled: false}}}}"
            ),
        ),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    Setup {
        primary,
        backup,
        sidecar,
        backup_kind,
    }
}

fn request(stream: bool) -> Value {
    json!({"model": "smart", "stream": stream, "max_tokens": 100, "messages": [{"role": "user", "content": "fault matrix"}]})
}

/// The answer's text, from a JSON body or an SSE stream; and whether a stream ended cleanly.
fn text_of(body: &str, stream: bool) -> (String, bool) {
    if !stream {
        let json: Value = serde_json::from_str(body).expect("json");
        return (
            json["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            true,
        );
    }
    let data: Vec<&str> = body
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .collect();
    let text = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    (text, data.last() == Some(&"[DONE]"))
}

#[tokio::test]
async fn every_fault_before_the_first_byte_falls_back_in_and_across_families() {
    let faults = [
        Behavior::Status(500),
        Behavior::Status(503),
        Behavior::RateLimit(1),
        Behavior::Hang,
        Behavior::Reset,
        Behavior::ContextWindowExceeded,
        Behavior::ContentFilter,
    ];
    for cross_family in [false, true] {
        let setup = setup(cross_family).await;
        for stream in [false, true] {
            for fault in &faults {
                let case = format!("{fault:?} stream={stream} cross_family={cross_family}");
                let (primary_before, backup_before) =
                    (setup.primary.calls().len(), setup.backup.calls().len());
                setup.primary.push([fault.clone()]);
                let response = setup.sidecar.post("/v1/chat/completions", &request(stream)).await;
                assert_eq!(response.status(), 200, "{case}");
                let headers = response.headers().clone();
                assert_eq!(headers["x-llmesh-fallback"], "1", "{case}");
                assert_eq!(headers["x-llmesh-attempts"], "2", "{case}");
                assert_eq!(headers["x-llmesh-provider"], setup.backup_kind, "{case}");
                assert_eq!(headers["x-llmesh-model"], "backup-model", "{case}");
                let (text, clean) = text_of(&response.text().await.expect("body"), stream);
                assert!(clean, "{case}");
                assert!(text.contains("fault matrix"), "{case}: {text}");
                assert_eq!(setup.primary.calls().len() - primary_before, 1, "{case}");
                assert_eq!(setup.backup.calls().len() - backup_before, 1, "{case}");
            }
        }
    }
}

#[tokio::test]
async fn request_errors_do_not_fall_back_and_committed_streams_end_with_an_error_event() {
    for cross_family in [false, true] {
        let setup = setup(cross_family).await;

        setup.primary.push([Behavior::Status(400)]);
        let response = setup.sidecar.post("/v1/chat/completions", &request(false)).await;
        assert_eq!(response.status(), 400);
        assert_eq!(response.headers()["x-llmesh-fallback"], "0");
        assert_eq!(
            setup.backup.calls().len(),
            0,
            "a bad request is not sent elsewhere"
        );

        setup.primary.push([Behavior::CutStream(2)]);
        let response = setup.sidecar.post("/v1/chat/completions", &request(true)).await;
        assert_eq!(response.status(), 200, "committed at the first chunk");
        let body = response.text().await.expect("body");
        let (_, clean) = text_of(&body, true);
        assert!(!clean && body.contains(r#"{"error":"#), "{body}");
        assert_eq!(
            setup.backup.calls().len(),
            0,
            "nothing is retried after the first byte"
        );
    }
}
