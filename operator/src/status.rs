//! Status of each resource: the `Ready` condition (with a reason and a
//! message naming the field to fix), `observedGeneration` and per-kind fields,
//! derived from the compiler's output and written only when they change.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use llmesh_crds::resources::{
    BudgetStatus, LLMRouteStatus, ProviderSecretStatus, ResourceStatus, VirtualKeyStatus,
};
use llmesh_crds::{Budget, Compiled, LLMRoute, Problem, ProviderSecret, VirtualKey};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::events::Notice;
use crate::metrics::States;
use crate::namespace::Gathered;
use crate::{Error, FIELD_MANAGER};

/// The one condition type every llmesh resource reports.
pub const READY: &str = "Ready";
/// Reason: the resource is part of the served configuration.
pub const REASON_IN_FORCE: &str = "InForce";
/// Reason: the resource is invalid and left out of the configuration.
pub const REASON_INVALID: &str = "Invalid";
/// Reason: the resource is invalid; its last good version is still served.
pub const REASON_PREVIOUS_IN_FORCE: &str = "PreviousVersionInForce";

/// The `Ready` condition for a resource with these problems. The transition
/// time of `current` is kept when the condition's status does not change, so
/// an unchanged resource yields an unchanged status (and no write).
pub fn ready_condition(
    problems: &[&Problem],
    in_force_message: String,
    generation: Option<i64>,
    current: Option<&Condition>,
    now: &Time,
) -> Condition {
    let (status, reason, message) = match problems {
        [] => ("True", REASON_IN_FORCE, in_force_message),
        _ => {
            let details: Vec<String> = problems
                .iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect();
            let details = details.join("; ");
            if problems.iter().any(|p| p.kept_previous) {
                (
                    "False",
                    REASON_PREVIOUS_IN_FORCE,
                    format!("{details} (the previous version stays in force)"),
                )
            } else {
                ("False", REASON_INVALID, details)
            }
        }
    };
    let last_transition_time = current
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn ready_of(status: &ResourceStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == READY)
}

/// The status a route should report.
pub fn route_status(route: &LLMRoute, compiled: &Compiled, now: &Time) -> LLMRouteStatus {
    let name = route.name_any();
    let served = compiled.config.routes.iter().find(|(_, r)| r.resource == name);
    let resolved_targets = served
        .map(|(_, r)| {
            r.targets
                .iter()
                .map(|t| format!("{}/{}", t.provider, t.model))
                .collect()
        })
        .unwrap_or_default();
    let problems: Vec<&Problem> = compiled.problems_of("LLMRoute", &name).collect();
    let alias = llmesh_crds::compile::alias_of(route);
    let current = route.status.as_ref().and_then(|s| ready_of(&s.common));
    let in_force = format!("serving model {alias}");
    let generation = route.meta().generation;
    LLMRouteStatus {
        common: ResourceStatus {
            observed_generation: generation,
            conditions: vec![ready_condition(&problems, in_force, generation, current, now)],
        },
        model: Some(alias),
        resolved_targets,
        ..LLMRouteStatus::default()
    }
}

/// The status a provider account should report.
pub fn provider_status(
    provider: &ProviderSecret,
    routes: &[LLMRoute],
    compiled: &Compiled,
    now: &Time,
) -> ProviderSecretStatus {
    let name = provider.name_any();
    let used_by: BTreeSet<String> = routes
        .iter()
        .filter(|r| r.spec.targets.iter().any(|t| t.provider == name))
        .map(ResourceExt::name_any)
        .collect();
    let problems: Vec<&Problem> = compiled.problems_of("ProviderSecret", &name).collect();
    let current = provider.status.as_ref().and_then(|s| ready_of(&s.common));
    let in_force = format!("provider {} is configured", provider.spec.provider.as_str());
    let generation = provider.meta().generation;
    ProviderSecretStatus {
        common: ResourceStatus {
            observed_generation: generation,
            conditions: vec![ready_condition(&problems, in_force, generation, current, now)],
        },
        used_by: used_by.into_iter().collect(),
    }
}

/// The status a virtual key should report.
pub fn key_status(key: &VirtualKey, compiled: &Compiled, now: &Time) -> VirtualKeyStatus {
    let name = key.name_any();
    let problems: Vec<&Problem> = compiled.problems_of("VirtualKey", &name).collect();
    let current = key.status.as_ref().and_then(|s| ready_of(&s.common));
    let in_force = if key.spec.disabled {
        "the sidecars know the key and refuse it (spec.disabled)".to_owned()
    } else {
        "the sidecars accept the key".to_owned()
    };
    let generation = key.meta().generation;
    let previous_key_valid_until = compiled
        .config
        .keys
        .get(&name)
        .and_then(|k| k.previous_key_hashes.iter().map(|p| p.valid_until_unix).max())
        .and_then(|at| jiff::Timestamp::from_second(at).ok())
        .map(|at| at.to_string());
    VirtualKeyStatus {
        common: ResourceStatus {
            observed_generation: generation,
            conditions: vec![ready_condition(&problems, in_force, generation, current, now)],
        },
        key_id: Some(name),
        secret_name: Some(key.secret_name()),
        expires_at: key.spec.expires_at.clone(),
        previous_key_valid_until,
        ..VirtualKeyStatus::default()
    }
}

/// The status a budget should report. Spend (`spentUsd`, `state`) is not
/// the reconcile's: it is left out here, and out of the comparison.
pub fn budget_status(budget: &Budget, compiled: &Compiled, now: &Time) -> BudgetStatus {
    let name = budget.name_any();
    let problems: Vec<&Problem> = compiled.problems_of("Budget", &name).collect();
    let current = budget
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    let (period, time_zone) = compiled.config.budgets.get(&name).map_or_else(
        || {
            let spec = &budget.spec;
            let zone = spec.time_zone.clone().unwrap_or_else(|| "UTC".to_owned());
            (spec.period.unwrap_or_default(), zone)
        },
        |b| (b.period, b.time_zone.clone()),
    );
    let period = format!("{} ({time_zone})", period.as_str());
    let in_force = format!("{} USD {period} limit in force", budget.spec.limit_usd);
    let generation = budget.meta().generation;
    BudgetStatus {
        observed_generation: generation,
        conditions: vec![ready_condition(&problems, in_force, generation, current, now)],
        period: Some(period),
        ..BudgetStatus::default()
    }
}

/// What writing the statuses did.
#[derive(Debug, Default)]
pub struct Written {
    /// How many statuses were written.
    pub count: usize,
    /// Events for resources whose `Ready` changed.
    pub notices: Vec<Notice>,
    /// How many resources of each kind are Ready (`true`) or not.
    pub states: States,
}

/// What [`Written::settle`] needs of a status.
trait OwnedStatus: Serialize + PartialEq + Clone {
    fn conditions(&self) -> &[Condition];

    /// The part of a stored status this operator writes; fields another
    /// writer fills are cleared, so they alone never cause a write.
    fn owned_part(&self) -> Self {
        self.clone()
    }
}

impl OwnedStatus for ProviderSecretStatus {
    fn conditions(&self) -> &[Condition] {
        &self.common.conditions
    }
}

impl OwnedStatus for LLMRouteStatus {
    fn conditions(&self) -> &[Condition] {
        &self.common.conditions
    }

    /// The sidecar counts come from the sync channel's own field manager.
    fn owned_part(&self) -> Self {
        Self {
            sidecars_connected: None,
            sidecars_in_sync: None,
            config_version: None,
            ..self.clone()
        }
    }
}

impl OwnedStatus for VirtualKeyStatus {
    fn conditions(&self) -> &[Condition] {
        &self.common.conditions
    }

    /// The key's spend comes from the sync channel's own field manager.
    fn owned_part(&self) -> Self {
        Self {
            spent_usd: None,
            period: None,
            period_end: None,
            last_report_at: None,
            ..self.clone()
        }
    }
}

impl OwnedStatus for BudgetStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// Spend and state come from the sidecars' reports, written by the
    /// sync channel's own field manager, not by the reconcile.
    fn owned_part(&self) -> Self {
        Self {
            spent_usd: None,
            state: None,
            period_end: None,
            last_report_at: None,
            reporting_sidecars: None,
            ..self.clone()
        }
    }
}

impl Written {
    /// Writes `desired` when it differs from what is `stored`, counts the
    /// resource's state and notes a change of `Ready`.
    async fn settle<K, S: OwnedStatus>(
        &mut self,
        client: &Client,
        namespace: &str,
        resource: &K,
        stored: Option<&S>,
        desired: &S,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let ready = |status: &S| status.conditions().iter().find(|c| c.type_ == READY).cloned();
        let (before, after) = (stored.and_then(ready), ready(desired));
        let is_ready = after.as_ref().is_some_and(|c| c.status == "True");
        *self
            .states
            .entry((K::kind(&()).into_owned(), is_ready))
            .or_default() += 1;
        if let Some(after) = &after
            && before.map(|c| c.status) != Some(after.status.clone())
        {
            self.notices
                .push(Notice::ready_changed(resource, is_ready, &after.message));
        }
        if stored.map(S::owned_part).as_ref() != Some(desired) {
            write(client, namespace, resource, desired).await?;
            self.count += 1;
        }
        Ok(())
    }
}

/// Writes every status that differs from the one stored.
///
/// # Errors
/// A status write failed.
pub async fn write_changed(
    client: &Client,
    namespace: &str,
    gathered: &Gathered,
    compiled: &Compiled,
) -> Result<Written, Error> {
    let now = Time(jiff::Timestamp::now());
    let mut written = Written::default();
    for provider in &gathered.providers {
        let desired = provider_status(provider, &gathered.routes, compiled, &now);
        let stored = provider.status.as_ref();
        written
            .settle(client, namespace, provider, stored, &desired)
            .await?;
    }
    for route in &gathered.routes {
        let desired = route_status(route, compiled, &now);
        let stored = route.status.as_ref();
        written.settle(client, namespace, route, stored, &desired).await?;
    }
    for budget in &gathered.budgets {
        let desired = budget_status(budget, compiled, &now);
        let stored = budget.status.as_ref();
        written
            .settle(client, namespace, budget, stored, &desired)
            .await?;
    }
    for key in &gathered.keys {
        let desired = key_status(key, compiled, &now);
        let stored = key.status.as_ref();
        written.settle(client, namespace, key, stored, &desired).await?;
    }
    Ok(written)
}

/// Server-side applies `status` to the resource's status subresource.
async fn write<K>(
    client: &Client,
    namespace: &str,
    resource: &K,
    status: &impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let name = resource.name_any();
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(client.clone(), namespace)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(|source| Error::WriteStatus {
            kind: K::kind(&()).into_owned(),
            namespace: namespace.to_owned(),
            name,
            source: Box::new(source),
        })?;
    Ok(())
}
