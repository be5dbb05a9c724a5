//! Anthropic's Messages API (`POST /v1/messages`): request, answer, stream
//! events and errors — the one copy of its wire types, read from apps and
//! written to Anthropic targets alike.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Messages request as Anthropic SDK apps send it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct MessagesRequest {
    /// The route alias (from apps) or the upstream model (to Anthropic).
    pub model: String,
    /// Output limit; required by `/v1/messages`, absent for `count_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Instructions: one string or text blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Content>,
    /// Sequences that end the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u64>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// How the model must use the tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// `user_id` for the provider's abuse monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Extended thinking (`{"type": "enabled", "budget_tokens": n}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Value>,
    /// Fields llmesh does not interpret (`service_tier`, `container`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A Messages request as the app sent it, kept beside its translation so
/// that an Anthropic target receives it whole (same-family passthrough):
/// prompt-cache breakpoints, thinking blocks with their signatures and
/// fields llmesh does not model survive.
#[derive(Clone, Debug, PartialEq)]
pub struct AnthropicOrigin {
    /// The request.
    pub request: MessagesRequest,
    /// The app's `anthropic-version` header.
    pub version: Option<String>,
    /// The app's `anthropic-beta` header.
    pub beta: Option<String>,
}

/// Who speaks a message.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user (and tool results).
    User,
    /// The model.
    Assistant,
}

/// One turn of the conversation.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// Text or blocks.
    pub content: Content,
}

/// Content: a string, or typed blocks.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content blocks.
    Blocks(Vec<Block>),
}

impl Content {
    /// The content as blocks (a string is one text block).
    pub fn into_blocks(self) -> Vec<Block> {
        match self {
            Self::Text(text) => vec![Block::text(text)],
            Self::Blocks(blocks) => blocks,
        }
    }
}

/// A content block.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    /// Text.
    Text {
        /// The text.
        text: String,
        /// A prompt-cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    /// An image.
    Image {
        /// Inline data or a URL.
        source: ImageSource,
        /// A prompt-cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    /// A call of a tool.
    ToolUse {
        /// Call id, echoed by the result.
        id: String,
        /// The tool.
        name: String,
        /// The arguments, a JSON object.
        input: Value,
        /// A prompt-cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    /// A tool's result, in a user turn.
    ToolResult {
        /// The call this answers.
        tool_use_id: String,
        /// Text or blocks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<Content>,
        /// The tool failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
        /// A prompt-cache breakpoint.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cache_control: Option<Value>,
    },
    /// The model's visible reasoning, signed.
    Thinking {
        /// The reasoning.
        thinking: String,
        /// Anthropic's signature, required to send it back.
        #[serde(default)]
        signature: String,
    },
    /// Reasoning Anthropic returned encrypted.
    RedactedThinking {
        /// The encrypted reasoning.
        data: String,
    },
}

impl Block {
    /// A text block without cache breakpoint.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            cache_control: None,
        }
    }

    /// The block's prompt-cache breakpoint, if it is one.
    pub fn cache_control(&self) -> Option<&Value> {
        match self {
            Self::Text { cache_control, .. }
            | Self::Image { cache_control, .. }
            | Self::ToolUse { cache_control, .. }
            | Self::ToolResult { cache_control, .. } => cache_control.as_ref(),
            Self::Thinking { .. } | Self::RedactedThinking { .. } => None,
        }
    }
}

/// Where an image comes from.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    /// Inline bytes.
    Base64 {
        /// `image/png`, ...
        media_type: String,
        /// Base64 data.
        data: String,
    },
    /// A URL Anthropic fetches.
    Url {
        /// The URL.
        url: String,
    },
}

/// A tool the model may call.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Tool {
    /// Absent or `custom` for the app's own tools; Anthropic's server tools
    /// (`web_search_20250305`, ...) name themselves here.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the input.
    #[serde(default)]
    pub input_schema: Value,
    /// A prompt-cache breakpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<Value>,
}

/// `tool_choice`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto {
        /// One call at most.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    /// Some tool must be called.
    Any {
        /// One call at most.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    /// This tool must be called.
    Tool {
        /// The tool.
        name: String,
        /// One call at most.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        disable_parallel_tool_use: Option<bool>,
    },
    /// No tool may be called.
    None,
}

/// `metadata`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Metadata {
    /// An opaque end-user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// A complete answer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct MessagesResponse {
    /// Message id.
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `assistant`.
    pub role: Role,
    /// The model that answered.
    pub model: String,
    /// The answer's blocks.
    pub content: Vec<Block>,
    /// `end_turn`, `max_tokens`, `stop_sequence`, `tool_use`, `refusal`, ...
    pub stop_reason: Option<String>,
    /// The stop sequence that ended the answer.
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: Usage,
}

/// Anthropic's token counts: `input_tokens` excludes cache reads and writes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Uncached input.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output.
    #[serde(default)]
    pub output_tokens: u64,
    /// Input written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    /// Input read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// In Anthropic's terms, from the internal (OpenAI) counts, where the
    /// prompt includes cache reads and writes.
    pub fn of(usage: &super::Usage) -> Self {
        let cache_read = usage.cached_input();
        let cache_write = usage.cache_write();
        Self {
            input_tokens: usage
                .prompt_tokens
                .saturating_sub(cache_read)
                .saturating_sub(cache_write),
            output_tokens: usage.completion_tokens,
            cache_creation_input_tokens: cache_write,
            cache_read_input_tokens: cache_read,
        }
    }
}

/// One streaming event, as llmesh writes it to apps.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The message, without content yet.
    MessageStart {
        /// Id, model and the input usage known so far.
        message: MessagesResponse,
    },
    /// A block opens.
    ContentBlockStart {
        /// Its position.
        index: usize,
        /// The block, empty.
        content_block: Block,
    },
    /// More of a block.
    ContentBlockDelta {
        /// Its position.
        index: usize,
        /// What is new.
        delta: BlockDelta,
    },
    /// A block is complete.
    ContentBlockStop {
        /// Its position.
        index: usize,
    },
    /// The stop reason and the final usage.
    MessageDelta {
        /// Stop reason and sequence.
        delta: MessageDelta,
        /// Cumulative counts.
        usage: Usage,
    },
    /// The end.
    MessageStop,
    /// Keep-alive.
    Ping,
    /// A failure after the stream began.
    Error {
        /// What failed.
        error: ErrorDetail,
    },
}

impl StreamEvent {
    /// The SSE `event:` name, which Anthropic's SDKs dispatch on.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MessageStart { .. } => "message_start",
            Self::ContentBlockStart { .. } => "content_block_start",
            Self::ContentBlockDelta { .. } => "content_block_delta",
            Self::ContentBlockStop { .. } => "content_block_stop",
            Self::MessageDelta { .. } => "message_delta",
            Self::MessageStop => "message_stop",
            Self::Ping => "ping",
            Self::Error { .. } => "error",
        }
    }
}

/// New content of a block.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    /// Text.
    TextDelta {
        /// The new text.
        text: String,
    },
    /// A piece of a tool call's JSON input.
    InputJsonDelta {
        /// The piece.
        partial_json: String,
    },
}

/// `message_delta`'s `delta`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MessageDelta {
    /// Why the answer ended.
    pub stop_reason: Option<String>,
    /// The stop sequence that ended it.
    pub stop_sequence: Option<String>,
}

/// Anthropic's error body: `{"type": "error", "error": {...}}`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ErrorBody {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What failed.
    pub error: ErrorDetail,
}

/// The `error` object of an error body or event.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ErrorDetail {
    /// `invalid_request_error`, `overloaded_error`, ...
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What happened, for people.
    pub message: String,
}

/// `POST /v1/messages/count_tokens` answer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TokenCount {
    /// Input tokens of the request.
    pub input_tokens: u64,
}

/// `GET /v1/models` in Anthropic's shape.
#[derive(Clone, Debug, Serialize)]
pub struct ModelList {
    /// The models (route aliases).
    pub data: Vec<ModelInfo>,
    /// Always false: one page.
    pub has_more: bool,
    /// The first id.
    pub first_id: Option<String>,
    /// The last id.
    pub last_id: Option<String>,
}

/// One model in [`ModelList`].
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// Always `model`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The route alias.
    pub id: String,
    /// The alias again: a route has no other name.
    pub display_name: String,
    /// Unknown for an alias: the Unix epoch.
    pub created_at: &'static str,
}
