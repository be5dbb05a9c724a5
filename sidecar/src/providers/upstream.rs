//! Outbound HTTP, shared by every adapter: one pooled client per sidecar.
//!
//! hyper's pooled client with keep-alive, rustls with the platform's roots,
//! HTTP/2 where the upstream offers it (ALPN), and `HTTP_PROXY`,
//! `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` from the environment, since
//! enterprise egress usually goes through a proxy: plain HTTP is sent to the
//! proxy in absolute form, HTTPS is tunnelled with `CONNECT`.
//!
//! It is hyper itself rather than a higher-level client because that client
//! parsed every URL twice per request (for redirects, which an API call never
//! follows), a sixth of the sidecar's own CPU time on the pass-through path;
//! and hyper's connections under a pool of our own ([`pool`]) rather than
//! hyper-util's pooled client, for the same reason.

mod pool;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
use http::uri::Scheme;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt;

use self::pool::{Lease, Pool};
use super::{ErrorKind, ProviderError};

/// Knobs of the outbound client.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// Time to establish a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Upper bound for any one upstream request when the route sets none.
    pub request_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// CA certificates (PEM) trusted besides the system's, e.g. the
    /// operator's own CA for the sync channel.
    pub extra_roots_pem: Option<String>,
    /// The largest complete (not streamed) answer read; a larger one is an
    /// invalid response rather than memory the pod runs out of.
    pub max_answer_bytes: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            // Long enough for a TLS handshake across a continent, short
            // enough that a dead endpoint fails before the app gives up.
            connect_timeout: Duration::from_secs(5),
            // Reasoning models can think for minutes before answering.
            request_timeout: Duration::from_secs(600),
            // Below the 120 s most provider load balancers idle out at.
            pool_idle_timeout: Duration::from_secs(90),
            extra_roots_pem: None,
            // Room for a batch of 2,048 large embeddings as JSON text.
            max_answer_bytes: 128 * 1024 * 1024,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The platform's verifier, trusting `extra_roots_pem` too.
fn tls_config(extra_roots_pem: Option<&str>) -> Result<rustls::ClientConfig, BoxError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let Some(pem) = extra_roots_pem else {
        use rustls_platform_verifier::ConfigVerifierExt;
        return Ok(rustls::ClientConfig::with_platform_verifier()?);
    };
    let roots = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if roots.is_empty() {
        return Err("the CA bundle holds no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The TLS set-up of outbound connections: the platform's roots and the
/// settings' extra CA certificates (also the gRPC trace exporter's).
///
/// # Errors
/// No usable root store, or extra certificates that do not parse.
pub fn client_tls(settings: &UpstreamSettings) -> Result<rustls::ClientConfig, ProviderError> {
    // Both the binary and tests reach this; the first install wins.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tls_config(settings.extra_roots_pem.as_deref())
        .map_err(|e| ProviderError::new(ErrorKind::Connect, format!("cannot set up TLS: {e}")))
}

/// TLS (or not, for `http://` upstreams) over a direct or proxied connection.
type Connector = HttpsConnector<EgressConnector>;

/// The shared outbound client.
#[derive(Clone)]
pub struct UpstreamClient {
    pool: Arc<Pool>,
    proxies: Arc<Matcher>,
    request_timeout: Duration,
    max_answer_bytes: usize,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Builds the client, reading the proxy settings from the environment.
    ///
    /// # Errors
    /// TLS could not be set up (no usable root store).
    pub fn new(settings: &UpstreamSettings) -> Result<Self, ProviderError> {
        let tls = client_tls(settings)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let proxies = Arc::new(Matcher::from_env());
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(EgressConnector {
                http,
                proxies: proxies.clone(),
            });
        Ok(Self {
            pool: Arc::new(Pool::new(
                connector,
                settings.connect_timeout,
                settings.pool_idle_timeout,
            )),
            proxies,
            request_timeout: settings.request_timeout,
            max_answer_bytes: settings.max_answer_bytes,
        })
    }

    /// Starts a POST to `url` (adapters on the hot path pass a [`Uri`]
    /// parsed when they were built).
    pub fn post<U>(&self, url: U) -> UpstreamRequest
    where
        U: TryInto<Uri>,
        U::Error: std::fmt::Display,
    {
        let (uri, invalid) = match url.try_into() {
            Ok(uri) => (uri, None),
            Err(e) => (Uri::default(), Some(format!("invalid upstream URL: {e}"))),
        };
        UpstreamRequest {
            uri,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            invalid,
        }
    }

    /// Sends a request and returns the response if its status is a success;
    /// otherwise the status, the wait the provider asked for, and the body,
    /// for the adapter to read its provider's error format.
    ///
    /// # Errors
    /// The request was malformed, could not be sent, or timed out.
    pub async fn send(&self, request: UpstreamRequest) -> Result<Answer, ProviderError> {
        if let Some(invalid) = request.invalid {
            return Err(ProviderError::new(ErrorKind::BadRequest, invalid));
        }
        let mut headers = request.headers;
        if let Some(parent) = crate::telemetry::upstream_traceparent()
            && let Ok(value) = HeaderValue::from_str(&parent)
        {
            headers.insert(crate::telemetry::context::TRACEPARENT, value);
        }
        if request.uri.scheme() == Some(&Scheme::HTTP)
            && let Some(proxy) = self.proxies.intercept(&request.uri)
            && let Some(auth) = proxy.basic_auth()
        {
            // A plain-HTTP request goes to the proxy itself, so its
            // credentials travel on the request (an HTTPS one sends them on
            // the CONNECT).
            headers.insert(PROXY_AUTHORIZATION, auth.clone());
        }
        let mut outbound = http::Request::new(Full::new(request.body));
        *outbound.method_mut() = Method::POST;
        *outbound.uri_mut() = request.uri;
        *outbound.headers_mut() = headers;

        let deadline = Instant::now() + self.request_timeout;
        let (response, lease) = match tokio::time::timeout_at(deadline, self.pool.send(outbound)).await {
            Ok(Ok(sent)) => sent,
            Ok(Err(error)) => return Err(transport_error(ErrorKind::Connect, &*error)),
            Err(_) => return Err(timed_out(self.request_timeout)),
        };
        let response = UpstreamResponse {
            response,
            deadline,
            max_bytes: self.max_answer_bytes,
            lease: lease.map(Box::new),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(Answer::Success(response));
        }
        let retry_after = retry_after(response.headers());
        let body = Self::body(response).await.unwrap_or_default();
        Ok(Answer::Failure {
            status: status.as_u16(),
            retry_after,
            body,
        })
    }

    /// Reads a whole success body.
    ///
    /// # Errors
    /// The body broke off, outlasted the request timeout, or is over the
    /// size limit.
    pub async fn body(response: UpstreamResponse) -> Result<Bytes, ProviderError> {
        let UpstreamResponse {
            response,
            deadline,
            max_bytes,
            lease,
        } = response;
        let body = Limited::new(response.into_body(), max_bytes);
        let read = tokio::time::timeout_at(deadline, body.collect()).await;
        // The connection is free for the next request.
        drop(lease);
        match read {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) if error.is::<LengthLimitError>() => Err(ProviderError::new(
                ErrorKind::InvalidResponse,
                format!("the upstream's answer is larger than the limit of {max_bytes} bytes"),
            )),
            Ok(Err(error)) => Err(transport_error(ErrorKind::BrokenAnswer, &*error)),
            Err(_) => Err(timed_out_reading()),
        }
    }
}

/// A request being put together; a header that is not valid HTTP is
/// reported when it is sent, never with its value (it may be a key).
#[derive(Debug)]
pub struct UpstreamRequest {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    invalid: Option<String>,
}

impl UpstreamRequest {
    /// Adds every header of `headers`, replacing ones of the same name.
    #[must_use]
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers.extend(headers);
        self
    }

    /// Sets one header.
    #[must_use]
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
    {
        match (name.try_into(), value.try_into()) {
            (Ok(name), Ok(value)) => {
                self.headers.insert(name, value);
            }
            _ => self.invalid_header(),
        }
        self
    }

    /// `Authorization: Bearer <key>`, marked sensitive so it stays out of
    /// HTTP/2 header tables and debug output.
    #[must_use]
    pub fn bearer_auth(mut self, key: &str) -> Self {
        match HeaderValue::try_from(format!("Bearer {key}")) {
            Ok(mut value) => {
                value.set_sensitive(true);
                self.headers.insert(AUTHORIZATION, value);
            }
            Err(_) => self.invalid_header(),
        }
        self
    }

    fn invalid_header(&mut self) {
        self.invalid
            .get_or_insert_with(|| "a header of the upstream request is not valid HTTP".to_owned());
    }

    /// The body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

/// A success response whose body is still to be read.
#[derive(Debug)]
pub struct UpstreamResponse {
    response: http::Response<Incoming>,
    /// When the request timeout runs out, reading included.
    deadline: Instant,
    /// The largest complete answer read.
    max_bytes: usize,
    /// The HTTP/1.1 connection the body arrives on, back to the pool when
    /// this is dropped (boxed: an error answer, the other variant of
    /// [`Answer`], has no use for the room).
    lease: Option<Box<Lease>>,
}

impl UpstreamResponse {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The body as it arrives, piece by piece, ending with an error if it
    /// breaks off or outlasts the request timeout.
    pub fn bytes_stream(self) -> impl Stream<Item = Result<Bytes, ProviderError>> + Send + 'static {
        let UpstreamResponse {
            response,
            deadline,
            lease,
            ..
        } = self;
        let mut body = response.into_body();
        async_stream::stream! {
            // Held until the stream ends or is dropped.
            let _lease = lease;
            loop {
                match tokio::time::timeout_at(deadline, body.frame()).await {
                    Err(_) => {
                        yield Err(timed_out_reading());
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(error))) => {
                        yield Err(transport_error(ErrorKind::BrokenAnswer, &error));
                        break;
                    }
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            yield Ok(data);
                        }
                    }
                }
            }
        }
    }
}

/// An upstream's answer, split by success.
#[derive(Debug)]
pub enum Answer {
    /// 2xx.
    Success(UpstreamResponse),
    /// Anything else, read whole (error bodies are small).
    Failure {
        /// HTTP status.
        status: u16,
        /// From `retry-after-ms` or `Retry-After` (seconds).
        retry_after: Option<Duration>,
        /// The error body.
        body: Bytes,
    },
}

/// A transport failure with its chain of causes. hyper's messages name the
/// failure, never a header, so no credential leaks into it.
fn transport_error(kind: ErrorKind, error: &dyn std::error::Error) -> ProviderError {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    ProviderError::new(kind, format!("upstream request failed: {message}"))
}

fn timed_out(limit: Duration) -> ProviderError {
    ProviderError::new(
        ErrorKind::Timeout,
        format!("upstream request failed: no answer within {}s", limit.as_secs()),
    )
}

fn timed_out_reading() -> ProviderError {
    ProviderError::new(
        ErrorKind::Timeout,
        "upstream request failed: the answer outlasted the request timeout",
    )
}

/// Opens connections: directly, through an HTTP proxy (plain HTTP, sent in
/// absolute form), or tunnelled through one with `CONNECT` (HTTPS, with TLS
/// to the upstream on top, added by the wrapping rustls connector).
#[derive(Clone, Debug)]
struct EgressConnector {
    http: HttpConnector,
    proxies: Arc<Matcher>,
}

impl tower::Service<Uri> for EgressConnector {
    type Response = Egress;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Egress, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let http = self.http.clone();
        let proxy = self.proxies.intercept(&destination);
        Box::pin(async move {
            let Some(proxy) = proxy else {
                let io = http.oneshot(destination).await?;
                return Ok(Egress { io, via_proxy: false });
            };
            if destination.scheme() == Some(&Scheme::HTTPS) {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), http);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let io = tunnel.oneshot(destination).await?;
                return Ok(Egress { io, via_proxy: false });
            }
            let io = http.oneshot(proxy.uri().clone()).await?;
            Ok(Egress { io, via_proxy: true })
        })
    }
}

/// An open connection, and whether requests on it go to a proxy (which
/// makes hyper write them in absolute form).
#[derive(Debug)]
struct Egress {
    io: TokioIo<TcpStream>,
    via_proxy: bool,
}

impl Connection for Egress {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.via_proxy)
    }
}

impl hyper::rt::Read for Egress {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Egress {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The wait an upstream asked for: `retry-after-ms`, `Retry-After` in
/// seconds (an HTTP date is ignored), or else the later of OpenAI's
/// `x-ratelimit-reset-requests` and `x-ratelimit-reset-tokens` (`1s`, `6m0s`).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let number = |name: &str| text(name)?.parse::<f64>().ok();
    if let Some(ms) = number("retry-after-ms") {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    if let Some(seconds) = number("retry-after") {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|name| text(name).and_then(parse_reset))
        .max()
}

/// Parses durations in the form OpenAI's reset headers use: `20ms`, `1s`,
/// `6m0s`, `1h2m3.5s`.
fn parse_reset(text: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (amount, after) = rest.split_at(digits);
        let amount: f64 = amount.parse().ok()?;
        let unit_len = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        total += amount
            * match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            };
        rest = next;
    }
    Duration::try_from_secs_f64(total)
        .ok()
        .filter(|d| !d.is_zero() || text == "0s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_prefers_milliseconds_and_ignores_dates() {
        let mut headers = http::HeaderMap::new();
        headers.insert("retry-after", http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", http::HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        let mut openai = http::HeaderMap::new();
        openai.insert("x-ratelimit-reset-requests", http::HeaderValue::from_static("1s"));
        openai.insert(
            "x-ratelimit-reset-tokens",
            http::HeaderValue::from_static("6m0.5s"),
        );
        assert_eq!(retry_after(&openai), Some(Duration::from_millis(360_500)));
        openai.insert("x-ratelimit-reset-tokens", http::HeaderValue::from_static("20ms"));
        assert_eq!(retry_after(&openai), Some(Duration::from_secs(1)));
        openai.insert(
            "x-ratelimit-reset-requests",
            http::HeaderValue::from_static("soon"),
        );
        assert_eq!(retry_after(&openai), Some(Duration::from_millis(20)));
        let mut dated = http::HeaderMap::new();
        dated.insert(
            "retry-after",
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&dated), None);
    }
}
