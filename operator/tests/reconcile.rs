//! A namespace reconcile against a mocked API server: the exact calls, in order.

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::runtime::reflector::ObjectRef;
use llmesh_crds::compile::SecretKeys;
use llmesh_crds::config::key_hash;
use llmesh_crds::{Budget, Inputs, LLMRoute, ProviderSecret, SidecarConfig, VirtualKey, compile};
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

/// A namespace's objects as the mocked API server holds them.
#[derive(Default)]
struct Stored<'a> {
    config_map: Option<&'a ConfigMap>,
    providers: &'a [ProviderSecret],
    routes: &'a [LLMRoute],
    keys: &'a [VirtualKey],
    budgets: &'a [Budget],
    /// Each referenced Secret in name order, `None` when missing.
    secrets: Vec<(&'a str, Option<Secret>)>,
}

/// The calls that read the namespace's inputs, answered from `stored`.
async fn serve(server: &mut ApiServer, stored: Stored<'_>) {
    match stored.config_map {
        Some(cm) => {
            server
                .expect("GET", CONFIG_MAP, 200, serde_json::to_value(cm).expect("cm"))
                .await
        }
        None => server.expect_missing(CONFIG_MAP).await,
    };
    server
        .expect("GET", PROVIDERS, 200, list_of("ProviderSecret", stored.providers))
        .await;
    server
        .expect("GET", ROUTES, 200, list_of("LLMRoute", stored.routes))
        .await;
    server
        .expect("GET", KEYS, 200, list_of("VirtualKey", stored.keys))
        .await;
    server
        .expect("GET", BUDGETS, 200, list_of("Budget", stored.budgets))
        .await;
    for (name, secret) in stored.secrets {
        let path = secret_path(name);
        match secret {
            Some(secret) => {
                server
                    .expect("GET", &path, 200, serde_json::to_value(secret).expect("s"))
                    .await
            }
            None => server.expect_missing(&path).await,
        };
    }
}

/// The reads of a namespace with only providers and routes, whose Secret
/// `openai-key` holds `secret_keys` (`None`: it is missing).
async fn serve_reads(
    server: &mut ApiServer,
    config_map: Option<&ConfigMap>,
    providers: &[ProviderSecret],
    routes: &[LLMRoute],
    secret_keys: Option<&[&str]>,
) {
    let stored = Stored {
        config_map,
        providers,
        routes,
        secrets: vec![("openai-key", secret_keys.map(secret))],
        ..Stored::default()
    };
    serve(server, stored).await;
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

/// The reasons of the Events a reconcile asks for, in order.
fn reasons(outcome: &Outcome) -> Vec<&'static str> {
    outcome.notices.iter().map(|n| n.reason).collect()
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
    assert_eq!(
        reasons(&outcome),
        ["Ready", "Ready", "ConfigWritten"],
        "both resources became Ready and a config was written"
    );
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
    assert_eq!(
        reasons(&outcome),
        Vec::<&str>::new(),
        "nothing happened worth an Event"
    );
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
        server
            .expect("GET", KEYS, 200, list_of::<VirtualKey>("VirtualKey", &[]))
            .await;
        server
            .expect("GET", BUDGETS, 200, list_of::<Budget>("Budget", &[]))
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
    assert_eq!(
        reasons(&outcome),
        ["Invalid", "Invalid", "Invalid", "ConfigWritten"]
    );
    assert!(outcome.notices[..3].iter().all(|n| n.warning));
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

/// A VirtualKey without `secretRef`, the operator's to generate.
fn virtual_key(name: &str, annotations: Value, spec: Value) -> VirtualKey {
    serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "VirtualKey",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("{name}-uid"), "generation": 2,
            "annotations": annotations
        },
        "spec": spec
    }))
    .expect("virtual key")
}

/// The key value in a Secret's `data.key` (base64 on the wire).
fn key_value(secret: &Value) -> String {
    let secret: Secret = serde_json::from_value(secret.clone()).expect("secret");
    let bytes = secret.data.expect("data")["key"].0.clone();
    String::from_utf8(bytes).expect("utf-8 key")
}

#[tokio::test]
async fn a_new_virtual_key_gets_a_generated_secret_and_only_its_hash_in_the_config() {
    let (client, mut server) = ApiServer::start();
    let (provider, smart) = (openai_provider(), route("smart", "openai"));
    let budget: Budget = serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "Budget",
        "metadata": {"name": "monthly", "namespace": NS, "generation": 1},
        "spec": {"limitUsd": 50.0}
    }))
    .expect("budget");
    let generated = virtual_key("team-a", json!({}), json!({"budget": "monthly", "team": "a"}));
    let byo = virtual_key("byo", json!({}), json!({"secretRef": {"name": "byo-key"}}));
    let keys = [byo.clone(), generated.clone()];
    let outcome = play(reconcile(client, Arc::default()), async {
        let stored = Stored {
            providers: std::slice::from_ref(&provider),
            routes: std::slice::from_ref(&smart),
            keys: &keys,
            budgets: std::slice::from_ref(&budget),
            secrets: vec![
                ("byo-key", None),
                ("openai-key", Some(secret(&["apiKey"]))),
                ("team-a", None),
            ],
            ..Stored::default()
        };
        serve(&mut server, stored).await;
        // Only the key without secretRef gets a Secret; `byo-key` is its owner's to create.
        let created = server
            .expect_with("POST", SECRETS, |call| (201, call.body.clone()))
            .await;
        let body = &created.body;
        assert_eq!(body["metadata"]["name"], "team-a");
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(
            [
                &owner["kind"],
                &owner["name"],
                &owner["uid"],
                &owner["controller"]
            ],
            [
                &json!("VirtualKey"),
                &json!("team-a"),
                &json!("team-a-uid"),
                &json!(true)
            ]
        );
        let key = key_value(body);
        assert!(
            key.starts_with("sk-llmesh-team-a-"),
            "documented format: {key:.20}"
        );

        let config = expect_config_write(&mut server).await;
        assert_eq!(config.keys.keys().collect::<Vec<_>>(), ["team-a"]);
        assert_eq!(config.keys["team-a"].key_hash, key_hash(key.as_bytes()));
        assert_eq!(config.keys["team-a"].budget.as_deref(), Some("monthly"));
        assert_eq!(config.budgets["monthly"].limit_usd, 50.0);
        let text = serde_json::to_string(&config).expect("config");
        assert!(!text.contains(&key), "the key itself never reaches the config");

        expect_status(&mut server, PROVIDERS, &provider).await;
        expect_status(&mut server, ROUTES, &smart).await;
        let patch = expect_status(&mut server, BUDGETS, &budget).await;
        assert_eq!(ready_condition(&patch)["status"], "True");
        assert_eq!(patch["status"]["period"], "monthly (UTC)");
        assert_eq!(
            patch["status"].get("spentUsd"),
            None,
            "spend is the sync service's, not the reconcile's"
        );

        let patch = expect_status(&mut server, KEYS, &byo).await;
        let ready = ready_condition(&patch);
        assert_eq!(
            (&ready["status"], &ready["message"]),
            (
                &json!("False"),
                &json!("spec.secretRef: Secret byo-key not found")
            )
        );
        assert_eq!(patch["status"]["secretName"], "byo-key");
        assert_eq!(patch["status"]["keyId"], "byo");

        let patch = expect_status(&mut server, KEYS, &generated).await;
        assert_eq!(ready_condition(&patch)["status"], "True");
        assert_eq!(ready_condition(&patch)["message"], "the sidecars accept the key");
        assert_eq!(patch["status"]["secretName"], "team-a");
        assert_eq!(patch["status"]["keyId"], "team-a");
        assert_eq!(patch["status"]["observedGeneration"], 2);
        assert!(!patch.to_string().contains(&key), "no key in the status");
    })
    .await;
    assert_eq!(outcome.notices[0].reason, "KeyGenerated");
    assert_eq!(outcome.notices.last().map(|n| n.reason), Some("ConfigWritten"));
    assert_eq!(outcome.states[&("VirtualKey".to_owned(), false)], 1);
    assert_eq!(outcome.states[&("VirtualKey".to_owned(), true)], 1);
    assert_eq!(outcome.next_check, None);
}

#[tokio::test]
async fn a_rotation_request_replaces_the_key_and_the_old_one_works_for_the_grace_period() {
    let (client, mut server) = ApiServer::start();
    let requested = "2026-01-01T00:00:00Z";
    let key = virtual_key(
        "team-a",
        json!({"llmesh.io/rotate-at": requested}),
        json!({"rotationGracePeriod": "2h"}),
    );
    let old = "sk-llmesh-old";
    let mut existing =
        llmesh_operator::keys::new_secret(&virtual_key("team-a", json!({}), json!({})), old.to_owned());
    existing.metadata.resource_version = Some("7".to_owned());
    let outcome = play(reconcile(client, Arc::default()), async {
        let stored = Stored {
            keys: std::slice::from_ref(&key),
            secrets: vec![("team-a", Some(existing.clone()))],
            ..Stored::default()
        };
        serve(&mut server, stored).await;
        let replaced = server
            .expect_with("PUT", &secret_path("team-a"), |call| (200, call.body.clone()))
            .await;
        let body = &replaced.body;
        assert_eq!(
            body["metadata"]["resourceVersion"], "7",
            "a concurrent change conflicts instead of being overwritten"
        );
        let new = key_value(body);
        assert_ne!(new, old);
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(annotations["llmesh.io/rotated-at"], requested);

        let config = expect_config_write(&mut server).await;
        let configured = &config.keys["team-a"];
        assert_eq!(configured.key_hash, key_hash(new.as_bytes()));
        assert_eq!(configured.previous_key_hashes.len(), 1);
        assert_eq!(configured.previous_key_hashes[0].hash, key_hash(old.as_bytes()));
        let grace_left =
            configured.previous_key_hashes[0].valid_until_unix - jiff::Timestamp::now().as_second();
        assert!((7_190..=7_200).contains(&grace_left), "{grace_left}");

        let patch = expect_status(&mut server, KEYS, &key).await;
        assert!(patch["status"]["previousKeyValidUntil"].is_string(), "{patch}");
    })
    .await;
    assert_eq!(outcome.notices[0].reason, "KeyRotated");
    assert!(!outcome.notices[0].note.contains("sk-llmesh"), "no key in Events");
    let due = outcome
        .next_check
        .expect("a reconcile when the grace period ends");
    assert!((7_190..=7_201).contains(&due.as_secs()), "{due:?}");
}
