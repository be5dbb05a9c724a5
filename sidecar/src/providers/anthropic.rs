//! Anthropic's Messages API (`POST /v1/messages`), behind the OpenAI shape.
//!
//! A Messages app's request is sent as it came (same-family passthrough:
//! `cache_control`, thinking signatures, betas and its `anthropic-version`
//! survive); any other is translated (`request`). The answer is translated back
//! (`response`), and a stream translated event by event (`stream`).
//! `response_format` JSON has no Anthropic equivalent and is emulated with a
//! forced tool call whose input is the answer (see `request`).

mod request;
mod response;
mod stream;

use std::sync::Arc;

use async_stream::stream;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue};
use llmesh_crds::config::{CredentialRef, Credentials, ProviderConfig};
use llmesh_crds::resources::ProviderKind;
use serde::Deserialize;

pub use stream::StreamTranslator;

use super::openai::{snippet, static_headers};
use super::upstream::{Answer, UpstreamClient, UpstreamResponse};
use super::{ChatReply, ChunkStream, Deps, ErrorKind, Provider, ProviderError, sse};
use crate::api::chat::ChatRequest;
use crate::api::messages::MessagesRequest;
use crate::credentials::CredentialStore;

const PUBLIC_BASE_URL: &str = "https://api.anthropic.com";

/// The API version llmesh's translation is written against. A ProviderSecret
/// may pin another with an `anthropic-version` header.
const API_VERSION: &str = "2023-06-01";

/// An Anthropic account.
#[derive(Debug)]
pub struct Anthropic {
    url: String,
    count_url: String,
    headers: HeaderMap,
    /// The ProviderSecret sets `anthropic-version`: an app's own does not replace it.
    version_pinned: bool,
    api_key: Option<CredentialRef>,
    client: UpstreamClient,
    credentials: Arc<CredentialStore>,
    /// Mark the stable prefix for Anthropic's prompt cache from this many tokens.
    cache_prefix_from_tokens: Option<u64>,
}

impl Anthropic {
    /// The adapter for one account: `{base}/v1/messages`, where `base` is
    /// the configured `baseUrl` or Anthropic's public endpoint.
    ///
    /// # Errors
    /// A configured header is not valid HTTP.
    pub fn new(config: &ProviderConfig, deps: &Deps) -> Result<Self, ProviderError> {
        let base = config
            .base_url
            .as_deref()
            .unwrap_or(PUBLIC_BASE_URL)
            .trim_end_matches('/');
        let mut headers = static_headers(&config.headers)?;
        let version_pinned = headers.contains_key("anthropic-version");
        if !version_pinned {
            headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        }
        let api_key = match &config.credentials {
            Credentials::ApiKey { api_key } => Some(api_key.clone()),
            // A keyless gateway in front of Anthropic.
            Credentials::None | Credentials::Aws { .. } => None,
        };
        Ok(Self {
            url: format!("{base}/v1/messages"),
            count_url: format!("{base}/v1/messages/count_tokens"),
            headers,
            version_pinned,
            api_key,
            client: deps.client.clone(),
            credentials: deps.credentials.clone(),
            cache_prefix_from_tokens: config.prompt_caching.as_ref().map(|c| c.min_prefix_tokens),
        })
    }

    async fn post(
        &self,
        url: &str,
        request: &ChatRequest,
        body: Vec<u8>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let mut headers = self.headers.clone();
        // A Messages app's version and betas; a ProviderSecret's own headers win.
        if let Some(origin) = request.anthropic.as_deref() {
            if let Some(version) = origin.version.as_deref()
                && !self.version_pinned
                && let Ok(value) = HeaderValue::from_str(version)
            {
                headers.insert("anthropic-version", value);
            }
            if let Some(beta) = origin.beta.as_deref()
                && !self.headers.contains_key("anthropic-beta")
                && let Ok(value) = HeaderValue::from_str(beta)
            {
                headers.insert("anthropic-beta", value);
            }
        }
        let mut builder = self.client.post(url).headers(headers);
        if let Some(reference) = &self.api_key {
            let mut key =
                HeaderValue::from_str(self.credentials.resolve(reference)?.expose()).map_err(|_| {
                    ProviderError::new(
                        ErrorKind::Rejected,
                        "the Anthropic API key is not a valid header value",
                    )
                })?;
            // Keeps the key out of HTTP/2 header tables and debug output.
            key.set_sensitive(true);
            builder = builder.header("x-api-key", key);
        }
        let builder = builder
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        match self.client.send(builder).await? {
            Answer::Success(response) => Ok(response),
            Answer::Failure {
                status,
                retry_after,
                body,
            } => Err(error_from_body(status, &body).with_retry_after(retry_after)),
        }
    }
}

#[async_trait::async_trait]
impl Provider for Anthropic {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    async fn chat(&self, request: &ChatRequest, model: &str) -> Result<ChatReply, ProviderError> {
        let mut outbound = outbound(request, model)?;
        if let Some(min_tokens) = self.cache_prefix_from_tokens {
            request::mark_stable_prefix(&mut outbound, min_tokens);
        }
        let body = serde_json::to_vec(&outbound)
            .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("cannot encode request: {e}")))?;
        let json_response = request::wants_json(request);
        let response = self.post(&self.url, request, body).await?;
        if request.is_stream() {
            let mut translator = StreamTranslator::new(model, request.wants_stream_usage());
            if json_response {
                translator = translator.json_response();
            }
            return Ok(ChatReply::Stream(relay_stream(response, translator)));
        }
        let body = UpstreamClient::body(response).await?;
        response::translate(&body, json_response).map(ChatReply::Complete)
    }

    async fn count_tokens(&self, request: &ChatRequest, model: &str) -> Result<u64, ProviderError> {
        let body = request::count_tokens_body(&outbound(request, model)?)?;
        let response = self.post(&self.count_url, request, body).await?;
        let body = UpstreamClient::body(response).await?;
        #[derive(Deserialize)]
        struct Count {
            input_tokens: u64,
        }
        serde_json::from_slice::<Count>(&body)
            .map(|count| count.input_tokens)
            .map_err(|e| ProviderError::invalid_response(format!("not a token count: {e}")))
    }
}

/// The Messages request for `model`: a Messages app's own request as it
/// came (same-family passthrough), or the translation of the chat request.
fn outbound(request: &ChatRequest, model: &str) -> Result<MessagesRequest, ProviderError> {
    match request.anthropic.as_deref() {
        Some(origin) => Ok(request::passthrough(&origin.request, request, model)),
        None => request::translate(request, model),
    }
}

/// Translates the upstream's SSE events as they arrive. The stream ends at
/// `message_stop`; a body that ends before it is an error, never a silent end.
fn relay_stream(response: UpstreamResponse, mut translator: StreamTranslator) -> ChunkStream {
    let mut events = Box::pin(sse::events(response.bytes_stream()));
    ChunkStream(
        stream! {
            while let Some(event) = events.next().await {
                match event.and_then(|event| translator.push(&event)) {
                    Ok(translated) => {
                        for item in translated {
                            yield Ok(item);
                        }
                    }
                    Err(error) => {
                        yield Err(error);
                        return;
                    }
                }
                if translator.is_done() {
                    return;
                }
            }
            if let Err(error) = translator.end() {
                yield Err(error);
            }
        }
        .boxed(),
    )
}

/// The `error` object of Anthropic's error body
/// (`{"type": "error", "error": {"type", "message"}}`) and `error` events.
#[derive(Debug, Default, Deserialize)]
struct ErrorDetail {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorDetail,
}

/// Classifies an error answer; Anthropic's error type is more precise than
/// its status.
fn error_from_body(status: u16, body: &[u8]) -> ProviderError {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(envelope) => classify(Some(status), &envelope.error),
        Err(_) => {
            ProviderError::from_status(status, format!("upstream answered {status}: {}", snippet(body)))
        }
    }
}

/// Classifies an error body or a stream's `error` event (no status).
fn classify(status: Option<u16>, error: &ErrorDetail) -> ProviderError {
    let message = if error.message.is_empty() {
        format!("upstream error {}", error.kind)
    } else {
        error.message.clone()
    };
    let base = match status {
        Some(status) => ProviderError::from_status(status, message),
        None => ProviderError::new(ErrorKind::ServerError, message),
    };
    let kind = match error.kind.as_str() {
        // 529 overloaded is capacity, like a rate limit: back off or fall back.
        "rate_limit_error" | "overloaded_error" => ErrorKind::RateLimit,
        "invalid_request_error" if is_prompt_too_long(&error.message) => ErrorKind::ContextWindowExceeded,
        "invalid_request_error" => ErrorKind::BadRequest,
        "authentication_error" | "permission_error" | "not_found_error" | "billing_error" => {
            ErrorKind::Rejected
        }
        "api_error" => ErrorKind::ServerError,
        "timeout_error" => ErrorKind::Timeout,
        _ => return base,
    };
    base.with_kind(kind)
}

/// Anthropic reports an over-long prompt as a plain `invalid_request_error`;
/// only the message tells it apart ("prompt is too long: 210000 tokens >
/// 200000 maximum", "input length and `max_tokens` exceed context limit").
fn is_prompt_too_long(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["prompt is too long", "exceed context limit", "context window"]
        .iter()
        .any(|needle| message.contains(needle))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn error_types_refine_the_status() {
        let body = |kind: &str, message: &str| {
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})
                .to_string()
        };
        let cases = [
            (
                429,
                body(
                    "rate_limit_error",
                    "Number of request tokens has exceeded your per-minute rate limit",
                ),
                ErrorKind::RateLimit,
            ),
            (529, body("overloaded_error", "Overloaded"), ErrorKind::RateLimit),
            (
                400,
                body(
                    "invalid_request_error",
                    "prompt is too long: 210000 tokens > 200000 maximum",
                ),
                ErrorKind::ContextWindowExceeded,
            ),
            (
                400,
                body(
                    "invalid_request_error",
                    "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000",
                ),
                ErrorKind::ContextWindowExceeded,
            ),
            (
                400,
                body("invalid_request_error", "messages: roles must alternate"),
                ErrorKind::BadRequest,
            ),
            (
                401,
                body("authentication_error", "invalid x-api-key"),
                ErrorKind::Rejected,
            ),
            (
                403,
                body("permission_error", "Your API key does not have permission"),
                ErrorKind::Rejected,
            ),
            (
                404,
                body("not_found_error", "model: claude-nope"),
                ErrorKind::Rejected,
            ),
            (
                500,
                body("api_error", "Internal server error"),
                ErrorKind::ServerError,
            ),
            (
                504,
                body("timeout_error", "Request timed out"),
                ErrorKind::Timeout,
            ),
            (502, "<html>bad gateway</html>".to_owned(), ErrorKind::ServerError),
        ];
        for (status, body, kind) in cases {
            let error = error_from_body(status, body.as_bytes());
            assert_eq!(error.kind, kind, "{body}");
            assert_eq!(error.status, Some(status));
        }
        let overloaded = error_from_body(529, body("overloaded_error", "Overloaded").as_bytes());
        assert_eq!(overloaded.message, "Overloaded");
    }

    #[test]
    fn an_error_event_without_status_is_classified_by_type() {
        let detail = ErrorDetail {
            kind: "api_error".into(),
            message: String::new(),
        };
        let error = classify(None, &detail);
        assert_eq!((error.kind, error.status), (ErrorKind::ServerError, None));
        assert!(error.message.contains("api_error"));
        let limited = classify(
            None,
            &ErrorDetail {
                kind: "rate_limit_error".into(),
                message: "slow".into(),
            },
        )
        .with_retry_after(Some(Duration::from_secs(3)));
        assert_eq!(limited.kind, ErrorKind::RateLimit);
    }
}
