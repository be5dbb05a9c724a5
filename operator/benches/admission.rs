//! Admission latency: the time to answer a Deployment pod's AdmissionReview,
//! in process and over TLS on loopback with a kept-alive connection (as the
//! API server calls webhooks). Prints p50/p99/max; the target is p99 ≤ 5 ms.
//!
//! `cargo bench -p llmesh-operator --bench admission` (`ADMISSION_BENCH_N` sets the count).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use llmesh_operator::webhook::mutate::{InjectionSettings, NamespaceSettings, Resources};
use llmesh_operator::webhook::review::Injector;
use llmesh_operator::webhook::tls::{self, CertResolver};
use llmesh_operator::webhook::{MUTATE_PATH, server};

const HOST: &str = "llmesh-webhook.llmesh-system.svc";

fn injector() -> Injector {
    let namespace = NamespaceSettings {
        name: "team-a".to_owned(),
        inject: true,
        restart_on_miss: false,
        credential_secrets: BTreeSet::from(["openai-key".to_owned(), "anthropic-key".to_owned()]),
    };
    Injector {
        settings: Arc::new(InjectionSettings {
            image: "ghcr.io/llmesh/llmesh-sidecar:0.1.0".to_owned(),
            image_pull_policy: None,
            native_sidecar: true,
            operator_namespace: "llmesh-system".to_owned(),
            resources: Resources::default(),
            sync: None,
            otel_endpoint: None,
            otel_protocol: None,
        }),
        namespaces: Arc::new(HashMap::from([("team-a".to_owned(), namespace)])),
        metrics: None,
    }
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    println!(
        "{what:<28} n={:<6} p50={:.3} ms  p99={:.3} ms  max={:.3} ms",
        samples.len(),
        at(0.50),
        at(0.99),
        at(1.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("ADMISSION_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/deployment-pod.json"
    ))
    .expect("fixture");
    let injector = injector();

    // Warm up, then measure the handler alone.
    for _ in 0..200 {
        std::hint::black_box(injector.review(&body));
    }
    let samples = (0..n)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(injector.review(&body));
            started.elapsed()
        })
        .collect();
    report("in process (review)", samples);

    let issued = tls::issue(
        &tls::service_names("llmesh-webhook", "llmesh-system"),
        Timestamp::now(),
        None,
    )
    .expect("certificate");
    let resolver = CertResolver::new(&issued).expect("resolver");
    let config = Arc::new(tls::server_config(resolver).expect("TLS"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        config,
        server::router(injector),
        std::future::pending(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(issued.trust_pem.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("CA");
    }
    let client_tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(client_tls)
        .resolve(HOST, addr)
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("https://{HOST}:{}{MUTATE_PATH}", addr.port());
    let call = || async {
        let response = client.post(&url).body(body.clone()).send().await.expect("sent");
        assert_eq!(response.status(), 200);
        std::hint::black_box(response.bytes().await.expect("body"));
    };
    for _ in 0..200 {
        call().await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        call().await;
        samples.push(started.elapsed());
    }
    report("over TLS, kept alive", samples);
}
