//! What the leader writes from the ledger into the cluster: each Budget's
//! spend fields (`spentUsd`, `state`, `periodEnd`, `lastReportAt`,
//! `reportingSidecars`), each VirtualKey's spend, and each LLMRoute's count
//! of sidecars connected and in sync, at most every [`STATUS_EVERY`] and at
//! hand-off; the budgets' Events (a threshold crossed, the limit exceeded:
//! once per period, from the cluster-wide figure) and the pods stuck on an
//! old configuration. At leader start it resumes spend from what the
//! statuses say, when the ledger has nothing newer.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use llmesh_crds::config::BudgetConfig;
use llmesh_crds::resources::{BudgetPeriod, BudgetStatus, LLMRouteStatus, VirtualKeyStatus};
use llmesh_crds::{Budget, LLMRoute, VirtualKey, period};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ledger::Spend;
use super::server::SyncServer;
use crate::events::{self, Notice};
use crate::scope::WatchScope;
use crate::{Error, FIELD_MANAGER};

/// Statuses are written at most this often (and at hand-off).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);
/// A sidecar reporting an older configuration this long after a newer one
/// was published counts as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// Sidecars that have not reported for this long are not judged stale or in sync.
const ACTIVE_WITHIN_MS: i64 = 120_000;
/// The field manager of the spend fields, apart from the reconcile's
/// (conditions, period), so neither removes the other's fields.
pub const SYNC_FIELD_MANAGER: &str = "llmesh-operator-sync";

/// How far a budget got in a period: the Events already published for it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Announced {
    period_end: Option<String>,
    /// The highest threshold (percent) whose crossing was announced.
    threshold: Option<u32>,
    exceeded: bool,
}

/// What time it is (the calendar periods roll over by it).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// A resource's status as last written (or found at resume), by namespace and name.
type Written<S> = Mutex<HashMap<(String, String), S>>;

/// Writes the leader's view of spend into the cluster.
pub struct StatusWriter {
    client: Client,
    clock: Clock,
    server: Arc<SyncServer>,
    recorder: Recorder,
    written: Written<BudgetStatus>,
    written_keys: Written<VirtualKeyStatus>,
    written_routes: Written<LLMRouteStatus>,
    announced: Mutex<HashMap<(String, String), Announced>>,
    stale_announced: Mutex<BTreeSet<(String, String, String)>>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

/// The spend fields of a VirtualKey's `status`, the part this writer owns.
pub fn key_spend_part(status: &VirtualKeyStatus) -> VirtualKeyStatus {
    VirtualKeyStatus {
        spent_usd: status.spent_usd,
        period: status.period.clone(),
        period_end: status.period_end.clone(),
        last_report_at: status.last_report_at.clone(),
        ..VirtualKeyStatus::default()
    }
}

/// The spend fields of `status`, the part this writer owns.
pub fn spend_part(status: &BudgetStatus) -> BudgetStatus {
    BudgetStatus {
        spent_usd: status.spent_usd,
        state: status.state.clone(),
        period_end: status.period_end.clone(),
        last_report_at: status.last_report_at.clone(),
        reporting_sidecars: status.reporting_sidecars,
        ..BudgetStatus::default()
    }
}

impl StatusWriter {
    /// A writer for `server`'s ledger; `instance` tells replicas apart in Events.
    pub fn new(client: Client, server: Arc<SyncServer>, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            clock: Arc::new(Timestamp::now),
            server,
            written: Mutex::default(),
            written_keys: Mutex::default(),
            written_routes: Mutex::default(),
            announced: Mutex::default(),
            stale_announced: Mutex::default(),
        }
    }

    /// Reads the time from `clock` instead of the system's (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Resumes from the Budgets' and VirtualKeys' statuses: spend of the
    /// period in force at `now` seeds the ledger (where it knows nothing
    /// newer), and what was already announced is not announced again.
    ///
    /// # Errors
    /// Listing Budgets or VirtualKeys failed.
    pub async fn resume(&self, scope: &WatchScope, now: Timestamp) -> Result<usize, Error> {
        let mut seeded = 0;
        let mut calendars = HashMap::new();
        for api in scope.apis::<Budget>(&self.client) {
            let budgets = api
                .list(&Default::default())
                .await
                .map_err(|source| Error::sync("listing Budgets to resume spend", source))?;
            for budget in budgets {
                let Some(namespace) = budget.namespace() else {
                    continue;
                };
                let name = budget.name_any();
                calendars.insert((namespace.clone(), name.clone()), calendar(&budget));
                let Some(status) = budget.status.as_ref() else {
                    continue;
                };
                let Some(spend) = resumed_spend(&budget, now) else {
                    continue;
                };
                let key = (namespace.clone(), name.clone());
                self.written.lock().insert(key.clone(), spend_part(status));
                let percent = spend.spent_usd / budget.spec.limit_usd * 100.0;
                self.announced.lock().insert(
                    key,
                    Announced {
                        period_end: status.period_end.clone(),
                        threshold: budget
                            .spec
                            .thresholds
                            .iter()
                            .copied()
                            .filter(|t| f64::from(*t) <= percent)
                            .max(),
                        exceeded: status.state.as_deref() == Some("exceeded"),
                    },
                );
                self.server.ledger().seed(&namespace, &name, spend);
                seeded += 1;
            }
        }
        for api in scope.apis::<VirtualKey>(&self.client) {
            let keys = api
                .list(&Default::default())
                .await
                .map_err(|source| Error::sync("listing VirtualKeys to resume spend", source))?;
            for key in keys {
                let (Some(namespace), Some(status)) = (key.namespace(), key.status.as_ref()) else {
                    continue;
                };
                let name = key.name_any();
                let (kind, zone) = key
                    .spec
                    .budget
                    .as_ref()
                    .and_then(|b| calendars.get(&(namespace.clone(), b.clone())))
                    .cloned()
                    .unwrap_or((BudgetPeriod::Monthly, "UTC".to_owned()));
                let recorded = Recorded {
                    spent_usd: status.spent_usd,
                    period_end: status.period_end.as_deref(),
                    last_report_at: status.last_report_at.as_deref(),
                    reporting: None,
                };
                let Some(spend) = recorded.resume(kind, &zone, now) else {
                    continue;
                };
                self.written_keys
                    .lock()
                    .insert((namespace.clone(), name.clone()), key_spend_part(status));
                self.server.ledger().seed_key(&namespace, &name, spend);
                seeded += 1;
            }
        }
        Ok(seeded)
    }

    /// Writes every budget status that changed since the last write,
    /// publishes the Events due and updates the stale-sidecars gauge.
    /// Returns how many statuses were written.
    ///
    /// # Errors
    /// A status write failed (the others were still tried; the next round retries).
    pub async fn write(&self, now: Timestamp) -> Result<usize, Error> {
        let mut count = 0;
        let mut failed = None;
        let mut notices = Vec::new();
        for namespace in self.server.namespaces() {
            let Some(published) = self.server.published(&namespace) else {
                continue;
            };
            for (name, status) in self.server.budget_statuses(&namespace, now) {
                let key = (namespace.clone(), name.clone());
                if let Some(config) = published.config.budgets.get(&name) {
                    notices.extend(self.announce(&key, config, &status));
                }
                let desired = spend_part(&status);
                if self.written.lock().get(&key) == Some(&desired) {
                    continue;
                }
                match write_part::<Budget>(&self.client, &namespace, &name, &desired).await {
                    Ok(true) => {
                        self.written.lock().insert(key, desired);
                        count += 1;
                    }
                    Ok(false) => {}
                    Err(error) => failed = Some(error),
                }
            }
            for (name, status) in self.server.key_statuses(&namespace, now) {
                let key = (namespace.clone(), name.clone());
                let desired = key_spend_part(&status);
                if self.written_keys.lock().get(&key) == Some(&desired) {
                    continue;
                }
                match write_part::<VirtualKey>(&self.client, &namespace, &name, &desired).await {
                    Ok(true) => {
                        self.written_keys.lock().insert(key, desired);
                        count += 1;
                    }
                    Ok(false) => {}
                    Err(error) => failed = Some(error),
                }
            }
            let in_sync = self.server.in_sync(&namespace);
            let desired = LLMRouteStatus {
                sidecars_connected: Some(in_sync.connected),
                sidecars_in_sync: Some(in_sync.in_sync),
                config_version: in_sync.config_version,
                ..LLMRouteStatus::default()
            };
            let routes: BTreeSet<&str> = published
                .config
                .routes
                .values()
                .map(|r| r.resource.as_str())
                .collect();
            for name in routes {
                let key = (namespace.clone(), name.to_owned());
                if self.written_routes.lock().get(&key) == Some(&desired) {
                    continue;
                }
                match write_part::<LLMRoute>(&self.client, &namespace, name, &desired).await {
                    Ok(true) => {
                        self.written_routes.lock().insert(key, desired.clone());
                        count += 1;
                    }
                    Ok(false) => {}
                    Err(error) => failed = Some(error),
                }
            }
        }
        notices.extend(self.stale_sidecars(now));
        events::publish(&self.recorder, notices).await;
        failed.map_or(Ok(count), Err)
    }

    /// The Events `status` calls for that were not published in its period yet.
    fn announce(&self, key: &(String, String), config: &BudgetConfig, status: &BudgetStatus) -> Vec<Notice> {
        let spent = status.spent_usd.unwrap_or_default();
        let percent = if config.limit_usd > 0.0 {
            spent / config.limit_usd * 100.0
        } else {
            f64::INFINITY
        };
        let crossed = config
            .thresholds
            .iter()
            .copied()
            .filter(|t| f64::from(*t) <= percent)
            .max();
        let exceeded = status.state.as_deref() == Some("exceeded");
        let mut announced = self.announced.lock();
        let entry = announced.entry(key.clone()).or_default();
        if entry.period_end != status.period_end {
            *entry = Announced {
                period_end: status.period_end.clone(),
                ..Announced::default()
            };
        }
        let regarding = budget_ref(&key.0, &key.1);
        let mut notices = Vec::new();
        if let Some(threshold) = crossed.filter(|t| entry.threshold.is_none_or(|a| a < *t)) {
            entry.threshold = Some(threshold);
            if !exceeded {
                notices.push(Notice {
                    regarding: regarding.clone(),
                    warning: true,
                    reason: "BudgetThresholdCrossed",
                    note: format!(
                        "{spent:.2} of {} USD spent ({threshold}% threshold) across all sidecars",
                        config.limit_usd
                    ),
                });
            }
        }
        if exceeded && !entry.exceeded {
            entry.exceeded = true;
            notices.push(Notice {
                regarding,
                warning: true,
                reason: "BudgetExceeded",
                note: format!(
                    "{spent:.2} of {} USD spent across all sidecars; action {:?} applies until {}",
                    config.limit_usd,
                    config.action,
                    status.period_end.as_deref().unwrap_or("the budget is raised")
                ),
            });
        }
        notices
    }

    /// Counts the sidecars reporting an older configuration than the one
    /// published more than [`STALE_AFTER`] ago; one Event per pod and version.
    fn stale_sidecars(&self, now: Timestamp) -> Vec<Notice> {
        let mut stale = 0;
        let mut notices = Vec::new();
        let mut announced = self.stale_announced.lock();
        for namespace in self.server.namespaces() {
            let Some(published) = self.server.published(&namespace) else {
                continue;
            };
            if published.at.elapsed() < STALE_AFTER {
                continue;
            }
            let version = &published.config.version;
            for (instance, seen) in self.server.ledger().namespace(&namespace).instances {
                let active = now.as_millisecond() - seen.last_report_ms < ACTIVE_WITHIN_MS;
                if !active || &seen.config_version == version {
                    continue;
                }
                stale += 1;
                let pod = seen.pod.unwrap_or(instance);
                if announced.insert((namespace.clone(), pod.clone(), version.clone())) {
                    notices.push(Notice {
                        regarding: ObjectReference {
                            api_version: Some("v1".to_owned()),
                            kind: Some("Pod".to_owned()),
                            namespace: Some(namespace.clone()),
                            name: Some(pod),
                            ..ObjectReference::default()
                        },
                        warning: true,
                        reason: "SidecarConfigStale",
                        note: format!(
                            "the llmesh sidecar still serves configuration {} over {}s after {version} was pushed; \
                             its log says why (rejected or unreachable)",
                            seen.config_version,
                            STALE_AFTER.as_secs()
                        ),
                    });
                }
            }
        }
        self.server.metrics().stale.set(stale);
        notices
    }

    /// Writes every [`STATUS_EVERY`] until the process ends.
    pub async fn run(&self) {
        loop {
            tokio::time::sleep(STATUS_EVERY).await;
            if let Err(error) = self.write((self.clock)()).await {
                tracing::debug!(%error, "budget status round incomplete");
            }
        }
    }
}

/// A budget's period and time zone.
fn calendar(budget: &Budget) -> (BudgetPeriod, String) {
    let zone = budget.spec.time_zone.as_deref().unwrap_or("UTC");
    (budget.spec.period.unwrap_or_default(), zone.to_owned())
}

/// The spend fields a status records.
struct Recorded<'a> {
    spent_usd: Option<f64>,
    period_end: Option<&'a str>,
    last_report_at: Option<&'a str>,
    reporting: Option<u32>,
}

impl Recorded<'_> {
    /// The spend recorded for the period (of this calendar) in force at
    /// `now`; none when it records another period (the calendar moved on)
    /// or nothing.
    fn resume(&self, kind: BudgetPeriod, zone_name: &str, now: Timestamp) -> Option<Spend> {
        let spent_usd = self.spent_usd?;
        let zone = TimeZone::get(zone_name).ok()?;
        let start = period::start(kind, &zone, now);
        let end = period::next_start(kind, &zone, start)
            .and_then(|s| Timestamp::from_second(s).ok())
            .map(|t| t.to_string());
        if end.as_deref() != self.period_end {
            return None;
        }
        let last_report_ms = self
            .last_report_at
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map_or(0, Timestamp::as_millisecond);
        Some(Spend {
            period_start: start,
            spent_usd,
            last_report_ms,
            earlier_reporters: self.reporting.unwrap_or(0),
            ..Spend::default()
        })
    }
}

/// The spend `budget`'s status records for the period in force at `now`;
/// none when it records another period (the calendar moved on) or nothing.
pub fn resumed_spend(budget: &Budget, now: Timestamp) -> Option<Spend> {
    let status = budget.status.as_ref()?;
    let (kind, zone) = calendar(budget);
    Recorded {
        spent_usd: status.spent_usd,
        period_end: status.period_end.as_deref(),
        last_report_at: status.last_report_at.as_deref(),
        reporting: status.reporting_sidecars,
    }
    .resume(kind, &zone, now)
}

fn budget_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(Budget::api_version(&()).into_owned()),
        kind: Some(Budget::kind(&()).into_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        ..ObjectReference::default()
    }
}

/// Server-side applies `part` (the fields this writer owns) to the status
/// of `K` `namespace/name`. False when the resource is gone (deleted since
/// the configuration was compiled: nothing to write).
///
/// # Errors
/// The write failed (logged; the next round retries).
async fn write_part<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    part: &impl Serialize,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": part,
    });
    let written = Api::<K>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::apply(SYNC_FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await;
    match written {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(source) => {
            let error = Error::WriteStatus {
                kind: K::kind(&()).into_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source: Box::new(source),
            };
            tracing::warn!(%error, "writing a status from the sync channel failed; retrying next round");
            Err(error)
        }
    }
}
