//! One namespace's reconcile: fetch its llmesh resources and the Secrets they
//! reference, generate or rotate the keys the operator manages, call the pure
//! compiler, write the ConfigMap and the statuses.
//!
//! Everything a namespace's configuration depends on is gathered in
//! [`Gathered`]; a new kind is one more list there, one more field of
//! `llmesh_crds::Inputs`, and one more status loop.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Secret};
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use llmesh_crds::compile::SecretKeys;
use llmesh_crds::{Budget, Inputs, LLMRoute, ProviderSecret, SidecarConfig, VirtualKey, compile};
use serde::de::DeserializeOwned;

use crate::events::Notice;
use crate::metrics::States;
use crate::{Error, configmap, keys, status};

/// A namespace's inputs to the compiler, as read from the API server.
#[derive(Debug, Default)]
pub struct Gathered {
    /// The ConfigMap in force, if any (its config stands in for resources that became invalid).
    pub config_map: Option<ConfigMap>,
    /// The namespace's `ProviderSecret`s.
    pub providers: Vec<ProviderSecret>,
    /// The namespace's `LLMRoute`s.
    pub routes: Vec<LLMRoute>,
    /// The namespace's `VirtualKey`s.
    pub keys: Vec<VirtualKey>,
    /// The namespace's `Budget`s.
    pub budgets: Vec<Budget>,
    /// Which keys each referenced Secret holds (values are reduced to hashes here).
    pub secrets: SecretKeys,
}

impl Gathered {
    /// Whether the namespace has nothing for the operator to do: no llmesh
    /// resources and no ConfigMap (so unrelated namespaces get no ConfigMap).
    pub fn is_empty(&self) -> bool {
        self.config_map.is_none()
            && self.providers.is_empty()
            && self.routes.is_empty()
            && self.keys.is_empty()
            && self.budgets.is_empty()
    }
}

/// What a reconcile did, for logs, metrics and Events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Whether the ConfigMap was written (false: it already served this version).
    pub config_written: bool,
    /// The configuration version in force after the reconcile.
    pub version: Option<String>,
    /// How many statuses were written.
    pub statuses_written: usize,
    /// How many resource problems the compiler reported.
    pub problems: usize,
    /// Events to publish.
    pub notices: Vec<Notice>,
    /// How many resources of each kind are Ready (`true`) or not.
    pub states: States,
    /// The configuration in force after the reconcile (pushed to the
    /// namespace's connected sidecars).
    pub config: Option<llmesh_crds::SidecarConfig>,
    /// When something time-based is due (a rotated-out key's grace period
    /// ends, a scheduled rotation): reconcile again after this long.
    pub next_check: Option<Duration>,
}

/// The names of the Secrets a namespace's resources reference: provider
/// credentials, and each virtual key's Secret (its `secretRef`, or the one
/// named like it that the operator generates).
pub fn referenced_secrets(providers: &[ProviderSecret], keys: &[VirtualKey]) -> BTreeSet<String> {
    let provider_secrets = providers
        .iter()
        .filter_map(|p| p.spec.secret_ref.as_ref())
        .map(|r| r.name.clone());
    provider_secrets
        .chain(keys.iter().map(VirtualKey::secret_name))
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
    let now = jiff::Timestamp::now();
    let config_map = configmap::read(client, &name).await?;
    let providers = list::<ProviderSecret>(client, &name, "ProviderSecrets").await?;
    let routes = list::<LLMRoute>(client, &name, "LLMRoutes").await?;
    let virtual_keys = list::<VirtualKey>(client, &name, "VirtualKeys").await?;
    let budgets = list::<Budget>(client, &name, "Budgets").await?;
    let references = referenced_secrets(&providers, &virtual_keys);
    on_references(references.clone());
    let mut secrets = read_secrets(client, &name, &references).await?;
    let ensured = keys::ensure(client, &name, &virtual_keys, &mut secrets, now).await?;
    let mut secret_keys = SecretKeys::from_secrets(secrets.values());
    // Values are hashed; drop the Secrets so nothing downstream can see them.
    drop(secrets);
    let grace_ends = secret_keys
        .expire_previous(now.as_second())
        .and_then(|at| jiff::Timestamp::from_second(at).ok());
    let gathered = Gathered {
        config_map,
        providers,
        routes,
        keys: virtual_keys,
        budgets,
        secrets: secret_keys,
    };
    if gathered.is_empty() {
        return Ok(Outcome::default());
    }

    let previous = gathered.config_map.as_ref().and_then(configmap::stored_config);
    let compiled = compile(Inputs {
        providers: &gathered.providers,
        routes: &gathered.routes,
        keys: &gathered.keys,
        budgets: &gathered.budgets,
        secrets: &gathered.secrets,
        previous: previous.as_ref(),
    });
    let config_written =
        configmap::apply_if_changed(client, namespace, gathered.config_map.as_ref(), &compiled.config)
            .await?;
    let written = status::write_changed(client, &name, &gathered, &compiled).await?;
    let mut notices = ensured.notices;
    notices.extend(written.notices);
    if config_written {
        notices.push(Notice::config_written(
            config_map_ref(&name),
            &compiled.config.version,
            &summary(&compiled.config),
        ));
    }
    let due = [grace_ends, ensured.next_rotation].into_iter().flatten().min();
    Ok(Outcome {
        config_written,
        version: Some(compiled.config.version.clone()),
        statuses_written: written.count,
        problems: compiled.problems.len(),
        notices,
        states: written.states,
        config: Some(compiled.config),
        next_check: due.map(|at| {
            // A second late, so the instant has passed when the reconcile runs.
            Duration::try_from(at.duration_since(now)).unwrap_or_default() + Duration::from_secs(1)
        }),
    })
}

/// The namespace's ConfigMap as an Event's subject.
fn config_map_ref(namespace: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("ConfigMap".to_owned()),
        name: Some(configmap::NAME.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
    }
}

/// What a configuration holds, in a few words for an Event.
fn summary(config: &SidecarConfig) -> String {
    format!(
        "{} providers, {} routes, {} keys, {} budgets",
        config.providers.len(),
        config.routes.len(),
        config.keys.len(),
        config.budgets.len()
    )
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

/// Reads each referenced Secret. A missing Secret is simply absent (the
/// compiler reports it on the resource, or the operator generates it).
async fn read_secrets(
    client: &Client,
    namespace: &str,
    names: &BTreeSet<String>,
) -> Result<BTreeMap<String, Secret>, Error> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut found = BTreeMap::new();
    for name in names {
        let secret = api.get_opt(name).await.map_err(|source| Error::Read {
            what: format!("Secret {name}"),
            namespace: namespace.to_owned(),
            source: Box::new(source),
        })?;
        if let Some(secret) = secret {
            found.insert(name.clone(), secret);
        }
    }
    Ok(found)
}
