//! OpenAI's Chat Completions and Embeddings APIs.
//!
//! Apps already speak this format, so the request is passed through with
//! only the model replaced (and, for streams, usage requested so it can be
//! counted). Azure OpenAI and OpenAI-compatible servers reuse this adapter
//! with their own endpoint and auth.

use std::sync::Arc;

use async_stream::stream;
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use llmesh_crds::config::{CredentialRef, Credentials, ProviderConfig};
use llmesh_crds::resources::ProviderKind;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::upstream::{Answer, UpstreamClient, UpstreamRequest, UpstreamResponse};
use super::{ChatReply, ChunkStream, Completed, Deps, ErrorKind, Provider, ProviderError, StreamEvent, sse};
use crate::api::Usage;
use crate::api::chat::{ChatRequest, StreamOptions, THINKING_BLOCKS};
use crate::api::embeddings::EmbeddingsRequest;
use crate::credentials::CredentialStore;

const PUBLIC_BASE_URL: &str = "https://api.openai.com/v1";

/// Where requests go: OpenAI-style paths, or Azure's deployment paths.
#[derive(Clone, Debug)]
pub(super) enum Endpoint {
    /// `{base}/chat/completions` and `{base}/embeddings`, parsed once.
    Plain {
        /// `{base}/chat/completions`.
        chat: http::Uri,
        /// `{base}/embeddings`.
        embeddings: http::Uri,
    },
    /// `{base}/openai/deployments/{deployment}/chat/completions?api-version=…`.
    Azure {
        /// The resource endpoint, `https://<name>.openai.azure.com`.
        base: String,
        /// `api-version`.
        api_version: String,
        /// Model → deployment.
        deployments: std::collections::BTreeMap<String, String>,
    },
}

/// The two operations an OpenAI-style upstream serves.
#[derive(Clone, Copy, Debug)]
enum Operation {
    Chat,
    Embeddings,
}

impl Operation {
    fn path(self) -> &'static str {
        match self {
            Self::Chat => "chat/completions",
            Self::Embeddings => "embeddings",
        }
    }
}

impl Endpoint {
    /// OpenAI-style paths under `base` (up to and including `/v1`).
    ///
    /// # Errors
    /// `base` is not a URL.
    pub(super) fn plain(base: &str) -> Result<Self, ProviderError> {
        let parse = |operation: Operation| parse_url(&format!("{base}/{}", operation.path()));
        Ok(Self::Plain {
            chat: parse(Operation::Chat)?,
            embeddings: parse(Operation::Embeddings)?,
        })
    }

    fn url(&self, model: &str, operation: Operation) -> Result<http::Uri, ProviderError> {
        match self {
            Self::Plain { chat, embeddings } => Ok(match operation {
                Operation::Chat => chat.clone(),
                Operation::Embeddings => embeddings.clone(),
            }),
            Self::Azure {
                base,
                api_version,
                deployments,
            } => {
                let deployment = deployments.get(model).map_or(model, String::as_str);
                let operation = operation.path();
                parse_url(&format!(
                    "{base}/openai/deployments/{deployment}/{operation}?api-version={api_version}"
                ))
            }
        }
    }
}

fn parse_url(url: &str) -> Result<http::Uri, ProviderError> {
    http::Uri::try_from(url)
        .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("invalid upstream URL {url}: {e}")))
}

/// How the API key is presented.
#[derive(Clone, Copy, Debug)]
pub(super) enum AuthStyle {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `api-key: <key>` (Azure).
    ApiKeyHeader,
}

/// An OpenAI-style upstream.
#[derive(Debug)]
pub struct OpenAi {
    kind: ProviderKind,
    endpoint: Endpoint,
    auth: Option<(AuthStyle, CredentialRef)>,
    headers: HeaderMap,
    client: UpstreamClient,
    credentials: Arc<CredentialStore>,
}

impl OpenAi {
    /// OpenAI itself.
    ///
    /// # Errors
    /// A configured header is not valid HTTP.
    pub fn new(config: &ProviderConfig, deps: &Deps) -> Result<Self, ProviderError> {
        let base = config
            .base_url
            .clone()
            .unwrap_or_else(|| PUBLIC_BASE_URL.to_owned());
        Self::with_endpoint(config, deps, Endpoint::plain(&base)?, AuthStyle::Bearer)
    }

    pub(super) fn with_endpoint(
        config: &ProviderConfig,
        deps: &Deps,
        endpoint: Endpoint,
        style: AuthStyle,
    ) -> Result<Self, ProviderError> {
        let auth = match &config.credentials {
            Credentials::ApiKey { api_key } => Some((style, api_key.clone())),
            Credentials::None | Credentials::Aws { .. } => None,
        };
        Ok(Self {
            kind: config.kind,
            endpoint,
            auth,
            headers: static_headers(&config.headers)?,
            client: deps.client.clone(),
            credentials: deps.credentials.clone(),
        })
    }

    fn request(&self, url: http::Uri) -> Result<UpstreamRequest, ProviderError> {
        let mut builder = self.client.post(url).headers(self.headers.clone());
        if let Some((style, reference)) = &self.auth {
            let key = self.credentials.resolve(reference)?;
            builder = match style {
                AuthStyle::Bearer => builder.bearer_auth(key.expose()),
                AuthStyle::ApiKeyHeader => builder.header("api-key", key.expose()),
            };
        }
        Ok(builder.header(http::header::CONTENT_TYPE, "application/json"))
    }

    async fn post(&self, url: http::Uri, body: Vec<u8>) -> Result<UpstreamResponse, ProviderError> {
        match self.client.send(self.request(url)?.body(body)).await? {
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
impl Provider for OpenAi {
    fn kind(&self) -> ProviderKind {
        self.kind
    }

    async fn chat(&self, request: &ChatRequest, model: &str) -> Result<ChatReply, ProviderError> {
        let mut outbound = request.clone();
        outbound.model = model.to_owned();
        // Anthropic's signed reasoning, carried back by apps that also use
        // Anthropic targets, means nothing to OpenAI's API.
        for message in &mut outbound.messages {
            message.extra.remove(THINKING_BLOCKS);
        }
        let stream = request.is_stream();
        if stream {
            let options = outbound.stream_options.get_or_insert_with(StreamOptions::default);
            options.include_usage = true;
        }
        let body = serde_json::to_vec(&outbound)
            .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("cannot encode request: {e}")))?;
        let response = self
            .post(self.endpoint.url(model, Operation::Chat)?, body)
            .await?;
        if stream {
            return Ok(ChatReply::Stream(relay_stream(
                response,
                request.wants_stream_usage(),
            )));
        }
        let body = UpstreamClient::body(response).await?;
        let usage = usage_of(&body)?;
        Ok(ChatReply::Complete(Completed { body, usage }))
    }

    async fn embeddings(&self, request: &EmbeddingsRequest, model: &str) -> Result<Completed, ProviderError> {
        let mut outbound = request.clone();
        outbound.model = model.to_owned();
        let body = serde_json::to_vec(&outbound)
            .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("cannot encode request: {e}")))?;
        let response = self
            .post(self.endpoint.url(model, Operation::Embeddings)?, body)
            .await?;
        let body = UpstreamClient::body(response).await?;
        let usage = usage_of(&body)?;
        Ok(Completed { body, usage })
    }
}

/// Parses configured static headers once, at build time.
///
/// # Errors
/// A name or value that is not valid HTTP.
pub(super) fn static_headers(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<HeaderMap, ProviderError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::try_from(name.as_str());
        let value = HeaderValue::try_from(value.as_str());
        match (name, value) {
            (Ok(name), Ok(value)) => {
                map.insert(name, value);
            }
            _ => {
                return Err(ProviderError::new(
                    ErrorKind::BadRequest,
                    "a configured header is not valid HTTP",
                ));
            }
        }
    }
    Ok(map)
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<Usage>,
}

/// The usage of a complete answer; the body itself is forwarded untouched.
fn usage_of(body: &[u8]) -> Result<Usage, ProviderError> {
    serde_json::from_slice::<UsageOnly>(body)
        .map(|u| u.usage.unwrap_or_default())
        .map_err(|e| ProviderError::invalid_response(format!("upstream answer is not valid JSON: {e}")))
}

/// OpenAI's error body: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) message: Option<String>,
    #[serde(default, rename = "type")]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) code: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

/// Classifies an OpenAI-style error answer; the code is more precise than the status.
pub(crate) fn error_from_body(status: u16, body: &[u8]) -> ProviderError {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(ErrorEnvelope { error }) => error_from_parts(Some(status), &error),
        Err(_) => {
            ProviderError::from_status(status, format!("upstream answered {status}: {}", snippet(body)))
        }
    }
}

fn error_from_parts(status: Option<u16>, error: &ErrorBody) -> ProviderError {
    let code = error.code.as_ref().and_then(|c| c.as_str()).unwrap_or_default();
    let message = error
        .message
        .clone()
        .unwrap_or_else(|| "upstream error".to_owned());
    let base = match status {
        Some(status) => ProviderError::from_status(status, message),
        None => ProviderError::new(ErrorKind::ServerError, message),
    };
    match (code, error.kind.as_deref()) {
        ("context_length_exceeded", _) => base.with_kind(ErrorKind::ContextWindowExceeded),
        ("content_filter" | "content_policy_violation", _) => base.with_kind(ErrorKind::ContentFilter),
        (_, Some("rate_limit_error")) | ("rate_limit_exceeded", _) => base.with_kind(ErrorKind::RateLimit),
        _ => base,
    }
}

/// A short, printable piece of an unexpected body for an error message.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[derive(Deserialize)]
struct ChunkPeek {
    #[serde(default)]
    choices: Vec<IgnoredAny>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// Relays an OpenAI SSE stream chunk by chunk, noting usage on the way. The
/// usage-only chunk llmesh asked for is forwarded only if the app asked too.
fn relay_stream(response: UpstreamResponse, app_wants_usage: bool) -> ChunkStream {
    let mut events = Box::pin(sse::events(response.bytes_stream()));
    ChunkStream(
        stream! {
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        yield Err(e);
                        return;
                    }
                };
                if event.data.trim() == "[DONE]" {
                    return;
                }
                let peek: ChunkPeek = match serde_json::from_str(&event.data) {
                    Ok(peek) => peek,
                    Err(e) => {
                        yield Err(ProviderError::invalid_response(format!("upstream sent a malformed chunk: {e}")));
                        return;
                    }
                };
                if let Some(error) = peek.error {
                    yield Err(error_from_parts(None, &error));
                    return;
                }
                let usage_only = peek.choices.is_empty() && peek.usage.is_some();
                if !usage_only || app_wants_usage {
                    yield Ok(StreamEvent::Chunk(event.data.into()));
                }
                if let Some(usage) = peek.usage {
                    yield Ok(StreamEvent::Usage(usage));
                }
            }
            yield Err(ProviderError::broken_answer("upstream stream ended before [DONE]"));
        }
        .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_refine_the_status() {
        let cases = [
            (
                400,
                r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
                ErrorKind::ContextWindowExceeded,
            ),
            (
                400,
                r#"{"error":{"message":"filtered","type":null,"code":"content_filter"}}"#,
                ErrorKind::ContentFilter,
            ),
            (
                429,
                r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
                ErrorKind::RateLimit,
            ),
            (500, r#"{"error":{"message":"oops"}}"#, ErrorKind::ServerError),
            (401, r#"{"error":{"message":"bad key"}}"#, ErrorKind::Rejected),
            (502, "<html>bad gateway</html>", ErrorKind::ServerError),
        ];
        for (status, body, kind) in cases {
            let error = error_from_body(status, body.as_bytes());
            assert_eq!(error.kind, kind, "{body}");
            assert_eq!(error.status, Some(status));
        }
    }

    #[test]
    fn azure_urls_use_the_deployment_and_api_version() {
        let endpoint = Endpoint::Azure {
            base: "https://x.openai.azure.com".into(),
            api_version: "2024-10-21".into(),
            deployments: [("gpt-4o".to_owned(), "prod-4o".to_owned())].into(),
        };
        assert_eq!(
            endpoint.url("gpt-4o", Operation::Chat).expect("url").to_string(),
            "https://x.openai.azure.com/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            endpoint
                .url("other", Operation::Embeddings)
                .expect("url")
                .to_string(),
            "https://x.openai.azure.com/openai/deployments/other/embeddings?api-version=2024-10-21"
        );
    }

    #[test]
    fn plain_urls_are_parsed_once_and_bad_bases_refused() {
        let endpoint = Endpoint::plain("http://127.0.0.1:8000/v1").expect("valid base");
        assert_eq!(
            endpoint.url("any", Operation::Chat).expect("url").to_string(),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(
            endpoint
                .url("any", Operation::Embeddings)
                .expect("url")
                .to_string(),
            "http://127.0.0.1:8000/v1/embeddings"
        );
        let error = Endpoint::plain("not a url").expect_err("no scheme");
        assert!(
            error.message.contains("invalid upstream URL"),
            "{}",
            error.message
        );
    }
}
