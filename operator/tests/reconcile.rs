//! A namespace reconcile against a mocked API server: the exact calls, in order.

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::runtime::reflector::ObjectRef;
use llmesh_crds::compile::SecretKeys;
use llmesh_crds::{Inputs, LLMRoute, ProviderSecret, SidecarConfig, compile};
use llmesh_operator::configmap;
use llmesh_operator::controller::SecretIndex;
use llmesh_operator::namespace::{self, Outcome};
use llmesh_operator::status;
use serde_json::{Value, json};
use support::*;

/// Runs one reconcile of the test namespace, recording referenced Secrets in `index`.
async fn reconcile(client: Client, index: Arc<SecretIndex>) -> Outcome {
    namespace::reconcile(&client, &namespace(), |secrets| index.record(NS, secrets))
        .await
        .expect("reconcile succeeds")
}

/// The calls that read the namespace's inputs, answered with these objects.
async fn serve_reads(
    server: &mut ApiServer,
    config_map: Option<&ConfigMap>,
    providers: &[ProviderSecret],
    routes: &[LLMRoute],
    secret_keys: Option<&[&str]>,
) {
    match config_map {
        Some(cm) => {
            server
                .expect("GET", CONFIG_MAP, 200, serde_json::to_value(cm).expect("cm"))
                .await
        }
        None => server.expect_missing(CONFIG_MAP).await,
    };
    server
        .expect("GET", PROVIDERS, 200, list_of("ProviderSecret", providers))
        .await;
    server
        .expect("GET", ROUTES, 200, list_of("LLMRoute", routes))
        .await;
    let path = secret_path("openai-key");
    match secret_keys {
        Some(keys) => {
            server
                .expect("GET", &path, 200, serde_json::to_value(secret(keys)).expect("s"))
                .await
        }
        None => server.expect_missing(&path).await,
    };
}

/// Expects the ConfigMap apply; returns the configuration it carries.
async fn expect_config_write(server: &mut ApiServer) -> SidecarConfig {
    let call = server
        .expect_with("PATCH", CONFIG_MAP, |call| (200, call.body.clone()))
        .await;
    assert!(
        call.query.contains("fieldManager=llmesh-operator"),
        "{}",
        call.query
    );
    assert!(call.query.contains("force=true"), "{}", call.query);
    let metadata = &call.body["metadata"];
    assert_eq!(
        metadata["labels"]["app.kubernetes.io/managed-by"],
        "llmesh-operator"
    );
    let owner = &metadata["ownerReferences"][0];
    assert_eq!(
        [&owner["kind"], &owner["name"], &owner["uid"]],
        [&json!("Namespace"), &json!(NS), &json!("ns-uid-1")]
    );
    let text = call.body["data"]["config.json"].as_str().expect("config.json");
    let config = SidecarConfig::from_json(text.as_bytes()).expect("the sidecar accepts the config");
    assert_eq!(
        metadata["annotations"]["llmesh.io/config-version"],
        json!(config.version)
    );
    config
}

/// Expects a status apply for `object` (at `collection`) and returns the patch body.
async fn expect_status<T: serde::Serialize + kube::ResourceExt>(
    server: &mut ApiServer,
    collection: &str,
    object: &T,
) -> Value {
    let path = format!("{collection}/{}/status", object.name_any());
    let call = server
        .expect_with("PATCH", &path, |call| {
            (200, with_status(object, &call.body["status"]))
        })
        .await;
    assert!(
        call.query.contains("fieldManager=llmesh-operator"),
        "{}",
        call.query
    );
    assert_eq!(call.body["apiVersion"], "llmesh.io/v1alpha1");
    call.body
}

#[tokio::test]
async fn a_new_namespace_gets_its_configmap_and_ready_statuses() {
    let (client, mut server) = ApiServer::start();
    let index = Arc::new(SecretIndex::default());
    let (provider, smart) = (openai_provider(), route("smart", "openai"));
    let outcome = play(reconcile(client, Arc::clone(&index)), async {
        serve_reads(
            &mut server,
            None,
            std::slice::from_ref(&provider),
            std::slice::from_ref(&smart),
            Some(&["apiKey"]),
        )
        .await;
        let config = expect_config_write(&mut server).await;
        assert_eq!(config.providers.keys().collect::<Vec<_>>(), ["openai"]);
        assert_eq!(config.routes["smart"].targets[0].model, "gpt-4o-mini");
        let text = serde_json::to_string(&config).expect("config");
        assert!(!text.contains("c2stdGVzdA=="), "no secret value in the config");

        let patch = expect_status(&mut server, PROVIDERS, &provider).await;
        assert_eq!(ready_condition(&patch)["status"], "True");
        assert_eq!(patch["status"]["usedBy"], json!(["smart"]));
        assert_eq!(patch["status"]["observedGeneration"], 1);

        let patch = expect_status(&mut server, ROUTES, &smart).await;
        let ready = ready_condition(&patch);
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("True"), &json!("InForce"))
        );
        assert_eq!(ready["message"], "serving model smart");
        assert_eq!(patch["status"]["resolvedTargets"], json!(["openai/gpt-4o-mini"]));
        assert_eq!(patch["status"]["observedGeneration"], 3);
    })
    .await;
    assert!(outcome.config_written);
    assert_eq!(outcome.statuses_written, 2);
    // The Secret watch now maps `openai-key` to this namespace.
    assert_eq!(
        index.namespace_to_reconcile(&secret(&[])),
        Some(ObjectRef::new(NS))
    );
}

/// The ConfigMap and statuses a reconcile of these inputs writes, as stored objects.
fn stored_outcome(providers: &mut [ProviderSecret], routes: &mut [LLMRoute], keys: &[&str]) -> ConfigMap {
    let mut secrets = SecretKeys::default();
    for key in keys {
        secrets.insert("openai-key", key);
    }
    let compiled = compile(Inputs {
        providers,
        routes,
        keys: &[],
        budgets: &[],
        secrets: &secrets,
        previous: None,
    });
    let earlier = Time("2026-01-01T00:00:00Z".parse().expect("time"));
    let statuses: Vec<_> = providers
        .iter()
        .map(|p| status::provider_status(p, routes, &compiled, &earlier))
        .collect();
    for (provider, status) in providers.iter_mut().zip(statuses) {
        provider.status = Some(status);
    }
    for route in routes.iter_mut() {
        route.status = Some(status::route_status(route, &compiled, &earlier));
    }
    configmap::desired(&namespace(), &compiled.config).expect("desired ConfigMap")
}

#[tokio::test]
async fn nothing_changed_means_no_write() {
    let (client, mut server) = ApiServer::start();
    let mut providers = [openai_provider()];
    let mut routes = [route("smart", "openai")];
    let stored = stored_outcome(&mut providers, &mut routes, &["apiKey"]);
    let outcome = play(reconcile(client, Arc::default()), async {
        serve_reads(&mut server, Some(&stored), &providers, &routes, Some(&["apiKey"])).await;
    })
    .await;
    assert!(!outcome.config_written);
    assert_eq!(outcome.statuses_written, 0);
}

#[tokio::test]
async fn a_namespace_without_llmesh_resources_gets_no_configmap() {
    let (client, mut server) = ApiServer::start();
    let outcome = play(reconcile(client, Arc::default()), async {
        server.expect_missing(CONFIG_MAP).await;
        server
            .expect(
                "GET",
                PROVIDERS,
                200,
                list_of::<ProviderSecret>("ProviderSecret", &[]),
            )
            .await;
        server
            .expect("GET", ROUTES, 200, list_of::<LLMRoute>("LLMRoute", &[]))
            .await;
    })
    .await;
    assert_eq!(outcome, Outcome::default());
}

#[tokio::test]
async fn broken_resources_get_conditions_that_say_what_to_fix() {
    let (client, mut server) = ApiServer::start();
    let (provider, smart, broken) = (
        openai_provider(),
        route("smart", "openai"),
        route("broken", "nowhere"),
    );
    let routes = [broken.clone(), smart.clone()];
    let outcome = play(reconcile(client, Arc::default()), async {
        serve_reads(
            &mut server,
            None,
            std::slice::from_ref(&provider),
            &routes,
            Some(&["token"]),
        )
        .await;
        let config = expect_config_write(&mut server).await;
        assert!(
            config.providers.is_empty() && config.routes.is_empty(),
            "{config:?}"
        );

        let patch = expect_status(&mut server, PROVIDERS, &provider).await;
        let ready = ready_condition(&patch);
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!("Invalid"))
        );
        assert_eq!(
            ready["message"],
            "spec.secretRef: Secret openai-key has no key apiKey"
        );

        let patch = expect_status(&mut server, ROUTES, &broken).await;
        let ready = ready_condition(&patch);
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("False"), &json!("Invalid"))
        );
        let message = ready["message"].as_str().expect("message");
        assert!(
            message.starts_with("spec.targets[0].provider: ") && message.contains("nowhere"),
            "{message}"
        );
        assert_eq!(patch["status"].get("resolvedTargets"), None);

        let patch = expect_status(&mut server, ROUTES, &smart).await;
        let message = ready_condition(&patch)["message"]
            .as_str()
            .expect("message")
            .to_owned();
        assert!(
            message.contains("has no key apiKey"),
            "the route says why its provider is not ready: {message}"
        );
    })
    .await;
    assert_eq!(outcome.problems, 3);
}

#[tokio::test]
async fn a_secret_losing_its_key_keeps_the_last_good_config() {
    let (client, mut server) = ApiServer::start();
    let mut providers = [openai_provider()];
    let mut routes = [route("smart", "openai")];
    let stored = stored_outcome(&mut providers, &mut routes, &["apiKey"]);
    let outcome = play(reconcile(client, Arc::default()), async {
        serve_reads(
            &mut server,
            Some(&stored),
            &providers,
            &routes,
            Some(&["rotated"]),
        )
        .await;
        // The config in force is unchanged (no write); the provider says why it is not Ready.
        let patch = expect_status(&mut server, PROVIDERS, &providers[0]).await;
        let ready = ready_condition(&patch);
        assert_eq!(ready["reason"], "PreviousVersionInForce");
        assert_eq!(
            ready["message"],
            "spec.secretRef: Secret openai-key has no key apiKey (the previous version stays in force)"
        );
        assert_ne!(
            ready["lastTransitionTime"], "2026-01-01T00:00:00Z",
            "Ready changed, so did its time"
        );
    })
    .await;
    assert!(!outcome.config_written);
    assert_eq!(outcome.statuses_written, 1);
}

#[tokio::test]
async fn a_fixed_secret_brings_its_provider_into_the_config() {
    let index = Arc::new(SecretIndex::default());
    let (provider, smart) = (openai_provider(), route("smart", "openai"));

    // The Secret is missing: the config has nothing in force.
    let (client, mut server) = ApiServer::start();
    play(reconcile(client, Arc::clone(&index)), async {
        serve_reads(
            &mut server,
            None,
            std::slice::from_ref(&provider),
            std::slice::from_ref(&smart),
            None,
        )
        .await;
        let config = expect_config_write(&mut server).await;
        assert!(config.routes.is_empty());
        let patch = expect_status(&mut server, PROVIDERS, &provider).await;
        assert_eq!(
            ready_condition(&patch)["message"],
            "spec.secretRef: Secret openai-key not found"
        );
        expect_status(&mut server, ROUTES, &smart).await;
    })
    .await;

    // Creating the Secret is an event the controller maps to this namespace…
    assert_eq!(
        index.namespace_to_reconcile(&secret(&["apiKey"])),
        Some(ObjectRef::new(NS))
    );

    // …and the next reconcile serves the route.
    let (client, mut server) = ApiServer::start();
    play(reconcile(client, index), async {
        serve_reads(
            &mut server,
            None,
            std::slice::from_ref(&provider),
            std::slice::from_ref(&smart),
            Some(&["apiKey"]),
        )
        .await;
        let config = expect_config_write(&mut server).await;
        assert_eq!(config.routes["smart"].targets[0].provider, "openai");
        let patch = expect_status(&mut server, PROVIDERS, &provider).await;
        assert_eq!(ready_condition(&patch)["status"], "True");
        expect_status(&mut server, ROUTES, &smart).await;
    })
    .await;
}
