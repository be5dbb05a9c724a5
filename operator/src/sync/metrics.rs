//! `llmesh_sync_*` metrics of the operator's side of the sync channel.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// The sync server's metrics.
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// Sidecars with a watch open.
    pub connected: IntGauge,
    /// Reports by result: `applied`, `duplicate`, `refused`, `invalid`.
    pub reports: IntCounterVec,
    /// Requests refused (bad or missing token, another namespace), by
    /// request and reason.
    pub refused: IntCounterVec,
    /// Active sidecars reporting an older configuration than the one
    /// published over a minute ago.
    pub stale: IntGauge,
    /// Time from a configuration change to its frame being written to every
    /// connected watch.
    pub push_seconds: Histogram,
    /// Time from a report's arrival to its acknowledgement (includes the
    /// durable write of the spend).
    pub report_seconds: Histogram,
}

impl SyncMetrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// A metric's definition is invalid or already registered.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let connected = IntGauge::new(
            "llmesh_sync_connected_sidecars",
            "Sidecars holding a sync watch open.",
        )?;
        let stale = IntGauge::new(
            "llmesh_sync_stale_sidecars",
            "Sidecars that reported in the last two minutes with an older configuration than the one \
             pushed over a minute ago.",
        )?;
        let reports = IntCounterVec::new(
            Opts::new(
                "llmesh_sync_reports_total",
                "Usage reports received, by result (applied, duplicate, refused, invalid).",
            ),
            &["result"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "llmesh_sync_refused_total",
                "Sync requests refused for their token, by request (watch, report, budgets) and reason \
                 (no_token, bad_token, other_namespace, unavailable).",
            ),
            &["request", "reason"],
        )?;
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        let push_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "llmesh_sync_push_seconds",
                "Time from a configuration change to its frame being queued to every connected sidecar.",
            )
            .buckets(buckets.clone()),
        )?;
        let report_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "llmesh_sync_report_seconds",
                "Time to apply, persist and acknowledge one usage report.",
            )
            .buckets(buckets),
        )?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(reports.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(push_seconds.clone()))?;
        registry.register(Box::new(report_seconds.clone()))?;
        Ok(Self {
            connected,
            reports,
            refused,
            stale,
            push_seconds,
            report_seconds,
        })
    }
}
