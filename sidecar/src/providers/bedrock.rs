//! Amazon Bedrock: chat through the Converse API, Titan and Cohere embeddings
//! through InvokeModel, every request signed with AWS Signature Version 4.
//!
//! The OpenAI ↔ Converse translation lives in [`request`], [`response`] and
//! [`stream`] (the event-stream state machine); this file holds what talks to
//! AWS: endpoints, signing, error classes and embeddings.

mod request;
mod response;
mod stream;

use std::sync::Arc;
use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderMap, HeaderName, HeaderValue};
use llmesh_crds::config::{CredentialRef, Credentials, ProviderConfig};
use llmesh_crds::resources::ProviderKind;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

pub use stream::{StreamSettings, StreamTranslator};

use super::openai::{snippet, static_headers};
use super::upstream::{Answer, UpstreamClient, UpstreamRequest, UpstreamResponse};
use super::{
    ChatReply, Completed, Deps, ErrorKind, Provider, ProviderError, check_encoding_format, estimate_tokens,
    to_json_bytes, unix_now,
};
use crate::api::Usage;
use crate::api::chat::ChatRequest;
use crate::api::embeddings::{EmbeddingsRequest, EmbeddingsResponse};
use crate::credentials::CredentialStore;

/// The SigV4 signing name of Bedrock Runtime (not `bedrock-runtime`).
const SIGNING_NAME: &str = "bedrock";

/// What ConverseStream answers with.
const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// The most texts Cohere Embed takes in one InvokeModel call.
const COHERE_BATCH: usize = 96;

/// Cohere's `input_type` when the app names none: embeddings stored for
/// search, the common use and the one a semantic cache makes.
const COHERE_INPUT_TYPE: &str = "search_document";

/// Characters a model id keeps in a URL path segment: RFC 3986's unreserved
/// set. Ids and ARNs carry `:` and `/`, which must not split the path.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where the AWS key pair (and optional session token) are kept.
#[derive(Clone, Debug)]
struct AwsCredentialRefs {
    access_key_id: CredentialRef,
    secret_access_key: CredentialRef,
    session_token: Option<CredentialRef>,
}

/// One Bedrock Runtime account in one region.
#[derive(Debug)]
pub struct Bedrock {
    base: String,
    region: String,
    credentials: AwsCredentialRefs,
    headers: HeaderMap,
    client: UpstreamClient,
    store: Arc<CredentialStore>,
}

impl Bedrock {
    /// Bedrock Runtime in `config.region`, at its public endpoint unless
    /// `config.base_url` says otherwise.
    ///
    /// # Errors
    /// No region or no AWS credentials (the compiler rejects both before
    /// they get here), or a configured header that is not valid HTTP.
    pub fn new(config: &ProviderConfig, deps: &Deps) -> Result<Self, ProviderError> {
        let region = config
            .region
            .clone()
            .ok_or_else(|| ProviderError::new(ErrorKind::Rejected, "provider bedrock needs an AWS region"))?;
        let Credentials::Aws {
            access_key_id,
            secret_access_key,
            session_token,
        } = &config.credentials
        else {
            return Err(ProviderError::new(
                ErrorKind::Rejected,
                "provider bedrock needs AWS credentials",
            ));
        };
        let base = config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("https://bedrock-runtime.{region}.amazonaws.com"));
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            region,
            credentials: AwsCredentialRefs {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.clone(),
                session_token: session_token.clone(),
            },
            headers: static_headers(&config.headers)?,
            client: deps.client.clone(),
            store: deps.credentials.clone(),
        })
    }

    /// `{base}/model/{model id, percent-encoded}/{operation}`.
    fn url(&self, model: &str, operation: &str) -> String {
        format!(
            "{}/model/{}/{operation}",
            self.base,
            utf8_percent_encode(model, PATH_SEGMENT)
        )
    }

    /// The current AWS identity; resolved per request so a rotated Secret
    /// takes effect without a restart.
    fn identity(&self) -> Result<Identity, ProviderError> {
        let access_key_id = self.store.resolve(&self.credentials.access_key_id)?;
        let secret_access_key = self.store.resolve(&self.credentials.secret_access_key)?;
        let session_token = match &self.credentials.session_token {
            Some(reference) => Some(self.store.resolve(reference)?.expose().to_owned()),
            None => None,
        };
        let credentials = aws_credential_types::Credentials::new(
            access_key_id.expose(),
            secret_access_key.expose(),
            session_token,
            None,
            "llmesh-secret",
        );
        Ok(credentials.into())
    }

    /// A POST of `body` to `url`, with the static headers, signed.
    fn signed_post(&self, url: &str, body: Vec<u8>, accept: &str) -> Result<UpstreamRequest, ProviderError> {
        let mut headers = self.headers.clone();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_str(accept).map_err(|_| signing_error("accept"))?,
        );
        let identity = self.identity()?;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SIGNING_NAME)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| signing_error(&e.to_string()))?
            .into();
        // Header values that are not visible ASCII cannot be signed; AWS
        // accepts unsigned extra headers, so they travel unsigned.
        let signable_headers = headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        let signable = SignableRequest::new("POST", url, signable_headers, SignableBody::Bytes(&body))
            .map_err(|e| signing_error(&e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| signing_error(&e.to_string()))?
            .into_parts();
        let (signature_headers, _query) = instructions.into_parts();
        for header in signature_headers {
            let name =
                HeaderName::from_bytes(header.name().as_bytes()).map_err(|_| signing_error(header.name()))?;
            let value = HeaderValue::from_str(header.value()).map_err(|_| signing_error(header.name()))?;
            headers.insert(name, value);
        }
        Ok(self.client.post(url).headers(headers).body(body))
    }

    async fn post(&self, url: &str, body: Vec<u8>, accept: &str) -> Result<UpstreamResponse, ProviderError> {
        match self.client.send(self.signed_post(url, body, accept)?).await? {
            Answer::Success(response) => Ok(response),
            Answer::Failure {
                status,
                retry_after,
                body,
            } => Err(error_from_body(status, &body).with_retry_after(retry_after)),
        }
    }
}

/// Signing failed: the credential values cannot form a signature. The
/// message names what failed, never a value.
fn signing_error(what: &str) -> ProviderError {
    ProviderError::new(
        ErrorKind::Rejected,
        format!("cannot sign the Bedrock request: {what}"),
    )
}

/// The response id for the app: Bedrock's request id when it sent one.
fn response_id(response: &UpstreamResponse) -> String {
    let request_id = response
        .headers()
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok());
    match request_id {
        Some(id) => format!("chatcmpl-{id}"),
        None => format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
    }
}

#[async_trait::async_trait]
impl Provider for Bedrock {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bedrock
    }

    async fn chat(&self, request: &ChatRequest, model: &str) -> Result<ChatReply, ProviderError> {
        let translated = request::translate(request)?;
        let body = serde_json::to_vec(&translated.body)
            .map_err(|e| ProviderError::new(ErrorKind::BadRequest, format!("cannot encode request: {e}")))?;
        if request.is_stream() {
            let response = self
                .post(&self.url(model, "converse-stream"), body, EVENT_STREAM)
                .await?;
            let settings = StreamSettings {
                id: response_id(&response),
                created: unix_now(),
                model: model.to_owned(),
                include_usage: request.wants_stream_usage(),
                json_tool: translated.json_tool,
            };
            return Ok(ChatReply::Stream(stream::relay(
                response,
                StreamTranslator::new(settings),
            )));
        }
        let response = self
            .post(&self.url(model, "converse"), body, "application/json")
            .await?;
        let id = response_id(&response);
        let body = UpstreamClient::body(response).await?;
        let (answer, usage) = response::translate(&body, &id, model, translated.json_tool.as_deref())?;
        Ok(ChatReply::Complete(Completed {
            body: to_json_bytes(&answer),
            usage,
        }))
    }

    /// Titan (one InvokeModel call per input) or Cohere (up to 96 inputs a
    /// call) embeddings, by the family the model id names.
    async fn embeddings(&self, request: &EmbeddingsRequest, model: &str) -> Result<Completed, ProviderError> {
        let family = EmbeddingFamily::of(model)?;
        let texts = request
            .input
            .texts()
            .ok_or_else(|| ProviderError::unsupported("Bedrock embeddings take text, not token ids"))?;
        check_encoding_format(request)?;
        let (vectors, tokens) = match family {
            EmbeddingFamily::Titan => self.titan_embeddings(&texts, request, model).await?,
            EmbeddingFamily::Cohere => self.cohere_embeddings(&texts, request, model).await?,
        };
        let answer = EmbeddingsResponse::new(model, vectors, tokens);
        Ok(Completed {
            body: to_json_bytes(&answer.to_json(request.encoding_format.as_deref())),
            usage: Usage::new(tokens, 0, 0, 0, 0),
        })
    }
}

/// The embedding models InvokeModel serves that llmesh can call; each takes
/// its own body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EmbeddingFamily {
    /// Amazon Titan Text Embeddings: `inputText`, one text a call.
    Titan,
    /// Cohere Embed v3 and v4: `texts` and `input_type`.
    Cohere,
}

impl EmbeddingFamily {
    /// The family a model id (or the model part of an ARN) names.
    ///
    /// # Errors
    /// `Unsupported` for a model of another family, before any call, since
    /// Bedrock would refuse the body with a 400 that names no cause.
    fn of(model: &str) -> Result<Self, ProviderError> {
        let id = model.rsplit('/').next().unwrap_or(model);
        if id.contains("cohere.embed") {
            Ok(Self::Cohere)
        } else if id.contains("titan-embed") || !id.contains('.') {
            // An application inference profile or provisioned-throughput
            // ARN ends in an opaque id that hides the model: Titan, as
            // before Cohere was supported.
            Ok(Self::Titan)
        } else {
            Err(ProviderError::unsupported(format!(
                "Bedrock embeddings support Amazon Titan (amazon.titan-embed-*) and Cohere Embed (cohere.embed-*) models, not {model}"
            )))
        }
    }
}

impl Bedrock {
    async fn titan_embeddings(
        &self,
        texts: &[&str],
        request: &EmbeddingsRequest,
        model: &str,
    ) -> Result<(Vec<Vec<f32>>, u64), ProviderError> {
        let url = self.url(model, "invoke");
        let mut vectors = Vec::with_capacity(texts.len());
        let mut tokens: u64 = 0;
        for text in texts {
            let mut body = serde_json::json!({ "inputText": text });
            if let Some(dimensions) = request.dimensions {
                body["dimensions"] = dimensions.into();
            }
            let response = self
                .post(&url, body.to_string().into_bytes(), "application/json")
                .await?;
            let answer: TitanEmbedding = read_embedding(response).await?;
            tokens = tokens.saturating_add(answer.input_text_token_count);
            vectors.push(answer.embedding);
        }
        Ok((vectors, tokens))
    }

    /// Cohere Embed: `input_type` from the app's `input_type` field (a Cohere
    /// extension), `search_document` otherwise; `dimensions` becomes Embed
    /// v4's `output_dimension`.
    async fn cohere_embeddings(
        &self,
        texts: &[&str],
        request: &EmbeddingsRequest,
        model: &str,
    ) -> Result<(Vec<Vec<f32>>, u64), ProviderError> {
        if request.dimensions.is_some() && !model.contains("embed-v4") {
            return Err(ProviderError::unsupported(
                "Cohere Embed v3 on Bedrock cannot honour dimensions (Embed v4 can)",
            ));
        }
        let input_type = request
            .extra
            .get("input_type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(COHERE_INPUT_TYPE);
        let url = self.url(model, "invoke");
        let mut vectors = Vec::with_capacity(texts.len());
        let mut tokens: u64 = 0;
        for batch in texts.chunks(COHERE_BATCH) {
            // Asking for float vectors by type gives v3 and v4 one answer shape.
            let mut body = serde_json::json!({
                "texts": batch, "input_type": input_type, "embedding_types": ["float"]
            });
            if let Some(dimensions) = request.dimensions {
                body["output_dimension"] = dimensions.into();
            }
            let response = self
                .post(&url, body.to_string().into_bytes(), "application/json")
                .await?;
            // Cohere's body carries no token count; InvokeModel's header does.
            let counted = response
                .headers()
                .get("x-amzn-bedrock-input-token-count")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let answer: CohereEmbeddings = read_embedding(response).await?;
            let batch_vectors = answer.embeddings.float;
            if batch_vectors.len() != batch.len() {
                return Err(ProviderError::invalid_response(format!(
                    "Bedrock sent {} embeddings for {} texts",
                    batch_vectors.len(),
                    batch.len()
                )));
            }
            let batch_tokens = counted.unwrap_or_else(|| batch.iter().map(|t| estimate_tokens(t)).sum());
            tokens = tokens.saturating_add(batch_tokens);
            vectors.extend(batch_vectors);
        }
        Ok((vectors, tokens))
    }
}

async fn read_embedding<T: serde::de::DeserializeOwned>(
    response: UpstreamResponse,
) -> Result<T, ProviderError> {
    serde_json::from_slice(&UpstreamClient::body(response).await?)
        .map_err(|e| ProviderError::invalid_response(format!("Bedrock sent an unreadable embedding: {e}")))
}

/// Titan's InvokeModel answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanEmbedding {
    embedding: Vec<f32>,
    #[serde(default)]
    input_text_token_count: u64,
}

/// Cohere's InvokeModel answer when float vectors are asked for by type.
#[derive(Deserialize)]
struct CohereEmbeddings {
    embeddings: CohereVectors,
}

#[derive(Deserialize)]
struct CohereVectors {
    float: Vec<Vec<f32>>,
}

/// Bedrock's error body: `{"message": …}` (some AWS front ends spell it `Message`).
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(alias = "Message")]
    message: Option<String>,
}

/// Classifies an error answer by its status and message.
///
/// Bedrock names the error type in the `x-amzn-errortype` header, but the
/// shared client's `Answer::Failure` keeps no headers; Bedrock's statuses map
/// one-to-one onto its types except `ModelNotReadyException`, which shares
/// 429 with throttling and is classed as a rate limit here.
fn error_from_body(status: u16, body: &[u8]) -> ProviderError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.message)
        .unwrap_or_else(|| snippet(body));
    let kind = match status {
        400 => validation_kind(&message),
        // ModelErrorException: the model itself failed.
        424 => ErrorKind::ServerError,
        _ => ErrorKind::from_status(status),
    };
    ProviderError::from_status(status, format!("Bedrock answered {status}: {message}")).with_kind(kind)
}

/// The class of an exception named in a stream's `:exception-type` header.
fn exception_kind(exception_type: &str, message: &str) -> ErrorKind {
    // The stream spells types in camelCase, HTTP errors in PascalCase.
    let mut name = exception_type.to_owned();
    if let Some(first) = name.get_mut(..1) {
        first.make_ascii_lowercase();
    }
    match name.as_str() {
        "throttlingException" => ErrorKind::RateLimit,
        "validationException" => validation_kind(message),
        "modelTimeoutException" => ErrorKind::Timeout,
        "accessDeniedException" | "unrecognizedClientException" | "resourceNotFoundException" => {
            ErrorKind::Rejected
        }
        _ => ErrorKind::ServerError,
    }
}

/// A validation error is a context-window error when its message says the
/// input is too long (Bedrock has no separate type for it).
fn validation_kind(message: &str) -> ErrorKind {
    let message = message.to_ascii_lowercase();
    let too_long = [
        "input is too long",
        "too many input tokens",
        "prompt is too long",
        "context length",
        "context window",
    ];
    if too_long.iter().any(|phrase| message.contains(phrase)) {
        ErrorKind::ContextWindowExceeded
    } else {
        ErrorKind::BadRequest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_and_arns_stay_one_path_segment() {
        let id = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0";
        let encoded = utf8_percent_encode(id, PATH_SEGMENT).to_string();
        assert_eq!(
            encoded,
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-haiku-20241022-v1%3A0"
        );
    }

    #[test]
    fn embedding_families_are_read_from_the_model_id() {
        use EmbeddingFamily::{Cohere, Titan};
        for (model, family) in [
            ("amazon.titan-embed-text-v2:0", Some(Titan)),
            ("cohere.embed-english-v3", Some(Cohere)),
            ("us.cohere.embed-v4:0", Some(Cohere)),
            (
                "arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-multilingual-v3",
                Some(Cohere),
            ),
            (
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3d4e5f6",
                Some(Titan),
            ),
            ("amazon.nova-2-multimodal-embeddings-v1:0", None),
            ("twelvelabs.marengo-embed-2-7-v1:0", None),
        ] {
            match EmbeddingFamily::of(model) {
                Ok(found) => assert_eq!(Some(found), family, "{model}"),
                Err(error) => {
                    assert_eq!(family, None, "{model}");
                    assert_eq!(error.kind, ErrorKind::Unsupported);
                    assert!(error.message.contains("Titan") && error.message.contains("Cohere"));
                }
            }
        }
    }

    #[test]
    fn http_errors_are_classified_by_status_and_message() {
        let cases = [
            (
                429,
                r#"{"message":"Too many requests, please wait before trying again."}"#,
                ErrorKind::RateLimit,
            ),
            (
                400,
                r#"{"message":"Input is too long for requested model."}"#,
                ErrorKind::ContextWindowExceeded,
            ),
            (
                400,
                r#"{"message":"Malformed input request: extraneous key [foo]"}"#,
                ErrorKind::BadRequest,
            ),
            (
                403,
                r#"{"Message":"The security token included in the request is invalid."}"#,
                ErrorKind::Rejected,
            ),
            (
                503,
                r#"{"message":"Bedrock is unable to process your request."}"#,
                ErrorKind::ServerError,
            ),
            (
                424,
                r#"{"message":"The model returned an error."}"#,
                ErrorKind::ServerError,
            ),
            (
                408,
                r#"{"message":"Model has timed out in processing the request."}"#,
                ErrorKind::Timeout,
            ),
            (500, "<html>oops</html>", ErrorKind::ServerError),
        ];
        for (status, body, kind) in cases {
            let error = error_from_body(status, body.as_bytes());
            assert_eq!(error.kind, kind, "{body}");
            assert_eq!(error.status, Some(status));
        }
        let error = error_from_body(
            403,
            br#"{"Message":"The security token included in the request is invalid."}"#,
        );
        assert!(
            error
                .message
                .contains("security token included in the request is invalid"),
            "{}",
            error.message
        );
    }

    #[test]
    fn stream_exceptions_are_classified_by_type() {
        let cases = [
            ("throttlingException", "slow down", ErrorKind::RateLimit),
            ("serviceUnavailableException", "busy", ErrorKind::ServerError),
            ("internalServerException", "oops", ErrorKind::ServerError),
            ("modelStreamErrorException", "model broke", ErrorKind::ServerError),
            (
                "validationException",
                "Input is too long for requested model.",
                ErrorKind::ContextWindowExceeded,
            ),
            ("ValidationException", "bad field", ErrorKind::BadRequest),
            ("modelTimeoutException", "slow model", ErrorKind::Timeout),
        ];
        for (kind_name, message, kind) in cases {
            assert_eq!(exception_kind(kind_name, message), kind, "{kind_name}");
        }
    }
}
