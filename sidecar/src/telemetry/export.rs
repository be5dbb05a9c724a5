//! The span exporter: a bounded queue the request path pushes into without
//! waiting, and one task that batches spans and posts them to the collector.
//! A full queue or a collector that fails drops spans — counted and logged,
//! never retried at the cost of memory or of requests.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Attribute, SpanData, otlp};
use crate::metrics::Metrics;

/// Posts one batch (an encoded `ExportTraceServiceRequest`, a set of eval
/// records); an error says why it was not taken.
pub type Post = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

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
        let result = match tokio::time::timeout(batching.timeout, post(body)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", batching.timeout)),
        };
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
