//! A mock of OpenAI's API (also Azure OpenAI's deployment paths), in
//! OpenAI's real wire format: chat completions with SSE streaming and a
//! usage chunk, tool calls, JSON mode, embeddings, and OpenAI error bodies.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::mock_server::{
    Behavior, MockServer, State, broken_body, endless_body, last_user_text, pace, pieces, silent_body, sse,
};

/// What the mock answers: `Hello from openai: <last user message>`.
pub fn reply_text(request: &Value) -> String {
    format!("Hello from openai: {}", last_user_text(request))
}

/// Starts the mock on a loopback port.
pub async fn start() -> MockServer {
    let state = Arc::new(State::default());
    MockServer::start(state.clone(), router(state)).await
}

/// The mock's routes: `/v1/...` as OpenAI serves them and
/// `/openai/deployments/{deployment}/...` as Azure does.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/moderations", post(moderations))
        .route("/openai/deployments/{deployment}/chat/completions", post(chat))
        .route("/openai/deployments/{deployment}/embeddings", post(embeddings))
        .with_state(state)
}

/// OpenAI's error body.
pub fn error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn failure(behavior: &Behavior) -> Option<Response> {
    match behavior {
        Behavior::Status(status) => Some(error(
            *status,
            "The server had an error processing your request.",
            "server_error",
            None,
        )),
        Behavior::RateLimit(seconds) => {
            let mut response = error(
                429,
                "Rate limit reached for requests",
                "requests",
                Some("rate_limit_exceeded"),
            );
            if let Ok(value) = seconds.to_string().parse() {
                response.headers_mut().insert("retry-after", value);
            }
            Some(response)
        }
        Behavior::ContextWindowExceeded => Some(error(
            400,
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 200000 tokens.",
            "invalid_request_error",
            Some("context_length_exceeded"),
        )),
        Behavior::ContentFilter => Some(error(
            400,
            "The response was filtered due to the prompt triggering content management policy.",
            "invalid_request_error",
            Some("content_filter"),
        )),
        Behavior::Reset => Some(Response::new(broken_body(Vec::new()))),
        _ => None,
    }
}

/// What every endpoint does first: records the call, plays its scripted
/// delay or failure, and parses the body, refusing bad JSON as OpenAI does.
/// The behavior comes back for endpoints that misbehave mid-answer.
async fn accept(
    state: &State,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(Behavior, Value), Response> {
    let behavior = pace(state.record(uri.to_string(), headers, body.clone())).await;
    if let Some(response) = failure(&behavior) {
        return Err(response);
    }
    let request = serde_json::from_slice::<Value>(&body).map_err(|_| {
        error(
            400,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
        )
    })?;
    Ok((behavior, request))
}

/// An `input` field's texts, one per item (a token array counts as empty),
/// so results line up with the inputs by index.
fn input_texts(request: &Value) -> Vec<String> {
    match &request["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().unwrap_or_default().to_owned())
            .collect(),
        _ => Vec::new(),
    }
}

async fn chat(
    AxumState(state): AxumState<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (behavior, request) = match accept(&state, &uri, headers, body).await {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal,
    };
    let model = request["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    let prompt_tokens = last_user_text(&request).split_whitespace().count().max(1);
    let wants_tool = request["tools"].as_array().is_some_and(|t| !t.is_empty())
        && request["messages"]
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| m["role"] == "user");
    let json_mode = request["response_format"]["type"]
        .as_str()
        .is_some_and(|t| t != "text");
    let text = if json_mode {
        json!({"answer": reply_text(&request)}).to_string()
    } else {
        reply_text(&request)
    };
    let tool_call = wants_tool.then(|| {
        let name = request["tools"][0]["function"]["name"].as_str().unwrap_or("tool").to_owned();
        json!({"id": "call_mock_1", "type": "function", "function": {"name": name, "arguments": json!({"echo": last_user_text(&request)}).to_string()}})
    });
    let completion_tokens = text.split_whitespace().count();
    let usage = json!({
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}
    });
    let finish = if tool_call.is_some() { "tool_calls" } else { "stop" };
    let stream = request["stream"].as_bool() == Some(true);
    match behavior {
        Behavior::HeadersThenSilence => {
            return (
                [(
                    "content-type",
                    if stream {
                        "text/event-stream"
                    } else {
                        "application/json"
                    },
                )],
                silent_body(state),
            )
                .into_response();
        }
        Behavior::Endless if !stream => {
            let head = Bytes::from_static(b"{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
            let body = endless_body(state, head, Bytes::from_static(b"more and more "));
            return ([("content-type", "application/json")], body).into_response();
        }
        _ => {}
    }
    let text = match behavior {
        Behavior::OversizedBodyBytes(bytes) => "x".repeat(bytes),
        _ => text,
    };

    if !stream {
        let message = match &tool_call {
            Some(call) => {
                json!({"role": "assistant", "content": null, "tool_calls": [call], "refusal": null})
            }
            None => json!({"role": "assistant", "content": text, "refusal": null}),
        };
        let body = json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": usage, "system_fingerprint": "fp_mock"
        });
        return ([("content-type", "application/json")], body.to_string()).into_response();
    }

    let chunk = |delta: Value, finish: Option<&str>| {
        sse(None, &json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        }).to_string())
    };
    let mut frames = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    match &tool_call {
        Some(call) => {
            let arguments = call["function"]["arguments"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let (head, tail) = arguments.split_at(arguments.len() / 2);
            frames.push(chunk(json!({"tool_calls": [{"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": ""}}]}), None));
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": head}}]}),
                None,
            ));
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": tail}}]}),
                None,
            ));
        }
        None => frames.extend(
            pieces(&text)
                .into_iter()
                .map(|p| chunk(json!({"content": p}), None)),
        ),
    }
    match behavior {
        Behavior::CutStream(after) => {
            frames.truncate(after + 1);
            return sse_response(broken_body(frames));
        }
        Behavior::Endless => {
            let piece = frames.get(1).cloned().unwrap_or_default();
            return sse_response(endless_body(state, frames.swap_remove(0), piece));
        }
        Behavior::InvalidUtf8 => {
            let mut invalid = b"data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"".to_vec();
            invalid.extend_from_slice(b"\xff\xfe\xfd\"}}]}\n\n");
            frames.insert(1, Bytes::from(invalid));
        }
        _ => {}
    }
    frames.push(chunk(json!({}), Some(finish)));
    if request["stream_options"]["include_usage"].as_bool() == Some(true) {
        frames.push(sse(None, &json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "choices": [], "usage": usage
        }).to_string()));
    }
    frames.push(sse(None, "[DONE]"));
    sse_response(Body::from_stream(futures::stream::iter(
        frames.into_iter().map(Ok::<Bytes, std::io::Error>),
    )))
}

/// Text the moderation mock flags, so tests can ask for a flagged verdict.
pub const MODERATION_FLAG: &str = "FLAG-ME";

/// OpenAI's `/v1/moderations`: flags an input containing [`MODERATION_FLAG`];
/// scripted behaviors (`hang`, `{"status": 500}`) apply as to chat calls.
async fn moderations(
    AxumState(state): AxumState<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match accept(&state, &uri, headers, body).await {
        Ok((_, request)) => request,
        Err(refusal) => return refusal,
    };
    let inputs = input_texts(&request);
    let results: Vec<Value> = inputs
        .iter()
        .map(|input| {
            let flagged = input.contains(MODERATION_FLAG);
            json!({"flagged": flagged, "categories": {"harassment": flagged}, "category_scores": {"harassment": if flagged { 0.97 } else { 0.01 }}})
        })
        .collect();
    let model = request["model"].as_str().unwrap_or("omni-moderation-latest");
    Json(json!({"id": "modr-mock", "model": model, "results": results})).into_response()
}

/// An SSE response with the headers providers send.
pub fn sse_response(body: Body) -> Response {
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn embeddings(
    AxumState(state): AxumState<Arc<State>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match accept(&state, &uri, headers, body).await {
        Ok((_, request)) => request,
        Err(refusal) => return refusal,
    };
    let inputs = input_texts(&request);
    let tokens: usize = inputs.iter().map(|i| i.split_whitespace().count()).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            #[allow(clippy::cast_precision_loss)]
            let vector: Vec<f32> = (0..8).map(|d| ((text.len() + d) % 7) as f32 / 7.0).collect();
            let embedding = if request["encoding_format"] == "base64" {
                json!(llmesh_sidecar::api::embeddings::base64_vector(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list", "data": data, "model": request["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    });
    ([("content-type", "application/json")], body.to_string()).into_response()
}
