//! The sync channel's cluster path against a real cluster: the
//! `llmesh-sync` Service reaches the Lease holder alone, an injected
//! sidecar gets the sync URL, token and CA (the app none of them), and a
//! Budget's spend fields are filled by the leader.
//!
//! Needs the chart installed (`helm install llmesh charts/llmesh -n
//! llmesh-system --create-namespace`); `LLMESH_E2E_OPERATOR_NAMESPACE`
//! names another release namespace.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{ListParams, PostParams};
use llmesh_crds::{Budget, injection};
use llmesh_e2e::{TestNamespace, annotated_pod, cluster, container, env, eventually};
use llmesh_operator::sync::cluster::{LEADER_LABEL, SERVICE};
use serde_json::json;

/// Room for a leader to label itself, a pod to be admitted, and a status round.
const WAIT: Duration = Duration::from_secs(60);

fn operator_namespace() -> String {
    std::env::var("LLMESH_E2E_OPERATOR_NAMESPACE").unwrap_or_else(|_| "llmesh-system".to_owned())
}

#[tokio::test]
async fn the_sync_service_reaches_the_leader_and_budgets_show_their_spend() {
    let Some(client) = cluster("sync").await else {
        return;
    };
    let system = operator_namespace();

    // The Service selects the leader label, and exactly the Lease holder carries it.
    let service = Api::<Service>::namespaced(client.clone(), &system)
        .get(SERVICE)
        .await
        .expect("the llmesh-sync Service is installed (helm install llmesh charts/llmesh)");
    let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector.get(LEADER_LABEL).map(String::as_str), Some("true"));
    let leader_pod = eventually(
        "one pod labelled as the sync leader, holding the Lease",
        WAIT,
        || {
            let (client, system) = (client.clone(), system.clone());
            async move {
                let holder = Api::<Lease>::namespaced(client.clone(), &system)
                    .get("llmesh-operator")
                    .await
                    .ok()?
                    .spec?
                    .holder_identity?;
                let labelled = Api::<Pod>::namespaced(client, &system)
                    .list(&ListParams::default().labels(&format!("{LEADER_LABEL}=true")))
                    .await
                    .ok()?
                    .items;
                match labelled.as_slice() {
                    [pod] if pod.metadata.name.as_deref() == Some(holder.as_str()) => Some(holder),
                    _ => None,
                }
            }
        },
    )
    .await;
    eprintln!("sync leader: {leader_pod}");

    let ns = TestNamespace::create(&client, "sync").await;
    let budget: Budget = serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "Budget", "metadata": {"name": "team"},
        "spec": {"limitUsd": 25, "period": "monthly", "timeZone": "Europe/Berlin"}
    }))
    .expect("budget");
    let budgets = Api::<Budget>::namespaced(client.clone(), &ns.name);
    budgets
        .create(&PostParams::default(), &budget)
        .await
        .expect("create the Budget");
    let pod = annotated_pod(
        &client,
        &ns.name,
        "chat-api",
        json!({"llmesh.io/inject": "enabled"}),
    )
    .await;
    let sidecar = container(&pod, injection::CONTAINER_NAME);
    assert_eq!(
        env(sidecar, injection::SYNC_URL),
        Some(format!("https://{SERVICE}.{system}.svc:9444"))
    );
    assert!(env(sidecar, injection::SYNC_CA).is_some_and(|ca| ca.contains("BEGIN CERTIFICATE")));
    let app = container(&pod, "app");
    assert!(env(app, injection::SYNC_URL).is_none() && env(app, injection::SYNC_CA).is_none());

    // The leader fills the spend fields within a status round or two.
    let status = eventually("Budget status with spend and state", WAIT, || async {
        let status = budgets.get("team").await.ok()?.status?;
        status.state.is_some().then_some(status)
    })
    .await;
    assert_eq!(status.spent_usd, Some(0.0));
    assert_eq!(status.state.as_deref(), Some("ok"));
    assert!(status.period_end.is_some(), "{status:?}");
    ns.delete(&client).await;
}
