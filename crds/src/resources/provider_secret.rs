//! `ProviderSecret`: one account at one model provider.
// kube-derive takes one `printcolumn(...)` per column, each with the same keys.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ResourceStatus;

/// One provider account: which API to speak, where, and the Secret that holds
/// its credential. Routes name it in their targets.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "llmesh.io",
    version = "v1alpha1",
    kind = "ProviderSecret",
    namespaced,
    status = "ProviderSecretStatus",
    shortname = "llmps",
    category = "llmesh",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(
        name = "Base URL",
        type_ = "string",
        json_path = ".spec.baseUrl",
        priority = "1"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.provider in ['mock', 'openai-compatible'] || has(self.secretRef)",
        "message": "secretRef is required for this provider (only mock and openai-compatible may go without)"
    },
    {
        "rule": "self.provider != 'mock' || !has(self.secretRef)",
        "message": "the mock provider takes no secretRef"
    },
    {
        "rule": "!(self.provider in ['openai-compatible', 'azure-openai']) || has(self.baseUrl)",
        "message": "baseUrl is required for providers openai-compatible and azure-openai"
    },
    {
        "rule": "(self.provider == 'azure-openai') == has(self.azure)",
        "message": "azure is required for provider azure-openai and only valid for it"
    },
    {
        "rule": "self.provider != 'bedrock' || has(self.region)",
        "message": "provider bedrock needs region (the AWS region)"
    }
]))]
pub struct ProviderSecretSpec {
    /// The API this account speaks.
    pub provider: ProviderKind,
    /// Overrides the provider's public endpoint (a proxy, a regional
    /// endpoint, or the server of an `openai-compatible` provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(url)]
    pub base_url: Option<String>,
    /// Where the credential lives. Required for every provider but `mock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Static headers added to every upstream request (an organisation id, a
    /// gateway tag). Not for credentials: those belong in the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The AWS region for `bedrock`; for other providers a residency label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Azure OpenAI settings; required for `azure-openai`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,
    /// Behaviour of the built-in `mock` provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockSettings>,
    /// `anthropic`: mark the stable prompt prefix (tools, system prompt) for
    /// the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_caching: Option<PromptCaching>,
}

/// Provider-side prompt caching.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromptCaching {
    /// Mark the prefix only when it is at least this many tokens (estimated
    /// at four characters a token). Anthropic caches prefixes from 1,024
    /// tokens (2,048 on Haiku models); shorter ones are not worth a cache write.
    #[schemars(range(min = 1))]
    pub min_prefix_tokens: u64,
}

/// The provider APIs llmesh speaks.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI's Chat Completions API.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API (generateContent).
    Gemini,
    /// Azure OpenAI deployments.
    AzureOpenai,
    /// Amazon Bedrock's Converse API.
    Bedrock,
    /// Any server with an OpenAI-style API: vLLM, Ollama, Groq, Together, Mistral, DeepSeek, OpenRouter.
    OpenaiCompatible,
    /// The built-in mock provider, for demos, load tests and fallback drills.
    Mock,
}

impl ProviderKind {
    /// The name used in config, metrics and response headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::AzureOpenai => "azure-openai",
            Self::Bedrock => "bedrock",
            Self::OpenaiCompatible => "openai-compatible",
            Self::Mock => "mock",
        }
    }
}

/// A Kubernetes Secret in the same namespace, and the keys inside it.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// The Secret's name.
    pub name: String,
    /// The key holding the API key (default `apiKey`). Not used by `bedrock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Bedrock: the key holding the AWS access key id (default `accessKeyId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_key: Option<String>,
    /// Bedrock: the key holding the AWS secret access key (default `secretAccessKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_key: Option<String>,
    /// Bedrock: the key holding a session token, for temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_key: Option<String>,
}

/// What the operator reports about a provider account.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSecretStatus {
    /// `Ready` and the generation it describes.
    #[serde(flatten)]
    pub common: ResourceStatus,
    /// The `LLMRoute`s whose targets name this provider, so a change's reach is visible before it is made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

/// How Azure OpenAI names models: by deployment, under an API version.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureSettings {
    /// The `api-version` query parameter, e.g. `2024-10-21`.
    pub api_version: String,
    /// Upstream model name → deployment name. A model with no entry is used
    /// as the deployment name itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deployments: BTreeMap<String, String>,
}

/// The built-in mock provider's behaviour: replies are deterministic (they
/// echo the last user message), latency and faults are configurable.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MockSettings {
    /// Delay before the first token, e.g. `200ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub time_to_first_token: Option<String>,
    /// Delay between tokens, e.g. `20ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub per_token: Option<String>,
    /// A fixed reply instead of the echo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Faults injected into a share of requests, checked in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<MockFault>,
}

/// One kind of failure the mock provider injects, and how often.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MockFault {
    /// What goes wrong.
    pub kind: MockFaultKind,
    /// Share of requests affected, 0.0 to 1.0 (default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub rate: Option<f64>,
    /// For `status`: the HTTP status to answer with (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub status: Option<u16>,
    /// For `rate-limit`: the `Retry-After` seconds to send (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
    /// For `truncate`: how many content chunks to send before cutting the stream (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_chunks: Option<u32>,
}

/// The failures the mock provider can inject.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MockFaultKind {
    /// Answer with an HTTP error status and an OpenAI error body.
    Status,
    /// Answer 429 with `Retry-After`.
    RateLimit,
    /// Never answer (the route's timeouts decide what happens).
    Hang,
    /// Drop the connection before answering.
    Reset,
    /// Cut a stream (or a body) part-way through.
    Truncate,
}
