//! Attempts: try a route's plan until a target answers.
//!
//! The plan is the route's own targets (or a matching rule's) in strategy
//! order, then each fallback step. Within a step a failure that says "this
//! target, not this request" moves on to the next target; each target may
//! be retried with backoff; a fallback step is entered only for the failure
//! classes it names. Every attempt's failure is kept for accounting; the
//! last one is what the app sees when all fail.
//!
//! For streams the decision is made before the first chunk is committed to
//! the app: an attempt that fails or stays silent past the first-token limit
//! is still a failed attempt, and the next one may serve. After the first
//! chunk nothing is retried.

use std::time::Duration;

use futures::StreamExt;
use llmesh_crds::config::RetriesConfig;
use llmesh_crds::resources::ErrorClass;
use rand::Rng;
use tokio::time::Instant;

use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::providers::{ChatReply, ChunkStream, Completed, ErrorKind, ProviderError, StreamEvent};
use crate::routing::{Estimate, FallbackTo, RequestFacts, Route, Runtime, Target, Timeouts, tighter};
use crate::telemetry::{AttemptSpan, Value};

/// A successful answer and who gave it.
#[derive(Debug)]
pub struct Served<'r, T> {
    /// The target that answered.
    pub target: &'r Target,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// The failed attempts before it.
    pub failures: Vec<AttemptFailure>,
    /// 0 for the route's own targets, n for `fallbacks[n - 1]`.
    pub step: usize,
    /// The alias of the other route whose targets answered, when a `route`
    /// fallback step served.
    pub fallback_route: Option<&'r str>,
    /// The answer.
    pub reply: T,
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
    /// The last step reached.
    pub step: usize,
    /// The `ProviderSecret` that failed last (the route's alias when no
    /// attempt could be made).
    pub provider: String,
    /// The failure the app sees.
    pub error: ProviderError,
}

/// One failed attempt, kept for accounting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptFailure {
    /// The provider kind of the target.
    pub provider: &'static str,
    /// The failure class.
    pub kind: ErrorKind,
    /// Whether the same target was tried again after it.
    pub retried: bool,
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

/// Serves a chat request from the route's plan.
///
/// # Errors
/// Every attempt failed; [`Failed`] carries the last error.
pub async fn chat<'r>(
    runtime: &'r Runtime,
    route: &'r Route,
    request: &ChatRequest,
    facts: &RequestFacts<'_>,
    timeouts: Timeouts,
) -> Result<Served<'r, Reply>, Failed<'r>> {
    let deadline = timeouts.total.map(|t| Instant::now() + t);
    let steps = plan(runtime, route, facts);
    run(route, steps, &facts.estimate, deadline, |target| async move {
        let limit = first_answer_limit(timeouts, target, deadline);
        match within(limit, target.provider.chat(request, &target.model)).await? {
            ChatReply::Complete(completed) => Ok(Reply::Complete(completed)),
            ChatReply::Stream(stream) => {
                let (head, tail) = within(limit, first_chunk(stream)).await?;
                // The target stays busy (for `least-busy`) until the stream
                // ends or the app hangs up, not only until its first chunk.
                let busy = target.health.start();
                let tail = ChunkStream(
                    tail.0
                        .inspect(move |_| {
                            let _ = &busy;
                        })
                        .boxed(),
                );
                Ok(Reply::Stream(CommittedStream {
                    head,
                    tail,
                    idle: tighter(timeouts.idle, target.idle_timeout),
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
    runtime: &'r Runtime,
    route: &'r Route,
    request: &EmbeddingsRequest,
    facts: &RequestFacts<'_>,
    timeouts: Timeouts,
) -> Result<Served<'r, Completed>, Failed<'r>> {
    let deadline = timeouts.total.map(|t| Instant::now() + t);
    let steps = plan(runtime, route, facts);
    run(route, steps, &facts.estimate, deadline, |target| async move {
        let limit = first_answer_limit(timeouts, target, deadline);
        within(limit, target.provider.embeddings(request, &target.model)).await
    })
    .await
}

/// One step of the plan.
struct Step<'r> {
    number: usize,
    /// The other route a `route` fallback step uses.
    route: Option<&'r str>,
    targets: Vec<&'r Target>,
    /// `None` for the route's own targets; the triggering classes for a fallback.
    on: Option<&'r [ErrorClass]>,
}

fn plan<'r>(runtime: &'r Runtime, route: &'r Route, facts: &RequestFacts<'_>) -> Vec<Step<'r>> {
    let estimate = &facts.estimate;
    let own = Step {
        number: 0,
        route: None,
        targets: route.targets_for(facts).ordered(route.strategy, estimate),
        on: None,
    };
    let fallbacks = route.fallbacks.iter().enumerate().map(|(i, step)| {
        let (other_route, targets) = match &step.to {
            FallbackTo::Route(alias) => {
                let targets = match runtime.find(alias) {
                    Some(other) => other.targets.ordered(other.strategy, estimate),
                    None => {
                        tracing::warn!(route = %route.alias, fallback = %alias, "fallback route is not in force; step skipped");
                        Vec::new()
                    }
                };
                (Some(alias.as_str()), targets)
            }
            FallbackTo::Target(set) => (None, set.ordered(route.strategy, estimate)),
        };
        Step { number: i + 1, route: other_route, targets, on: Some(step.on.as_slice()) }
    });
    std::iter::once(own).chain(fallbacks).collect()
}

/// The fallback class of a failure, if it has one.
pub fn class_of(kind: ErrorKind) -> Option<ErrorClass> {
    match kind {
        ErrorKind::RateLimit => Some(ErrorClass::RateLimit),
        ErrorKind::ServerError | ErrorKind::InvalidResponse | ErrorKind::BrokenAnswer => {
            Some(ErrorClass::ServerError)
        }
        ErrorKind::Timeout => Some(ErrorClass::Timeout),
        ErrorKind::Connect => Some(ErrorClass::ConnectError),
        ErrorKind::ContextWindowExceeded => Some(ErrorClass::ContextWindowExceeded),
        ErrorKind::ContentFilter => Some(ErrorClass::ContentFilter),
        ErrorKind::BadRequest | ErrorKind::Rejected | ErrorKind::Unsupported => None,
    }
}

/// Whether another target of the same step may succeed where this one failed.
fn fails_over(kind: ErrorKind) -> bool {
    kind.is_transient() || kind == ErrorKind::ContextWindowExceeded
}

/// The wait before trying a target again: exponential backoff with full
/// jitter, or the provider's requested wait if longer. `None` when the
/// provider asks for more than the route is willing to wait.
fn retry_delay(retries: &RetriesConfig, attempt: u32, asked: Option<Duration>) -> Option<Duration> {
    let cap = Duration::from_millis(retries.max_backoff_ms);
    let exponent = attempt.saturating_sub(1).min(20);
    let ceiling = Duration::from_millis(retries.backoff_ms)
        .saturating_mul(1 << exponent)
        .min(cap);
    let jitter = rand::rng().random_range(Duration::ZERO..=ceiling);
    match asked.filter(|_| retries.honor_retry_after) {
        Some(asked) if asked > Duration::from_millis(retries.max_retry_after_ms) => None,
        Some(asked) => Some(jitter.max(asked)),
        None => Some(jitter),
    }
}

/// The attempt loop shared by every endpoint.
async fn run<'r, T, F, Fut>(
    route: &'r Route,
    steps: Vec<Step<'r>>,
    estimate: &Estimate,
    deadline: Option<Instant>,
    attempt: F,
) -> Result<Served<'r, T>, Failed<'r>>
where
    F: Fn(&'r Target) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let past_deadline = || deadline.is_some_and(|d| Instant::now() >= d);
    let mut attempts = 0;
    let mut failures = Vec::new();
    let mut last: Option<(&Target, ProviderError)> = None;
    let (mut reached, mut too_small, mut shed) = (0, false, false);
    // What the next fallback step reacts to: the last failure, or why targets were skipped.
    let mut trigger: Option<ErrorClass> = None;

    'steps: for step in steps {
        if let Some(on) = step.on
            && !trigger.is_some_and(|class| on.contains(&class))
        {
            break;
        }
        reached = step.number;
        for target in step.targets {
            if !estimate.fits(target.context_window) {
                too_small = true;
                trigger = Some(ErrorClass::ContextWindowExceeded);
                continue;
            }
            if !target.health.admit(&route.breaker, Instant::now()) {
                shed = true;
                trigger = Some(ErrorClass::ServerError);
                continue;
            }
            for try_number in 1..=route.retries.attempts {
                if past_deadline() {
                    break 'steps;
                }
                // A retry is not worth it once this target's breaker has opened.
                if try_number > 1 && !target.health.admit(&route.breaker, Instant::now()) {
                    break;
                }
                attempts += 1;
                let in_flight = target.health.start();
                let started = Instant::now();
                let span = AttemptSpan::start(target.provider.kind().as_str(), &target.model, || {
                    vec![
                        ("llmesh.provider", Value::from(target.provider_name.as_str())),
                        ("llmesh.attempt", Value::from(u64::from(attempts))),
                        ("llmesh.try", Value::from(u64::from(try_number))),
                        ("llmesh.fallback_step", Value::from(step.number as u64)),
                    ]
                });
                let result = span.run(attempt(target)).await;
                span.end(result.as_ref().err().map(|e| e.kind.label()));
                drop(in_flight);
                let failure = result.as_ref().err().map(|e| e.kind);
                target
                    .health
                    .record(&route.breaker, failure, started.elapsed(), Instant::now());
                let error = match result {
                    Ok(reply) => {
                        return Ok(Served {
                            target,
                            attempts,
                            failures,
                            step: step.number,
                            fallback_route: step.route,
                            reply,
                        });
                    }
                    Err(error) => error,
                };
                tracing::debug!(route = %route.alias, provider = %target.provider_name, model = %target.model, error = %error, "attempt failed");
                let delay = (try_number < route.retries.attempts && error.kind.is_transient())
                    .then(|| retry_delay(&route.retries, try_number, error.retry_after))
                    .flatten()
                    .filter(|delay| deadline.is_none_or(|d| Instant::now() + *delay < d));
                failures.push(AttemptFailure {
                    provider: target.provider.kind().as_str(),
                    kind: error.kind,
                    retried: delay.is_some(),
                });
                let kind = error.kind;
                trigger = class_of(kind);
                last = Some((target, error));
                match delay {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None if fails_over(kind) => break,
                    // The request itself is at fault: other targets of this step would fail too.
                    None => continue 'steps,
                }
            }
        }
    }

    let (target, error) = match last {
        Some((target, error)) => (Some(target), error),
        None if too_small => (
            None,
            ProviderError::new(
                ErrorKind::ContextWindowExceeded,
                format!(
                    "about {} tokens do not fit the context window of any target of route {}",
                    estimate.prompt_tokens + estimate.max_output_tokens.unwrap_or(0),
                    route.alias
                ),
            ),
        ),
        None if shed => (
            None,
            ProviderError::new(
                ErrorKind::ServerError,
                format!(
                    "every target of route {} is failing; their circuit breakers are open",
                    route.alias
                ),
            ),
        ),
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
        step: reached,
        provider,
        error,
    })
}

/// The tightest of the route's first-token limit, the target's own limit,
/// and what is left of the total.
fn first_answer_limit(timeouts: Timeouts, target: &Target, deadline: Option<Instant>) -> Option<Instant> {
    let now = Instant::now();
    [
        timeouts.first_token.map(|t| now + t),
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
    Err(ProviderError::broken_answer(
        "the upstream stream ended before its first chunk",
    ))
}

#[cfg(test)]
#[path = "attempts_tests.rs"]
mod tests;
