//! The operator against a real cluster: resources become Ready and a
//! ConfigMap; a broken Secret shows up as a readable condition.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use llmesh_crds::{LLMRoute, ProviderSecret, SidecarConfig};
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

#[tokio::test]
async fn resources_become_ready_and_a_broken_secret_is_reported() {
    let Some(client) = cluster("operator").await else {
        return;
    };
    let ns = TestNamespace::create(&client, "operator").await;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Metrics::new().expect("metrics"),
        Arc::new(Health::default()),
    ));
    let operator = tokio::spawn(controller::run(ctx));

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
