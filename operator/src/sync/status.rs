//! What the leader writes from the ledger into the cluster: each Budget's
//! spend fields (`spentUsd`, `state`, `periodEnd`, `lastReportAt`,
//! `reportingSidecars`) at most every [`STATUS_EVERY`] and at hand-off, the
//! budgets' Events (a threshold crossed, the limit exceeded: once per
//! period, from the cluster-wide figure) and the pods stuck on an old
//! configuration. At leader start it resumes spend from what the statuses say.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use llmesh_crds::config::BudgetConfig;
use llmesh_crds::resources::BudgetStatus;
use llmesh_crds::{Budget, period};
use parking_lot::Mutex;

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

/// Writes the leader's view of spend into the cluster.
pub struct StatusWriter {
    client: Client,
    clock: Clock,
    server: Arc<SyncServer>,
    recorder: Recorder,
    written: Mutex<HashMap<(String, String), BudgetStatus>>,
    announced: Mutex<HashMap<(String, String), Announced>>,
    stale_announced: Mutex<BTreeSet<(String, String, String)>>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
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

    /// Resumes from the Budgets' statuses: spend of the period in force at
    /// `now` seeds the ledger (where it knows nothing newer), and what was
    /// already announced is not announced again.
    ///
    /// # Errors
    /// Listing Budgets failed.
    pub async fn resume(&self, scope: &WatchScope, now: Timestamp) -> Result<usize, Error> {
        let mut seeded = 0;
        for api in scope.apis::<Budget>(&self.client) {
            let budgets = api
                .list(&Default::default())
                .await
                .map_err(|source| Error::sync("listing Budgets to resume spend", source))?;
            for budget in budgets {
                let (Some(namespace), Some(status)) = (budget.namespace(), budget.status.as_ref()) else {
                    continue;
                };
                let name = budget.name_any();
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
                match write_spend(&self.client, &namespace, &name, &desired).await {
                    Ok(()) => {
                        self.written.lock().insert(key, desired);
                        count += 1;
                    }
                    // A Budget deleted since the configuration was compiled: nothing to write.
                    Err(Error::WriteStatus { source, .. }) if matches!(&*source, kube::Error::Api(s) if s.code == 404) =>
                        {}
                    Err(error) => {
                        tracing::warn!(%error, "writing a budget's spend failed; retrying next round");
                        failed = Some(error);
                    }
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

/// The spend `budget`'s status records for the period in force at `now`;
/// none when it records another period (the calendar moved on) or nothing.
pub fn resumed_spend(budget: &Budget, now: Timestamp) -> Option<Spend> {
    let status = budget.status.as_ref()?;
    let spent_usd = status.spent_usd?;
    let zone_name = budget.spec.time_zone.as_deref().unwrap_or("UTC");
    let zone = TimeZone::get(zone_name).ok()?;
    let kind = budget.spec.period.unwrap_or_default();
    let start = period::start(kind, &zone, now);
    let end = period::next_start(kind, &zone, start)
        .and_then(|s| Timestamp::from_second(s).ok())
        .map(|t| t.to_string());
    if end != status.period_end {
        return None;
    }
    let last_report_ms = status
        .last_report_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map_or(0, Timestamp::as_millisecond);
    Some(Spend {
        period_start: start,
        spent_usd,
        tokens: 0,
        last_report_ms,
        reporters: BTreeSet::new(),
    })
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

/// Server-side applies the spend fields of Budget `namespace/name`.
async fn write_spend(
    client: &Client,
    namespace: &str,
    name: &str,
    spend: &BudgetStatus,
) -> Result<(), Error> {
    let body = serde_json::json!({
        "apiVersion": Budget::api_version(&()),
        "kind": Budget::kind(&()),
        "status": spend,
    });
    Api::<Budget>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::apply(SYNC_FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|source| Error::WriteStatus {
            kind: Budget::kind(&()).into_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: Box::new(source),
        })?;
    Ok(())
}
