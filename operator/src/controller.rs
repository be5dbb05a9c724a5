//! The controller: watches, coalescing per namespace, and the error policy.
//!
//! The reconciled object is the Namespace. Every watched object (LLMRoute,
//! ProviderSecret, VirtualKey, Budget, a referenced Secret, the owned
//! ConfigMap) maps to its namespace's key, and kube-runtime keeps at most one
//! pending reconcile per key; with the debounce below, a burst of changes
//! becomes a few reconciles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use llmesh_crds::{Budget, LLMRoute, ProviderSecret, VirtualKey};
use parking_lot::RwLock;
use serde::de::DeserializeOwned;

use crate::metrics::Metrics;
use crate::probes::Health;
use crate::scope::WatchScope;
use crate::sync::server::SyncServer;
use crate::{Error, FIELD_MANAGER, configmap, events, namespace};

/// How long the controller waits for more changes before reconciling a
/// namespace: short enough to stay well inside the 2 s route-change target,
/// long enough that a `kubectl apply` of a folder is one reconcile.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// A safety-net resync for each namespace, in case a watch event was missed.
pub const RESYNC: Duration = Duration::from_secs(600);
/// First retry delay after a failed reconcile; doubles per consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Upper bound of the retry delay, so a fixed API server is noticed within minutes.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long one namespace's reconcile may take. The API client has no read
/// timeout (watches are long reads), so a call the API server never answers
/// would otherwise hold the namespace's reconcile, and every later change
/// to it, forever.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which Secrets each namespace's ProviderSecrets and VirtualKeys reference,
/// as of its last reconcile: a Secret event re-reconciles its namespace only
/// if it is one of them.
#[derive(Debug, Default)]
pub struct SecretIndex(RwLock<BTreeMap<String, BTreeSet<String>>>);

impl SecretIndex {
    /// Replaces the Secrets `namespace` references.
    pub fn record(&self, namespace: &str, secrets: BTreeSet<String>) {
        let mut index = self.0.write();
        if secrets.is_empty() {
            index.remove(namespace);
        } else {
            index.insert(namespace.to_owned(), secrets);
        }
    }

    /// The namespace to reconcile when `secret` changes, if any of its resources reference it.
    pub fn namespace_to_reconcile(&self, secret: &impl ResourceExt) -> Option<ObjectRef<Namespace>> {
        let namespace = secret.namespace()?;
        let referenced = self
            .0
            .read()
            .get(&namespace)
            .is_some_and(|names| names.contains(&secret.name_any()));
        referenced.then(|| ObjectRef::new(&namespace))
    }
}

/// Shared state of the reconciles.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Referenced Secrets per namespace.
    pub secrets: SecretIndex,
    /// Reconcile metrics.
    pub metrics: Metrics,
    /// Readiness for `/readyz`.
    pub health: Arc<Health>,
    /// Publishes the reconciles' Events.
    recorder: Recorder,
    /// Consecutive failures per namespace, for the backoff.
    failures: parking_lot::Mutex<HashMap<String, u32>>,
    /// Namespaces with a change not yet reconciled (the queue-depth metric).
    pending: parking_lot::Mutex<BTreeSet<String>>,
    /// The namespaces reconciled; the others are left alone.
    scope: WatchScope,
    /// Where each reconciled configuration is pushed to the sidecars (the leader's sync server).
    sync: Option<Arc<SyncServer>>,
}

impl Context {
    /// A context for a fresh controller; `instance` (the pod name) tells
    /// replicas apart in the Events they publish.
    pub fn new(client: Client, metrics: Metrics, health: Arc<Health>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            secrets: SecretIndex::default(),
            metrics,
            health,
            failures: parking_lot::Mutex::default(),
            pending: parking_lot::Mutex::default(),
            scope: WatchScope::All,
            sync: None,
        }
    }

    /// Pushes every reconciled configuration through `server`.
    #[must_use]
    pub fn with_sync(mut self, server: Arc<SyncServer>) -> Self {
        self.sync = Some(server);
        self
    }

    /// Limits the reconciles (and the watches [`run`] makes) to `scope`.
    #[must_use]
    pub fn with_scope(mut self, scope: WatchScope) -> Self {
        self.scope = scope;
        self
    }

    /// Counts `key`'s namespace as waiting for a reconcile; passes `key` on.
    fn queued(&self, key: Option<ObjectRef<Namespace>>) -> Option<ObjectRef<Namespace>> {
        if let Some(key) = &key {
            let mut pending = self.pending.lock();
            pending.insert(key.name.clone());
            self.metrics.set_queue_depth(pending.len());
        }
        key
    }

    /// `namespace` is being reconciled: it no longer waits.
    fn dequeued(&self, namespace: &str) {
        let mut pending = self.pending.lock();
        pending.remove(namespace);
        self.metrics.set_queue_depth(pending.len());
    }
}

impl std::fmt::Debug for Context {
    // `kube::Client` is not `Debug`; the rest is enough to tell contexts apart.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

/// The namespace key of a namespaced object.
pub fn namespace_key<K: ResourceExt>(object: &K) -> Option<ObjectRef<Namespace>> {
    object.namespace().map(|ns| ObjectRef::new(&ns))
}

/// The retry delay after `failures` consecutive failed reconciles (1 s, 2 s, 4 s, … 5 min).
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX)
}

/// Reconciles one namespace, with metrics and logs.
///
/// # Errors
/// An API call failed; [`error_policy`] schedules the retry.
pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let name = ns.name_any();
    ctx.dequeued(&name);
    if !ctx.scope.contains(&name) {
        // Not ours: no rights there, and nothing of it is watched.
        return Ok(Action::await_change());
    }
    let reconciled = namespace::reconcile(&ctx.client, &ns, |secrets| ctx.secrets.record(&name, secrets));
    let outcome = tokio::time::timeout(RECONCILE_TIMEOUT, reconciled)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Timeout {
                namespace: name.clone(),
                after: RECONCILE_TIMEOUT,
            })
        })
        .inspect_err(|error| ctx.metrics.failed(started.elapsed(), error))?;
    ctx.metrics.succeeded(
        started.elapsed(),
        outcome.config_written,
        outcome.statuses_written,
    );
    ctx.metrics.set_states(&name, &outcome.states);
    if let (Some(sync), Some(config)) = (&ctx.sync, outcome.config) {
        sync.publish(&name, config);
    }
    ctx.failures.lock().remove(&name);
    ctx.health.set_ready();
    if outcome.config_written || outcome.statuses_written > 0 {
        tracing::info!(
            namespace = %name,
            version = outcome.version.as_deref().unwrap_or_default(),
            config_written = outcome.config_written,
            statuses_written = outcome.statuses_written,
            problems = outcome.problems,
            "reconciled"
        );
    }
    events::publish(&ctx.recorder, outcome.notices).await;
    let requeue = outcome.next_check.map_or(RESYNC, |due| due.min(RESYNC));
    Ok(Action::requeue(requeue))
}

/// Retries a failed namespace with exponential backoff.
pub fn error_policy(ns: Arc<Namespace>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = ns.name_any();
    let failures = {
        let mut failures = ctx.failures.lock();
        let count = failures.entry(name.clone()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = backoff(failures);
    tracing::warn!(namespace = %name, %error, failures, retry_in_ms = delay.as_millis(), "reconcile failed");
    Action::requeue(delay)
}

/// `api`'s objects as they change, for a trigger. Each watch backs off on
/// its own and its errors end here: the controller's trigger backoff is one
/// for all its watches and grows with every error, so when all of them
/// expired at once (410 Gone) it stopped every watch for over two minutes.
fn changes<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    logged(watcher(api, config).default_backoff().touched_objects())
}

/// `stream` without its errors, which are logged: the watcher lists or
/// watches again after its backoff.
fn logged<K: Send + 'static>(
    stream: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    stream.filter_map(|change| async move {
        change
            .inspect_err(|error| tracing::warn!(%error, "watch failed; retrying after a backoff"))
            .ok()
            .map(Ok)
    })
}

/// Runs the controller until SIGTERM or Ctrl-C, then lets running reconciles finish.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        configmap::MANAGED_BY_LABEL,
        configmap::MANAGED_BY
    ));
    let all = watcher::Config::default;
    // Namespaces are read cluster-wide (a cluster-scoped kind); everything
    // in them through one watch per watched namespace, or one for all. Each
    // watch's mapper counts the namespace it wakes as pending.
    let scope = &ctx.scope;
    let (namespaces, writer) = reflector::store();
    let namespace_changes = reflector(writer, watcher(Api::<Namespace>::all(client.clone()), all()))
        .default_backoff()
        .applied_objects();
    let mut controller = Controller::for_stream(logged(namespace_changes), namespaces);
    for api in scope.apis::<ConfigMap>(&client) {
        // Not `.owns`: it keys the owner in the child's namespace, which never
        // matches a (cluster-scoped) Namespace.
        let ctx = Arc::clone(&ctx);
        controller = controller.watches_stream(changes(api, owned.clone()), move |cm| {
            ctx.queued(namespace_key(&cm))
        });
    }
    for api in scope.apis::<LLMRoute>(&client) {
        let ctx = Arc::clone(&ctx);
        controller = controller.watches_stream(changes(api, all()), move |r| ctx.queued(namespace_key(&r)));
    }
    for api in scope.apis::<ProviderSecret>(&client) {
        let ctx = Arc::clone(&ctx);
        controller = controller.watches_stream(changes(api, all()), move |p| ctx.queued(namespace_key(&p)));
    }
    for api in scope.apis::<VirtualKey>(&client) {
        let ctx = Arc::clone(&ctx);
        controller = controller.watches_stream(changes(api, all()), move |k| ctx.queued(namespace_key(&k)));
    }
    for api in scope.apis::<Budget>(&client) {
        let ctx = Arc::clone(&ctx);
        controller = controller.watches_stream(changes(api, all()), move |b| ctx.queued(namespace_key(&b)));
    }
    // Metadata only: a change is all the trigger needs, and the values of
    // Secrets no llmesh resource references never reach this process.
    for api in scope.apis::<PartialObjectMeta<Secret>>(&client) {
        let ctx = Arc::clone(&ctx);
        controller = controller.watches_stream(changes(api, all()), move |s| {
            ctx.queued(ctx.secrets.namespace_to_reconcile(&s))
        });
    }
    controller
        .with_config(Config::default().debounce(DEBOUNCE))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "controller event");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 9, 10, 100].map(|n| backoff(n).as_secs()).to_vec();
        assert_eq!(delays, [1, 2, 4, 256, 300, 300]);
    }

    fn secret(namespace: &str, name: &str) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.name = Some(name.to_owned());
        secret.metadata.namespace = Some(namespace.to_owned());
        secret
    }

    #[test]
    fn only_referenced_secrets_map_to_their_namespace() {
        let index = SecretIndex::default();
        index.record("team-a", BTreeSet::from(["openai-key".to_owned()]));
        assert_eq!(
            index.namespace_to_reconcile(&secret("team-a", "openai-key")),
            Some(ObjectRef::new("team-a"))
        );
        assert_eq!(index.namespace_to_reconcile(&secret("team-a", "other")), None);
        assert_eq!(
            index.namespace_to_reconcile(&secret("team-b", "openai-key")),
            None
        );
        index.record("team-a", BTreeSet::new());
        assert_eq!(
            index.namespace_to_reconcile(&secret("team-a", "openai-key")),
            None
        );
    }
}
