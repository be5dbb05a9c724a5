//! Slow, hostile and too many clients on the API port, over real sockets:
//! slowloris, stalled and oversized bodies, the connection cap and the
//! concurrent-request cap.

use std::time::{Duration, Instant};

use llmesh_sidecar::settings;
use llmesh_test_support::harness::{Sidecar, provider, route};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A provider whose answers take `first` to start.
fn slow_route(first: &str) -> String {
    [
        provider(
            "slow",
            &format!("{{provider: mock, mock: {{timeToFirstToken: {first}, perToken: 1ms}}}}"),
        ),
        route("smart", "{targets: [{provider: slow, model: m}]}"),
    ]
    .concat()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ask(stream: bool) -> Value {
    json!({"model": "smart", "stream": stream, "messages": [{"role": "user", "content": "one two three"}]})
}

fn addr(sidecar: &Sidecar) -> String {
    sidecar.url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection or `within` passes; the bytes read.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(seen),
            Ok(Ok(n)) => seen.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn slowloris_connections_are_cut_off_and_cannot_hold_the_sidecar() {
    let sidecar = Sidecar::start_with(
        &slow_route("1ms"),
        env(&[
            (settings::HEADER_READ_TIMEOUT_MS, "400"),
            (settings::MAX_CONNECTIONS, "4"),
        ]),
    )
    .await;
    // Every connection slot taken by a client that trickles its headers.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr(&sidecar)).await.expect("connect");
        stream
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        slow.push(stream);
    }
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let mut closed = 0;
        for stream in &mut slow {
            // One more header byte every 100 ms would keep a server without a
            // whole-header deadline waiting for ever.
            for _ in 0..3 {
                let _ = stream.write_all(b"X").await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for mut stream in slow {
            if read_until_closed(&mut stream, Duration::from_secs(3))
                .await
                .is_some()
            {
                closed += 1;
            }
        }
        closed
    });

    // A real request queues behind them and is served once they are cut off.
    let response = sidecar.post("/v1/chat/completions", &ask(false)).await;
    assert_eq!(response.status(), 200);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "served after {waited:?}");
    assert_eq!(trickle.await.expect("join"), 4, "every slow connection is closed");
    sidecar.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_body_declared_over_the_limit_is_refused_before_it_is_sent() {
    let sidecar = Sidecar::start_with(&slow_route("1ms"), env(&[(settings::MAX_BODY_BYTES, "1000")])).await;
    let mut stream = TcpStream::connect(addr(&sidecar)).await.expect("connect");
    stream
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{\"model\"",
        )
        .await
        .expect("write");
    // Not one more byte of the 50 MB: the answer must come anyway.
    let answer = read_until_closed(&mut stream, Duration::from_secs(2)).await;
    let text = String::from_utf8_lossy(answer.as_deref().unwrap_or_default()).into_owned();
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("\"code\":\"request_too_large\""), "{text}");
    sidecar.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_body_that_stalls_gets_408_within_the_body_timeout() {
    let sidecar = Sidecar::start_with(
        &slow_route("1ms"),
        env(&[(settings::BODY_READ_TIMEOUT_MS, "300")]),
    )
    .await;
    let mut stream = TcpStream::connect(addr(&sidecar)).await.expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"mod")
        .await
        .expect("write");
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer))
        .await
        .expect("an answer within the timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    sidecar.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn requests_past_the_concurrency_cap_get_503_with_retry_after_in_their_format() {
    let sidecar = Sidecar::start_with(
        &slow_route("1500ms"),
        env(&[(settings::MAX_CONCURRENT_REQUESTS, "2")]),
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", sidecar.url);
    // Two requests in flight: the cap.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let request = client.post(&url).json(&ask(true));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let refused = sidecar.post("/v1/chat/completions", &ask(false)).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once, not queued"
    );
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded");
    assert_eq!(body["error"]["type"], "server_error");

    let anthropic =
        json!({"model": "smart", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let refused = sidecar.post("/v1/messages", &anthropic).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");

    // Probes and the model list are not requests to a provider: never refused.
    assert_eq!(sidecar.get("/readyz").await.status(), 200);
    assert_eq!(sidecar.get("/v1/models").await.status(), 200);

    // Clients that go away give their slots back.
    for request in held {
        request.abort();
    }
    let mut served = 0;
    for _ in 0..50 {
        if sidecar.post("/v1/chat/completions", &ask(false)).await.status() == 200 {
            served += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, 1, "a slot came free once the holders left");
    sidecar.stop(Duration::from_secs(1)).await;
}
