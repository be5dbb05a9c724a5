//! Accept: read a request body within the size limit and parse it strictly
//! enough that a bad field is named in the error.

use axum::body::Body;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body as _;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::routing::Timeouts;

/// Reads the whole body within `timeout`, refusing more than `limit` bytes:
/// at once when its `Content-Length` says so, else as soon as the limit is passed.
///
/// # Errors
/// [`ApiError::BodyTooLarge`] over the limit; [`ApiError::BodyTimeout`] when
/// it is too slow; [`ApiError::InvalidBody`] if the client broke off.
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    if usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX) > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::BodyTimeout(timeout)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::BodyTooLarge { limit }),
        Ok(Err(e)) => Err(ApiError::InvalidBody(format!("could not read the body: {e}"))),
    }
}

// Header names as values rather than strings: a lookup by string parses
// the name first, on every request.
/// `x-llmesh-timeout`: the request's own total limit.
static TIMEOUT_TOTAL: HeaderName = HeaderName::from_static("x-llmesh-timeout");
/// `x-llmesh-first-token-timeout`: the request's own first-token limit.
static TIMEOUT_FIRST_TOKEN: HeaderName = HeaderName::from_static("x-llmesh-first-token-timeout");
/// `x-llmesh-idle-timeout`: the request's own limit between chunks.
static TIMEOUT_IDLE: HeaderName = HeaderName::from_static("x-llmesh-idle-timeout");

/// Time limits a request asks for in its headers (durations like `5s`).
/// They can only tighten the route's limits; see [`Timeouts::tightened_by`].
///
/// # Errors
/// [`ApiError::InvalidHeader`] for a value that is not a duration.
pub fn timeout_overrides(headers: &HeaderMap) -> Result<Timeouts, ApiError> {
    let read = |header: &'static HeaderName| -> Result<Option<Duration>, ApiError> {
        let Some(value) = headers.get(header) else {
            return Ok(None);
        };
        let name = header.as_str();
        let text = value.to_str().map_err(|_| ApiError::InvalidHeader {
            name,
            reason: "not ASCII".to_owned(),
        })?;
        match llmesh_crds::duration::parse(text.trim()) {
            Ok(d) if d.is_zero() => Err(ApiError::InvalidHeader {
                name,
                reason: "must be greater than zero".to_owned(),
            }),
            Ok(d) => Ok(Some(d)),
            Err(reason) => Err(ApiError::InvalidHeader { name, reason }),
        }
    };
    Ok(Timeouts {
        total: read(&TIMEOUT_TOTAL)?,
        first_token: read(&TIMEOUT_FIRST_TOKEN)?,
        idle: read(&TIMEOUT_IDLE)?,
    })
}

/// Parses JSON; the error names the path of the offending field.
///
/// # Errors
/// [`ApiError::InvalidBody`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Tracking the path costs on every request; only a bad body needs it.
    if let Ok(parsed) = serde_json::from_slice(bytes) {
        return Ok(parsed);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::InvalidBody(inner.to_string())
        } else {
            ApiError::InvalidBody(format!("{path}: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::ChatRequest;

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"hi"}]}"#,
                "messages[0].role",
            ),
            (r#"{"model":"m"}"#, "missing field `messages`"),
            (
                r#"{"model":"m","messages":[],"temperature":"hot"}"#,
                "temperature",
            ),
            ("not json", "expected"),
        ];
        for (body, expected) in cases {
            let error = parse_json::<ChatRequest>(body.as_bytes()).expect_err(body);
            assert!(error.to_string().contains(expected), "{body}: {error}");
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let second = Duration::from_secs(1);
        let error = read_body(Body::from(vec![b'x'; 11]), 10, second)
            .await
            .expect_err("too large");
        assert!(matches!(error, ApiError::BodyTooLarge { limit: 10 }));
        assert_eq!(read_body(Body::from("ok"), 10, second).await.expect("fits"), "ok");
    }
}
