//! The webhook as `main` wires it, against a mocked API server: the version
//! read, the namespace caches, the stored certificate, the CA bundle
//! publication, and an admission answered from the caches over TLS.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use llmesh_crds::injection;
use llmesh_operator::scope::WatchScope;
use llmesh_operator::webhook::tls;
use llmesh_operator::webhook::version::SidecarMode;
use llmesh_operator::webhook::{CertSource, MUTATE_PATH, Webhook, WebhookArgs};
use serde_json::{Value, json};
use support::admission::{fixture_bytes, patch_of};
use support::{ApiServer, NS};

const SECRET: &str = "/api/v1/namespaces/llmesh-system/secrets/llmesh-webhook-tls";
const REGISTRATION: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/llmesh-sidecar-injector";

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

/// A namespace labelled for injection whose configuration reads Secret `openai-key`.
fn config_map() -> Value {
    let config = json!({
        "version": "v1",
        "providers": {"openai": {"kind": "openai", "credentials": {"type": "apiKey", "apiKey": {"secret": "openai-key", "key": "apiKey"}}}},
        "routes": {}
    });
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "llmesh-config", "namespace": NS, "resourceVersion": "5",
                     "labels": {"app.kubernetes.io/managed-by": "llmesh-operator"}},
        "data": {"config.json": config.to_string()}
    })
}

#[tokio::test]
async fn the_wired_webhook_injects_from_its_caches_and_publishes_its_ca() {
    let (client, server) = ApiServer::start();
    let issued = tls::issue(
        &tls::service_names("llmesh-webhook", "llmesh-system"),
        Timestamp::now(),
        None,
    )
    .expect("certificate");
    let stored =
        serde_json::to_value(tls::to_secret(&issued, "llmesh-system", "llmesh-webhook-tls")).expect("secret");
    let published = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&published);
    let _server = server.serve(move |call| {
        if call.query.contains("watch=true") {
            return None;
        }
        let reply = match (call.method.as_str(), call.path.as_str()) {
            ("GET", "/version") => json!({
                "major": "1", "minor": "31", "gitVersion": "v1.31.0", "gitCommit": "", "gitTreeState": "",
                "buildDate": "", "goVersion": "", "compiler": "", "platform": ""
            }),
            ("GET", "/api/v1/namespaces") => list(
                "NamespaceList",
                vec![json!({"metadata": {"name": NS, "labels": {"llmesh.io/inject": "enabled"}}})],
            ),
            ("GET", "/api/v1/configmaps") => list("ConfigMapList", vec![config_map()]),
            ("GET", SECRET) => stored.clone(),
            ("GET", REGISTRATION) => json!({
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "llmesh-sidecar-injector"},
                "webhooks": [{"name": "sidecar-injector.llmesh.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                              "clientConfig": {"service": {"name": "llmesh-webhook", "namespace": "llmesh-system"}}}]
            }),
            ("PATCH", REGISTRATION) => {
                seen.store(true, Ordering::SeqCst);
                json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
                       "metadata": {"name": "llmesh-sidecar-injector"}})
            }
            (method, path) => panic!("unexpected call {method} {path}?{}", call.query),
        };
        Some((200, reply))
    });

    // A free port for the webhook (bound and released: the webhook binds it again).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let args = WebhookArgs {
        webhook_addr: addr,
        sidecar_image: "ghcr.io/llmesh/llmesh-sidecar:test".to_owned(),
        sidecar_image_pull_policy: None,
        sidecar_otel_endpoint: None,
        sidecar_otel_protocol: None,
        sidecar_mode: SidecarMode::Auto,
        webhook_service: "llmesh-webhook".to_owned(),
        webhook_secret: "llmesh-webhook-tls".to_owned(),
        webhook_certs: CertSource::SelfSigned,
        webhook_url: None,
    };
    let registry = prometheus::Registry::new();
    let webhook = tokio::time::timeout(
        Duration::from_secs(10),
        Webhook::start(
            &client,
            args,
            "llmesh-system".to_owned(),
            WatchScope::All,
            &registry,
        ),
    )
    .await
    .expect("caches ready")
    .expect("metrics");
    let serving = webhook.bind(&client).await.expect("bound");
    tokio::spawn(serving);

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(issued.trust_pem.as_bytes()) {
        roots.add(cert.expect("PEM")).expect("CA");
    }
    let tls_config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let host = "llmesh-webhook.llmesh-system.svc";
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls_config)
        .resolve(host, addr)
        .no_proxy()
        .build()
        .expect("client");
    let review: Value = client
        .post(format!("https://{host}:{}{MUTATE_PATH}", addr.port()))
        .body(fixture_bytes("job-pod.json"))
        .send()
        .await
        .expect("the stored certificate is served")
        .json()
        .await
        .expect("JSON");
    // The Job pod has no annotation: only the namespace's label asks for the sidecar.
    let patch = patch_of(&review["response"]).expect("injected from the namespace cache");
    let patch = serde_json::to_string(&patch).expect("patch");
    assert!(
        patch.contains("\"restartPolicy\":\"Always\""),
        "1.31: a native sidecar"
    );
    assert!(
        patch.contains(&format!("{}/openai-key", injection::SECRETS_MOUNT_DIR)),
        "the credential named by the cached ConfigMap is mounted"
    );
    for _ in 0..100 {
        if published.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        published.load(Ordering::SeqCst),
        "the CA bundle was written into the registration"
    );
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("text");
    assert!(
        metrics.contains("llmesh_operator_admissions_total{result=\"injected\"} 1"),
        "{metrics}"
    );
}
