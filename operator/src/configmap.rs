//! The ConfigMap the operator owns in each namespace: the compiled sidecar
//! configuration, with its content hash as the version annotation.
//!
//! Written by server-side apply (one idempotent call whether or not the
//! ConfigMap exists, and fields other managers add are left alone), and only
//! when the rendered content differs from what is stored.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use llmesh_crds::SidecarConfig;

use crate::{Error, FIELD_MANAGER};

/// The ConfigMap's name in every namespace; the injected sidecar mounts it.
pub const NAME: &str = "llmesh-config";
/// The key holding the configuration JSON: the file name the injected sidecar reads.
pub use llmesh_crds::injection::CONFIG_KEY;
/// The annotation carrying the configuration's content hash (`SidecarConfig::version`).
pub const VERSION_ANNOTATION: &str = "llmesh.io/config-version";
/// The label that marks objects this operator manages (and that its ConfigMap watch selects).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "llmesh-operator";

/// The namespace's ConfigMap, if it exists.
///
/// # Errors
/// The API call failed (a missing ConfigMap is `Ok(None)`).
pub async fn read(client: &Client, namespace: &str) -> Result<Option<ConfigMap>, Error> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(NAME)
        .await
        .map_err(|source| Error::Read {
            what: format!("ConfigMap {NAME}"),
            namespace: namespace.to_owned(),
            source: Box::new(source),
        })
}

/// The configuration stored in a ConfigMap, when it parses: the compiler
/// keeps its entries for resources that have since become invalid.
pub fn stored_config(config_map: &ConfigMap) -> Option<SidecarConfig> {
    let text = config_map.data.as_ref()?.get(CONFIG_KEY)?;
    SidecarConfig::from_json(text.as_bytes()).ok()
}

/// The ConfigMap that serves `config` in `namespace`, owned by the Namespace
/// so it goes away with it (no finalizer needed).
///
/// # Errors
/// The configuration does not serialise (a bug).
pub fn desired(namespace: &Namespace, config: &SidecarConfig) -> Result<ConfigMap, Error> {
    let owner = OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Namespace".to_owned(),
        name: namespace.name_any(),
        uid: namespace.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            namespace: Some(namespace.name_any()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            annotations: Some(BTreeMap::from([(
                VERSION_ANNOTATION.to_owned(),
                config.version.clone(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            serde_json::to_string_pretty(config)?,
        )])),
        ..ConfigMap::default()
    })
}

/// Whether `existing` already serves `desired`: same content and version, so
/// writing would change nothing.
pub fn is_current(existing: Option<&ConfigMap>, desired: &ConfigMap) -> bool {
    let Some(existing) = existing else { return false };
    let version = |cm: &ConfigMap| cm.annotations().get(VERSION_ANNOTATION).cloned();
    existing.data == desired.data && version(existing) == version(desired)
}

/// Writes `config` unless `existing` already serves it; returns whether it wrote.
///
/// # Errors
/// The apply call failed.
pub async fn apply_if_changed(
    client: &Client,
    namespace: &Namespace,
    existing: Option<&ConfigMap>,
    config: &SidecarConfig,
) -> Result<bool, Error> {
    let desired = desired(namespace, config)?;
    if is_current(existing, &desired) {
        return Ok(false);
    }
    let name = namespace.name_any();
    let mut body = serde_json::to_value(&desired)?;
    // Server-side apply needs the type in the body; the typed struct leaves it out.
    body["apiVersion"] = "v1".into();
    body["kind"] = "ConfigMap".into();
    Api::<ConfigMap>::namespaced(client.clone(), &name)
        .patch(
            NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|source| Error::WriteConfigMap {
            namespace: name,
            name: NAME,
            source: Box::new(source),
        })?;
    Ok(true)
}
