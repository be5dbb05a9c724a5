//! `POST /v1/chat/completions`: request, response and stream chunk.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Usage;
use super::messages::{AnthropicOrigin, Block};

/// A chat completion request as apps send it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ChatRequest {
    /// The route alias.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Stream options (`include_usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `none`, `auto`, `required`, or a named function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    /// Let the model call several tools at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// `text`, `json_object` or `json_schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Output limit (older name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Output limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    /// Stop sequences: one string or several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Number of choices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Seed for best-effort determinism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// End-user id for the provider's abuse monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Presence penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Fields llmesh does not interpret, passed to OpenAI-style upstreams.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// What a Messages app sent that only an Anthropic target can use: its
    /// request as it came and its `anthropic-version`/`anthropic-beta`
    /// headers. Not part of the body, the cache key, or any other wire format.
    #[serde(skip)]
    pub anthropic: Option<Arc<AnthropicOrigin>>,
}

impl ChatRequest {
    /// The output limit under either name.
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether the app asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the app asked for a usage chunk at the end of the stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// The stop sequences as a list.
    pub fn stop_sequences(&self) -> Vec<String> {
        match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct StreamOptions {
    /// Send a final chunk with token usage.
    #[serde(default)]
    pub include_usage: bool,
    /// Other options, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `stop`: one sequence or several.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    /// A single sequence.
    One(String),
    /// Up to four sequences.
    Many(Vec<String>),
}

/// Who speaks a message.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions (older name).
    System,
    /// Instructions (newer name).
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// One message of the conversation.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// Text or content parts; may be absent on assistant tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls the assistant made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For `tool` messages: the call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Other fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// The text of the message, parts joined; images and other parts skipped.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    /// The signed reasoning an assistant turn carries back (`thinking_blocks`,
    /// LiteLLM's field, kept among the passed-through fields so that it is
    /// also part of the cache key). Anthropic requires it back on the turn
    /// that made tool calls while thinking.
    ///
    /// # Errors
    /// The field is there but not a list of thinking blocks.
    pub fn thinking_blocks(&self) -> Result<Vec<ThinkingBlock>, serde_json::Error> {
        match self.extra.get(THINKING_BLOCKS) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(blocks) => Vec::<ThinkingBlock>::deserialize(blocks),
        }
    }
}

/// The field of an assistant message that carries its signed reasoning.
pub const THINKING_BLOCKS: &str = "thinking_blocks";

/// Message content: a string, or typed parts (text, images).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Text and image parts.
    Parts(Vec<ContentPart>),
}

/// One content part. Kept open (`kind` as a string) so parts llmesh does not
/// translate still reach OpenAI-style upstreams unchanged.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ContentPart {
    /// `text`, `image_url`, or another OpenAI part type.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// For `image_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<ImageUrl>,
    /// Other fields, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An image reference: an `https:` URL or a `data:` URL with base64 content.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ImageUrl {
    /// The URL.
    pub url: String,
    /// `auto`, `low` or `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ImageUrl {
    /// For a `data:<media type>;base64,<data>` URL, the media type and data.
    pub fn as_inline(&self) -> Option<(&str, &str)> {
        let rest = self.url.strip_prefix("data:")?;
        let (media_type, data) = rest.split_once(";base64,")?;
        Some((media_type, data))
    }
}

/// A function the model may call.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Tool {
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionDefinition,
}

/// A function's name, description and JSON Schema parameters.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct FunctionDefinition {
    /// Name.
    pub name: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Structured-outputs strictness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A call the model made.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ToolCall {
    /// Call id, echoed by the tool result.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function and its JSON arguments.
    pub function: FunctionCall,
}

/// Function name and arguments (a JSON text).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct FunctionCall {
    /// Name.
    pub name: String,
    /// Arguments as JSON text.
    pub arguments: String,
}

/// `response_format`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `json_schema`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchemaFormat>,
}

/// A named JSON Schema the answer must follow.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct JsonSchemaFormat {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Strict adherence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A complete (non-streaming) answer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ChatResponse {
    /// Response id.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The upstream model that answered.
    pub model: String,
    /// The answers.
    pub choices: Vec<Choice>,
    /// Token counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One answer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Choice {
    /// Position.
    pub index: u32,
    /// The message.
    pub message: ResponseMessage,
    /// `stop`, `length`, `tool_calls`, `content_filter`.
    pub finish_reason: Option<String>,
}

/// The assistant's message in a response.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: String,
    /// Text, absent when only tools were called.
    pub content: Option<String>,
    /// Calls the model made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Refusal text, when the model refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The model's reasoning as plain text (LiteLLM's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// The reasoning as Anthropic's blocks, with the signatures an app must
    /// send back in its next turn (LiteLLM's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_blocks: Option<Vec<ThinkingBlock>>,
}

/// A block of extended thinking, in Anthropic's shape. In a stream, a block
/// arrives in pieces: text first, the signature last.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ThinkingBlock {
    /// Visible reasoning.
    Thinking {
        /// The reasoning (empty in a stream piece that carries the signature).
        #[serde(default)]
        thinking: String,
        /// Anthropic's signature, once known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    /// Encrypted reasoning.
    RedactedThinking {
        /// The encrypted reasoning.
        data: String,
    },
}

impl From<ThinkingBlock> for Block {
    fn from(block: ThinkingBlock) -> Self {
        match block {
            ThinkingBlock::Thinking { thinking, signature } => Self::Thinking {
                thinking,
                signature: signature.unwrap_or_default(),
            },
            ThinkingBlock::RedactedThinking { data } => Self::RedactedThinking { data },
        }
    }
}

impl ThinkingBlock {
    /// Whether this is a thinking block still waiting for its signature,
    /// which the next stream piece of text or signature continues.
    pub fn is_unsigned_thinking(&self) -> bool {
        matches!(self, Self::Thinking { signature: None, .. })
    }

    /// Adds one stream piece to the blocks so far: text or a signature
    /// continues the last unsigned thinking block; anything else starts a
    /// new block.
    pub fn absorb(blocks: &mut Vec<Self>, piece: Self) {
        if let (
            Some(Self::Thinking { thinking, signature }),
            Self::Thinking {
                thinking: more,
                signature: signed,
            },
        ) = (blocks.last_mut().filter(|b| b.is_unsigned_thinking()), &piece)
        {
            thinking.push_str(more);
            signature.clone_from(signed);
            return;
        }
        blocks.push(piece);
    }
}

/// One `chat.completion.chunk` of a stream.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ChatChunk {
    /// Response id, the same for every chunk.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The upstream model.
    pub model: String,
    /// Deltas; empty in the final usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Only in the final chunk, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice's delta.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ChunkChoice {
    /// Position.
    pub index: u32,
    /// What is new.
    pub delta: Delta,
    /// Set on the last delta of the choice.
    pub finish_reason: Option<String>,
}

/// New content in a chunk.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Delta {
    /// `assistant`, on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New or continued tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// New reasoning text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Pieces of thinking blocks: text, a signature, or a whole redacted block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking_blocks: Option<Vec<ThinkingBlock>>,
}

/// A tool call as it streams: id and name first, then argument fragments.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ToolCallDelta {
    /// Which call of this message.
    pub index: u32,
    /// Call id, on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on the first fragment.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name and/or argument fragment.
    pub function: FunctionCallDelta,
}

/// A fragment of a function call.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct FunctionCallDelta {
    /// Name, on the first fragment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Next piece of the JSON arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

impl ChatChunk {
    /// A chunk with one delta for choice 0.
    pub fn delta(id: &str, created: u64, model: &str, delta: Delta, finish_reason: Option<String>) -> Self {
        Self {
            id: id.to_owned(),
            object: "chat.completion.chunk".to_owned(),
            created,
            model: model.to_owned(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
            }],
            usage: None,
        }
    }

    /// The final usage chunk (no choices).
    pub fn usage(id: &str, created: u64, model: &str, usage: Usage) -> Self {
        Self {
            id: id.to_owned(),
            object: "chat.completion.chunk".to_owned(),
            created,
            model: model.to_owned(),
            choices: Vec::new(),
            usage: Some(usage),
        }
    }
}
