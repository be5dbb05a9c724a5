//! Budgets through a real sidecar: block, downgrade and alert once spend
//! reaches the limit, token ceilings, and spend that survives a restart.

use std::time::Duration;

use llmesh_sidecar::Gateway;
use llmesh_sidecar::settings::{self, Settings};
use llmesh_test_support::harness::{Sidecar, budget, provider, route, secret, virtual_key};
use serde_json::{Value, json};

/// Every answer costs about a cent: far over the budgets below.
fn manifests(budget_spec: &str) -> String {
    [
        provider("mock", "{provider: mock}"),
        route(
            "smart",
            "{targets: [{provider: mock, model: big, price: {input: 1000, output: 1000}}]}",
        ),
        route(
            "cheap",
            "{targets: [{provider: mock, model: small, price: {input: 1, output: 1}}]}",
        ),
        secret("agent", "key", "sk-agent"),
        virtual_key("agent", "{budget: team, team: research}"),
        budget("team", budget_spec),
    ]
    .concat()
}

const AUTH: [(&str, &str); 1] = [("authorization", "Bearer sk-agent")];

fn ask() -> Value {
    json!({"model": "smart", "messages": [{"role": "user", "content": "hello"}]})
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn an_exhausted_budget_blocks_with_an_error_naming_it() {
    let sidecar = Sidecar::start(&manifests("{limitUsd: 0.001, period: daily}")).await;
    let first = sidecar.post_with("/v1/chat/completions", &ask(), &AUTH).await;
    assert_eq!(first.status(), 200, "spend below the limit before this request");
    let blocked = sidecar.post_with("/v1/chat/completions", &ask(), &AUTH).await;
    let retry_after: u64 = blocked.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!(
        (1..=86_400).contains(&retry_after),
        "until the next day: {retry_after}"
    );
    let (status, body) = error_of(blocked).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("budget team")),
        "{body}"
    );

    let metrics = sidecar.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(r#"llmesh_budget_exceeded_total{action="block",budget="team"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"llmesh_budget_limit_usd{budget="team",period="daily"} 0.001"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn downgrade_serves_from_the_cheaper_route_and_alert_serves_anyway() {
    let downgrade = Sidecar::start(&manifests(
        "{limitUsd: 0.001, action: downgrade, downgradeTo: cheap}",
    ))
    .await;
    downgrade.post_with("/v1/chat/completions", &ask(), &AUTH).await;
    let served = downgrade.post_with("/v1/chat/completions", &ask(), &AUTH).await;
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["x-llmesh-route"], "cheap");
    assert_eq!(served.headers()["x-llmesh-model"], "small");

    let alert = Sidecar::start(&manifests("{limitUsd: 0.001, action: alert, thresholds: [50]}")).await;
    for _ in 0..2 {
        let response = alert.post_with("/v1/chat/completions", &ask(), &AUTH).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-llmesh-route"], "smart");
    }
    let metrics = alert.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(r#"llmesh_budget_exceeded_total{action="alert",budget="team"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"llmesh_budget_threshold_crossed_total{budget="team",threshold="50"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn token_ceilings_stop_a_runaway_session_and_oversized_requests() {
    let sidecar = Sidecar::start(&manifests(
        "{limitUsd: 100, maxTokensPerRequest: 500, maxTokensPerSession: 60}",
    ))
    .await;
    let mut big = ask();
    big["max_tokens"] = json!(1000);
    let (status, body) = error_of(sidecar.post_with("/v1/chat/completions", &big, &AUTH).await).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("request_token_ceiling"))
    );

    let session = [AUTH[0], ("x-llmesh-session-id", "agent-loop-1")];
    let mut served = 0;
    let stopped = loop {
        let response = sidecar.post_with("/v1/chat/completions", &ask(), &session).await;
        if response.status() != 200 {
            break response;
        }
        served += 1;
        assert!(served < 50, "the session ceiling never stopped the loop");
    };
    assert!(served >= 1);
    let (status, body) = error_of(stopped).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("session_token_ceiling"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("agent-loop-1")),
        "{body}"
    );
    let other = [AUTH[0], ("x-llmesh-session-id", "agent-loop-2")];
    assert_eq!(
        sidecar
            .post_with("/v1/chat/completions", &ask(), &other)
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn spend_survives_a_restart_and_a_corrupt_state_file_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let env = vec![(settings::STATE_FILE.to_owned(), state.display().to_string())];
    let yaml = manifests("{limitUsd: 0.001, period: total}");

    let first = Sidecar::start_with(&yaml, env.clone()).await;
    assert_eq!(
        first
            .post_with("/v1/chat/completions", &ask(), &AUTH)
            .await
            .status(),
        200
    );
    first.stop(Duration::from_secs(1)).await;
    assert!(state.exists(), "spend written at shutdown");

    let second = Sidecar::start_with(&yaml, env.clone()).await;
    let metrics = second.get("/metrics").await.text().await.expect("metrics");
    let restored = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"llmesh_budget_spent_usd{budget="team",period="total"} "#))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("restored spend published before any request");
    assert!(restored > 0.001, "{restored}");
    let blocked = second.post_with("/v1/chat/completions", &ask(), &AUTH).await;
    assert_eq!(
        blocked.status(),
        429,
        "the spend from before the restart still counts"
    );
    second.stop(Duration::from_secs(1)).await;

    let text = std::fs::read_to_string(&state).expect("state");
    let damaged = text.replacen("\"spentUsd\":", "\"spentUsd\":0", 1);
    assert_ne!(damaged, text);
    std::fs::write(&state, &damaged).expect("write");
    let manifests_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(manifests_dir.path().join("m.yaml"), &yaml).expect("write");
    let vars: std::collections::HashMap<String, String> = env
        .into_iter()
        .chain([
            (
                settings::MANIFESTS_DIR.to_owned(),
                manifests_dir.path().display().to_string(),
            ),
            (settings::LISTEN_ADDR.to_owned(), "127.0.0.1:0".to_owned()),
            (settings::ADMIN_ADDR.to_owned(), "127.0.0.1:0".to_owned()),
        ])
        .collect();
    let settings = Settings::from_env(&vars).expect("settings");
    let error = Gateway::start(&settings, [])
        .await
        .expect_err("corrupt state must not be zeroed");
    assert!(error.to_string().contains("corrupt"), "{error}");
    assert_eq!(
        std::fs::read_to_string(&state).expect("kept"),
        damaged,
        "left for inspection"
    );
}
