//! The application: the state every request shares, and the part of it
//! that outlives the process.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::budget::{Budgets, Clock};
use crate::cache::ResponseCache;
use crate::error::ApiError;
use crate::eval::Sink;
use crate::health::HealthRegistry;
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::providers::Deps;
use crate::redact::Redact;
use crate::routing::Runtime;
use crate::state::{self, StateError};
use crate::telemetry::Tracer;

/// Request-independent settings the handlers read.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a client may take to send its body.
    pub body_read_timeout: std::time::Duration,
    /// Requests served at once; past it, 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
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
    /// Target health; survives reloads.
    pub health: Arc<HealthRegistry>,
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

/// Where requests are reported besides metrics and the access log.
#[derive(Debug, Default)]
pub struct Reporting {
    /// Traces, when an OTLP endpoint is configured.
    pub tracer: Option<Arc<Tracer>>,
    /// The eval sink, when one is configured.
    pub eval: Option<Arc<Sink>>,
}

impl App {
    /// An app with no configuration yet (not ready).
    pub fn new(
        settings: Limits,
        metrics: Arc<Metrics>,
        deps: Deps,
        health: Arc<HealthRegistry>,
        cache: Arc<ResponseCache>,
        state: &LocalState,
        reporting: Reporting,
    ) -> Self {
        Self {
            runtime: ArcSwapOption::empty(),
            settings,
            metrics,
            deps,
            health,
            cache,
            rate_limits: state.rate_limits.clone(),
            budgets: state.budgets.clone(),
            tracer: reporting.tracer,
            eval: reporting.eval,
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
        self.health.configure(&runtime.target_keys());
        self.budgets.publish_all(&runtime.budgets);
        self.runtime.store(Some(Arc::new(runtime)));
    }
}

/// The parts of the sidecar the state file restores, and the file.
#[derive(Debug)]
pub struct LocalState {
    file: Option<PathBuf>,
    clock: Arc<dyn Clock>,
    /// Budget spend and session tokens.
    pub budgets: Arc<Budgets>,
    /// Every key's rate-limit buckets.
    pub rate_limits: Arc<RateLimiter>,
}

impl LocalState {
    /// State carrying on from `file` (none, or no file yet: from zero).
    ///
    /// # Errors
    /// The file exists but cannot be read or is corrupt. It is left as it
    /// is for a person to look at; nothing is zeroed.
    pub fn open(
        file: Option<PathBuf>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        sync: bool,
    ) -> Result<Self, StateError> {
        let saved = match &file {
            Some(path) => state::file::load(path)?,
            None => state::file::Saved::default(),
        };
        let rate_limits = RateLimiter::restore(saved.rate_limits, clock.now());
        let budgets = Budgets::new(clock.clone(), metrics, (saved.budgets, saved.sessions));
        if sync {
            budgets.enable_sync(saved.sync);
        }
        Ok(Self {
            file,
            clock,
            budgets: Arc::new(budgets),
            rate_limits: Arc::new(rate_limits),
        })
    }

    /// Whether there is a state file to write.
    pub fn has_file(&self) -> bool {
        self.file.is_some()
    }

    /// Resolves once something changed since the last write.
    pub fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let (budgets, rate_limits) = (self.budgets.clone(), self.rate_limits.clone());
        async move {
            tokio::select! {
                () = budgets.changed() => {}
                () = rate_limits.changed() => {}
            }
        }
    }

    /// Writes the file if anything changed since the last write.
    ///
    /// # Errors
    /// The file cannot be written; the next flush tries again.
    pub fn flush(&self) -> Result<(), StateError> {
        let Some(path) = &self.file else { return Ok(()) };
        let budgets_changed = self.budgets.take_changed();
        let limits_changed = self.rate_limits.take_changed();
        if !(budgets_changed || limits_changed) {
            return Ok(());
        }
        let (budgets, sessions) = self.budgets.recorded();
        let saved = state::file::Saved {
            budgets,
            sessions,
            rate_limits: self.rate_limits.saved(self.clock.now()),
            sync: self.budgets.saved_sync(),
        };
        state::file::save(path, &saved).inspect_err(|_| {
            self.budgets.mark_changed();
            self.rate_limits.mark_changed();
        })
    }
}
