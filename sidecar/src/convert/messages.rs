//! Anthropic Messages (from apps) ↔ the internal chat request and answer.
//!
//! Tool results travel inside Anthropic's user turns and before the rest of
//! the turn, so each becomes an OpenAI `tool` message placed before the
//! user's text. Thinking blocks have no chat equivalent and are dropped from
//! the translation; an Anthropic target gets the request as sent
//! ([`from_app`]).

use std::sync::Arc;

use http::HeaderMap;
use serde_json::{Map, Value};

use crate::api::chat::{
    self, ChatRequest, ChatResponse, Content, ContentPart, FunctionCall, FunctionDefinition, ImageUrl,
    StreamOptions, ToolCall,
};
use crate::api::messages::{
    AnthropicOrigin, Block, ImageSource, MessagesRequest, MessagesResponse, Role, Tool, ToolChoice,
    Usage as WireUsage,
};
use crate::error::ApiError;

/// The internal request for a Messages app's request: the translation,
/// carrying the request as sent and its `anthropic-version` and
/// `anthropic-beta` headers, which an Anthropic target receives instead.
///
/// # Errors
/// As [`to_chat`].
pub fn from_app(
    request: MessagesRequest,
    headers: &HeaderMap,
    counting: bool,
) -> Result<ChatRequest, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let origin = AnthropicOrigin {
        request: request.clone(),
        version: header("anthropic-version"),
        beta: header("anthropic-beta"),
    };
    let mut chat = to_chat(request, counting)?;
    chat.anthropic = Some(Arc::new(origin));
    Ok(chat)
}

/// The internal request for a Messages request.
///
/// # Errors
/// [`ApiError::InvalidBody`] for what Messages requires and the request
/// lacks, or what llmesh cannot translate (server tools).
pub fn to_chat(request: MessagesRequest, counting: bool) -> Result<ChatRequest, ApiError> {
    let max_tokens = match request.max_tokens {
        Some(max) => Some(max),
        None if counting => None,
        None => return Err(invalid("max_tokens: field required")),
    };
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = request.system {
        messages.push(chat_message(
            chat::Role::System,
            text_content(system.into_blocks())?,
        ));
    }
    for (turn, message) in request.messages.into_iter().enumerate() {
        match message.role {
            Role::User => user_turn(&mut messages, message.content.into_blocks(), turn)?,
            Role::Assistant => messages.push(assistant_turn(message.content.into_blocks(), turn)?),
        }
    }
    let stream = request.stream.unwrap_or(false);
    let parallel = request.tool_choice.as_ref().and_then(|choice| match choice {
        ToolChoice::Auto {
            disable_parallel_tool_use,
        }
        | ToolChoice::Any {
            disable_parallel_tool_use,
        }
        | ToolChoice::Tool {
            disable_parallel_tool_use,
            ..
        } => disable_parallel_tool_use.map(|disable| !disable),
        ToolChoice::None => None,
    });
    let mut extra = Map::new();
    if let Some(top_k) = request.top_k {
        extra.insert("top_k".to_owned(), top_k.into());
    }
    Ok(ChatRequest {
        model: request.model,
        messages,
        stream: stream.then_some(true),
        // Messages streams always end with the usage; ask every upstream for it.
        stream_options: stream.then(|| StreamOptions {
            include_usage: true,
            extra: Map::new(),
        }),
        tools: request
            .tools
            .map(|tools| tools.into_iter().map(function_tool).collect())
            .transpose()?,
        tool_choice: request.tool_choice.map(|choice| match choice {
            ToolChoice::Auto { .. } => Value::from("auto"),
            ToolChoice::Any { .. } => Value::from("required"),
            ToolChoice::None => Value::from("none"),
            ToolChoice::Tool { name, .. } => {
                serde_json::json!({"type": "function", "function": {"name": name}})
            }
        }),
        parallel_tool_calls: parallel,
        temperature: request.temperature,
        top_p: request.top_p,
        max_tokens,
        stop: request.stop_sequences.map(chat::Stop::Many),
        user: request.metadata.and_then(|m| m.user_id),
        extra,
        ..ChatRequest::default()
    })
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidBody(message.into())
}

fn chat_message(role: chat::Role, content: Option<Content>) -> chat::Message {
    chat::Message {
        role,
        content,
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: Map::new(),
    }
}

/// Text blocks as chat content: one string for one block (what a chat app
/// would send, so both share cache entries), parts otherwise.
fn text_content(blocks: Vec<Block>) -> Result<Option<Content>, ApiError> {
    let mut parts = Vec::with_capacity(blocks.len());
    for block in blocks {
        match block {
            Block::Text { text, .. } => parts.push(text_part(text)),
            Block::Thinking { .. } | Block::RedactedThinking { .. } => {}
            _ => {
                return Err(invalid(
                    "system and tool_result content may hold text blocks only",
                ));
            }
        }
    }
    Ok(simplify(parts))
}

fn simplify(mut parts: Vec<ContentPart>) -> Option<Content> {
    match parts.len() {
        0 => None,
        1 if parts[0].kind == "text" => parts.pop().and_then(|p| p.text).map(Content::Text),
        _ => Some(Content::Parts(parts)),
    }
}

fn text_part(text: String) -> ContentPart {
    ContentPart {
        kind: "text".to_owned(),
        text: Some(text),
        image_url: None,
        extra: Map::new(),
    }
}

fn image_part(source: ImageSource) -> ContentPart {
    let url = match source {
        ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        ImageSource::Url { url } => url,
    };
    ContentPart {
        kind: "image_url".to_owned(),
        text: None,
        image_url: Some(ImageUrl { url, detail: None }),
        extra: Map::new(),
    }
}

fn user_turn(messages: &mut Vec<chat::Message>, blocks: Vec<Block>, turn: usize) -> Result<(), ApiError> {
    let mut parts = Vec::new();
    for block in blocks {
        match block {
            Block::Text { text, .. } => parts.push(text_part(text)),
            Block::Image { source, .. } => parts.push(image_part(source)),
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
                ..
            } => {
                let mut text = content
                    .map(|c| text_content(c.into_blocks()))
                    .transpose()?
                    .flatten();
                // Chat has no error flag on tool results; the model still learns of it.
                if is_error == Some(true) {
                    let said = text.as_ref().map(tool_text).unwrap_or_default();
                    text = Some(Content::Text(format!("Error: {said}")));
                }
                let mut message = chat_message(chat::Role::Tool, text.or(Some(Content::Text(String::new()))));
                message.tool_call_id = Some(tool_use_id);
                messages.push(message);
            }
            Block::ToolUse { .. } => {
                return Err(invalid(format!(
                    "messages.{turn}: tool_use blocks belong in assistant turns"
                )));
            }
            Block::Thinking { .. } | Block::RedactedThinking { .. } => {}
        }
    }
    if !parts.is_empty() {
        messages.push(chat_message(chat::Role::User, simplify(parts)));
    }
    Ok(())
}

fn tool_text(content: &Content) -> String {
    match content {
        Content::Text(text) => text.clone(),
        Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
    }
}

fn assistant_turn(blocks: Vec<Block>, turn: usize) -> Result<chat::Message, ApiError> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block {
            Block::Text { text: piece, .. } => text.push_str(&piece),
            Block::ToolUse { id, name, input, .. } => calls.push(ToolCall {
                id,
                kind: "function".to_owned(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            Block::Thinking { .. } | Block::RedactedThinking { .. } => {}
            Block::Image { .. } | Block::ToolResult { .. } => {
                return Err(invalid(format!(
                    "messages.{turn}: an assistant turn holds text, tool_use and thinking blocks only"
                )));
            }
        }
    }
    let mut message = chat_message(
        chat::Role::Assistant,
        (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
    );
    message.tool_calls = (!calls.is_empty()).then_some(calls);
    Ok(message)
}

fn function_tool(tool: Tool) -> Result<chat::Tool, ApiError> {
    if let Some(kind) = tool.kind.as_deref().filter(|k| *k != "custom") {
        return Err(invalid(format!(
            "tool {}: Anthropic server tools ({kind}) run on Anthropic's side; llmesh routes to any provider and takes the app's own tools only",
            tool.name
        )));
    }
    Ok(chat::Tool {
        kind: "function".to_owned(),
        function: FunctionDefinition {
            name: tool.name,
            description: tool.description,
            parameters: Some(tool.input_schema),
            strict: None,
        },
    })
}

/// Anthropic's stop reason for a chat finish reason.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A tool call's JSON arguments as Anthropic's `input` object.
pub fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        // A model that produced broken arguments: pass the text on rather than fail the answer.
        _ if arguments.trim().is_empty() => Value::Object(Map::new()),
        _ => serde_json::json!({"arguments": arguments}),
    }
}

/// A complete chat answer in the Messages shape.
///
/// # Errors
/// The body is not a chat completion (an upstream bug).
pub fn from_chat(body: &[u8]) -> Result<MessagesResponse, serde_json::Error> {
    let response: ChatResponse = serde_json::from_slice(body)?;
    let choice = response.choices.into_iter().next();
    let mut content = Vec::new();
    let mut finish = None;
    if let Some(choice) = choice {
        finish = choice.finish_reason;
        match (choice.message.thinking_blocks, choice.message.reasoning_content) {
            (Some(blocks), _) => content.extend(blocks.into_iter().map(Block::from)),
            // An upstream that reasons without Anthropic's blocks: unsigned,
            // so the app sees it but cannot send it back to Anthropic.
            (None, Some(thinking)) if !thinking.is_empty() => content.push(Block::Thinking {
                thinking,
                signature: String::new(),
            }),
            (None, _) => {}
        }
        if let Some(text) = choice
            .message
            .content
            .or(choice.message.refusal)
            .filter(|t| !t.is_empty())
        {
            content.push(Block::text(text));
        }
        for call in choice.message.tool_calls.into_iter().flatten() {
            content.push(Block::ToolUse {
                input: tool_input(&call.function.arguments),
                id: call.id,
                name: call.function.name,
                cache_control: None,
            });
        }
    }
    Ok(MessagesResponse {
        id: response.id,
        kind: "message".to_owned(),
        role: Role::Assistant,
        model: response.model,
        content,
        stop_reason: Some(stop_reason(finish.as_deref()).to_owned()),
        stop_sequence: None,
        usage: WireUsage::of(&response.usage.unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(body: Value) -> ChatRequest {
        let parsed: MessagesRequest = serde_json::from_value(body).expect("messages request");
        to_chat(parsed, false).expect("translates")
    }

    #[test]
    fn system_blocks_tools_and_results_become_chat_messages() {
        let chat = request(json!({
            "model": "r", "max_tokens": 100, "system": "Be brief.",
            "stop_sequences": ["END"], "metadata": {"user_id": "u1"}, "top_k": 5,
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Lisbon"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "21C"}]},
                    {"type": "text", "text": "And tomorrow?", "cache_control": {"type": "ephemeral"}}
                ]}
            ]
        }));
        let json = serde_json::to_value(&chat).expect("json");
        assert_eq!(
            json["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}
                ]},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Lisbon\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "21C"},
                {"role": "user", "content": "And tomorrow?"}
            ])
        );
        assert_eq!(
            json["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        assert_eq!(json["parallel_tool_calls"], false);
        assert_eq!(
            json["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(
            (json["max_tokens"].clone(), json["user"].clone()),
            (json!(100), json!("u1"))
        );
        assert_eq!(
            (json["stop"].clone(), json["top_k"].clone()),
            (json!(["END"]), json!(5))
        );
    }

    #[test]
    fn tool_choice_modes_map_to_chat() {
        for (choice, expected) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "any"}), json!("required")),
            (json!({"type": "none"}), json!("none")),
        ] {
            let chat = request(json!({"model": "r", "max_tokens": 1, "tool_choice": choice,
                "messages": [{"role": "user", "content": "hi"}]}));
            assert_eq!(chat.tool_choice, Some(expected));
            assert_eq!(chat.parallel_tool_calls, None);
        }
    }

    #[test]
    fn a_stream_asks_for_usage_and_an_error_result_says_so() {
        let chat = request(
            json!({"model": "r", "max_tokens": 1, "stream": true, "messages": [
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": true, "content": "boom"}]}
            ]}),
        );
        assert!(chat.is_stream() && chat.wants_stream_usage());
        assert_eq!(chat.messages[0].text(), "Error: boom");
    }

    #[test]
    fn what_cannot_be_translated_is_refused_by_name() {
        let cases = [
            (
                json!({"model": "r", "messages": [{"role": "user", "content": "hi"}]}),
                "max_tokens",
            ),
            (
                json!({"model": "r", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
                    "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "server tools",
            ),
            (
                json!({"model": "r", "max_tokens": 1, "messages": [{"role": "user", "content": [
                    {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
                "assistant turns",
            ),
        ];
        for (body, needle) in cases {
            let parsed: MessagesRequest = serde_json::from_value(body).expect("parses");
            let error = to_chat(parsed, false).expect_err(needle).to_string();
            assert!(error.contains(needle), "{error}");
        }
    }

    #[test]
    fn every_finish_reason_and_usage_field_maps_to_anthropic() {
        for (finish, stop) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("content_filter", "refusal"),
        ] {
            let body = json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": "hi",
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 7, "total_tokens": 107,
                    "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10}}});
            let message = from_chat(body.to_string().as_bytes()).expect("answer");
            assert_eq!(message.stop_reason.as_deref(), Some(stop));
            let json = serde_json::to_value(&message).expect("json");
            assert_eq!(json["type"], "message");
            assert_eq!(json["role"], "assistant");
            assert_eq!(
                json["content"],
                json!([{"type": "text", "text": "hi"}, {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}])
            );
            assert_eq!(
                json["usage"],
                json!({"input_tokens": 30, "output_tokens": 7, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 60})
            );
        }
    }

    #[test]
    fn thinking_blocks_come_first_with_their_signatures() {
        let answer = |message: Value| {
            let body = json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": message}]});
            let message = from_chat(body.to_string().as_bytes()).expect("answer");
            serde_json::to_value(&message).expect("json")["content"].clone()
        };
        let blocks = answer(json!({"role": "assistant", "content": "Checking.",
            "reasoning_content": "Need weather.",
            "thinking_blocks": [{"type": "thinking", "thinking": "Need weather.", "signature": "sig1"},
                {"type": "redacted_thinking", "data": "enc"}],
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}));
        assert_eq!(
            blocks,
            json!([
                {"type": "thinking", "thinking": "Need weather.", "signature": "sig1"},
                {"type": "redacted_thinking", "data": "enc"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
            ])
        );
        let bare = answer(json!({"role": "assistant", "content": "Hi", "reasoning_content": "Greet."}));
        assert_eq!(
            bare,
            json!([{"type": "thinking", "thinking": "Greet.", "signature": ""}, {"type": "text", "text": "Hi"}]),
            "reasoning without blocks is shown, unsigned"
        );
    }
}
