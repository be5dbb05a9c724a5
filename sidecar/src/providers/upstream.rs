//! Outbound HTTP, shared by every adapter: one pooled client per sidecar.
//!
//! Keep-alive pooling, HTTP/2 where the upstream offers it (ALPN), rustls
//! with the system's roots, and `HTTPS_PROXY`/`NO_PROXY` from the environment
//! (reqwest reads them), since enterprise egress usually goes through one.

use std::time::Duration;

use bytes::Bytes;

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
        }
    }
}

/// The shared outbound client.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: reqwest::Client,
}

impl UpstreamClient {
    /// Builds the client.
    ///
    /// # Errors
    /// TLS could not be set up (no usable root store).
    pub fn new(settings: &UpstreamSettings) -> Result<Self, ProviderError> {
        // Both the binary and tests reach this; the first install wins.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_idle_timeout(settings.pool_idle_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ProviderError::new(ErrorKind::Connect, format!("cannot build HTTP client: {e}")))?;
        Ok(Self { client })
    }

    /// Starts a POST to `url`.
    pub fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.client.post(url)
    }

    /// Sends a request and returns the response if its status is a success;
    /// otherwise the status, the wait the provider asked for, and the body,
    /// for the adapter to read its provider's error format.
    ///
    /// # Errors
    /// The request could not be sent or timed out.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, ProviderError> {
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(Answer::Success(response));
        }
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.unwrap_or_default();
        Ok(Answer::Failure {
            status: status.as_u16(),
            retry_after,
            body,
        })
    }

    /// Reads a whole success body.
    ///
    /// # Errors
    /// The body broke off.
    pub async fn body(response: reqwest::Response) -> Result<Bytes, ProviderError> {
        response.bytes().await.map_err(transport_error)
    }
}

/// An upstream's answer, split by success.
#[derive(Debug)]
pub enum Answer {
    /// 2xx.
    Success(reqwest::Response),
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

fn transport_error(error: reqwest::Error) -> ProviderError {
    let kind = if error.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connect
    };
    // reqwest's Display names the URL but never headers, so no credential leaks.
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    ProviderError::new(kind, format!("upstream request failed: {message}"))
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
