//! `Budget`: a money limit over a period for the keys that name it.
// kube-derive takes one `printcolumn(...)` per column, each with the same keys.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spend limit in USD over a period, for every `VirtualKey` whose `budget`
/// names it, with what happens when it runs out and token ceilings that stop
/// runaway agents.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "llmesh.io",
    version = "v1alpha1",
    kind = "Budget",
    namespaced,
    status = "BudgetStatus",
    shortname = "llmb",
    category = "llmesh",
    printcolumn(name = "Limit", type_ = "number", json_path = ".spec.limitUsd"),
    printcolumn(name = "Spent", type_ = "number", json_path = ".status.spentUsd"),
    printcolumn(name = "Period", type_ = "string", json_path = ".spec.period"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.action) && self.action == 'downgrade' ? has(self.downgradeTo) : !has(self.downgradeTo)",
        "message": "downgradeTo is required with action downgrade, and only valid with it"
    }
]))]
pub struct BudgetSpec {
    /// The limit in US dollars per period.
    #[schemars(range(min = 0.0))]
    pub limit_usd: f64,
    /// When spend resets (default `monthly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<BudgetPeriod>,
    /// IANA time zone the period's calendar follows (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Percentages of the limit at which a warning is logged and counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 100)))]
    pub thresholds: Vec<u32>,
    /// What happens once the limit is reached (default `block`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<BudgetAction>,
    /// With `action: downgrade`, the route alias that serves requests instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade_to: Option<String>,
    /// Largest number of tokens (input estimate plus `max_tokens`) one request may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens_per_request: Option<u64>,
    /// Largest number of tokens one session (`x-llmesh-session-id`) may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tokens_per_session: Option<u64>,
    /// What sidecars do when the operator's totals are stale (the operator
    /// is unreachable): `open` (default) keeps enforcing the last totals plus
    /// their own spend; `closed` refuses with 503 `budget_unavailable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_mode: Option<FailMode>,
}

/// What a sidecar does with a budget whose cluster-wide totals are stale.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// Enforce the last totals plus the sidecar's own spend since.
    #[default]
    Open,
    /// Refuse requests with 503 `budget_unavailable`.
    Closed,
}

impl FailMode {
    /// Whether this is the default, `open`.
    pub fn is_open(&self) -> bool {
        *self == Self::Open
    }
}

/// How spend is grouped in time.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetPeriod {
    /// Resets at midnight.
    Daily,
    /// Resets at midnight between Sunday and Monday.
    Weekly,
    /// Resets at midnight on the first of the month.
    #[default]
    Monthly,
    /// Never resets.
    Total,
}

impl BudgetPeriod {
    /// The name as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
            Self::Total => "total",
        }
    }
}

/// What an exhausted budget does to the next request.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BudgetAction {
    /// Refuse with 429 and an error naming the budget.
    #[default]
    Block,
    /// Serve from the cheaper route named in `downgradeTo`.
    Downgrade,
    /// Serve anyway; log and count.
    Alert,
}

/// The budget's validity (written by the operator's reconcile) and spend in
/// the current period (`spentUsd`, `state`, `periodEnd`, `lastReportAt`,
/// `reportingSidecars`: from the sidecars' reports on the sync channel).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (true when the budget is part of the served configuration).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The period in force and its calendar, e.g. `monthly (UTC)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// USD spent in the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_usd: Option<f64>,
    /// `ok`, `warning` (a threshold passed) or `exceeded`, on the spend
    /// all sidecars reported for the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When the current period ends (RFC 3339; absent for `total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    /// When a sidecar last reported spend for this budget (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_at: Option<String>,
    /// Sidecars that reported spend for this budget in the current period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporting_sidecars: Option<u32>,
}
