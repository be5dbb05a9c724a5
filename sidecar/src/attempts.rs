//! Attempts: try the route's plan until a target answers.
//!
//! Every attempt's error is kept; the last one is what the app sees when all
//! fail. For streams the decision is made before the first chunk is
//! committed to the app: an attempt that fails or stays silent past the
//! first-token limit is still a failed attempt, not a broken response.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::error::ApiError;
use crate::providers::{ChatReply, ChunkStream, Completed, ErrorKind, ProviderError, StreamEvent};
use crate::routing::{Route, Target};

/// A successful answer and who gave it.
#[derive(Debug)]
pub struct Served<'r, T> {
    /// The target that answered.
    pub target: &'r Target,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// The failed attempts before it.
    pub failures: Vec<AttemptFailure>,
    /// The answer.
    pub reply: T,
}

/// A chat answer after the commit decision.
#[derive(Debug)]
pub enum Reply {
    /// The whole answer.
    Complete(Completed),
    /// A stream whose first chunk has arrived.
    Stream(CommittedStream),
}

/// A stream that has produced its first chunk, with the limits that still
/// apply to the rest.
#[derive(Debug)]
pub struct CommittedStream {
    /// Events up to and including the first chunk.
    pub head: Vec<StreamEvent>,
    /// The rest.
    pub tail: ChunkStream,
    /// Longest silence allowed between chunks.
    pub idle: Option<Duration>,
    /// When the whole request must be done.
    pub deadline: Option<Instant>,
}

/// One failed attempt, kept for accounting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptFailure {
    /// The provider kind of the target.
    pub provider: &'static str,
    /// The failure class.
    pub kind: ErrorKind,
}

/// All attempts failed.
#[derive(Debug)]
pub struct Failed<'r> {
    /// The target of the last attempt, if any was made.
    pub target: Option<&'r Target>,
    /// Attempts made.
    pub attempts: u32,
    /// Every failed attempt, in order.
    pub failures: Vec<AttemptFailure>,
    /// The failure the app sees.
    pub error: ApiError,
}

/// Serves a chat request from the route's plan.
///
/// # Errors
/// Every attempt failed; [`Failed`] carries the last error.
pub async fn chat<'r>(route: &'r Route, request: &ChatRequest) -> Result<Served<'r, Reply>, Failed<'r>> {
    let deadline = route.timeouts.total.map(|t| Instant::now() + t);
    run(route, deadline, |target| async move {
        let limit = first_answer_limit(route, target, deadline);
        let started = within(limit, target.provider.chat(request, &target.model));
        match started.await? {
            ChatReply::Complete(completed) => Ok(Reply::Complete(completed)),
            ChatReply::Stream(stream) => {
                let (head, tail) = within(limit, first_chunk(stream)).await?;
                Ok(Reply::Stream(CommittedStream {
                    head,
                    tail,
                    idle: route.timeouts.idle,
                    deadline,
                }))
            }
        }
    })
    .await
}

/// Serves an embeddings request from the route's plan.
///
/// # Errors
/// Every attempt failed.
pub async fn embeddings<'r>(
    route: &'r Route,
    request: &EmbeddingsRequest,
) -> Result<Served<'r, Completed>, Failed<'r>> {
    let deadline = route.timeouts.total.map(|t| Instant::now() + t);
    run(route, deadline, |target| async move {
        let limit = first_answer_limit(route, target, deadline);
        within(limit, target.provider.embeddings(request, &target.model)).await
    })
    .await
}

/// The attempt loop shared by every endpoint.
async fn run<'r, T, F, Fut>(
    route: &'r Route,
    deadline: Option<Instant>,
    attempt: F,
) -> Result<Served<'r, T>, Failed<'r>>
where
    F: Fn(&'r Target) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut attempts = 0;
    let mut failures = Vec::new();
    let mut last: Option<(&Target, ProviderError)> = None;
    for target in route.plan() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        attempts += 1;
        match attempt(target).await {
            Ok(reply) => {
                return Ok(Served {
                    target,
                    attempts,
                    failures,
                    reply,
                });
            }
            Err(error) => {
                failures.push(AttemptFailure {
                    provider: target.provider.kind().as_str(),
                    kind: error.kind,
                });
                tracing::debug!(route = %route.alias, provider = %target.provider_name, error = %error, "attempt failed");
                last = Some((target, error));
            }
        }
    }
    let (target, error) = match last {
        Some((target, error)) => (Some(target), error),
        None => (
            None,
            ProviderError::new(ErrorKind::Timeout, "the route's total time limit passed"),
        ),
    };
    let provider = target.map_or_else(|| route.alias.clone(), |t| t.provider_name.clone());
    Err(Failed {
        target,
        attempts,
        failures,
        error: ApiError::Upstream { provider, error },
    })
}

/// The tightest of the route's first-token limit, the target's own limit,
/// and what is left of the total.
fn first_answer_limit(route: &Route, target: &Target, deadline: Option<Instant>) -> Option<Instant> {
    let now = Instant::now();
    [
        route.timeouts.first_token.map(|t| now + t),
        target.timeout.map(|t| now + t),
        deadline,
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Runs `work` until `limit`, turning the overrun into a timeout error.
async fn within<T>(
    limit: Option<Instant>,
    work: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    match limit {
        None => work.await,
        Some(limit) => tokio::time::timeout_at(limit, work).await.unwrap_or_else(|_| {
            Err(ProviderError::new(
                ErrorKind::Timeout,
                "no answer from the upstream within the route's time limit",
            ))
        }),
    }
}

/// Pulls events until the first chunk, so the commit decision can be made.
async fn first_chunk(mut stream: ChunkStream) -> Result<(Vec<StreamEvent>, ChunkStream), ProviderError> {
    let mut head = Vec::new();
    while let Some(event) = stream.0.next().await {
        let event = event?;
        let is_chunk = matches!(event, StreamEvent::Chunk(_));
        head.push(event);
        if is_chunk {
            return Ok((head, stream));
        }
    }
    Err(ProviderError::invalid_response(
        "the upstream stream ended before its first chunk",
    ))
}
