//! `LLMRoute`: a model alias apps call, and how llmesh serves it.
// kube-derive takes one `printcolumn(...)` per column, each with the same keys.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ResourceStatus;

/// A model alias (`model: smart`) and the upstream targets that serve it.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "llmesh.io",
    version = "v1alpha1",
    kind = "LLMRoute",
    namespaced,
    status = "LLMRouteStatus",
    shortname = "llmr",
    category = "llmesh",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(name = "Strategy", type_ = "string", json_path = ".spec.strategy"),
    printcolumn(name = "Targets", type_ = "string", json_path = ".spec.targets[*].model"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Sidecars", type_ = "integer", json_path = ".status.sidecarsConnected"),
    printcolumn(name = "In-Sync", type_ = "integer", json_path = ".status.sidecarsInSync"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.targets.exists(t, !has(t.weight) || t.weight > 0)",
        "message": "target weights must not all be zero (a target without weight counts as 1)"
    }
]))]
pub struct LLMRouteSpec {
    /// The alias apps send as `model`. Defaults to the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub model: Option<String>,
    /// The upstream models that serve this alias (at most 64: the API
    /// server bounds the cost of the rule over them by the list's size).
    #[schemars(length(min = 1, max = 64))]
    pub targets: Vec<RouteTarget>,
    /// How a target is picked among several (default `weighted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// What to try, in order, when the chosen target fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<Fallback>,
    /// Retries of the same target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Time limits for a request on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// When a failing target stops getting traffic, and how it comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Response caching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSettings>,
    /// Requests matching a rule go to that rule's targets instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// A share of traffic copied to a candidate model for offline evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// A share of requests written, with their answers, to the pod's eval sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_sampling: Option<EvalSampling>,
    /// Also write prompts and answers into the access log (default off),
    /// after the sidecar's redaction hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_content: Option<bool>,
    /// Checks on prompts and answers, in order (at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub guardrails: Vec<super::Guardrail>,
}

/// What the operator reports about a route.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LLMRouteStatus {
    /// `Ready` and the generation it describes.
    #[serde(flatten)]
    pub common: ResourceStatus,
    /// The alias served, so `kubectl get` shows what apps send as `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The targets in force, as `provider/model`: what the sidecars actually call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_targets: Vec<String>,
    /// Sidecars of this namespace connected to the sync channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars_connected: Option<u32>,
    /// Of those, how many serve the namespace's current configuration
    /// (`configVersion`); the rest rejected it or have not applied it yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecars_in_sync: Option<u32>,
    /// The namespace's current configuration version (its content hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<String>,
}

/// One upstream model behind a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTarget {
    /// The `ProviderSecret` (same namespace) to call.
    pub provider: String,
    /// The model name the provider knows (`gpt-4o-mini`, `claude-sonnet-4-5`, a Bedrock model id).
    pub model: String,
    /// Relative share of traffic under the `weighted` strategy (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Overrides the built-in price table for this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// The model's context window in tokens, for context-window-aware fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Time limit for one attempt at this target, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub timeout: Option<String>,
    /// The longest silence between two chunks when this target streams,
    /// e.g. `10s`; tightens the route's `timeouts.idle` for this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub idle_timeout: Option<String>,
}

/// USD per million tokens.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Price {
    /// Input (prompt) tokens.
    pub input: f64,
    /// Output (completion) tokens.
    pub output: f64,
    /// Input tokens read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Input tokens written to the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

/// How a route picks among its targets.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Split traffic by weight.
    #[default]
    Weighted,
    /// Always the first healthy target, in order.
    Ordered,
    /// The target with the lowest recent latency.
    LeastLatency,
    /// The target with the fewest requests in flight.
    LeastBusy,
    /// The cheapest healthy target for the request's estimated tokens.
    Cheapest,
}

/// One step of a fallback chain.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.route) != has(self.target)",
        "message": "a fallback step names either a route or a target"
    }
]))]
pub struct Fallback {
    /// Another route to try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Or a target to try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RouteTarget>,
    /// The failures that move on to this step (default: all but content-filter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<ErrorClass>,
}

/// The failure classes fallbacks and retries react to.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// 429, or Anthropic's 529 overloaded.
    RateLimit,
    /// 5xx from the provider.
    ServerError,
    /// No answer in time.
    Timeout,
    /// The connection could not be made or was reset.
    ConnectError,
    /// The prompt is too long for the model.
    ContextWindowExceeded,
    /// The provider refused the content.
    ContentFilter,
}

/// Retries of the same target.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Attempts in total, including the first.
    #[schemars(range(min = 1, max = 10))]
    pub attempts: u32,
    /// Base delay of the exponential backoff, e.g. `200ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub backoff: Option<String>,
    /// Upper bound of one backoff delay (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub max_backoff: Option<String>,
    /// Wait as long as the provider's `Retry-After` asks (default true), up to `maxRetryAfter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_retry_after: Option<bool>,
    /// The longest provider-requested wait llmesh honours (default `10s`); a
    /// longer one moves on to the next target instead of waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub max_retry_after: Option<String>,
}

/// Per-target circuit breaker settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Set false to never shed traffic from a failing target (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Open after this many failures in a row (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub consecutive_failures: Option<u32>,
    /// Or open when this share of requests in the window failed (default 0.5) …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_ratio: Option<f64>,
    /// … over this window (default `30s`) …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub window: Option<String>,
    /// … once it holds at least this many requests (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_requests: Option<u32>,
    /// How long an open breaker sheds traffic before one probe request (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub cooldown: Option<String>,
}

/// Time limits for a request on a route.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// The whole request, all attempts included, e.g. `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub total: Option<String>,
    /// Until the first token of a stream (or the whole answer otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub first_token: Option<String>,
    /// The longest silence between two chunks of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub idle: Option<String>,
}

/// Response caching on a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheSettings {
    /// `off`, `exact` or `semantic`.
    pub mode: CacheMode,
    /// How long an entry is served, e.g. `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub ttl: Option<String>,
    /// For `semantic`: the least similarity that counts as a hit (default 0.95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub similarity_threshold: Option<f64>,
    /// Who shares entries: `key` (default) or `route`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<CacheScope>,
    /// Whether a request may steer the cache with `Cache-Control: no-cache`/`no-store`,
    /// `x-llmesh-cache: bypass` and `x-llmesh-cache-ttl` (default true). When false
    /// those headers are ignored on this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_overrides: Option<bool>,
    /// A Redis shared by every pod of the workload, behind each sidecar's own memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedCache>,
    /// For `semantic`: the model that embeds the last user turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<EmbeddingsTarget>,
}

/// An embeddings model (any OpenAI-compatible embeddings endpoint, or the mock).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddingsTarget {
    /// The `ProviderSecret` (same namespace) to call.
    pub provider: String,
    /// The embeddings model name the provider knows.
    pub model: String,
}

/// The shared cache tier.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedCache {
    /// `redis://host:port[/db]`. No credentials: they would end up in the
    /// sidecar's ConfigMap.
    pub redis_url: String,
    /// How long one Redis operation may take before the sidecar carries on
    /// without it (default `50ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub timeout: Option<String>,
}

/// Cache modes.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// No caching.
    Off,
    /// Identical requests.
    Exact,
    /// Near-identical requests, by embedding similarity.
    Semantic,
}

/// Who shares cache entries.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CacheScope {
    /// Each virtual key has its own entries.
    #[default]
    Key,
    /// Every caller of the route shares entries.
    Route,
}

/// Sends matching requests to other targets.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// What a request must match.
    #[serde(rename = "match")]
    pub matches: RuleMatch,
    /// Where matching requests go.
    #[schemars(length(min = 1))]
    pub targets: Vec<RouteTarget>,
}

/// The conditions of a rule; all given ones must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleMatch {
    /// Request headers and the values they must have.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Request `metadata` fields and the values they must have.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Matches when the estimated prompt is at least this many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_prompt_tokens: Option<u64>,
}

/// Shadow traffic to a candidate model.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// The candidate.
    pub target: RouteTarget,
    /// Percent of requests copied, 0 to 100.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
    /// Whether the candidate's spend counts against the caller's budget
    /// (default false: shadow spend is only reported, labelled apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_budget: Option<bool>,
}

/// Sampling of real traffic for offline evaluation.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvalSampling {
    /// Percent of requests sampled, 0 to 100; the same request id is
    /// always sampled the same way.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percent: f64,
    /// At most this many records per minute from this route, per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_minute: Option<u32>,
}
