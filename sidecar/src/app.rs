//! The application: shared state and the two routers (API on loopback,
//! admin on the pod IP).

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::routing::{get, post};

use crate::budget::Budgets;
use crate::cache::ResponseCache;
use crate::error::ApiError;
use crate::eval::Sink;
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::providers::Deps;
use crate::redact::Redact;
use crate::routing::Runtime;
use crate::state::LocalState;
use crate::telemetry::Tracer;

/// Request-independent settings the handlers read.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Whether `POST /debug/faults` may inject faults.
    pub drills_enabled: bool,
    /// The `VirtualKey` requests without an llmesh key are made with.
    pub default_key: Option<String>,
    /// What logged prompts and answers pass through.
    pub redactor: Arc<dyn Redact>,
    /// The route aliases the pod's apps may call (`llmesh.io/routes`); `None`: all.
    pub pod_routes: Option<BTreeSet<String>>,
}

impl Limits {
    /// Whether the pod's apps may call `alias`. Only what apps ask for is
    /// limited: fallbacks and budget downgrades still reach any route.
    ///
    /// # Errors
    /// [`ApiError::RouteNotForPod`] naming the pod's routes.
    pub fn allow_route(&self, alias: &str) -> Result<(), ApiError> {
        match &self.pod_routes {
            Some(routes) if !routes.contains(alias) => Err(ApiError::RouteNotForPod {
                alias: alias.to_owned(),
                allowed: routes.iter().map(String::as_str).collect::<Vec<_>>().join(", "),
            }),
            _ => Ok(()),
        }
    }
}

/// State shared by every request.
#[derive(Debug)]
pub struct App {
    runtime: ArcSwapOption<Runtime>,
    /// Limits.
    pub settings: Limits,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// What provider adapters are built with.
    pub deps: Deps,
    /// Stored answers, kept across configuration reloads.
    pub cache: Arc<ResponseCache>,
    /// Every key's rate-limit state; survives reloads.
    pub rate_limits: Arc<RateLimiter>,
    /// Budget spend; survives reloads (and restarts, with a state file).
    pub budgets: Arc<Budgets>,
    /// Starts request traces, when an OTLP endpoint is configured.
    pub tracer: Option<Arc<Tracer>>,
    /// Where sampled requests and shadow answers go, when a sink is configured.
    pub eval: Option<Arc<Sink>>,
}

impl App {
    /// An app with no configuration yet (not ready).
    pub fn new(
        settings: Limits,
        metrics: Arc<Metrics>,
        deps: Deps,
        cache: Arc<ResponseCache>,
        state: &LocalState,
        tracer: Option<Arc<Tracer>>,
        eval: Option<Arc<Sink>>,
    ) -> Self {
        Self {
            runtime: ArcSwapOption::empty(),
            settings,
            metrics,
            deps,
            cache,
            rate_limits: state.rate_limits.clone(),
            budgets: state.budgets.clone(),
            tracer,
            eval,
        }
    }

    /// The configuration in force.
    ///
    /// # Errors
    /// [`ApiError::NotReady`] before the first configuration is loaded.
    pub fn runtime(&self) -> Result<Arc<Runtime>, ApiError> {
        self.runtime.load_full().ok_or(ApiError::NotReady)
    }

    /// Puts a new configuration in force; requests already running finish on the old one.
    pub fn install(&self, runtime: Runtime) {
        self.metrics.set_config_version(&runtime.version);
        self.deps.health.configure(&runtime.target_keys());
        self.budgets.publish_all(&runtime.budgets);
        self.runtime.store(Some(Arc::new(runtime)));
    }
}

/// The API apps call (port 4000, loopback): OpenAI's and Anthropic's.
pub fn api_router(app: Arc<App>) -> Router {
    use crate::handlers::{
        chat_completions, count_tokens, embeddings, healthz, messages, models, readyz, responses,
        unknown_path,
    };
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/responses", post(responses))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(unknown_path)
        .with_state(app)
}

/// Metrics and probes (port 9464, pod IP).
pub fn admin_router(app: Arc<App>) -> Router {
    use crate::handlers::{debug_faults, debug_targets, healthz, metrics, readyz};
    Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/targets", get(debug_targets))
        .route("/debug/faults", post(debug_faults))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app)
}
