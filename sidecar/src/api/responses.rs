//! OpenAI's Responses API (`POST /v1/responses`), stateless: request,
//! input items, the response object and its stream events.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A Responses request as OpenAI SDK apps send it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ResponsesRequest {
    /// The route alias.
    pub model: String,
    /// A string (one user message) or items.
    pub input: Input,
    /// Instructions, as a system message.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Tools the model may call.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto`, `required`, or `{"type": "function", "name"}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Let the model call several tools at once.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `format`: text, JSON object, or a JSON schema.
    #[serde(default)]
    pub text: Option<TextConfig>,
    /// Output limit.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Reasoning effort (`{"effort": "low"}`), for targets that take it.
    #[serde(default)]
    pub reasoning: Option<Reasoning>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Keep the response server-side: llmesh keeps nothing.
    #[serde(default)]
    pub store: Option<bool>,
    /// Continue a stored response: llmesh keeps nothing.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// End-user id.
    #[serde(default)]
    pub user: Option<String>,
    /// Tags for the app's own use; routing rules may match them.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Fields llmesh does not interpret.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `input`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Input {
    /// One user message.
    Text(String),
    /// Messages, function calls and their outputs, as JSON objects: an item
    /// may omit `type` (then it is a message), which a tagged enum cannot
    /// express, so [`Item::parse`] reads each.
    Items(Vec<Map<String, Value>>),
}

impl Default for Input {
    fn default() -> Self {
        Self::Text(String::new())
    }
}

/// One input item.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    /// A message.
    Message {
        /// `user`, `assistant`, `system` or `developer`.
        role: String,
        /// A string or parts.
        content: ItemContent,
    },
    /// A call the model made earlier.
    FunctionCall {
        /// The call id its output names.
        call_id: String,
        /// The function.
        name: String,
        /// JSON arguments.
        arguments: String,
    },
    /// A function's result.
    FunctionCallOutput {
        /// The call it answers.
        call_id: String,
        /// The result, as text.
        output: Value,
    },
    /// Reasoning the model returned earlier. Only llmesh's own (an
    /// Anthropic target's signed thinking, in `encrypted_content`) goes
    /// anywhere: other targets' reasoning stays on their side.
    Reasoning {
        /// What [`OutputItem::Reasoning`] wrote.
        #[serde(default)]
        encrypted_content: Option<String>,
    },
}

impl Item {
    /// Reads one item; a missing `type` means a message.
    ///
    /// # Errors
    /// The item is not one llmesh understands.
    pub fn parse(mut item: Map<String, Value>) -> Result<Self, serde_json::Error> {
        item.entry("type").or_insert_with(|| Value::from("message"));
        serde_json::from_value(Value::Object(item))
    }
}

/// A message's content.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ItemContent {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<Part>),
}

/// A content part.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    /// The app's text.
    InputText {
        /// The text.
        text: String,
    },
    /// An image by URL or `data:` URL.
    InputImage {
        /// The URL.
        #[serde(default)]
        image_url: Option<String>,
        /// `auto`, `low`, `high`.
        #[serde(default)]
        detail: Option<String>,
    },
    /// The model's earlier text.
    OutputText {
        /// The text.
        text: String,
    },
    /// The model's earlier refusal.
    Refusal {
        /// The refusal.
        refusal: String,
    },
}

/// `text`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct TextConfig {
    /// The answer's format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TextFormat>,
}

/// `text.format`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct TextFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The schema's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// Strict adherence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `reasoning`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Reasoning {
    /// `minimal`, `low`, `medium`, `high`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effort: Option<String>,
    /// Summary settings; no target of llmesh returns summaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Value>,
}

/// The response object.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Response {
    /// `resp_...`.
    pub id: String,
    /// Always `response`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: &'static str,
    /// The model that answered.
    pub model: String,
    /// Messages and function calls.
    pub output: Vec<OutputItem>,
    /// Why the answer is incomplete.
    pub incomplete_details: Option<IncompleteDetails>,
    /// Why it failed.
    pub error: Option<ResponseError>,
    /// Token counts, once known.
    pub usage: Option<Usage>,
    /// Always false: the sidecar keeps nothing.
    pub store: bool,
    /// Always null: nothing is stored to continue from.
    pub previous_response_id: Option<String>,
    /// The request's instructions.
    pub instructions: Option<String>,
    /// The request's tools, as sent.
    pub tools: Vec<Value>,
    /// The request's tool choice.
    pub tool_choice: Value,
    /// Whether parallel calls were allowed.
    pub parallel_tool_calls: bool,
    /// The request's text format.
    pub text: TextConfig,
    /// The request's metadata.
    pub metadata: Map<String, Value>,
    /// The request's output limit.
    pub max_output_tokens: Option<u64>,
    /// The request's sampling temperature.
    pub temperature: f64,
    /// The request's nucleus sampling.
    pub top_p: f64,
    /// The request's reasoning settings.
    pub reasoning: ReasoningEcho,
    /// Always `disabled`: a request too long for the model fails.
    pub truncation: &'static str,
    /// The request's end-user id.
    pub user: Option<String>,
}

/// `reasoning` of the response object: both fields always present, as
/// OpenAI writes them.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ReasoningEcho {
    /// The effort asked for.
    pub effort: Option<String>,
    /// Summary settings.
    pub summary: Option<Value>,
}

/// `incomplete_details`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct IncompleteDetails {
    /// `max_output_tokens` or `content_filter`.
    pub reason: &'static str,
}

/// `error` of a failed response.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ResponseError {
    /// A machine-readable code.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

/// One output item.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// The assistant's text.
    Message {
        /// `msg_...`.
        id: String,
        /// `in_progress` or `completed`.
        status: &'static str,
        /// Always `assistant`.
        role: &'static str,
        /// Text parts.
        content: Vec<OutputText>,
    },
    /// A call of one of the app's functions.
    FunctionCall {
        /// `fc_...`.
        id: String,
        /// The id the app's output names.
        call_id: String,
        /// The function.
        name: String,
        /// JSON arguments.
        arguments: String,
        /// `in_progress` or `completed`.
        status: &'static str,
    },
    /// The model's reasoning (an Anthropic target's thinking).
    Reasoning {
        /// `rs_...`.
        id: String,
        /// The reasoning text, as one summary part.
        summary: Vec<SummaryText>,
        /// The signed thinking blocks, opaque to the app, to send back with
        /// the next turn when it continues a tool call.
        #[serde(skip_serializing_if = "Option::is_none")]
        encrypted_content: Option<String>,
    },
}

/// A `summary_text` part of a reasoning item.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SummaryText {
    /// Always `summary_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The text.
    pub text: String,
}

impl SummaryText {
    /// A part with `text`.
    pub fn new(text: String) -> Self {
        Self {
            kind: "summary_text",
            text,
        }
    }
}

/// An `output_text` part.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OutputText {
    /// Always `output_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The text.
    pub text: String,
    /// Always empty.
    pub annotations: Vec<Value>,
}

impl OutputText {
    /// A part with `text`.
    pub fn new(text: String) -> Self {
        Self {
            kind: "output_text",
            text,
            annotations: Vec::new(),
        }
    }
}

/// Token counts in the Responses shape.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Usage {
    /// Input, cached included.
    pub input_tokens: u64,
    /// Input breakdown.
    pub input_tokens_details: InputDetails,
    /// Output, reasoning included.
    pub output_tokens: u64,
    /// Output breakdown.
    pub output_tokens_details: OutputDetails,
    /// The sum.
    pub total_tokens: u64,
}

/// `input_tokens_details`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct InputDetails {
    /// Read from the prompt cache.
    pub cached_tokens: u64,
}

/// `output_tokens_details`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OutputDetails {
    /// Spent on reasoning.
    pub reasoning_tokens: u64,
}

impl Usage {
    /// From the internal (OpenAI chat) counts.
    pub fn of(usage: &super::Usage) -> Self {
        Self {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: InputDetails {
                cached_tokens: usage.cached_input(),
            },
            output_tokens: usage.completion_tokens,
            output_tokens_details: OutputDetails {
                reasoning_tokens: usage.reasoning(),
            },
            total_tokens: usage.total_tokens,
        }
    }
}
