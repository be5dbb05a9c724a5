//! Injection against a real cluster: a Deployment whose pod template says
//! `llmesh.io/inject: "enabled"` gets pods with the sidecar.
//!
//! Needs the operator and its webhook deployed in the cluster
//! (`helm install llmesh charts/llmesh -n llmesh-system --create-namespace`,
//! or the operator on your machine in development mode, see
//! docs/operations.md): the API server must be able to call it.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use llmesh_crds::injection;
use llmesh_e2e::{TestNamespace, annotated_pod, cluster, container, env};
use llmesh_operator::webhook::CONFIGURATION_NAME;
use serde_json::json;

#[tokio::test]
async fn an_annotated_deployment_gets_the_sidecar() {
    let Some(client) = cluster("injection").await else {
        return;
    };
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(CONFIGURATION_NAME)
        .await
        .expect("the webhook registration is installed (helm install llmesh charts/llmesh, or run the operator in development mode)");
    let ns = TestNamespace::create(&client, "injection").await;
    let pod = annotated_pod(
        &client,
        &ns.name,
        "chat-api",
        json!({"llmesh.io/inject": "enabled", "llmesh.io/virtual-key": "e2e"}),
    )
    .await;
    let sidecar = container(&pod, injection::CONTAINER_NAME);
    assert_eq!(
        env(sidecar, injection::WORKLOAD_NAME).as_deref(),
        Some("chat-api")
    );
    assert_eq!(
        env(sidecar, injection::DEFAULT_VIRTUAL_KEY).as_deref(),
        Some("e2e")
    );
    assert_eq!(
        env(container(&pod, "app"), "OPENAI_BASE_URL").as_deref(),
        Some("http://127.0.0.1:4000/v1")
    );
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(injection::INJECTED_LABEL).map(String::as_str),
        Some("true")
    );
    ns.delete(&client).await;
}
