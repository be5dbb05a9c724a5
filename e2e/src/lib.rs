//! Helpers for end-to-end tests against a real cluster.
//!
//! A test calls [`cluster`] first: without `KUBECONFIG` it prints why it
//! skips and returns `None`, so `cargo test --workspace` passes on machines
//! with no cluster.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

/// The variable naming the cluster to test against.
pub const KUBECONFIG: &str = "KUBECONFIG";

/// A client for the cluster named by `KUBECONFIG`, or `None` (with a message) to skip.
///
/// # Panics
/// `KUBECONFIG` is set but the cluster cannot be reached: that is a failure, not a skip.
pub async fn cluster(test: &str) -> Option<Client> {
    if std::env::var_os(KUBECONFIG).is_none_or(|v| v.is_empty()) {
        eprintln!("skipping e2e test {test}: set KUBECONFIG to a cluster with `kubectl apply -f crds/` done");
        return None;
    }
    // Both this test binary and kube use rustls; choose its crypto provider once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Some(
        Client::try_default()
            .await
            .expect("KUBECONFIG is set, so the cluster must be reachable"),
    )
}

/// A fresh namespace for one test, deleted by [`TestNamespace::delete`].
#[derive(Debug)]
pub struct TestNamespace {
    /// Its name.
    pub name: String,
}

impl TestNamespace {
    /// Creates `llmesh-e2e-<test>-<time>`.
    ///
    /// # Panics
    /// The namespace cannot be created.
    pub async fn create(client: &Client, test: &str) -> Self {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() % 1_000_000_000);
        let name = format!("llmesh-e2e-{test}-{stamp}");
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the test namespace");
        Self { name }
    }

    /// Deletes the namespace (and, through owner references, what the operator made in it).
    ///
    /// # Panics
    /// The delete call fails.
    pub async fn delete(self, client: &Client) {
        Api::<Namespace>::all(client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await
            .expect("delete the test namespace");
    }
}

/// Polls `check` every 250 ms until it returns `Some`, for at most `limit`.
///
/// # Panics
/// `what` did not happen within `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Room for a ReplicaSet to be created and its first pod admitted on a busy cluster.
const POD_WAIT: Duration = Duration::from_secs(60);

/// Creates the one-replica Deployment `app` (a pause container, pods
/// labelled `app=<app>`) whose pod template carries `annotations`, and
/// returns its first pod as admitted, webhook mutations included.
///
/// # Panics
/// The Deployment cannot be created, or no pod appears in time.
pub async fn annotated_pod(
    client: &Client,
    namespace: &str,
    app: &str,
    annotations: serde_json::Value,
) -> Pod {
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]}
            }
        }
    }))
    .expect("deployment");
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let selector = format!("app={app}");
    eventually("a pod of the Deployment", POD_WAIT, || async {
        pods.list(&ListParams::default().labels(&selector))
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await
}

/// A pod's containers, init containers first (the sidecar may be a native
/// sidecar, which is an init container).
pub fn containers(pod: &Pod) -> Vec<&Container> {
    pod.spec
        .iter()
        .flat_map(|spec| spec.init_containers.iter().flatten().chain(&spec.containers))
        .collect()
}

/// The container named `name`.
///
/// # Panics
/// The pod has no such container.
pub fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    containers(pod)
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("the pod has no container {name}"))
}

/// The literal value of a container's environment variable `name`.
pub fn env(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}
