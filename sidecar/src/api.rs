//! The wire formats the sidecar speaks to apps, typed as far as the
//! translations need; everything else rides along in `extra` so
//! same-format upstreams see the request as the app sent it. OpenAI Chat
//! Completions is also the internal format every other one converts to.

pub mod chat;
pub mod embeddings;
pub mod messages;
pub mod responses;

use serde::{Deserialize, Serialize};

/// The API an app called: which format its request and answer are in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// OpenAI `/v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `/v1/embeddings`.
    Embeddings,
    /// Anthropic `/v1/messages`.
    Messages,
    /// OpenAI `/v1/responses`.
    Responses,
}

impl Api {
    /// The `api` label and access-log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Embeddings => "embeddings",
            Self::Messages => "messages",
            Self::Responses => "responses",
        }
    }

    /// The OpenTelemetry `gen_ai.operation.name`: every format but
    /// embeddings is a chat.
    pub fn operation(self) -> &'static str {
        match self {
            Self::Embeddings => "embeddings",
            Self::ChatCompletions | Self::Messages | Self::Responses => "chat",
        }
    }
}

/// Token counts of one response, in the OpenAI shape.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens, cached ones included.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens, reasoning ones included.
    #[serde(default)]
    pub completion_tokens: u64,
    /// The sum.
    #[serde(default)]
    pub total_tokens: u64,
    /// Breakdown of the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    /// Breakdown of the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

/// Input token breakdown.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Read from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Written to the provider's prompt cache (Anthropic, Bedrock); not an OpenAI field.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
}

/// Output token breakdown.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct CompletionTokensDetails {
    /// Spent on hidden reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Builds a usage record from the counts every provider reports in some form.
    pub fn new(input: u64, output: u64, cached_input: u64, cache_write: u64, reasoning: u64) -> Self {
        Self {
            prompt_tokens: input,
            completion_tokens: output,
            total_tokens: input.saturating_add(output),
            prompt_tokens_details: (cached_input > 0 || cache_write > 0).then_some(PromptTokensDetails {
                cached_tokens: cached_input,
                cache_write_tokens: cache_write,
            }),
            completion_tokens_details: (reasoning > 0).then_some(CompletionTokensDetails {
                reasoning_tokens: reasoning,
            }),
        }
    }

    /// Input tokens read from a prompt cache.
    pub fn cached_input(&self) -> u64 {
        self.prompt_tokens_details.as_ref().map_or(0, |d| d.cached_tokens)
    }

    /// Input tokens written to a prompt cache.
    pub fn cache_write(&self) -> u64 {
        self.prompt_tokens_details
            .as_ref()
            .map_or(0, |d| d.cache_write_tokens)
    }

    /// Output tokens spent on reasoning.
    pub fn reasoning(&self) -> u64 {
        self.completion_tokens_details
            .as_ref()
            .map_or(0, |d| d.reasoning_tokens)
    }
}

/// `GET /v1/models` answer.
#[derive(Clone, Debug, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// One entry per route alias.
    pub data: Vec<Model>,
}

/// One model (route alias) in [`ModelList`].
#[derive(Clone, Debug, Serialize)]
pub struct Model {
    /// The alias.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unknown for an alias; OpenAI clients expect the field.
    pub created: u64,
    /// The `LLMRoute` that defines it.
    pub owned_by: String,
}
