//! Injection against a real cluster: a Deployment whose pod template says
//! `llmesh.io/inject: "enabled"` gets pods with the sidecar.
//!
//! Needs the operator and its webhook deployed in the cluster
//! (`helm install llmesh charts/llmesh -n llmesh-system --create-namespace`,
//! or the operator on your machine in development mode, see
//! docs/operations.md): the API server must be able to call it.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use llmesh_crds::injection;
use llmesh_e2e::{TestNamespace, cluster, eventually};
use llmesh_operator::webhook::CONFIGURATION_NAME;
use serde_json::json;

/// Room for a ReplicaSet to be created and its first pod admitted on a busy cluster.
const WAIT: Duration = Duration::from_secs(60);

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
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "chat-api"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "chat-api"}},
            "template": {
                "metadata": {
                    "labels": {"app": "chat-api"},
                    "annotations": {"llmesh.io/inject": "enabled", "llmesh.io/virtual-key": "e2e"}
                },
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]}
            }
        }
    }))
    .expect("deployment");
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");

    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let pod = eventually("a pod of the Deployment", WAIT, || async {
        pods.list(&ListParams::default().labels("app=chat-api"))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    let spec = pod.spec.clone().expect("spec");
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == injection::CONTAINER_NAME)
        .expect("the pod has the llmesh sidecar");
    let env = |container: &k8s_openapi::api::core::v1::Container, name: &str| {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        env(sidecar, injection::WORKLOAD_NAME).as_deref(),
        Some("chat-api")
    );
    assert_eq!(
        env(sidecar, injection::DEFAULT_VIRTUAL_KEY).as_deref(),
        Some("e2e")
    );
    let app = spec.containers.iter().find(|c| c.name == "app").expect("the app");
    assert_eq!(
        env(app, "OPENAI_BASE_URL").as_deref(),
        Some("http://127.0.0.1:4000/v1")
    );
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(injection::INJECTED_LABEL).map(String::as_str),
        Some("true")
    );
    ns.delete(&client).await;
}
