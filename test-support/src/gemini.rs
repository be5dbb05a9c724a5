//! A mock of Google's Gemini API in its real wire format: `generateContent`,
//! `streamGenerateContent` (SSE with `alt=sse`, a JSON array without),
//! `functionCall` parts, `usageMetadata`, blocked prompts (`promptFeedback`),
//! safety stops, `batchEmbedContents`, and Google's error bodies.
//!
//! Routes are `/v1beta/models/{model}:{method}`; axum captures
//! `{model}:{method}` as one path segment, split here on the last `:`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::mock_server::{Behavior, MockServer, State, broken_body, last_user_text, pace, pieces};

/// A user message containing this makes the model stop for safety halfway
/// through its answer (`finishReason: SAFETY`).
pub const SAFETY_TRIGGER: &str = "[trigger-safety]";

/// Size of embedding vectors when the request does not set `outputDimensionality`
/// (`text-embedding-004`'s).
const DEFAULT_DIMENSIONS: usize = 768;

/// What the mock answers: `Hello from gemini: <last user text>`.
pub fn reply_text(request: &Value) -> String {
    format!("Hello from gemini: {}", last_user_text(request))
}

/// Starts the mock on a loopback port.
pub async fn start() -> MockServer {
    let state = Arc::new(State::default());
    MockServer::start(state.clone(), router(state)).await
}

/// The mock's routes, as `generativelanguage.googleapis.com` serves them.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1beta/models/{call}", post(dispatch))
        .route("/v1beta/tunedModels/{call}", post(dispatch))
        .with_state(state)
}

/// Google's error body: `{"error": {"code", "message", "status"}}`, with `details` when given.
pub fn error(code: u16, message: &str, details: Option<Value>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut error = json!({"code": code, "message": message, "status": google_status(code)});
    if let Some(details) = details {
        error["details"] = details;
    }
    (
        status,
        [("content-type", "application/json; charset=UTF-8")],
        json!({ "error": error }).to_string(),
    )
        .into_response()
}

/// The canonical status Google pairs with an HTTP code.
fn google_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn failure(behavior: &Behavior) -> Option<Response> {
    match behavior {
        Behavior::Status(code) => Some(error(
            *code,
            "An internal error has occurred. Please retry or report.",
            None,
        )),
        // Google puts the wait in a RetryInfo detail, not in a Retry-After header.
        Behavior::RateLimit(seconds) => Some(error(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            Some(json!([
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                 "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                 "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{seconds}s")}
            ])),
        )),
        Behavior::ContextWindowExceeded => Some(error(
            400,
            "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).",
            None,
        )),
        Behavior::Reset => Some(Response::new(broken_body(Vec::new()))),
        _ => None,
    }
}

async fn dispatch(
    AxumState(state): AxumState<Arc<State>>,
    Path(call): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let has_key = headers.contains_key("x-goog-api-key") || uri.query().is_some_and(|q| q.contains("key="));
    let behavior = pace(state.record(uri.to_string(), headers, body.clone())).await;
    let Some((model, method)) = call.rsplit_once(':') else {
        return error(
            404,
            &format!("models/{call} is not found for API version v1beta."),
            None,
        );
    };
    if !has_key {
        return error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            None,
        );
    }
    if let Some(response) = failure(&behavior) {
        return response;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "Invalid JSON payload received. Unexpected token.", None);
    };
    match method {
        "generateContent" => generate(model, &request, &behavior),
        "streamGenerateContent" => stream(
            model,
            &request,
            &behavior,
            uri.query().is_some_and(|q| q.contains("alt=sse")),
        ),
        "batchEmbedContents" => embed(model, &request),
        _ => error(
            404,
            &format!("Method {method} is not found for models/{model}."),
            None,
        ),
    }
}

/// What one candidate says.
struct Reply {
    /// Text pieces (streamed one per event), or none for a function call.
    pieces: Vec<String>,
    function_call: Option<Value>,
    finish: &'static str,
}

/// What the model answers: a call to a declared function while the turn is
/// the user's, a text that reflects the function's result after one, and an
/// echo otherwise; cut for safety or at `maxOutputTokens` as asked.
fn reply(request: &Value) -> Reply {
    let contents = request["contents"].as_array().cloned().unwrap_or_default();
    let last_parts = contents
        .last()
        .and_then(|c| c["parts"].as_array().cloned())
        .unwrap_or_default();
    let answered = last_parts.iter().find_map(|p| p.get("functionResponse"));
    let calling = &request["toolConfig"]["functionCallingConfig"];
    let declared = request["tools"][0]["functionDeclarations"][0]["name"].as_str();
    let chosen = calling["allowedFunctionNames"][0].as_str().or(declared);
    if let (None, Some(name), false) = (answered, chosen, calling["mode"] == "NONE") {
        let call = json!({"name": name, "args": {"echo": last_user_text(request)}});
        return Reply {
            pieces: Vec::new(),
            function_call: Some(call),
            finish: "STOP",
        };
    }
    let text = match answered {
        Some(result) => format!(
            "Hello from gemini: {} returned {}",
            result["name"].as_str().unwrap_or_default(),
            result["response"]
        ),
        None => reply_text(request),
    };
    let json_mode = request["generationConfig"]["responseMimeType"] == "application/json";
    let text = if json_mode {
        json!({"answer": text}).to_string()
    } else {
        text
    };
    let mut pieces = pieces(&text);
    let mut finish = "STOP";
    if last_user_text(request).contains(SAFETY_TRIGGER) {
        pieces.truncate(pieces.len() / 2);
        finish = "SAFETY";
    } else if let Some(limit) = request["generationConfig"]["maxOutputTokens"].as_u64() {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if pieces.len() > limit {
            pieces.truncate(limit);
            finish = "MAX_TOKENS";
        }
    }
    Reply {
        pieces,
        function_call: None,
        finish,
    }
}

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// `usageMetadata`: tokens are words; thinking models report thoughts when
/// the request gives them a budget.
fn usage(request: &Value, replies: &[Reply], finished: bool) -> Value {
    let texts = request["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&request["systemInstruction"]));
    let prompt: usize = texts
        .flat_map(|c| c["parts"].as_array().cloned().unwrap_or_default())
        .map(|p| p["text"].as_str().map_or(1, words))
        .sum::<usize>()
        .max(1);
    let mut usage = json!({"promptTokenCount": prompt, "totalTokenCount": prompt,
                           "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]});
    if finished {
        let output: usize = replies
            .iter()
            .map(|r| r.pieces.len() + usize::from(r.function_call.is_some()) * 5)
            .sum();
        let budget = request["generationConfig"]["thinkingConfig"]["thinkingBudget"]
            .as_u64()
            .unwrap_or(0);
        let thoughts = usize::try_from(budget.min(7)).unwrap_or(0);
        usage["candidatesTokenCount"] = json!(output);
        usage["totalTokenCount"] = json!(prompt + output + thoughts);
        if thoughts > 0 {
            usage["thoughtsTokenCount"] = json!(thoughts);
        }
    }
    usage
}

fn candidates_wanted(request: &Value) -> usize {
    request["generationConfig"]["candidateCount"]
        .as_u64()
        .map_or(1, |n| usize::try_from(n.clamp(1, 8)).unwrap_or(1))
}

/// The safety ratings Gemini attaches to a candidate; blocked on a safety stop.
fn safety_ratings(blocked: bool) -> Value {
    let probability = if blocked { "HIGH" } else { "NEGLIGIBLE" };
    json!([
        {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": probability, "blocked": blocked}
    ])
}

fn blocked_prompt(model: &str, request: &Value) -> Value {
    json!({
        "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": safety_ratings(true)},
        "usageMetadata": usage(request, &[], false),
        "modelVersion": model,
        "responseId": "mock-blocked"
    })
}

fn generate(model: &str, request: &Value, behavior: &Behavior) -> Response {
    if *behavior == Behavior::ContentFilter {
        return json_response(&blocked_prompt(model, request));
    }
    let replies: Vec<Reply> = (0..candidates_wanted(request)).map(|_| reply(request)).collect();
    let candidates: Vec<Value> = replies
        .iter()
        .enumerate()
        .map(|(index, reply)| {
            let parts = match &reply.function_call {
                Some(call) => json!([{"functionCall": call, "thoughtSignature": "bW9jay1zaWduYXR1cmU="}]),
                None => json!([{"text": reply.pieces.concat()}]),
            };
            json!({"content": {"parts": parts, "role": "model"}, "finishReason": reply.finish, "index": index,
                   "safetyRatings": safety_ratings(reply.finish == "SAFETY")})
        })
        .collect();
    json_response(&json!({
        "candidates": candidates,
        "usageMetadata": usage(request, &replies, true),
        "modelVersion": model,
        "responseId": "mock-response-1"
    }))
}

fn stream(model: &str, request: &Value, behavior: &Behavior, sse: bool) -> Response {
    let event = |candidates: Value, usage: Value| json!({"candidates": candidates, "usageMetadata": usage, "modelVersion": model, "responseId": "mock-stream-1"});
    let mut events = Vec::new();
    if *behavior == Behavior::ContentFilter {
        events.push(blocked_prompt(model, request));
    } else {
        let replies: Vec<Reply> = (0..candidates_wanted(request)).map(|_| reply(request)).collect();
        let partial = usage(request, &replies, false);
        for (index, reply) in replies.iter().enumerate() {
            let candidate =
                |parts: Value| json!({"content": {"parts": parts, "role": "model"}, "index": index});
            if let Some(call) = &reply.function_call {
                events.push(event(
                    json!([candidate(json!([{"functionCall": call}]))]),
                    partial.clone(),
                ));
            }
            for piece in &reply.pieces {
                events.push(event(
                    json!([candidate(json!([{"text": piece}]))]),
                    partial.clone(),
                ));
            }
            // The last event of a candidate carries its finish reason and, like Gemini's, an empty text part.
            let mut last = candidate(json!([{"text": ""}]));
            last["finishReason"] = json!(reply.finish);
            last["safetyRatings"] = safety_ratings(reply.finish == "SAFETY");
            events.push(event(json!([last]), partial.clone()));
        }
        if let Some(last) = events.last_mut() {
            last["usageMetadata"] = usage(request, &replies, true);
        }
    }
    let frames: Vec<Bytes> = if sse {
        events
            .iter()
            .map(|e| Bytes::from(format!("data: {e}\r\n\r\n")))
            .collect()
    } else {
        // Without alt=sse Gemini streams one JSON array, element by element.
        let count = events.len();
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Bytes::from(format!(
                    "{}{e}{}",
                    if i == 0 { "[" } else { ",\r\n" },
                    if i + 1 == count { "]" } else { "" }
                ))
            })
            .collect()
    };
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/json; charset=UTF-8"
    };
    let body = match behavior {
        Behavior::CutStream(after) => cut_body(frames.into_iter().take(*after).collect()),
        _ => Body::from_stream(futures::stream::iter(
            frames.into_iter().map(Ok::<Bytes, std::io::Error>),
        )),
    };
    ([("content-type", content_type)], body).into_response()
}

/// Sends `frames`, then breaks the connection. The pause lets the frames leave
/// before the reset: the server drops what it has buffered when a body fails.
fn cut_body(frames: Vec<Bytes>) -> Body {
    let body = async_stream::stream! {
        for frame in frames {
            yield Ok(frame);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        yield Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock cut the stream"));
    };
    Body::from_stream(body)
}

fn embed(model: &str, request: &Value) -> Response {
    let resource = format!("models/{model}");
    let Some(requests) = request["requests"].as_array() else {
        return error(
            400,
            "Invalid JSON payload received. Unknown name \"input\": Cannot find field.",
            None,
        );
    };
    let mut embeddings = Vec::new();
    for (i, item) in requests.iter().enumerate() {
        if item["model"] != resource.as_str() {
            return error(
                400,
                &format!(
                    "Model name in requests[{i}] ({}) does not match the model in the URL ({resource}).",
                    item["model"]
                ),
                None,
            );
        }
        let text: String = item["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["text"].as_str())
            .collect();
        let dimensions = item["outputDimensionality"]
            .as_u64()
            .map_or(DEFAULT_DIMENSIONS, |d| usize::try_from(d).unwrap_or(0));
        #[allow(clippy::cast_precision_loss)]
        let values: Vec<f32> = (0..dimensions)
            .map(|d| ((text.len() + d) % 11) as f32 / 11.0 - 0.5)
            .collect();
        embeddings.push(json!({"values": values}));
    }
    json_response(&json!({"embeddings": embeddings}))
}

fn json_response(body: &Value) -> Response {
    (
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}
