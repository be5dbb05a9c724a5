//! The metrics of keyed traffic, parsed from the exposition: names, labels
//! (key, team, feature, workload) and values after known requests.

use std::collections::BTreeMap;

use llmesh_sidecar::settings;
use llmesh_test_support::harness::{Sidecar, provider, route, secret, virtual_key};
use serde_json::json;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text format's sample lines (label values here have no escapes).
fn parse(exposition: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("label");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().expect("number"))
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[tokio::test]
async fn keyed_traffic_is_counted_by_key_team_feature_and_workload() {
    let yaml = [
        provider("mock", "{provider: mock}"),
        route("smart", "{targets: [{provider: mock, model: gpt-4o-mini}]}"),
        route("other", "{targets: [{provider: mock, model: gpt-4o}]}"),
        secret("team-a", "key", "sk-team-a"),
        virtual_key("team-a", "{team: a, feature: search, allowedRoutes: [smart]}"),
    ]
    .concat();
    let env = vec![
        (settings::WORKLOAD_NAMESPACE.to_owned(), "shop".to_owned()),
        (settings::WORKLOAD_NAME.to_owned(), "checkout".to_owned()),
    ];
    let sidecar = Sidecar::start_with(&yaml, env).await;
    let auth = [("authorization", "Bearer sk-team-a")];
    let ask = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    let mut cost = 0.0;
    for _ in 0..2 {
        let response = sidecar
            .post_with("/v1/chat/completions", &ask("smart"), &auth)
            .await;
        let header = response.headers()["x-llmesh-cost-usd"].to_str().expect("ascii");
        cost += header.parse::<f64>().expect("number");
    }
    assert_eq!(
        sidecar
            .post_with("/v1/chat/completions", &ask("other"), &auth)
            .await
            .status(),
        403
    );

    let samples = parse(&sidecar.get("/metrics").await.text().await.expect("metrics"));
    let key = [("virtual_key", "team-a"), ("team", "a"), ("feature", "search")];
    let workload = [("workload_namespace", "shop"), ("workload_name", "checkout")];
    let with = |extra: &[(&'static str, &'static str)]| [&key[..], &workload[..], extra].concat();

    let counted = value(
        &samples,
        "llmesh_cost_usd_total",
        &with(&[("route", "smart"), ("model", "gpt-4o-mini")]),
    );
    assert!((counted - cost).abs() < 1e-9, "{counted} != {cost}");
    assert_eq!(
        value(&samples, "llmesh_requests_total", &with(&[("status", "200")])),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "llmesh_requests_total",
            &with(&[("route", "other"), ("status", "403")])
        ),
        1.0
    );
    assert_eq!(
        value(&samples, "gen_ai_client_token_usage_count", &with(&[])),
        4.0,
        "input and output, twice, for this key"
    );
    assert!(
        samples
            .iter()
            .all(|(_, labels, _)| labels.get("workload_name").map(String::as_str) == Some("checkout")),
        "every series carries the workload"
    );
    assert!(
        samples
            .iter()
            .all(|(_, labels, _)| labels.values().all(|v| !v.contains("sk-"))),
        "no key in labels"
    );
}
