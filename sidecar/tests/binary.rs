//! The `llmesh-sidecar` binary as an operator runs it: flags, environment,
//! egress through an HTTP proxy, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use llmesh_test_support::harness::{http_client, provider, route};
use llmesh_test_support::openai;
use serde_json::{Value, json};

/// A sidecar process and the addresses it logged.
struct Process {
    child: Child,
    url: String,
    admin_url: String,
    _dir: tempfile::TempDir,
}

fn spawn(manifests: &str, env: &[(&str, String)]) -> Process {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("llm.yaml"), manifests).expect("write");
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmesh-sidecar"));
    command
        .arg("--manifests")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (url, admin_url) = loop {
        let line = lines
            .next()
            .expect("the sidecar logs its address")
            .expect("utf-8 log line");
        let event: Value = serde_json::from_str(&line).expect("JSON log lines");
        if event["message"] == "llmesh sidecar serving" {
            let address = |field: &str| format!("http://{}", event[field].as_str().expect("address"));
            break (address("api_addr"), address("admin_addr"));
        }
    };
    // Keep draining the log so the sidecar never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Process {
        child,
        url,
        admin_url,
        _dir: dir,
    }
}

impl Process {
    /// Posts a chat request to the sidecar.
    async fn chat(&self, request: &Value) -> reqwest::Response {
        http_client()
            .post(format!("{}/v1/chat/completions", self.url))
            .json(request)
            .send()
            .await
            .expect("sent")
    }
}

impl Process {
    /// Sends SIGTERM and waits for a clean exit.
    async fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill runs")
                .success()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running 10 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{status}");
    }

    /// One line of `/metrics`, by its series name and labels.
    async fn metric(&self, series: &str) -> Option<String> {
        let text = http_client()
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(str::to_owned)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A failed test must not leave a sidecar behind holding the test's output open.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ask() -> Value {
    json!({"model": "smart", "messages": [{"role": "user", "content": "through the proxy"}]})
}

/// Route `smart` on a mock provider (`mock`: its spec) at `price`, reached
/// with the key `sk-k`, whose VirtualKey `k` (`key`: its spec) spends from
/// the budget `b` (`budget`: its spec).
fn budgeted_route(mock: &str, price: &str, key: &str, budget: &str) -> String {
    [
        provider("m", mock),
        route(
            "smart",
            &format!("{{targets: [{{provider: m, model: m, price: {price}}}]}}"),
        ),
        llmesh_test_support::harness::secret("k", "key", "sk-k"),
        llmesh_test_support::harness::virtual_key("k", key),
        llmesh_test_support::harness::budget("b", budget),
    ]
    .concat()
}

#[tokio::test]
async fn egress_goes_through_http_proxy_except_for_no_proxy_hosts() {
    // The OpenAI mock doubles as the proxy: it answers absolute-form requests.
    let proxy = openai::start().await;
    let direct = openai::start().await;
    let manifests = [
        provider(
            "far",
            "{provider: openai-compatible, baseUrl: 'http://upstream.example.invalid:8080/v1'}",
        ),
        provider(
            "near",
            &format!("{{provider: openai-compatible, baseUrl: '{}/v1'}}", direct.url()),
        ),
        route("smart", "{targets: [{provider: far, model: far-model}]}"),
        route("local", "{targets: [{provider: near, model: near-model}]}"),
    ]
    .concat();
    let proxy_with_credentials = proxy.url().replace("http://", "http://egress:s3cret@");
    let sidecar = spawn(
        &manifests,
        &[
            ("HTTP_PROXY", proxy_with_credentials),
            ("NO_PROXY", "127.0.0.1".to_owned()),
        ],
    );
    let response = sidecar.chat(&ask()).await;
    assert_eq!(response.status(), 200);
    let calls = proxy.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].path,
        "http://upstream.example.invalid:8080/v1/chat/completions"
    );
    assert_eq!(
        calls[0].headers["proxy-authorization"], "Basic ZWdyZXNzOnMzY3JldA==",
        "the proxy URL's credentials go along"
    );

    let mut local = ask();
    local["model"] = json!("local");
    let response = sidecar.chat(&local).await;
    assert_eq!(response.status(), 200);
    assert_eq!(direct.calls().len(), 1, "NO_PROXY hosts are reached directly");
    assert_eq!(proxy.calls().len(), 1);
}

#[tokio::test]
async fn https_egress_is_tunnelled_through_the_proxy_with_connect() {
    // A proxy that records what it is asked and refuses the tunnel.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_url = format!("http://tunnel:pw@{}", proxy.local_addr().expect("addr"));
    let asked = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut connection, _) = proxy.accept().await.expect("the sidecar connects to the proxy");
        let mut head = Vec::new();
        let mut buffer = [0_u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = connection.read(&mut buffer).await.expect("read");
            assert!(read > 0, "the request head ended early");
            head.extend_from_slice(&buffer[..read]);
        }
        let refusal = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n";
        connection.write_all(refusal).await.expect("write");
        String::from_utf8(head).expect("text")
    });
    let manifests = [
        provider(
            "far",
            "{provider: openai-compatible, baseUrl: 'https://api.example.invalid/v1'}",
        ),
        route("smart", "{targets: [{provider: far, model: far-model}]}"),
    ]
    .concat();
    let sidecar = spawn(&manifests, &[("HTTPS_PROXY", proxy_url)]);

    let response = sidecar.chat(&ask()).await;
    assert_eq!(response.status(), 502, "a refused tunnel is an upstream failure");
    let head = asked.await.expect("the proxy saw a request");
    assert!(
        head.starts_with("CONNECT api.example.invalid:443 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authorization: basic dhvubmvsonb3"),
        "{head}"
    );
}

/// An HTTPS upstream that only speaks HTTP/2 (ALPN `h2`), answering every
/// request with a chat completion; it counts connections and notes the
/// HTTP version of each request.
async fn http2_upstream() -> (
    String,
    tempfile::NamedTempFile,
    Arc<Mutex<Vec<http::Version>>>,
    Arc<AtomicUsize>,
) {
    let key = rcgen::KeyPair::generate().expect("key");
    let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    // The sidecar trusts it as the platform's roots: SSL_CERT_FILE.
    let mut roots = tempfile::NamedTempFile::new().expect("temp file");
    roots.write_all(certificate.pem().as_bytes()).expect("write");
    let mut tls =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![certificate.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen, accepted) = (versions.clone(), connections.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let answer = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        seen.lock().push(request.version());
                        let body = json!({
                            "id": "chatcmpl-h2", "object": "chat.completion", "created": 1, "model": "far-model",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": "over h2"}}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                        });
                        async move {
                            let body = http_body_util::Full::new(bytes::Bytes::from(body.to_string()));
                            Ok::<_, std::convert::Infallible>(http::Response::new(body))
                        }
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), answer)
                    .await;
            });
        }
    });
    (format!("https://localhost:{port}"), roots, versions, connections)
}

#[tokio::test]
async fn an_upstream_offering_http2_gets_one_shared_http2_connection() {
    let (url, roots, versions, connections) = http2_upstream().await;
    let manifests = [
        provider(
            "far",
            &format!("{{provider: openai-compatible, baseUrl: '{url}/v1'}}"),
        ),
        route("smart", "{targets: [{provider: far, model: far-model}]}"),
    ]
    .concat();
    let root_file = roots.path().to_str().expect("utf-8 path").to_owned();
    let sidecar = spawn(&manifests, &[("SSL_CERT_FILE", root_file)]);
    let ask_once = || async {
        let response = sidecar.chat(&ask()).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["choices"][0]["message"]["content"], "over h2");
    };
    ask_once().await;
    futures::future::join_all((0..4).map(|_| ask_once())).await;
    assert_eq!(*versions.lock(), vec![http::Version::HTTP_2; 5]);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "requests at once share the HTTP/2 connection"
    );
}

#[tokio::test]
async fn sigterm_ends_the_process_cleanly() {
    let manifests = [
        provider("m", "{provider: mock}"),
        route("smart", "{targets: [{provider: m, model: m}]}"),
    ]
    .concat();
    let mut sidecar = spawn(&manifests, &[]);
    let response = sidecar.chat(&ask()).await;
    assert_eq!(response.status(), 200);
    sidecar.terminate().await;
}

#[tokio::test]
async fn a_pool_of_worker_threads_serves_as_one_thread_does() {
    let manifests = [
        provider("m", "{provider: mock}"),
        route("smart", "{targets: [{provider: m, model: m}]}"),
    ]
    .concat();
    let mut sidecar = spawn(&manifests, &[("LLMESH_WORKER_THREADS", "3".to_owned())]);
    let request = ask();
    let answers = futures::future::join_all((0..8).map(|_| sidecar.chat(&request))).await;
    assert!(answers.iter().all(|a| a.status() == 200));
    sidecar.terminate().await;
}

/// The bug report's case: three answers of $0.000141 sum to a number
/// (0.00042300000000000004) that a lossy float parser reads one step off,
/// which made the sidecar refuse the state file it had just written.
#[tokio::test]
async fn a_stopped_sidecar_restarts_from_its_own_state_file() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.json");
    let manifests = budgeted_route(
        "{provider: mock, mock: {reply: x}}",
        "{input: 0, output: 141}",
        "{budget: b}",
        "{limitUsd: 0.0004, period: total}",
    );
    let env = [("LLMESH_STATE_FILE", state.display().to_string())];
    let one_word = json!({"model": "smart", "messages": [{"role": "user", "content": "hello"}]});
    let send = |url: String| {
        let body = one_word.clone();
        async move {
            http_client()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth("sk-k")
                .json(&body)
                .send()
                .await
                .expect("sent")
        }
    };
    let spent = r#"llmesh_budget_spent_usd{budget="b",period="total"}"#;

    let mut first = spawn(&manifests, &env);
    for _ in 0..3 {
        let response = send(first.url.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-llmesh-cost-usd"], "0.000141");
    }
    let before = first.metric(spent).await.expect("spend gauge");
    assert_eq!(before, "0.00042300000000000004");
    first.terminate().await;

    let second = spawn(&manifests, &env);
    assert_eq!(
        second.metric(spent).await.as_deref(),
        Some(before.as_str()),
        "the spend restored to the last digit"
    );
    let blocked = send(second.url.clone()).await;
    assert_eq!(blocked.status(), 429, "the budget still blocks");
    let body: Value = blocked.json().await.expect("json");
    assert_eq!(body["error"]["code"], "budget_exceeded");
}

#[tokio::test]
async fn budget_spend_survives_a_killed_sidecar() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = state_dir.path().join("state.json");
    let manifests = budgeted_route(
        "{provider: mock}",
        "{input: 1000, output: 1000}",
        "{budget: b}",
        "{limitUsd: 0.001, period: total}",
    );
    let env = [("LLMESH_STATE_FILE", state.display().to_string())];
    let send = |url: String| async move {
        http_client()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth("sk-k")
            .json(&ask())
            .send()
            .await
            .expect("sent")
            .status()
    };

    let mut first = spawn(&manifests, &env);
    assert_eq!(send(first.url.clone()).await, 200);
    // The batch writer runs every second; then no shutdown gets a say.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !state.exists() {
        assert!(std::time::Instant::now() < deadline, "spend never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");

    let second = spawn(&manifests, &env);
    assert_eq!(
        send(second.url.clone()).await,
        429,
        "the spend from before the kill still counts"
    );
}

/// Times a process's threads were put on a CPU so far (`/proc/PID/task/*/schedstat`,
/// third field): every wake-up counts one.
fn times_scheduled(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

/// One sidecar per pod: with no traffic it must not tick. The log writer,
/// the state file and the outbound pool all had work a moment ago.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_idle_sidecar_does_not_wake_up() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let manifests = budgeted_route(
        "{provider: mock}",
        "{input: 1000, output: 1000}",
        "{budget: b, rateLimits: {requestsPerMinute: 600}}",
        "{limitUsd: 10, period: total}",
    );
    let state = state_dir.path().join("state.json");
    let sidecar = spawn(&manifests, &[("LLMESH_STATE_FILE", state.display().to_string())]);
    let response = http_client()
        .post(format!("{}/v1/chat/completions", sidecar.url))
        .bearer_auth("sk-k")
        .json(&ask())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    // The access line, the spend in the state file, then quiet.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(state.exists(), "the spend was written");

    let pid = sidecar.child.id();
    let before = times_scheduled(pid);
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let wakeups = times_scheduled(pid) - before;
    // A timer of 50 ms (the old log writer) alone made 80; the manifest
    // poll (every 60 s, for filesystems without change events) may fall in.
    assert!(wakeups <= 20, "{wakeups} wake-ups in {window:?} of idling");
}
