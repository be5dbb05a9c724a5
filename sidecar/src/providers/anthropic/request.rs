//! OpenAI chat request → Anthropic Messages request.
//!
//! Anthropic keeps instructions in a top-level `system`, wants strictly
//! alternating user/assistant turns made of typed blocks, returns tool
//! results inside user turns, and requires an output limit. What it cannot
//! honour is refused by name rather than silently dropped. The request is
//! built in the Messages wire types of `api::messages`, the ones apps' requests
//! are read into, so a Messages app's own request can be sent as it came
//! (same-family passthrough) through the same code.

use serde_json::{Map, Value, json};

use crate::api::chat::{ChatRequest, Content, ContentPart, ImageUrl, Message, ResponseFormat, Role, Tool};
use crate::api::messages::{self, Block, ImageSource, MessagesRequest, Metadata, ToolChoice};
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
pub(super) fn translate(request: &ChatRequest, model: &str) -> Result<MessagesRequest, ProviderError> {
    refuse_unsupported(request)?;
    let mut system = Vec::new();
    let mut turns: Vec<messages::Message> = Vec::new();
    for message in &request.messages {
        let (speaker, blocks) = match message.role {
            Role::System | Role::Developer => {
                system.extend(instruction_blocks(message)?);
                continue;
            }
            Role::User => (messages::Role::User, user_blocks(message)?),
            Role::Assistant => (messages::Role::Assistant, assistant_blocks(message)?),
            Role::Tool => (messages::Role::User, vec![tool_result(message)?]),
        };
        push_turn(&mut turns, speaker, blocks);
    }
    if turns.is_empty() {
        return Err(bad_request(
            "the conversation has no user or assistant message with content",
        ));
    }
    let (tools, tool_choice) = tools_and_choice(request)?;
    let stop_sequences = request.stop_sequences();
    let thinking_budget = thinking_budget(request)?;
    let max_tokens = match (request.max_output_tokens(), thinking_budget) {
        (Some(limit), Some(budget)) if limit <= budget => {
            return Err(bad_request(format!(
                "max_tokens ({limit}) must exceed the thinking budget of {budget} tokens that the reasoning effort gives Anthropic"
            )));
        }
        (Some(limit), _) => limit,
        // Thinking is spent from the output limit: room for the answer on top.
        (None, Some(budget)) => budget + DEFAULT_MAX_TOKENS,
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    Ok(MessagesRequest {
        model: model.to_owned(),
        max_tokens: Some(max_tokens),
        thinking: thinking_budget.map(|budget| json!({"type": "enabled", "budget_tokens": budget})),
        system: (!system.is_empty()).then_some(messages::Content::Blocks(system)),
        messages: turns,
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences: (!stop_sequences.is_empty()).then_some(stop_sequences),
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        metadata: request.user.clone().map(|user_id| Metadata {
            user_id: Some(user_id),
        }),
        stream: request.is_stream().then_some(true),
        ..MessagesRequest::default()
    })
}

/// The thinking budget for OpenAI's `reasoning_effort` (LiteLLM's figures,
/// so apps moving from it see the same spend); `minimal` and `none` think
/// not at all. Anthropic's own `thinking` object, sent as an extra field,
/// is taken as it is.
///
/// # Errors
/// An effort OpenAI does not define.
fn thinking_budget(request: &ChatRequest) -> Result<Option<u64>, ProviderError> {
    if let Some(budget) = request
        .extra
        .get("thinking")
        .filter(|t| t["type"] == "enabled")
        .and_then(|t| t["budget_tokens"].as_u64())
    {
        return Ok(Some(budget));
    }
    match request.extra.get("reasoning_effort").and_then(Value::as_str) {
        None | Some("none" | "minimal") => Ok(None),
        Some("low") => Ok(Some(1024)),
        Some("medium") => Ok(Some(2048)),
        Some("high") => Ok(Some(4096)),
        Some(other) => Err(bad_request(format!(
            "reasoning_effort {other:?} is not one of none, minimal, low, medium, high"
        ))),
    }
}

/// The request a Messages app sent, for `model`: every field as the app
/// wrote it (`cache_control`, thinking blocks and their signatures, fields
/// llmesh does not model), with only the model and the stream flag set.
pub(super) fn passthrough(origin: &MessagesRequest, request: &ChatRequest, model: &str) -> MessagesRequest {
    let mut outbound = origin.clone();
    model.clone_into(&mut outbound.model);
    outbound.stream = request.is_stream().then_some(true);
    outbound
}

/// The `count_tokens` body for a Messages request: only the fields that
/// endpoint takes (it refuses output limits, sampling and streaming).
///
/// # Errors
/// The request cannot be encoded.
pub(super) fn count_tokens_body(outbound: &MessagesRequest) -> Result<Vec<u8>, ProviderError> {
    let mut value = serde_json::to_value(outbound)
        .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("cannot encode request: {e}")))?;
    if let Some(fields) = value.as_object_mut() {
        fields.retain(|name, _| COUNTED_FIELDS.contains(&name.as_str()));
    }
    serde_json::to_vec(&value)
        .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("cannot encode request: {e}")))
}

/// The fields Anthropic's `count_tokens` accepts.
const COUNTED_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
];

/// Marks the stable prefix of a request — tools, then the system prompt, the
/// part repeated verbatim across calls — as a prompt-cache breakpoint when
/// it is at least `min_tokens` long (estimated at four characters a token,
/// as routing estimates). Shorter prefixes are left alone: Anthropic does
/// not cache them, and a cache write costs more than plain input.
/// A request that already carries a breakpoint (an Anthropic app placed its
/// own) is left as it is: the app knows its prefix, and Anthropic refuses
/// more than four breakpoints.
pub(super) fn mark_stable_prefix(request: &mut MessagesRequest, min_tokens: u64) {
    if has_breakpoint(request) {
        return;
    }
    let system_chars: usize = match &request.system {
        None => 0,
        Some(messages::Content::Text(text)) => text.len(),
        Some(messages::Content::Blocks(blocks)) => blocks
            .iter()
            .map(|block| match block {
                Block::Text { text, .. } => text.len(),
                _ => 0,
            })
            .sum(),
    };
    let tool_chars: usize = request
        .tools
        .iter()
        .flatten()
        .map(|tool| serde_json::to_string(tool).map_or(0, |json| json.len()))
        .sum();
    let estimated_tokens = u64::try_from((system_chars + tool_chars) / 4).unwrap_or(u64::MAX);
    if estimated_tokens < min_tokens {
        return;
    }
    let ephemeral = || Some(json!({"type": "ephemeral"}));
    // The breakpoint goes on the last block of the prefix; everything before it is cached too.
    if let Some(system) = request.system.take() {
        let mut blocks = system.into_blocks();
        if let Some(Block::Text { cache_control, .. }) = blocks.last_mut() {
            *cache_control = ephemeral();
            request.system = Some(messages::Content::Blocks(blocks));
            return;
        }
        request.system = Some(messages::Content::Blocks(blocks));
    }
    if let Some(tool) = request.tools.iter_mut().flatten().last() {
        tool.cache_control = ephemeral();
    }
}

/// Whether any block or tool of `request` is a prompt-cache breakpoint.
fn has_breakpoint(request: &MessagesRequest) -> bool {
    let marked = |content: &messages::Content| match content {
        messages::Content::Text(_) => false,
        messages::Content::Blocks(blocks) => blocks.iter().any(|b| b.cache_control().is_some()),
    };
    request.system.as_ref().is_some_and(marked)
        || request.tools.iter().flatten().any(|t| t.cache_control.is_some())
        || request.messages.iter().any(|m| marked(&m.content))
}

/// Anthropic rejects two turns in a row from the same side, so consecutive
/// messages of one side (several tool results, a tool result then the user's
/// next question) become one turn. Empty messages are dropped: Anthropic
/// rejects empty content.
fn push_turn(turns: &mut Vec<messages::Message>, speaker: messages::Role, blocks: Vec<Block>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some(messages::Message {
            role,
            content: messages::Content::Blocks(last),
        }) if *role == speaker => last.extend(blocks),
        _ => turns.push(messages::Message {
            role: speaker,
            content: messages::Content::Blocks(blocks),
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
    // Signed reasoning goes first, as Anthropic wrote the turn.
    let mut blocks: Vec<Block> = message
        .thinking_blocks()
        .map_err(|e| bad_request(format!("an assistant message's thinking_blocks: {e}")))?
        .into_iter()
        .map(Block::from)
        .collect();
    blocks.extend(content_blocks(message, |part| match part.kind.as_str() {
        // A refusal the model gave earlier is still what it said.
        "text" | "refusal" => Ok(text_block(
            part.text
                .as_deref()
                .or(part.extra.get("refusal").and_then(Value::as_str)),
        )),
        other => Err(unsupported_part(other, "an assistant message")),
    })?);
    for call in message.tool_calls.iter().flatten() {
        blocks.push(Block::ToolUse {
            id: call.id.clone(),
            name: call.function.name.clone(),
            input: tool_arguments(&call.id, &call.function.arguments)?,
            cache_control: None,
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
    Ok(Block::ToolResult {
        tool_use_id,
        content: (!content.is_empty()).then_some(messages::Content::Blocks(content)),
        is_error: None,
        cache_control: None,
    })
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
    text.filter(|t| !t.is_empty()).map(Block::text)
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
    Ok(Block::Image {
        source,
        cache_control: None,
    })
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

fn tools_and_choice(
    request: &ChatRequest,
) -> Result<(Vec<messages::Tool>, Option<ToolChoice>), ProviderError> {
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
    let disable_parallel_tool_use = (request.parallel_tool_calls == Some(false)).then_some(true);
    let choice = match choice {
        None if disable_parallel_tool_use.is_none() => None,
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

fn tool_spec(tool: &Tool) -> Result<messages::Tool, ProviderError> {
    if tool.kind != "function" {
        return Err(ProviderError::unsupported(format!(
            "tools of type {:?} are not supported for Anthropic",
            tool.kind
        )));
    }
    Ok(messages::Tool {
        kind: None,
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

fn json_response_tool(format: &ResponseFormat) -> Result<messages::Tool, ProviderError> {
    match (format.kind.as_str(), &format.json_schema) {
        ("json_object", _) => Ok(messages::Tool {
            kind: None,
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
            Ok(messages::Tool {
                kind: None,
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
    fn a_messages_apps_request_goes_as_sent_and_keeps_its_own_breakpoints() {
        let long = "Follow the house style. ".repeat(40);
        let origin: MessagesRequest = serde_json::from_value(json!({
            "model": "alias", "max_tokens": 64, "service_tier": "auto",
            "system": long,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Plan", "cache_control": {"type": "ephemeral"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "A city?", "signature": "sig-1"},
                    {"type": "text", "text": "Where?"}
                ]},
                {"role": "user", "content": "Lisbon"}
            ]
        }))
        .expect("a Messages request");
        let chat = request(
            json!({"model": "alias", "messages": [{"role": "user", "content": "Lisbon"}], "stream": true}),
        );
        let mut outbound = passthrough(&origin, &chat, "claude-test");
        mark_stable_prefix(&mut outbound, 100);
        let sent = serde_json::to_value(&outbound).expect("serializes");
        let mut expected = serde_json::to_value(&origin).expect("serializes");
        expected["model"] = json!("claude-test");
        expected["stream"] = json!(true);
        // The app placed a breakpoint: its long system prompt is not marked as well.
        assert_eq!(sent, expected);

        let unmarked: MessagesRequest = serde_json::from_value(json!({
            "model": "alias", "max_tokens": 64, "system": long, "messages": [{"role": "user", "content": "hi"}]
        }))
        .expect("a Messages request");
        let mut outbound = passthrough(&unmarked, &chat, "claude-test");
        mark_stable_prefix(&mut outbound, 100);
        let sent = serde_json::to_value(&outbound).expect("serializes");
        assert_eq!(sent["system"][0]["cache_control"], json!({"type": "ephemeral"}));
        assert_eq!(sent["system"][0]["text"], long.as_str());
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
    fn reasoning_effort_becomes_a_thinking_budget_with_room_for_the_answer() {
        let ask = |extra: Value| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
            body.as_object_mut()
                .expect("object")
                .extend(extra.as_object().cloned().unwrap_or_default());
            body
        };
        for (effort, budget) in [("low", 1024), ("medium", 2048), ("high", 4096)] {
            let body = translated(ask(json!({"reasoning_effort": effort})));
            assert_eq!(
                body["thinking"],
                json!({"type": "enabled", "budget_tokens": budget})
            );
            assert_eq!(body["max_tokens"], budget + DEFAULT_MAX_TOKENS);
        }
        let body = translated(ask(json!({"reasoning_effort": "minimal", "max_tokens": 64})));
        assert!(body.get("thinking").is_none(), "{body}");
        let body = translated(ask(
            json!({"thinking": {"type": "enabled", "budget_tokens": 2000}, "max_tokens": 3000}),
        ));
        assert_eq!(body["thinking"]["budget_tokens"], 2000);
        assert_eq!(body["max_tokens"], 3000);

        let error = refused(ask(json!({"reasoning_effort": "high", "max_tokens": 1000})));
        assert_eq!(error.kind, ErrorKind::BadRequest);
        assert!(
            error.message.contains("thinking budget of 4096"),
            "{}",
            error.message
        );
        assert_eq!(
            refused(ask(json!({"reasoning_effort": "max"}))).kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn an_assistant_turn_carries_its_signed_thinking_back_first() {
        let body = translated(json!({"model": "m", "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null,
             "thinking_blocks": [{"type": "thinking", "thinking": "Need a tool.", "signature": "sig1"},
                 {"type": "redacted_thinking", "data": "enc"}],
             "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21C"}
        ]}));
        assert_eq!(
            body["messages"][1]["content"],
            json!([
                {"type": "thinking", "thinking": "Need a tool.", "signature": "sig1"},
                {"type": "redacted_thinking", "data": "enc"},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {}}
            ])
        );
        let error = refused(json!({"model": "m", "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello", "thinking_blocks": "not blocks"}
        ]}));
        assert!(error.message.contains("thinking_blocks"), "{}", error.message);
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
