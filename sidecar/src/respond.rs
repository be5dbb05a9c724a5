//! Respond: turn an answer (or a failure) into the HTTP response the app
//! reads, in the format of the API it called, with the `x-llmesh-*`
//! headers, and close the request's record.

use std::convert::Infallible;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderValue, StatusCode, header};
use tokio::time::Instant;

use crate::access_log::AccessRecord;
use crate::api::Api;
use crate::api::chat::ChatChunk;
use crate::attempts::CommittedStream;
use crate::convert::messages_stream::MessagesRenderer;
use crate::convert::responses::Echo;
use crate::convert::responses_stream::ResponsesRenderer;
use crate::convert::{self, Render};
use crate::error::ApiError;
use crate::providers::{Completed, ErrorKind, ProviderError, StreamEvent, to_json_bytes};

/// The format an answer is written in.
#[derive(Debug)]
pub enum Shape {
    /// OpenAI's chat or embeddings JSON, as the pipeline made it.
    OpenAi,
    /// Anthropic Messages.
    Messages,
    /// OpenAI Responses, echoing the request.
    Responses(Box<Echo>),
}

impl Shape {
    /// The internal chat answer in this format.
    fn body(&self, chat: &Bytes) -> Result<Bytes, serde_json::Error> {
        match self {
            // Forwarded untouched: the same buffer, not a copy.
            Self::OpenAi => Ok(chat.clone()),
            Self::Messages => convert::messages::from_chat(chat).map(|m| to_json_bytes(&m)),
            Self::Responses(echo) => convert::responses::from_chat(chat, echo).map(|r| to_json_bytes(&r)),
        }
    }

    fn renderer(self) -> Option<Box<dyn Render>> {
        match self {
            Self::OpenAi => None,
            Self::Messages => Some(Box::new(MessagesRenderer::default())),
            Self::Responses(echo) => Some(Box::new(ResponsesRenderer::new(*echo))),
        }
    }

    fn api(&self) -> Api {
        match self {
            Self::OpenAi => Api::ChatCompletions,
            Self::Messages => Api::Messages,
            Self::Responses(_) => Api::Responses,
        }
    }
}

/// A complete JSON answer.
pub fn complete(completed: Completed, mut record: AccessRecord, shape: &Shape) -> Response {
    let body = match shape.body(&completed.body) {
        Ok(body) => body,
        Err(e) => {
            let error = ApiError::Upstream {
                provider: record.provider_name().to_owned(),
                error: ProviderError::invalid_response(format!("the answer is not a chat completion: {e}")),
            };
            return self::error(error, record, shape.api());
        }
    };
    record.set_status(200, None);
    record.set_usage(completed.usage);
    record.note_answer(&completed.body);
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    record.add_headers(headers);
    record.close_after_response();
    response
}

/// An error in the shape of the API the app called.
pub fn error(error: ApiError, mut record: AccessRecord, api: Api) -> Response {
    let label = error.upstream_kind().map_or("request", ErrorKind::label);
    let mut response = error.into_response_for(api);
    record.set_status(response.status().as_u16(), Some(label));
    record.add_headers(response.headers_mut());
    record.close_after_response();
    response
}

/// A stream of server-sent events: each chunk is written as it arrives, in
/// the app's format. A failure after the first chunk ends the stream with
/// the format's error event, which the SDKs raise, never with a silent end.
pub fn stream(committed: CommittedStream, mut record: AccessRecord, shape: Shape) -> Response {
    record.set_status(200, None);
    let mut headers = http::HeaderMap::new();
    record.add_headers(&mut headers);
    let CommittedStream {
        head,
        mut tail,
        idle,
        deadline,
    } = committed;
    let provider = record.provider_name().to_owned();
    let mut renderer = shape.renderer();
    let body = async_stream::stream! {
        let mut record = record;
        let mut frames = Vec::new();
        for event in head {
            frame(event, &mut record, &mut renderer, &mut frames);
        }
        for frame in frames.drain(..) {
            yield Ok::<Bytes, Infallible>(frame);
        }
        loop {
            let limit = [idle.map(|i| Instant::now() + i), deadline].into_iter().flatten().min();
            let next = match limit {
                None => tail.0.next().await,
                Some(limit) => match tokio::time::timeout_at(limit, tail.0.next()).await {
                    Ok(next) => next,
                    Err(_) => Some(Err(ProviderError::new(
                        ErrorKind::Timeout,
                        "the upstream stream went silent past the time limit of the route or target",
                    ))),
                },
            };
            match next {
                None => break,
                Some(Ok(event)) => frame(event, &mut record, &mut renderer, &mut frames),
                Some(Err(error)) => {
                    record.stream_failed(error.kind.label());
                    let error = ApiError::Upstream { provider, error };
                    match renderer.as_mut() {
                        None => frames.push(sse_data(&error.body())),
                        Some(renderer) => renderer.failed(&error, &mut frames),
                    }
                    for frame in frames.drain(..) {
                        yield Ok(frame);
                    }
                    return;
                }
            }
            for frame in frames.drain(..) {
                yield Ok(frame);
            }
        }
        record.finish();
        if let Some(renderer) = renderer.as_mut() {
            renderer.finish(&mut frames);
        }
        // Headers left before the usage was known: the cost goes in an SSE
        // comment, which clients skip and scripts can read.
        if let Some(cost) = record.cost() {
            frames.push(Bytes::from(format!(": x-llmesh-cost-usd {}\n\n", crate::pricing::format_usd(cost))));
        }
        if renderer.is_none() {
            frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        }
        for frame in frames.drain(..) {
            yield Ok(frame);
        }
    };
    let mut response = Response::new(Body::from_stream(body));
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response_headers.extend(headers);
    response
}

/// The SSE frames for one event, noting usage and the first chunk on the
/// way. Chat chunks are forwarded as they are; other formats parse them.
fn frame(
    event: StreamEvent,
    record: &mut AccessRecord,
    renderer: &mut Option<Box<dyn Render>>,
    frames: &mut Vec<Bytes>,
) {
    match event {
        StreamEvent::Chunk(json) => {
            record.chunk_sent();
            record.note_answer(&json);
            match renderer.as_mut() {
                None => frames.push(sse_data(&json)),
                Some(renderer) => {
                    if let Ok(chunk) = serde_json::from_slice::<ChatChunk>(&json) {
                        renderer.chunk(chunk, frames);
                    }
                }
            }
        }
        StreamEvent::Usage(usage) => {
            if let Some(renderer) = renderer.as_mut() {
                renderer.usage(&usage);
            }
            record.set_usage(usage);
        }
    }
}

fn sse_data(json: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(json.len() + 8);
    frame.put_slice(b"data: ");
    frame.put_slice(json);
    frame.put_slice(b"\n\n");
    frame.freeze()
}
