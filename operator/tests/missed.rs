//! The missed-pod watch and the certificate bookkeeping against a mocked API
//! server: the exact calls they make.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use llmesh_operator::webhook::metrics::WebhookMetrics;
use llmesh_operator::webhook::missed::Missed;
use llmesh_operator::webhook::mutate::NamespaceSettings;
use llmesh_operator::webhook::tls::{self, CertSettings};
use serde_json::{Value, json};
use support::admission::settings;
use support::*;

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/team-a/deployments/chat-api";

fn pod_path(uid: &str) -> String {
    format!("/api/v1/namespaces/team-a/pods/chat-api-6d4cf56db6-{uid}")
}

/// The full pod behind a candidate, as the watch reads it once before reporting.
fn full_pod(uid: &str, host_network: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("chat-api-6d4cf56db6-{uid}"), "namespace": NS, "uid": uid},
        "spec": {"hostNetwork": host_network, "containers": [{"name": "app", "image": "example/app"}]}
    })
}

/// Serves the spec read and the Event of a newly missed pod.
async fn expect_report(server: &mut ApiServer, uid: &str) -> support::Call {
    server
        .expect("GET", &pod_path(uid), 200, full_pod(uid, false))
        .await;
    server
        .expect_with("POST", EVENTS, |call| (201, call.body.clone()))
        .await
}

/// A pod of Deployment `chat-api` that asked for the sidecar and has none.
fn missed_pod(uid: &str) -> PartialObjectMeta<Pod> {
    serde_json::from_value(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {
            "name": format!("chat-api-6d4cf56db6-{uid}"), "namespace": NS, "uid": uid,
            "annotations": {"llmesh.io/inject": "enabled"},
            "labels": {"pod-template-hash": "6d4cf56db6"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "chat-api-6d4cf56db6",
                                 "uid": "rs-1", "controller": true}]
        }
    }))
    .expect("pod metadata")
}

fn watch(client: kube::Client, restart_on_miss: bool, healthy: bool) -> (Arc<Missed>, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = WebhookMetrics::register(&registry).expect("metrics");
    let namespaces = HashMap::from([(
        NS.to_owned(),
        NamespaceSettings {
            name: NS.to_owned(),
            restart_on_miss,
            ..NamespaceSettings::default()
        },
    )]);
    let missed = Missed::new(
        client,
        "llmesh-operator-0".to_owned(),
        Arc::new(namespaces),
        Arc::new(settings(true)),
        metrics,
        Arc::new(AtomicBool::new(healthy)),
    );
    (Arc::new(missed), registry)
}

fn metric(registry: &prometheus::Registry, name: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("exposition");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in\n{text}"))
}

#[tokio::test]
async fn a_missed_pod_gets_one_warning_event_and_is_counted() {
    let (client, mut server) = ApiServer::start();
    let (missed, registry) = watch(client, false, true);
    let operator = {
        let missed = Arc::clone(&missed);
        async move {
            missed.on_pod(&missed_pod("a")).await.expect("reported");
            // Seen again (a resync): not reported twice.
            missed.on_pod(&missed_pod("a")).await.expect("quiet");
            // Not opted in: nothing to restart.
            missed.restart_due(Timestamp::now()).await
        }
    };
    let restarted = play(operator, async {
        let call = expect_report(&mut server, "a").await;
        assert_eq!(call.body["type"], "Warning");
        assert_eq!(call.body["reason"], "SidecarMissing");
        assert_eq!(call.body["regarding"]["kind"], "Pod");
        assert_eq!(call.body["regarding"]["name"], "chat-api-6d4cf56db6-a");
        assert_eq!(call.body["reportingController"], "llmesh-operator");
    })
    .await;
    assert_eq!(restarted, 0);
    assert_eq!(metric(&registry, "llmesh_operator_missed_pods_total"), 1.0);
    assert_eq!(metric(&registry, "llmesh_operator_pods_missing_sidecar"), 1.0);
}

#[tokio::test]
async fn an_opted_in_deployment_is_restarted_once_when_the_webhook_is_healthy() {
    let (client, mut server) = ApiServer::start();
    let (missed, registry) = watch(client, true, true);
    let operator = {
        let missed = Arc::clone(&missed);
        async move {
            missed.on_pod(&missed_pod("a")).await.expect("reported");
            missed.on_pod(&missed_pod("b")).await.expect("reported");
            let now = Timestamp::now();
            let first = missed.restart_due(now).await;
            let again = missed.restart_due(now).await;
            (first, again)
        }
    };
    let (first, again) = play(operator, async {
        for uid in ["a", "b"] {
            expect_report(&mut server, uid).await;
        }
        let call = server
            .expect(
                "PATCH",
                DEPLOYMENT,
                200,
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat-api"}}),
            )
            .await;
        let restarted_at =
            &call.body["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"];
        assert!(
            restarted_at
                .as_str()
                .is_some_and(|t| t.parse::<Timestamp>().is_ok()),
            "{}",
            call.body
        );
    })
    .await;
    assert_eq!(
        (first, again),
        (1, 0),
        "one restart for two pods of one Deployment"
    );
    assert_eq!(
        metric(&registry, "llmesh_operator_missed_pod_restarts_total"),
        1.0
    );
}

#[tokio::test]
async fn no_restart_while_the_webhook_is_unhealthy() {
    let (client, mut server) = ApiServer::start();
    let (missed, _) = watch(client, true, false);
    let operator = {
        let missed = Arc::clone(&missed);
        async move {
            missed.on_pod(&missed_pod("a")).await.expect("reported");
            missed.restart_due(Timestamp::now()).await
        }
    };
    let restarted = play(operator, async {
        expect_report(&mut server, "a").await;
    })
    .await;
    assert_eq!(restarted, 0);
}

#[tokio::test]
async fn a_host_network_pod_is_not_reported() {
    let (client, mut server) = ApiServer::start();
    let (missed, registry) = watch(client, true, true);
    let operator = {
        let missed = Arc::clone(&missed);
        async move {
            missed.on_pod(&missed_pod("h")).await.expect("judged");
            // Seen again: the spec is not read twice.
            missed.on_pod(&missed_pod("h")).await.expect("judged");
            missed.restart_due(Timestamp::now()).await
        }
    };
    let restarted = play(operator, async {
        server
            .expect("GET", &pod_path("h"), 200, full_pod("h", true))
            .await;
    })
    .await;
    assert_eq!(restarted, 0);
    assert_eq!(metric(&registry, "llmesh_operator_pods_missing_sidecar"), 0.0);
    assert_eq!(metric(&registry, "llmesh_operator_missed_pods_total"), 0.0);
}

const TLS_SECRET: &str = "/api/v1/namespaces/llmesh-system/secrets/llmesh-webhook-tls";
const WEBHOOK_CONFIG: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/llmesh-sidecar-injector";

fn cert_settings() -> CertSettings {
    CertSettings {
        namespace: "llmesh-system".to_owned(),
        secret: "llmesh-webhook-tls".to_owned(),
        names: tls::service_names("llmesh-webhook", "llmesh-system"),
        self_managed: true,
    }
}

#[tokio::test]
async fn the_certificate_secret_is_created_once_and_then_only_read() {
    let (client, mut server) = ApiServer::start();
    let first = {
        let client = client.clone();
        async move {
            tls::ensure(&client, &cert_settings(), Timestamp::now())
                .await
                .expect("issued")
        }
    };
    let mut stored = Value::Null;
    let issued = play(first, async {
        server.expect_missing(TLS_SECRET).await;
        let call = server
            .expect_with("POST", "/api/v1/namespaces/llmesh-system/secrets", |call| {
                (201, call.body.clone())
            })
            .await;
        assert_eq!(call.body["type"], "kubernetes.io/tls");
        for key in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
            assert!(call.body["data"][key].is_string(), "{key}");
        }
        stored = call.body;
    })
    .await;

    let again = {
        let client = client.clone();
        async move {
            tls::ensure(&client, &cert_settings(), Timestamp::now())
                .await
                .expect("read")
        }
    };
    let read = play(again, async {
        server.expect("GET", TLS_SECRET, 200, stored.clone()).await;
    })
    .await;
    assert_eq!(
        read.cert_pem, issued.cert_pem,
        "nothing due: the stored certificate is served"
    );
}

#[tokio::test]
async fn the_ca_bundle_is_written_into_the_registration_only_when_it_differs() {
    let (client, mut server) = ApiServer::start();
    let registration = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "llmesh-sidecar-injector", "resourceVersion": "7"},
        "webhooks": [{
            "name": "sidecar-injector.llmesh.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "llmesh-webhook", "namespace": "llmesh-system", "path": "/mutate-pods", "port": 443}}
        }]
    });
    let bundle = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let publish = {
        let client = client.clone();
        async move {
            tls::publish_ca_bundle(&client, "llmesh-sidecar-injector", bundle, None)
                .await
                .expect("published")
        }
    };
    let mut patched = registration.clone();
    let written = play(publish, async {
        server
            .expect("GET", WEBHOOK_CONFIG, 200, registration.clone())
            .await;
        let call = server
            .expect("PATCH", WEBHOOK_CONFIG, 200, registration.clone())
            .await;
        let operations = call.body.as_array().expect("a JSON patch");
        assert_eq!(operations[0]["op"], "test");
        assert_eq!(operations[1]["path"], "/webhooks/0/clientConfig");
        assert_eq!(
            operations[1]["value"]["service"]["name"], "llmesh-webhook",
            "the Service stays"
        );
        patched["webhooks"][0]["clientConfig"] = operations[1]["value"].clone();
    })
    .await;
    assert!(written);

    let unchanged = {
        let client = client.clone();
        async move {
            tls::publish_ca_bundle(&client, "llmesh-sidecar-injector", bundle, None)
                .await
                .expect("read")
        }
    };
    let written = play(unchanged, async {
        server.expect("GET", WEBHOOK_CONFIG, 200, patched.clone()).await;
    })
    .await;
    assert!(!written, "no write when the bundle is already there");
}
