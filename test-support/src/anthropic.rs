//! A mock of Anthropic's Messages API in Anthropic's real wire format: a
//! `message` body, the full SSE event sequence (`message_start`, `ping`,
//! content blocks with `text_delta` and `input_json_delta` split across
//! deltas, `message_delta`, `message_stop`), usage with prompt-cache fields,
//! and Anthropic error bodies, including 529 `overloaded_error`.
//!
//! It also rejects what the real API rejects (no `x-api-key`, fields it does
//! not know, roles that do not alternate, empty text, a `tool_result` with no
//! matching `tool_use`), so a test sees a mistranslated request fail.
//!
//! Scripted behaviors: `status` answers that status with Anthropic's error
//! type for it, except 529 on a stream, which (as Anthropic does under load)
//! answers 200 and sends an `error` event after `message_start`;
//! `context-window-exceeded` is Anthropic's "prompt is too long" 400;
//! `content-filter` is an answer with `stop_reason: refusal`, since Anthropic
//! has no content-filter error.
//!
//! With `thinking: {type: enabled}`, answers begin with a signed thinking
//! block (streamed as `thinking_delta`s and a `signature_delta`), and a
//! redacted one when the prompt holds Anthropic's documented trigger; thinking
//! blocks sent back must carry the signature the mock gave them.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::mock_server::{Behavior, MockServer, State, broken_body, last_user_text, pace, pieces, sse};
use crate::openai::sse_response;

/// Prompt tokens every answer reports as read from Anthropic's prompt cache.
pub const CACHE_READ_TOKENS: u64 = 5;
/// Prompt tokens every answer reports as written to the prompt cache.
pub const CACHE_WRITE_TOKENS: u64 = 7;
/// The id of the tool call the mock makes.
pub const TOOL_USE_ID: &str = "toolu_mock_01";
/// What the model says when it refuses (behavior `content-filter`).
pub const REFUSAL_TEXT: &str = "I can't help with that.";

/// The top-level fields the Messages API accepts; any other is a 400.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
];

/// The prompt Anthropic documents for testing redacted thinking.
pub const REDACTED_THINKING_TRIGGER: &str =
    "ANTHROPIC_MAGIC_STRING_TRIGGER_REDACTED_THINKING_46C9A13E193C177646C7398A98432ECCCE4C1253";
/// The encrypted reasoning of the mock's redacted thinking block.
pub const REDACTED_THINKING_DATA: &str = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP";

/// What the model thinks with extended thinking enabled.
pub fn thinking_text(request: &Value) -> String {
    format!("The user wrote \"{}\". A greeting fits.", last_user_text(request))
}

/// The signature the mock gives a thinking block, and requires back with it.
pub fn thinking_signature(thinking: &str) -> String {
    STANDARD.encode(format!("mock-signature:{thinking}"))
}

/// What the mock answers: `Hello from anthropic: <last user message>`.
pub fn reply_text(request: &Value) -> String {
    format!("Hello from anthropic: {}", last_user_text(request))
}

/// The input of the tool call the mock makes: the last user message, echoed.
pub fn tool_input(request: &Value) -> Value {
    json!({"echo": last_user_text(request)})
}

/// Starts the mock on a loopback port.
pub async fn start() -> MockServer {
    let state = Arc::new(State::default());
    MockServer::start(state.clone(), router(state)).await
}

/// The mock's routes: `/v1/messages` and `/v1/messages/count_tokens`, as Anthropic serves them.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .with_state(state)
}

/// Anthropic's error body, with a `request-id` header as Anthropic sends.
pub fn error(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body =
        json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock_01"});
    (
        status,
        [
            ("content-type", "application/json"),
            ("request-id", "req_mock_01"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Anthropic's error type for an HTTP status.
fn error_kind(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn failure(behavior: &Behavior, stream: bool) -> Option<Response> {
    match behavior {
        Behavior::Status(529) if stream => None,
        Behavior::Status(529) => Some(error(529, "overloaded_error", "Overloaded")),
        Behavior::Status(status) => Some(error(*status, error_kind(*status), "Internal server error")),
        Behavior::RateLimit(seconds) => {
            let mut response = error(
                429,
                "rate_limit_error",
                "This request would exceed the rate limit for your organization of 50 requests per minute.",
            );
            if let Ok(value) = seconds.to_string().parse() {
                response.headers_mut().insert("retry-after", value);
            }
            Some(response)
        }
        Behavior::ContextWindowExceeded => Some(error(
            400,
            "invalid_request_error",
            "prompt is too long: 210183 tokens > 200000 maximum",
        )),
        Behavior::Reset => Some(Response::new(broken_body(Vec::new()))),
        _ => None,
    }
}

async fn messages(
    AxumState(state): AxumState<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behavior = pace(state.record(uri.to_string(), headers.clone(), body.clone())).await;
    let request = match validate(&headers, &body) {
        Ok(request) => request,
        Err(Rejection(status, kind, message)) => return error(status, kind, &message),
    };
    let stream = request["stream"].as_bool() == Some(true);
    if let Some(response) = failure(&behavior, stream) {
        return response;
    }
    let answer = Answer::new(&request, behavior == Behavior::ContentFilter);
    if !stream {
        return (
            [
                ("content-type", "application/json"),
                ("request-id", "req_mock_01"),
            ],
            answer.body().to_string(),
        )
            .into_response();
    }
    let (mut frames, content_at) = answer.events();
    match behavior {
        Behavior::CutStream(after) => {
            // Exactly `after` content deltas get out before the cut.
            let cut = content_at.get(after).copied().unwrap_or(frames.len());
            frames.truncate(cut);
            return sse_response(broken_body(frames));
        }
        Behavior::Status(529) => {
            // Overloaded mid-stream: after `message_start` and `ping`, an error event ends it.
            frames.truncate(2);
            let overloaded =
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
            frames.push(sse(Some("error"), &overloaded.to_string()));
        }
        _ => {}
    }
    sse_response(Body::from_stream(futures::stream::iter(
        frames.into_iter().map(Ok::<Bytes, std::io::Error>),
    )))
}

/// `count_tokens`: the input tokens a Messages call with this body would
/// report, and Anthropic's refusal of the fields the endpoint does not take.
async fn count_tokens(
    AxumState(state): AxumState<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.record(uri.to_string(), headers.clone(), body.clone());
    let mut request: Value = serde_json::from_slice(&body).unwrap_or_default();
    for refused in [
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
    ] {
        if request.get(refused).is_some() {
            let message = format!("{refused}: Extra inputs are not permitted");
            return error(400, "invalid_request_error", &message);
        }
    }
    // The Messages endpoint's own checks, with the output limit it requires.
    request["max_tokens"] = json!(1);
    let request = match validate(&headers, request.to_string().as_bytes()) {
        Ok(request) => request,
        Err(Rejection(status, kind, message)) => return error(status, kind, &message),
    };
    let answer = Answer::new(&request, false);
    let body = json!({"input_tokens": answer.input_tokens});
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// What the mock says to one request.
struct Answer {
    model: String,
    blocks: Vec<Value>,
    stop_reason: &'static str,
    input_tokens: u64,
    output_tokens: u64,
}

impl Answer {
    /// The answer, after the thinking blocks when thinking is enabled.
    fn new(request: &Value, refuse: bool) -> Self {
        let mut answer = Self::said(request, refuse);
        if thinking_enabled(request) && !refuse {
            let thinking = thinking_text(request);
            answer.output_tokens += words(&Value::from(thinking.as_str()));
            let mut blocks = vec![
                json!({"type": "thinking", "signature": thinking_signature(&thinking), "thinking": thinking}),
            ];
            if last_user_text(request).contains(REDACTED_THINKING_TRIGGER) {
                blocks.push(json!({"type": "redacted_thinking", "data": REDACTED_THINKING_DATA}));
            }
            answer.blocks.splice(0..0, blocks);
        }
        answer
    }

    fn said(request: &Value, refuse: bool) -> Self {
        let model = request["model"].as_str().unwrap_or("claude-mock").to_owned();
        let input_tokens = words(&request["system"]) + words(&request["messages"]).max(1);
        if refuse {
            let blocks = vec![json!({"type": "text", "text": REFUSAL_TEXT})];
            return Self {
                model,
                blocks,
                stop_reason: "refusal",
                input_tokens,
                output_tokens: 6,
            };
        }
        if let Some(name) = tool_to_call(request) {
            let input = tool_input(request);
            let output_tokens = input.to_string().split_whitespace().count() as u64 + 3;
            // A forced choice leaves no room for a preamble: Anthropic prefills the tool call.
            let forced = matches!(request["tool_choice"]["type"].as_str(), Some("tool" | "any"));
            let mut blocks: Vec<Value> = if forced {
                Vec::new()
            } else {
                vec![json!({"type": "text", "text": format!("Calling {name}.")})]
            };
            blocks.push(json!({"type": "tool_use", "id": TOOL_USE_ID, "name": name, "input": input}));
            return Self {
                model,
                blocks,
                stop_reason: "tool_use",
                input_tokens,
                output_tokens,
            };
        }
        let mut reply = pieces(&reply_text(request));
        let mut stop_reason = "end_turn";
        let limit = request["max_tokens"]
            .as_u64()
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(usize::MAX);
        if reply.len() > limit {
            reply.truncate(limit);
            stop_reason = "max_tokens";
        }
        let output_tokens = reply.len() as u64;
        Self {
            model,
            blocks: vec![json!({"type": "text", "text": reply.concat()})],
            stop_reason,
            input_tokens,
            output_tokens,
        }
    }

    fn usage(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": CACHE_WRITE_TOKENS,
            "cache_read_input_tokens": CACHE_READ_TOKENS,
            "output_tokens": output_tokens,
            "service_tier": "standard"
        })
    }

    fn body(&self) -> Value {
        json!({
            "id": "msg_mock_01", "type": "message", "role": "assistant", "model": self.model,
            "content": self.blocks, "stop_reason": self.stop_reason, "stop_sequence": null,
            "usage": self.usage(self.output_tokens)
        })
    }

    /// The SSE frames, and the position of each content delta (for `cut-stream`).
    fn events(&self) -> (Vec<Bytes>, Vec<usize>) {
        let event = |name: &str, data: Value| sse(Some(name), &data.to_string());
        let mut frames = vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": "msg_mock_01", "type": "message", "role": "assistant", "model": self.model, "content": [],
                    "stop_reason": null, "stop_sequence": null, "usage": self.usage(1)
                }}),
            ),
            sse(Some("ping"), r#"{"type": "ping"}"#),
        ];
        let mut content_at = Vec::new();
        for (index, block) in self.blocks.iter().enumerate() {
            let (start, deltas): (Value, Vec<Value>) = if block["type"] == "thinking" {
                let text = block["thinking"].as_str().unwrap_or_default();
                let deltas = pieces(text)
                    .into_iter()
                    .map(|p| json!({"type": "thinking_delta", "thinking": p}))
                    .chain([json!({"type": "signature_delta", "signature": block["signature"]})])
                    .collect();
                (
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    deltas,
                )
            } else if block["type"] == "redacted_thinking" {
                // Redacted thinking arrives whole in its start event.
                (block.clone(), Vec::new())
            } else if block["type"] == "tool_use" {
                let arguments = block["input"].to_string();
                // Anthropic's first fragment is often empty; the rest split the JSON anywhere.
                let parts = std::iter::once("").chain(thirds(&arguments));
                let deltas = parts
                    .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                    .collect();
                let start =
                    json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}});
                (start, deltas)
            } else {
                let text = block["text"].as_str().unwrap_or_default();
                let deltas = pieces(text)
                    .into_iter()
                    .map(|p| json!({"type": "text_delta", "text": p}))
                    .collect();
                (json!({"type": "text", "text": ""}), deltas)
            };
            frames.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            for delta in deltas {
                content_at.push(frames.len());
                frames.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            frames.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        frames.push(event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
            "usage": {"output_tokens": self.output_tokens}}),
        ));
        frames.push(event("message_stop", json!({"type": "message_stop"})));
        (frames, content_at)
    }
}

/// The tool the model calls, if it calls one: the named tool of a `tool`
/// choice, else the first, unless the choice is `none` or the last turn
/// already carries tool results.
fn tool_to_call(request: &Value) -> Option<String> {
    let tools = request["tools"].as_array().filter(|t| !t.is_empty())?;
    let choice = &request["tool_choice"];
    if choice["type"] == "none" {
        return None;
    }
    let last = request["messages"].as_array()?.last()?;
    let answered = last["content"]
        .as_array()
        .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"));
    if last["role"] != "user" || answered {
        return None;
    }
    let name = if choice["type"] == "tool" {
        &choice["name"]
    } else {
        &tools[0]["name"]
    };
    name.as_str().map(str::to_owned)
}

fn thinking_enabled(request: &Value) -> bool {
    request["thinking"]["type"] == "enabled"
}

/// Why a thinking block sent back would fail Anthropic's checks, if it would.
fn thinking_block_problem(block: &Value) -> Option<&'static str> {
    match block["type"].as_str() {
        Some("thinking") => {
            let thinking = block["thinking"].as_str().unwrap_or_default();
            (block["signature"].as_str() != Some(thinking_signature(thinking).as_str()))
                .then_some("Invalid `signature` in `thinking` block")
        }
        Some("redacted_thinking") => {
            (block["data"] != REDACTED_THINKING_DATA).then_some("Invalid `data` in `redacted_thinking` block")
        }
        _ => None,
    }
}

/// `text` in three pieces, split on character boundaries.
fn thirds(text: &str) -> [&str; 3] {
    let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
    let at = |n: usize| boundaries[(boundaries.len() - 1) * n / 3];
    [&text[..at(1)], &text[at(1)..at(2)], &text[at(2)..]]
}

/// Words of all text in a value: the mock's token count.
fn words(value: &Value) -> u64 {
    match value {
        Value::String(text) => text.split_whitespace().count() as u64,
        Value::Array(items) => items.iter().map(words).sum(),
        Value::Object(fields) => fields
            .iter()
            .filter(|(k, _)| *k == "text" || *k == "content")
            .map(|(_, v)| words(v))
            .sum(),
        _ => 0,
    }
}

/// Why the real API would refuse a request: status, error type, message.
struct Rejection(u16, &'static str, String);

/// Rejects what the real Messages API rejects, with its messages.
fn validate(headers: &HeaderMap, body: &[u8]) -> Result<Value, Rejection> {
    let invalid = |message: String| Rejection(400, "invalid_request_error", message);
    if !headers.contains_key("x-api-key") {
        return Err(Rejection(
            401,
            "authentication_error",
            "x-api-key header is required".to_owned(),
        ));
    }
    if !headers.contains_key("anthropic-version") {
        return Err(invalid("anthropic-version: header is required".to_owned()));
    }
    let request: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("invalid JSON body: {e}")))?;
    let fields = request
        .as_object()
        .ok_or_else(|| invalid("the body must be a JSON object".to_owned()))?;
    if let Some(unknown) = fields.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        return Err(invalid(format!("{unknown}: Extra inputs are not permitted")));
    }
    for required in ["model", "max_tokens", "messages"] {
        if !fields.contains_key(required) {
            return Err(invalid(format!("{required}: Field required")));
        }
    }
    if fields.contains_key("tool_choice") && request["tools"].as_array().is_none_or(Vec::is_empty) {
        return Err(invalid(
            "tool_choice may only be specified while providing tools".to_owned(),
        ));
    }
    let thinking = thinking_enabled(&request);
    if thinking {
        let budget = request["thinking"]["budget_tokens"].as_u64().unwrap_or(0);
        if budget < 1024 {
            return Err(invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024".to_owned(),
            ));
        }
        if request["max_tokens"].as_u64().is_some_and(|max| max <= budget) {
            return Err(invalid(
                "`max_tokens` must be greater than `thinking.budget_tokens`".to_owned(),
            ));
        }
    }
    let messages = request["messages"].as_array().filter(|m| !m.is_empty());
    let messages =
        messages.ok_or_else(|| invalid("messages: at least one message is required".to_owned()))?;
    let mut previous: Option<&Value> = None;
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(invalid(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            )));
        }
        if previous.is_some_and(|p| p["role"] == role) {
            return Err(invalid(format!(
                "messages: roles must alternate between \"user\" and \"assistant\", but found multiple \"{role}\" roles in a row"
            )));
        }
        let blocks = message["content"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![json!({"type": "text", "text": message["content"]})]);
        if blocks.is_empty() {
            return Err(invalid(format!(
                "messages.{i}: all messages must have non-empty content"
            )));
        }
        let calls_tools = blocks.iter().any(|b| b["type"] == "tool_use");
        let starts_thinking = matches!(blocks[0]["type"].as_str(), Some("thinking" | "redacted_thinking"));
        if thinking && role == "assistant" && calls_tools && !starts_thinking {
            return Err(invalid(format!(
                "messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{}`. When `thinking` is enabled, a final `assistant` message must start with a thinking block.",
                blocks[0]["type"].as_str().unwrap_or_default()
            )));
        }
        for (j, block) in blocks.iter().enumerate() {
            if let Some(problem) = thinking_block_problem(block).filter(|_| thinking) {
                return Err(invalid(format!("messages.{i}.content.{j}: {problem}")));
            }
            if block["type"] == "text" && block["text"].as_str().is_none_or(str::is_empty) {
                return Err(invalid(format!(
                    "messages.{i}: text content blocks must be non-empty"
                )));
            }
            if block["type"] == "tool_result" {
                let id = &block["tool_use_id"];
                let used = previous
                    .and_then(|p| p["content"].as_array())
                    .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_use" && &b["id"] == id));
                if !used {
                    return Err(invalid(format!(
                        "messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                    )));
                }
            }
        }
        previous = Some(message);
    }
    Ok(request)
}
