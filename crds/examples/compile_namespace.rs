//! Compiles one namespace of 1,000 llmesh resources and prints how long it
//! took: the operator's target is under a second per namespace.
//!
//! `cargo run --release -p llmesh-crds --example compile_namespace [RESOURCES]`
//!
//! The mix follows a large tenant: a tenth provider accounts, half routes
//! (each with two targets and a fallback to the previous route), the rest
//! virtual keys with budgets. Every resource is valid, so the whole
//! configuration is built, serialised and hashed.

use std::time::{Duration, Instant};

use llmesh_crds::compile::SecretKeys;
use llmesh_crds::{Budget, Inputs, LLMRoute, ProviderSecret, VirtualKey, compile};
use serde_json::json;

/// How often the compile is repeated; the fastest run is reported, as the
/// others include a busy neighbour on a shared machine.
const RUNS: usize = 5;

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("fixture: {e}"))
}

fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    let (n_providers, n_routes, n_budgets) = (total / 10, total / 2, total / 10);
    let n_keys = total - n_providers - n_routes - n_budgets;
    let meta = |kind: &str, name: String| json!({"apiVersion": "llmesh.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": "bench"}});
    let with_spec = |mut object: serde_json::Value, spec: serde_json::Value| {
        object["spec"] = spec;
        object
    };
    let mut secrets = SecretKeys::default();
    let providers: Vec<ProviderSecret> = (0..n_providers)
        .map(|i| {
            secrets.insert(&format!("key-{i}"), "apiKey");
            typed(with_spec(
                meta("ProviderSecret", format!("provider-{i}")),
                json!({"provider": "openai", "secretRef": {"name": format!("key-{i}")}}),
            ))
        })
        .collect();
    let routes: Vec<LLMRoute> = (0..n_routes)
        .map(|i| {
            let provider = |k: usize| format!("provider-{}", (i + k) % n_providers.max(1));
            let mut spec = json!({
                "targets": [
                    {"provider": provider(0), "model": "gpt-4o-mini", "weight": 3},
                    {"provider": provider(1), "model": "gpt-4o", "weight": 1}
                ],
                "retries": {"attempts": 2},
                "timeouts": {"total": "60s", "firstToken": "10s"}
            });
            if i > 0 {
                spec["fallbacks"] = json!([{"route": format!("route-{}", i - 1)}]);
            }
            typed(with_spec(meta("LLMRoute", format!("route-{i}")), spec))
        })
        .collect();
    let budgets: Vec<Budget> = (0..n_budgets)
        .map(|i| {
            typed(with_spec(
                meta("Budget", format!("budget-{i}")),
                json!({"limitUsd": 100.0, "period": "monthly", "thresholds": [50, 80, 100]}),
            ))
        })
        .collect();
    let keys: Vec<VirtualKey> = (0..n_keys)
        .map(|i| {
            let name = format!("key-{i}");
            secrets.insert_hashed(&name, "key", llmesh_crds::config::key_hash(name.as_bytes()));
            typed(with_spec(
                meta("VirtualKey", name),
                json!({
                    "team": format!("team-{}", i % 20),
                    "budget": format!("budget-{}", i % n_budgets.max(1)),
                    "allowedRoutes": [format!("route-{}", i % n_routes.max(1))],
                    "rateLimits": {"requestsPerMinute": 600}
                }),
            ))
        })
        .collect();

    let mut fastest = Duration::MAX;
    let mut compiled = None;
    for _ in 0..RUNS {
        let started = Instant::now();
        let result = compile(Inputs {
            providers: &providers,
            routes: &routes,
            keys: &keys,
            budgets: &budgets,
            secrets: &secrets,
            previous: None,
        });
        fastest = fastest.min(started.elapsed());
        compiled = Some(result);
    }
    let Some(compiled) = compiled else { return };
    assert!(
        compiled.problems.is_empty(),
        "the fixture is valid: {:?}",
        compiled.problems.first()
    );
    println!(
        "compiled {total} resources ({n_providers} providers, {n_routes} routes, {n_keys} keys, {n_budgets} budgets) in {:.1} ms (fastest of {RUNS}); version {}",
        fastest.as_secs_f64() * 1_000.0,
        compiled.config.version
    );
}
