//! Response caching through a real sidecar: what is served from memory,
//! what reaches the upstream (the mock counts its calls), and what the
//! headers, metrics and memory bound say.

use llmesh_sidecar::settings;
use llmesh_test_support::harness::{Sidecar, http_client, provider, route, secret};
use llmesh_test_support::{Behavior, MockServer, RedisServer, openai};
use serde_json::{Value, json};

const CACHED: &str = "cache: {mode: exact, ttl: 10m}";

async fn openai_sidecar(mock: &MockServer, route_extra: &str) -> Sidecar {
    let yaml = [
        secret("openai-key", "apiKey", "sk-test"),
        provider(
            "openai",
            &format!(
                "{{provider: openai, baseUrl: '{}/v1', secretRef: {{name: openai-key}}}}",
                mock.url()
            ),
        ),
        route(
            "smart",
            &format!(
                "{{targets: [{{provider: openai, model: gpt-4o-mini, price: {{input: 2, output: 8}}}}], {route_extra}}}"
            ),
        ),
    ]
    .concat();
    Sidecar::start(&yaml).await
}

/// A caching route `smart` on a mock provider with the given spec.
fn cached_mock(provider_spec: &str) -> String {
    [
        provider("mock", provider_spec),
        route(
            "smart",
            &format!("{{targets: [{{provider: mock, model: m}}], {CACHED}}}"),
        ),
    ]
    .concat()
}

fn ask(question: &str) -> Value {
    json!({"model": "smart", "temperature": 0, "messages": [{"role": "user", "content": question}]})
}

fn streaming(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body
}

/// Sends a chat request with extra headers; returns the cache verdict and the body text.
async fn chat(sidecar: &Sidecar, body: &Value, headers: &[(&str, &str)]) -> (String, String) {
    let mut request = http_client()
        .post(format!("{}/v1/chat/completions", sidecar.url))
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("sent");
    assert_eq!(response.status(), 200, "{body}");
    let verdict = response
        .headers()
        .get("x-llmesh-cache")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    (verdict, response.text().await.expect("body"))
}

/// The text an SSE body carries, and whether it ended with `[DONE]`.
fn streamed_text(body: &str) -> (String, bool) {
    let mut text = String::new();
    for data in body
        .split("\n\n")
        .filter_map(|frame| frame.strip_prefix("data: "))
    {
        if data == "[DONE]" {
            return (text, true);
        }
        let chunk: Value = serde_json::from_str(data).expect("a JSON chunk");
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
    }
    (text, false)
}

fn content(body: &str) -> String {
    let json: Value = serde_json::from_str(body).expect("json");
    json["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_owned()
}

async fn metrics(sidecar: &Sidecar) -> String {
    sidecar.get("/metrics").await.text().await.expect("text")
}

#[tokio::test]
async fn an_identical_request_is_answered_from_memory_and_a_changed_one_is_not() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(&mock, CACHED).await;

    let (first, body) = chat(&sidecar, &ask("What is llmesh?"), &[]).await;
    let (second, again) = chat(&sidecar, &ask("What is llmesh?"), &[]).await;
    assert_eq!((first.as_str(), second.as_str()), ("miss", "hit"));
    assert_eq!(again, body, "the stored answer, byte for byte");
    assert_eq!(mock.calls().len(), 1, "the hit made no upstream call");

    let mut other_user = ask("What is llmesh?");
    other_user["user"] = json!("someone-else");
    assert_eq!(
        chat(&sidecar, &other_user, &[]).await.0,
        "hit",
        "`user` is not part of the key"
    );

    let mut warmer = ask("What is llmesh?");
    warmer["temperature"] = json!(0.9);
    assert_eq!(
        chat(&sidecar, &warmer, &[]).await.0,
        "miss",
        "a changed parameter"
    );
    assert_eq!(chat(&sidecar, &ask("Something else?"), &[]).await.0, "miss");
    assert_eq!(mock.calls().len(), 3);

    let text = metrics(&sidecar).await;
    for line in [
        r#"llmesh_cache_requests_total{result="hit",route="smart"} 2"#,
        r#"llmesh_cache_requests_total{result="miss",route="smart"} 3"#,
        r#"llmesh_requests_total{feature="",model="gpt-4o-mini",provider="openai",route="smart",status="200",team="",virtual_key=""} 5"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    let saved_input: u64 = metric_value(
        &text,
        r#"llmesh_cache_saved_tokens_total{gen_ai_token_type="input",route="smart"}"#,
    );
    assert!(saved_input > 0, "{text}");
    let saved_usd: f64 = metric_value(&text, r#"llmesh_cache_saved_usd_total{route="smart"}"#);
    assert!(saved_usd > 0.0, "a priced target's hits save dollars: {text}");
}

fn metric_value<T: std::str::FromStr>(text: &str, series: &str) -> T {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} in\n{text}"))
}

#[tokio::test]
async fn streams_and_complete_answers_are_served_from_each_others_entries() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(&mock, CACHED).await;

    let (verdict, body) = chat(&sidecar, &ask("stored whole"), &[]).await;
    assert_eq!(verdict, "miss");
    let (verdict, stream) = chat(&sidecar, &streaming(ask("stored whole")), &[]).await;
    assert_eq!(verdict, "hit");
    assert_eq!(streamed_text(&stream), (content(&body), true), "{stream}");

    let (verdict, stream) = chat(&sidecar, &streaming(ask("stored streamed")), &[]).await;
    assert_eq!(verdict, "miss");
    let (streamed, done) = streamed_text(&stream);
    assert!(done);
    let (verdict, body) = chat(&sidecar, &ask("stored streamed"), &[]).await;
    assert_eq!(verdict, "hit", "a stream is stored once it has ended");
    assert_eq!(content(&body), streamed);
    let (verdict, again) = chat(&sidecar, &streaming(ask("stored streamed")), &[]).await;
    assert_eq!(verdict, "hit");
    assert_eq!(streamed_text(&again), (streamed, true));
    assert_eq!(mock.calls().len(), 2);

    let mut with_usage = streaming(ask("stored whole"));
    with_usage["stream_options"] = json!({"include_usage": true});
    let (_, stream) = chat(&sidecar, &with_usage, &[]).await;
    let last = stream
        .split("\n\n")
        .filter_map(|f| f.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .last()
        .expect("a usage chunk");
    let usage: Value = serde_json::from_str(last).expect("json");
    assert!(
        usage["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 0),
        "{usage}"
    );
}

#[tokio::test]
async fn failures_and_broken_streams_are_never_stored() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(&mock, CACHED).await;

    mock.push([Behavior::Status(500)]);
    let failed = sidecar.post("/v1/chat/completions", &ask("fragile")).await;
    assert_eq!(failed.status(), 502);
    assert_eq!(chat(&sidecar, &ask("fragile"), &[]).await.0, "miss");

    mock.push([Behavior::CutStream(2)]);
    let (_, broken) = chat(&sidecar, &streaming(ask("cut short")), &[]).await;
    assert!(
        !streamed_text(&broken).1,
        "the broken stream has no [DONE]: {broken}"
    );
    assert_eq!(chat(&sidecar, &ask("cut short"), &[]).await.0, "miss");
    assert_eq!(chat(&sidecar, &ask("cut short"), &[]).await.0, "hit");
}

#[tokio::test]
async fn answers_cut_at_the_output_limit_are_not_stored() {
    let sidecar = Sidecar::start(&cached_mock("{provider: mock}")).await;
    let mut limited = ask("a question with many words in it");
    limited["max_tokens"] = json!(2);
    for stream in [false, true] {
        let body = if stream {
            streaming(limited.clone())
        } else {
            limited.clone()
        };
        assert_eq!(chat(&sidecar, &body, &[]).await.0, "miss");
        assert_eq!(chat(&sidecar, &body, &[]).await.0, "miss", "finish_reason length");
    }
}

#[tokio::test]
async fn requests_steer_the_cache_with_headers_unless_the_route_forbids_it() {
    let mock = openai::start().await;
    let sidecar = openai_sidecar(&mock, CACHED).await;
    let question = ask("steered");

    assert_eq!(
        chat(&sidecar, &question, &[("cache-control", "no-store")])
            .await
            .0,
        "miss"
    );
    assert_eq!(
        chat(&sidecar, &question, &[("x-llmesh-cache", "bypass")]).await.0,
        "bypass"
    );
    assert_eq!(
        chat(&sidecar, &question, &[]).await.0,
        "miss",
        "neither stored an answer"
    );
    assert_eq!(chat(&sidecar, &question, &[]).await.0, "hit");
    assert_eq!(
        chat(&sidecar, &question, &[("cache-control", "no-cache")])
            .await
            .0,
        "refresh"
    );
    assert_eq!(
        mock.calls().len(),
        4,
        "bypass and refresh both asked the upstream"
    );

    let refused = http_client()
        .post(format!("{}/v1/chat/completions", sidecar.url))
        .header("x-llmesh-cache-ttl", "forever")
        .json(&question)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 400);

    let locked = openai::start().await;
    let strict = openai_sidecar(&locked, "cache: {mode: exact, allowOverrides: false}").await;
    assert_eq!(chat(&strict, &question, &[]).await.0, "miss");
    let asked = [("cache-control", "no-cache"), ("x-llmesh-cache", "bypass")];
    assert_eq!(
        chat(&strict, &question, &asked).await.0,
        "hit",
        "the route ignores the headers"
    );
}

/// Lifetimes are tested under a paused clock beside the store; here, with
/// real time, only that a request's own TTL reaches its entry.
#[tokio::test]
async fn an_entry_expires_after_the_requests_own_ttl() {
    let sidecar = Sidecar::start(&cached_mock("{provider: mock}")).await;
    // Long enough that the second request lands inside it on a busy machine.
    let short = [("x-llmesh-cache-ttl", "2s")];
    let stored = std::time::Instant::now();
    assert_eq!(chat(&sidecar, &ask("brief"), &short).await.0, "miss");
    assert_eq!(chat(&sidecar, &ask("brief"), &[]).await.0, "hit");
    tokio::time::sleep(std::time::Duration::from_millis(2100).saturating_sub(stored.elapsed())).await;
    assert_eq!(
        chat(&sidecar, &ask("brief"), &[]).await.0,
        "miss",
        "its TTL passed"
    );
}

#[tokio::test]
async fn memory_stays_within_the_configured_bytes_when_filled_with_large_answers() {
    let yaml = cached_mock(&format!(
        "{{provider: mock, mock: {{reply: '{}'}}}}",
        "word ".repeat(400)
    ));
    let budget = 64 * 1024;
    let sidecar = Sidecar::start_with(
        &yaml,
        vec![(settings::CACHE_MAX_BYTES.into(), budget.to_string())],
    )
    .await;
    for n in 0..120 {
        assert_eq!(
            chat(&sidecar, &ask(&format!("question {n}")), &[]).await.0,
            "miss"
        );
    }
    let text = metrics(&sidecar).await;
    let held: u64 = metric_value(&text, "llmesh_cache_bytes");
    assert!(
        held <= budget && held > budget / 2,
        "{held} bytes held of {budget}"
    );
    let evicted: u64 = metric_value(&text, r#"llmesh_cache_evictions_total{reason="size"}"#);
    assert!(evicted > 0, "{text}");
}

#[tokio::test]
async fn an_answer_read_often_early_outlives_sixty_answers_nobody_reads_again() {
    let yaml = cached_mock(&format!(
        "{{provider: mock, mock: {{reply: '{}'}}}}",
        "word ".repeat(400)
    ));
    // About 25 answers fit: the sixty below overflow it twice over.
    let budget = 64 * 1024;
    let sidecar = Sidecar::start_with(
        &yaml,
        vec![(settings::CACHE_MAX_BYTES.into(), budget.to_string())],
    )
    .await;
    let popular = ask("the question everybody asks");
    assert_eq!(chat(&sidecar, &popular, &[]).await.0, "miss");
    for _ in 0..6 {
        assert_eq!(chat(&sidecar, &popular, &[]).await.0, "hit");
    }
    for n in 0..60 {
        assert_eq!(chat(&sidecar, &ask(&format!("one-off {n}")), &[]).await.0, "miss");
    }
    let text = metrics(&sidecar).await;
    let evicted: u64 = metric_value(&text, r#"llmesh_cache_evictions_total{reason="size"}"#);
    assert!(evicted >= 30, "{text}");
    assert_eq!(chat(&sidecar, &popular, &[]).await.0, "hit", "kept");
}

#[tokio::test]
async fn routes_without_a_cache_say_nothing_about_one() {
    let yaml = [
        provider("mock", "{provider: mock}"),
        route("smart", "{targets: [{provider: mock, model: m}]}"),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    assert_eq!(chat(&sidecar, &ask("hi"), &[]).await.0, "");
    assert_eq!(
        chat(&sidecar, &ask("hi"), &[("x-llmesh-cache", "nonsense")])
            .await
            .0,
        ""
    );
}

fn shared(redis_url: &str) -> String {
    format!("cache: {{mode: exact, scope: route, shared: {{redisUrl: '{redis_url}', timeout: 200ms}}}}")
}

/// Waits until Redis holds `count` keys: the write happens after the answer, in the background.
async fn wait_for_keys(redis: &RedisServer, count: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while redis.key_count().await != Some(count) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the answer never reached Redis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_sidecars_share_answers_through_redis() {
    let redis = RedisServer::start().await;
    let mock = openai::start().await;
    let first = openai_sidecar(&mock, &shared(&redis.url())).await;
    let second = openai_sidecar(&mock, &shared(&redis.url())).await;

    assert_eq!(chat(&first, &ask("shared question"), &[]).await.0, "miss");
    wait_for_keys(&redis, 1).await;
    let (verdict, body) = chat(&second, &ask("shared question"), &[]).await;
    assert_eq!(verdict, "hit", "the other pod's answer");
    assert_eq!(content(&body), "Hello from openai: shared question");
    assert_eq!(mock.calls().len(), 1, "one upstream call for both sidecars");
}

#[tokio::test]
async fn a_dead_or_silent_redis_leaves_the_local_cache_serving() {
    let mut redis = RedisServer::start().await;
    let mock = openai::start().await;
    let sidecar = openai_sidecar(&mock, &shared(&redis.url())).await;
    assert_eq!(chat(&sidecar, &ask("before"), &[]).await.0, "miss");
    wait_for_keys(&redis, 1).await;

    redis.stop();
    assert_eq!(chat(&sidecar, &ask("before"), &[]).await.0, "hit", "from memory");
    assert_eq!(chat(&sidecar, &ask("after"), &[]).await.0, "miss");
    assert_eq!(chat(&sidecar, &ask("after"), &[]).await.0, "hit");
    // The open connection broke under a `get`; the tier then rests a second,
    // and the next request's reconnect is refused: a `connect` failure.
    let text = metrics(&sidecar).await;
    let errors = |text: &str, operation: &str| {
        let series = format!(r#"llmesh_cache_shared_errors_total{{operation="{operation}"}}"#);
        text.contains(&series).then(|| metric_value::<u64>(text, &series))
    };
    assert_eq!(errors(&text, "get"), Some(1), "{text}");
    assert_eq!(errors(&text, "connect"), None, "{text}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(chat(&sidecar, &ask("later"), &[]).await.0, "miss");
    let text = metrics(&sidecar).await;
    assert_eq!(errors(&text, "connect"), Some(1), "{text}");
    assert_eq!(errors(&text, "get"), Some(1), "{text}");

    // A Redis that accepts connections and never answers costs a request its timeout, no more.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let silent_url = format!("redis://{}", silent.local_addr().expect("address"));
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let stalled = openai_sidecar(&mock, &shared(&silent_url)).await;
    let started = std::time::Instant::now();
    assert_eq!(chat(&stalled, &ask("stalled"), &[]).await.0, "miss");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(chat(&stalled, &ask("stalled"), &[]).await.0, "hit");
    held.abort();
}

fn semantic_sidecar_yaml(embeddings_provider: &str) -> String {
    [
        provider("mock", "{provider: mock}"),
        provider("broken", "{provider: mock, mock: {faults: [{kind: status, status: 500}]}}"),
        route(
            "smart",
            &format!(
                "{{targets: [{{provider: mock, model: m}}], cache: {{mode: semantic, similarityThreshold: 0.9, embeddings: {{provider: {embeddings_provider}, model: mock-embedding}}}}}}"
            ),
        ),
    ]
    .concat()
}

fn in_conversation(system: &str, question: &str) -> Value {
    json!({"model": "smart", "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
    ]})
}

#[tokio::test]
async fn a_near_duplicate_question_in_the_same_conversation_gets_the_stored_answer() {
    let sidecar = Sidecar::start(&semantic_sidecar_yaml("mock")).await;
    let asked = in_conversation("Be brief.", "Please tell me what the capital city of France is");
    let (verdict, body) = chat(&sidecar, &asked, &[]).await;
    assert_eq!(verdict, "miss");

    let rephrased = in_conversation("Be brief.", "Tell me what the capital city of France is");
    let (verdict, again) = chat(&sidecar, &rephrased, &[]).await;
    assert_eq!(verdict, "semantic-hit");
    assert_eq!(
        content(&again),
        content(&body),
        "the stored answer to the first phrasing"
    );
    let (verdict, stream) = chat(&sidecar, &streaming(rephrased), &[]).await;
    assert_eq!(verdict, "semantic-hit");
    assert_eq!(streamed_text(&stream), (content(&body), true));

    let other_question = in_conversation("Be brief.", "How tall is Mount Everest in meters");
    assert_eq!(chat(&sidecar, &other_question, &[]).await.0, "miss");
    let other_conversation =
        in_conversation("Answer in French.", "Tell me what the capital city of France is");
    assert_eq!(chat(&sidecar, &other_conversation, &[]).await.0, "miss");

    let text = metrics(&sidecar).await;
    assert!(
        text.contains(r#"llmesh_cache_requests_total{result="semantic-hit",route="smart"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_failing_embeddings_model_leaves_exact_caching_working() {
    let sidecar = Sidecar::start(&semantic_sidecar_yaml("broken")).await;
    let asked = in_conversation("Be brief.", "What is the capital of France");
    assert_eq!(chat(&sidecar, &asked, &[]).await.0, "miss");
    assert_eq!(chat(&sidecar, &asked, &[]).await.0, "hit");
    let rephrased = in_conversation("Be brief.", "what is the capital of France?");
    assert_eq!(chat(&sidecar, &rephrased, &[]).await.0, "miss");
}

/// A Messages request with extended thinking to a caching Anthropic route.
fn thinking_question(budget: Option<u64>) -> Value {
    let mut body = json!({"model": "smart", "max_tokens": 2048,
        "messages": [{"role": "user", "content": "Think, then greet"}]});
    if let Some(budget) = budget {
        body["thinking"] = json!({"type": "enabled", "budget_tokens": budget});
    }
    body
}

#[tokio::test]
async fn thinking_answers_are_replayed_with_their_signatures_and_thinking_settings_key_apart() {
    let mock = llmesh_test_support::anthropic::start().await;
    let yaml = [
        secret("anthropic-key", "apiKey", "sk-ant-test"),
        provider(
            "claude",
            &format!(
                "{{provider: anthropic, baseUrl: '{}', secretRef: {{name: anthropic-key}}}}",
                mock.url()
            ),
        ),
        route(
            "smart",
            &format!("{{targets: [{{provider: claude, model: claude-sonnet-4-5}}], {CACHED}}}"),
        ),
    ]
    .concat();
    let sidecar = Sidecar::start(&yaml).await;
    let messages = |body: Value| {
        let url = format!("{}/v1/messages", sidecar.url);
        async move {
            let response = http_client().post(url).json(&body).send().await.expect("sent");
            assert_eq!(response.status(), 200, "{body}");
            let verdict = response.headers()["x-llmesh-cache"]
                .to_str()
                .expect("ascii")
                .to_owned();
            (verdict, response.text().await.expect("body"))
        }
    };

    let (verdict, first) = messages(thinking_question(Some(1024))).await;
    assert_eq!(verdict, "miss");
    let first: Value = serde_json::from_str(&first).expect("json");
    let thinking = first["content"][0].clone();
    assert_eq!(thinking["type"], "thinking");
    assert!(thinking["signature"].as_str().is_some_and(|s| !s.is_empty()));

    let (verdict, again) = messages(thinking_question(Some(1024))).await;
    assert_eq!(verdict, "hit");
    let again: Value = serde_json::from_str(&again).expect("json");
    assert_eq!(
        again["content"], first["content"],
        "the hit keeps the signed thinking block"
    );

    let (verdict, stream) = messages(streaming(thinking_question(Some(1024)))).await;
    assert_eq!(verdict, "hit");
    let signature = format!(
        "{{\"type\":\"signature_delta\",\"signature\":{}}}",
        thinking["signature"]
    );
    assert!(stream.contains("\"type\":\"thinking_delta\""), "{stream}");
    assert!(stream.contains(&signature), "{stream}");

    for different in [thinking_question(Some(2000)), thinking_question(None)] {
        let (verdict, _) = messages(different.clone()).await;
        assert_eq!(verdict, "miss", "{different}");
    }
    assert_eq!(mock.calls().len(), 3);
}
