//! How an upstream failed, in classes routing and the HTTP edge understand.

use std::time::Duration;

use crate::credentials::MissingCredential;

/// The class of an upstream failure. Fallback rules and the HTTP status the
/// app sees both follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 429, or Anthropic's 529 overloaded.
    RateLimit,
    /// 5xx.
    ServerError,
    /// No answer in time.
    Timeout,
    /// The connection could not be made, or was refused or reset before
    /// any of the answer arrived.
    Connect,
    /// The prompt does not fit the model.
    ContextWindowExceeded,
    /// The provider refused the content.
    ContentFilter,
    /// The provider rejected the request as malformed (400, 422).
    BadRequest,
    /// The provider rejected llmesh's credential or the model name (401, 403, 404).
    Rejected,
    /// The provider's answer could not be understood.
    InvalidResponse,
    /// The answer began and then broke off: the connection dropped
    /// mid-body, or a stream ended before its final event.
    BrokenAnswer,
    /// The provider cannot do what was asked (embeddings on Anthropic).
    Unsupported,
}

impl ErrorKind {
    /// A short, fixed label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::RateLimit => "rate-limit",
            Self::ServerError => "server-error",
            Self::Timeout => "timeout",
            Self::Connect => "connect-error",
            Self::ContextWindowExceeded => "context-window-exceeded",
            Self::ContentFilter => "content-filter",
            Self::BadRequest => "bad-request",
            Self::Rejected => "rejected",
            Self::InvalidResponse => "invalid-response",
            Self::BrokenAnswer => "broken-answer",
            Self::Unsupported => "unsupported",
        }
    }

    /// Whether the failure is the target's, and may pass: worth a retry,
    /// and counted against the target's health. A rejected request, a
    /// content filter or a prompt too long for the model is not.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::RateLimit
                | Self::ServerError
                | Self::Timeout
                | Self::Connect
                | Self::InvalidResponse
                | Self::BrokenAnswer
        )
    }

    /// The class of an upstream HTTP error status.
    pub fn from_status(status: u16) -> Self {
        match status {
            429 | 529 => Self::RateLimit,
            408 => Self::Timeout,
            400 | 422 => Self::BadRequest,
            413 => Self::ContextWindowExceeded,
            s if s >= 500 => Self::ServerError,
            _ => Self::Rejected,
        }
    }
}

/// A credential the sidecar lacks: the provider rejects the request
/// without it, so it is handled as a rejection.
impl From<MissingCredential> for ProviderError {
    fn from(error: MissingCredential) -> Self {
        Self::new(ErrorKind::Rejected, error.to_string())
    }
}

/// One failed upstream call.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    /// The class.
    pub kind: ErrorKind,
    /// The upstream's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What happened, from the provider's error body where there was one.
    /// Never contains credentials.
    pub message: String,
    /// How long the provider asked callers to wait.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    /// A failure of the given class with no HTTP status.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// An error answer from the upstream.
    pub fn from_status(status: u16, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::from_status(status),
            status: Some(status),
            message: message.into(),
            retry_after: None,
        }
    }

    /// The provider cannot do this.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// The answer could not be understood.
    pub fn invalid_response(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidResponse, message)
    }

    /// The answer broke off after it began.
    pub fn broken_answer(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BrokenAnswer, message)
    }

    /// Replaces the class (a provider's error code is more precise than its status).
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Records the provider's requested wait.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }
}
