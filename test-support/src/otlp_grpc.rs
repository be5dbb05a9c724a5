//! An OTLP/gRPC trace collector on loopback (h2c): takes
//! `TraceService/Export` calls, answers `grpc-status: 0`, and decodes the
//! spans it needs to show with a protobuf reader of its own (independent of
//! the sidecar's encoder). The Python SDK tests use the official
//! `opentelemetry-proto` servicer; this one serves the Rust example tests.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use parking_lot::Mutex;
use tokio::net::TcpListener;

/// The trace service's method, as gRPC names it in the path.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A span as the collector read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root.
    pub parent_span_id: String,
    /// Its name.
    pub name: String,
    /// Its attributes (strings, numbers and flags as text).
    pub attributes: Vec<(String, String)>,
}

impl Span {
    /// An attribute's value as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The running collector.
#[derive(Debug)]
pub struct GrpcCollector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl GrpcCollector {
    /// Starts it on a free loopback port.
    pub async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        let router = Router::new().route(
            EXPORT_PATH,
            post(move |headers: HeaderMap, body: Bytes| {
                let kept = kept.clone();
                async move { export(&kept, &headers, &body) }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { url, spans }
    }

    /// `http://127.0.0.1:PORT`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The spans of `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.spans
            .lock()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

/// Takes one call: a gRPC frame holding an `ExportTraceServiceRequest`.
/// Answers trailers-only (status in the headers, no body), as gRPC allows.
fn export(
    spans: &Mutex<Vec<Span>>,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, [(&'static str, &'static str); 2]) {
    let grpc = |status: &'static str| {
        (
            StatusCode::OK,
            [("content-type", "application/grpc"), ("grpc-status", status)],
        )
    };
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/grpc") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [("content-type", "text/plain"), ("grpc-status", "13")],
        );
    }
    let message = match body.split_first_chunk::<5>() {
        Some(([0, size @ ..], rest)) if u32::from_be_bytes(*size) as usize == rest.len() => rest,
        // INTERNAL: a frame whose length is not its message's.
        Some(([0, ..], _)) => return grpc("13"),
        // UNIMPLEMENTED: a compressed (or cut) frame, which nobody asked for.
        _ => return grpc("12"),
    };
    match read_request(message) {
        Some(read) => {
            spans.lock().extend(read);
            grpc("0")
        }
        // INVALID_ARGUMENT.
        None => grpc("3"),
    }
}

/// A protobuf field: its number and its value (a varint, 8 bytes, or bytes).
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
}

/// The fields of a message, in order; `None` when it does not parse.
fn fields(mut bytes: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut bytes)?),
            1 => {
                let (value, rest) = bytes.split_first_chunk::<8>()?;
                bytes = rest;
                Field::Fixed64(u64::from_le_bytes(*value))
            }
            2 => {
                let length = usize::try_from(varint(&mut bytes)?).ok()?;
                let value = bytes.get(..length)?;
                bytes = &bytes[length..];
                Field::Bytes(value)
            }
            _ => return None,
        };
        out.push((key >> 3, field));
    }
    Some(out)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0_u64;
    for shift in (0..64).step_by(7) {
        let (byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The messages in field `number` of a message.
fn nested<'a>(message: &[(u64, Field<'a>)], number: u64) -> Vec<&'a [u8]> {
    message
        .iter()
        .filter_map(|(n, f)| match f {
            Field::Bytes(b) if *n == number => Some(*b),
            _ => None,
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `ExportTraceServiceRequest` → `ResourceSpans` → `ScopeSpans` → `Span`.
fn read_request(message: &[u8]) -> Option<Vec<Span>> {
    let mut spans = Vec::new();
    for resource_spans in nested(&fields(message)?, 1) {
        for scope_spans in nested(&fields(resource_spans)?, 2) {
            for span in nested(&fields(scope_spans)?, 2) {
                spans.push(read_span(&fields(span)?)?);
            }
        }
    }
    Some(spans)
}

fn read_span(span: &[(u64, Field<'_>)]) -> Option<Span> {
    let one = |number| nested(span, number).first().copied().unwrap_or_default();
    let mut attributes = Vec::new();
    for pair in nested(span, 9) {
        let pair = fields(pair)?;
        let key = String::from_utf8(nested(&pair, 1).first()?.to_vec()).ok()?;
        let value = fields(nested(&pair, 2).first()?)?;
        let text = match value.first()? {
            (1, Field::Bytes(text)) => String::from_utf8_lossy(text).into_owned(),
            (2, Field::Varint(flag)) => (*flag != 0).to_string(),
            (3, Field::Varint(number)) => (*number as i64).to_string(),
            (4, Field::Fixed64(bits)) => f64::from_bits(*bits).to_string(),
            _ => String::new(),
        };
        attributes.push((key, text));
    }
    Some(Span {
        trace_id: hex(one(1)),
        span_id: hex(one(2)),
        parent_span_id: hex(one(4)),
        name: String::from_utf8_lossy(one(5)).into_owned(),
        attributes,
    })
}
