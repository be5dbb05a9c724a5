//! Respond: turn an answer (or a failure) into the HTTP response the app
//! reads, with the `x-llmesh-*` headers, and close the request's record.

use std::convert::Infallible;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderValue, StatusCode, header};
use tokio::time::Instant;

use crate::access_log::AccessRecord;
use crate::attempts::CommittedStream;
use crate::error::ApiError;
use crate::providers::{Completed, ErrorKind, ProviderError, StreamEvent};

/// A complete JSON answer.
pub fn complete(completed: Completed, mut record: AccessRecord) -> Response {
    record.set_status(200, None);
    record.set_usage(completed.usage);
    record.note_answer(&completed.body);
    let mut response = (StatusCode::OK, completed.body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    record.add_headers(headers);
    record.close_after_response();
    response
}

/// An error in OpenAI's shape.
pub fn error(error: ApiError, mut record: AccessRecord) -> Response {
    let status = error.status().as_u16();
    record.set_status(
        status,
        Some(error.upstream_kind().map_or("request", ErrorKind::label)),
    );
    let mut response = error.into_response();
    record.add_headers(response.headers_mut());
    record.close_after_response();
    response
}

/// A stream of server-sent events: each chunk is written as it arrives. A
/// failure after the first chunk ends the stream with an error event the
/// OpenAI SDKs raise, never with a silent end.
pub fn stream(committed: CommittedStream, mut record: AccessRecord) -> Response {
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
    let body = async_stream::stream! {
        let mut record = record;
        for event in head {
            if let Some(frame) = frame(event, &mut record) {
                yield Ok::<Bytes, Infallible>(frame);
            }
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
                Some(Ok(event)) => {
                    if let Some(frame) = frame(event, &mut record) {
                        yield Ok(frame);
                    }
                }
                Some(Err(error)) => {
                    record.stream_failed(error.kind.label());
                    yield Ok(sse_data(&ApiError::Upstream { provider, error }.body()));
                    return;
                }
            }
        }
        record.finish();
        // Headers left before the usage was known: the cost goes in an SSE
        // comment, which clients skip and scripts can read.
        if let Some(cost) = record.cost() {
            yield Ok(Bytes::from(format!(": x-llmesh-cost-usd {}\n\n", crate::pricing::format_usd(cost))));
        }
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
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

/// The SSE frame for one event, noting usage and the first chunk on the way.
fn frame(event: StreamEvent, record: &mut AccessRecord) -> Option<Bytes> {
    match event {
        StreamEvent::Chunk(json) => {
            record.first_chunk_sent();
            record.note_answer(&json);
            Some(sse_data(&json))
        }
        StreamEvent::Usage(usage) => {
            record.set_usage(usage);
            None
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
