//! Helpers for end-to-end tests against a real cluster.
//!
//! A test calls [`cluster`] first: without `KUBECONFIG` it prints why it
//! skips and returns `None`, so `cargo test --workspace` passes on machines
//! with no cluster.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
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
