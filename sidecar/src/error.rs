//! Every way a request can fail, as the app sees it, and the one place
//! where failures become OpenAI-shaped HTTP responses.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::Serialize;

use crate::auth::AuthError;
use crate::budget::BudgetError;
use crate::cache::InvalidDirective;
use crate::guardrails::Blocked;
use crate::limits::RateLimited;
use crate::providers::{ErrorKind, ProviderError};
use crate::routing::RouteError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not the JSON the endpoint takes.
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    /// A llmesh request header has a value that cannot be used.
    #[error("header {name}: {reason}")]
    InvalidHeader {
        /// The header.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The client did not send its whole body in time.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    /// The sidecar is serving as many requests as it may at once.
    #[error("this gateway is serving its limit of {limit} concurrent requests; retry shortly")]
    Overloaded {
        /// The cap.
        limit: usize,
    },
    /// The body exceeds the configured limit.
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The `model` names no route, or one that is not in force.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The route is not among those the pod's `llmesh.io/routes` names.
    #[error("route {alias:?} is not one of this pod's routes ({allowed}; pod annotation llmesh.io/routes)")]
    RouteNotForPod {
        /// The alias asked for.
        alias: String,
        /// The pod's routes.
        allowed: String,
    },
    /// No endpoint at this path.
    #[error(
        "no endpoint {0}; this gateway serves /v1/chat/completions, /v1/messages, /v1/responses, /v1/embeddings and /v1/models"
    )]
    UnknownPath(String),
    /// A Responses request that needs state kept between requests.
    #[error(
        "{0}: this gateway is stateless and keeps no responses; send the whole conversation in `input` (earlier outputs included) and leave `store` unset or false"
    )]
    Stateless(&'static str),
    /// The sidecar has no configuration yet.
    #[error("the gateway has no configuration yet")]
    NotReady,
    /// The caller's key is missing, unknown, not usable, or not allowed here.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The key's rate limit is reached.
    #[error(transparent)]
    RateLimited(#[from] Box<RateLimited>),
    /// A budget refuses the request.
    #[error(transparent)]
    Budget(#[from] BudgetError),
    /// A guardrail refused the request or the answer.
    #[error(transparent)]
    Guardrail(#[from] crate::guardrails::Blocked),
    /// Every attempt failed; this is the last failure.
    #[error("provider {provider}: {error}")]
    Upstream {
        /// The `ProviderSecret` that failed last.
        provider: String,
        /// Its failure.
        error: ProviderError,
    },
}

/// How long an app refused by the concurrency cap is told to wait: a
/// second is many requests' worth of slots coming free.
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<InvalidDirective> for ApiError {
    fn from(error: InvalidDirective) -> Self {
        Self::InvalidHeader {
            name: error.name,
            reason: error.reason,
        }
    }
}

/// OpenAI's error body.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorFields<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    param: Option<&'a str>,
}

impl ApiError {
    /// The HTTP status an app expects for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidBody(_) | Self::InvalidHeader { .. } | Self::Stateless(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Route(_) | Self::RouteNotForPod { .. } | Self::UnknownPath(_) => StatusCode::NOT_FOUND,
            Self::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Self::Guardrail(Blocked::Finding { .. }) => StatusCode::BAD_REQUEST,
            Self::Guardrail(Blocked::ModerationUnavailable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Auth(error) if error.is_forbidden() => StatusCode::FORBIDDEN,
            Self::Auth(_) => StatusCode::UNAUTHORIZED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Budget(BudgetError::RequestCeiling { .. }) => StatusCode::BAD_REQUEST,
            Self::Budget(BudgetError::Unavailable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Budget(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream { error, .. } => match error.kind {
                ErrorKind::RateLimit => StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::BadRequest
                | ErrorKind::ContextWindowExceeded
                | ErrorKind::ContentFilter
                | ErrorKind::Unsupported => StatusCode::BAD_REQUEST,
                ErrorKind::ServerError
                | ErrorKind::Connect
                | ErrorKind::Rejected
                | ErrorKind::InvalidResponse
                | ErrorKind::BrokenAnswer => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// OpenAI's `type` and `code` for this failure.
    pub fn type_and_code(&self) -> (&'static str, &'static str) {
        match self {
            Self::InvalidBody(_) => ("invalid_request_error", "invalid_body"),
            Self::InvalidHeader { .. } => ("invalid_request_error", "invalid_header"),
            Self::Stateless(_) => ("invalid_request_error", "stateless_gateway"),
            Self::BodyTooLarge { .. } => ("invalid_request_error", "request_too_large"),
            Self::BodyTimeout(_) => ("invalid_request_error", "request_timeout"),
            Self::Overloaded { .. } => ("server_error", "overloaded"),
            Self::Route(_) | Self::RouteNotForPod { .. } => ("invalid_request_error", "model_not_found"),
            Self::UnknownPath(_) => ("invalid_request_error", "unknown_url"),
            Self::NotReady => ("server_error", "not_ready"),
            Self::Guardrail(Blocked::Finding { .. }) => ("invalid_request_error", "guardrail_blocked"),
            Self::Guardrail(Blocked::ModerationUnavailable { .. }) => {
                ("server_error", "guardrail_unavailable")
            }
            Self::Auth(error) => match error {
                AuthError::Missing | AuthError::Unknown | AuthError::DefaultMissing(_) => {
                    ("invalid_request_error", "invalid_api_key")
                }
                AuthError::Disabled(_) => ("invalid_request_error", "key_disabled"),
                AuthError::Expired { .. } => ("invalid_request_error", "key_expired"),
                AuthError::RouteNotAllowed { .. } => ("permission_error", "route_not_allowed"),
            },
            Self::RateLimited(_) => ("rate_limit_error", "rate_limit_exceeded"),
            Self::Budget(error) => match error {
                BudgetError::Exhausted { .. } => ("budget_error", "budget_exceeded"),
                BudgetError::RequestCeiling { .. } => ("invalid_request_error", "request_token_ceiling"),
                BudgetError::SessionCeiling { .. } => ("budget_error", "session_token_ceiling"),
                BudgetError::Unavailable { .. } => ("budget_error", "budget_unavailable"),
            },
            Self::Upstream { error, .. } => match error.kind {
                ErrorKind::RateLimit => ("rate_limit_error", "rate_limit_exceeded"),
                ErrorKind::Timeout => ("timeout_error", "upstream_timeout"),
                ErrorKind::ContextWindowExceeded => ("invalid_request_error", "context_length_exceeded"),
                ErrorKind::ContentFilter => ("invalid_request_error", "content_filter"),
                ErrorKind::BadRequest => ("invalid_request_error", "upstream_bad_request"),
                ErrorKind::Unsupported => ("invalid_request_error", "unsupported"),
                ErrorKind::ServerError => ("upstream_error", "upstream_server_error"),
                ErrorKind::Connect => ("upstream_error", "upstream_connect_error"),
                ErrorKind::Rejected => ("upstream_error", "upstream_rejected"),
                ErrorKind::InvalidResponse => ("upstream_error", "upstream_invalid_response"),
                ErrorKind::BrokenAnswer => ("upstream_error", "upstream_broken_answer"),
            },
        }
    }

    /// The provider's failure class, if this came from a provider.
    pub fn upstream_kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Upstream { error, .. } => Some(error.kind),
            _ => None,
        }
    }

    /// The error as OpenAI's JSON body, also used for SSE error events.
    pub fn body(&self) -> Bytes {
        let (kind, code) = self.type_and_code();
        let param = matches!(self, Self::Route(_) | Self::RouteNotForPod { .. }).then_some("model");
        let body = ErrorBody {
            error: ErrorFields {
                message: self.to_string(),
                kind,
                code,
                param,
            },
        };
        crate::providers::to_json_bytes(&body)
    }

    /// The status and error `type` Anthropic's API gives for this failure.
    /// An upstream overload (Anthropic's 529) stays a 529 when it is the
    /// last failure of a chain, so Anthropic SDKs back off as they would.
    pub fn anthropic_status_and_type(&self) -> (StatusCode, &'static str) {
        if let Self::Upstream { error, .. } = self
            && error.kind == ErrorKind::RateLimit
            && error.status == Some(529)
        {
            let overloaded = StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (overloaded, "overloaded_error");
        }
        if let Self::Overloaded { .. } = self {
            return (self.status(), "overloaded_error");
        }
        let status = self.status();
        let kind = match status.as_u16() {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            504 => "timeout_error",
            _ => "api_error",
        };
        (status, kind)
    }

    /// The error as Anthropic's JSON body.
    pub fn anthropic_body(&self) -> Bytes {
        let (_, kind) = self.anthropic_status_and_type();
        crate::providers::to_json_bytes(&crate::api::messages::ErrorBody {
            kind: "error",
            error: crate::api::messages::ErrorDetail {
                kind,
                message: self.to_string(),
            },
        })
    }

    /// The response for an app of `api`: Anthropic's error shape for
    /// Messages apps, OpenAI's for the others.
    pub fn into_response_for(self, api: crate::api::Api) -> Response {
        if api != crate::api::Api::Messages {
            return self.into_response();
        }
        let (status, _) = self.anthropic_status_and_type();
        let mut response = (
            status,
            [(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.anthropic_body(),
        )
            .into_response();
        self.add_retry_after(&mut response);
        response
    }

    fn add_retry_after(&self, response: &mut Response) {
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up: a client that waits this long will not be early.
            let seconds = wait.as_millis().div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(http::header::RETRY_AFTER, value);
            }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Upstream { error, .. } if error.kind == ErrorKind::RateLimit => {
                Some(error.retry_after.unwrap_or(Duration::from_secs(1)))
            }
            Self::RateLimited(limited) => Some(limited.retry_after),
            Self::Overloaded { .. } => Some(OVERLOADED_RETRY_AFTER),
            Self::Budget(error) => error.retry_after_secs().map(Duration::from_secs),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            [(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body(),
        )
            .into_response();
        self.add_retry_after(&mut response);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_the_status_an_app_expects() {
        let upstream = |kind| ApiError::Upstream {
            provider: "p".into(),
            error: ProviderError::new(kind, "x"),
        };
        let cases = [
            (ApiError::InvalidBody("x".into()), 400),
            (ApiError::BodyTooLarge { limit: 1 }, 413),
            (ApiError::Route(RouteError::Unknown("x".into())), 404),
            (ApiError::Auth(AuthError::Missing), 401),
            (ApiError::Auth(AuthError::Disabled("k".into())), 401),
            (
                ApiError::Auth(AuthError::RouteNotAllowed {
                    key: "k".into(),
                    route: "r".into(),
                    allowed: "s".into(),
                }),
                403,
            ),
            (upstream(ErrorKind::RateLimit), 429),
            (upstream(ErrorKind::ServerError), 502),
            (upstream(ErrorKind::Connect), 502),
            (upstream(ErrorKind::Rejected), 502),
            (upstream(ErrorKind::Timeout), 504),
            (upstream(ErrorKind::ContextWindowExceeded), 400),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            let body: serde_json::Value = serde_json::from_slice(&error.body()).expect("json");
            assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(body["error"]["type"].is_string() && body["error"]["code"].is_string());
        }
    }

    #[test]
    fn rate_limits_carry_retry_after_rounded_up() {
        let error =
            ProviderError::from_status(429, "slow").with_retry_after(Some(Duration::from_millis(1500)));
        let response = ApiError::Upstream {
            provider: "p".into(),
            error,
        }
        .into_response();
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "2");
    }
}
