//! Target health: a circuit breaker, a latency estimate and an in-flight
//! count per upstream target (provider account + model).
//!
//! State lives in a registry that outlasts configuration reloads, so a
//! failing target stays shed while routes around it are edited (a target
//! no route names any more is forgotten). Time comes
//! from tokio's clock, so tests drive cool-downs with a paused clock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use llmesh_crds::config::BreakerConfig;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::providers::ErrorKind;

/// Weight of the newest sample in the latency estimate: recent enough to
/// follow a provider's bad hour within a few dozen requests, smooth enough
/// that one slow answer does not flip the ranking.
const LATENCY_SMOOTHING: f64 = 0.2;

/// Identifies a target across routes and reloads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TargetKey {
    /// The `ProviderSecret`.
    pub provider: String,
    /// The upstream model.
    pub model: String,
}

/// Every target's state.
#[derive(Debug)]
pub struct HealthRegistry {
    targets: Mutex<HashMap<TargetKey, Arc<TargetState>>>,
    metrics: Arc<Metrics>,
}

impl HealthRegistry {
    /// An empty registry reporting breaker states into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            targets: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The state of a target, created on first use.
    pub fn target(&self, key: TargetKey) -> Arc<TargetState> {
        self.targets
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(TargetState::new(key)))
            .clone()
    }

    /// Keeps the state of exactly these targets (those of the configuration
    /// put in force) and publishes their breakers: a target never used reads
    /// 0 (closed) rather than having no series, and a removed target's
    /// series goes.
    pub fn configure(&self, keys: &BTreeSet<TargetKey>) {
        let mut targets = self.targets.lock();
        targets.retain(|key, _| keys.contains(key));
        for key in keys {
            targets
                .entry(key.clone())
                .or_insert_with(|| Arc::new(TargetState::new(key.clone())));
        }
        self.metrics.circuit_state.reset();
        self.publish_locked(&targets, Instant::now());
    }

    /// Sets `llmesh_circuit_state` from the same state `/debug/targets`
    /// shows; called before metrics are read, because a cool-down ends by
    /// time alone, with no event to update the gauge.
    pub fn publish(&self) {
        self.publish_locked(&self.targets.lock(), Instant::now());
    }

    fn publish_locked(&self, targets: &HashMap<TargetKey, Arc<TargetState>>, now: Instant) {
        for target in targets.values() {
            self.metrics
                .circuit_state
                .with_label_values(&[&target.key.provider, &target.key.model])
                .set(target.inner.lock().breaker.at(now).gauge());
        }
    }

    /// A snapshot of every target, sorted, for `GET /debug/targets`.
    pub fn snapshot(&self) -> Vec<TargetSnapshot> {
        let now = Instant::now();
        let mut all: Vec<TargetSnapshot> = self.targets.lock().values().map(|t| t.snapshot(now)).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }
}

/// One target's breaker, latency and load.
#[derive(Debug)]
pub struct TargetState {
    key: TargetKey,
    in_flight: AtomicU32,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    latency_ms: Option<f64>,
    /// When the target was last measured, or last chosen to be re-measured.
    checked_at: Option<Instant>,
    /// A re-measuring request is on its way: its sample replaces the
    /// estimate, which is too old to average with.
    probing: bool,
    breaker: Breaker,
    consecutive_failures: u32,
    /// Outcomes inside the breaker window: (when, failed).
    window: VecDeque<(Instant, bool)>,
    last_failure: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Breaker {
    #[default]
    Closed,
    Open {
        until: Instant,
    },
    /// Cooled down: one probe may go; `probe_since` marks one in flight.
    HalfOpen {
        probe_since: Option<Instant>,
    },
}

impl Breaker {
    /// The state at `now`: an open breaker whose cool-down has passed is
    /// half-open, its probe not yet sent.
    fn at(self, now: Instant) -> Self {
        match self {
            Self::Open { until } if now >= until => Self::HalfOpen { probe_since: None },
            other => other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half-open",
        }
    }

    fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen { .. } => 1,
            Self::Open { .. } => 2,
        }
    }
}

/// What `GET /debug/targets` shows for a target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetSnapshot {
    /// Which target.
    #[serde(flatten)]
    pub key: TargetKey,
    /// `closed`, `open` or `half-open`.
    pub breaker: &'static str,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Smoothed latency to the first answer byte, if measured.
    pub latency_ms: Option<f64>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Failure share within the breaker window.
    pub window_error_ratio: Option<f64>,
    /// The class of the last failure.
    pub last_failure: Option<&'static str>,
}

/// Holds a target's in-flight count up while it lives.
#[derive(Debug)]
pub struct InFlight(Arc<TargetState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TargetState {
    fn new(key: TargetKey) -> Self {
        Self {
            key,
            in_flight: AtomicU32::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Which target this is.
    pub fn key(&self) -> &TargetKey {
        &self.key
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The smoothed latency estimate, if any.
    pub fn latency_ms(&self) -> Option<f64> {
        self.inner.lock().latency_ms
    }

    /// Claims a re-measuring request (a probe) for this target if it has not
    /// been measured or probed for `after`; `false` when it has, or when it
    /// was never measured (unmeasured targets are tried first anyway).
    pub fn claim_probe(&self, now: Instant, after: Duration) -> bool {
        let mut inner = self.inner.lock();
        let due = inner
            .checked_at
            .is_some_and(|at| now.saturating_duration_since(at) >= after);
        if due {
            inner.checked_at = Some(now);
            inner.probing = true;
        }
        due
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Whether a request may go to this target now. An open breaker refuses
    /// until its cool-down passes, then lets one probe through.
    pub fn admit(&self, config: &BreakerConfig, now: Instant) -> bool {
        if !config.enabled {
            return true;
        }
        let mut inner = self.inner.lock();
        let cooldown = Duration::from_millis(config.cooldown_ms);
        match inner.breaker.at(now) {
            Breaker::Closed => true,
            Breaker::Open { .. } => false,
            // A probe that never reported (its request was abandoned) frees the slot after a cool-down.
            Breaker::HalfOpen {
                probe_since: Some(since),
            } if now < since + cooldown => false,
            Breaker::HalfOpen { .. } => {
                self.transition(
                    &mut inner,
                    Breaker::HalfOpen {
                        probe_since: Some(now),
                    },
                );
                true
            }
        }
    }

    /// Records an attempt's outcome: `failure` is the class when it failed.
    pub fn record(
        &self,
        config: &BreakerConfig,
        failure: Option<ErrorKind>,
        latency: Duration,
        now: Instant,
    ) {
        let mut inner = self.inner.lock();
        let failed = failure.is_some_and(ErrorKind::is_transient);
        let probe = std::mem::take(&mut inner.probing);
        if !failed {
            #[allow(clippy::cast_precision_loss)]
            let sample = latency.as_micros() as f64 / 1000.0;
            inner.latency_ms = Some(match inner.latency_ms {
                Some(previous) if !probe => previous + LATENCY_SMOOTHING * (sample - previous),
                _ => sample,
            });
            inner.checked_at = Some(now);
        }
        let window = Duration::from_millis(config.window_ms);
        while inner
            .window
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            inner.window.pop_front();
        }
        inner.window.push_back((now, failed));
        if failed {
            inner.consecutive_failures += 1;
            inner.last_failure = failure.map(ErrorKind::label);
        } else {
            inner.consecutive_failures = 0;
        }
        if !config.enabled {
            return;
        }
        let open = Breaker::Open {
            until: now + Duration::from_millis(config.cooldown_ms),
        };
        match (inner.breaker, failed) {
            (Breaker::HalfOpen { .. }, true) => self.transition(&mut inner, open),
            (Breaker::HalfOpen { .. }, false) => {
                inner.window.clear();
                self.transition(&mut inner, Breaker::Closed);
            }
            (Breaker::Closed, true) if trips(&inner, config) => self.transition(&mut inner, open),
            _ => {}
        }
    }

    fn transition(&self, inner: &mut Inner, to: Breaker) {
        if inner.breaker.label() != to.label() {
            tracing::warn!(provider = %self.key.provider, model = %self.key.model, from = inner.breaker.label(), to = to.label(), "circuit breaker changed state");
        }
        inner.breaker = to;
    }

    fn snapshot(&self, now: Instant) -> TargetSnapshot {
        let inner = self.inner.lock();
        let failures = inner.window.iter().filter(|(_, failed)| *failed).count();
        #[allow(clippy::cast_precision_loss)]
        let ratio = (!inner.window.is_empty()).then(|| failures as f64 / inner.window.len() as f64);
        TargetSnapshot {
            key: self.key.clone(),
            breaker: inner.breaker.at(now).label(),
            in_flight: self.in_flight(),
            latency_ms: inner.latency_ms,
            consecutive_failures: inner.consecutive_failures,
            window_error_ratio: ratio,
            last_failure: inner.last_failure,
        }
    }
}

fn trips(inner: &Inner, config: &BreakerConfig) -> bool {
    if inner.consecutive_failures >= config.consecutive_failures {
        return true;
    }
    let total = inner.window.len();
    let failures = inner.window.iter().filter(|(_, failed)| *failed).count();
    #[allow(clippy::cast_precision_loss)]
    let ratio = failures as f64 / total.max(1) as f64;
    total >= config.min_requests as usize && ratio >= config.error_ratio
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Arc<TargetState> {
        HealthRegistry::new(Arc::new(Metrics::new())).target(TargetKey {
            provider: "p".into(),
            model: "m".into(),
        })
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            cooldown_ms: 10_000,
            ..BreakerConfig::default()
        }
    }

    const FAIL: Option<ErrorKind> = Some(ErrorKind::ServerError);
    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_probes_after_cooldown_and_closes_on_success() {
        let (target, config) = (state(), config());
        for _ in 0..3 {
            assert!(target.admit(&config, Instant::now()));
            target.record(&config, FAIL, MS, Instant::now());
        }
        assert!(!target.admit(&config, Instant::now()), "open");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!target.admit(&config, Instant::now()), "still cooling down");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(target.admit(&config, Instant::now()), "one probe");
        assert!(!target.admit(&config, Instant::now()), "only one probe at a time");
        target.record(&config, None, MS, Instant::now());
        assert!(target.admit(&config, Instant::now()), "closed again");
        assert!(target.admit(&config, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_for_a_full_cooldown() {
        let (target, config) = (state(), config());
        for _ in 0..3 {
            target.record(&config, FAIL, MS, Instant::now());
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(target.admit(&config, Instant::now()));
        target.record(&config, Some(ErrorKind::Timeout), MS, Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!target.admit(&config, Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(target.admit(&config, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_the_error_ratio_over_the_window() {
        let target = state();
        let config = BreakerConfig {
            consecutive_failures: 100,
            min_requests: 10,
            error_ratio: 0.5,
            ..config()
        };
        for i in 0..10 {
            target.record(&config, if i % 2 == 1 { FAIL } else { None }, MS, Instant::now());
        }
        assert!(!target.admit(&config, Instant::now()), "5 of 10 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn old_outcomes_leave_the_window_and_request_errors_do_not_count() {
        let target = state();
        let config = BreakerConfig {
            consecutive_failures: 100,
            min_requests: 4,
            error_ratio: 0.5,
            window_ms: 1_000,
            ..config()
        };
        target.record(&config, FAIL, MS, Instant::now());
        target.record(&config, FAIL, MS, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        for _ in 0..4 {
            target.record(&config, Some(ErrorKind::BadRequest), MS, Instant::now());
        }
        assert!(target.admit(&config, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn latency_is_smoothed_and_failures_do_not_move_it() {
        let (target, config) = (state(), config());
        target.record(&config, None, Duration::from_millis(100), Instant::now());
        target.record(&config, None, Duration::from_millis(200), Instant::now());
        target.record(&config, FAIL, Duration::from_secs(30), Instant::now());
        assert_eq!(target.latency_ms(), Some(120.0));
        let guard = target.start();
        assert_eq!(target.in_flight(), 1);
        drop(guard);
        assert_eq!(target.in_flight(), 0);
    }

    fn circuit_series(metrics: &Metrics) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with("llmesh_circuit_state{"))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_gauge_and_the_snapshot_show_one_breaker_state_for_every_configured_target() {
        let metrics = Arc::new(Metrics::new());
        let registry = HealthRegistry::new(metrics.clone());
        let key = |provider: &str| TargetKey {
            provider: provider.into(),
            model: "m".into(),
        };
        registry.configure(&[key("a"), key("b")].into());
        assert_eq!(
            circuit_series(&metrics),
            [
                r#"llmesh_circuit_state{model="m",provider="a"} 0"#,
                r#"llmesh_circuit_state{model="m",provider="b"} 0"#
            ],
            "never used, closed: a series all the same"
        );

        let (a, config) = (registry.target(key("a")), config());
        for _ in 0..3 {
            a.record(&config, FAIL, MS, Instant::now());
        }
        let states = |registry: &HealthRegistry| {
            registry.publish();
            let snapshot: Vec<_> = registry.snapshot().iter().map(|t| t.breaker).collect();
            (snapshot, circuit_series(&metrics)[0].clone())
        };
        assert_eq!(
            states(&registry),
            (
                vec!["open", "closed"],
                r#"llmesh_circuit_state{model="m",provider="a"} 2"#.to_owned()
            )
        );
        // The cool-down passes with no request: both say half-open before the probe.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            states(&registry),
            (
                vec!["half-open", "closed"],
                r#"llmesh_circuit_state{model="m",provider="a"} 1"#.to_owned()
            )
        );

        // A reload without `a`: its state and its series go.
        registry.configure(&[key("b")].into());
        assert_eq!(
            circuit_series(&metrics),
            [r#"llmesh_circuit_state{model="m",provider="b"} 0"#]
        );
        assert_eq!(registry.snapshot().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_breaker_never_sheds() {
        let target = state();
        let config = BreakerConfig {
            enabled: false,
            ..config()
        };
        for _ in 0..10 {
            target.record(&config, FAIL, MS, Instant::now());
        }
        assert!(target.admit(&config, Instant::now()));
    }
}
