//! The operator against a real cluster: resources become Ready and a
//! ConfigMap; a broken Secret shows up as a readable condition; a virtual
//! key gets a generated Secret, rotates on request, and a budget is Ready.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use llmesh_crds::config::key_hash;
use llmesh_crds::{Budget, LLMRoute, ProviderSecret, SidecarConfig, VirtualKey};
use llmesh_e2e::{TestNamespace, cluster, eventually};
use llmesh_operator::controller::{self, Context};
use llmesh_operator::metrics::Metrics;
use llmesh_operator::probes::Health;
use serde_json::json;

/// Well inside the 2 s route-change target plus API latency of a busy test cluster.
const WAIT: Duration = Duration::from_secs(30);

fn ready_message<S: serde::Serialize>(status: Option<&S>, want: &str) -> Option<String> {
    let status = serde_json::to_value(status?).ok()?;
    let ready = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    (ready["status"] == want).then(|| ready["message"].as_str().unwrap_or_default().to_owned())
}

/// Runs the operator in this process, as `llmesh-operator --no-leader-election` would.
fn start_operator(client: &kube::Client) -> tokio::task::JoinHandle<()> {
    let ctx = Arc::new(Context::new(
        client.clone(),
        Metrics::new().expect("metrics"),
        Arc::new(Health::default()),
        Some("e2e".to_owned()),
    ));
    tokio::spawn(controller::run(ctx))
}

#[tokio::test]
async fn resources_become_ready_and_a_broken_secret_is_reported() {
    let Some(client) = cluster("operator").await else {
        return;
    };
    let ns = TestNamespace::create(&client, "operator").await;
    let operator = start_operator(&client);

    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "openai-key"}, "stringData": {"apiKey": "sk-e2e-not-a-real-key"}
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");
    let providers = Api::<ProviderSecret>::namespaced(client.clone(), &ns.name);
    let provider: ProviderSecret = serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "ProviderSecret", "metadata": {"name": "openai"},
        "spec": {"provider": "openai", "secretRef": {"name": "openai-key"}}
    }))
    .expect("provider");
    providers
        .create(&PostParams::default(), &provider)
        .await
        .expect("create ProviderSecret");
    let routes = Api::<LLMRoute>::namespaced(client.clone(), &ns.name);
    let route: LLMRoute = serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "LLMRoute", "metadata": {"name": "smart"},
        "spec": {"targets": [{"provider": "openai", "model": "gpt-4o-mini"}]}
    }))
    .expect("route");
    routes
        .create(&PostParams::default(), &route)
        .await
        .expect("create LLMRoute");

    eventually("the route to be Ready", WAIT, || async {
        let route = routes.get("smart").await.ok()?;
        ready_message(route.status.as_ref(), "True")
    })
    .await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns.name);
    let config = config_maps
        .get("llmesh-config")
        .await
        .expect("the ConfigMap exists");
    let text = config
        .data
        .as_ref()
        .and_then(|d| d.get("config.json"))
        .expect("config.json");
    let config = SidecarConfig::from_json(text.as_bytes()).expect("the sidecar accepts it");
    assert!(config.routes.contains_key("smart"));
    assert!(
        !text.contains("sk-e2e-not-a-real-key"),
        "no secret value in the ConfigMap"
    );

    // Break the Secret: replace its data with a key the provider does not name.
    let broken = json!({"data": null, "stringData": {"other": "x"}});
    secrets
        .patch("openai-key", &PatchParams::default(), &Patch::Merge(broken))
        .await
        .expect("break the Secret");
    let message = eventually("the provider to report the missing key", WAIT, || async {
        let provider = providers.get("openai").await.ok()?;
        ready_message(provider.status.as_ref(), "False")
    })
    .await;
    assert!(
        message.contains("Secret openai-key has no key apiKey"),
        "{message}"
    );

    operator.abort();
    ns.delete(&client).await;
}

#[tokio::test]
async fn a_virtual_key_gets_a_generated_secret_rotates_on_request_and_its_budget_is_ready() {
    let Some(client) = cluster("operator keys").await else {
        return;
    };
    let ns = TestNamespace::create(&client, "operator-keys").await;
    let operator = start_operator(&client);

    let budgets = Api::<Budget>::namespaced(client.clone(), &ns.name);
    let budget: Budget = serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "Budget", "metadata": {"name": "daily"},
        "spec": {"limitUsd": 5.0, "period": "daily", "thresholds": [80]}
    }))
    .expect("budget");
    budgets
        .create(&PostParams::default(), &budget)
        .await
        .expect("create Budget");
    let keys = Api::<VirtualKey>::namespaced(client.clone(), &ns.name);
    let key: VirtualKey = serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "VirtualKey", "metadata": {"name": "team-a"},
        "spec": {"budget": "daily", "team": "a", "rotationGracePeriod": "1h"}
    }))
    .expect("key");
    keys.create(&PostParams::default(), &key)
        .await
        .expect("create VirtualKey");

    eventually("the budget to be Ready", WAIT, || async {
        let budget = budgets.get("daily").await.ok()?;
        ready_message(budget.status.as_ref(), "True")
    })
    .await;
    let status = eventually("the key to be Ready with its Secret", WAIT, || async {
        let key = keys.get("team-a").await.ok()?;
        ready_message(key.status.as_ref(), "True")?;
        key.status
    })
    .await;
    assert_eq!(status.secret_name.as_deref(), Some("team-a"));
    assert_eq!(status.key_id.as_deref(), Some("team-a"));

    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let generated = || async {
        let secret = secrets.get("team-a").await.expect("the generated Secret");
        let value = secret.data.expect("data")["key"].0.clone();
        String::from_utf8(value).expect("utf-8 key")
    };
    let first = generated().await;
    assert!(first.starts_with("sk-llmesh-team-a-"), "documented format");
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns.name);
    let configured_hash = || async {
        let config = config_maps.get("llmesh-config").await.ok()?;
        let text = config.data?.remove("config.json")?;
        assert!(!text.contains("sk-llmesh-"), "no key in the ConfigMap");
        let config = SidecarConfig::from_json(text.as_bytes()).ok()?;
        Some(config.keys.get("team-a")?.clone())
    };
    let configured = eventually("the key in the config", WAIT, &configured_hash).await;
    assert_eq!(configured.key_hash, key_hash(first.as_bytes()));
    assert_eq!(configured.budget.as_deref(), Some("daily"));

    // Rotate: a new key, the old one still configured for its grace period.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let annotate = json!({"metadata": {"annotations": {"llmesh.io/rotate-at": now}}});
    keys.patch("team-a", &PatchParams::default(), &Patch::Merge(annotate))
        .await
        .expect("request a rotation");
    let rotated = eventually("the rotated key in the config", WAIT, || async {
        configured_hash().await.filter(|k| {
            k.previous_key_hashes
                .iter()
                .any(|p| p.hash == key_hash(first.as_bytes()))
        })
    })
    .await;
    let second = generated().await;
    assert_ne!(second, first);
    assert_eq!(rotated.key_hash, key_hash(second.as_bytes()));

    operator.abort();
    ns.delete(&client).await;
}
