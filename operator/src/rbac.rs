//! The Kubernetes rights the operator's calls need, in one list: the chart's
//! RBAC is checked against it (`llmesh-operator --contract`).

use serde::Serialize;

/// Where a rule must be granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Cluster-wide (cluster-scoped objects, or reads every namespace needs).
    Cluster,
    /// In every namespace the operator watches: cluster-wide by default, in
    /// each listed namespace with `--watch-namespaces`.
    Watched,
    /// In the operator's own namespace only.
    Own,
}

/// One RBAC rule and the calls that need it.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Where it is granted.
    pub scope: Scope,
    /// The API group (`""` for the core group).
    pub api_group: &'static str,
    /// Resources (subresources as `kind/sub`).
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Limits the rule to these object names (empty: any).
    pub resource_names: &'static [&'static str],
    /// The calls that need it.
    pub why: &'static str,
}

const fn rule(
    scope: Scope,
    api_group: &'static str,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
    why: &'static str,
) -> Rule {
    Rule {
        scope,
        api_group,
        resources,
        verbs,
        resource_names: &[],
        why,
    }
}

/// Every rule the operator needs, and nothing more.
pub const RULES: &[Rule] = &[
    rule(
        Scope::Cluster,
        "",
        &["namespaces"],
        &["get", "list", "watch"],
        "one reconcile per namespace; the namespace annotations injection reads",
    ),
    Rule {
        resource_names: &[crate::webhook::CONFIGURATION_NAME],
        ..rule(
            Scope::Cluster,
            "admissionregistration.k8s.io",
            &["mutatingwebhookconfigurations"],
            &["get", "patch"],
            "the webhook writes the CA bundle into its own registration",
        )
    },
    rule(
        Scope::Watched,
        "llmesh.io",
        &["llmroutes", "providersecrets", "virtualkeys", "budgets"],
        &["get", "list", "watch"],
        "the compiler's inputs",
    ),
    rule(
        Scope::Watched,
        "llmesh.io",
        &[
            "llmroutes/status",
            "providersecrets/status",
            "virtualkeys/status",
            "budgets/status",
        ],
        &["patch"],
        "Ready conditions and per-kind status (server-side apply)",
    ),
    rule(
        Scope::Watched,
        "",
        &["configmaps"],
        &["get", "list", "watch", "create", "patch"],
        "the compiled configuration `llmesh-config`; the webhook's cache of it",
    ),
    rule(
        Scope::Watched,
        "",
        &["secrets"],
        &["get", "list", "watch"],
        "referenced provider and key Secrets, read by name; the watch is metadata-only",
    ),
    rule(
        Scope::Watched,
        "",
        &["secrets"],
        &["create", "update"],
        "generated and rotated virtual keys (only Secrets the operator created are updated)",
    ),
    rule(
        Scope::Watched,
        "events.k8s.io",
        &["events"],
        &["create", "patch"],
        "Events: resources turning invalid or valid, keys generated, pods missing the sidecar",
    ),
    rule(
        Scope::Watched,
        "",
        &["pods"],
        &["get", "list", "watch"],
        "annotated pods that came up without the sidecar",
    ),
    rule(
        Scope::Cluster,
        "authentication.k8s.io",
        &["tokenreviews"],
        &["create"],
        "the sync channel checks each sidecar's projected token (audience llmesh-sync)",
    ),
    rule(
        Scope::Watched,
        "apps",
        &["deployments", "statefulsets"],
        &["patch"],
        "restarting opted-in workloads whose pods missed the sidecar",
    ),
    rule(
        Scope::Own,
        "coordination.k8s.io",
        &["leases"],
        &["create"],
        "creating the leader-election Lease",
    ),
    Rule {
        resource_names: &["llmesh-operator"],
        ..rule(
            Scope::Own,
            "coordination.k8s.io",
            &["leases"],
            &["get", "update"],
            "holding the leader-election Lease",
        )
    },
    Rule {
        resource_names: &[crate::webhook::DEFAULT_SECRET],
        ..rule(
            Scope::Own,
            "",
            &["secrets"],
            &["get", "update"],
            "the webhook's certificate: read, renewed",
        )
    },
    // RBAC cannot name the object of a create.
    rule(
        Scope::Own,
        "",
        &["secrets"],
        &["create"],
        "the webhook's certificate: created on first start",
    ),
    Rule {
        resource_names: &[crate::sync::cluster::STATE_CONFIG_MAP],
        ..rule(
            Scope::Own,
            "",
            &["configmaps"],
            &["get", "patch"],
            "the sync ledger: acknowledged spend survives leader changes",
        )
    },
    rule(
        Scope::Own,
        "",
        &["configmaps"],
        &["create"],
        "the sync ledger: created by its first server-side apply",
    ),
    rule(
        Scope::Own,
        "",
        &["pods"],
        &["patch"],
        "the leader labels its own pod llmesh.io/sync-leader, which the llmesh-sync Service selects",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_has_verbs_resources_and_a_reason() {
        for rule in RULES {
            assert!(!rule.verbs.is_empty() && !rule.resources.is_empty(), "{rule:?}");
            assert!(!rule.why.is_empty(), "{rule:?}");
        }
    }

    #[test]
    fn only_the_operators_own_objects_are_named() {
        let named: Vec<(&str, &[&str])> = RULES
            .iter()
            .filter(|r| !r.resource_names.is_empty())
            .map(|r| (r.resources[0], r.resource_names))
            .collect();
        assert_eq!(
            named,
            [
                ("mutatingwebhookconfigurations", &["llmesh-sidecar-injector"][..]),
                ("leases", &["llmesh-operator"]),
                ("secrets", &["llmesh-webhook-tls"]),
                ("configmaps", &["llmesh-sync-state"]),
            ]
        );
    }

    #[test]
    fn own_namespace_reads_and_updates_are_by_name() {
        for rule in RULES.iter().filter(|r| r.scope == Scope::Own) {
            let unnamed = rule.resource_names.is_empty();
            assert!(
                !unnamed || rule.verbs == ["create"] || rule.resources == ["pods"],
                "{rule:?}"
            );
        }
    }
}
