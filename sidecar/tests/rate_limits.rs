//! Per-key rate limits through a real sidecar: OpenAI's headers on every
//! answer, and 429 with Retry-After once a limit is reached.

use llmesh_test_support::harness::{Sidecar, provider, route, secret, virtual_key};
use serde_json::{Value, json};

fn manifests() -> String {
    [
        provider("mock", "{provider: mock}"),
        route("smart", "{targets: [{provider: mock, model: big}]}"),
        secret("rpm", "key", "sk-rpm"),
        secret("tpm", "key", "sk-tpm"),
        virtual_key("rpm", "{rateLimits: {requestsPerMinute: 2}}"),
        virtual_key("tpm", "{rateLimits: {tokensPerMinute: 100}}"),
    ]
    .concat()
}

fn ask(max_tokens: u64) -> Value {
    json!({"model": "smart", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello"}]})
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn requests_per_minute_count_down_then_refuse_with_retry_after() {
    let sidecar = Sidecar::start(&manifests()).await;
    let auth = [("authorization", "Bearer sk-rpm")];
    for remaining in ["1", "0"] {
        let response = sidecar.post_with("/v1/chat/completions", &ask(5), &auth).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "2");
        assert_eq!(header(&response, "x-ratelimit-remaining-requests"), remaining);
        assert!(header(&response, "x-ratelimit-reset-requests").ends_with('s'));
        assert_eq!(
            header(&response, "x-ratelimit-limit-tokens"),
            "",
            "no token limit set"
        );
    }
    let refused = sidecar.post_with("/v1/chat/completions", &ask(5), &auth).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = header(&refused, "retry-after").parse().expect("seconds");
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("rpm"))
    );

    let metrics = sidecar.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(r#"llmesh_rate_limited_total{limit="requests",virtual_key="rpm"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn tokens_per_minute_charge_the_estimate_and_keep_the_actual_usage() {
    let sidecar = Sidecar::start(&manifests()).await;
    let auth = [("authorization", "Bearer sk-tpm")];
    // Estimate: 2 input tokens plus 60 asked for.
    let first = sidecar.post_with("/v1/chat/completions", &ask(60), &auth).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "100");
    assert_eq!(header(&first, "x-ratelimit-remaining-tokens"), "38");
    let body: Value = first.json().await.expect("json");
    let used = body["usage"]["total_tokens"].as_u64().expect("usage");
    assert!(used < 62, "the mock answers shorter than the estimate");
    // The unused part of the estimate came back.
    let second = sidecar.post_with("/v1/chat/completions", &ask(60), &auth).await;
    assert_eq!(second.status(), 200);
    let remaining: u64 = header(&second, "x-ratelimit-remaining-tokens")
        .parse()
        .expect("number");
    assert!(
        remaining + 62 + used >= 100 - 1,
        "remaining {remaining} after using {used}"
    );
    let too_big = sidecar.post_with("/v1/chat/completions", &ask(90), &auth).await;
    assert_eq!(too_big.status(), 429);
    assert!(header(&too_big, "retry-after").parse::<u64>().is_ok());
}

#[tokio::test]
async fn an_answer_far_larger_than_its_estimate_leaves_the_key_owing_all_of_it() {
    // A 5,000-word reply (the mock counts a token a word) on a 1,200-token key.
    let reply = "word ".repeat(5000);
    let yaml = [
        provider(
            "long",
            &format!("{{provider: mock, mock: {{reply: '{}'}}}}", reply.trim_end()),
        ),
        route("long", "{targets: [{provider: long, model: m}]}"),
        secret("tpm", "key", "sk-tpm"),
        virtual_key("tpm", "{rateLimits: {tokensPerMinute: 1200}}"),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let auth = [("authorization", "Bearer sk-tpm")];
    let hi = json!({"model": "long", "messages": [{"role": "user", "content": "hi"}]});
    let first = sidecar.post_with("/v1/chat/completions", &hi, &auth).await;
    assert_eq!(first.status(), 200);
    let body: Value = first.json().await.expect("json");
    let used = body["usage"]["total_tokens"].as_u64().expect("usage");
    assert!(used > 5000, "{used}");

    let refused = sidecar.post_with("/v1/chat/completions", &hi, &auth).await;
    assert_eq!(refused.status(), 429);
    // The bucket stands at 1200 - used; the next request waits until it is
    // paid back at 20 tokens a second, not a minute at most.
    let retry_after: u64 = header(&refused, "retry-after").parse().expect("seconds");
    let owed_secs = (used - 1200).div_ceil(20);
    // Less what refilled while the refused request was on its way.
    assert!(
        (owed_secs.saturating_sub(5)..=owed_secs + 1).contains(&retry_after),
        "Retry-After {retry_after}, owing {} tokens",
        used - 1200
    );
    // A full bucket is `used` tokens away, less what refilled while the
    // second request was on its way (seconds on a busy machine).
    let reset = header(&refused, "x-ratelimit-reset-tokens");
    let (minutes, seconds) = reset
        .trim_end_matches('s')
        .split_once('m')
        .expect("OpenAI's `4m10.5s` form");
    let reset_secs =
        minutes.parse::<f64>().expect("minutes") * 60.0 + seconds.parse::<f64>().expect("seconds");
    #[allow(clippy::cast_precision_loss)]
    let refill_secs = used as f64 / 20.0;
    assert!(
        (refill_secs - 5.0..=refill_secs).contains(&reset_secs),
        "{used} tokens to refill at 20/s: {reset}"
    );
}
