//! OTLP over gRPC: each batch is one `TraceService/Export` call on an HTTP/2
//! connection kept open between batches (h2c with prior knowledge for
//! `http://`, TLS with ALPN `h2` for `https://`). The message is the same
//! `ExportTraceServiceRequest` the HTTP transport posts, in gRPC's framing;
//! the outcome is the `grpc-status` of the trailers (or of the headers, for
//! an answer without a body).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tower::ServiceExt;

use super::export::{Post, PostError};

/// The OTLP trace service's one method.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// An `ExportTraceServiceResponse` is a few bytes (a partial-success note
/// at most); anything past this is not a collector talking.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The gRPC status codes a collector may answer differently a moment later
/// (the OTLP specification's retryable list; `RESOURCE_EXHAUSTED` too,
/// since a collector says it when its queue is full).
const RETRYABLE: [u32; 7] = [1, 4, 8, 10, 11, 14, 15];

/// The names of gRPC's status codes, for the log.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

type Sender = http2::SendRequest<Full<Bytes>>;

/// The export transport over gRPC: `endpoint`'s scheme and authority,
/// `headers` on every call (collector credentials).
pub fn post(
    endpoint: &str,
    headers: HeaderMap,
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
) -> Post {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    // Only `h2` offered: gRPC has no HTTP/1.1 form.
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http2()
        .wrap_connector(http);
    let client = Arc::new(Client {
        uri: method_uri(endpoint),
        headers,
        connector,
        connection: Mutex::new(None),
    });
    Arc::new(move |message| {
        let client = client.clone();
        Box::pin(async move { client.export(message).await })
    })
}

/// `scheme://authority/…/Export`: gRPC ignores a path in the endpoint.
fn method_uri(endpoint: &str) -> Result<Uri, String> {
    let endpoint: Uri = endpoint
        .parse()
        .map_err(|e| format!("the trace collector's URL is not valid: {e}"))?;
    let (Some(scheme), Some(authority)) = (endpoint.scheme(), endpoint.authority()) else {
        return Err("the trace collector's URL is not absolute".to_owned());
    };
    Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query(EXPORT_PATH)
        .build()
        .map_err(|e| e.to_string())
}

struct Client {
    /// The method's URL, or why the endpoint has none.
    uri: Result<Uri, String>,
    headers: HeaderMap,
    connector: HttpsConnector<HttpConnector>,
    /// The open connection; batches go one after another, so one is enough.
    connection: Mutex<Option<Sender>>,
}

impl Client {
    async fn export(&self, message: Vec<u8>) -> Result<(), PostError> {
        let uri = self.uri.clone().map_err(PostError::refused)?;
        let mut sender = match self.open_connection() {
            Some(sender) => sender,
            None => self.connect(&uri).await?,
        };
        let mut request = Request::new(frame(&message));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("llmesh-sidecar/", env!("CARGO_PKG_VERSION"))),
        );
        let sent = async {
            sender.ready().await?;
            sender.send_request(request).await
        };
        let response = match sent.await {
            Ok(response) => response,
            Err(error) => {
                // Broken: the next batch opens a new one.
                self.connection.lock().take();
                return Err(PostError::passing(format!("the gRPC call failed: {error}")));
            }
        };
        let http_status = response.status();
        if !http_status.is_success() {
            return Err(http_failure(http_status.as_u16()));
        }
        // An answer without a body carries its status in the headers.
        if let Some(status) = Status::of(response.headers()) {
            return status.verdict();
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES);
        let collected = body
            .collect()
            .await
            .map_err(|e| PostError::passing(format!("the collector's answer broke off: {e}")))?;
        match collected.trailers().and_then(Status::of) {
            Some(status) => status.verdict(),
            None => Err(PostError::refused("the collector's answer has no grpc-status")),
        }
    }

    fn open_connection(&self) -> Option<Sender> {
        let mut connection = self.connection.lock();
        match connection.as_ref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            _ => {
                *connection = None;
                None
            }
        }
    }

    async fn connect(&self, uri: &Uri) -> Result<Sender, PostError> {
        let unreachable =
            |e: &dyn std::fmt::Display| PostError::passing(format!("cannot reach the trace collector: {e}"));
        let io = self
            .connector
            .clone()
            .oneshot(uri.clone())
            .await
            .map_err(|e| unreachable(&e))?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| unreachable(&e))?;
        // A broken connection shows in the calls on it.
        tokio::spawn(connection);
        *self.connection.lock() = Some(sender.clone());
        Ok(sender)
    }
}

/// A gRPC message as it travels: uncompressed, with its length before it.
fn frame(message: &[u8]) -> Full<Bytes> {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(message);
    Full::new(framed.freeze())
}

/// gRPC's reading of an HTTP status that is not 200 (the "HTTP to gRPC
/// status code mapping"): a proxy or load balancer in front of the
/// collector answered, not the collector.
fn http_failure(status: u16) -> PostError {
    let message = format!("the collector answered HTTP {status}");
    match status {
        429 | 502..=504 => PostError::passing(message),
        _ => PostError::refused(message),
    }
}

/// A call's `grpc-status` and `grpc-message`.
#[derive(Debug, PartialEq, Eq)]
struct Status {
    code: u32,
    message: String,
}

impl Status {
    /// From trailers (or trailers-only headers); `None` without a
    /// `grpc-status`. A status that is not a number is `UNKNOWN`, as gRPC
    /// clients read it.
    fn of(headers: &HeaderMap) -> Option<Self> {
        let code = headers.get("grpc-status")?;
        let code = code
            .to_str()
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(2);
        let message = headers
            .get("grpc-message")
            .map(|m| {
                percent_encoding::percent_decode(m.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        Some(Self { code, message })
    }

    fn verdict(self) -> Result<(), PostError> {
        if self.code == 0 {
            return Ok(());
        }
        let name = usize::try_from(self.code)
            .ok()
            .and_then(|i| CODE_NAMES.get(i))
            .copied()
            .unwrap_or("UNKNOWN");
        let text = format!("the collector answered {name}: {}", self.message);
        Err(if RETRYABLE.contains(&self.code) {
            PostError::passing(text)
        } else {
            PostError::refused(text)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pairs: &[(&'static str, &'static str)]) -> Option<Status> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        Status::of(&headers)
    }

    #[test]
    fn the_status_is_read_from_grpc_status_and_its_percent_encoded_message() {
        assert_eq!(status(&[("content-type", "application/grpc")]), None);
        assert_eq!(status(&[("grpc-status", "0")]).map(Status::verdict), Some(Ok(())));
        let unavailable = status(&[
            ("grpc-status", "14"),
            ("grpc-message", "queue%20full%3A%20try%20later"),
        ])
        .expect("status")
        .verdict()
        .expect_err("failed");
        assert_eq!(
            unavailable,
            PostError::passing("the collector answered UNAVAILABLE: queue full: try later")
        );
        let denied = status(&[("grpc-status", "7")])
            .expect("status")
            .verdict()
            .expect_err("failed");
        assert!(
            !denied.retryable && denied.message.contains("PERMISSION_DENIED"),
            "{denied:?}"
        );
        let garbled = status(&[("grpc-status", "fourteen")]).expect("status");
        assert_eq!(garbled.code, 2, "UNKNOWN, not retried");
        assert!(
            !status(&[("grpc-status", "99")])
                .expect("status")
                .verdict()
                .expect_err("failed")
                .retryable
        );
    }

    #[test]
    fn the_message_is_framed_with_its_length_and_the_path_replaces_the_endpoints() {
        let framed = frame(b"abc");
        let bytes = futures::executor::block_on(framed.collect())
            .expect("body")
            .to_bytes();
        assert_eq!(&bytes[..], b"\x00\x00\x00\x00\x03abc");
        assert_eq!(
            method_uri("https://collector.observability:4317/ignored")
                .expect("valid")
                .to_string(),
            "https://collector.observability:4317/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        );
        assert!(method_uri("collector:4317").is_err());
    }

    #[test]
    fn a_proxy_in_front_that_is_overloaded_is_retried_one_that_refuses_is_not() {
        assert!(http_failure(503).retryable);
        assert!(http_failure(429).retryable);
        assert!(!http_failure(404).retryable);
    }
}
