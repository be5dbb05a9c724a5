//! Strategy statistics with fixed inputs and stated tolerances.

use std::sync::Arc;
use std::time::Duration;

use llmesh_crds::config::{BreakerConfig, ProviderConfig};
use llmesh_crds::resources::{Price, ProviderKind, Strategy};
use tokio::time::Instant;

use super::*;
use crate::drills::Drills;
use crate::health::{HealthRegistry, TargetKey};
use crate::metrics::Metrics;
use crate::providers::mock::Mock;

/// A target for these tests: name, weight, and (input, output) price.
type Spec<'a> = (&'a str, u32, Option<(f64, f64)>);

fn targets(specs: &[Spec<'_>]) -> Vec<Target> {
    let health = HealthRegistry::new(Arc::new(Metrics::new()));
    let config = ProviderConfig {
        kind: ProviderKind::Mock,
        base_url: None,
        credentials: llmesh_crds::config::Credentials::None,
        headers: Default::default(),
        region: None,
        azure: None,
        mock: None,
        prompt_caching: None,
    };
    specs
        .iter()
        .map(|(name, weight, price)| Target {
            provider_name: (*name).to_owned(),
            provider: Arc::new(Mock::new(name, &config, Arc::new(Drills::default()))),
            model: (*name).to_owned(),
            weight: *weight,
            price: price.map(|(input, output)| Price {
                input,
                output,
                cached_input: None,
                cache_write: None,
            }),
            context_window: None,
            timeout: None,
            idle_timeout: None,
            health: health.target(TargetKey {
                provider: (*name).to_owned(),
                model: (*name).to_owned(),
            }),
        })
        .collect()
}

fn first_picks(strategy: Strategy, set: &[Target], selector: &Selector, rounds: usize) -> Vec<String> {
    (0..rounds)
        .map(|_| {
            selector.order(strategy, set, &Estimate::default())[0]
                .provider_name
                .clone()
        })
        .collect()
}

#[test]
fn weighted_splits_seventy_thirty_within_a_few_percent_and_lists_every_target() {
    let set = targets(&[("a", 70, None), ("b", 30, None)]);
    let selector = Selector::new(&set);
    let picks = first_picks(Strategy::Weighted, &set, &selector, 1000);
    let a = picks.iter().filter(|p| *p == "a").count();
    assert!((680..=720).contains(&a), "a served {a} of 1000");
    // No bursts: never more than three in a row for a 70/30 split.
    let longest_run = picks
        .chunk_by(|x, y| x == y)
        .map(<[String]>::len)
        .max()
        .unwrap_or(0);
    assert!(longest_run <= 3, "run of {longest_run}");
    assert_eq!(
        selector
            .order(Strategy::Weighted, &set, &Estimate::default())
            .len(),
        2
    );
}

#[test]
fn a_zero_weight_target_is_only_a_failover() {
    let set = targets(&[("a", 1, None), ("spare", 0, None)]);
    let selector = Selector::new(&set);
    assert!(
        first_picks(Strategy::Weighted, &set, &selector, 100)
            .iter()
            .all(|p| p == "a")
    );
    assert_eq!(
        selector.order(Strategy::Weighted, &set, &Estimate::default())[1].provider_name,
        "spare"
    );
}

#[test]
fn least_busy_picks_the_target_with_fewest_requests_in_flight_and_spreads_ties() {
    let set = targets(&[("a", 1, None), ("b", 1, None), ("c", 1, None)]);
    let selector = Selector::new(&set);
    let busy: Vec<_> = (0..3)
        .map(|_| set[0].health.start())
        .chain([set[1].health.start()])
        .collect();
    assert!(
        first_picks(Strategy::LeastBusy, &set, &selector, 50)
            .iter()
            .all(|p| p == "c")
    );
    drop(busy);
    let picks = first_picks(Strategy::LeastBusy, &set, &selector, 300);
    for name in ["a", "b", "c"] {
        assert_eq!(
            picks.iter().filter(|p| *p == name).count(),
            100,
            "idle targets share evenly"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn least_latency_tries_unmeasured_targets_then_prefers_the_fastest() {
    let set = targets(&[("slow", 1, None), ("fast", 1, None), ("new", 1, None)]);
    let selector = Selector::new(&set);
    let config = BreakerConfig::default();
    set[0]
        .health
        .record(&config, None, Duration::from_millis(900), Instant::now());
    set[1]
        .health
        .record(&config, None, Duration::from_millis(100), Instant::now());
    let order: Vec<&str> = selector
        .order(Strategy::LeastLatency, &set, &Estimate::default())
        .iter()
        .map(|t| t.provider_name.as_str())
        .collect();
    assert_eq!(order, ["new", "fast", "slow"]);
}

#[tokio::test(start_paused = true)]
async fn least_latency_re_measures_a_slow_target_now_and_then_and_takes_it_back_once_fast() {
    let set = targets(&[("slow", 1, None), ("fast", 1, None)]);
    let selector = Selector::new(&set);
    let config = BreakerConfig::default();
    let sample = |target: &Target, ms: u64| {
        target
            .health
            .record(&config, None, Duration::from_millis(ms), Instant::now());
    };
    sample(&set[0], 900);
    sample(&set[1], 100);

    // Ten requests a second for a minute, the fast target answering each.
    let mut probes = Vec::new();
    for request in 0..600 {
        let first = selector.order(Strategy::LeastLatency, &set, &Estimate::default())[0];
        if first.provider_name == "slow" {
            probes.push(request);
            sample(first, 900);
        } else {
            sample(first, 100);
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    // One request per 10 s: the slow target is checked, at a bounded cost.
    assert_eq!(probes, [100, 200, 300, 400, 500]);

    // It recovers: the next probe's sample replaces the old estimate, and
    // from then on it is the faster one.
    let mut picks = Vec::new();
    for _ in 0..200 {
        let first = selector.order(Strategy::LeastLatency, &set, &Estimate::default())[0];
        sample(first, if first.provider_name == "slow" { 50 } else { 100 });
        picks.push(first.provider_name.clone());
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let back = picks.iter().position(|p| p == "slow").expect("re-measured");
    assert!(back < 120, "re-measured within about 10 s, at pick {back}");
    let fast_after = picks[back..].iter().filter(|p| *p == "fast").count();
    assert!(
        fast_after <= 2,
        "once measured fast it serves, the other re-measured now and then: {picks:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn least_latency_probes_at_most_one_request_in_twenty_when_traffic_is_sparse() {
    let set = targets(&[("slow", 1, None), ("fast", 1, None)]);
    let selector = Selector::new(&set);
    let config = BreakerConfig::default();
    for (target, ms) in [(&set[0], 900), (&set[1], 100)] {
        target
            .health
            .record(&config, None, Duration::from_millis(ms), Instant::now());
    }
    // One request a minute: every estimate is old by the next request.
    let mut slow = 0;
    for _ in 0..200 {
        tokio::time::advance(Duration::from_secs(60)).await;
        let first = selector.order(Strategy::LeastLatency, &set, &Estimate::default())[0];
        let ms = if first.provider_name == "slow" {
            slow += 1;
            900
        } else {
            100
        };
        first
            .health
            .record(&config, None, Duration::from_millis(ms), Instant::now());
    }
    assert_eq!(slow, 10, "one in twenty");
}

#[test]
fn cheapest_prices_the_estimated_request_and_puts_unpriced_targets_last() {
    let set = targets(&[
        ("unpriced", 1, None),
        ("big", 1, Some((2.5, 10.0))),
        ("small", 1, Some((0.15, 0.6))),
    ]);
    let selector = Selector::new(&set);
    let estimate = Estimate {
        prompt_tokens: 1_000,
        max_output_tokens: Some(100),
    };
    let order: Vec<&str> = selector
        .order(Strategy::Cheapest, &set, &estimate)
        .iter()
        .map(|t| t.provider_name.as_str())
        .collect();
    assert_eq!(order, ["small", "big", "unpriced"]);
}
