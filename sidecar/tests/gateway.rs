//! The gateway as an app and a platform engineer see it, independent of any
//! provider: errors at the edge, probes, models, metrics, hot reload,
//! credentials from mounted Secrets, and draining on shutdown.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use llmesh_crds::compile::{Inputs, SecretKeys};
use llmesh_crds::manifests::Manifests;
use llmesh_sidecar::Gateway;
use llmesh_sidecar::settings::{self, Settings};
use llmesh_test_support::harness::{Sidecar, provider, route};
use llmesh_test_support::openai;
use serde_json::{Value, json};

const MOCK: &str = "{provider: mock, mock: {timeToFirstToken: 1ms}}";

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("an OpenAI error body"))
}

#[tokio::test]
async fn bad_requests_get_openai_errors_naming_the_problem() {
    let yaml = [
        provider("mock", MOCK),
        route("smart", "{targets: [{provider: mock, model: m}]}"),
    ]
    .concat();
    let sidecar = Sidecar::start_with(&yaml, vec![(settings::MAX_BODY_BYTES.into(), "2000".into())]).await;

    let (status, body) = error_of(sidecar.post("/v1/chat/completions", &ask("dumb")).await).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["param"], "model");

    let bad_role = json!({"model": "smart", "messages": [{"role": "wizard", "content": "hi"}]});
    let (status, body) = error_of(sidecar.post("/v1/chat/completions", &bad_role).await).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("messages[0].role")),
        "{body}"
    );

    let huge = json!({"model": "smart", "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let (status, body) = error_of(sidecar.post("/v1/chat/completions", &huge).await).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "request_too_large");

    let (status, body) = error_of(sidecar.get("/v1/completions").await).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_url");

    let raw = llmesh_test_support::harness::http_client()
        .post(format!("{}/v1/chat/completions", sidecar.url))
        .body("{not json")
        .send()
        .await
        .expect("sent");
    let (status, body) = error_of(raw).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn models_probes_and_metrics_describe_what_is_served() {
    let yaml = [
        provider("mock", MOCK),
        route("smart", "{targets: [{provider: mock, model: m}]}"),
        route(
            "cheap-route",
            "{model: cheap, targets: [{provider: mock, model: m}]}",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;

    let models: Value = sidecar.get("/v1/models").await.json().await.expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["cheap", "smart"]);
    assert_eq!(models["data"][0]["owned_by"], "cheap-route");

    let ready = reqwest::get(format!("{}/readyz", sidecar.admin_url))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.expect("text").starts_with("ready, config "));

    assert_eq!(
        sidecar.post("/v1/chat/completions", &ask("smart")).await.status(),
        200
    );
    let metrics = sidecar.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains(r#"llmesh_requests_total{feature="",model="m",provider="mock",route="smart",status="200",team="",virtual_key=""} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"gen_ai_client_token_usage_count{feature="",gen_ai_operation_name="chat",gen_ai_provider_name="mock",gen_ai_request_model="m",gen_ai_token_type="input",route="smart",team="",virtual_key=""} 1"#));
    assert!(metrics.contains(r#"llmesh_config_reloads_total{result="applied"} 1"#));
}

#[tokio::test]
async fn a_route_with_an_unusable_field_is_refused_with_the_reason() {
    let yaml = [
        provider("mock", MOCK),
        route(
            "smart",
            "{targets: [{provider: mock, model: m}], mirror: {target: {provider: mock, model: c}, percent: 150}}",
        ),
        route("plain", "{targets: [{provider: mock, model: m}]}"),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let (status, body) = error_of(sidecar.post("/v1/chat/completions", &ask("smart")).await).await;
    assert_eq!(status, 404);
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("spec.mirror.percent: must be from 0 to 100"),
        "{message}"
    );
    assert_eq!(
        sidecar.post("/v1/chat/completions", &ask("plain")).await.status(),
        200,
        "the others still serve"
    );
}

#[tokio::test]
async fn manifest_changes_apply_live_and_broken_ones_keep_the_last_good_config() {
    let good = [
        provider("mock", MOCK),
        route("smart", "{targets: [{provider: mock, model: m1}]}"),
    ]
    .concat();
    let sidecar = Sidecar::start(&good).await;
    let model_of = |response: reqwest::Response| {
        response.headers()["x-llmesh-model"]
            .to_str()
            .expect("ascii")
            .to_owned()
    };
    assert_eq!(
        model_of(sidecar.post("/v1/chat/completions", &ask("smart")).await),
        "m1"
    );

    // A change is picked up by the watcher, without calling reload.
    let changed = [
        provider("mock", MOCK),
        route("smart", "{targets: [{provider: mock, model: m2}]}"),
    ]
    .concat();
    std::fs::write(sidecar.manifests_dir().join("manifests.yaml"), &changed).expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let model = model_of(sidecar.post("/v1/chat/completions", &ask("smart")).await);
        if model == "m2" {
            break;
        }
        assert!(Instant::now() < deadline, "the change was not applied within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Unreadable YAML: rejected whole.
    sidecar.write_manifests("kind: [unclosed");
    assert_eq!(
        model_of(sidecar.post("/v1/chat/completions", &ask("smart")).await),
        "m2"
    );
    // A now-invalid route: its last good version stays in force.
    sidecar.write_manifests(
        &[
            provider("mock", MOCK),
            route("smart", "{targets: [{provider: gone, model: m3}]}"),
        ]
        .concat(),
    );
    assert_eq!(
        model_of(sidecar.post("/v1/chat/completions", &ask("smart")).await),
        "m2"
    );

    let metrics = sidecar.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains(r#"llmesh_config_reloads_total{result="rejected"} 1"#),
        "{metrics}"
    );
}

/// The compiled config an operator would write for these manifests.
fn compiled_config(yaml: &str) -> String {
    let mut manifests = Manifests::default();
    assert!(manifests.add_yaml("test", yaml).is_empty());
    let mut secrets = SecretKeys::default();
    secrets.insert("openai-key", "apiKey");
    let compiled = llmesh_crds::compile(Inputs {
        providers: &manifests.providers,
        routes: &manifests.routes,
        keys: &manifests.keys,
        budgets: &manifests.budgets,
        secrets: &secrets,
        previous: None,
    });
    assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
    serde_json::to_string_pretty(&compiled.config).expect("json")
}

#[tokio::test]
async fn in_a_pod_config_comes_from_the_mounted_file_and_keys_from_mounted_secrets() {
    let mock = openai::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config_dir = dir.path().join("config");
    let secret_dir = dir.path().join("secrets").join("openai-key");
    std::fs::create_dir_all(&config_dir).expect("mkdir");
    std::fs::create_dir_all(&secret_dir).expect("mkdir");
    let yaml = [
        provider(
            "openai",
            &format!(
                "{{provider: openai, baseUrl: '{}/v1', secretRef: {{name: openai-key}}}}",
                mock.url()
            ),
        ),
        route("smart", "{targets: [{provider: openai, model: gpt-4o}]}"),
    ]
    .concat();
    std::fs::write(config_dir.join("config.json"), "{ not valid").expect("write");
    std::fs::write(secret_dir.join("apiKey"), "sk-first\n").expect("write");

    let env: HashMap<String, String> = [
        (
            settings::CONFIG_FILE,
            config_dir.join("config.json").display().to_string(),
        ),
        (
            settings::SECRETS_DIR,
            dir.path().join("secrets").display().to_string(),
        ),
        (settings::LISTEN_ADDR, "127.0.0.1:0".to_owned()),
        (settings::ADMIN_ADDR, "127.0.0.1:0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let gateway = Gateway::start(&Settings::from_env(&env).expect("settings"), Vec::new())
        .await
        .expect("starts");
    let url = format!("http://{}", gateway.api_addr);
    let client = llmesh_test_support::harness::http_client();

    // A broken config at start: serving, but not ready, and saying so.
    let ready = client
        .get(format!("http://{}/readyz", gateway.admin_addr))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let (status, body) = error_of(
        client
            .post(format!("{url}/v1/chat/completions"))
            .json(&ask("smart"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("not_ready")));

    // The operator writes a good config; the sidecar follows.
    std::fs::write(config_dir.join("config.json"), compiled_config(&yaml)).expect("write");
    gateway.reloader.reload();
    let response = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&ask("smart"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(mock.calls()[0].header("authorization"), Some("Bearer sk-first"));

    // The key is rotated in its Secret; no restart, no reload.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(secret_dir.join("apiKey"), "sk-second").expect("write");
    let later = std::time::SystemTime::now() + Duration::from_secs(3);
    std::fs::File::options()
        .write(true)
        .open(secret_dir.join("apiKey"))
        .and_then(|f| f.set_modified(later))
        .expect("touch");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .post(format!("{url}/v1/chat/completions"))
        .json(&ask("smart"))
        .send()
        .await
        .expect("sent");
    assert_eq!(mock.calls()[1].header("authorization"), Some("Bearer sk-second"));

    gateway.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let slow = "{provider: mock, mock: {timeToFirstToken: 10ms, perToken: 100ms}}";
    let yaml = [
        provider("mock", slow),
        route("smart", "{targets: [{provider: mock, model: m}]}"),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let mut request = ask("smart");
    request["stream"] = json!(true);
    request["messages"][0]["content"] = json!("one two three four five six seven eight");

    let response = sidecar.post("/v1/chat/completions", &request).await;
    assert_eq!(response.status(), 200);
    let url = sidecar.url.clone();
    let stop = tokio::spawn(sidecar.stop(Duration::from_secs(10)));
    let body = response.text().await.expect("the whole stream");
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    stop.await.expect("stopped");
    assert!(
        reqwest::get(format!("{url}/healthz")).await.is_err(),
        "no longer accepting"
    );
}
