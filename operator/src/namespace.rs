//! One namespace's reconcile: fetch its llmesh resources and the Secrets they
//! reference, call the pure compiler, write the ConfigMap and the statuses.
//!
//! Everything a namespace's configuration depends on is gathered in
//! [`Gathered`]; a new kind (VirtualKey, Budget) is one more list there, one
//! more field of `llmesh_crds::Inputs`, and one more status loop.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use llmesh_crds::compile::SecretKeys;
use llmesh_crds::{Inputs, LLMRoute, ProviderSecret, compile};
use serde::de::DeserializeOwned;

use crate::{Error, configmap, status};

/// A namespace's inputs to the compiler, as read from the API server.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The ConfigMap in force, if any (its config stands in for resources that became invalid).
    pub config_map: Option<ConfigMap>,
    /// The namespace's `ProviderSecret`s.
    pub providers: Vec<ProviderSecret>,
    /// The namespace's `LLMRoute`s.
    pub routes: Vec<LLMRoute>,
    /// Which keys each referenced Secret holds (values are dropped here).
    pub secrets: SecretKeys,
}

impl Gathered {
    /// Whether the namespace has nothing for the operator to do: no llmesh
    /// resources and no ConfigMap (so unrelated namespaces get no ConfigMap).
    pub fn is_empty(&self) -> bool {
        self.config_map.is_none() && self.providers.is_empty() && self.routes.is_empty()
    }
}

/// What a reconcile did, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the ConfigMap was written (false: it already served this version).
    pub config_written: bool,
    /// The configuration version in force after the reconcile.
    pub version: Option<String>,
    /// How many statuses were written.
    pub statuses_written: usize,
    /// How many resource problems the compiler reported.
    pub problems: usize,
}

/// The names of the Secrets a namespace's `ProviderSecret`s reference.
pub fn referenced_secrets(providers: &[ProviderSecret]) -> BTreeSet<String> {
    providers
        .iter()
        .filter_map(|p| p.spec.secret_ref.as_ref())
        .map(|r| r.name.clone())
        .collect()
}

/// Reconciles one namespace. `on_references` learns which Secrets the
/// namespace references before they are read, so a change to one of them
/// after this read still triggers the next reconcile.
///
/// # Errors
/// An API call failed; the caller retries with backoff.
pub async fn reconcile(
    client: &Client,
    namespace: &Namespace,
    on_references: impl FnOnce(BTreeSet<String>),
) -> Result<Outcome, Error> {
    let name = namespace.name_any();
    let config_map = configmap::read(client, &name).await?;
    let providers = list::<ProviderSecret>(client, &name, "ProviderSecrets").await?;
    let routes = list::<LLMRoute>(client, &name, "LLMRoutes").await?;
    let references = referenced_secrets(&providers);
    on_references(references.clone());
    let gathered = Gathered {
        config_map,
        secrets: secret_keys(client, &name, &references).await?,
        providers,
        routes,
    };
    if gathered.is_empty() {
        return Ok(Outcome::default());
    }

    let previous = gathered.config_map.as_ref().and_then(configmap::stored_config);
    let compiled = compile(Inputs {
        providers: &gathered.providers,
        routes: &gathered.routes,
        // Not reconciled yet: see "What the operator does not do yet" in docs/operations.md.
        keys: &[],
        budgets: &[],
        secrets: &gathered.secrets,
        previous: previous.as_ref(),
    });
    let config_written =
        configmap::apply_if_changed(client, namespace, gathered.config_map.as_ref(), &compiled.config)
            .await?;
    let statuses_written =
        status::write_changed(client, &name, &gathered.providers, &gathered.routes, &compiled).await?;
    Ok(Outcome {
        config_written,
        version: Some(compiled.config.version.clone()),
        statuses_written,
        problems: compiled.problems.len(),
    })
}

async fn list<K>(client: &Client, namespace: &str, what: &str) -> Result<Vec<K>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
{
    let mut items = Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Read {
            what: what.to_owned(),
            namespace: namespace.to_owned(),
            source: Box::new(source),
        })?
        .items;
    items.sort_by_key(ResourceExt::name_any);
    Ok(items)
}

/// Reads each referenced Secret and keeps only its key names: values never
/// leave this function. A missing Secret is simply absent from the index
/// (the compiler reports it on the ProviderSecret).
async fn secret_keys(
    client: &Client,
    namespace: &str,
    names: &BTreeSet<String>,
) -> Result<SecretKeys, Error> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut found = Vec::with_capacity(names.len());
    for name in names {
        let secret = api.get_opt(name).await.map_err(|source| Error::Read {
            what: format!("Secret {name}"),
            namespace: namespace.to_owned(),
            source: Box::new(source),
        })?;
        found.extend(secret);
    }
    Ok(SecretKeys::from_secrets(&found))
}
