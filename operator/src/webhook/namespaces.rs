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
    config_maps: Store<ConfigMap>,
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
    pub fn watch(client: &Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (namespaces, namespace_writer) = reflector::store();
        let (config_maps, config_map_writer) = reflector::store();
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
        let config_map_stream = reflector::reflector(
            config_map_writer,
            watcher(Api::<ConfigMap>::all(client.clone()), owned),
        )
        .default_backoff()
        .for_each(|_| async {});
        let run = async move {
            futures::join!(namespace_stream, config_map_stream);
        };
        let cached = Self {
            namespaces,
            config_maps,
            parsed: Arc::default(),
        };
        (cached, run)
    }

    /// Waits until both caches hold a first complete list: before that, every
    /// namespace would look as if it asked for nothing.
    pub async fn ready(&self) {
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.config_maps.wait_until_ready().await;
    }

    fn credentials(&self, namespace: &str) -> BTreeSet<String> {
        let Some(config_map) = self
            .config_maps
            .get(&ObjectRef::new(configmap::NAME).within(namespace))
        else {
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
