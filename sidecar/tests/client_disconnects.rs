//! Apps that hang up: mid-stream and before the answer. The upstream call
//! is cancelled at once (the mock notes when its connection went), spend is
//! settled to what the provider billed, and `least-busy`'s in-flight counts
//! come back to zero.

use std::time::{Duration, Instant};

use futures::StreamExt;
use llmesh_test_support::harness::{Sidecar, budget, provider, route, secret, virtual_key};
use llmesh_test_support::mock_server::{Behavior, MockServer};
use llmesh_test_support::openai;
use serde_json::{Value, json};

/// How long the upstream side may take to see the app's hang-up.
const RELEASE_WITHIN: Duration = Duration::from_millis(500);

fn manifests(mock: &MockServer) -> String {
    let target =
        |name: &str| format!("{{provider: {name}, model: gpt, price: {{input: 1000, output: 1000}}}}");
    [
        secret("openai-key", "apiKey", "sk-upstream"),
        provider(
            "one",
            &format!(
                "{{provider: openai, baseUrl: '{}/v1', secretRef: {{name: openai-key}}}}",
                mock.url()
            ),
        ),
        provider(
            "two",
            &format!(
                "{{provider: openai, baseUrl: '{}/v1', secretRef: {{name: openai-key}}}}",
                mock.url()
            ),
        ),
        route(
            "smart",
            &format!(
                "{{strategy: least-busy, targets: [{}, {}]}}",
                target("one"),
                target("two")
            ),
        ),
        secret("agent", "key", "sk-agent"),
        virtual_key("agent", "{budget: team}"),
        budget("team", "{limitUsd: 1000, period: daily}"),
    ]
    .concat()
}

fn ask(stream: bool) -> Value {
    json!({"model": "smart", "stream": stream, "messages": [{"role": "user", "content": "tell me a very long story please"}]})
}

/// Waits until the mock has seen `count` answers abandoned; when the last went.
async fn released(mock: &MockServer, count: usize) -> Instant {
    for _ in 0..200 {
        if let Some(last) = mock.state.released().get(count - 1) {
            return *last;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the upstream connection was never released");
}

fn spent(sidecar: &Sidecar) -> f64 {
    let gateway = sidecar.gateway.as_ref().expect("running");
    gateway
        .app
        .budgets
        .recorded()
        .0
        .get("team")
        .map_or(0.0, |s| s.spent_usd)
}

async fn in_flight(sidecar: &Sidecar) -> Vec<u64> {
    let targets: Value = reqwest::get(format!("{}/debug/targets", sidecar.admin_url))
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    targets
        .as_array()
        .expect("list")
        .iter()
        .map(|t| t["in_flight"].as_u64().expect("a count"))
        .collect()
}

/// The record is written by a task once the response is dropped.
async fn settled(sidecar: &Sidecar, above: f64) -> f64 {
    for _ in 0..100 {
        let spent = spent(sidecar);
        if spent > above {
            return spent;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    spent(sidecar)
}

#[tokio::test]
async fn an_app_that_hangs_up_mid_stream_cancels_the_upstream_and_pays_for_what_was_sent() {
    let mock = openai::start().await;
    let sidecar = Sidecar::start(&manifests(&mock)).await;
    mock.push([Behavior::Endless]);

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/v1/chat/completions", sidecar.url))
        .bearer_auth("sk-agent")
        .json(&ask(true))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let mut chunks = response.bytes_stream();
    let mut received = 0;
    while received < 20 {
        chunks.next().await.expect("a chunk").expect("read");
        received += 1;
    }
    assert_eq!(
        in_flight(&sidecar).await.iter().sum::<u64>(),
        1,
        "one stream open"
    );
    drop(chunks);
    let hung_up = Instant::now();

    let release = released(&mock, 1).await.saturating_duration_since(hung_up);
    println!("upstream released {release:?} after the app hung up mid-stream");
    assert!(release < RELEASE_WITHIN, "released after {release:?}");

    // No usage came: the estimated prompt and one token per chunk sent, at
    // $1000 per million tokens each.
    let spent = settled(&sidecar, 0.0).await;
    assert!(spent >= 0.010, "billed for the chunks it sent: ${spent}");
    assert!(spent < 0.5, "not for an endless answer: ${spent}");
    assert_eq!(in_flight(&sidecar).await, [0, 0], "least-busy's counts are exact");

    // The sidecar serves on as before.
    let again = client
        .post(format!("{}/v1/chat/completions", sidecar.url))
        .bearer_auth("sk-agent")
        .json(&ask(false))
        .send()
        .await
        .expect("sent");
    assert_eq!(again.status(), 200);
    sidecar.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_app_that_hangs_up_before_the_answer_cancels_the_upstream_call() {
    let mock = openai::start().await;
    let sidecar = Sidecar::start(&manifests(&mock)).await;
    mock.push([Behavior::HeadersThenSilence, Behavior::HeadersThenSilence]);

    for (stream, count) in [(false, 1), (true, 2)] {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .expect("client");
        let started = Instant::now();
        let request = client
            .post(format!("{}/v1/chat/completions", sidecar.url))
            .bearer_auth("sk-agent")
            .json(&ask(stream));
        // A stream's headers come with its first chunk, which never comes.
        let outcome = request.send().await;
        assert!(outcome.is_err(), "the app gave up");
        drop(client);
        let hung_up = Instant::now();
        assert!(hung_up - started >= Duration::from_millis(300));

        let release = released(&mock, count).await.saturating_duration_since(hung_up);
        println!("upstream released {release:?} after the app hung up (stream: {stream})");
        assert!(release < RELEASE_WITHIN, "released after {release:?}");
        for _ in 0..50 {
            if in_flight(&sidecar).await == [0, 0] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(in_flight(&sidecar).await, [0, 0], "least-busy's counts are exact");
    }
    sidecar.stop(Duration::from_secs(1)).await;
}
