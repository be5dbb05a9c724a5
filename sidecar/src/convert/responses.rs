//! OpenAI Responses (from apps) ↔ the internal chat request and answer.
//!
//! The sidecar is stateless: a request that relies on a stored response is
//! refused, and every answer says `store: false`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::api::chat::{
    self, ChatRequest, ChatResponse, Content, ContentPart, FunctionCall, FunctionDefinition, ImageUrl,
    JsonSchemaFormat, ResponseFormat, StreamOptions, THINKING_BLOCKS, ThinkingBlock, ToolCall,
};
use crate::api::responses::{
    IncompleteDetails, Input, Item, ItemContent, OutputItem, OutputText, Part, Reasoning, ReasoningEcho,
    Response, ResponsesRequest, SummaryText, TextConfig, Usage,
};
use crate::error::ApiError;
use crate::providers::unix_now;

/// What the answer echoes of the request (the Responses object repeats it).
#[derive(Clone, Debug, Default)]
pub struct Echo {
    instructions: Option<String>,
    tools: Vec<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    text: Option<TextConfig>,
    metadata: Map<String, Value>,
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    reasoning: Option<Reasoning>,
    user: Option<String>,
}

/// The internal request for a Responses request, and what its answer echoes.
///
/// # Errors
/// [`ApiError::Stateless`] for `store: true` or `previous_response_id`;
/// [`ApiError::InvalidBody`] for items and tools llmesh cannot translate.
pub fn to_chat(request: ResponsesRequest) -> Result<(ChatRequest, Echo), ApiError> {
    if request.previous_response_id.is_some() {
        return Err(ApiError::Stateless("`previous_response_id`"));
    }
    if request.store == Some(true) {
        return Err(ApiError::Stateless("`store: true`"));
    }
    let mut messages = Vec::new();
    if let Some(instructions) = &request.instructions {
        messages.push(message(
            chat::Role::System,
            Some(Content::Text(instructions.clone())),
        ));
    }
    match request.input {
        Input::Text(text) => messages.push(message(chat::Role::User, Some(Content::Text(text)))),
        Input::Items(items) => {
            for (index, item) in items.into_iter().enumerate() {
                let item = Item::parse(item).map_err(|e| invalid(format!("input[{index}]: {e}")))?;
                push_item(&mut messages, item, index)?;
            }
        }
    }
    let tools = request
        .tools
        .clone()
        .map(|tools| {
            tools
                .into_iter()
                .map(function_tool)
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let tool_choice = request.tool_choice.clone().map(|choice| match choice {
        Value::Object(named) if named.get("type").is_some_and(|t| t == "function") => {
            json!({"type": "function", "function": {"name": named.get("name").cloned().unwrap_or_default()}})
        }
        other => other,
    });
    let response_format = request
        .text
        .as_ref()
        .and_then(|t| t.format.as_ref())
        .map(|format| ResponseFormat {
            kind: format.kind.clone(),
            json_schema: (format.kind == "json_schema").then(|| JsonSchemaFormat {
                name: format.name.clone().unwrap_or_else(|| "response".to_owned()),
                description: format.description.clone(),
                schema: format.schema.clone(),
                strict: format.strict,
            }),
        })
        .filter(|format| format.kind != "text");
    let mut extra = Map::new();
    if let Some(effort) = request.reasoning.as_ref().and_then(|r| r.effort.clone()) {
        extra.insert("reasoning_effort".to_owned(), effort.into());
    }
    // Where a chat app puts it too: routing rules match it, OpenAI-style upstreams take it.
    if let Some(metadata) = request.metadata.clone().filter(|m| !m.is_empty()) {
        extra.insert("metadata".to_owned(), Value::Object(metadata));
    }
    let stream = request.stream.unwrap_or(false);
    let echo = Echo {
        instructions: request.instructions,
        tools: request.tools.unwrap_or_default(),
        tool_choice: request.tool_choice,
        parallel_tool_calls: request.parallel_tool_calls,
        text: request.text,
        metadata: request.metadata.unwrap_or_default(),
        max_output_tokens: request.max_output_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        reasoning: request.reasoning,
        user: request.user.clone(),
    };
    let chat = ChatRequest {
        model: request.model,
        messages,
        stream: stream.then_some(true),
        // Responses streams end with the usage; ask every upstream for it.
        stream_options: stream.then(|| StreamOptions {
            include_usage: true,
            extra: Map::new(),
        }),
        tools,
        tool_choice,
        parallel_tool_calls: request.parallel_tool_calls,
        response_format,
        temperature: request.temperature,
        top_p: request.top_p,
        max_completion_tokens: request.max_output_tokens,
        user: request.user,
        extra,
        ..ChatRequest::default()
    };
    Ok((chat, echo))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidBody(message.into())
}

fn message(role: chat::Role, content: Option<Content>) -> chat::Message {
    chat::Message {
        role,
        content,
        name: None,
        tool_calls: None,
        tool_call_id: None,
        extra: Map::new(),
    }
}

fn push_item(messages: &mut Vec<chat::Message>, item: Item, index: usize) -> Result<(), ApiError> {
    match item {
        Item::Message { role, content } => {
            let role = match role.as_str() {
                "user" => chat::Role::User,
                "assistant" => chat::Role::Assistant,
                "system" => chat::Role::System,
                "developer" => chat::Role::Developer,
                other => return Err(invalid(format!("input[{index}].role: unknown role {other:?}"))),
            };
            let content = content_of(content, index)?;
            match messages.last_mut() {
                // The text of the turn a reasoning item opened.
                Some(last) if role == chat::Role::Assistant && is_reasoning_only(last) => {
                    last.content = Some(content);
                }
                _ => messages.push(message(role, Some(content))),
            }
        }
        Item::FunctionCall {
            call_id,
            name,
            arguments,
        } => {
            let call = ToolCall {
                id: call_id,
                kind: "function".to_owned(),
                function: FunctionCall { name, arguments },
            };
            // Calls made in one turn follow each other; chat keeps them in one message.
            match messages.last_mut() {
                Some(last) if last.role == chat::Role::Assistant => {
                    last.tool_calls.get_or_insert_with(Vec::new).push(call);
                }
                _ => {
                    let mut turn = message(chat::Role::Assistant, None);
                    turn.tool_calls = Some(vec![call]);
                    messages.push(turn);
                }
            }
        }
        Item::FunctionCallOutput { call_id, output } => {
            let text = match output {
                Value::String(text) => text,
                other => other.to_string(),
            };
            let mut result = message(chat::Role::Tool, Some(Content::Text(text)));
            result.tool_call_id = Some(call_id);
            messages.push(result);
        }
        Item::Reasoning { encrypted_content } => {
            // Reasoning sealed by OpenAI (or none) stays on OpenAI's side.
            if let Some(blocks) = encrypted_content.as_deref().and_then(unseal_thinking) {
                // It opens the assistant turn its message and calls continue.
                let mut turn = message(chat::Role::Assistant, None);
                turn.extra.insert(THINKING_BLOCKS.to_owned(), json!(blocks));
                messages.push(turn);
            }
        }
    }
    Ok(())
}

fn is_reasoning_only(message: &chat::Message) -> bool {
    message.role == chat::Role::Assistant
        && message.content.is_none()
        && message.tool_calls.is_none()
        && message.extra.contains_key(THINKING_BLOCKS)
}

/// Signed thinking blocks as a reasoning item's `encrypted_content`: opaque
/// to the app, and tamper-evident through Anthropic's own signatures.
pub fn seal_thinking(blocks: &[ThinkingBlock]) -> String {
    STANDARD.encode(serde_json::to_vec(blocks).unwrap_or_default())
}

fn unseal_thinking(sealed: &str) -> Option<Vec<ThinkingBlock>> {
    serde_json::from_slice(&STANDARD.decode(sealed).ok()?).ok()
}

/// A reasoning item: the text as its summary, the signed blocks sealed.
pub fn reasoning_item(id: String, text: String, blocks: &[ThinkingBlock]) -> OutputItem {
    OutputItem::Reasoning {
        id,
        summary: if text.is_empty() {
            Vec::new()
        } else {
            vec![SummaryText::new(text)]
        },
        encrypted_content: (!blocks.is_empty()).then(|| seal_thinking(blocks)),
    }
}

fn content_of(content: ItemContent, index: usize) -> Result<Content, ApiError> {
    let parts = match content {
        ItemContent::Text(text) => return Ok(Content::Text(text)),
        ItemContent::Parts(parts) => parts,
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let (kind, text, image_url) = match part {
            Part::InputText { text } | Part::OutputText { text } => ("text", Some(text), None),
            Part::Refusal { refusal } => ("text", Some(refusal), None),
            Part::InputImage { image_url, detail } => {
                let url = image_url.ok_or_else(|| {
                    invalid(format!(
                        "input[{index}]: input_image needs image_url; file ids need stored files, which this gateway does not keep"
                    ))
                })?;
                ("image_url", None, Some(ImageUrl { url, detail }))
            }
        };
        out.push(ContentPart {
            kind: kind.to_owned(),
            text,
            image_url,
            extra: Map::new(),
        });
    }
    // One text part is what a chat app sends as a string; both share cache entries.
    Ok(match out.as_slice() {
        [only] if only.kind == "text" => Content::Text(only.text.clone().unwrap_or_default()),
        _ => Content::Parts(out),
    })
}

fn function_tool(tool: Value) -> Result<chat::Tool, ApiError> {
    #[derive(serde::Deserialize)]
    struct FunctionTool {
        name: String,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        parameters: Option<Value>,
        #[serde(default)]
        strict: Option<bool>,
    }
    let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind != "function" {
        return Err(invalid(format!(
            "tools: {kind} tools run on OpenAI's side; llmesh routes to any provider and takes function tools only"
        )));
    }
    let tool: FunctionTool = serde_json::from_value(tool).map_err(|e| invalid(format!("tools: {e}")))?;
    Ok(chat::Tool {
        kind: "function".to_owned(),
        function: FunctionDefinition {
            name: tool.name,
            description: tool.description,
            parameters: tool.parameters,
            strict: tool.strict,
        },
    })
}

impl Echo {
    /// A response object with this request's echoed fields.
    pub fn response(&self, id: String, model: String, status: &'static str) -> Response {
        Response {
            id,
            object: "response",
            created_at: unix_now(),
            status,
            model,
            output: Vec::new(),
            incomplete_details: None,
            error: None,
            usage: None,
            store: false,
            previous_response_id: None,
            instructions: self.instructions.clone(),
            tools: self.tools.clone(),
            tool_choice: self.tool_choice.clone().unwrap_or_else(|| Value::from("auto")),
            parallel_tool_calls: self.parallel_tool_calls.unwrap_or(true),
            text: self.text.clone().unwrap_or_else(|| TextConfig {
                format: Some(crate::api::responses::TextFormat {
                    kind: "text".to_owned(),
                    name: None,
                    description: None,
                    schema: None,
                    strict: None,
                }),
            }),
            metadata: self.metadata.clone(),
            max_output_tokens: self.max_output_tokens,
            // OpenAI's defaults, which the target applied when the request left them out.
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            reasoning: ReasoningEcho {
                effort: self.reasoning.as_ref().and_then(|r| r.effort.clone()),
                summary: self.reasoning.as_ref().and_then(|r| r.summary.clone()),
            },
            truncation: "disabled",
            user: self.user.clone(),
        }
    }
}

/// The response id for a chat answer id (`resp_` as OpenAI's SDKs expect).
pub fn response_id(chat_id: &str) -> String {
    format!("resp_{}", chat_id.trim_start_matches("chatcmpl-"))
}

/// The status and details a chat finish reason means.
pub fn ending(finish_reason: Option<&str>) -> (&'static str, Option<IncompleteDetails>) {
    match finish_reason {
        Some("length") => (
            "incomplete",
            Some(IncompleteDetails {
                reason: "max_output_tokens",
            }),
        ),
        Some("content_filter") => (
            "incomplete",
            Some(IncompleteDetails {
                reason: "content_filter",
            }),
        ),
        _ => ("completed", None),
    }
}

/// A complete chat answer as a response object.
///
/// # Errors
/// The body is not a chat completion (an upstream bug).
pub fn from_chat(body: &[u8], echo: &Echo) -> Result<Response, serde_json::Error> {
    let answer: ChatResponse = serde_json::from_slice(body)?;
    let id = response_id(&answer.id);
    let mut output = Vec::new();
    let mut finish = None;
    if let Some(choice) = answer.choices.into_iter().next() {
        finish = choice.finish_reason;
        let reasoning = choice.message.reasoning_content.unwrap_or_default();
        let blocks = choice.message.thinking_blocks.unwrap_or_default();
        if !reasoning.is_empty() || !blocks.is_empty() {
            let reasoning_id = format!("rs_{}", id.trim_start_matches("resp_"));
            output.push(reasoning_item(reasoning_id, reasoning, &blocks));
        }
        if let Some(text) = choice.message.content.or(choice.message.refusal) {
            output.push(OutputItem::Message {
                id: format!("msg_{}", id.trim_start_matches("resp_")),
                status: "completed",
                role: "assistant",
                content: vec![OutputText::new(text)],
            });
        }
        for call in choice.message.tool_calls.into_iter().flatten() {
            output.push(OutputItem::FunctionCall {
                id: format!("fc_{}", call.id),
                call_id: call.id,
                name: call.function.name,
                arguments: call.function.arguments,
                status: "completed",
            });
        }
    }
    let (status, incomplete) = ending(finish.as_deref());
    let mut response = echo.response(id, answer.model, status);
    response.output = output;
    response.incomplete_details = incomplete;
    response.usage = Some(Usage::of(&answer.usage.unwrap_or_default()));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn translate(body: Value) -> Result<ChatRequest, ApiError> {
        let request: ResponsesRequest = serde_json::from_value(body).expect("parses");
        to_chat(request).map(|(chat, _)| chat)
    }

    #[test]
    fn items_instructions_and_tools_become_chat_messages() {
        let chat = translate(json!({
            "model": "r", "instructions": "Be brief.", "max_output_tokens": 50,
            "reasoning": {"effort": "low"},
            "text": {"format": {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "In Lisbon"},
                    {"type": "input_image", "image_url": "https://x/a.png", "detail": "low"}
                ]},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "21C"},
                {"type": "reasoning", "id": "rs_1", "summary": []}
            ]
        }))
        .expect("translates");
        let json = serde_json::to_value(&chat).expect("json");
        assert_eq!(
            json["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            json["messages"][1],
            json!({"role": "user", "content": "Weather?"})
        );
        assert_eq!(
            json["messages"][2]["content"][1],
            json!({"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}})
        );
        assert_eq!(
            json["messages"][3]["tool_calls"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(
            json["messages"][4],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "21C"})
        );
        assert_eq!(json["messages"].as_array().map(Vec::len), Some(5));
        assert_eq!(
            json["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        assert_eq!(json["response_format"]["json_schema"]["name"], "city");
        assert_eq!(json["max_completion_tokens"], 50);
        assert_eq!(json["reasoning_effort"], "low");
    }

    #[test]
    fn a_reasoning_item_carries_signed_thinking_back_on_its_assistant_turn() {
        let blocks = vec![
            ThinkingBlock::Thinking {
                thinking: "Need weather.".into(),
                signature: Some("sig1".into()),
            },
            ThinkingBlock::RedactedThinking { data: "enc".into() },
        ];
        let OutputItem::Reasoning {
            encrypted_content, ..
        } = reasoning_item("rs_1".into(), "Need weather.".into(), &blocks)
        else {
            panic!("a reasoning item");
        };
        let chat = translate(json!({"model": "r", "input": [
            {"role": "user", "content": "Weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": encrypted_content},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "21C"}
        ]}))
        .expect("translates");
        assert_eq!(chat.messages.len(), 3, "{:?}", chat.messages);
        let turn = &chat.messages[1];
        assert_eq!(turn.thinking_blocks().expect("blocks"), blocks);
        assert_eq!(turn.text(), "Checking.");
        assert_eq!(turn.tool_calls.as_ref().map(Vec::len), Some(1));

        let chat = translate(json!({"model": "r", "input": [
            {"role": "user", "content": "Weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB-openai-sealed"}
        ]}))
        .expect("OpenAI's own reasoning is left out");
        assert_eq!(chat.messages.len(), 1);
    }

    #[test]
    fn stored_state_is_refused_with_what_to_send_instead() {
        for body in [
            json!({"model": "r", "input": "hi", "store": true}),
            json!({"model": "r", "input": "hi", "previous_response_id": "resp_1"}),
        ] {
            let error = translate(body).expect_err("stateless");
            assert_eq!(error.status(), 400);
            assert!(
                error.to_string().contains("whole conversation in `input`"),
                "{error}"
            );
        }
        assert!(translate(json!({"model": "r", "input": "hi", "store": false})).is_ok());
    }

    #[test]
    fn hosted_tools_and_unknown_items_are_refused_by_name() {
        let error = translate(json!({"model": "r", "input": "hi", "tools": [{"type": "web_search"}]}))
            .expect_err("hosted tool")
            .to_string();
        assert!(error.contains("web_search"), "{error}");
        let error = translate(json!({"model": "r", "input": [{"type": "computer_call"}]}))
            .expect_err("unknown item")
            .to_string();
        assert!(error.contains("input[0]"), "{error}");
    }

    #[test]
    fn finish_reasons_and_usage_map_to_the_response_object() {
        for (finish, status, reason) in [
            ("stop", "completed", None),
            ("tool_calls", "completed", None),
            ("length", "incomplete", Some("max_output_tokens")),
            ("content_filter", "incomplete", Some("content_filter")),
        ] {
            let body = json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": "hi",
                    "reasoning_content": "Hm.", "thinking_blocks": [{"type": "thinking", "thinking": "Hm.", "signature": "s"}],
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                    "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 2}}});
            let response = from_chat(body.to_string().as_bytes(), &Echo::default()).expect("answer");
            assert_eq!(response.output.len(), 3);
            let json = serde_json::to_value(&response).expect("json");
            assert_eq!(json["id"], "resp_9");
            assert_eq!(json["status"], status);
            assert_eq!(json["incomplete_details"]["reason"].as_str(), reason);
            assert_eq!(json["output"][0]["type"], "reasoning");
            assert_eq!(
                json["output"][0]["summary"],
                json!([{"type": "summary_text", "text": "Hm."}])
            );
            assert_eq!(
                json["output"][1]["content"][0],
                json!({"type": "output_text", "text": "hi", "annotations": []})
            );
            assert_eq!(json["output"][2]["type"], "function_call");
            assert_eq!(json["output"][2]["call_id"], "call_1");
            assert_eq!(
                json["usage"],
                json!({"input_tokens": 10, "input_tokens_details": {"cached_tokens": 3}, "output_tokens": 4,
                    "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 14})
            );
        }
    }
}
