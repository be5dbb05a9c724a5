//! Strategies: the order in which a set of alternative targets is tried.
//!
//! The first target is the one chosen; the rest are where the request goes
//! if it fails over. Open circuit breakers are handled by the caller.

use std::cmp::Ordering as CmpOrdering;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llmesh_crds::resources::Strategy;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Estimate, Target};

/// Output tokens assumed for pricing when a request sets no limit.
const ASSUMED_OUTPUT_TOKENS: u64 = 256;

/// Under `least-latency`, at most one request in this many goes to a target
/// other than the fastest to re-measure it (5%), so a slow target that
/// recovers is noticed without a busy route paying much for the checks.
const PROBE_EVERY: usize = 20;

/// ...and only to a target not measured for this long: at high traffic one
/// slow request per slow target per 10 s, while a recovered target is back
/// in the ranking within about 10 s (or 20 requests, if traffic is sparse).
const PROBE_AFTER: Duration = Duration::from_secs(10);

/// Selection state of one target set.
#[derive(Debug)]
pub struct Selector {
    /// Smooth weighted round-robin: each target's current weight.
    current: Mutex<Vec<i64>>,
    /// Rotates the starting point among equals, so ties spread the load.
    turn: AtomicUsize,
}

impl Selector {
    /// State for `targets`.
    pub fn new(targets: &[Target]) -> Self {
        Self {
            current: Mutex::new(vec![0; targets.len()]),
            turn: AtomicUsize::new(0),
        }
    }

    /// Orders `targets` for one request.
    pub fn order<'t>(
        &self,
        strategy: Strategy,
        targets: &'t [Target],
        estimate: &Estimate,
    ) -> Vec<&'t Target> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let rotated = || {
            let start = turn % targets.len().max(1);
            targets[start..].iter().chain(&targets[..start]).collect()
        };
        match strategy {
            Strategy::Ordered => targets.iter().collect(),
            Strategy::Weighted => self.weighted(targets),
            Strategy::LeastBusy => sorted_by(rotated(), |t| t.health.in_flight()),
            Strategy::LeastLatency => {
                // Unmeasured targets first: they must be tried once to be ranked.
                let mut order =
                    sorted_by_f64(rotated(), |t| t.health.latency_ms().unwrap_or(f64::NEG_INFINITY));
                if turn.is_multiple_of(PROBE_EVERY) {
                    probe_stalest(&mut order, Instant::now());
                }
                order
            }
            Strategy::Cheapest => sorted_by_f64(targets.iter().collect(), |t| cost(t, estimate)),
        }
    }

    /// nginx's smooth weighted round-robin picks the first; the others follow
    /// by weight. Over any run of requests the split matches the weights
    /// closely, without bursts to one target.
    fn weighted<'t>(&self, targets: &'t [Target]) -> Vec<&'t Target> {
        let mut current = self.current.lock();
        if current.len() != targets.len() {
            *current = vec![0; targets.len()];
        }
        let total: i64 = targets.iter().map(|t| i64::from(t.weight)).sum();
        let mut best = 0;
        for (i, target) in targets.iter().enumerate() {
            current[i] += i64::from(target.weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        drop(current);
        let mut rest: Vec<&Target> = targets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != best)
            .map(|(_, t)| t)
            .collect();
        rest.sort_by_key(|t| std::cmp::Reverse(t.weight));
        std::iter::once(&targets[best]).chain(rest).collect()
    }
}

/// Puts first the best-ranked of the slower targets that is due a
/// re-measurement (claiming it, so it is probed once per [`PROBE_AFTER`]);
/// the rest keep their order, so a failed probe fails over to the fastest.
fn probe_stalest(order: &mut Vec<&Target>, now: Instant) {
    let due = (1..order.len()).find(|&i| order[i].health.claim_probe(now, PROBE_AFTER));
    if let Some(i) = due {
        let probed = order.remove(i);
        order.insert(0, probed);
    }
}

fn sorted_by<T: Ord>(mut targets: Vec<&Target>, key: impl Fn(&Target) -> T) -> Vec<&Target> {
    targets.sort_by_key(|t| key(t));
    targets
}

fn sorted_by_f64(mut targets: Vec<&Target>, key: impl Fn(&Target) -> f64) -> Vec<&Target> {
    targets.sort_by(|a, b| key(a).partial_cmp(&key(b)).unwrap_or(CmpOrdering::Equal));
    targets
}

/// Estimated USD of a request at a target; unpriced targets sort last.
fn cost(target: &Target, estimate: &Estimate) -> f64 {
    target.price.as_ref().map_or(f64::INFINITY, |price| {
        #[allow(clippy::cast_precision_loss)]
        let (input, output) = (
            estimate.prompt_tokens as f64,
            estimate.max_output_tokens.unwrap_or(ASSUMED_OUTPUT_TOKENS) as f64,
        );
        (input * price.input + output * price.output) / 1_000_000.0
    })
}

#[cfg(test)]
#[path = "strategy_tests.rs"]
mod tests;
