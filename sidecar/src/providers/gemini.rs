//! Google's Gemini API (`generateContent`, `streamGenerateContent`, `batchEmbedContents`).
//!
//! The app's OpenAI request is translated into Gemini's (`request`, with tool
//! schemas rewritten into Gemini's dialect by `schema`), and the answer back
//! (`response`, and `stream` for server-sent events). Errors arrive in
//! Google's `{"error": {"code", "message", "status"}}` shape and are
//! classified by their canonical status.

mod request;
mod response;
mod schema;
mod stream;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_stream::stream;
use futures::StreamExt;
use http::HeaderMap;
use llmesh_crds::config::{CredentialRef, Credentials, ProviderConfig};
use llmesh_crds::resources::ProviderKind;
use serde::Deserialize;

pub use self::stream::StreamTranslator;
use self::wire::{BatchEmbedRequest, BatchEmbedResponse, Content, EmbedRequest, GoogleError, Part};
use super::openai::{snippet, static_headers};
use super::upstream::{Answer, UpstreamClient, UpstreamResponse};
use super::{
    ChatReply, ChunkStream, Completed, Deps, ErrorKind, Provider, ProviderError, check_encoding_format,
    estimate_tokens, sse, to_json_bytes, unix_now,
};
use crate::api::Usage;
use crate::api::chat::ChatRequest;
use crate::api::embeddings::{EmbeddingsRequest, EmbeddingsResponse};
use crate::credentials::CredentialStore;

const PUBLIC_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// The header Google reads API keys from (kept out of URLs, which get logged).
const API_KEY_HEADER: &str = "x-goog-api-key";

/// A Gemini API account.
#[derive(Debug)]
pub struct Gemini {
    base: String,
    api_key: Option<CredentialRef>,
    headers: HeaderMap,
    client: UpstreamClient,
    credentials: Arc<CredentialStore>,
}

impl Gemini {
    /// Builds the adapter for one `ProviderSecret`.
    ///
    /// # Errors
    /// A configured header is not valid HTTP.
    pub fn new(config: &ProviderConfig, deps: &Deps) -> Result<Self, ProviderError> {
        let base = config
            .base_url
            .as_deref()
            .unwrap_or(PUBLIC_BASE_URL)
            .trim_end_matches('/')
            .to_owned();
        let api_key = match &config.credentials {
            Credentials::ApiKey { api_key } => Some(api_key.clone()),
            Credentials::None | Credentials::Aws { .. } => None,
        };
        Ok(Self {
            base,
            api_key,
            headers: static_headers(&config.headers)?,
            client: deps.client.clone(),
            credentials: deps.credentials.clone(),
        })
    }

    /// `{base}/v1beta/{models/…}:{method}`.
    fn url(&self, model: &str, method: &str) -> String {
        format!("{}/v1beta/{}:{method}", self.base, model_resource(model))
    }

    async fn post(&self, url: &str, body: Vec<u8>) -> Result<UpstreamResponse, ProviderError> {
        let mut builder = self.client.post(url).headers(self.headers.clone());
        if let Some(reference) = &self.api_key {
            builder = builder.header(API_KEY_HEADER, self.credentials.resolve(reference)?.expose());
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
            } => Err(error_from_body(status, retry_after, &body)),
        }
    }
}

/// The model's resource name: tuned models are `tunedModels/…`, the rest `models/…`.
fn model_resource(model: &str) -> String {
    if model.starts_with("models/") || model.starts_with("tunedModels/") {
        model.to_owned()
    } else {
        format!("models/{model}")
    }
}

fn encode<T: serde::Serialize>(body: &T) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec(body)
        .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("cannot encode request: {e}")))
}

#[async_trait::async_trait]
impl Provider for Gemini {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Gemini
    }

    async fn chat(&self, request: &ChatRequest, model: &str) -> Result<ChatReply, ProviderError> {
        let body = encode(&request::translate(request)?)?;
        let fallback_id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
        let created = unix_now();
        if request.is_stream() {
            let response = self
                .post(
                    &format!("{}?alt=sse", self.url(model, "streamGenerateContent")),
                    body,
                )
                .await?;
            let translator = StreamTranslator::new(fallback_id, created, model, request.wants_stream_usage());
            return Ok(ChatReply::Stream(translate_stream(response, translator)));
        }
        let response = self.post(&self.url(model, "generateContent"), body).await?;
        let body = UpstreamClient::body(response).await?;
        response::complete(&body, model, &fallback_id, created).map(ChatReply::Complete)
    }

    async fn embeddings(&self, request: &EmbeddingsRequest, model: &str) -> Result<Completed, ProviderError> {
        let texts = request.input.texts().ok_or_else(|| {
            ProviderError::unsupported("Gemini embeds text only; token-array `input` cannot be translated")
        })?;
        check_encoding_format(request)?;
        let resource = model_resource(model);
        let batch = BatchEmbedRequest {
            requests: texts
                .iter()
                .map(|text| EmbedRequest {
                    model: resource.clone(),
                    content: Content {
                        role: None,
                        parts: vec![Part::text(*text)],
                    },
                    output_dimensionality: request.dimensions,
                })
                .collect(),
        };
        let response = self
            .post(&self.url(model, "batchEmbedContents"), encode(&batch)?)
            .await?;
        let body = UpstreamClient::body(response).await?;
        let answer: BatchEmbedResponse = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::invalid_response(format!("Gemini sent embeddings that are not valid: {e}"))
        })?;
        if answer.embeddings.len() != texts.len() {
            return Err(ProviderError::invalid_response(format!(
                "Gemini sent {} embeddings for {} inputs",
                answer.embeddings.len(),
                texts.len()
            )));
        }
        let tokens = texts.iter().map(|t| estimate_tokens(t)).sum();
        let vectors = answer.embeddings.into_iter().map(|e| e.values).collect();
        let body = EmbeddingsResponse::new(model, vectors, tokens);
        Ok(Completed {
            body: to_json_bytes(&body.to_json(request.encoding_format.as_deref())),
            usage: Usage::new(tokens, 0, 0, 0, 0),
        })
    }
}

fn translate_stream(response: UpstreamResponse, mut translator: StreamTranslator) -> ChunkStream {
    let mut events = Box::pin(sse::events(response.bytes_stream()));
    ChunkStream(
        stream! {
            while let Some(event) = events.next().await {
                match event.and_then(|event| translator.push(&event.data)) {
                    Ok(chunks) => {
                        for chunk in chunks {
                            yield Ok(chunk);
                        }
                    }
                    Err(error) => {
                        yield Err(error);
                        return;
                    }
                }
            }
            match translator.finish() {
                Ok(last) => {
                    for event in last {
                        yield Ok(event);
                    }
                }
                Err(error) => yield Err(error),
            }
        }
        .boxed(),
    )
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: GoogleError,
}

/// Classifies an error answer. `retry_after` is the header's; Google usually
/// sends the wait in the body's `RetryInfo` instead, which is used then.
fn error_from_body(status: u16, retry_after: Option<Duration>, body: &[u8]) -> ProviderError {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(ErrorEnvelope { error }) => {
            let retry_after = retry_after.or_else(|| retry_delay(&error));
            error_from_google(Some(status), &error).with_retry_after(retry_after)
        }
        Err(_) => ProviderError::from_status(status, format!("Gemini answered {status}: {}", snippet(body)))
            .with_retry_after(retry_after),
    }
}

/// Classifies Google's error object; `status` is the HTTP status when there
/// was one (a mid-stream error has none).
fn error_from_google(status: Option<u16>, error: &GoogleError) -> ProviderError {
    let message = error
        .message
        .clone()
        .unwrap_or_else(|| "Gemini reported an error".to_owned());
    let base = match status {
        Some(status) => ProviderError::from_status(status, message.clone()),
        None => ProviderError::new(
            error.code.map_or(ErrorKind::ServerError, ErrorKind::from_status),
            message.clone(),
        ),
    };
    let kind = match error.status.as_deref().unwrap_or_default() {
        "RESOURCE_EXHAUSTED" => ErrorKind::RateLimit,
        "UNAVAILABLE" | "INTERNAL" => ErrorKind::ServerError,
        "DEADLINE_EXCEEDED" => ErrorKind::Timeout,
        // A bad key is INVALID_ARGUMENT too, but it is llmesh's credential, not the app's request.
        "INVALID_ARGUMENT" if has_reason(error, "API_KEY_INVALID") => ErrorKind::Rejected,
        "INVALID_ARGUMENT" if exceeds_token_limit(&message) => ErrorKind::ContextWindowExceeded,
        "INVALID_ARGUMENT" => ErrorKind::BadRequest,
        // The account or its region cannot use this model: the request itself is fine.
        "PERMISSION_DENIED" | "UNAUTHENTICATED" | "FAILED_PRECONDITION" => ErrorKind::Rejected,
        _ => base.kind,
    };
    base.with_kind(kind)
}

/// Gemini's wording for a prompt over the model's context window:
/// "The input token count (1200293) exceeds the maximum number of tokens allowed (1048576)."
fn exceeds_token_limit(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("exceeds the maximum number of tokens") || message.contains("input token count")
}

/// Whether a `google.rpc.ErrorInfo` detail gives this reason.
fn has_reason(error: &GoogleError, reason: &str) -> bool {
    error
        .details
        .iter()
        .any(|d| d.get("reason").and_then(|r| r.as_str()) == Some(reason))
}

/// The wait from a `google.rpc.RetryInfo` detail: `{"retryDelay": "39s"}`.
fn retry_delay(error: &GoogleError) -> Option<Duration> {
    error.details.iter().find_map(|detail| {
        let delay = detail.get("retryDelay")?.as_str()?.strip_suffix('s')?;
        Duration::try_from_secs_f64(delay.parse().ok()?).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &str) -> ProviderError {
        error_from_body(status, None, body.as_bytes())
    }

    #[test]
    fn google_statuses_decide_the_class() {
        let cases = [
            (
                429,
                r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
                ErrorKind::RateLimit,
            ),
            (
                503,
                r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
                ErrorKind::ServerError,
            ),
            (
                500,
                r#"{"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}"#,
                ErrorKind::ServerError,
            ),
            (
                504,
                r#"{"error":{"code":504,"message":"Deadline expired","status":"DEADLINE_EXCEEDED"}}"#,
                ErrorKind::Timeout,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"The input token count (1200293) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
                ErrorKind::ContextWindowExceeded,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"foo\"","status":"INVALID_ARGUMENT"}}"#,
                ErrorKind::BadRequest,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
                ErrorKind::Rejected,
            ),
            (
                403,
                r#"{"error":{"code":403,"message":"Method doesn't allow unregistered callers","status":"PERMISSION_DENIED"}}"#,
                ErrorKind::Rejected,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"User location is not supported for the API use.","status":"FAILED_PRECONDITION"}}"#,
                ErrorKind::Rejected,
            ),
            (
                404,
                r#"{"error":{"code":404,"message":"models/gemini-9 is not found","status":"NOT_FOUND"}}"#,
                ErrorKind::Rejected,
            ),
            (502, "<html>Bad Gateway</html>", ErrorKind::ServerError),
        ];
        for (status, body, kind) in cases {
            let error = classify(status, body);
            assert_eq!(error.kind, kind, "{body}");
            assert_eq!(error.status, Some(status));
        }
    }

    #[test]
    fn the_wait_comes_from_the_header_or_else_retry_info() {
        let body = r#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED",
            "details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]},
                       {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"39.5s"}]}}"#;
        assert_eq!(
            classify(429, body).retry_after,
            Some(Duration::from_millis(39_500))
        );
        let header = error_from_body(429, Some(Duration::from_secs(2)), body.as_bytes());
        assert_eq!(header.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(
            classify(429, r#"{"error":{"status":"RESOURCE_EXHAUSTED"}}"#).retry_after,
            None
        );
    }

    #[test]
    fn a_mid_stream_error_without_http_status_is_still_classified() {
        let error = GoogleError {
            status: Some("RESOURCE_EXHAUSTED".into()),
            ..GoogleError::default()
        };
        assert_eq!(error_from_google(None, &error).kind, ErrorKind::RateLimit);
        assert_eq!(
            error_from_google(None, &GoogleError::default()).kind,
            ErrorKind::ServerError
        );
    }

    #[test]
    fn urls_name_the_model_resource() {
        assert_eq!(model_resource("gemini-2.5-flash"), "models/gemini-2.5-flash");
        assert_eq!(
            model_resource("tunedModels/my-model-123"),
            "tunedModels/my-model-123"
        );
        assert_eq!(estimate_tokens("hello world!"), 3);
        assert_eq!(estimate_tokens(""), 0);
    }
}
