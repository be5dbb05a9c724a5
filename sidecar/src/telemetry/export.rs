//! The span exporter: a bounded queue the request path pushes into without
//! waiting, and one task that batches spans and hands each batch to the
//! transport (OTLP/HTTP or gRPC). A failure the collector calls passing is
//! retried with backoff within the export timeout; a full queue or a batch
//! still refused then drops spans — counted and logged, never at the cost
//! of memory or of requests.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Attribute, SpanData, otlp};
use crate::metrics::Metrics;

/// Posts one batch (an encoded `ExportTraceServiceRequest`, a set of eval
/// records); an error says why it was not taken.
pub type Post = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Result<(), PostError>> + Send + Sync>;

/// A batch the endpoint did not take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PostError {
    /// Why, for the log.
    pub message: String,
    /// Whether sending it again may succeed (an endpoint that is down or
    /// overloaded, rather than one that refuses the content).
    pub retryable: bool,
}

impl PostError {
    /// A failure worth another try.
    pub fn passing(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A refusal that another try would meet again.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// The first retry of a batch waits this long, doubling up to
/// [`MAX_BACKOFF`]: quick enough to ride out a collector's restart, slow
/// enough not to hammer one that is overloaded.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two tries of a batch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How spans are batched (the `OTEL_BSP_*` variables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Spans held at most; more are dropped.
    pub max_queue: usize,
    /// Spans per export at most.
    pub max_batch: usize,
    /// The longest a span waits for its batch to fill.
    pub delay: Duration,
    /// The longest one export may take.
    pub timeout: Duration,
}

/// The request path's side of the exporter.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<SpanData>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Starts the export task.
    pub fn spawn(batching: Batching, resource: Vec<Attribute>, post: Post, metrics: Arc<Metrics>) -> Self {
        let (queue, spans) = mpsc::channel(batching.max_queue.max(1));
        tokio::spawn(run(spans, batching, resource, post, metrics.clone()));
        Self { queue, metrics }
    }

    /// Queues finished spans; never waits.
    pub fn submit(&self, spans: impl IntoIterator<Item = SpanData>) {
        for span in spans {
            if self.queue.try_send(span).is_err() {
                self.metrics
                    .trace_spans_dropped
                    .with_label_values(&["queue-full"])
                    .inc();
            }
        }
    }
}

async fn run(
    mut spans: mpsc::Receiver<SpanData>,
    batching: Batching,
    resource: Vec<Attribute>,
    post: Post,
    metrics: Arc<Metrics>,
) {
    let mut failing = false;
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let due = Instant::now() + batching.delay;
        while batch.len() < batching.max_batch {
            match tokio::time::timeout_at(due, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = otlp::encode(&resource, &batch);
        let count = batch.len() as u64;
        let result = export(&post, body, batching.timeout).await;
        match result {
            Ok(()) => {
                metrics.trace_spans_exported.inc_by(count);
                if failing {
                    tracing::info!("the trace collector accepts spans again");
                    failing = false;
                }
            }
            Err(error) => {
                metrics
                    .trace_spans_dropped
                    .with_label_values(&["export-failed"])
                    .inc_by(count);
                // Once per outage, not once per batch: the counter has the rest.
                if !failing {
                    tracing::warn!(%error, "cannot export spans to the trace collector; dropping them until it answers");
                    failing = true;
                }
            }
        }
    }
}

/// Sends one batch, again after a passing failure while `timeout` (for the
/// whole export, retries included) leaves room for the wait and a try.
async fn export(post: &Post, body: Vec<u8>, timeout: Duration) -> Result<(), PostError> {
    let deadline = Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let result = match tokio::time::timeout_at(deadline, post(body.clone())).await {
            Ok(result) => result,
            Err(_) => Err(PostError::refused(format!("no answer within {timeout:?}"))),
        };
        match result {
            Err(error) if error.retryable && Instant::now() + backoff < deadline => {
                tracing::debug!(%error, ?backoff, "the trace collector failed; trying the batch again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A transport that fails its first `failures` tries with `error`.
    fn flaky(failures: usize, error: PostError) -> (Post, Arc<AtomicUsize>) {
        let tries = Arc::new(AtomicUsize::new(0));
        let counted = tries.clone();
        let post: Post = Arc::new(move |_| {
            let error = error.clone();
            let n = counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { if n < failures { Err(error) } else { Ok(()) } })
        });
        (post, tries)
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_failure_is_retried_with_backoff_within_the_timeout() {
        let (post, tries) = flaky(2, PostError::passing("UNAVAILABLE"));
        let started = Instant::now();
        assert_eq!(export(&post, vec![1], Duration::from_secs(10)).await, Ok(()));
        assert_eq!(tries.load(Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), FIRST_BACKOFF * 3, "200 ms, then 400 ms");

        let (post, tries) = flaky(usize::MAX, PostError::passing("UNAVAILABLE"));
        let started = Instant::now();
        let error = export(&post, vec![1], Duration::from_secs(1))
            .await
            .expect_err("never taken");
        assert_eq!(error.message, "UNAVAILABLE");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            tries.load(Ordering::SeqCst),
            3,
            "at 0, 200 and 600 ms; 1.4 s is past the timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_retried() {
        let (post, tries) = flaky(1, PostError::refused("INVALID_ARGUMENT"));
        let error = export(&post, vec![1], Duration::from_secs(10))
            .await
            .expect_err("refused");
        assert!(!error.retryable);
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
