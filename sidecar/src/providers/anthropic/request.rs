//! OpenAI chat request → Anthropic Messages request.
//!
//! Anthropic keeps instructions in a top-level `system`, wants strictly
//! alternating user/assistant turns made of typed blocks, returns tool
//! results inside user turns, and requires an output limit. What it cannot
//! honour is refused by name rather than silently dropped.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::api::chat::{ChatRequest, Content, ContentPart, ImageUrl, Message, ResponseFormat, Role, Tool};
use crate::providers::{ErrorKind, ProviderError};

/// Output limit when the app sets none (Anthropic requires one). 4096 is the
/// largest limit every Claude model still served accepts (Claude 3 Haiku's
/// maximum), so the default never makes a request fail, and it is ample for
/// a chat answer; apps that want longer answers say so.
pub(super) const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The tool that carries the answer when the app asks for JSON
/// (`response_format`). Anthropic has no JSON mode; a tool call's input is
/// JSON that follows the tool's schema, so the model is made to "call" this
/// tool and its input becomes the message content.
pub(super) const JSON_RESPONSE_TOOL: &str = "json_response";

/// A Messages API request body.
#[derive(Debug, Serialize, PartialEq)]
pub(super) struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<Block>,
    messages: Vec<Turn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ToolSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

/// One turn of the conversation.
#[derive(Debug, Serialize, PartialEq)]
struct Turn {
    role: Speaker,
    content: Vec<Block>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Speaker {
    User,
    Assistant,
}

/// A content block.
#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        content: Vec<Block>,
    },
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Debug, Serialize, PartialEq)]
struct ToolSpec {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    input_schema: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<CacheControl>,
}

/// A prompt-cache breakpoint: Anthropic caches the prompt up to and
/// including the block that carries it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CacheControl {
    /// The default five-minute cache.
    Ephemeral,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToolChoice {
    Auto {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    Any {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    Tool {
        name: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        disable_parallel_tool_use: bool,
    },
    None,
}

#[derive(Debug, Serialize, PartialEq)]
struct Metadata {
    user_id: String,
}

/// Whether the app asked for a JSON answer, which is emulated with
/// [`JSON_RESPONSE_TOOL`].
pub(super) fn wants_json(request: &ChatRequest) -> bool {
    request.response_format.as_ref().is_some_and(|f| f.kind != "text")
}

/// Translates `request` for `model`.
///
/// # Errors
/// `Unsupported` for a parameter Anthropic cannot honour, `BadRequest` for a
/// request that cannot be expressed (tool arguments that are not JSON).
pub(super) fn translate<'a>(
    request: &'a ChatRequest,
    model: &'a str,
) -> Result<MessagesRequest<'a>, ProviderError> {
    refuse_unsupported(request)?;
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    for message in &request.messages {
        let (speaker, blocks) = match message.role {
            Role::System | Role::Developer => {
                system.extend(instruction_blocks(message)?);
                continue;
            }
            Role::User => (Speaker::User, user_blocks(message)?),
            Role::Assistant => (Speaker::Assistant, assistant_blocks(message)?),
            Role::Tool => (Speaker::User, vec![tool_result(message)?]),
        };
        push_turn(&mut turns, speaker, blocks);
    }
    if turns.is_empty() {
        return Err(bad_request(
            "the conversation has no user or assistant message with content",
        ));
    }
    let (tools, tool_choice) = tools_and_choice(request)?;
    Ok(MessagesRequest {
        model,
        max_tokens: request.max_output_tokens().unwrap_or(DEFAULT_MAX_TOKENS),
        system,
        messages: turns,
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences: request.stop_sequences(),
        tools,
        tool_choice,
        metadata: request.user.clone().map(|user_id| Metadata { user_id }),
        stream: request.is_stream(),
    })
}

/// The `count_tokens` body for `request`: the Messages request without
/// the fields that endpoint refuses (output limit, sampling, streaming).
///
/// # Errors
/// As [`translate`].
pub(super) fn count_tokens_body(request: &ChatRequest, model: &str) -> Result<Vec<u8>, ProviderError> {
    let outbound = translate(request, model)?;
    let mut value = serde_json::to_value(&outbound)
        .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("cannot encode request: {e}")))?;
    if let Some(fields) = value.as_object_mut() {
        for refused in [
            "max_tokens",
            "temperature",
            "top_p",
            "stop_sequences",
            "metadata",
            "stream",
        ] {
            fields.remove(refused);
        }
    }
    serde_json::to_vec(&value)
        .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("cannot encode request: {e}")))
}

/// Marks the stable prefix of a request — tools, then the system prompt, the
/// part repeated verbatim across calls — as a prompt-cache breakpoint when
/// it is at least `min_tokens` long (estimated at four characters a token,
/// as routing estimates). Shorter prefixes are left alone: Anthropic does
/// not cache them, and a cache write costs more than plain input.
pub(super) fn mark_stable_prefix(request: &mut MessagesRequest<'_>, min_tokens: u64) {
    let system_chars: usize = request
        .system
        .iter()
        .map(|block| match block {
            Block::Text { text, .. } => text.len(),
            _ => 0,
        })
        .sum();
    let tool_chars: usize = request
        .tools
        .iter()
        .map(|tool| serde_json::to_string(tool).map_or(0, |json| json.len()))
        .sum();
    let estimated_tokens = u64::try_from((system_chars + tool_chars) / 4).unwrap_or(u64::MAX);
    if estimated_tokens < min_tokens {
        return;
    }
    // The breakpoint goes on the last block of the prefix; everything before it is cached too.
    if let Some(Block::Text { cache_control, .. }) = request.system.last_mut() {
        *cache_control = Some(CacheControl::Ephemeral);
    } else if let Some(tool) = request.tools.last_mut() {
        tool.cache_control = Some(CacheControl::Ephemeral);
    }
}

/// Anthropic rejects two turns in a row from the same side, so consecutive
/// messages of one side (several tool results, a tool result then the user's
/// next question) become one turn. Empty messages are dropped: Anthropic
/// rejects empty content.
fn push_turn(turns: &mut Vec<Turn>, speaker: Speaker, blocks: Vec<Block>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(last) if last.role == speaker => last.content.extend(blocks),
        _ => turns.push(Turn {
            role: speaker,
            content: blocks,
        }),
    }
}

fn refuse_unsupported(request: &ChatRequest) -> Result<(), ProviderError> {
    let unsupported = |what: &str| {
        Err(ProviderError::unsupported(format!(
            "Anthropic's Messages API cannot honour {what}"
        )))
    };
    if request.n.is_some_and(|n| n > 1) {
        return unsupported("`n` > 1: it returns one answer per request");
    }
    if request.presence_penalty.is_some_and(|p| p != 0.0) {
        return unsupported("`presence_penalty`");
    }
    if request.frequency_penalty.is_some_and(|p| p != 0.0) {
        return unsupported("`frequency_penalty`");
    }
    let extra = |name: &str| request.extra.get(name).filter(|v| !v.is_null());
    if extra("logprobs").is_some_and(|v| v != &Value::Bool(false)) || extra("top_logprobs").is_some() {
        return unsupported("`logprobs`");
    }
    if extra("logit_bias").is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty())) {
        return unsupported("`logit_bias`");
    }
    if extra("audio").is_some()
        || extra("modalities")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|v| v != "text"))
    {
        return unsupported("audio output (`audio`, `modalities`)");
    }
    Ok(())
}

/// System and developer messages: text only.
fn instruction_blocks(message: &Message) -> Result<Vec<Block>, ProviderError> {
    content_blocks(message, |part| match part.kind.as_str() {
        "text" => Ok(text_block(part.text.as_deref())),
        other => Err(unsupported_part(other, "a system message")),
    })
}

fn user_blocks(message: &Message) -> Result<Vec<Block>, ProviderError> {
    content_blocks(message, |part| match part.kind.as_str() {
        "text" => Ok(text_block(part.text.as_deref())),
        "image_url" => match &part.image_url {
            Some(image) => image_block(image).map(Some),
            None => Err(bad_request("an image_url part has no image_url")),
        },
        other => Err(unsupported_part(other, "a user message")),
    })
}

fn assistant_blocks(message: &Message) -> Result<Vec<Block>, ProviderError> {
    let mut blocks = content_blocks(message, |part| match part.kind.as_str() {
        // A refusal the model gave earlier is still what it said.
        "text" | "refusal" => Ok(text_block(
            part.text
                .as_deref()
                .or(part.extra.get("refusal").and_then(Value::as_str)),
        )),
        other => Err(unsupported_part(other, "an assistant message")),
    })?;
    for call in message.tool_calls.iter().flatten() {
        blocks.push(Block::ToolUse {
            id: call.id.clone(),
            name: call.function.name.clone(),
            input: tool_arguments(&call.id, &call.function.arguments)?,
        });
    }
    Ok(blocks)
}

/// A tool call's arguments as the JSON object Anthropic's `input` must be.
fn tool_arguments(id: &str, arguments: &str) -> Result<Value, ProviderError> {
    // Some clients send an empty string for a call without arguments.
    if arguments.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(bad_request(format!(
            "the arguments of tool call {id} are not a JSON object"
        ))),
        Err(e) => Err(bad_request(format!(
            "the arguments of tool call {id} are not valid JSON: {e}"
        ))),
    }
}

fn tool_result(message: &Message) -> Result<Block, ProviderError> {
    let tool_use_id = message
        .tool_call_id
        .clone()
        .ok_or_else(|| bad_request("a tool message has no tool_call_id"))?;
    let content = content_blocks(message, |part| match part.kind.as_str() {
        "text" => Ok(text_block(part.text.as_deref())),
        other => Err(unsupported_part(other, "a tool message")),
    })?;
    Ok(Block::ToolResult { tool_use_id, content })
}

/// The blocks of a message's content, each part translated by `part_block`.
fn content_blocks(
    message: &Message,
    part_block: impl Fn(&ContentPart) -> Result<Option<Block>, ProviderError>,
) -> Result<Vec<Block>, ProviderError> {
    match &message.content {
        None => Ok(Vec::new()),
        Some(Content::Text(text)) => Ok(text_block(Some(text)).into_iter().collect()),
        Some(Content::Parts(parts)) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for part in parts {
                blocks.extend(part_block(part)?);
            }
            Ok(blocks)
        }
    }
}

/// A text block, or nothing for empty text (Anthropic rejects empty text blocks).
fn text_block(text: Option<&str>) -> Option<Block> {
    text.filter(|t| !t.is_empty()).map(|t| Block::Text {
        text: t.to_owned(),
        cache_control: None,
    })
}

fn image_block(image: &ImageUrl) -> Result<Block, ProviderError> {
    let source = if let Some((media_type, data)) = image.as_inline() {
        ImageSource::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        }
    } else if image.url.starts_with("https://") || image.url.starts_with("http://") {
        ImageSource::Url {
            url: image.url.clone(),
        }
    } else {
        return Err(bad_request(
            "an image must be an http(s) URL or a base64 data: URL",
        ));
    };
    Ok(Block::Image { source })
}

/// The app's `tool_choice`, read.
enum AppChoice {
    Auto,
    Required,
    None,
    Named(String),
}

fn app_choice(value: Option<&Value>) -> Result<Option<AppChoice>, ProviderError> {
    let Some(value) = value else { return Ok(None) };
    let choice = match value.as_str() {
        Some("auto") => AppChoice::Auto,
        Some("required") => AppChoice::Required,
        Some("none") => AppChoice::None,
        _ => match value.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if value.get("type").is_none_or(|t| t == "function") => {
                AppChoice::Named(name.to_owned())
            }
            _ => {
                return Err(ProviderError::unsupported(format!(
                    "tool_choice {value} is not supported for Anthropic"
                )));
            }
        },
    };
    Ok(Some(choice))
}

fn tools_and_choice(request: &ChatRequest) -> Result<(Vec<ToolSpec>, Option<ToolChoice>), ProviderError> {
    let mut tools = request
        .tools
        .iter()
        .flatten()
        .map(tool_spec)
        .collect::<Result<Vec<_>, _>>()?;
    let app_has_tools = !tools.is_empty();
    let choice = app_choice(request.tool_choice.as_ref())?;
    let json = match &request.response_format {
        Some(format) if wants_json(request) => Some(json_response_tool(format)?),
        _ => None,
    };
    let choice = match json {
        Some(json_tool) => {
            if tools.iter().any(|t| t.name == JSON_RESPONSE_TOOL) {
                return Err(bad_request(format!(
                    "a tool named {JSON_RESPONSE_TOOL} clashes with the tool llmesh uses for response_format on Anthropic"
                )));
            }
            tools.push(json_tool);
            // The model must answer through a tool: the app's own, or the
            // JSON one. A named choice stays; "none" leaves only the JSON tool.
            match choice {
                Some(AppChoice::Named(name)) => Some(AppChoice::Named(name)),
                Some(AppChoice::Auto | AppChoice::Required) | None if app_has_tools => {
                    Some(AppChoice::Required)
                }
                _ => Some(AppChoice::Named(JSON_RESPONSE_TOOL.to_owned())),
            }
        }
        None => choice,
    };
    if tools.is_empty() {
        // Without tools a tool_choice means nothing, and Anthropic rejects it.
        return Ok((tools, None));
    }
    let disable_parallel_tool_use = request.parallel_tool_calls == Some(false);
    let choice = match choice {
        None if !disable_parallel_tool_use => None,
        None | Some(AppChoice::Auto) => Some(ToolChoice::Auto {
            disable_parallel_tool_use,
        }),
        Some(AppChoice::Required) => Some(ToolChoice::Any {
            disable_parallel_tool_use,
        }),
        Some(AppChoice::None) => Some(ToolChoice::None),
        Some(AppChoice::Named(name)) => Some(ToolChoice::Tool {
            name,
            disable_parallel_tool_use,
        }),
    };
    Ok((tools, choice))
}

fn tool_spec(tool: &Tool) -> Result<ToolSpec, ProviderError> {
    if tool.kind != "function" {
        return Err(ProviderError::unsupported(format!(
            "tools of type {:?} are not supported for Anthropic",
            tool.kind
        )));
    }
    Ok(ToolSpec {
        name: tool.function.name.clone(),
        description: tool.function.description.clone(),
        // Anthropic requires a schema; a function without parameters takes none.
        input_schema: tool
            .function
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        cache_control: None,
    })
}

fn json_response_tool(format: &ResponseFormat) -> Result<ToolSpec, ProviderError> {
    match (format.kind.as_str(), &format.json_schema) {
        ("json_object", _) => Ok(ToolSpec {
            name: JSON_RESPONSE_TOOL.to_owned(),
            description: Some("Give your answer as a JSON object: the input of this tool.".to_owned()),
            input_schema: json!({"type": "object"}),
            cache_control: None,
        }),
        ("json_schema", Some(schema)) => {
            let mut description = format!(
                "Give your answer as the input of this tool: a {} object.",
                schema.name
            );
            if let Some(about) = &schema.description {
                description.push(' ');
                description.push_str(about);
            }
            Ok(ToolSpec {
                name: JSON_RESPONSE_TOOL.to_owned(),
                description: Some(description),
                input_schema: schema.schema.clone().unwrap_or_else(|| json!({"type": "object"})),
                cache_control: None,
            })
        }
        ("json_schema", None) => Err(bad_request("response_format json_schema has no json_schema")),
        (other, _) => Err(bad_request(format!("unknown response_format type {other:?}"))),
    }
}

fn unsupported_part(kind: &str, place: &str) -> ProviderError {
    ProviderError::unsupported(format!(
        "content parts of type {kind:?} in {place} are not supported for Anthropic"
    ))
}

fn bad_request(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::BadRequest, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(value: Value) -> ChatRequest {
        serde_json::from_value(value).expect("a valid OpenAI request")
    }

    fn translated(value: Value) -> Value {
        let request = request(value);
        serde_json::to_value(translate(&request, "claude-test").expect("translates")).expect("serializes")
    }

    fn refused(value: Value) -> ProviderError {
        translate(&request(value), "claude-test").expect_err("refused")
    }

    #[test]
    fn a_long_stable_prefix_gets_a_cache_breakpoint_and_a_short_one_does_not() {
        let long = "Follow the house style. ".repeat(40);
        let tools = json!([{"type": "function", "function": {"name": "search", "description": long}}]);
        let cases = [
            // (system prompt, tools, breakpoint on the system prompt, on the last tool)
            (Some(long.as_str()), None, true, false),
            (Some("Be brief."), None, false, false),
            (None, Some(tools.clone()), false, true),
            (Some("Be brief."), Some(tools), true, false),
        ];
        for (system, tools, on_system, on_tool) in cases {
            let mut messages = Vec::new();
            if let Some(system) = system {
                messages.push(json!({"role": "system", "content": system}));
            }
            messages.push(json!({"role": "user", "content": "hi"}));
            let mut body = json!({"model": "m", "messages": messages});
            if let Some(tools) = tools {
                body["tools"] = tools;
            }
            let request = request(body);
            let mut outbound = translate(&request, "claude-test").expect("translates");
            mark_stable_prefix(&mut outbound, 100);
            let json = serde_json::to_value(&outbound).expect("serializes");
            let marked = |value: &Value| value.get("cache_control") == Some(&json!({"type": "ephemeral"}));
            let system_marked = json["system"]
                .as_array()
                .and_then(|s| s.last())
                .is_some_and(marked);
            let tool_marked = json["tools"]
                .as_array()
                .and_then(|t| t.last())
                .is_some_and(marked);
            assert_eq!((system_marked, tool_marked), (on_system, on_tool), "{system:?}");
            assert!(json["messages"].to_string().find("cache_control").is_none());
        }
    }

    #[test]
    fn instructions_go_to_system_and_turns_alternate() {
        let body = translated(json!({
            "model": "smart",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Weather in Paris and Lyon?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
                {"role": "user", "content": "Thanks. And tomorrow?"}
            ]
        }));
        assert_eq!(
            body["system"],
            json!([{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}])
        );
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["model"], "claude-test");
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Lyon?"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "weather", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "rain"}]},
                    {"type": "text", "text": "Thanks. And tomorrow?"}
                ]}
            ])
        );
        assert!(
            body.get("stream").is_none() && body.get("tools").is_none() && body.get("tool_choice").is_none()
        );
    }

    #[test]
    fn images_become_base64_or_url_sources() {
        let body = translated(json!({
            "model": "smart",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]}]
        }));
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "Compare"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ])
        );
        let error = refused(json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.jpg"}}
        ]}]}));
        assert_eq!(error.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn sampling_limits_and_user_are_translated() {
        let body = translated(json!({
            "model": "smart", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10, "max_completion_tokens": 20, "temperature": 0.3, "top_p": 0.9,
            "stop": "END", "user": "u-42", "stream": true, "seed": 7,
            "stream_options": {"include_usage": true}, "store": true, "service_tier": "auto"
        }));
        assert_eq!(body["max_tokens"], 20);
        assert_eq!(body["temperature"], 0.3);
        assert_eq!(body["top_p"], 0.9);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert_eq!(body["metadata"], json!({"user_id": "u-42"}));
        assert_eq!(body["stream"], true);
        let mut keys: Vec<&str> = body
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "max_tokens",
                "messages",
                "metadata",
                "model",
                "stop_sequences",
                "stream",
                "temperature",
                "top_p"
            ],
            "only Anthropic fields are sent: no seed, store, service_tier or stream_options"
        );
    }

    #[test]
    fn tools_and_each_tool_choice_translate() {
        let tools = json!([{"type": "function", "function": {
            "name": "weather", "description": "Weather by city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": true
        }}, {"type": "function", "function": {"name": "now"}}]);
        let cases = [
            (json!(null), Value::Null),
            (json!("auto"), json!({"type": "auto"})),
            (json!("required"), json!({"type": "any"})),
            (json!("none"), json!({"type": "none"})),
            (
                json!({"type": "function", "function": {"name": "now"}}),
                json!({"type": "tool", "name": "now"}),
            ),
        ];
        for (choice, expected) in cases {
            let body = translated(json!({
                "model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": choice
            }));
            assert_eq!(
                body.get("tool_choice").cloned().unwrap_or(Value::Null),
                expected,
                "{choice}"
            );
            assert_eq!(
                body["tools"],
                json!([
                    {"name": "weather", "description": "Weather by city",
                     "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                    {"name": "now", "input_schema": {"type": "object", "properties": {}}}
                ])
            );
        }
        let body = translated(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools, "parallel_tool_calls": false
        }));
        assert_eq!(
            body["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
    }

    #[test]
    fn json_modes_force_the_response_tool() {
        let schema =
            json!({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]});
        let body = translated(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
        }));
        assert_eq!(body["tools"][0]["name"], JSON_RESPONSE_TOOL);
        assert_eq!(body["tools"][0]["input_schema"], schema);
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": JSON_RESPONSE_TOOL})
        );

        let body = translated(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "search"}}]
        }));
        assert_eq!(body["tools"][1]["input_schema"], json!({"type": "object"}));
        assert_eq!(
            body["tool_choice"],
            json!({"type": "any"}),
            "the model answers through one of the tools"
        );

        let body = translated(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "text"}
        }));
        assert!(body.get("tools").is_none());
    }

    #[test]
    fn what_anthropic_cannot_honour_is_refused_by_name() {
        let cases = [
            (json!({"n": 2}), "`n`"),
            (json!({"logprobs": true}), "`logprobs`"),
            (json!({"top_logprobs": 3}), "`logprobs`"),
            (json!({"presence_penalty": 0.5}), "`presence_penalty`"),
            (json!({"frequency_penalty": 1.0}), "`frequency_penalty`"),
            (json!({"logit_bias": {"50256": -100}}), "`logit_bias`"),
            (json!({"modalities": ["text", "audio"]}), "audio"),
        ];
        for (extra, name) in cases {
            let mut value = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            value
                .as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            let error = refused(value);
            assert_eq!(error.kind, ErrorKind::Unsupported, "{extra}");
            assert!(error.message.contains(name), "{}", error.message);
        }
        let harmless = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "n": 1, "logprobs": false, "presence_penalty": 0.0, "logit_bias": {}, "modalities": ["text"]});
        assert!(translate(&request(harmless), "m").is_ok());
    }

    #[test]
    fn malformed_conversations_are_clear_errors() {
        let bad_arguments = refused(json!({"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}
        ]}));
        assert_eq!(bad_arguments.kind, ErrorKind::BadRequest);
        assert!(
            bad_arguments.message.contains("call_9"),
            "{}",
            bad_arguments.message
        );

        let only_system = refused(json!({"model": "m", "messages": [{"role": "system", "content": "x"}]}));
        assert_eq!(only_system.kind, ErrorKind::BadRequest);

        let audio = refused(json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
        ]}]}));
        assert_eq!(audio.kind, ErrorKind::Unsupported);
        assert!(audio.message.contains("input_audio"));
    }
}
