//! The sync channel in a cluster: the leader serves it over TLS (the
//! webhook's certificate, which also names the `llmesh-sync` Service) on
//! [`sync::PORT`], labels its own pod [`LEADER_LABEL`] so the Service (which
//! selects that label) reaches it alone, keeps the ledger in the
//! `llmesh-sync-state` ConfigMap, and writes the budgets' status.
//!
//! Readiness cannot do the routing: a pod has one readiness for all its
//! ports, and the webhook must stay served by every replica. A replica
//! removes a stale label of its own at start, before it campaigns; the
//! label moves at the next leader's start, within the Lease's 15 s.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use llmesh_crds::sync;
use serde_json::json;

use super::ledger::{Ledger, LedgerError, Store};
use crate::{Error, FIELD_MANAGER};

/// The pod label the `llmesh-sync` Service selects: only the leader carries it.
pub const LEADER_LABEL: &str = "llmesh.io/sync-leader";
/// The Service sidecars reach the leader through.
pub const SERVICE: &str = "llmesh-sync";
/// The ConfigMap (operator namespace) holding the ledger.
pub const STATE_CONFIG_MAP: &str = "llmesh-sync-state";
/// Its key (the standalone state file's JSON).
const STATE_KEY: &str = "state.json";

/// The URL the webhook injects into sidecars.
pub fn url(namespace: &str) -> String {
    format!("https://{SERVICE}.{namespace}.svc:{}", sync::PORT)
}

/// The DNS names the sync Service is reached by (added to the certificate).
pub fn service_names(namespace: &str) -> Vec<String> {
    crate::webhook::tls::service_names(SERVICE, namespace)
}

/// Sets (`leader`) or removes [`LEADER_LABEL`] on pod `namespace/pod`.
///
/// # Errors
/// The patch failed.
pub async fn label_pod(client: &Client, namespace: &str, pod: &str, leader: bool) -> Result<(), Error> {
    let value = if leader { json!("true") } else { json!(null) };
    let patch = json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    Api::<Pod>::namespaced(client.clone(), namespace)
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::sync(format!("labelling pod {namespace}/{pod}"), e))?;
    Ok(())
}

/// Keeps the ledger in a ConfigMap: one write per group commit.
#[derive(Clone)]
pub struct ConfigMapStore {
    api: Api<ConfigMap>,
    namespace: String,
}

impl std::fmt::Debug for ConfigMapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfigMap {}/{STATE_CONFIG_MAP}", self.namespace)
    }
}

impl ConfigMapStore {
    /// The store in `namespace` (the operator's).
    pub fn new(client: &Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client.clone(), namespace),
            namespace: namespace.to_owned(),
        }
    }

    /// Opens the ledger from what the ConfigMap holds (nothing yet: from zero).
    ///
    /// # Errors
    /// Reading failed, or the content is not a ledger.
    pub async fn open(self) -> Result<Result<Arc<Ledger>, LedgerError>, Error> {
        let stored = self
            .api
            .get_opt(STATE_CONFIG_MAP)
            .await
            .map_err(|e| Error::sync(format!("reading {self:?}"), e))?;
        let bytes = stored
            .and_then(|cm| cm.data)
            .and_then(|mut data| data.remove(STATE_KEY));
        Ok(Ledger::stored(
            bytes.as_deref().map(str::as_bytes),
            Box::new(self),
        ))
    }
}

impl Store for ConfigMapStore {
    fn save(&self, bytes: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
            let config_map = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(STATE_CONFIG_MAP.to_owned()),
                    // No managed-by label: the controller's ConfigMap watch
                    // must not reconcile on every group commit.
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(STATE_KEY.to_owned(), text)])),
                ..ConfigMap::default()
            };
            self.api
                .patch(
                    STATE_CONFIG_MAP,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&config_map),
                )
                .await
                .map(|_| ())
                .map_err(|e| format!("writing {self:?}: {e}"))
        })
    }
}
