//! Prometheus metrics, served on the admin port.
//!
//! Token usage, request duration and time to first token follow the
//! OpenTelemetry GenAI semantic conventions as Prometheus names them; the
//! rest is `llmesh_*`. Labels are bounded: route, provider, model and status
//! come from configuration, never from request content.

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Seconds; from a cache hit (well under a millisecond) to a long generation.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Tokens per request, powers of four as the GenAI conventions suggest.
const TOKEN_BUCKETS: &[f64] = &[
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
];

/// The sidecar's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, provider, model, HTTP status and virtual key (with team and feature).
    pub requests: IntCounterVec,
    /// `gen_ai_client_token_usage`: tokens per request by type and virtual key.
    pub token_usage: HistogramVec,
    /// `gen_ai_server_request_duration`: seconds per request.
    pub request_duration: HistogramVec,
    /// `gen_ai_server_time_to_first_token`: seconds to the first chunk of a stream.
    pub time_to_first_token: HistogramVec,
    /// Failed upstream attempts by provider and class.
    pub upstream_errors: IntCounterVec,
    /// Attempts retried on the same target, by route and provider kind.
    pub retries: IntCounterVec,
    /// Requests served (or finally failed) by a fallback step, by route and step.
    pub fallbacks: IntCounterVec,
    /// Breaker state per target: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
    /// Configuration loads by result.
    pub config_reloads: IntCounterVec,
    /// 1 for the configuration version in force.
    pub config_info: IntGaugeVec,
    /// 1 while the sync watch is open.
    pub sync_connected: IntGaugeVec,
    /// Usage reports by result (acknowledged, duplicate, failed).
    pub sync_reports: IntCounterVec,
    /// Configurations pushed over the sync channel, by result (applied, unchanged, rejected).
    pub sync_config_pushes: IntCounterVec,
    /// Unix seconds when the operator was last heard from (frame, keepalive or ack).
    pub sync_last_heard: IntGaugeVec,
    /// USD spent, by route, provider, model and virtual key with its team and feature.
    pub cost_usd: CounterVec,
    /// Requests refused by a key's rate limit, by key and limit (requests, tokens).
    pub rate_limited: IntCounterVec,
    /// USD spent in the budget's current period.
    pub budget_spent: GaugeVec,
    /// The budget's limit in USD.
    pub budget_limit: GaugeVec,
    /// USD left in the budget's current period (never below zero).
    pub budget_remaining: GaugeVec,
    /// `llmesh_budget_period_end_seconds`.
    pub budget_period_end: GaugeVec,
    /// Budget thresholds crossed, by budget and threshold percent.
    pub budget_thresholds: IntCounterVec,
    /// Requests that found their budget exhausted, by budget and the action taken.
    pub budget_exceeded: IntCounterVec,
    /// Requests refused by a token ceiling, by budget and ceiling (request, session).
    pub token_ceiling_rejections: IntCounterVec,
    /// Requests on caching routes by route and cache result.
    pub cache_requests: IntCounterVec,
    /// Cached answers dropped before being replaced, by reason (`size`, `expired`).
    pub cache_evictions: IntCounterVec,
    /// Bytes of cached answers held.
    pub cache_bytes: IntGauge,
    /// Tasks alive in the sidecar's tokio runtime, set at each scrape.
    pub runtime_tasks: IntGauge,
    /// Tokens cache hits did not spend, by route and token type.
    pub cache_saved_tokens: IntCounterVec,
    /// Dollars cache hits did not spend, by route (targets with a price only).
    pub cache_saved_usd: CounterVec,
    /// Failed operations on the shared (Redis) cache tier, by operation.
    pub cache_shared_errors: IntCounterVec,
    /// Guardrail findings by route, policy, kind, action and phase.
    pub guardrail_findings: IntCounterVec,
    /// Spans the trace collector accepted.
    pub trace_spans_exported: IntCounter,
    /// Spans dropped, by reason (`queue-full`, `export-failed`).
    pub trace_spans_dropped: IntCounterVec,
    /// Eval records written, by sink (`file`, `http`).
    pub eval_records_written: IntCounterVec,
    /// Eval records dropped, by sink and reason (`queue-full`, `write-failed`).
    pub eval_records_dropped: IntCounterVec,
    /// Shadow requests, by route and result (`ok`, `error`).
    pub shadow_requests: IntCounterVec,
    /// USD the shadow answers cost, by route, provider and model.
    pub shadow_cost_usd: CounterVec,
}

/// The pod's owner, as the webhook passes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// The Deployment, StatefulSet, Job, … that owns the pod.
    pub name: String,
}

/// Labels of per-key metrics: bounded by the configured keys.
pub const KEY_LABELS: &[&str] = &["virtual_key", "team", "feature"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric =
        IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, name, metric)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric =
        IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, name, metric)
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

fn float_counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let metric =
        CounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

fn float_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let metric =
        GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    let metric = HistogramVec::new(opts, labels).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, name, metric)
}

/// Labels shared by the GenAI histograms.
pub const GEN_AI_LABELS: &[&str] = &[
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "route",
];

impl Metrics {
    /// Registers every metric. The names and labels are constants, so a
    /// failure here is a programming error caught by the first test.
    pub fn new() -> Self {
        Self::for_workload(None)
    }

    /// Metrics whose every series carries the workload's
    /// `workload_namespace` and `workload_name` (not `namespace`, which
    /// Prometheus' Kubernetes discovery sets itself). The registry adds
    /// these at scrape time and accepts any value, so whatever the webhook
    /// passes cannot make this fail.
    pub fn for_workload(workload: Option<&Workload>) -> Self {
        let labels = workload.map(|w| {
            std::collections::HashMap::from([
                ("workload_namespace".to_owned(), w.namespace.clone()),
                ("workload_name".to_owned(), w.name.clone()),
            ])
        });
        let registry = Registry::new_custom(None, labels).unwrap_or_else(|e| panic!("registry: {e}"));
        let with_key = |first: &[&'static str], last: &[&'static str]| -> Vec<&'static str> {
            first.iter().chain(KEY_LABELS).chain(last).copied().collect()
        };
        let requests = counter(
            &registry,
            "llmesh_requests_total",
            "Requests answered, by route, provider, model, HTTP status and virtual key.",
            &with_key(&["route", "provider", "model", "status"], &[]),
        );
        let token_labels = with_key(GEN_AI_LABELS, &["gen_ai_token_type"]);
        let token_usage = histogram(
            &registry,
            "gen_ai_client_token_usage",
            "Tokens used per request, by token type (input, output).",
            &token_labels,
            TOKEN_BUCKETS,
        );
        let mut duration_labels = GEN_AI_LABELS.to_vec();
        duration_labels.push("error_type");
        duration_labels.push("api");
        let request_duration = histogram(
            &registry,
            "gen_ai_server_request_duration",
            "Seconds from receiving a request to its last byte.",
            &duration_labels,
            DURATION_BUCKETS,
        );
        let time_to_first_token = histogram(
            &registry,
            "gen_ai_server_time_to_first_token",
            "Seconds from receiving a streaming request to its first chunk.",
            GEN_AI_LABELS,
            DURATION_BUCKETS,
        );
        let upstream_errors = counter(
            &registry,
            "llmesh_upstream_errors_total",
            "Failed upstream attempts, by provider and error class.",
            &["provider", "class"],
        );
        let retries = counter(
            &registry,
            "llmesh_retries_total",
            "Upstream attempts retried on the same target, by route and provider.",
            &["route", "provider"],
        );
        let fallbacks = counter(
            &registry,
            "llmesh_fallbacks_total",
            "Requests that reached a fallback step, by route and step (1 = the first fallback).",
            &["route", "step"],
        );
        let circuit_state = gauge(
            &registry,
            "llmesh_circuit_state",
            "Circuit breaker state per target: 0 closed, 1 half-open, 2 open.",
            &["provider", "model"],
        );
        let config_reloads = counter(
            &registry,
            "llmesh_config_reloads_total",
            "Configuration loads, by result (applied, unchanged, rejected).",
            &["result"],
        );
        let config_info = gauge(
            &registry,
            "llmesh_config_info",
            "1 for the configuration version in force.",
            &["version"],
        );
        let sync_connected = gauge(
            &registry,
            "llmesh_sync_connected",
            "1 while this sidecar holds the operator's sync watch open.",
            &[],
        );
        let sync_reports = counter(
            &registry,
            "llmesh_sync_reports_total",
            "Usage reports sent to the operator, by result (acknowledged, duplicate, failed).",
            &["result"],
        );
        let sync_config_pushes = counter(
            &registry,
            "llmesh_sync_config_pushes_total",
            "Configurations pushed by the operator, by result (applied, unchanged, rejected).",
            &["result"],
        );
        let sync_last_heard = gauge(
            &registry,
            "llmesh_sync_last_heard_timestamp_seconds",
            "When the operator was last heard from (totals, keepalive or acknowledgement), Unix seconds.",
            &[],
        );
        let cost_usd = float_counter(
            &registry,
            "llmesh_cost_usd_total",
            "USD spent, from actual token usage and the target's price.",
            &with_key(&["route", "provider", "model"], &[]),
        );
        let rate_limited = counter(
            &registry,
            "llmesh_rate_limited_total",
            "Requests refused by a virtual key's rate limit, by limit (requests, tokens).",
            &["virtual_key", "limit"],
        );
        let budget_spent = float_gauge(
            &registry,
            "llmesh_budget_spent_usd",
            "USD spent in the budget's current period.",
            &["budget", "period"],
        );
        let budget_limit = float_gauge(
            &registry,
            "llmesh_budget_limit_usd",
            "The budget's limit in USD per period.",
            &["budget", "period"],
        );
        let budget_remaining = float_gauge(
            &registry,
            "llmesh_budget_remaining_usd",
            "USD left in the budget's current period.",
            &["budget", "period"],
        );
        let budget_period_end = float_gauge(
            &registry,
            "llmesh_budget_period_end_seconds",
            "Unix time the budget's current period ends (absent for a total budget).",
            &["budget", "period"],
        );
        let budget_thresholds = counter(
            &registry,
            "llmesh_budget_threshold_crossed_total",
            "Budget thresholds crossed, by budget and threshold percent.",
            &["budget", "threshold"],
        );
        let budget_exceeded = counter(
            &registry,
            "llmesh_budget_exceeded_total",
            "Requests that found their budget exhausted, by budget and action (block, downgrade, alert).",
            &["budget", "action"],
        );
        let token_ceiling_rejections = counter(
            &registry,
            "llmesh_token_ceiling_rejections_total",
            "Requests refused by a budget's token ceiling, by ceiling (request, session).",
            &["budget", "ceiling"],
        );
        let cache_requests = counter(
            &registry,
            "llmesh_cache_requests_total",
            "Requests on caching routes, by route and result (hit, miss, bypass, refresh).",
            &["route", "result"],
        );
        let guardrail_findings = counter(
            &registry,
            "llmesh_guardrail_findings_total",
            "Guardrail findings, by route, policy, kind (email, credit_card, prompt_injection, ...), action (block, redact, flag) and phase (request, response).",
            &["route", "policy", "kind", "action", "phase"],
        );
        let cache_evictions = counter(
            &registry,
            "llmesh_cache_evictions_total",
            "Cached answers dropped, by reason (size: the memory bound; expired: past their TTL).",
            &["reason"],
        );
        let cache_bytes_name = "llmesh_cache_bytes";
        let cache_bytes = IntGauge::new(cache_bytes_name, "Bytes of cached answers held.")
            .unwrap_or_else(|e| panic!("metric {cache_bytes_name}: {e}"));
        let cache_bytes = register(&registry, cache_bytes_name, cache_bytes);
        let tasks_name = "llmesh_runtime_tasks";
        let runtime_tasks = IntGauge::new(
            tasks_name,
            "Tasks alive in the sidecar's async runtime (connections, streams, background loops).",
        )
        .unwrap_or_else(|e| panic!("metric {tasks_name}: {e}"));
        let runtime_tasks = register(&registry, tasks_name, runtime_tasks);
        let cache_saved_tokens = counter(
            &registry,
            "llmesh_cache_saved_tokens_total",
            "Tokens cache hits did not spend, by route and token type (input, output).",
            &["route", "gen_ai_token_type"],
        );
        let saved_usd_name = "llmesh_cache_saved_usd_total";
        let cache_saved_usd = CounterVec::new(
            Opts::new(
                saved_usd_name,
                "US dollars cache hits did not spend, by route (targets with a price only).",
            ),
            &["route"],
        )
        .unwrap_or_else(|e| panic!("metric {saved_usd_name}: {e}"));
        let cache_saved_usd = register(&registry, saved_usd_name, cache_saved_usd);
        let cache_shared_errors = counter(
            &registry,
            "llmesh_cache_shared_errors_total",
            "Failed or timed-out operations on the shared Redis cache, by operation (get, set, connect).",
            &["operation"],
        );
        let exported_name = "llmesh_trace_spans_exported_total";
        let trace_spans_exported = IntCounter::new(exported_name, "Spans the OTLP trace collector accepted.")
            .unwrap_or_else(|e| panic!("metric {exported_name}: {e}"));
        let trace_spans_exported = register(&registry, exported_name, trace_spans_exported);
        let trace_spans_dropped = counter(
            &registry,
            "llmesh_trace_spans_dropped_total",
            "Spans dropped, by reason (queue-full, export-failed).",
            &["reason"],
        );
        let eval_records_written = counter(
            &registry,
            "llmesh_eval_records_written_total",
            "Eval records written, by sink (file, http).",
            &["sink"],
        );
        let eval_records_dropped = counter(
            &registry,
            "llmesh_eval_records_dropped_total",
            "Eval records dropped, by sink and reason (queue-full, write-failed).",
            &["sink", "reason"],
        );
        let shadow_requests = counter(
            &registry,
            "llmesh_shadow_requests_total",
            "Requests copied to a route's shadow candidate, by route and result (ok, error).",
            &["route", "result"],
        );
        let shadow_cost_usd = float_counter(
            &registry,
            "llmesh_shadow_cost_usd_total",
            "USD the shadow candidates' answers cost, by route, provider and model.",
            &["route", "provider", "model"],
        );
        Self {
            registry,
            requests,
            token_usage,
            request_duration,
            time_to_first_token,
            upstream_errors,
            retries,
            fallbacks,
            circuit_state,
            config_reloads,
            config_info,
            sync_connected,
            sync_reports,
            sync_config_pushes,
            sync_last_heard,
            cost_usd,
            rate_limited,
            budget_spent,
            budget_limit,
            budget_remaining,
            budget_period_end,
            budget_thresholds,
            budget_exceeded,
            token_ceiling_rejections,
            cache_requests,
            cache_evictions,
            cache_bytes,
            runtime_tasks,
            cache_saved_tokens,
            cache_saved_usd,
            cache_shared_errors,
            guardrail_findings,
            trace_spans_exported,
            trace_spans_dropped,
            eval_records_written,
            eval_records_dropped,
            shadow_requests,
            shadow_cost_usd,
        }
    }

    /// Reads the number of tasks alive in the current tokio runtime into
    /// `llmesh_runtime_tasks` (a leak of spawned tasks shows as growth here).
    pub fn sample_runtime(&self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let alive = handle.metrics().num_alive_tasks();
            self.runtime_tasks.set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
    }

    /// Marks `version` as the configuration in force.
    pub fn set_config_version(&self, version: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[version]).set(1);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_runtime_task_count_follows_spawned_tasks() {
        let metrics = Metrics::for_workload(None);
        metrics.sample_runtime();
        let before = metrics.runtime_tasks.get();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = stopped.await;
        });
        metrics.sample_runtime();
        assert_eq!(metrics.runtime_tasks.get(), before + 1);
        let _ = stop.send(());
        task.await.expect("task");
        metrics.sample_runtime();
        assert_eq!(metrics.runtime_tasks.get(), before);
        assert!(
            metrics
                .encode()
                .contains(&format!("llmesh_runtime_tasks {before}"))
        );
    }

    #[test]
    fn any_workload_name_is_carried_escaped() {
        let workload = Workload {
            namespace: String::new(),
            name: "odd \"name\"\nwith a newline".to_owned(),
        };
        let metrics = Metrics::for_workload(Some(&workload));
        metrics.set_config_version("v1");
        let text = metrics.encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("llmesh_config_info{"))
            .expect("the config version series");
        // Label order follows a hash map; the escaping is what matters.
        for label in [
            r#"version="v1""#,
            r#"workload_namespace="""#,
            r#"workload_name="odd \"name\"\nwith a newline""#,
        ] {
            assert!(line.contains(label), "{label} in {line}");
        }
    }
}
