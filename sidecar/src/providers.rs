//! Provider adapters: one file per upstream API, all behind [`Provider`].
//!
//! An adapter translates the app's OpenAI-shaped request into its provider's
//! wire format, and the provider's answer, stream events, token usage and
//! errors back. Everything else (routing, timeouts, accounting) happens
//! outside, once, for all of them.

pub mod anthropic;
pub mod azure_openai;
pub mod bedrock;
pub mod gemini;
pub mod mock;
pub mod openai;
pub mod openai_compatible;
pub mod sse;

mod error;
mod upstream;

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use llmesh_crds::config::ProviderConfig;
use llmesh_crds::resources::ProviderKind;

pub use error::{ErrorKind, ProviderError};
pub use upstream::{Answer, UpstreamClient, UpstreamSettings, client_tls};

use crate::api::Usage;
use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::credentials::CredentialStore;
use crate::drills::Drills;

/// One upstream API.
#[async_trait::async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    /// Which API this is (for headers, logs and metrics).
    fn kind(&self) -> ProviderKind;

    /// Sends a chat request to `model`.
    ///
    /// For a streaming request the returned stream yields OpenAI chunks as
    /// the upstream produces them; nothing is buffered whole.
    ///
    /// # Errors
    /// The upstream failed or answered with an error, classified.
    async fn chat(&self, request: &ChatRequest, model: &str) -> Result<ChatReply, ProviderError>;

    /// The input tokens of `request` for `model`, as the provider counts them.
    ///
    /// # Errors
    /// The provider has no token-counting API, or it failed.
    async fn count_tokens(&self, request: &ChatRequest, model: &str) -> Result<u64, ProviderError> {
        let _ = (request, model);
        Err(ProviderError::unsupported(format!(
            "provider {} has no token-counting API",
            self.kind().as_str()
        )))
    }

    /// Embeds the request's inputs with `model`.
    ///
    /// # Errors
    /// The upstream failed, or the provider has no embeddings API.
    async fn embeddings(&self, request: &EmbeddingsRequest, model: &str) -> Result<Completed, ProviderError> {
        let _ = (request, model);
        Err(ProviderError::unsupported(format!(
            "provider {} has no embeddings API",
            self.kind().as_str()
        )))
    }
}

/// A provider's answer to a chat request.
#[derive(Debug)]
pub enum ChatReply {
    /// The whole answer.
    Complete(Completed),
    /// A stream of chunks.
    Stream(ChunkStream),
}

/// A complete answer, already in OpenAI's JSON shape.
#[derive(Clone, Debug)]
pub struct Completed {
    /// The response body for the app.
    pub body: Bytes,
    /// Token counts.
    pub usage: Usage,
}

/// What a stream yields.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// One `chat.completion.chunk` as JSON, to forward to the app.
    Chunk(Bytes),
    /// Token counts, for accounting; forwarded only as part of a chunk.
    Usage(Usage),
}

/// A stream of chunks; an error ends it.
pub struct ChunkStream(pub BoxStream<'static, Result<StreamEvent, ProviderError>>);

impl std::fmt::Debug for ChunkStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkStream")
    }
}

/// What adapters share across reloads.
#[derive(Clone, Debug)]
pub struct Deps {
    /// Outbound HTTP.
    pub client: UpstreamClient,
    /// Provider credentials.
    pub credentials: Arc<CredentialStore>,
    /// Runtime fault overrides for mock providers.
    pub drills: Arc<Drills>,
}

/// Builds the adapter for one configured provider account.
///
/// # Errors
/// The configuration cannot be served (a header that is not valid HTTP).
pub fn build(name: &str, config: &ProviderConfig, deps: &Deps) -> Result<Arc<dyn Provider>, ProviderError> {
    let provider: Arc<dyn Provider> = match config.kind {
        ProviderKind::Openai => Arc::new(openai::OpenAi::new(config, deps)?),
        ProviderKind::OpenaiCompatible => Arc::new(openai_compatible::new(config, deps)?),
        ProviderKind::AzureOpenai => Arc::new(azure_openai::new(config, deps)?),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(config, deps)?),
        ProviderKind::Gemini => Arc::new(gemini::Gemini::new(config, deps)?),
        ProviderKind::Bedrock => Arc::new(bedrock::Bedrock::new(config, deps)?),
        ProviderKind::Mock => Arc::new(mock::Mock::new(name, config, deps.drills.clone())),
    };
    Ok(provider)
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Refuses an `encoding_format` that llmesh cannot produce for providers
/// whose embeddings it re-encodes in OpenAI's shape.
///
/// # Errors
/// Anything but `float` or `base64`.
pub fn check_encoding_format(request: &EmbeddingsRequest) -> Result<(), ProviderError> {
    match request.encoding_format.as_deref() {
        None | Some("float" | "base64") => Ok(()),
        Some(_) => Err(ProviderError::unsupported(
            "`encoding_format` must be float or base64",
        )),
    }
}

/// Tokens in an embeddings input whose answer carries no count (Gemini's;
/// Bedrock Cohere's without its token-count header), since budgets and
/// metrics need one. One token per four characters, rounded up per input:
/// the rule of thumb Google and Cohere give for English text; a word count
/// would undercount code and unspaced scripts more.
pub fn estimate_tokens(text: &str) -> u64 {
    u64::try_from(text.chars().count().div_ceil(4)).unwrap_or(u64::MAX)
}

/// Serializes an OpenAI object that cannot fail to serialize (plain structs
/// with string keys).
pub fn to_json_bytes<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}
