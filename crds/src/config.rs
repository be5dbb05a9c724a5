//! The sidecar configuration contract: what the compiler writes and the
//! sidecar reads. JSON, versioned by content hash, and free of secret values —
//! credentials are named by Secret and key, and the sidecar resolves them
//! from its own mounts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::generated_key::PreviousKey;
use crate::resources::{
    BudgetAction, BudgetPeriod, CacheScope, Detector, ErrorClass, FailMode, GuardrailAction,
    GuardrailPattern, GuardrailPhase, MessageRole, MockFault, ModerationFailureMode, Price, PromptCaching,
    ProviderKind, RuleMatch, Strategy,
};

/// One namespace's compiled configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    /// Content hash of everything below; equal versions mean equal behaviour.
    pub version: String,
    /// Provider accounts by `ProviderSecret` name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Routes by the alias apps send as `model`.
    pub routes: BTreeMap<String, RouteConfig>,
    /// Virtual keys by `VirtualKey` name. Empty: the gateway asks for no key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, KeyConfig>,
    /// Budgets by `Budget` name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub budgets: BTreeMap<String, BudgetConfig>,
}

/// The hash under which a virtual key is known: SHA-256 of the key with
/// surrounding whitespace removed (a Secret written from a file often ends
/// in a newline), lowercase hex. The one definition the compiler and the
/// sidecar share.
pub fn key_hash(raw_key: &[u8]) -> String {
    let digest = Sha256::digest(raw_key.trim_ascii());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One virtual key, without the key.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyConfig {
    /// [`key_hash`] of the key.
    pub key_hash: String,
    /// Keys replaced by a rotation that still authenticate as this key until
    /// their grace period ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_key_hashes: Vec<PreviousKey>,
    /// Route aliases the key may call; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_routes: Vec<String>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Key into [`SidecarConfig::budgets`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Attribution: team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Attribution: feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// Refused from this Unix second on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_unix: Option<i64>,
    /// Refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// One budget.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetConfig {
    /// USD per period.
    pub limit_usd: f64,
    /// When spend resets.
    pub period: BudgetPeriod,
    /// IANA time zone of the period's calendar.
    pub time_zone: String,
    /// Percentages of the limit that raise a warning, ascending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<u32>,
    /// What an exhausted budget does.
    pub action: BudgetAction,
    /// The route alias `downgrade` serves from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade_to: Option<String>,
    /// Token ceiling of one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_request: Option<u64>,
    /// Token ceiling of one session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_session: Option<u64>,
    /// What the sidecar does once the operator's totals are stale; left out
    /// when `open`, so configs without it keep their version.
    #[serde(default, skip_serializing_if = "FailMode::is_open")]
    pub fail_mode: FailMode,
}

impl SidecarConfig {
    /// Sets `version` to the hash of the content, so that two configs with the
    /// same routes and providers carry the same version whoever compiled them.
    pub fn seal(mut self) -> Self {
        self.version.clear();
        let canonical = serde_json::to_vec(&self).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        self.version = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        self
    }

    /// Parses a config file strictly; the error names the path of the bad field.
    ///
    /// # Errors
    /// The JSON is malformed or does not match the contract.
    pub fn from_json(text: &[u8]) -> Result<Self, String> {
        let de = &mut serde_json::Deserializer::from_slice(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            format!("at {path}: {}", e.into_inner())
        })
    }
}

/// One provider account.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// The API to speak.
    pub kind: ProviderKind,
    /// Endpoint override; `None` means the provider's public endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Where the credential is; never the credential itself.
    pub credentials: Credentials,
    /// Static headers for every upstream request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// AWS region (Bedrock) or residency label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Azure OpenAI settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureConfig>,
    /// Mock provider behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockConfig>,
    /// Anthropic prompt-cache breakpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_caching: Option<PromptCaching>,
}

/// References to credentials held in Secrets.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields,
    tag = "type"
)]
pub enum Credentials {
    /// No credential (the mock provider, or a keyless local server).
    None,
    /// One API key.
    ApiKey {
        /// The key.
        api_key: CredentialRef,
    },
    /// AWS credentials for SigV4 signing.
    Aws {
        /// Access key id.
        access_key_id: CredentialRef,
        /// Secret access key.
        secret_access_key: CredentialRef,
        /// Session token for temporary credentials.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_token: Option<CredentialRef>,
    },
}

/// One key of one Secret.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialRef {
    /// The Secret's name.
    pub secret: String,
    /// The key inside it.
    pub key: String,
}

/// Azure OpenAI deployment naming.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureConfig {
    /// The `api-version` query parameter.
    pub api_version: String,
    /// Model → deployment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, String>,
}

/// Mock provider behaviour with durations resolved.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MockConfig {
    /// Delay before the first token.
    #[serde(default)]
    pub time_to_first_token_ms: u64,
    /// Delay between tokens.
    #[serde(default)]
    pub per_token_ms: u64,
    /// Fixed reply instead of the echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Injected faults, checked in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<MockFault>,
}

/// One route.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    /// The `LLMRoute` this came from (for headers, logs and metrics).
    pub resource: String,
    /// How targets are ordered for each request.
    pub strategy: Strategy,
    /// The targets; each is an alternative to the others.
    pub targets: Vec<TargetConfig>,
    /// Requests matching a rule use its targets instead; the first match wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleConfig>,
    /// Steps tried in order when the route's own targets fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<FallbackConfig>,
    /// Retries of one target.
    #[serde(default)]
    pub retries: RetriesConfig,
    /// Time limits.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Per-target circuit breaker.
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
    /// Prompts and answers go into the access log.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log_content: bool,
    /// Response caching; absent means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheConfig>,
    /// Guardrail policies, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guardrails: Vec<GuardrailConfig>,
    /// Eval sampling; absent means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_sampling: Option<EvalSamplingConfig>,
    /// Shadow traffic; absent means off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorConfig>,
}

/// One guardrail policy, validated.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardrailConfig {
    /// The policy's name.
    pub name: String,
    /// When it runs.
    pub phase: GuardrailPhase,
    /// What a finding does.
    pub action: GuardrailAction,
    /// The prompt roles it reads; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<MessageRole>,
    /// Built-in detectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detect: Vec<Detector>,
    /// User regular expressions (each compiles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<GuardrailPattern>,
    /// Words and phrases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<String>,
    /// External moderation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<ModerationConfig>,
}

/// An external moderation endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModerationConfig {
    /// The endpoint.
    pub url: String,
    /// The bearer key, from the named `ProviderSecret`'s credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<CredentialRef>,
    /// The model asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// How long a verdict may take.
    pub timeout_ms: u64,
    /// What a failed or late call means.
    pub failure_mode: ModerationFailureMode,
}

/// Eval sampling on a route.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvalSamplingConfig {
    /// Percent of requests sampled.
    pub percent: f64,
    /// Records per minute at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_minute: Option<u32>,
}

/// Shadow traffic on a route.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    /// The candidate.
    pub target: TargetConfig,
    /// Percent of requests copied.
    pub percent: f64,
    /// Whether the candidate's spend counts against the caller's budget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub count_budget: bool,
}

/// Response caching on a route.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an entry is served, unless a request sets its own.
    pub ttl_ms: u64,
    /// Who shares entries.
    pub scope: CacheScope,
    /// Whether request headers may steer the cache.
    pub allow_overrides: bool,
    /// The Redis tier shared by the workload's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SharedCacheConfig>,
    /// Near-duplicate matching on top of exact matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic: Option<SemanticCacheConfig>,
}

/// Semantic matching: the last user turn's embedding against earlier ones.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SemanticCacheConfig {
    /// The least cosine similarity served as a hit.
    pub similarity_threshold: f64,
    /// Key into [`SidecarConfig::providers`].
    pub embeddings_provider: String,
    /// The embeddings model.
    pub embeddings_model: String,
}

/// A Redis shared by every pod of a workload.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedCacheConfig {
    /// `redis://host:port[/db]`.
    pub redis_url: String,
    /// The longest one Redis operation may take.
    pub timeout_ms: u64,
}

/// One upstream model.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetConfig {
    /// Key into [`SidecarConfig::providers`].
    pub provider: String,
    /// The upstream model name.
    pub model: String,
    /// Share of traffic under `weighted`.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// USD per million tokens, for `cheapest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// The model's context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Limit for one attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Longest silence between two chunks of this target's streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

fn default_weight() -> u32 {
    1
}

/// Targets for requests matching a condition.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    /// The condition; every given part must hold.
    #[serde(rename = "match")]
    pub matches: RuleMatch,
    /// The targets to use instead of the route's.
    pub targets: Vec<TargetConfig>,
}

/// One fallback step: another route's targets, or one target.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FallbackConfig {
    /// Another route's alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Or one target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetConfig>,
    /// The failure classes that move on to this step.
    pub on: Vec<ErrorClass>,
}

/// Retries of one target, in milliseconds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetriesConfig {
    /// Attempts per target, the first included.
    pub attempts: u32,
    /// Base of the exponential backoff.
    pub backoff_ms: u64,
    /// Cap of one backoff delay.
    pub max_backoff_ms: u64,
    /// Wait as long as the provider asks.
    pub honor_retry_after: bool,
    /// The longest provider-requested wait honoured.
    pub max_retry_after_ms: u64,
}

impl Default for RetriesConfig {
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff_ms: 200,
            max_backoff_ms: 5_000,
            honor_retry_after: true,
            max_retry_after_ms: 10_000,
        }
    }
}

/// Circuit breaker settings, in milliseconds.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BreakerConfig {
    /// False: never shed traffic.
    pub enabled: bool,
    /// Failures in a row that open it.
    pub consecutive_failures: u32,
    /// Failure share over the window that opens it.
    pub error_ratio: f64,
    /// The window.
    pub window_ms: u64,
    /// Requests the window needs before the ratio counts.
    pub min_requests: u32,
    /// How long it stays open before a probe.
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            error_ratio: 0.5,
            window_ms: 30_000,
            min_requests: 20,
            cooldown_ms: 30_000,
        }
    }
}

/// Route time limits in milliseconds; `None` means no limit of that kind.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// The whole request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// Until the first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
    /// Between chunks of a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
}
