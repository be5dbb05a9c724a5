//! The attempt loop against scripted providers, on tokio's paused clock:
//! retries, backoff, Retry-After, failover, fallback steps, breakers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use llmesh_crds::config::{BreakerConfig, RetriesConfig};
use llmesh_crds::resources::{ErrorClass, ProviderKind, Strategy};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;
use crate::api::Usage;
use crate::health::{HealthRegistry, TargetKey};
use crate::metrics::Metrics;
use crate::providers::Provider;
use crate::routing::{FallbackStep, Route, TargetSet};

/// A provider that answers from a script, then succeeds; it counts calls.
#[derive(Debug, Default)]
struct Scripted {
    script: Mutex<VecDeque<ProviderError>>,
    calls: Mutex<Vec<Instant>>,
}

impl Scripted {
    fn failing(errors: impl IntoIterator<Item = ProviderError>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(errors.into_iter().collect()),
            calls: Mutex::default(),
        })
    }

    fn calls(&self) -> usize {
        self.calls.lock().len()
    }
}

#[async_trait::async_trait]
impl Provider for Scripted {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }

    async fn chat(&self, _: &ChatRequest, _: &str) -> Result<ChatReply, ProviderError> {
        self.calls.lock().push(Instant::now());
        match self.script.lock().pop_front() {
            Some(error) => Err(error),
            None => Ok(ChatReply::Complete(Completed {
                body: "{}".into(),
                usage: Usage::default(),
            })),
        }
    }
}

/// Fallbacks here name targets, not routes: no other routes are needed.
static NO_ROUTES: std::sync::LazyLock<Runtime> = std::sync::LazyLock::new(Runtime::default);

fn server_error() -> ProviderError {
    ProviderError::from_status(500, "boom")
}

fn rate_limited(after: Duration) -> ProviderError {
    ProviderError::from_status(429, "slow down").with_retry_after(Some(after))
}

struct Fixture {
    health: HealthRegistry,
}

impl Fixture {
    fn new() -> Self {
        Self {
            health: HealthRegistry::new(Arc::new(Metrics::new())),
        }
    }

    fn target(&self, name: &str, provider: Arc<Scripted>) -> Target {
        Target {
            provider_name: name.to_owned(),
            provider,
            model: format!("{name}-model"),
            weight: 1,
            price: None,
            context_window: None,
            timeout: None,
            idle_timeout: None,
            health: self.health.target(TargetKey {
                provider: name.to_owned(),
                model: format!("{name}-model"),
            }),
        }
    }
}

fn route(
    targets: Vec<Target>,
    fallbacks: Vec<FallbackStep>,
    retries: RetriesConfig,
    breaker: BreakerConfig,
) -> Route {
    Route {
        alias: "r".into(),
        resource: "r".into(),
        strategy: Strategy::Ordered,
        targets: TargetSet::new(targets),
        rules: Vec::new(),
        fallbacks,
        retries,
        timeouts: Timeouts::default(),
        breaker,
        log_content: false,
        cache: None,
        semantic: None,
        guardrails: Arc::default(),
        eval: None,
        mirror: None,
    }
}

fn retries(attempts: u32) -> RetriesConfig {
    RetriesConfig {
        attempts,
        backoff_ms: 100,
        max_backoff_ms: 1_000,
        ..RetriesConfig::default()
    }
}

async fn serve<'r>(runtime: &'r Runtime, route: &'r Route) -> Result<Served<'r, Reply>, Failed<'r>> {
    let headers = HeaderMap::new();
    let facts = RequestFacts {
        headers: &headers,
        metadata: None,
        estimate: Estimate::default(),
    };
    chat(
        runtime,
        route,
        &ChatRequest::default(),
        &facts,
        Timeouts::default(),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_with_jitter_within_the_cap() {
    let fixture = Fixture::new();
    let provider = Scripted::failing([server_error(), server_error(), server_error()]);
    let route = route(
        vec![fixture.target("a", provider.clone())],
        vec![],
        retries(4),
        BreakerConfig::default(),
    );
    let served = serve(&NO_ROUTES, &route).await.expect("fourth attempt succeeds");
    assert_eq!((served.attempts, served.step), (4, 0));
    assert!(served.failures.iter().all(|f| f.retried));
    let calls = provider.calls.lock().clone();
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, ceiling) in gaps.iter().zip([100, 200, 400]) {
        assert!(*gap <= Duration::from_millis(ceiling), "{gaps:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_a_longer_wait_moves_on_instead() {
    let fixture = Fixture::new();
    let patient = Scripted::failing([rate_limited(Duration::from_secs(3))]);
    let route_a = route(
        vec![fixture.target("a", patient.clone())],
        vec![],
        retries(2),
        BreakerConfig::default(),
    );
    let started = Instant::now();
    serve(&NO_ROUTES, &route_a).await.expect("served after the wait");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "waited {:?}",
        started.elapsed()
    );

    let impatient = Scripted::failing([rate_limited(Duration::from_secs(60))]);
    let spare = Scripted::failing([]);
    let route_b = route(
        vec![
            fixture.target("b", impatient.clone()),
            fixture.target("c", spare.clone()),
        ],
        vec![],
        retries(3),
        BreakerConfig::default(),
    );
    let started = Instant::now();
    let served = serve(&NO_ROUTES, &route_b).await.expect("the next target serves");
    assert_eq!(served.target.provider_name, "c");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "did not wait a minute"
    );
    assert_eq!((impatient.calls(), spare.calls()), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn request_errors_are_neither_retried_nor_failed_over() {
    let fixture = Fixture::new();
    let bad = Scripted::failing([ProviderError::from_status(400, "bad tool schema")]);
    let other = Scripted::failing([]);
    let route = route(
        vec![
            fixture.target("a", bad.clone()),
            fixture.target("b", other.clone()),
        ],
        vec![],
        retries(3),
        BreakerConfig::default(),
    );
    let failed = serve(&NO_ROUTES, &route)
        .await
        .expect_err("the request is at fault");
    assert_eq!(failed.error.kind, ErrorKind::BadRequest);
    assert_eq!((bad.calls(), other.calls()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_fallback_step_is_entered_only_for_the_classes_it_names() {
    let fixture = Fixture::new();
    let step = |provider: Arc<Scripted>, name: &str, on: Vec<ErrorClass>| FallbackStep {
        to: FallbackTo::Target(TargetSet::new(vec![fixture.target(name, provider)])),
        on,
    };
    let primary = Scripted::failing([ProviderError::from_status(429, "busy")]);
    let for_timeouts = Scripted::failing([]);
    let for_rate_limits = Scripted::failing([]);
    let route = route(
        vec![fixture.target("a", primary)],
        vec![
            step(for_timeouts.clone(), "t", vec![ErrorClass::Timeout]),
            step(for_rate_limits.clone(), "r", vec![ErrorClass::RateLimit]),
        ],
        retries(1),
        BreakerConfig::default(),
    );
    // The timeout step does not match a rate limit: the chain ends there.
    let failed = serve(&NO_ROUTES, &route)
        .await
        .expect_err("chain stops at the first non-matching step");
    assert_eq!(failed.error.kind, ErrorKind::RateLimit);
    assert_eq!((for_timeouts.calls(), for_rate_limits.calls()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_matching_fallback_serves_and_says_which_step() {
    let fixture = Fixture::new();
    let primary = Scripted::failing([server_error()]);
    let backup = Scripted::failing([]);
    let route = route(
        vec![fixture.target("a", primary)],
        vec![FallbackStep {
            to: FallbackTo::Target(TargetSet::new(vec![fixture.target("b", backup.clone())])),
            on: vec![ErrorClass::ServerError],
        }],
        retries(1),
        BreakerConfig::default(),
    );
    let served = serve(&NO_ROUTES, &route).await.expect("the fallback serves");
    assert_eq!(
        (served.step, served.attempts, served.target.provider_name.as_str()),
        (1, 2, "b")
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_sheds_the_target_until_its_cooldown_passes() {
    let fixture = Fixture::new();
    let flaky = Scripted::failing([server_error(), server_error(), server_error()]);
    let steady = Scripted::failing([]);
    let breaker = BreakerConfig {
        consecutive_failures: 2,
        cooldown_ms: 5_000,
        ..BreakerConfig::default()
    };
    let route = route(
        vec![
            fixture.target("flaky", flaky.clone()),
            fixture.target("steady", steady.clone()),
        ],
        vec![],
        retries(1),
        breaker,
    );
    for _ in 0..5 {
        serve(&NO_ROUTES, &route).await.expect("steady serves");
    }
    assert_eq!(flaky.calls(), 2, "shed after two failures in a row");
    tokio::time::advance(Duration::from_secs(5)).await;
    serve(&NO_ROUTES, &route).await.expect("served");
    assert_eq!(flaky.calls(), 3, "one probe after the cool-down");
    serve(&NO_ROUTES, &route).await.expect("served");
    assert_eq!(flaky.calls(), 3, "the failed probe opened it again");
}

#[tokio::test(start_paused = true)]
async fn the_total_limit_stops_further_attempts() {
    let fixture = Fixture::new();
    let slow = Scripted::failing([
        rate_limited(Duration::from_secs(2)),
        rate_limited(Duration::from_secs(2)),
    ]);
    let route = route(
        vec![fixture.target("a", slow.clone())],
        vec![],
        retries(5),
        BreakerConfig::default(),
    );
    let headers = HeaderMap::new();
    let facts = RequestFacts {
        headers: &headers,
        metadata: None,
        estimate: Estimate::default(),
    };
    let timeouts = Timeouts {
        total: Some(Duration::from_secs(3)),
        ..Timeouts::default()
    };
    let failed = chat(&NO_ROUTES, &route, &ChatRequest::default(), &facts, timeouts)
        .await
        .expect_err("no time for a third wait");
    assert_eq!(failed.error.kind, ErrorKind::RateLimit);
    assert_eq!(slow.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn targets_whose_window_is_too_small_are_skipped_before_any_call() {
    let fixture = Fixture::new();
    let small = Scripted::failing([]);
    let large = Scripted::failing([]);
    let mut small_target = fixture.target("small", small.clone());
    small_target.context_window = Some(1_000);
    let mut large_target = fixture.target("large", large.clone());
    large_target.context_window = Some(200_000);
    let route = route(
        vec![small_target, large_target],
        vec![],
        retries(1),
        BreakerConfig::default(),
    );
    let headers = HeaderMap::new();
    let facts = RequestFacts {
        headers: &headers,
        metadata: None,
        estimate: Estimate {
            prompt_tokens: 50_000,
            max_output_tokens: None,
        },
    };
    let served = chat(
        &NO_ROUTES,
        &route,
        &ChatRequest::default(),
        &facts,
        Timeouts::default(),
    )
    .await
    .expect("the large target serves");
    assert_eq!(served.target.provider_name, "large");
    assert_eq!((small.calls(), large.calls()), (0, 1));

    let facts = RequestFacts {
        estimate: Estimate {
            prompt_tokens: 500_000,
            max_output_tokens: None,
        },
        ..facts
    };
    let failed = chat(
        &NO_ROUTES,
        &route,
        &ChatRequest::default(),
        &facts,
        Timeouts::default(),
    )
    .await
    .expect_err("nothing fits");
    assert_eq!(failed.error.kind, ErrorKind::ContextWindowExceeded);
    assert!(
        failed.error.to_string().contains("about 500000 tokens"),
        "{}",
        failed.error
    );
}
