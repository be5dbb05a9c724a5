//! What the injection reads about a pod's namespace, answered from watch
//! caches so an admission makes no API call (the 5 ms p99 target).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::{Future, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use llmesh_crds::injection::{ENABLED, INJECT_ANNOTATION, RESTART_ON_MISS_ANNOTATION, credential_secrets};
use parking_lot::Mutex;

use super::mutate::NamespaceSettings;
use crate::configmap;
use crate::scope::WatchScope;

/// Answers "what are the settings of namespace N".
pub trait NamespaceLookup: Send + Sync {
    /// The settings of `namespace` (defaults when it is unknown).
    fn settings(&self, namespace: &str) -> NamespaceSettings;
}

/// A fixed table, for tests and benchmarks.
impl NamespaceLookup for HashMap<String, NamespaceSettings> {
    fn settings(&self, namespace: &str) -> NamespaceSettings {
        self.get(namespace).cloned().unwrap_or_else(|| NamespaceSettings {
            name: namespace.to_owned(),
            ..NamespaceSettings::default()
        })
    }
}

/// The settings a Namespace object and its `llmesh-config` ConfigMap give.
/// The namespace asks by label or annotation (a label also lets the webhook
/// registration's `namespaceSelector` see it).
pub fn namespace_settings(
    name: &str,
    namespace: Option<&Namespace>,
    credentials: BTreeSet<String>,
) -> NamespaceSettings {
    let says = |key: &str, value: &str| {
        namespace.is_some_and(|ns| {
            ns.annotations().get(key).map(String::as_str) == Some(value)
                || ns.labels().get(key).map(String::as_str) == Some(value)
        })
    };
    NamespaceSettings {
        name: name.to_owned(),
        inject: says(INJECT_ANNOTATION, ENABLED),
        restart_on_miss: says(RESTART_ON_MISS_ANNOTATION, "true"),
        credential_secrets: credentials,
    }
}

/// Per namespace: the `llmesh-config` resourceVersion parsed last, and the Secrets it names.
type ParsedCredentials = HashMap<String, (String, BTreeSet<String>)>;

/// Namespace settings from two watch caches: Namespaces, and the operator's
/// ConfigMaps (whose Secrets are parsed once per ConfigMap version).
#[derive(Clone)]
pub struct Cached {
    namespaces: Store<Namespace>,
    /// One store per watched namespace (or one for all): a store follows one watch.
    config_maps: Vec<Store<ConfigMap>>,
    parsed: Arc<Mutex<ParsedCredentials>>,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").finish_non_exhaustive()
    }
}

impl Cached {
    /// The caches and the future that keeps them filled (run it for the
    /// operator's lifetime; [`Cached::ready`] resolves after the first lists).
    /// ConfigMaps are watched in `scope`'s namespaces only.
    pub fn watch(client: &Client, scope: &WatchScope) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (namespaces, namespace_writer) = reflector::store();
        let owned = watcher::Config::default().labels(&format!(
            "{}={}",
            configmap::MANAGED_BY_LABEL,
            configmap::MANAGED_BY
        ));
        let namespace_stream = reflector::reflector(
            namespace_writer,
            watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| async {});
        let (config_maps, config_map_streams): (Vec<_>, Vec<_>) = scope
            .apis::<ConfigMap>(client)
            .into_iter()
            .map(|api| {
                let (store, writer) = reflector::store();
                let stream = reflector::reflector(writer, watcher(api, owned.clone()))
                    .default_backoff()
                    .for_each(|_| async {});
                (store, stream)
            })
            .unzip();
        let run = async move {
            futures::join!(namespace_stream, futures::future::join_all(config_map_streams));
        };
        let cached = Self {
            namespaces,
            config_maps,
            parsed: Arc::default(),
        };
        (cached, run)
    }

    /// Waits until every cache holds a first complete list: before that, every
    /// namespace would look as if it asked for nothing.
    pub async fn ready(&self) {
        let _ = self.namespaces.wait_until_ready().await;
        for store in &self.config_maps {
            let _ = store.wait_until_ready().await;
        }
    }

    fn credentials(&self, namespace: &str) -> BTreeSet<String> {
        let key = ObjectRef::new(configmap::NAME).within(namespace);
        let Some(config_map) = self.config_maps.iter().find_map(|store| store.get(&key)) else {
            return BTreeSet::new();
        };
        let version = config_map.resource_version().unwrap_or_default();
        let mut parsed = self.parsed.lock();
        if let Some((seen, secrets)) = parsed.get(namespace)
            && *seen == version
        {
            return secrets.clone();
        }
        let secrets = configmap::stored_config(&config_map)
            .map(|config| credential_secrets(&config))
            .unwrap_or_default();
        parsed.insert(namespace.to_owned(), (version, secrets.clone()));
        secrets
    }
}

impl NamespaceLookup for Cached {
    fn settings(&self, namespace: &str) -> NamespaceSettings {
        let object = self.namespaces.get(&ObjectRef::new(namespace));
        namespace_settings(namespace, object.as_deref(), self.credentials(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(annotations: &[(&str, &str)], labels: &[(&str, &str)]) -> Namespace {
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        let mut ns = Namespace::default();
        ns.metadata.name = Some("team-a".to_owned());
        ns.metadata.annotations = map(annotations);
        ns.metadata.labels = map(labels);
        ns
    }

    #[test]
    fn a_namespace_asks_by_label_or_annotation() {
        let by_annotation = namespace(&[(INJECT_ANNOTATION, ENABLED)], &[]);
        let by_label = namespace(&[], &[(INJECT_ANNOTATION, ENABLED)]);
        let neither = namespace(&[(INJECT_ANNOTATION, "disabled")], &[]);
        assert!(namespace_settings("team-a", Some(&by_annotation), BTreeSet::new()).inject);
        assert!(namespace_settings("team-a", Some(&by_label), BTreeSet::new()).inject);
        assert!(!namespace_settings("team-a", Some(&neither), BTreeSet::new()).inject);
        assert!(!namespace_settings("team-a", None, BTreeSet::new()).inject);
        let restart = namespace(&[(RESTART_ON_MISS_ANNOTATION, "true")], &[]);
        assert!(namespace_settings("team-a", Some(&restart), BTreeSet::new()).restart_on_miss);
    }
}
