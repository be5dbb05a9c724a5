//! `VirtualKey`: an identity apps present to the sidecar, with what it may
//! use, how fast, and who pays.
// kube-derive takes one `printcolumn(...)` per column, each with the same keys.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ResourceStatus;

/// A key apps send as `Authorization: Bearer <key>` (or `x-api-key`,
/// `api-key`). The key itself lives in a Secret; only its SHA-256 hash
/// reaches the sidecar configuration.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "llmesh.io",
    version = "v1alpha1",
    kind = "VirtualKey",
    namespaced,
    status = "VirtualKeyStatus",
    shortname = "llmvk",
    category = "llmesh",
    printcolumn(name = "Team", type_ = "string", json_path = ".spec.team"),
    printcolumn(name = "Feature", type_ = "string", json_path = ".spec.feature"),
    printcolumn(name = "Budget", type_ = "string", json_path = ".spec.budget"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(name = "Spent", type_ = "number", json_path = ".status.spentUsd"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualKeySpec {
    /// The Secret holding the key, managed by you (the operator only reads
    /// it). Without it the operator generates the key into a Secret named
    /// like this resource, key `key`, and rotates it on request (annotation
    /// `llmesh.io/rotate-at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<KeySecretRef>,
    /// Route aliases this key may call; empty means every route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_routes: Vec<String>,
    /// Request and token rates for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// The `Budget` (same namespace) this key's spend counts against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Attribution label: the team that owns the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Attribution label: the feature or service the traffic is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// After this instant (RFC 3339, e.g. `2027-01-01T00:00:00Z`) the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: Option<String>,
    /// True: the key is refused (kept in config so apps are told why).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// How long a generated key replaced by a rotation keeps working (default
    /// `24h`), so apps can pick up the new key without an outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub rotation_grace_period: Option<String>,
}

impl VirtualKey {
    /// The Secret that holds the key: `secretRef.name`, or the one named
    /// like this resource (where the operator generates keys).
    pub fn secret_name(&self) -> String {
        self.spec
            .secret_ref
            .as_ref()
            .map_or_else(|| kube::ResourceExt::name_any(self), |r| r.name.clone())
    }
}

/// What a key's status reports besides `Ready`. Never the key itself.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualKeyStatus {
    /// `Ready` and the generation it describes.
    #[serde(flatten)]
    pub common: ResourceStatus,
    /// The key's id: the name the sidecars' logs and metrics show for it
    /// (`virtual_key`), and the `<id>` inside a generated key
    /// (`sk-llmesh-<id>-…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The Secret that holds the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// When the key stops working (`spec.expiresAt`), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the key replaced by the last rotation stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_valid_until: Option<String>,
    /// USD spent with this key in the current period, across all sidecars
    /// (from their reports on the sync channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_usd: Option<f64>,
    /// The period `spentUsd` covers and its calendar: the key's budget's,
    /// e.g. `monthly (Europe/Berlin)`, or `monthly (UTC)` without a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// When that period ends (RFC 3339; absent for `total`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<String>,
    /// When a sidecar last reported spend with this key (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report_at: Option<String>,
}

/// Where a key is stored.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySecretRef {
    /// The Secret's name.
    pub name: String,
    /// The key inside it (default `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Per-key rates, each over a sliding minute.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u32>,
    /// Tokens (input and output) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
}
