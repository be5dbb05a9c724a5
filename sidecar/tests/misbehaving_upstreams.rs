//! Upstreams that misbehave after the connection is up: headers then
//! silence, an endless body, a body over the limit, broken chunked
//! encoding, invalid UTF-8 inside SSE, a TLS handshake that stalls. Each
//! ends in the route's fallback (or, once a stream is committed, its error
//! event) within its timeout, and the upstream connection is let go.

use std::time::{Duration, Instant};

use llmesh_sidecar::settings;
use llmesh_test_support::harness::{Sidecar, provider, route, secret};
use llmesh_test_support::mock_server::{Behavior, MockServer};
use llmesh_test_support::openai;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The route's first-answer limit and the whole request's.
const FIRST_ANSWER: Duration = Duration::from_millis(500);
const TOTAL: Duration = Duration::from_secs(2);

struct Setup {
    primary: MockServer,
    _backup: MockServer,
    sidecar: Sidecar,
}

/// `smart`: the primary mock, falling back to a healthy one on any failure
/// class; `raw`: the same with `raw_url` (a hand-made upstream) as primary.
async fn setup(raw_url: &str) -> Setup {
    let primary = openai::start().await;
    let backup = openai::start().await;
    let fallback = "fallbacks: [{target: {provider: backup, model: backup-model}, on: [rate-limit, server-error, timeout, connect-error]}], timeouts: {firstToken: 500ms, total: 2s}, circuitBreaker: {enabled: false}";
    let yaml = [
        secret("key", "apiKey", "sk-test"),
        provider(
            "primary",
            &format!(
                "{{provider: openai, baseUrl: '{}/v1', secretRef: {{name: key}}}}",
                primary.url()
            ),
        ),
        provider(
            "raw",
            &format!("{{provider: openai-compatible, baseUrl: '{raw_url}/v1'}}"),
        ),
        provider(
            "backup",
            &format!("{{provider: openai-compatible, baseUrl: '{}/v1'}}", backup.url()),
        ),
        route(
            "smart",
            &format!("{{targets: [{{provider: primary, model: gpt-4o}}], {fallback}}}"),
        ),
        route(
            "raw",
            &format!("{{targets: [{{provider: raw, model: gpt-4o}}], {fallback}}}"),
        ),
    ]
    .concat();
    let sidecar = Sidecar::start_with(
        &yaml,
        vec![
            (settings::MAX_ANSWER_BYTES.into(), "100000".into()),
            (settings::CONNECT_TIMEOUT_MS.into(), "300".into()),
        ],
    )
    .await;
    Setup {
        primary,
        _backup: backup,
        sidecar,
    }
}

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "misbehave"}]})
}

/// Status, the fallback step that served, the body, and how long it took.
async fn call(sidecar: &Sidecar, model: &str, stream: bool) -> (u16, String, String, Duration) {
    let started = Instant::now();
    let response = sidecar.post("/v1/chat/completions", &ask(model, stream)).await;
    let status = response.status().as_u16();
    let step = response
        .headers()
        .get("x-llmesh-fallback")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.text().await.unwrap_or_default();
    (status, step, body, started.elapsed())
}

async fn released(mock: &MockServer, count: usize) {
    for _ in 0..200 {
        if mock.state.released().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the upstream connection was never let go");
}

async fn in_flight_is_zero(sidecar: &Sidecar) {
    let targets: Value = reqwest::get(format!("{}/debug/targets", sidecar.admin_url))
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    for target in targets.as_array().expect("list") {
        assert_eq!(target["in_flight"], 0, "{target}");
    }
}

#[tokio::test]
async fn headers_then_silence_or_an_endless_body_fall_back_within_the_first_answer_limit() {
    let setup = setup("http://127.0.0.1:9").await;
    let cases = [
        (Behavior::HeadersThenSilence, false),
        (Behavior::HeadersThenSilence, true),
        (Behavior::Endless, false),
    ];
    for (i, (behavior, stream)) in cases.into_iter().enumerate() {
        setup.primary.push([behavior.clone()]);
        let (status, step, body, took) = call(&setup.sidecar, "smart", stream).await;
        assert_eq!(
            (status, step.as_str()),
            (200, "1"),
            "{behavior:?} stream={stream}: {body}"
        );
        assert!(body.contains("backup-model"), "the backup answered: {body}");
        assert!(
            took >= FIRST_ANSWER && took < FIRST_ANSWER + Duration::from_secs(1),
            "{behavior:?} stream={stream}: {took:?}"
        );
        released(&setup.primary, i + 1).await;
    }
    in_flight_is_zero(&setup.sidecar).await;
}

#[tokio::test]
async fn an_endless_stream_ends_with_a_timeout_event_at_the_total_limit() {
    let setup = setup("http://127.0.0.1:9").await;
    setup.primary.push([Behavior::Endless]);
    let (status, _, body, took) = call(&setup.sidecar, "smart", true).await;
    // Committed with its first chunk: no fallback, but no silent end either.
    assert_eq!(status, 200);
    let last = body.trim_end().rsplit("\n\n").next().unwrap_or_default();
    assert!(last.contains("\"code\":\"upstream_timeout\""), "{last}");
    assert!(took >= TOTAL && took < TOTAL + Duration::from_secs(1), "{took:?}");
    released(&setup.primary, 1).await;
    in_flight_is_zero(&setup.sidecar).await;
}

#[tokio::test]
async fn an_answer_over_the_size_limit_falls_back_rather_than_fill_memory() {
    let setup = setup("http://127.0.0.1:9").await;
    setup.primary.push([Behavior::OversizedBodyBytes(200_000)]);
    let (status, step, body, _) = call(&setup.sidecar, "smart", false).await;
    assert_eq!((status, step.as_str()), (200, "1"), "{body}");
    let calls = setup.sidecar.get("/metrics").await.text().await.expect("metrics");
    assert!(
        calls.contains(r#"llmesh_upstream_errors_total{class="invalid-response",provider="openai"} 1"#),
        "the oversized answer counts as an invalid response"
    );
}

#[tokio::test]
async fn invalid_utf8_inside_a_stream_reaches_the_app_as_replacement_characters() {
    let setup = setup("http://127.0.0.1:9").await;
    setup.primary.push([Behavior::InvalidUtf8]);
    let response = setup
        .sidecar
        .post("/v1/chat/completions", &ask("smart", true))
        .await;
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.expect("the whole stream");
    // As the SSE standard decodes: U+FFFD for each bad byte, the stream
    // going on; never bytes an SDK's UTF-8 decoder would fail on.
    let body = std::str::from_utf8(&bytes).expect("valid UTF-8 to the app");
    assert!(body.contains("\u{fffd}\u{fffd}\u{fffd}"), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    in_flight_is_zero(&setup.sidecar).await;
}

/// An upstream on loopback that reads a request head and then does `answer`.
async fn raw_upstream(answer: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0_u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                let _ = tcp.write_all(answer).await;
                // Then hold the connection open: only the answer's own bytes may end it.
                let _ = tcp.read(&mut buffer).await;
            });
        }
    });
    format!("http://{address}")
}

#[tokio::test]
async fn broken_chunked_encoding_falls_back() {
    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"id\"\r\nzz-not-a-size\r\n";
    let setup = setup(&raw_upstream(answer).await).await;
    for stream in [false, true] {
        let (status, step, body, took) = call(&setup.sidecar, "raw", stream).await;
        assert_eq!((status, step.as_str()), (200, "1"), "stream={stream}: {body}");
        assert!(took < FIRST_ANSWER, "stream={stream}: {took:?}");
    }
    in_flight_is_zero(&setup.sidecar).await;
}

#[tokio::test]
async fn a_tls_handshake_that_stalls_is_a_connect_error_within_the_connect_timeout() {
    // Accepts TCP and never says a word: the TLS client hello goes unanswered.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let held = tokio::spawn(async move {
        let mut open: Vec<TcpStream> = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            open.push(tcp);
        }
    });
    let setup = setup(&format!("https://{address}")).await;
    let (status, step, body, took) = call(&setup.sidecar, "raw", false).await;
    assert_eq!((status, step.as_str()), (200, "1"), "{body}");
    // The 300 ms connect timeout, not the route's 500 ms first-answer limit.
    assert!(took < Duration::from_millis(480), "{took:?}");
    let metrics = setup.sidecar.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(
            r#"llmesh_upstream_errors_total{class="connect-error",provider="openai-compatible"} 1"#
        ),
        "{metrics}"
    );
    held.abort();
}
