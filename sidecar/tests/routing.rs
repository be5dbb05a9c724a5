//! Routing and resilience through a real sidecar: strategies, rules,
//! fallbacks, retries, breakers, timeouts and drills, as an app and a
//! platform engineer see them.

use std::collections::BTreeMap;
use std::time::Duration;

use llmesh_sidecar::settings;
use llmesh_test_support::harness::{Sidecar, provider, route, secret};
use llmesh_test_support::{Behavior, MockServer, openai};
use serde_json::{Value, json};

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Two OpenAI-style accounts on two mock servers.
async fn two_openai_mocks() -> (MockServer, MockServer, String) {
    let (a, b) = (openai::start().await, openai::start().await);
    let yaml = [
        secret("key", "apiKey", "sk-test"),
        provider(
            "primary",
            &format!(
                "{{provider: openai, baseUrl: '{}/v1', secretRef: {{name: key}}}}",
                a.url()
            ),
        ),
        provider(
            "backup",
            &format!("{{provider: openai-compatible, baseUrl: '{}/v1'}}", b.url()),
        ),
    ]
    .concat();
    (a, b, yaml)
}

#[tokio::test]
async fn weighted_routes_split_traffic_as_configured() {
    let yaml = [
        provider("m", "{provider: mock}"),
        route(
            "split",
            "{targets: [{provider: m, model: big, weight: 70}, {provider: m, model: small, weight: 30}]}",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let mut served = BTreeMap::<String, u32>::new();
    for _ in 0..1000 {
        let response = sidecar.post("/v1/chat/completions", &ask("split")).await;
        *served.entry(header(&response, "x-llmesh-model")).or_default() += 1;
    }
    let big = served["big"];
    assert!((670..=730).contains(&big), "{served:?}");
}

#[tokio::test]
async fn a_failing_target_falls_back_and_the_headers_say_what_happened() {
    let (primary, backup, providers) = two_openai_mocks().await;
    let yaml = providers
        + &route(
            "smart",
            "{targets: [{provider: primary, model: gpt-4o}], fallbacks: [{target: {provider: backup, model: llama}}], retries: {attempts: 2, backoff: 10ms}}",
        );
    let sidecar = Sidecar::start(&yaml).await;
    primary.push([Behavior::Status(500), Behavior::Status(503)]);

    let response = sidecar.post("/v1/chat/completions", &ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-llmesh-attempts"),
        "3",
        "two tries at the primary, then the fallback"
    );
    assert_eq!(header(&response, "x-llmesh-fallback"), "1");
    assert_eq!(header(&response, "x-llmesh-provider"), "openai-compatible");
    assert_eq!(header(&response, "x-llmesh-model"), "llama");
    assert_eq!((primary.calls().len(), backup.calls().len()), (2, 1));

    let metrics = sidecar.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(r#"llmesh_fallbacks_total{route="smart",step="1"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"llmesh_retries_total{provider="openai",route="smart"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn rules_send_matching_requests_to_their_own_targets() {
    let yaml = [
        provider("m", "{provider: mock}"),
        route(
            "smart",
            "{targets: [{provider: m, model: standard}], rules: [{match: {headers: {x-llmesh-tier: premium}}, targets: [{provider: m, model: premium}]}, {match: {metadata: {feature: summarize}}, targets: [{provider: m, model: summarizer}]}, {match: {minPromptTokens: 1000}, targets: [{provider: m, model: long-context}]}]}",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let client = llmesh_test_support::harness::http_client();
    let url = format!("{}/v1/chat/completions", sidecar.url);
    let model_of = |response: reqwest::Response| header(&response, "x-llmesh-model");

    let premium = client
        .post(&url)
        .header("x-llmesh-tier", "premium")
        .json(&ask("smart"))
        .send()
        .await
        .expect("sent");
    assert_eq!(model_of(premium), "premium");
    let mut summarize = ask("smart");
    summarize["metadata"] = json!({"feature": "summarize"});
    assert_eq!(
        model_of(sidecar.post("/v1/chat/completions", &summarize).await),
        "summarizer"
    );
    let mut long = ask("smart");
    long["messages"][0]["content"] = json!("word ".repeat(1000));
    assert_eq!(
        model_of(sidecar.post("/v1/chat/completions", &long).await),
        "long-context"
    );
    assert_eq!(
        model_of(sidecar.post("/v1/chat/completions", &ask("smart")).await),
        "standard"
    );
}

#[tokio::test]
async fn a_prompt_too_long_for_a_target_skips_straight_to_one_that_fits() {
    let yaml = [
        provider("m", "{provider: mock}"),
        route(
            "smart",
            "{strategy: ordered, targets: [{provider: m, model: small, contextWindow: 1000}, {provider: m, model: large, contextWindow: 100000}]}",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let mut long = ask("smart");
    long["messages"][0]["content"] = json!("word ".repeat(2000));
    let response = sidecar.post("/v1/chat/completions", &long).await;
    assert_eq!(header(&response, "x-llmesh-model"), "large");
    assert_eq!(
        header(&response, "x-llmesh-attempts"),
        "1",
        "no call was wasted on the small model"
    );

    let mut huge = ask("smart");
    huge["messages"][0]["content"] = json!("word ".repeat(100_000));
    let response = sidecar.post("/v1/chat/completions", &huge).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "context_length_exceeded");
}

#[tokio::test]
async fn requests_may_tighten_the_route_timeouts_but_not_loosen_them() {
    let yaml = [
        provider("slow", "{provider: mock, mock: {timeToFirstToken: 400ms}}"),
        route(
            "smart",
            "{targets: [{provider: slow, model: m}], timeouts: {firstToken: 2s}}",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let client = llmesh_test_support::harness::http_client();
    let url = format!("{}/v1/chat/completions", sidecar.url);
    let send = |name: &'static str, value: &'static str| {
        client.post(&url).header(name, value).json(&ask("smart")).send()
    };
    assert_eq!(
        send("x-llmesh-first-token-timeout", "100ms")
            .await
            .expect("sent")
            .status(),
        504
    );
    assert_eq!(
        send("x-llmesh-first-token-timeout", "1h")
            .await
            .expect("sent")
            .status(),
        200
    );
    let invalid = send("x-llmesh-timeout", "soon").await.expect("sent");
    assert_eq!(invalid.status(), 400);
    let body: Value = invalid.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_header");
}

#[tokio::test]
async fn a_drill_takes_a_provider_down_and_the_breaker_sheds_it() {
    let yaml = [
        provider("claude-ish", "{provider: mock}"),
        provider("gpt-ish", "{provider: mock}"),
        route(
            "smart",
            "{targets: [{provider: claude-ish, model: a}], fallbacks: [{target: {provider: gpt-ish, model: b}}], circuitBreaker: {consecutiveFailures: 3, cooldown: 1m}}",
        ),
    ]
    .concat();
    let sidecar = Sidecar::start_with(&yaml, vec![(settings::ENABLE_DRILLS.into(), "true".into())]).await;
    let client = llmesh_test_support::harness::http_client();
    let drill = client
        .post(format!("{}/debug/faults", sidecar.admin_url))
        .json(&json!({"provider": "claude-ish", "faults": [{"kind": "status", "status": 503}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(drill.status(), 200);

    for i in 0..10 {
        let response = sidecar.post("/v1/chat/completions", &ask("smart")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-llmesh-model"), "b");
        let expected_attempts = if i < 3 { "2" } else { "1" };
        assert_eq!(
            header(&response, "x-llmesh-attempts"),
            expected_attempts,
            "request {i}"
        );
    }
    let targets: Value = client
        .get(format!("{}/debug/targets", sidecar.admin_url))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let down = targets
        .as_array()
        .expect("list")
        .iter()
        .find(|t| t["provider"] == "claude-ish")
        .expect("listed");
    assert_eq!(down["breaker"], "open");
    assert_eq!(down["last_failure"], "server-error");
    let metrics = sidecar.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(r#"llmesh_circuit_state{model="a",provider="claude-ish"} 2"#),
        "{metrics}"
    );

    let end = client
        .post(format!("{}/debug/faults", sidecar.admin_url))
        .json(&json!({"provider": "claude-ish"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(end.status(), 200);
}

#[tokio::test]
async fn drills_are_refused_unless_enabled_and_only_touch_mock_providers() {
    let (_primary, _backup, providers) = two_openai_mocks().await;
    let yaml = providers + &provider("m", "{provider: mock}");
    let off = Sidecar::start(&yaml).await;
    let client = llmesh_test_support::harness::http_client();
    let body = json!({"provider": "m", "faults": []});
    let refused = client
        .post(format!("{}/debug/faults", off.admin_url))
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 403);

    let on = Sidecar::start_with(&yaml, vec![(settings::ENABLE_DRILLS.into(), "true".into())]).await;
    let real = json!({"provider": "primary", "faults": []});
    let refused = client
        .post(format!("{}/debug/faults", on.admin_url))
        .json(&real)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_a_flapping_target_loses_no_request_and_the_breaker_limits_its_attempts() {
    let backup = openai::start().await;
    let yaml = [
        provider("flappy", "{provider: mock}"),
        provider("backup", &format!("{{provider: openai-compatible, baseUrl: '{}/v1'}}", backup.url())),
        route(
            "smart",
            "{strategy: ordered, targets: [{provider: flappy, model: a}, {provider: backup, model: b}], circuitBreaker: {consecutiveFailures: 3, cooldown: 100ms}}",
        ),
    ]
    .concat();
    let sidecar = std::sync::Arc::new(
        Sidecar::start_with(&yaml, vec![(settings::ENABLE_DRILLS.into(), "true".into())]).await,
    );

    // The primary flips between failing and healthy every 60 ms while 20
    // clients send 200 requests.
    let flapper = {
        let admin = format!("{}/debug/faults", sidecar.admin_url);
        tokio::spawn(async move {
            let client = llmesh_test_support::harness::http_client();
            for round in 0..12 {
                let body = if round % 2 == 0 {
                    json!({"provider": "flappy", "faults": [{"kind": "status", "status": 500}]})
                } else {
                    json!({"provider": "flappy"})
                };
                client.post(&admin).json(&body).send().await.expect("drill");
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let sidecar = sidecar.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..10 {
                    let response = sidecar.post("/v1/chat/completions", &ask("smart")).await;
                    seen.push((
                        response.status().as_u16(),
                        header(&response, "x-llmesh-provider"),
                        header(&response, "x-llmesh-attempts"),
                    ));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            })
        })
        .collect();
    let mut results = Vec::new();
    for client in clients {
        results.extend(
            tokio::time::timeout(Duration::from_secs(30), client)
                .await
                .expect("no request hangs")
                .expect("joined"),
        );
    }
    flapper.await.expect("flapper");

    assert_eq!(results.len(), 200);
    assert!(
        results.iter().all(|(status, _, _)| *status == 200),
        "every request served: {results:?}"
    );
    let metrics = sidecar.get("/metrics").await.text().await.expect("metrics");
    let failures_at_primary: u64 = metrics
        .lines()
        .find(|l| l.starts_with(r#"llmesh_upstream_errors_total{class="server-error",provider="mock"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let shed = results
        .iter()
        .filter(|(_, provider, attempts)| provider == "openai-compatible" && attempts == "1")
        .count();
    assert!(failures_at_primary > 0, "the drill did fail the primary");
    assert!(shed > 0, "the open breaker sent requests straight to the backup");
    // Without a breaker every request in a failing phase would try the primary first.
    assert!(
        failures_at_primary as usize * 3 < shed,
        "failed attempts at the primary ({failures_at_primary}) should be well below the requests it shed ({shed})"
    );
}

#[tokio::test]
async fn after_a_route_fallback_the_headers_name_the_route_asked_for_and_the_one_that_served() {
    let yaml = [
        provider(
            "down",
            "{provider: mock, mock: {faults: [{kind: status, status: 503}]}}",
        ),
        provider("up", "{provider: mock}"),
        route(
            "smart",
            "{targets: [{provider: down, model: big}], fallbacks: [{route: cheap}]}",
        ),
        route("cheap", "{targets: [{provider: up, model: small}]}"),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let response = sidecar.post("/v1/chat/completions", &ask("smart")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-llmesh-route"),
        "smart",
        "the route asked for"
    );
    assert_eq!(header(&response, "x-llmesh-served-route"), "cheap");
    assert_eq!(header(&response, "x-llmesh-fallback"), "1");
    assert_eq!(header(&response, "x-llmesh-model"), "small");

    let direct = sidecar.post("/v1/chat/completions", &ask("cheap")).await;
    assert_eq!(header(&direct, "x-llmesh-route"), "cheap");
    assert_eq!(
        header(&direct, "x-llmesh-served-route"),
        "",
        "only after a route fallback step"
    );
}

/// `/debug/targets` as (provider, breaker) pairs, and the `llmesh_circuit_state` lines.
async fn breakers(sidecar: &Sidecar) -> (Vec<(String, String)>, Vec<String>) {
    let targets: Value = llmesh_test_support::harness::http_client()
        .get(format!("{}/debug/targets", sidecar.admin_url))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let targets = targets
        .as_array()
        .expect("list")
        .iter()
        .map(|t| {
            let text = |field: &str| t[field].as_str().expect("text").to_owned();
            (text("provider"), text("breaker"))
        })
        .collect();
    let metrics = sidecar.get("/metrics").await.text().await.expect("metrics");
    let gauge = metrics
        .lines()
        .filter(|line| line.starts_with("llmesh_circuit_state{"))
        .map(str::to_owned)
        .collect();
    (targets, gauge)
}

#[tokio::test]
async fn the_breaker_gauge_and_debug_targets_agree_for_every_configured_target() {
    let providers = [
        provider("claude-ish", "{provider: mock}"),
        provider("gpt-ish", "{provider: mock}"),
    ]
    .concat();
    let both = providers.clone()
        + &route(
            "smart",
            "{targets: [{provider: claude-ish, model: a}], fallbacks: [{target: {provider: gpt-ish, model: b}}], circuitBreaker: {consecutiveFailures: 2, cooldown: 1s}}",
        );
    let sidecar = Sidecar::start_with(&both, vec![(settings::ENABLE_DRILLS.into(), "true".into())]).await;
    let state = |provider: &str, model: &str, value: u8| {
        format!(r#"llmesh_circuit_state{{model="{model}",provider="{provider}"}} {value}"#)
    };
    let pair = |provider: &str, breaker: &str| (provider.to_owned(), breaker.to_owned());

    // Before any request: every target has a series, closed.
    assert_eq!(
        breakers(&sidecar).await,
        (
            vec![pair("claude-ish", "closed"), pair("gpt-ish", "closed")],
            vec![state("claude-ish", "a", 0), state("gpt-ish", "b", 0)]
        )
    );

    let drill = llmesh_test_support::harness::http_client()
        .post(format!("{}/debug/faults", sidecar.admin_url))
        .json(&json!({"provider": "claude-ish", "faults": [{"kind": "status", "status": 503}]}))
        .send()
        .await
        .expect("sent");
    assert_eq!(drill.status(), 200);
    for _ in 0..2 {
        let response = sidecar.post("/v1/chat/completions", &ask("smart")).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        breakers(&sidecar).await,
        (
            vec![pair("claude-ish", "open"), pair("gpt-ish", "closed")],
            vec![state("claude-ish", "a", 2), state("gpt-ish", "b", 0)]
        )
    );

    // The cool-down passes with no request: half-open in both, before the probe.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        breakers(&sidecar).await,
        (
            vec![pair("claude-ish", "half-open"), pair("gpt-ish", "closed")],
            vec![state("claude-ish", "a", 1), state("gpt-ish", "b", 0)]
        )
    );

    // A reload that drops the target drops its series too.
    sidecar.write_manifests(&(providers + &route("smart", "{targets: [{provider: gpt-ish, model: b}]}")));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = breakers(&sidecar).await;
        if now == (vec![pair("gpt-ish", "closed")], vec![state("gpt-ish", "b", 0)]) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
