//! Virtual keys through a real sidecar: who may call, with which header,
//! and what an app is told when it may not.

use llmesh_sidecar::settings;
use llmesh_test_support::harness::{Sidecar, provider, route, secret, virtual_key};
use serde_json::{Value, json};

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

fn manifests() -> String {
    [
        provider("mock", "{provider: mock}"),
        route("smart", "{targets: [{provider: mock, model: big}]}"),
        route("cheap", "{targets: [{provider: mock, model: small}]}"),
        secret("team-a", "key", "sk-team-a"),
        secret("narrow", "key", "sk-narrow"),
        secret("off", "key", "sk-off"),
        secret("old", "key", "sk-old"),
        virtual_key("team-a", "{team: a, feature: chat}"),
        virtual_key("narrow", "{allowedRoutes: [cheap]}"),
        virtual_key("off", "{disabled: true}"),
        virtual_key("old", "{expiresAt: '2020-01-01T00:00:00Z'}"),
    ]
    .concat()
}

async fn refusal(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
    let message = body["error"]["message"].as_str().unwrap_or_default().to_owned();
    (status, code, message)
}

#[tokio::test]
async fn keys_are_taken_from_each_header_convention() {
    let sidecar = Sidecar::start(&manifests()).await;
    for header in [
        ("authorization", "Bearer sk-team-a"),
        ("x-api-key", "sk-team-a"),
        ("api-key", "sk-team-a"),
    ] {
        let response = sidecar
            .post_with("/v1/chat/completions", &ask("smart"), &[header])
            .await;
        assert_eq!(response.status(), 200, "{header:?}");
    }
}

#[tokio::test]
async fn refused_keys_are_told_why() {
    let sidecar = Sidecar::start(&manifests()).await;
    let cases = [
        (None, 401, "invalid_api_key", "no API key"),
        (
            Some("Bearer sk-wrong"),
            401,
            "invalid_api_key",
            "not a virtual key",
        ),
        (
            Some("Bearer sk-off"),
            401,
            "key_disabled",
            "virtual key off is disabled",
        ),
        (
            Some("Bearer sk-old"),
            401,
            "key_expired",
            "virtual key old expired at 2020-01-01T00:00:00Z",
        ),
    ];
    for (authorization, status, code, message) in cases {
        let headers: Vec<(&str, &str)> = authorization.map(|a| ("authorization", a)).into_iter().collect();
        let got = refusal(
            sidecar
                .post_with("/v1/chat/completions", &ask("smart"), &headers)
                .await,
        )
        .await;
        assert_eq!(
            (got.0, got.1.as_str()),
            (status, code),
            "{authorization:?}: {}",
            got.2
        );
        assert!(got.2.contains(message), "{authorization:?}: {}", got.2);
    }
    let embeddings = sidecar
        .post("/v1/embeddings", &json!({"model": "smart", "input": "x"}))
        .await;
    assert_eq!(embeddings.status(), 401);
}

#[tokio::test]
async fn a_route_outside_the_allowlist_is_forbidden_by_name() {
    let sidecar = Sidecar::start(&manifests()).await;
    let auth = [("authorization", "Bearer sk-narrow")];
    let allowed = sidecar
        .post_with("/v1/chat/completions", &ask("cheap"), &auth)
        .await;
    assert_eq!(allowed.status(), 200);
    let (status, code, message) = refusal(
        sidecar
            .post_with("/v1/chat/completions", &ask("smart"), &auth)
            .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "route_not_allowed"));
    assert!(message.contains("route smart"), "{message}");
}

#[tokio::test]
async fn the_pod_default_key_applies_when_the_app_sends_no_llmesh_key() {
    let env = vec![(settings::DEFAULT_VIRTUAL_KEY.to_owned(), "narrow".to_owned())];
    let sidecar = Sidecar::start_with(&manifests(), env).await;
    let placeholder = [("authorization", "Bearer sk-placeholder-from-the-sdk")];
    let no_key = sidecar.post("/v1/chat/completions", &ask("cheap")).await;
    assert_eq!(no_key.status(), 200);
    let placeholder_key = sidecar
        .post_with("/v1/chat/completions", &ask("cheap"), &placeholder)
        .await;
    assert_eq!(placeholder_key.status(), 200);
    // Still the default key's allowlist.
    assert_eq!(
        sidecar.post("/v1/chat/completions", &ask("smart")).await.status(),
        403
    );
    // A real key the app presents wins.
    let own = [("authorization", "Bearer sk-team-a")];
    assert_eq!(
        sidecar
            .post_with("/v1/chat/completions", &ask("smart"), &own)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn without_virtual_keys_the_gateway_stays_open_and_keys_never_reach_metrics() {
    let open = Sidecar::start(
        &[
            provider("mock", "{provider: mock}"),
            route("smart", "{targets: [{provider: mock, model: big}]}"),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        open.post("/v1/chat/completions", &ask("smart")).await.status(),
        200
    );

    let sidecar = Sidecar::start(&manifests()).await;
    let auth = [("authorization", "Bearer sk-team-a")];
    assert_eq!(
        sidecar
            .post_with("/v1/chat/completions", &ask("smart"), &auth)
            .await
            .status(),
        200
    );
    let metrics = sidecar.get("/metrics").await.text().await.expect("metrics");
    assert!(!metrics.contains("sk-team-a"), "{metrics}");
}

#[tokio::test]
async fn the_model_list_needs_a_key_and_shows_the_routes_it_may_use() {
    let sidecar = Sidecar::start(&manifests()).await;
    assert_eq!(sidecar.get("/v1/models").await.status(), 401);
    let client = llmesh_test_support::harness::http_client();
    let list = |key: &'static str| {
        let request = client.get(format!("{}/v1/models", sidecar.url)).bearer_auth(key);
        async move {
            let body: Value = request.send().await.expect("sent").json().await.expect("json");
            body["data"]
                .as_array()
                .expect("list")
                .iter()
                .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("sk-team-a").await, ["cheap", "smart"]);
    assert_eq!(list("sk-narrow").await, ["cheap"]);
}

#[tokio::test]
async fn a_per_key_cache_never_serves_one_keys_answer_to_another() {
    let yaml = [
        manifests(),
        route(
            "cached",
            "{targets: [{provider: mock, model: big}], cache: {mode: exact, scope: key}}",
        ),
        secret("other", "key", "sk-other"),
        virtual_key("other", "{}"),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let verdict = |key: &'static str| {
        let sidecar = &sidecar;
        async move {
            let auth = [("authorization", key)];
            let response = sidecar
                .post_with("/v1/chat/completions", &ask("cached"), &auth)
                .await;
            response.headers()["x-llmesh-cache"]
                .to_str()
                .expect("ascii")
                .to_owned()
        }
    };
    assert_eq!(verdict("Bearer sk-team-a").await, "miss");
    assert_eq!(verdict("Bearer sk-team-a").await, "hit");
    assert_eq!(
        verdict("Bearer sk-other").await,
        "miss",
        "one key never reads another's entry"
    );
}

#[tokio::test]
async fn a_spent_rate_limit_stays_spent_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let env = vec![(settings::STATE_FILE.to_owned(), state.display().to_string())];
    let yaml = [
        provider("mock", "{provider: mock}"),
        route("smart", "{targets: [{provider: mock, model: big}]}"),
        secret("busy", "key", "sk-busy"),
        virtual_key("busy", "{rateLimits: {requestsPerMinute: 2}}"),
    ]
    .concat();
    let auth = [("authorization", "Bearer sk-busy")];

    let first = Sidecar::start_with(&yaml, env.clone()).await;
    for _ in 0..2 {
        let response = first
            .post_with("/v1/chat/completions", &ask("smart"), &auth)
            .await;
        assert_eq!(response.status(), 200);
    }
    first.stop(std::time::Duration::from_secs(1)).await;

    let second = Sidecar::start_with(&yaml, env).await;
    let response = second
        .post_with("/v1/chat/completions", &ask("smart"), &auth)
        .await;
    assert_eq!(
        response.headers()["x-ratelimit-remaining-requests"],
        "0",
        "the minute's two requests were used before the restart"
    );
    let (status, _, message) = refusal(response).await;
    assert_eq!(status, 429);
    assert!(message.contains("2 requests per minute"), "{message}");
}

#[tokio::test]
async fn a_pod_limited_to_some_routes_cannot_name_the_others() {
    let yaml = [
        provider("mock", "{provider: mock}"),
        route("smart", "{targets: [{provider: mock, model: big}]}"),
        route("cheap", "{targets: [{provider: mock, model: small}]}"),
    ]
    .concat();
    let env = vec![(settings::POD_ROUTES.to_owned(), "cheap".to_owned())];
    let sidecar = Sidecar::start_with(&yaml, env).await;
    assert_eq!(
        sidecar.post("/v1/chat/completions", &ask("cheap")).await.status(),
        200
    );
    let (status, code, message) = refusal(sidecar.post("/v1/chat/completions", &ask("smart")).await).await;
    assert_eq!((status, code.as_str()), (404, "model_not_found"));
    assert!(
        message.contains("not one of this pod's routes (cheap"),
        "{message}"
    );
    let models: Value = sidecar.get("/v1/models").await.json().await.expect("json");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["cheap"]);
}
