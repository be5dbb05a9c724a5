//! Key material never leaves where it belongs: every error path a key can
//! take (unknown key, expired key, a route the key may not use, the
//! provider refusing llmesh's credential, content logging with redaction
//! off) is driven, and every log line, metric, error body, response header,
//! debug endpoint and the compiled configuration (what the operator writes
//! to the ConfigMap) is searched for any key or secret value.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use llmesh_crds::compile::{Inputs, SecretKeys};
use llmesh_crds::manifests::Manifests;
use llmesh_sidecar::access_log::AccessLines;
use llmesh_sidecar::redact::Redact;
use llmesh_test_support::harness::{Sidecar, provider, route, secret, virtual_key};
use llmesh_test_support::mock_server::Behavior;
use llmesh_test_support::openai;
use parking_lot::Mutex;
use serde_json::json;

/// Every secret value in the manifests. Each has a part no other text has.
const UPSTREAM_KEY: &str = "sk-proj-UPSTREAMxSECRETx0123456789abcdef";
const GOOD_KEY: &str = "llm-GOODxSECRETx00112233445566778899";
const EXPIRED_KEY: &str = "llm-EXPIREDxSECRETx99887766554433";
const NARROW_KEY: &str = "llm-NARROWxSECRETx5544332211009988";
const WRONG_KEY: &str = "llm-WRONGxSECRETx1122334455667788";
const SECRETS: [&str; 5] = [UPSTREAM_KEY, GOOD_KEY, EXPIRED_KEY, NARROW_KEY, WRONG_KEY];

/// Redaction off: the route logs prompts and answers as they are.
#[derive(Debug)]
struct Off;

impl Redact for Off {
    fn redact(&self, text: &str) -> String {
        text.to_owned()
    }
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn leaks(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} holds a key: {text}");
        // Not a prefix or a middle part either (a truncated key is still a leak).
        let middle = &secret[4..secret.len() - 4];
        assert!(!text.contains(middle), "{what} holds part of a key: {text}");
    }
}

#[tokio::test]
async fn no_key_or_secret_value_reaches_logs_metrics_errors_debug_endpoints_or_the_config() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .map_event_format(AccessLines)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber in this test binary");

    let mock = openai::start().await;
    let manifests = [
        secret("upstream", "apiKey", UPSTREAM_KEY),
        provider(
            "openai",
            &format!(
                "{{provider: openai, baseUrl: '{}/v1', secretRef: {{name: upstream}}}}",
                mock.url()
            ),
        ),
        route(
            "smart",
            "{targets: [{provider: openai, model: gpt-4o}], logContent: true}",
        ),
        route("other", "{targets: [{provider: openai, model: gpt-4o}]}"),
        secret("good", "key", GOOD_KEY),
        virtual_key("good", "{}"),
        secret("expired", "key", EXPIRED_KEY),
        virtual_key("expired", "{expiresAt: '2020-01-01T00:00:00Z'}"),
        secret("narrow", "key", NARROW_KEY),
        virtual_key("narrow", "{allowedRoutes: [other]}"),
    ]
    .concat();
    let sidecar = Sidecar::start_customized(&manifests, Vec::new(), |settings| {
        settings.redactor = Arc::new(Off);
    })
    .await;

    let ask = |stream: bool| json!({"model": "smart", "stream": stream, "messages": [{"role": "user", "content": "hello"}]});
    let cases = [
        (WRONG_KEY, false, 401),
        (EXPIRED_KEY, false, 401),
        (NARROW_KEY, false, 403),
        // The provider refuses llmesh's credential, complete and streamed.
        (GOOD_KEY, false, 502),
        (GOOD_KEY, true, 502),
        (GOOD_KEY, false, 200),
        (GOOD_KEY, true, 200),
    ];
    for (key, stream, status) in cases {
        if status == 502 {
            // One refusal for each of the two headers below.
            mock.push([Behavior::Status(401), Behavior::Status(401)]);
        }
        for header in [
            ("authorization", format!("Bearer {key}")),
            ("x-api-key", key.to_owned()),
        ] {
            let response = sidecar
                .post_with(
                    "/v1/chat/completions",
                    &ask(stream),
                    &[(header.0, header.1.as_str())],
                )
                .await;
            let headers = format!("{:?}", response.headers());
            assert_eq!(response.status().as_u16(), status, "{key} stream={stream}");
            leaks("response headers", &headers);
            leaks("a response body", &response.text().await.expect("body"));
        }
    }
    let anthropic =
        json!({"model": "smart", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let response = sidecar
        .post_with("/v1/messages", &anthropic, &[("x-api-key", WRONG_KEY)])
        .await;
    assert_eq!(response.status(), 401);
    leaks("an Anthropic error body", &response.text().await.expect("body"));

    // The upstream got the key it needs, so the test is not vacuous.
    assert!(
        mock.calls()
            .iter()
            .any(|c| c.header("authorization") == Some(&format!("Bearer {UPSTREAM_KEY}"))),
        "the provider saw its key"
    );

    leaks(
        "/metrics",
        &sidecar.get("/metrics").await.text().await.expect("metrics"),
    );
    leaks(
        "/v1/models",
        &sidecar.get("/v1/models").await.text().await.expect("models"),
    );
    let targets = reqwest::get(format!("{}/debug/targets", sidecar.admin_url))
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    leaks("/debug/targets", &targets);

    // What the operator would write to the ConfigMap for these resources.
    let mut parsed = Manifests::default();
    assert!(parsed.add_yaml("test", &manifests).is_empty());
    let compiled = llmesh_crds::compile(Inputs {
        providers: &parsed.providers,
        routes: &parsed.routes,
        keys: &parsed.keys,
        budgets: &parsed.budgets,
        secrets: &SecretKeys::from_secrets(&parsed.secrets),
        previous: None,
    });
    let config = serde_json::to_string(&compiled.config).expect("json");
    assert!(
        config.contains("\"good\""),
        "the keys are in it, by name: {config}"
    );
    leaks("the compiled configuration", &config);

    // Access lines are written after the responses; give them a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = String::from_utf8_lossy(&captured.0.lock()).into_owned();
    assert!(
        logs.contains("\"prompt\":\"hello\""),
        "content logging is on: {logs}"
    );
    leaks("the logs", &logs);
    sidecar.stop(Duration::from_secs(1)).await;
}
