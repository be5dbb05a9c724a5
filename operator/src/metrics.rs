//! Prometheus metrics of the operator's reconciles. Labels are fixed small
//! sets (result, error reason); never a resource's content.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::Error;

/// Resources by (kind, Ready) with their count.
pub type States = BTreeMap<(String, bool), u64>;

/// The operator's metrics and the registry that exposes them.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: Histogram,
    config_writes: IntCounter,
    status_writes: IntCounter,
    queue_depth: IntGauge,
    leader: IntGauge,
    resources: IntGaugeVec,
    /// Each namespace's resources by (kind, ready), as of its last reconcile:
    /// the gauge is their sum.
    states: Arc<Mutex<HashMap<String, States>>>,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// A metric's definition is invalid (a bug caught by the tests).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "llmesh_operator_reconciles_total",
                "Namespace reconciles, by result.",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "llmesh_operator_reconcile_errors_total",
                "Failed reconciles, by reason.",
            ),
            &["reason"],
        )?;
        // Buckets from 5 ms (a few cached API calls) to 10 s (a slow API server).
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "llmesh_operator_reconcile_duration_seconds",
                "Time to reconcile one namespace.",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
        )?;
        let config_writes = IntCounter::new(
            "llmesh_operator_config_writes_total",
            "ConfigMap writes (reconciles whose compiled configuration changed).",
        )?;
        let status_writes =
            IntCounter::new("llmesh_operator_status_writes_total", "Resource status writes.")?;
        let queue_depth = IntGauge::new(
            "llmesh_operator_queue_depth",
            "Namespaces with a change not yet reconciled.",
        )?;
        let leader = IntGauge::new(
            "llmesh_operator_leader",
            "1 while this replica holds the leader Lease (reconciles), else 0.",
        )?;
        // Both results exist from the start, so an error rate reads 0, not "no data".
        for result in ["ok", "error"] {
            reconciles.with_label_values(&[result]);
        }
        let resources = IntGaugeVec::new(
            Opts::new(
                "llmesh_operator_resources",
                "llmesh resources by kind and whether they are Ready.",
            ),
            &["kind", "ready"],
        )?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(resources.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(config_writes.clone()))?;
        registry.register(Box::new(status_writes.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            config_writes,
            status_writes,
            queue_depth,
            leader,
            resources,
            states: Arc::default(),
        })
    }

    /// Sets how many namespaces wait for a reconcile.
    pub fn set_queue_depth(&self, pending: usize) {
        self.queue_depth.set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// Records whether this replica holds the leader Lease.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records `namespace`'s resources by (kind, ready) and updates the totals.
    pub fn set_states(&self, namespace: &str, states: &States) {
        let mut all = self.states.lock();
        if states.is_empty() {
            all.remove(namespace);
        } else {
            all.insert(namespace.to_owned(), states.clone());
        }
        let mut totals: BTreeMap<(&str, bool), u64> = BTreeMap::new();
        for ((kind, ready), count) in all.values().flatten() {
            *totals.entry((kind, *ready)).or_default() += count;
        }
        // Reset first so a kind whose last resource went away reads 0, not its old count.
        self.resources.reset();
        for ((kind, ready), count) in totals {
            self.resources
                .with_label_values(&[kind, if ready { "true" } else { "false" }])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Records a successful reconcile.
    pub fn succeeded(&self, took: Duration, config_written: bool, statuses_written: usize) {
        self.reconciles.with_label_values(&["ok"]).inc();
        self.duration.observe(took.as_secs_f64());
        if config_written {
            self.config_writes.inc();
        }
        self.status_writes
            .inc_by(u64::try_from(statuses_written).unwrap_or(u64::MAX));
    }

    /// Records a failed reconcile.
    pub fn failed(&self, took: Duration, error: &Error) {
        self.reconciles.with_label_values(&["error"]).inc();
        self.errors.with_label_values(&[error.metric_label()]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// The registry, for metrics other parts of the operator register.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leadership_and_both_reconcile_results_are_exported_from_the_start() {
        let metrics = Metrics::new().expect("metrics");
        let text = metrics.render();
        assert!(text.contains("llmesh_operator_leader 0"), "{text}");
        assert!(
            text.contains("llmesh_operator_reconciles_total{result=\"error\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("llmesh_operator_reconciles_total{result=\"ok\"} 0"),
            "{text}"
        );
        metrics.set_leader(true);
        assert!(metrics.render().contains("llmesh_operator_leader 1"));
    }
}
