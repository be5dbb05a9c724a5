//! Starts a real sidecar on loopback from YAML manifests, for integration tests.

use std::path::Path;
use std::time::Duration;

use llmesh_sidecar::Gateway;
use llmesh_sidecar::settings::{self, Settings};
use tempfile::TempDir;

/// A running sidecar in standalone mode, serving a temporary manifests folder.
#[derive(Debug)]
pub struct Sidecar {
    /// `http://127.0.0.1:<api port>`.
    pub url: String,
    /// `http://127.0.0.1:<admin port>`.
    pub admin_url: String,
    /// The gateway itself.
    pub gateway: Option<Gateway>,
    client: reqwest::Client,
    dir: TempDir,
}

impl Sidecar {
    /// Starts a sidecar serving `manifests`.
    pub async fn start(manifests: &str) -> Self {
        Self::start_with(manifests, Vec::new()).await
    }

    /// Starts a sidecar serving `manifests`, with extra settings variables.
    pub async fn start_with(manifests: &str, env: Vec<(String, String)>) -> Self {
        Self::start_customized(manifests, env, |_| {}).await
    }

    /// Starts a sidecar serving `manifests`, with extra settings variables
    /// and then `customize` applied to the settings (what an embedder sets
    /// in code rather than in the environment).
    ///
    /// # Panics
    /// The sidecar cannot start (a test setup error).
    #[allow(clippy::unwrap_used)]
    pub async fn start_customized(
        manifests: &str,
        env: Vec<(String, String)>,
        customize: impl FnOnce(&mut Settings),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifests.yaml"), manifests).unwrap();
        let mut vars: std::collections::HashMap<String, String> = env.iter().cloned().collect();
        vars.insert(settings::MANIFESTS_DIR.into(), dir.path().display().to_string());
        vars.entry(settings::LISTEN_ADDR.into())
            .or_insert_with(|| "127.0.0.1:0".into());
        vars.entry(settings::ADMIN_ADDR.into())
            .or_insert_with(|| "127.0.0.1:0".into());
        let mut settings = Settings::from_env(&vars).unwrap();
        customize(&mut settings);
        let gateway = Gateway::start(&settings, env).await.unwrap();
        Self {
            url: format!("http://{}", gateway.api_addr),
            admin_url: format!("http://{}", gateway.admin_addr),
            gateway: Some(gateway),
            client: http_client(),
            dir,
        }
    }

    /// The manifests folder.
    pub fn manifests_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the manifests and waits until the sidecar has reloaded.
    ///
    /// # Panics
    /// The file cannot be written.
    #[allow(clippy::unwrap_used)]
    pub fn write_manifests(&self, yaml: &str) {
        std::fs::write(self.dir.path().join("manifests.yaml"), yaml).unwrap();
        // Apply now rather than wait for the watcher, so tests are not timing-dependent.
        if let Some(gateway) = &self.gateway {
            gateway.reloader.reload();
        }
    }

    /// POSTs JSON to the API.
    ///
    /// # Panics
    /// The request cannot be sent.
    #[allow(clippy::unwrap_used)]
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs JSON to the API with extra request headers.
    ///
    /// # Panics
    /// The request cannot be sent.
    #[allow(clippy::unwrap_used)]
    pub async fn post_with(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self.client.post(format!("{}{path}", self.url)).json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    /// GETs a path of the API (`/v1/...`) or, with `admin`, of the admin port.
    ///
    /// # Panics
    /// The request cannot be sent.
    #[allow(clippy::unwrap_used)]
    pub async fn get(&self, path: &str) -> reqwest::Response {
        let base = if path == "/metrics" {
            &self.admin_url
        } else {
            &self.url
        };
        self.client.get(format!("{base}{path}")).send().await.unwrap()
    }

    /// Stops the sidecar, letting in-flight requests finish for up to `drain`.
    pub async fn stop(mut self, drain: Duration) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown(drain).await;
        }
    }
}

/// An HTTP client for tests, with the TLS crypto provider the sidecar uses
/// installed (reqwest refuses to build a client without one).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A `ProviderSecret` manifest with the given spec (YAML flow mapping).
pub fn provider(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: llmesh.io/v1alpha1\nkind: ProviderSecret\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

/// An `LLMRoute` manifest with the given spec.
pub fn route(name: &str, spec: &str) -> String {
    format!("---\napiVersion: llmesh.io/v1alpha1\nkind: LLMRoute\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

/// A `Secret` manifest with one string key.
pub fn secret(name: &str, key: &str, value: &str) -> String {
    format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{{key}: {value}}}\n")
}

/// A `VirtualKey` manifest with the given spec.
pub fn virtual_key(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: llmesh.io/v1alpha1\nkind: VirtualKey\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

/// A `Budget` manifest with the given spec.
pub fn budget(name: &str, spec: &str) -> String {
    format!("---\napiVersion: llmesh.io/v1alpha1\nkind: Budget\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}
