//! Gemini's `generateContent` wire format, typed as far as the adapter reads or writes it.
//!
//! Response types keep every field optional and ignore unknown ones, so a new
//! part kind or metadata field from Google never breaks an answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST models/{model}:generateContent` body.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentRequest {
    /// The conversation, alternating `user` and `model` turns.
    pub contents: Vec<Content>,
    /// System and developer instructions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_instruction: Option<Content>,
    /// Function declarations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<Tool>,
    /// How the model may call functions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_config: Option<ToolConfig>,
    /// Sampling and output settings.
    #[serde(skip_serializing_if = "GenerationConfig::is_empty")]
    pub generation_config: GenerationConfig,
}

/// One turn, or the system instruction.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    /// `user` or `model`; absent on the system instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// What the turn says.
    #[serde(default)]
    pub parts: Vec<Part>,
}

/// One piece of a turn. Exactly one data field is set; kinds the adapter
/// does not know (code execution, …) deserialize with none set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Part {
    /// Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Marks a thought summary, which is not part of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    /// Opaque reasoning state Gemini 3 wants back with its function calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
    /// Base64 data with its media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<Blob>,
    /// A file by URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_data: Option<FileData>,
    /// A call the model made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCall>,
    /// A function's result, sent back to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_response: Option<FunctionResponse>,
}

impl Part {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            ..Self::default()
        }
    }

    /// The answer text of this part: none for thoughts and non-text parts.
    pub fn answer_text(&self) -> Option<&str> {
        if self.thought == Some(true) {
            return None;
        }
        self.text.as_deref()
    }
}

/// `inlineData`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    /// Media type.
    pub mime_type: String,
    /// Base64.
    pub data: String,
}

/// `fileData`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileData {
    /// Media type.
    pub mime_type: String,
    /// Where the file is.
    pub file_uri: String,
}

/// `functionCall`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCall {
    /// The function.
    pub name: String,
    /// Its arguments, a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
}

/// `functionResponse`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionResponse {
    /// The function that was called.
    pub name: String,
    /// Its result, a JSON object.
    pub response: Value,
}

/// One entry of `tools`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    /// The functions.
    pub function_declarations: Vec<FunctionDeclaration>,
}

/// A function the model may call.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeclaration {
    /// Name.
    pub name: String,
    /// What it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its arguments, in Gemini's schema dialect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// `toolConfig`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    /// The calling mode.
    pub function_calling_config: FunctionCallingConfig,
}

/// `functionCallingConfig`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig {
    /// `AUTO`, `ANY` or `NONE`.
    pub mode: &'static str,
    /// With `ANY`: the functions the model must pick from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_function_names: Vec<String>,
}

/// `generationConfig`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Output limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Stop sequences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
    /// Number of answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate_count: Option<u32>,
    /// Seed (32 bits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i32>,
    /// Presence penalty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Frequency penalty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// `application/json` for JSON mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_mime_type: Option<&'static str>,
    /// The schema a JSON answer follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<Value>,
    /// Reasoning budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `thinkingConfig`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThinkingConfig {
    /// Tokens the model may think for; 0 turns thinking off where the model allows it.
    pub thinking_budget: u32,
}

/// A `generateContent` answer, or one event of a stream.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GenerateContentResponse {
    /// The answers; none when the prompt was blocked.
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    /// Why the prompt was blocked, if it was.
    #[serde(default)]
    pub prompt_feedback: Option<PromptFeedback>,
    /// Token counts (cumulative in a stream).
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    /// The model version that answered.
    #[serde(default)]
    pub model_version: Option<String>,
    /// Google's id of this response.
    #[serde(default)]
    pub response_id: Option<String>,
    /// An error reported inside a stream.
    #[serde(default)]
    pub error: Option<GoogleError>,
}

/// One answer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    /// What the model said; absent when it was filtered before saying anything.
    #[serde(default)]
    pub content: Option<Content>,
    /// Why it stopped; absent while it has not.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Position among the candidates.
    #[serde(default)]
    pub index: Option<u32>,
}

/// `promptFeedback`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromptFeedback {
    /// `SAFETY`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `OTHER`, …
    #[serde(default)]
    pub block_reason: Option<String>,
}

/// `usageMetadata`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    /// Prompt tokens, cached ones included.
    #[serde(default)]
    pub prompt_token_count: u64,
    /// Prompt tokens served from a context cache.
    #[serde(default)]
    pub cached_content_token_count: u64,
    /// Answer tokens.
    #[serde(default)]
    pub candidates_token_count: u64,
    /// Reasoning tokens, billed as output.
    #[serde(default)]
    pub thoughts_token_count: u64,
    /// Tokens of built-in tool results fed back to the model, billed as input.
    #[serde(default)]
    pub tool_use_prompt_token_count: u64,
}

/// Google's error object: `{"error": {"code", "message", "status", "details"}}`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct GoogleError {
    /// HTTP status.
    #[serde(default)]
    pub code: Option<u16>,
    /// What went wrong.
    #[serde(default)]
    pub message: Option<String>,
    /// The canonical code: `RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT`, …
    #[serde(default)]
    pub status: Option<String>,
    /// Typed details (`RetryInfo`, `ErrorInfo`, …).
    #[serde(default)]
    pub details: Vec<Value>,
}

/// `POST models/{model}:batchEmbedContents` body.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct BatchEmbedRequest {
    /// One request per input.
    pub requests: Vec<EmbedRequest>,
}

/// One input to embed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EmbedRequest {
    /// `models/{model}`, the same for every request of a batch.
    pub model: String,
    /// The text.
    pub content: Content,
    /// Truncated vector size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dimensionality: Option<u32>,
}

/// `batchEmbedContents` answer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct BatchEmbedResponse {
    /// One per request, in order.
    #[serde(default)]
    pub embeddings: Vec<ContentEmbedding>,
}

/// One vector.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ContentEmbedding {
    /// The values.
    #[serde(default)]
    pub values: Vec<f32>,
}
