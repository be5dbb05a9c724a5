//! Status of each resource: the `Ready` condition (with a reason and a
//! message naming the field to fix), `observedGeneration` and per-kind fields,
//! derived from the compiler's output and written only when they change.

use std::collections::BTreeSet;
use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use llmesh_crds::resources::{LLMRouteStatus, ProviderSecretStatus, ResourceStatus};
use llmesh_crds::{Compiled, LLMRoute, Problem, ProviderSecret};
use serde::Serialize;
use serde::de::DeserializeOwned;

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

/// Writes every status that differs from the one stored; returns how many it wrote.
///
/// # Errors
/// A status write failed.
pub async fn write_changed(
    client: &Client,
    namespace: &str,
    providers: &[ProviderSecret],
    routes: &[LLMRoute],
    compiled: &Compiled,
) -> Result<usize, Error> {
    let now = Time(jiff::Timestamp::now());
    let mut written = 0;
    for provider in providers {
        let desired = provider_status(provider, routes, compiled, &now);
        if provider.status.as_ref() != Some(&desired) {
            write(client, namespace, provider, &desired).await?;
            written += 1;
        }
    }
    for route in routes {
        let desired = route_status(route, compiled, &now);
        if route.status.as_ref() != Some(&desired) {
            write(client, namespace, route, &desired).await?;
            written += 1;
        }
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
