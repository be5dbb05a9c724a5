//! Cost accounting through a real sidecar: the built-in price table or a
//! target's own price, applied to the usage the answer reports.

use llmesh_test_support::harness::{Sidecar, provider, route};
use serde_json::{Value, json};

fn manifests() -> String {
    [
        provider("mock", "{provider: mock}"),
        // The mock answers as gpt-4o-mini, so the built-in table prices it.
        route("table", "{targets: [{provider: mock, model: gpt-4o-mini}]}"),
        route(
            "own",
            "{targets: [{provider: mock, model: gpt-4o-mini, price: {input: 10, output: 30}}]}",
        ),
        route("unpriced", "{targets: [{provider: mock, model: my-local-llama}]}"),
    ]
    .concat()
}

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "What does this request cost?"}]})
}

fn usd(input: f64, output: f64, usage: &Value) -> f64 {
    let tokens = |field: &str| usage[field].as_f64().expect("token count");
    (tokens("prompt_tokens") * input + tokens("completion_tokens") * output) / 1e6
}

fn header_usd(response: &reqwest::Response) -> Option<f64> {
    let value = response.headers().get("x-llmesh-cost-usd")?;
    value.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn the_cost_header_is_the_price_applied_to_the_usage() {
    let sidecar = Sidecar::start(&manifests()).await;
    for (model, input, output) in [("table", 0.15, 0.6), ("own", 10.0, 30.0)] {
        let response = sidecar.post("/v1/chat/completions", &ask(model)).await;
        let cost = header_usd(&response).expect("cost header");
        let body: Value = response.json().await.expect("json");
        let expected = usd(input, output, &body["usage"]);
        assert!(expected > 0.0);
        assert!((cost - expected).abs() < 1e-9, "{model}: {cost} != {expected}");
    }
    let unpriced = sidecar.post("/v1/chat/completions", &ask("unpriced")).await;
    assert_eq!(unpriced.status(), 200);
    assert_eq!(header_usd(&unpriced), None, "no price, no made-up cost");

    let metrics = sidecar.get("/metrics").await.text().await.expect("metrics");
    assert!(metrics.contains("llmesh_cost_usd_total{"), "{metrics}");
}

#[tokio::test]
async fn a_stream_reports_its_cost_after_the_usage_chunk() {
    let sidecar = Sidecar::start(&manifests()).await;
    let mut request = ask("own");
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let text = sidecar
        .post("/v1/chat/completions", &request)
        .await
        .text()
        .await
        .expect("body");
    let usage = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .find_map(|chunk| chunk.get("usage").filter(|u| !u.is_null()).cloned())
        .expect("usage chunk");
    let reported: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix(": x-llmesh-cost-usd "))
        .expect("cost comment")
        .parse()
        .expect("number");
    assert!((reported - usd(10.0, 30.0, &usage)).abs() < 1e-9, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
}
