//! The injection contract: every name the operator's webhook writes into a
//! pod and the sidecar reads back (env variables, mount paths, ports,
//! annotations), defined once so the two cannot drift apart.

use std::collections::BTreeSet;

use crate::config::{Credentials, SidecarConfig};

/// API listen address (default `127.0.0.1:4000`: apps in the pod only).
pub const LISTEN_ADDR: &str = "LLMESH_LISTEN_ADDR";
/// Admin listen address for metrics and probes (default `0.0.0.0:9464`).
pub const ADMIN_ADDR: &str = "LLMESH_ADMIN_ADDR";
/// Path of the compiled configuration (JSON), as mounted from the ConfigMap.
pub const CONFIG_FILE: &str = "LLMESH_CONFIG";
/// Directory where provider Secrets are mounted, one folder per Secret.
pub const SECRETS_DIR: &str = "LLMESH_SECRETS_DIR";
/// The `VirtualKey` that requests without an llmesh key are made with (the
/// pod's `llmesh.io/virtual-key` annotation, passed on by the webhook).
pub const DEFAULT_VIRTUAL_KEY: &str = "LLMESH_VIRTUAL_KEY";
/// The pod's namespace, for the `workload_namespace` label of every metric.
pub const WORKLOAD_NAMESPACE: &str = "LLMESH_WORKLOAD_NAMESPACE";
/// The pod's owning workload, for the `workload_name` label of every metric.
pub const WORKLOAD_NAME: &str = "LLMESH_WORKLOAD_NAME";
/// The pod's own name (from the downward API: unknown at admission when the
/// pod has a generated name), for the sidecar's logs.
pub const POD_NAME: &str = "LLMESH_POD_NAME";
/// The route aliases this pod's apps may call, comma-separated (the pod's
/// `llmesh.io/routes` annotation, passed on by the webhook); unset: all.
pub const POD_ROUTES: &str = "LLMESH_ROUTES";
/// The operator's sync channel (`https://llmesh-sync.<ns>.svc:9444`, or
/// `http://host:port` for `llmesh-operator --manifests`); unset: no sync.
pub const SYNC_URL: &str = "LLMESH_SYNC_URL";
/// The file holding the token the sidecar presents on the sync channel (a
/// projected service-account token with audience [`crate::sync::AUDIENCE`],
/// or the shared token file of `llmesh-operator --manifests`). Re-read on
/// every connection, so a rotated token is picked up.
pub const SYNC_TOKEN_FILE: &str = "LLMESH_SYNC_TOKEN_FILE";
/// The CA bundle (PEM text) the sync server's certificate chains to,
/// trusted for [`SYNC_URL`] in addition to the system's roots.
pub const SYNC_CA: &str = "LLMESH_SYNC_CA";
/// File where budget spend and rate-limit buckets outlive a restart (unset:
/// in memory only).
pub const STATE_FILE: &str = "LLMESH_STATE_FILE";

/// The API port apps call (`http://127.0.0.1:4000/v1`).
pub const API_PORT: u16 = 4000;
/// The admin port: `/metrics`, `/healthz`, `/readyz`.
pub const ADMIN_PORT: u16 = 9464;
/// The liveness path on the admin port: the process answers.
pub const HEALTHZ_PATH: &str = "/healthz";
/// The readiness path on the admin port: a configuration is loaded.
pub const READYZ_PATH: &str = "/readyz";
/// The Prometheus path on the admin port.
pub const METRICS_PATH: &str = "/metrics";

/// Where the namespace's `llmesh-config` ConfigMap is mounted.
pub const CONFIG_MOUNT_DIR: &str = "/etc/llmesh/config";
/// The configuration file inside [`CONFIG_MOUNT_DIR`] (the ConfigMap's key).
pub const CONFIG_KEY: &str = "config.json";
/// Where provider Secrets are mounted, one folder per Secret named after it.
pub const SECRETS_MOUNT_DIR: &str = "/etc/llmesh/secrets";
/// Where the sidecar's one writable volume (an `emptyDir`: the root
/// filesystem is read-only) is mounted; it holds the state file.
pub const STATE_MOUNT_DIR: &str = "/var/lib/llmesh";
/// The state file inside [`STATE_MOUNT_DIR`].
pub const STATE_FILE_NAME: &str = "state.json";
/// Where the projected sync token (audience [`crate::sync::AUDIENCE`]) is
/// mounted, in the sidecar container only.
pub const SYNC_TOKEN_MOUNT_DIR: &str = "/var/run/secrets/llmesh.io/sync";
/// The token file inside [`SYNC_TOKEN_MOUNT_DIR`].
pub const SYNC_TOKEN_KEY: &str = "token";
/// The projected token's lifetime; the kubelet rotates it at 80 %.
pub const SYNC_TOKEN_SECONDS: i64 = 3600;
/// The name of the injected container.
pub const CONTAINER_NAME: &str = "llmesh-proxy";
/// The name of the admin port on the injected container (for a PodMonitor).
pub const ADMIN_PORT_NAME: &str = "llmesh-admin";

/// Pod (template) or namespace annotation: `enabled` or `disabled`. A pod's
/// value wins over its namespace's.
pub const INJECT_ANNOTATION: &str = "llmesh.io/inject";
/// Pod annotation naming the default `VirtualKey`.
pub const VIRTUAL_KEY_ANNOTATION: &str = "llmesh.io/virtual-key";
/// Pod annotation overriding [`API_PORT`].
pub const PORT_ANNOTATION: &str = "llmesh.io/port";
/// Pod annotation overriding the sidecar's CPU request.
pub const CPU_REQUEST_ANNOTATION: &str = "llmesh.io/cpu-request";
/// Pod annotation overriding the sidecar's CPU limit.
pub const CPU_LIMIT_ANNOTATION: &str = "llmesh.io/cpu-limit";
/// Pod annotation: the route aliases the pod's apps may call, comma-separated.
pub const ROUTES_ANNOTATION: &str = "llmesh.io/routes";
/// Pod annotation: the OTLP/HTTP collector the sidecar exports traces to
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`); overrides the operator's default.
pub const OTEL_ENDPOINT_ANNOTATION: &str = "llmesh.io/otel-endpoint";
/// Pod annotation: how the sidecar exports traces, `http/protobuf` or `grpc`
/// (`OTEL_EXPORTER_OTLP_PROTOCOL`); overrides the operator's default.
pub const OTEL_PROTOCOL_ANNOTATION: &str = "llmesh.io/otel-protocol";
/// Pod annotation overriding the sidecar's memory request.
pub const MEMORY_REQUEST_ANNOTATION: &str = "llmesh.io/memory-request";
/// Pod annotation overriding the sidecar's memory limit.
pub const MEMORY_LIMIT_ANNOTATION: &str = "llmesh.io/memory-limit";
/// Namespace or pod (template) annotation: `true` lets the operator restart a
/// workload whose pods came up without the sidecar.
pub const RESTART_ON_MISS_ANNOTATION: &str = "llmesh.io/restart-on-miss";
/// Set on injected pods: the hash of the sidecar template and image they got.
pub const SIDECAR_HASH_ANNOTATION: &str = "llmesh.io/sidecar-hash";
/// Label set on injected pods, `true`; a PodMonitor selects on it.
pub const INJECTED_LABEL: &str = "llmesh.io/injected";
/// The value of [`INJECT_ANNOTATION`] that asks for the sidecar.
pub const ENABLED: &str = "enabled";
/// The value of [`INJECT_ANNOTATION`] that refuses it.
pub const DISABLED: &str = "disabled";

/// Reads a list of route aliases (`smart, cheap`): `LLMRoute` names,
/// separated by commas, blanks around them ignored. The one reading the
/// webhook (of the annotation) and the sidecar (of the env) share.
///
/// # Errors
/// An entry is not a Kubernetes object name, or the list names none.
pub fn parse_route_list(value: &str) -> Result<BTreeSet<String>, String> {
    let routes: BTreeSet<String> = value
        .split(',')
        .map(str::trim)
        .filter(|alias| !alias.is_empty())
        .map(str::to_owned)
        .collect();
    let is_name = |alias: &str| {
        alias.len() <= 253
            && alias
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && alias.starts_with(|c: char| c.is_ascii_alphanumeric())
            && alias.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if let Some(bad) = routes.iter().find(|alias| !is_name(alias)) {
        return Err(format!("{bad:?} is not an LLMRoute name"));
    }
    if routes.is_empty() {
        return Err("no route named".to_owned());
    }
    Ok(routes)
}

/// The Secrets a configuration reads credentials from: each is mounted into
/// the sidecar as `SECRETS_MOUNT_DIR/<name>`.
pub fn credential_secrets(config: &SidecarConfig) -> BTreeSet<String> {
    let mut secrets = BTreeSet::new();
    for provider in config.providers.values() {
        match &provider.credentials {
            Credentials::None => {}
            Credentials::ApiKey { api_key } => {
                secrets.insert(api_key.secret.clone());
            }
            Credentials::Aws {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                secrets.extend(
                    [
                        Some(access_key_id),
                        Some(secret_access_key),
                        session_token.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .map(|r| r.secret.clone()),
                );
            }
        }
    }
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_lists_are_names_separated_by_commas() {
        let routes = parse_route_list(" smart, cheap ,,gpt-4o.eu ").expect("valid");
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            ["cheap", "gpt-4o.eu", "smart"]
        );
        for bad in ["", " , ", "Smart", "smart;cheap", "-smart", "smart_1"] {
            assert!(parse_route_list(bad).is_err(), "{bad:?}");
        }
    }
}
