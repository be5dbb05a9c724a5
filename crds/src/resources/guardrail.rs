//! `LLMRoute.spec.guardrails`: checks on prompts and answers (PII, secrets,
//! prompt injection, user patterns, external moderation) and what a finding does.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One guardrail policy of a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Guardrail {
    /// Names the policy in errors, logs and metrics; unique within the route.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// When it runs (default `both`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<GuardrailPhase>,
    /// What a finding does.
    pub action: GuardrailAction,
    /// The prompt messages it reads, by role (default all); tool results are
    /// `tool`, tool-call arguments `assistant`. Answers are always read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<MessageRole>,
    /// Built-in detectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detect: Vec<Detector>,
    /// User regular expressions (Rust `regex` syntax), each a finding kind of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<GuardrailPattern>,
    /// Words and phrases found case-insensitively (finding kind `word`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<String>,
    /// An external moderation endpoint (request phase only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation: Option<Moderation>,
}

/// When a guardrail runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum GuardrailPhase {
    /// On the prompt, before the cache, the upstream and the logs see it.
    Request,
    /// On the answer, complete or streamed, before the cache and the app see it.
    Response,
    /// Both.
    #[default]
    Both,
}

impl GuardrailPhase {
    /// Whether prompts are checked.
    pub fn on_request(self) -> bool {
        self != Self::Response
    }

    /// Whether answers are checked.
    pub fn on_response(self) -> bool {
        self != Self::Request
    }
}

/// What a finding does.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum GuardrailAction {
    /// Refuse the request (or end the answer) with an error naming the
    /// policy and the kind of finding, never the text.
    Block,
    /// Replace each finding with a typed placeholder such as `[EMAIL]`.
    Redact,
    /// Log and count only.
    Flag,
}

impl GuardrailAction {
    /// As logs and metrics write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Redact => "redact",
            Self::Flag => "flag",
        }
    }
}

/// A message role a guardrail reads.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum MessageRole {
    /// System instructions (Anthropic's `system` too).
    System,
    /// Developer instructions.
    Developer,
    /// The user's turns.
    User,
    /// The model's earlier turns and tool-call arguments.
    Assistant,
    /// Tool results.
    Tool,
}

/// A built-in detector.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Detector {
    /// Email addresses.
    Email,
    /// Phone numbers (international `+` form and common national layouts).
    Phone,
    /// Payment card numbers that pass the Luhn check.
    CreditCard,
    /// IBANs that pass the mod-97 check.
    Iban,
    /// National ids with a checksum or fixed structure: US SSN, Spanish DNI/NIE, Indian Aadhaar.
    NationalId,
    /// IPv4 and IPv6 addresses.
    IpAddress,
    /// Credentials: OpenAI/Anthropic/AWS/GCP/GitHub/Slack keys, Azure
    /// connection-string keys, PEM private keys, JWTs, generic high-entropy tokens.
    Secret,
    /// Known prompt-injection phrasings and structure (request phase).
    PromptInjection,
}

/// A user regular expression.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardrailPattern {
    /// The finding kind (lowercase letters, digits and `_`), also the placeholder: `[NAME]`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,39}$"))]
    pub name: String,
    /// The expression.
    #[schemars(length(min = 1, max = 1024))]
    pub regex: String,
}

/// An OpenAI-style moderation endpoint (`POST {input, model}` answering
/// `{results: [{flagged, categories}]}`), such as OpenAI's `/v1/moderations`
/// or a webhook speaking the same shape.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Moderation {
    /// The endpoint's full URL.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// A `ProviderSecret` (same namespace) whose API key is sent as a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The moderation model to ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// How long to wait for a verdict, e.g. `2s` (default `2s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub timeout: Option<String>,
    /// When the endpoint fails or times out: `open` lets the request through
    /// (and counts it), `closed` refuses it (default `closed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<ModerationFailureMode>,
}

/// What an unanswered moderation call means.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ModerationFailureMode {
    /// Serve the request.
    Open,
    /// Refuse it.
    #[default]
    Closed,
}
