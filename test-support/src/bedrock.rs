//! A mock of Amazon Bedrock Runtime in its real wire format: Converse JSON,
//! ConverseStream as binary event-stream frames (exceptions as exception
//! frames), Titan and Cohere embeddings through InvokeModel, and AWS error
//! bodies with `x-amzn-errortype`. Every request's SigV4 signature is
//! recomputed from the test credentials below and compared; a wrong one gets
//! AWS's 403. Converse bodies are checked as Bedrock checks them (roles
//! alternate, no empty content or blank text, no `toolUse`/`toolResult`
//! without a `toolConfig`) and refused with Bedrock's 400 messages. A tool
//! whose schema declares no properties is called with no input.
//!
//! Script mapping: `Status(n)` answers Bedrock's error of that status;
//! `RateLimit` a `ThrottlingException` (Bedrock sends no `Retry-After`, so
//! the seconds are unused); `ContextWindowExceeded` the `ValidationException`
//! "Input is too long for requested model."; `ContentFilter` a normal answer
//! stopped by a guardrail, as Bedrock reports it. A last user message
//! containing [`exception_marker`] makes a stream fail mid-way with that
//! exception.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Value, json};

use crate::mock_server::{Behavior, MockServer, State, broken_body, last_user_text, pace, pieces};

/// The region the mock serves; requests signed for another are refused.
pub const REGION: &str = "eu-central-1";
/// A long-term access key id the mock knows (AWS's documentation example).
pub const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// Its secret access key.
pub const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// A temporary access key id, valid only with [`SESSION_TOKEN`].
pub const TEMPORARY_ACCESS_KEY_ID: &str = "ASIAQEXAMPLETEMPORARY";
/// Its secret access key.
pub const TEMPORARY_SECRET_ACCESS_KEY: &str = "tEmPoRaRySeCrEtKeY/ExAmPlE+0123456789abcd";
/// The session token that goes with the temporary key.
pub const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLEsessionTOKEN//////////wEaDEXAMPLE";

/// How far a request's `x-amz-date` may be from the mock's clock, as AWS allows.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Vector size of Titan Text Embeddings V2 when the request names none.
const DEFAULT_DIMENSIONS: usize = 1024;

/// What a text answer says: `Hello from bedrock: <last user message>`.
pub fn reply_text(request: &Value) -> String {
    format!("Hello from bedrock: {}", last_user_text(request))
}

/// Text that, in the last user message, makes a stream fail with `exception`
/// (such as `throttlingException`) after its first words.
pub fn exception_marker(exception: &str) -> String {
    format!("[mock-exception:{exception}]")
}

/// Starts the mock on a loopback port.
pub async fn start() -> MockServer {
    let state = Arc::new(State::default());
    MockServer::start(state.clone(), router_at(state, "")).await
}

/// The mock's routes under `prefix` (`""`, or `/bedrock` in `mock-upstream`).
/// Routes carry the prefix themselves rather than being nested, because the
/// signature covers the whole path the client sent.
pub fn router_at(state: Arc<State>, prefix: &str) -> Router {
    Router::new()
        .route(&format!("{prefix}/model/{{model}}/converse"), post(converse))
        .route(
            &format!("{prefix}/model/{{model}}/converse-stream"),
            post(converse_stream),
        )
        .route(&format!("{prefix}/model/{{model}}/invoke"), post(invoke))
        .with_state(state)
}

/// Bedrock's error answer: `{"message"}` and the type in `x-amzn-errortype`.
pub fn error(status: u16, error_type: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let error_type = format!("{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/");
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("x-amzn-errortype", error_type),
        ("x-amzn-requestid", request_id()),
    ];
    (status, headers, json!({ "message": message }).to_string()).into_response()
}

/// A request id, unique enough for a mock: the clock in nanoseconds.
/// An AWS error answer before it is encoded: small enough to return in a `Result`.
#[derive(Debug)]
pub struct AwsError {
    status: u16,
    error_type: &'static str,
    message: String,
}

impl AwsError {
    fn new(status: u16, error_type: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type,
            message: message.into(),
        }
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        error(self.status, self.error_type, &self.message)
    }
}

fn request_id() -> String {
    format!(
        "{:032x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// The error a status stands for in Bedrock's API.
fn status_error(status: u16) -> Response {
    let (error_type, message) = match status {
        400 => (
            "ValidationException",
            "Malformed input request, please reformat your input and try again.",
        ),
        403 => (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        404 => (
            "ResourceNotFoundException",
            "The requested resource could not be found.",
        ),
        408 => (
            "ModelTimeoutException",
            "Model has timed out in processing the request.",
        ),
        424 => ("ModelErrorException", "The model returned an error."),
        429 => (
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        503 => (
            "ServiceUnavailableException",
            "Bedrock is unable to process your request.",
        ),
        _ => (
            "InternalServerException",
            "The server encountered an internal error.",
        ),
    };
    error(status, error_type, message)
}

fn failure(behavior: &Behavior) -> Option<Response> {
    match behavior {
        Behavior::Status(status) => Some(status_error(*status)),
        Behavior::RateLimit(_) => Some(status_error(429)),
        Behavior::ContextWindowExceeded => Some(error(
            400,
            "ValidationException",
            "Input is too long for requested model.",
        )),
        Behavior::Reset => Some(Response::new(broken_body(Vec::new()))),
        _ => None,
    }
}

/// Records a signed call and plays the script; `Err` is the answer to send instead.
async fn admit(state: &State, uri: &Uri, headers: HeaderMap, body: &Bytes) -> Result<Behavior, Response> {
    verify_signature(uri, &headers, body).map_err(IntoResponse::into_response)?;
    let behavior = pace(state.record(uri.to_string(), headers, body.clone())).await;
    match failure(&behavior) {
        Some(response) => Err(response),
        None => Ok(behavior),
    }
}

/// The model's answer to a Converse request, decided before it is encoded.
struct Answer {
    text: String,
    tool: Option<(String, Value)>,
    stop_reason: &'static str,
    usage: Value,
}

/// Checks what Bedrock itself would refuse, then decides the answer.
fn answer(request: &Value, behavior: &Behavior) -> Result<Answer, AwsError> {
    validate(request).map_err(|message| AwsError::new(400, "ValidationException", message))?;
    let prompt = last_user_text(request);
    let system_words: usize = request["system"]
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .map(|t| t.split_whitespace().count())
                .sum()
        })
        .unwrap_or(0);
    let tools = request["toolConfig"]["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let choice = &request["toolConfig"]["toolChoice"];
    let answering_tool_result = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| blocks.iter().any(|b| b.get("toolResult").is_some()));
    let must_call = choice.get("any").is_some() || choice.get("tool").is_some();
    let tool = (!tools.is_empty() && (must_call || !answering_tool_result)).then(|| {
        let spec = match choice["tool"]["name"].as_str() {
            Some(name) => tools.iter().find(|t| t["toolSpec"]["name"] == name),
            None => tools.first(),
        }
        .map(|t| &t["toolSpec"]);
        let name = spec.and_then(|s| s["name"].as_str()).unwrap_or("tool").to_owned();
        // A model calls a tool that declares no parameters with no input.
        let takes_arguments = spec
            .and_then(|s| s.pointer("/inputSchema/json/properties"))
            .and_then(Value::as_object)
            .is_some_and(|properties| !properties.is_empty());
        let input = if takes_arguments {
            json!({ "echo": prompt })
        } else {
            json!({})
        };
        (name, input)
    });
    let (mut text, mut stop_reason) = match behavior {
        Behavior::ContentFilter => (
            "Sorry, the model cannot answer this question.".to_owned(),
            "guardrail_intervened",
        ),
        _ if tool.is_some() => (String::new(), "tool_use"),
        _ => (reply_text(request), "end_turn"),
    };
    let limit = request["inferenceConfig"]["maxTokens"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok());
    if let Some(limit) = limit.filter(|_| tool.is_none()) {
        let words: Vec<&str> = text.split(' ').collect();
        if words.len() > limit {
            text = words[..limit].join(" ");
            stop_reason = "max_tokens";
        }
    }
    let tool = tool.filter(|_| stop_reason == "tool_use");
    let input_tokens = prompt.split_whitespace().count().max(1);
    let output_tokens =
        text.split_whitespace().count() + tool.as_ref().map_or(0, |(_, input)| input.to_string().len() / 4);
    // A system prompt counts as read from the prompt cache, so cache
    // accounting can be tested; nothing is ever written to it.
    let usage = json!({
        "inputTokens": input_tokens, "outputTokens": output_tokens,
        "totalTokens": input_tokens + system_words + output_tokens,
        "cacheReadInputTokens": system_words, "cacheWriteInputTokens": 0
    });
    Ok(Answer {
        text,
        tool,
        stop_reason,
        usage,
    })
}

/// Bedrock's own checks on a Converse body that a translation bug would trip.
fn validate(request: &Value) -> Result<(), String> {
    let messages = request["messages"].as_array().ok_or("messages is required")?;
    if messages.first().is_some_and(|m| m["role"] != "user") {
        return Err("A conversation must start with a user message. Try again with a conversation that starts with a user message.".into());
    }
    let mut uses_tools = false;
    for pair in messages.windows(2) {
        if pair[0]["role"] == pair[1]["role"] {
            return Err("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.".into());
        }
    }
    let blank = |block: &Value| block["text"].as_str().is_some_and(|t| t.trim().is_empty());
    let blank_error = |kind: &str, path: String| {
        format!(
            "The text field in the {kind} object at {path} is blank. Add text to the text field, and try again."
        )
    };
    for (i, block) in request["system"].as_array().into_iter().flatten().enumerate() {
        if blank(block) {
            return Err(blank_error("SystemContentBlock", format!("system.{i}")));
        }
    }
    for (i, message) in messages.iter().enumerate() {
        let blocks = message["content"].as_array().ok_or("content is required")?;
        if blocks.is_empty() {
            return Err(format!(
                "The content field in the Message object at messages.{i} is empty. Add a ContentBlock object to the content field and try again."
            ));
        }
        for (j, block) in blocks.iter().enumerate() {
            if blank(block) {
                return Err(blank_error("ContentBlock", format!("messages.{i}.content.{j}")));
            }
            let results = block.pointer("/toolResult/content").and_then(Value::as_array);
            for (k, result) in results.into_iter().flatten().enumerate() {
                if blank(result) {
                    return Err(blank_error(
                        "ToolResultContentBlock",
                        format!("messages.{i}.content.{j}.toolResult.content.{k}"),
                    ));
                }
            }
            uses_tools |= block.get("toolUse").is_some() || block.get("toolResult").is_some();
            if let Some(bytes) = block.pointer("/image/source/bytes") {
                let decoded = bytes
                    .as_str()
                    .map(|b| base64::engine::general_purpose::STANDARD.decode(b));
                if !matches!(decoded, Some(Ok(_))) {
                    return Err("Invalid image bytes: expected base64.".into());
                }
            }
        }
    }
    if uses_tools && request.get("toolConfig").is_none() {
        return Err(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.".into(),
        );
    }
    Ok(())
}

async fn converse(
    AxumState(state): AxumState<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behavior = match admit(&state, &uri, headers, &body).await {
        Ok(behavior) => behavior,
        Err(response) => return response,
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "SerializationException",
            "Could not parse the request body as JSON.",
        );
    };
    let answer = match answer(&request, &behavior) {
        Ok(answer) => answer,
        Err(error) => return error.into_response(),
    };
    let mut content = Vec::new();
    if !answer.text.is_empty() {
        content.push(json!({ "text": answer.text }));
    }
    if let Some((name, input)) = &answer.tool {
        content.push(json!({ "toolUse": { "toolUseId": "tooluse_mock_1", "name": name, "input": input } }));
    }
    let body = json!({
        "output": { "message": { "role": "assistant", "content": content } },
        "stopReason": answer.stop_reason,
        "usage": answer.usage,
        "metrics": { "latencyMs": 42 }
    });
    (
        [
            ("content-type", "application/json".to_owned()),
            ("x-amzn-requestid", request_id()),
        ],
        body.to_string(),
    )
        .into_response()
}

/// One event-stream message, encoded.
fn frame(headers: &[(&str, &str)], payload: &Value) -> Bytes {
    let headers = headers
        .iter()
        .map(|(name, value)| Header::new(name.to_string(), HeaderValue::String(value.to_string().into())))
        .collect();
    let message = Message::new_from_parts(headers, payload.to_string().into_bytes());
    let mut bytes = Vec::new();
    // Encoding only fails for headers or payloads beyond the format's limits.
    let _ = write_message_to(&message, &mut bytes);
    Bytes::from(bytes)
}

/// A ConverseStream event. Bedrock pads events with a `p` field so their
/// size does not reveal the tokens; clients must ignore it.
fn event(kind: &str, mut payload: Value) -> Bytes {
    payload["p"] = json!("abcdefghijklmnopqrstu");
    frame(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        &payload,
    )
}

/// A ConverseStream exception frame.
pub fn exception(exception_type: &str, message: &str) -> Bytes {
    frame(
        &[
            (":exception-type", exception_type),
            (":content-type", "application/json"),
            (":message-type", "exception"),
        ],
        &json!({ "message": message }),
    )
}

async fn converse_stream(
    AxumState(state): AxumState<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let behavior = match admit(&state, &uri, headers, &body).await {
        Ok(behavior) => behavior,
        Err(response) => return response,
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "SerializationException",
            "Could not parse the request body as JSON.",
        );
    };
    let answer = match answer(&request, &behavior) {
        Ok(answer) => answer,
        Err(error) => return error.into_response(),
    };
    let mut frames = vec![event("messageStart", json!({ "role": "assistant" }))];
    let mut block = 0;
    if !answer.text.is_empty() {
        for piece in pieces(&answer.text) {
            frames.push(event(
                "contentBlockDelta",
                json!({ "contentBlockIndex": block, "delta": { "text": piece } }),
            ));
        }
        frames.push(event("contentBlockStop", json!({ "contentBlockIndex": block })));
        block += 1;
    }
    if let Some((name, input)) = &answer.tool {
        let start = json!({ "toolUse": { "toolUseId": "tooluse_mock_1", "name": name } });
        frames.push(event(
            "contentBlockStart",
            json!({ "contentBlockIndex": block, "start": start }),
        ));
        // A call with no input gets one empty input delta, as Claude's do.
        let input = match input.as_object() {
            Some(fields) if fields.is_empty() => String::new(),
            _ => input.to_string(),
        };
        let (head, tail) = input.split_at(input.len() / 2);
        let fragments = if input.is_empty() {
            vec![""]
        } else {
            vec![head, tail]
        };
        for fragment in fragments {
            let delta = json!({ "toolUse": { "input": fragment } });
            frames.push(event(
                "contentBlockDelta",
                json!({ "contentBlockIndex": block, "delta": delta }),
            ));
        }
        frames.push(event("contentBlockStop", json!({ "contentBlockIndex": block })));
    }
    let prompt = last_user_text(&request);
    if let Some(kind) = prompt
        .split("[mock-exception:")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
    {
        frames.truncate(3);
        frames.push(exception(kind, &exception_message(kind)));
        return event_stream(Body::from_stream(futures::stream::iter(
            frames.into_iter().map(Ok::<Bytes, std::io::Error>),
        )));
    }
    if let Behavior::CutStream(after) = behavior {
        frames.truncate(after + 1);
        return event_stream(broken_body(frames));
    }
    frames.push(event("messageStop", json!({ "stopReason": answer.stop_reason })));
    frames.push(event(
        "metadata",
        json!({ "usage": answer.usage, "metrics": { "latencyMs": 42 } }),
    ));
    event_stream(Body::from_stream(futures::stream::iter(
        frames.into_iter().map(Ok::<Bytes, std::io::Error>),
    )))
}

fn exception_message(kind: &str) -> String {
    match kind {
        "throttlingException" => "Too many tokens, please wait before trying again.".to_owned(),
        "validationException" => "Input is too long for requested model.".to_owned(),
        "modelStreamErrorException" => "The model stream failed.".to_owned(),
        other => format!("The service failed with {other}."),
    }
}

fn event_stream(body: Body) -> Response {
    (
        [
            ("content-type", "application/vnd.amazon.eventstream".to_owned()),
            ("x-amzn-requestid", request_id()),
        ],
        body,
    )
        .into_response()
}

async fn invoke(
    AxumState(state): AxumState<Arc<State>>,
    Path(model): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(response) = admit(&state, &uri, headers, &body).await {
        return response;
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    if model.contains("cohere.embed") {
        return cohere_embed(&model, &request).unwrap_or_else(IntoResponse::into_response);
    }
    if !model.starts_with("amazon.titan-embed") {
        return error(
            400,
            "ValidationException",
            "The provided model identifier is invalid.",
        );
    }
    let Some(text) = request["inputText"].as_str() else {
        return error(
            400,
            "ValidationException",
            "Malformed input request: #: required key [inputText] not found, please reformat your input and try again.",
        );
    };
    let dimensions = request["dimensions"]
        .as_u64()
        .and_then(|d| usize::try_from(d).ok())
        .unwrap_or(DEFAULT_DIMENSIONS);
    let vector = vector(text, dimensions);
    let body = json!({
        "embedding": vector,
        "embeddingsByType": { "float": vector },
        "inputTextTokenCount": text.split_whitespace().count()
    });
    (
        [
            ("content-type", "application/json".to_owned()),
            ("x-amzn-requestid", request_id()),
        ],
        body.to_string(),
    )
        .into_response()
}

/// A vector that depends on the text, so equal texts embed equally.
fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    #[allow(clippy::cast_precision_loss)]
    (0..dimensions)
        .map(|d| ((text.len() + d) % 11) as f32 / 11.0)
        .collect()
}

/// Cohere Embed through InvokeModel: `texts` (at most 96) and a required
/// `input_type`; `output_dimension` on v4 only. Floats come as a bare list,
/// or under `float` when `embedding_types` asks by type. The body has no
/// token count; the `X-Amzn-Bedrock-Input-Token-Count` header does.
fn cohere_embed(model: &str, request: &Value) -> Result<Response, AwsError> {
    let malformed = |what: &str| {
        AwsError::new(
            400,
            "ValidationException",
            format!("Malformed input request: {what}, please reformat your input and try again."),
        )
    };
    if request.get("inputText").is_some() {
        return Err(malformed(
            "#: required key [texts] not found#: extraneous key [inputText] is not permitted",
        ));
    }
    let texts: Vec<&str> = request["texts"]
        .as_array()
        .ok_or_else(|| malformed("#: required key [texts] not found"))?
        .iter()
        .map(|t| {
            t.as_str()
                .ok_or_else(|| malformed("#/texts: expected type: String"))
        })
        .collect::<Result<_, _>>()?;
    if texts.len() > 96 {
        return Err(malformed(&format!(
            "#/texts: expected maximum item count: 96, found: {}",
            texts.len()
        )));
    }
    let input_types = ["search_document", "search_query", "classification", "clustering"];
    match request["input_type"].as_str() {
        None => return Err(malformed("#: required key [input_type] not found")),
        Some(kind) if !input_types.contains(&kind) => {
            return Err(malformed(&format!(
                "#/input_type: {kind} is not a valid enum value"
            )));
        }
        Some(_) => {}
    }
    let v4 = model.contains("embed-v4");
    let dimensions = match request.get("output_dimension") {
        None => {
            if v4 {
                1536
            } else {
                1024
            }
        }
        Some(_) if !v4 => return Err(malformed("#: extraneous key [output_dimension] is not permitted")),
        Some(d) => match d.as_u64() {
            Some(d @ (256 | 512 | 1024 | 1536)) => usize::try_from(d).unwrap_or(1536),
            _ => {
                return Err(malformed(
                    "#/output_dimension: must be one of 256, 512, 1024, 1536",
                ));
            }
        },
    };
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| vector(t, dimensions)).collect();
    let by_type = request.get("embedding_types").is_some();
    let body = json!({
        "id": request_id(),
        "texts": texts,
        "embeddings": if by_type { json!({ "float": vectors }) } else { json!(vectors) },
        "response_type": if by_type { "embeddings_by_type" } else { "embeddings_floats" }
    });
    let tokens: usize = texts.iter().map(|t| t.split_whitespace().count()).sum();
    Ok((
        [
            ("content-type", "application/json".to_owned()),
            ("x-amzn-requestid", request_id()),
            ("x-amzn-bedrock-input-token-count", tokens.to_string()),
        ],
        body.to_string(),
    )
        .into_response())
}

/// Parsed `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
struct Authorization<'a> {
    access_key_id: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let fields = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for field in fields.split(',') {
        match field.trim().split_once('=')? {
            ("Credential", v) => credential = Some(v),
            ("SignedHeaders", v) => signed_headers = Some(v),
            ("Signature", v) => signature = Some(v),
            _ => {}
        }
    }
    let scope: Vec<&str> = credential?.split('/').collect();
    let [access_key_id, _date, region, service, "aws4_request"] = scope[..] else {
        return None;
    };
    Some(Authorization {
        access_key_id,
        region,
        service,
        signed_headers: signed_headers?.split(';').collect(),
        signature: signature?,
    })
}

/// `YYYYMMDD'T'HHMMSS'Z'` → time.
fn parse_amz_date(value: &str) -> Option<SystemTime> {
    let digits = |range: std::ops::Range<usize>| value.get(range)?.parse::<i64>().ok();
    if value.len() != 16 || value.as_bytes()[8] != b'T' || !value.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let seconds = digits(9..11)? * 3600 + digits(11..13)? * 60 + digits(13..15)?;
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let total = u64::try_from(days * 86_400 + seconds).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(total))
}

/// Recomputes the request's signature with the secret the mock holds for its
/// access key, the way Bedrock checks it; `Err` is AWS's 403.
fn verify_signature(uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Result<(), AwsError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(authorization) = header("authorization") else {
        return Err(AwsError::new(
            403,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let invalid_signature = |message: &str| AwsError::new(403, "InvalidSignatureException", message);
    let Some(auth) = parse_authorization(authorization) else {
        return Err(AwsError::new(
            403,
            "IncompleteSignatureException",
            "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters.",
        ));
    };
    let invalid_token = || {
        AwsError::new(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    };
    let session_token = header("x-amz-security-token");
    let (secret, expected_token) = match auth.access_key_id {
        ACCESS_KEY_ID => (SECRET_ACCESS_KEY, None),
        TEMPORARY_ACCESS_KEY_ID => (TEMPORARY_SECRET_ACCESS_KEY, Some(SESSION_TOKEN)),
        _ => return Err(invalid_token()),
    };
    if session_token != expected_token {
        return Err(invalid_token());
    }
    if auth.region != REGION {
        return Err(invalid_signature(&format!(
            "Credential should be scoped to a valid region, not '{}'.",
            auth.region
        )));
    }
    if auth.service != "bedrock" {
        return Err(invalid_signature(
            "Credential should be scoped to correct service: 'bedrock'.",
        ));
    }
    for required in ["host", "x-amz-date"]
        .into_iter()
        .chain(session_token.map(|_| "x-amz-security-token"))
    {
        if !auth.signed_headers.contains(&required) {
            return Err(invalid_signature(&format!(
                "'{required}' must be a signed header."
            )));
        }
    }
    let Some(time) = header("x-amz-date").and_then(parse_amz_date) else {
        return Err(invalid_signature(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    let skew = SystemTime::now()
        .duration_since(time)
        .unwrap_or_else(|e| e.duration());
    if skew > MAX_CLOCK_SKEW {
        return Err(invalid_signature(
            "Signature expired: the request time is too far from the server's time.",
        ));
    }
    let mut signed = Vec::new();
    for name in &auth.signed_headers {
        match header(name) {
            Some(value) => signed.push((*name, value)),
            None => {
                return Err(invalid_signature(&format!(
                    "The signed header {name} is missing."
                )));
            }
        }
    }
    let host = header("host").unwrap_or_default();
    let identity: Identity = aws_credential_types::Credentials::new(
        auth.access_key_id,
        secret,
        expected_token.map(str::to_owned),
        None,
        "mock",
    )
    .into();
    let mismatch = || {
        invalid_signature(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        )
    };
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|_| mismatch())?
        .into();
    let request = SignableRequest::new(
        "POST",
        format!("http://{host}{uri}"),
        signed.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|_| mismatch())?;
    let (_, expected) = sign(request, &params).map_err(|_| mismatch())?.into_parts();
    if expected == auth.signature {
        Ok(())
    } else {
        Err(mismatch())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules llmesh's Bedrock fixes are proven against: Bedrock's own
    /// refusals, with its messages.
    #[test]
    fn converse_bodies_are_refused_as_bedrock_refuses_them() {
        let tool_round = |result: Value| {
            json!([
                {"role": "user", "content": [{"text": "hi"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t", "name": "weather", "input": {}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t", "content": [result]}}]}
            ])
        };
        let tool_config = json!({"tools": [{"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}}]});
        let cases = [
            (
                json!({"messages": tool_round(json!({"text": "sunny"}))}),
                "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"text": "hi"}, {"text": " "}]}]}),
                "The text field in the ContentBlock object at messages.0.content.1 is blank. Add text to the text field, and try again.",
            ),
            (
                json!({"messages": tool_round(json!({"text": ""})), "toolConfig": tool_config}),
                "The text field in the ToolResultContentBlock object at messages.2.content.0.toolResult.content.0 is blank. Add text to the text field, and try again.",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"text": "hi"}]}], "system": [{"text": ""}]}),
                "The text field in the SystemContentBlock object at system.0 is blank. Add text to the text field, and try again.",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(validate(&body), Err(message.to_owned()), "{body}");
        }
        let accepted = json!({"messages": tool_round(json!({"text": "sunny"})), "toolConfig": tool_config});
        assert_eq!(validate(&accepted), Ok(()));
    }

    #[test]
    fn amz_dates_parse_to_unix_time() {
        let time = parse_amz_date("20240229T235959Z").expect("valid");
        assert_eq!(
            time.duration_since(UNIX_EPOCH).expect("after epoch").as_secs(),
            1_709_251_199
        );
        assert_eq!(parse_amz_date("2024-02-29T23:59:59Z"), None);
    }
}
