//! Pods that asked for the sidecar and came up without it (the webhook was
//! down, and its failure policy `Ignore` let them through): each is reported
//! once (a Warning Event on the pod, a metric), and where the namespace or
//! the workload says `llmesh.io/restart-on-miss: "true"`, its Deployment or
//! StatefulSet is restarted once the webhook is healthy again.
//!
//! The watch reads pod metadata only: the `llmesh.io/injected` label the
//! webhook sets tells injected pods apart, so no pod spec is ever cached.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use llmesh_crds::injection::{INJECTED_LABEL, RESTART_ON_MISS_ANNOTATION, SIDECAR_HASH_ANNOTATION};
use parking_lot::Mutex;
use serde_json::json;

use super::Error;
use super::metrics::WebhookMetrics;
use super::mutate::{InjectionSettings, NamespaceSettings, Owner, decide, owner, spec_skip};
use super::namespaces::NamespaceLookup;
use crate::events::{self, Notice};
use crate::scope::WatchScope;

/// A restarted workload is not restarted again for this long: its new pods
/// need time to roll out, and a webhook that keeps failing must not turn
/// into a restart loop.
pub const RESTART_COOLDOWN: SignedDuration = SignedDuration::from_mins(15);
/// How often due restarts are looked for.
const RESTART_CHECK: Duration = Duration::from_secs(30);
/// The annotation `kubectl rollout restart` sets; the same mechanism, so nothing new to learn.
const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";

/// What a pod's metadata says about its sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to report: injected with the current template, or not asking.
    Fine,
    /// Injected, with an older sidecar template or image.
    Stale,
    /// Asked for the sidecar, does not have it; the workload to restart, if it opted in.
    Missed(Option<Workload>),
}

/// A workload the operator may restart.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its owner reference (a Deployment or StatefulSet).
    pub owner: Owner,
}

/// The verdict on a pod with `metadata` in a namespace with `namespace` settings.
pub fn verdict(
    metadata: &ObjectMeta,
    namespace: &NamespaceSettings,
    settings: &InjectionSettings,
    current_hash: &str,
) -> Verdict {
    let labels = metadata.labels.as_ref();
    let injected = labels.is_some_and(|l| l.contains_key(INJECTED_LABEL));
    if metadata.deletion_timestamp.is_some() {
        return Verdict::Fine;
    }
    if decide(metadata, injected, namespace, settings).is_ok() {
        let opted_in = namespace.restart_on_miss
            || metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RESTART_ON_MISS_ANNOTATION))
                .is_some_and(|v| v == "true");
        let restartable = owner(metadata).filter(|o| o.kind == "Deployment" || o.kind == "StatefulSet");
        let workload = restartable.filter(|_| opted_in).map(|owner| Workload {
            namespace: namespace.name.clone(),
            owner,
        });
        return Verdict::Missed(workload);
    }
    let hash = metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SIDECAR_HASH_ANNOTATION));
    match hash {
        Some(hash) if injected && hash != current_hash => Verdict::Stale,
        _ => Verdict::Fine,
    }
}

/// The watch's memory: which pods are missing the sidecar or stale, which
/// were already reported, and when each workload was last restarted.
#[derive(Debug, Default)]
pub struct Tracker {
    missing: HashMap<String, Option<Workload>>,
    stale: BTreeSet<String>,
    reported: BTreeSet<String>,
    exempt: BTreeSet<String>,
    restarted: BTreeMap<Workload, Timestamp>,
}

impl Tracker {
    /// Whether pod `uid` is a missed-pod candidate seen for the first time,
    /// whose spec must be read before it is reported.
    pub fn is_new_candidate(&self, uid: &str, verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Missed(_)) && !self.reported.contains(uid) && !self.exempt.contains(uid)
    }

    /// Marks pod `uid` as one the webhook rightly leaves alone (its spec rules the sidecar out).
    pub fn exempt(&mut self, uid: &str) {
        self.exempt.insert(uid.to_owned());
    }

    /// Records the verdict on pod `uid`; returns whether it is a newly missed pod to report.
    pub fn observe(&mut self, uid: &str, verdict: Verdict) -> bool {
        let verdict = if self.exempt.contains(uid) {
            Verdict::Fine
        } else {
            verdict
        };
        self.stale.remove(uid);
        match verdict {
            Verdict::Fine => {
                self.missing.remove(uid);
                false
            }
            Verdict::Stale => {
                self.missing.remove(uid);
                self.stale.insert(uid.to_owned());
                false
            }
            Verdict::Missed(workload) => {
                self.missing.insert(uid.to_owned(), workload);
                self.reported.insert(uid.to_owned())
            }
        }
    }

    /// Forgets a deleted pod.
    pub fn forget(&mut self, uid: &str) {
        self.exempt.remove(uid);
        self.missing.remove(uid);
        self.stale.remove(uid);
        self.reported.remove(uid);
    }

    /// How many pods are missing the sidecar, and how many run an older one.
    pub fn counts(&self) -> (usize, usize) {
        (self.missing.len(), self.stale.len())
    }

    /// The workloads to restart now: each one with a missed pod that opted
    /// in, while the webhook is healthy, at most once per [`RESTART_COOLDOWN`].
    /// Marks them restarted.
    pub fn restarts_due(&mut self, now: Timestamp, webhook_healthy: bool) -> Vec<Workload> {
        if !webhook_healthy {
            return Vec::new();
        }
        let wanted: BTreeSet<Workload> = self.missing.values().flatten().cloned().collect();
        let due: Vec<Workload> = wanted
            .into_iter()
            .filter(|w| {
                self.restarted
                    .get(w)
                    .is_none_or(|at| now.duration_since(*at) >= RESTART_COOLDOWN)
            })
            .collect();
        for workload in &due {
            self.restarted.insert(workload.clone(), now);
        }
        due
    }
}

/// The watch, its state and the clients it acts with.
pub struct Missed {
    client: Client,
    recorder: Recorder,
    namespaces: Arc<dyn NamespaceLookup>,
    settings: Arc<InjectionSettings>,
    current_hash: String,
    metrics: WebhookMetrics,
    webhook_healthy: Arc<AtomicBool>,
    tracker: Mutex<Tracker>,
    /// The namespaces whose pods are watched.
    scope: WatchScope,
}

impl std::fmt::Debug for Missed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Missed")
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

impl Missed {
    /// A watch acting as `instance` (this replica's name in Events).
    pub fn new(
        client: Client,
        instance: String,
        namespaces: Arc<dyn NamespaceLookup>,
        settings: Arc<InjectionSettings>,
        metrics: WebhookMetrics,
        webhook_healthy: Arc<AtomicBool>,
    ) -> Self {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.to_owned(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespaces,
            current_hash: settings.template_hash(),
            settings,
            metrics,
            webhook_healthy,
            tracker: Mutex::default(),
            scope: WatchScope::All,
        }
    }

    /// Judges one pod; reports it when it is newly missed.
    ///
    /// # Errors
    /// Reading a candidate's spec failed (it is read again at its next event).
    pub async fn on_pod(&self, pod: &PartialObjectMeta<Pod>) -> Result<(), Error> {
        let uid = pod.uid().unwrap_or_default();
        let namespace = self.namespaces.settings(&pod.namespace().unwrap_or_default());
        let verdict = verdict(&pod.metadata, &namespace, &self.settings, &self.current_hash);
        if self.tracker.lock().is_new_candidate(&uid, &verdict) {
            // Metadata cannot show a host-network pod, which the webhook leaves alone
            // on purpose; one read of the spec per candidate settles it.
            let full = Api::<Pod>::namespaced(self.client.clone(), &namespace.name)
                .get_opt(&pod.name_any())
                .await
                .map_err(|e| Error::api(format!("reading pod {}/{}", namespace.name, pod.name_any()), e))?;
            if full.as_ref().and_then(spec_skip).is_some() {
                self.tracker.lock().exempt(&uid);
            }
        }
        let new = {
            let mut tracker = self.tracker.lock();
            let new = tracker.observe(&uid, verdict);
            let (missing, stale) = tracker.counts();
            self.metrics.set_counts(missing, stale);
            new
        };
        if !new {
            return Ok(());
        }
        self.metrics.missed();
        tracing::warn!(namespace = %namespace.name, pod = %pod.name_any(), "pod came up without the llmesh sidecar");
        events::publish(&self.recorder, vec![Notice::sidecar_missing(pod.object_ref(&()))]).await;
        Ok(())
    }

    /// Forgets a deleted pod.
    pub fn on_delete(&self, pod: &PartialObjectMeta<Pod>) {
        let mut tracker = self.tracker.lock();
        tracker.forget(&pod.uid().unwrap_or_default());
        let (missing, stale) = tracker.counts();
        self.metrics.set_counts(missing, stale);
    }

    /// Restarts the workloads that are due; returns how many were restarted.
    pub async fn restart_due(&self, now: Timestamp) -> usize {
        let healthy = self.webhook_healthy.load(Ordering::Relaxed);
        let due = self.tracker.lock().restarts_due(now, healthy);
        let mut restarted = 0;
        for workload in due {
            match restart(&self.client, &workload, now).await {
                Ok(()) => {
                    self.metrics.restarted();
                    restarted += 1;
                    tracing::info!(
                        namespace = %workload.namespace,
                        kind = %workload.owner.kind,
                        name = %workload.owner.name,
                        "restarted a workload whose pods missed the sidecar"
                    );
                }
                Err(error) => tracing::warn!(%error, "restarting a workload failed"),
            }
        }
        restarted
    }

    /// Watches only `scope`'s pods (default: every namespace's).
    #[must_use]
    pub fn with_scope(mut self, scope: WatchScope) -> Self {
        self.scope = scope;
        self
    }

    /// Watches pod metadata (in every watched namespace) and restarts due
    /// workloads, until the streams end.
    pub async fn run(self: Arc<Self>) {
        let pods = futures::stream::select_all(
            self.scope
                .apis::<PartialObjectMeta<Pod>>(&self.client)
                .into_iter()
                .map(|api| watcher(api, watcher::Config::default()).boxed()),
        )
        .default_backoff();
        let watch = {
            let this = Arc::clone(&self);
            pods.for_each(move |event| {
                let this = Arc::clone(&this);
                async move {
                    let result = match event {
                        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                            this.on_pod(&pod).await
                        }
                        Ok(watcher::Event::Delete(pod)) => {
                            this.on_delete(&pod);
                            Ok(())
                        }
                        Ok(watcher::Event::Init | watcher::Event::InitDone) => Ok(()),
                        Err(error) => {
                            tracing::debug!(%error, "pod metadata watch");
                            Ok(())
                        }
                    };
                    if let Err(error) = result {
                        tracing::warn!(%error, "reporting a missed pod failed");
                    }
                }
            })
        };
        let restarts = async {
            let mut tick = tokio::time::interval(RESTART_CHECK);
            loop {
                tick.tick().await;
                self.restart_due(Timestamp::now()).await;
            }
        };
        tokio::select! {
            () = watch => {}
            () = restarts => {}
        }
    }
}

/// Restarts `workload` the way `kubectl rollout restart` does: a new
/// `restartedAt` annotation on its pod template.
///
/// # Errors
/// The patch failed (the workload is gone, or RBAC is missing).
pub async fn restart(client: &Client, workload: &Workload, now: Timestamp) -> Result<(), Error> {
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT_ANNOTATION: now.to_string()
    }}}}});
    let params = PatchParams::default();
    let name = &workload.owner.name;
    let result = match workload.owner.kind.as_str() {
        "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), &workload.namespace)
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
        _ => Api::<Deployment>::namespaced(client.clone(), &workload.namespace)
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ()),
    };
    result.map_err(|e| {
        Error::api(
            format!("restarting {} {}/{name}", workload.owner.kind, workload.namespace),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> InjectionSettings {
        InjectionSettings {
            image: "ghcr.io/llmesh/llmesh-sidecar:0.1.0".to_owned(),
            image_pull_policy: None,
            native_sidecar: true,
            operator_namespace: "llmesh-system".to_owned(),
            resources: super::super::mutate::Resources::default(),
            sync: None,
            otel_endpoint: None,
            otel_protocol: None,
        }
    }

    fn pod(annotations: &[(&str, &str)], labels: &[(&str, &str)], owner: Option<(&str, &str)>) -> ObjectMeta {
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        serde_json::from_value(json!({
            "name": "web-7c9f-abcde",
            "namespace": "team-a",
            "uid": "uid-1",
            "annotations": map(annotations),
            "labels": map(labels),
            "ownerReferences": owner.map(|(kind, name)| vec![json!({
                "apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "o", "controller": true
            })]),
        }))
        .expect("metadata")
    }

    fn namespace(restart: bool) -> NamespaceSettings {
        NamespaceSettings {
            name: "team-a".to_owned(),
            restart_on_miss: restart,
            ..NamespaceSettings::default()
        }
    }

    const ASKS: (&str, &str) = ("llmesh.io/inject", "enabled");

    #[test]
    fn verdicts() {
        let settings = settings();
        let hash = settings.template_hash();
        let rs = Some(("ReplicaSet", "web-7c9f"));
        let deployment = Workload {
            namespace: "team-a".to_owned(),
            owner: Owner {
                kind: "Deployment".to_owned(),
                name: "web".to_owned(),
            },
        };
        let template = ("pod-template-hash", "7c9f");
        let cases = [
            (pod(&[ASKS], &[template], rs), false, Verdict::Missed(None)),
            (
                pod(&[ASKS], &[template], rs),
                true,
                Verdict::Missed(Some(deployment.clone())),
            ),
            (
                pod(&[ASKS, (RESTART_ON_MISS_ANNOTATION, "true")], &[template], rs),
                false,
                Verdict::Missed(Some(deployment)),
            ),
            // Jobs are reported, never restarted.
            (
                pod(&[ASKS], &[], Some(("Job", "batch"))),
                true,
                Verdict::Missed(None),
            ),
            (pod(&[], &[], rs), true, Verdict::Fine),
            (
                pod(&[("llmesh.io/inject", "disabled")], &[], rs),
                true,
                Verdict::Fine,
            ),
            (
                pod(
                    &[ASKS, (SIDECAR_HASH_ANNOTATION, &hash)],
                    &[(INJECTED_LABEL, "true")],
                    rs,
                ),
                true,
                Verdict::Fine,
            ),
            (
                pod(
                    &[ASKS, (SIDECAR_HASH_ANNOTATION, "old")],
                    &[(INJECTED_LABEL, "true")],
                    rs,
                ),
                true,
                Verdict::Stale,
            ),
        ];
        for (index, (metadata, restart, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                verdict(&metadata, &namespace(restart), &settings, &hash),
                expected,
                "case {index}"
            );
        }
        let mut deleting = pod(&[ASKS], &[], rs);
        deleting.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(
            verdict(&deleting, &namespace(false), &settings, &hash),
            Verdict::Fine
        );
    }

    #[test]
    fn each_pod_is_reported_once_and_each_workload_restarted_once_per_cooldown() {
        let workload = Workload {
            namespace: "team-a".to_owned(),
            owner: Owner {
                kind: "Deployment".to_owned(),
                name: "web".to_owned(),
            },
        };
        let mut tracker = Tracker::default();
        assert!(tracker.observe("a", Verdict::Missed(Some(workload.clone()))));
        assert!(
            !tracker.observe("a", Verdict::Missed(Some(workload.clone()))),
            "reported once"
        );
        assert!(tracker.observe("b", Verdict::Missed(Some(workload.clone()))));
        assert!(!tracker.observe("c", Verdict::Stale));
        assert_eq!(tracker.counts(), (2, 1));

        let now = Timestamp::UNIX_EPOCH + SignedDuration::from_hours(1000);
        assert!(
            tracker.restarts_due(now, false).is_empty(),
            "not while the webhook is down"
        );
        assert_eq!(
            tracker.restarts_due(now, true),
            vec![workload.clone()],
            "once for both pods"
        );
        assert!(
            tracker
                .restarts_due(now + SignedDuration::from_mins(5), true)
                .is_empty()
        );
        assert_eq!(
            tracker.restarts_due(now + RESTART_COOLDOWN, true),
            vec![workload],
            "again after the cooldown if pods still miss it"
        );
        assert!(
            !tracker.is_new_candidate("a", &Verdict::Missed(None)),
            "already reported"
        );
        assert!(tracker.is_new_candidate("d", &Verdict::Missed(None)));
        tracker.exempt("d");
        assert!(
            !tracker.observe("d", Verdict::Missed(None)),
            "a host-network pod is never missed"
        );
        assert!(
            !tracker.is_new_candidate("d", &Verdict::Missed(None)),
            "its spec is read once"
        );
        tracker.forget("a");
        tracker.forget("b");
        tracker.observe("c", Verdict::Fine);
        assert_eq!(tracker.counts(), (0, 0));
    }
}
