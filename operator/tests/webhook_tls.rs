//! The webhook served over real TLS on loopback with a certificate from the
//! operator's own CA, called by a client that trusts only that CA.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use jiff::Timestamp;
use llmesh_operator::webhook::tls::{self, CertResolver, Issued};
use llmesh_operator::webhook::{MUTATE_PATH, server};
use serde_json::Value;
use support::admission::*;

const SERVICE_HOST: &str = "llmesh-webhook.llmesh-system.svc";

/// Serves the test injector on a loopback port with a fresh certificate.
async fn start() -> (SocketAddr, Issued, Arc<CertResolver>) {
    let issued = tls::issue(
        &tls::service_names("llmesh-webhook", "llmesh-system"),
        Timestamp::now(),
        None,
    )
    .expect("issued");
    let resolver = CertResolver::new(&issued).expect("resolver");
    let config = tls::server_config(Arc::clone(&resolver)).expect("TLS config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(
        listener,
        Arc::new(config),
        server::router(injector(true)),
        std::future::pending(),
    ));
    (addr, issued, resolver)
}

/// A client that trusts only `ca_pem` and resolves the Service name to `addr`.
fn client(ca_pem: &str, addr: SocketAddr) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_root_certificates(roots)
            .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .resolve(SERVICE_HOST, addr)
        .no_proxy()
        .build()
        .expect("client")
}

fn url(addr: SocketAddr) -> String {
    format!("https://{SERVICE_HOST}:{}{MUTATE_PATH}", addr.port())
}

#[tokio::test]
async fn a_client_trusting_only_the_generated_ca_gets_a_patch() {
    let (addr, issued, _) = start().await;
    let response = client(&issued.trust_pem, addr)
        .post(url(addr))
        .header("content-type", "application/json")
        .body(fixture_bytes("deployment-pod.json"))
        .send()
        .await
        .expect("TLS handshake and request");
    assert_eq!(response.status(), 200);
    let review: Value = response.json().await.expect("JSON");
    assert_eq!(review["response"]["allowed"], true);
    assert!(patch_of(&review["response"]).is_some(), "{review}");

    // A malformed body is still a 200 with an allowed answer, never a 500.
    let response = client(&issued.trust_pem, addr)
        .post(url(addr))
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let review: Value = response.json().await.expect("JSON");
    assert_eq!(review["response"]["allowed"], true);
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let (addr, _, _) = start().await;
    let other = tls::issue(&["elsewhere.example".to_owned()], Timestamp::now(), None).expect("issued");
    let error = client(&other.trust_pem, addr)
        .post(url(addr))
        .body(fixture_bytes("deployment-pod.json"))
        .send()
        .await
        .expect_err("the server's certificate is not trusted");
    assert!(error.is_connect(), "{error:?}");
}

#[tokio::test]
async fn a_new_certificate_is_served_without_a_restart() {
    let (addr, issued, resolver) = start().await;
    let call = |ca: String| async move {
        client(&ca, addr)
            .post(url(addr))
            .body(fixture_bytes("deployment-pod.json"))
            .send()
            .await
    };
    let renewed = tls::issue(&issued.names, Timestamp::now(), Some(&issued)).expect("renewed");
    assert_eq!(renewed.ca_pem, issued.ca_pem, "renewed under the same CA");
    resolver.set(&renewed).expect("served");
    assert_eq!(
        call(issued.trust_pem.clone()).await.expect("trusted").status(),
        200
    );

    let foreign = tls::issue(&issued.names, Timestamp::now(), None).expect("another CA");
    resolver.set(&foreign).expect("served");
    assert!(
        call(issued.trust_pem.clone()).await.is_err(),
        "the swap took effect"
    );
    assert_eq!(
        call(foreign.trust_pem.clone()).await.expect("trusted").status(),
        200
    );
}
