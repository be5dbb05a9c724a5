//! The webhook's metrics, registered in the operator's registry. Labels are
//! fixed small sets; never a pod's or namespace's name.

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Admissions, missed pods and restarts.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    admissions: IntCounterVec,
    duration: Histogram,
    missed: IntCounter,
    missing_now: IntGauge,
    restarts: IntCounter,
    stale: IntGauge,
    certificate_errors: IntCounter,
}

impl WebhookMetrics {
    /// Creates the metrics and registers them in `registry`.
    ///
    /// # Errors
    /// A metric's definition is invalid or already registered (a bug caught by the tests).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let admissions = IntCounterVec::new(
            Opts::new(
                "llmesh_operator_admissions_total",
                "Pod admission reviews, by result (injected, a skip reason, or malformed).",
            ),
            &["result"],
        )?;
        // From 0.25 ms to the API server's 2 s webhook timeout; the target is a 5 ms p99.
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "llmesh_operator_admission_duration_seconds",
                "Time to answer one admission review, body parsing included.",
            )
            .buckets(vec![0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 2.0]),
        )?;
        let missed = IntCounter::new(
            "llmesh_operator_missed_pods_total",
            "Pods that asked for the sidecar and came up without it (each pod counted once).",
        )?;
        let missing_now = IntGauge::new(
            "llmesh_operator_pods_missing_sidecar",
            "Running pods that asked for the sidecar and do not have it.",
        )?;
        let restarts = IntCounter::new(
            "llmesh_operator_missed_pod_restarts_total",
            "Workload restarts the operator made so missed pods get the sidecar.",
        )?;
        let stale = IntGauge::new(
            "llmesh_operator_pods_stale_sidecar",
            "Injected pods whose sidecar template or image is older than the operator's.",
        )?;
        let certificate_errors = IntCounter::new(
            "llmesh_operator_webhook_certificate_errors_total",
            "Failed checks or renewals of the webhook certificate.",
        )?;
        registry.register(Box::new(admissions.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(missed.clone()))?;
        registry.register(Box::new(missing_now.clone()))?;
        registry.register(Box::new(restarts.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(certificate_errors.clone()))?;
        Ok(Self {
            admissions,
            duration,
            missed,
            missing_now,
            restarts,
            stale,
            certificate_errors,
        })
    }

    /// Records one admission review.
    pub fn admitted(&self, result: &'static str, took: Duration) {
        self.admissions.with_label_values(&[result]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Records a newly found missed pod.
    pub fn missed(&self) {
        self.missed.inc();
    }

    /// Sets the number of pods missing the sidecar and of pods running an older one.
    pub fn set_counts(&self, missing: usize, stale: usize) {
        self.missing_now.set(i64::try_from(missing).unwrap_or(i64::MAX));
        self.stale.set(i64::try_from(stale).unwrap_or(i64::MAX));
    }

    /// Records a failed certificate check or renewal.
    pub fn certificate_error(&self) {
        self.certificate_errors.inc();
    }

    /// Records a workload restart.
    pub fn restarted(&self) {
        self.restarts.inc();
    }
}
