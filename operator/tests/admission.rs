//! The injection on AdmissionReview fixtures as a real API server sends them:
//! each patch is applied to the original pod with a JSON-patch library, and
//! the resulting pod is checked field by field.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod};
use llmesh_crds::injection;
use llmesh_operator::webhook::mutate::NamespaceSettings;
use llmesh_operator::webhook::review::Injector;
use serde_json::Value;
use support::admission::*;

/// The answer to a fixture, and the fixture's pod with the answer's patch applied.
struct Outcome {
    response: Value,
    /// The patched pod; `None` when the answer has no patch.
    pod: Option<Pod>,
}

fn review(injector: &Injector, fixture: &str) -> Outcome {
    let body = fixture_bytes(fixture);
    let response = answer(injector, &body);
    let request: Value = serde_json::from_slice(&body).expect("fixture JSON");
    assert_eq!(response["allowed"], true, "every pod is allowed: {response}");
    assert_eq!(
        response["uid"], request["request"]["uid"],
        "the answer carries the request's uid"
    );
    let pod = patch_of(&response).map(|patch| {
        let mut object = request["request"]["object"].clone();
        json_patch::patch(&mut object, &patch).expect("the patch applies cleanly to the original pod");
        serde_json::from_value::<Pod>(object).expect("the patched object is still a Pod")
    });
    Outcome { response, pod }
}

fn native() -> Injector {
    injector(true)
}

fn sidecar(pod: &Pod, native: bool) -> &Container {
    let spec = pod.spec.as_ref().expect("spec");
    let first = if native {
        spec.init_containers.as_ref().and_then(|c| c.first())
    } else {
        spec.containers.first()
    };
    let sidecar = first.expect("a first container");
    assert_eq!(sidecar.name, injection::CONTAINER_NAME, "the sidecar comes first");
    sidecar
}

fn env<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

#[test]
fn a_deployment_pod_gets_a_native_sidecar_with_everything_it_needs() {
    let injector = native();
    let outcome = review(&injector, "deployment-pod.json");
    assert!(outcome.response.get("warnings").is_none(), "{}", outcome.response);
    let pod = outcome.pod.expect("a patch");
    let sidecar = sidecar(&pod, true);
    let spec = pod.spec.as_ref().expect("spec");

    assert_eq!(sidecar.image.as_deref(), Some(IMAGE));
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    assert_eq!(
        env(sidecar, injection::WORKLOAD_NAME),
        Some("chat-api"),
        "the Deployment, not the ReplicaSet"
    );
    assert_eq!(env(sidecar, injection::WORKLOAD_NAMESPACE), Some("team-a"));
    assert_eq!(env(sidecar, injection::DEFAULT_VIRTUAL_KEY), Some("chat-api"));
    assert_eq!(
        env(sidecar, injection::POD_ROUTES),
        Some("cheap,smart"),
        "llmesh.io/routes, as the sidecar reads it"
    );
    assert_eq!(
        env(sidecar, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        Some("http://otel-collector.observability:4317"),
        "llmesh.io/otel-endpoint"
    );
    assert_eq!(
        env(sidecar, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        Some("grpc"),
        "llmesh.io/otel-protocol"
    );
    assert_eq!(env(sidecar, "OTEL_SERVICE_NAME"), Some("chat-api"));
    assert_eq!(
        env(sidecar, "OTEL_RESOURCE_ATTRIBUTES"),
        Some("k8s.namespace.name=team-a,k8s.pod.name=$(LLMESH_POD_NAME)")
    );
    assert_eq!(env(sidecar, injection::LISTEN_ADDR), Some("127.0.0.1:4000"));
    assert_eq!(env(sidecar, injection::ADMIN_ADDR), Some("0.0.0.0:9464"));
    assert_eq!(
        env(sidecar, injection::CONFIG_FILE),
        Some("/etc/llmesh/config/config.json")
    );
    let pod_name = sidecar
        .env
        .iter()
        .flatten()
        .find(|e| e.name == injection::POD_NAME)
        .expect("pod name");
    assert_eq!(
        pod_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );

    // Probes on the admin port.
    for (probe, path) in [
        (&sidecar.startup_probe, "/readyz"),
        (&sidecar.readiness_probe, "/readyz"),
        (&sidecar.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(serde_json::to_value(&get.port).expect("port"), 9464);
    }
    // Restrictive security context.
    let security = sidecar.security_context.as_ref().expect("security context");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        security.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    // Default resources.
    let resources = sidecar.resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("requests");
    assert_eq!(requests["cpu"].0, "50m");
    assert_eq!(requests["memory"].0, "32Mi");
    assert_eq!(resources.limits.as_ref().expect("limits")["memory"].0, "128Mi");

    // Config and credential volumes, mounted only into the sidecar.
    let volumes = spec.volumes.as_ref().expect("volumes");
    assert_eq!(
        volumes[0].name, "kube-api-access-x7k2p",
        "existing volumes stay first"
    );
    let config = volumes
        .iter()
        .find(|v| v.config_map.is_some())
        .expect("config volume");
    assert_eq!(
        config.config_map.as_ref().map(|c| c.name.as_str()),
        Some("llmesh-config")
    );
    let secret = volumes
        .iter()
        .find(|v| v.secret.is_some())
        .expect("credential volume");
    assert_eq!(
        secret.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
        Some("openai-key")
    );
    let mounts: Vec<_> = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert!(
        mounts.contains(&(config.name.as_str(), "/etc/llmesh/config")),
        "{mounts:?}"
    );
    assert!(
        mounts.contains(&(secret.name.as_str(), "/etc/llmesh/secrets/openai-key")),
        "{mounts:?}"
    );
    // The root filesystem is read-only: the state file goes to a volume of its own.
    let state = volumes
        .iter()
        .find(|v| v.empty_dir.is_some())
        .expect("state volume");
    assert!(
        mounts.contains(&(state.name.as_str(), "/var/lib/llmesh")),
        "{mounts:?}"
    );
    assert_eq!(
        env(sidecar, injection::STATE_FILE),
        Some("/var/lib/llmesh/state.json")
    );
    let app = &spec.containers[0];
    assert!(
        app.volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != config.name && m.name != secret.name),
        "the app container mounts neither config nor credentials"
    );

    // The app's env: its own variable kept, base URLs added.
    assert_eq!(env(app, "LOG_LEVEL"), Some("info"));
    assert_eq!(env(app, "OPENAI_BASE_URL"), Some("http://127.0.0.1:4000/v1"));
    assert_eq!(env(app, "ANTHROPIC_BASE_URL"), Some("http://127.0.0.1:4000"));
    assert!(
        env(app, injection::DEFAULT_VIRTUAL_KEY).is_none(),
        "nothing llmesh-internal in the app"
    );

    // Metadata: scrape annotations, PodMonitor label, template hash; the app's stay.
    assert_eq!(annotation(&pod, "prometheus.io/scrape"), Some("true"));
    assert_eq!(annotation(&pod, "prometheus.io/port"), Some("9464"));
    assert_eq!(annotation(&pod, "prometheus.io/path"), Some("/metrics"));
    assert_eq!(
        annotation(&pod, injection::SIDECAR_HASH_ANNOTATION),
        Some(injector.settings.template_hash().as_str())
    );
    assert_eq!(
        annotation(&pod, injection::VIRTUAL_KEY_ANNOTATION),
        Some("chat-api")
    );
    let labels = pod.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels[injection::INJECTED_LABEL], "true");
    assert_eq!(labels["app"], "chat-api");
}

#[test]
fn the_sync_url_token_and_ca_reach_the_sidecar_and_never_the_app() {
    for (native, fixture) in [(true, "deployment-pod.json"), (false, "deployment-pod.json")] {
        let pod = review(&injector(native), fixture).pod.expect("a patch");
        let sidecar = sidecar(&pod, native);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            env(sidecar, injection::SYNC_URL),
            Some(support::admission::SYNC_URL)
        );
        assert_eq!(
            env(sidecar, injection::SYNC_CA),
            Some(support::admission::SYNC_CA)
        );
        assert_eq!(
            env(sidecar, injection::SYNC_TOKEN_FILE),
            Some("/var/run/secrets/llmesh.io/sync/token")
        );
        let mounted = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/var/run/secrets/llmesh.io/sync")
            .expect("the sidecar mounts the token");
        let token = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mounted.name)
            .expect("a projected token volume");
        let projection = token
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .and_then(|s| s.first())
            .and_then(|s| s.service_account_token.as_ref())
            .expect("a service-account token");
        assert_eq!(
            projection.audience.as_deref(),
            Some("llmesh-sync"),
            "not the API server's audience"
        );
        assert_eq!(projection.expiration_seconds, Some(3600));
        assert_eq!(projection.path, "token");
        let apps = spec
            .containers
            .iter()
            .filter(|c| c.name != injection::CONTAINER_NAME);
        let inits = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.name != injection::CONTAINER_NAME);
        for app in apps.chain(inits) {
            assert!(
                app.volume_mounts.iter().flatten().all(|m| m.name != token.name),
                "{} mounts the sync token",
                app.name
            );
            for name in [
                injection::SYNC_URL,
                injection::SYNC_CA,
                injection::SYNC_TOKEN_FILE,
            ] {
                assert!(env(app, name).is_none(), "{} gets {name}", app.name);
            }
        }
    }
}

#[test]
fn on_older_clusters_the_sidecar_is_the_first_plain_container() {
    let outcome = review(&injector(false), "deployment-pod.json");
    let pod = outcome.pod.expect("a patch");
    let sidecar = sidecar(&pod, false);
    assert_eq!(
        sidecar.restart_policy, None,
        "restartPolicy is for native sidecars only"
    );
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.init_containers, None);
    assert_eq!(spec.containers[1].name, "app");
    assert_eq!(
        env(&spec.containers[1], "OPENAI_BASE_URL"),
        Some("http://127.0.0.1:4000/v1")
    );
    assert!(
        env(sidecar, "OPENAI_BASE_URL").is_none(),
        "the sidecar is not an app"
    );
}

#[test]
fn a_job_pod_in_an_injected_namespace_still_finishes() {
    let outcome = review(&native(), "job-pod.json");
    let pod = outcome.pod.expect("injected by the namespace's setting");
    let sidecar = sidecar(&pod, true);
    // A native sidecar is stopped after the Job's containers finish.
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        env(sidecar, injection::WORKLOAD_NAME),
        Some("nightly-eval-28871234")
    );
    assert!(
        env(sidecar, injection::DEFAULT_VIRTUAL_KEY).is_none(),
        "no annotation, no default key"
    );
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.containers.len(), 1);
    assert_eq!(
        env(&spec.containers[0], "OPENAI_BASE_URL"),
        Some("http://127.0.0.1:4000/v1")
    );
}

#[test]
fn variables_the_app_already_sets_are_kept() {
    let outcome = review(&native(), "existing-env-pod.json");
    let pod = outcome.pod.expect("a patch");
    let spec = pod.spec.as_ref().expect("spec");
    let app = &spec.containers[0];
    assert_eq!(
        env(app, "OPENAI_BASE_URL"),
        Some("https://proxy.internal/v1"),
        "not overwritten"
    );
    assert_eq!(env(app, "ANTHROPIC_BASE_URL"), Some("http://127.0.0.1:4000"));
    assert_eq!(app.env.as_ref().map(Vec::len), Some(3), "one variable added");
    let worker = &spec.containers[1];
    assert_eq!(
        env(worker, "OPENAI_BASE_URL"),
        Some("http://127.0.0.1:4000/v1"),
        "every app container"
    );
    // The app's own scrape annotations win.
    assert_eq!(annotation(&pod, "prometheus.io/port"), Some("8080"));
    assert_eq!(annotation(&pod, "prometheus.io/path"), None);
}

#[test]
fn init_containers_run_after_the_sidecar_and_bad_annotations_only_warn() {
    let outcome = review(&native(), "init-containers-pod.json");
    let warnings = outcome.response["warnings"].as_array().expect("warnings").clone();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    for annotation in ["llmesh.io/cpu-request", "llmesh.io/routes"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains(annotation))),
            "{annotation} in {warnings:?}"
        );
    }
    let pod = outcome.pod.expect("a patch");
    let spec = pod.spec.as_ref().expect("spec");
    let names: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, [injection::CONTAINER_NAME, "migrate"]);
    let sidecar = sidecar(&pod, true);
    assert_eq!(
        env(sidecar, injection::LISTEN_ADDR),
        Some("127.0.0.1:4100"),
        "llmesh.io/port"
    );
    assert_eq!(
        env(sidecar, injection::POD_ROUTES),
        None,
        "a bad route list is dropped"
    );
    assert_eq!(
        env(sidecar, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        None,
        "no tracing unless asked"
    );
    assert_eq!(
        env(&spec.containers[0], "OPENAI_BASE_URL"),
        Some("http://127.0.0.1:4100/v1")
    );
    let resources = sidecar.resources.as_ref().expect("resources");
    assert_eq!(
        resources.limits.as_ref().expect("limits")["memory"].0,
        "256Mi",
        "override"
    );
    assert_eq!(
        resources.requests.as_ref().expect("requests")["cpu"].0,
        "50m",
        "bad value: the default"
    );
}

#[test]
fn pods_that_must_not_change_get_no_patch() {
    for fixture in ["injected-pod.json", "opted-out-pod.json", "kube-system-pod.json"] {
        let outcome = review(&native(), fixture);
        assert!(outcome.pod.is_none(), "{fixture}: {}", outcome.response);
        assert!(outcome.response.get("patchType").is_none(), "{fixture}");
    }
}

#[test]
fn the_operator_namespace_is_never_injected() {
    let mut namespaces = HashMap::new();
    namespaces.insert(
        OPERATOR_NAMESPACE.to_owned(),
        NamespaceSettings {
            name: OPERATOR_NAMESPACE.to_owned(),
            inject: true,
            ..NamespaceSettings::default()
        },
    );
    let injector = Injector {
        namespaces: Arc::new(namespaces),
        ..native()
    };
    let mut body: Value = serde_json::from_slice(&fixture_bytes("deployment-pod.json")).expect("json");
    body["request"]["namespace"] = OPERATOR_NAMESPACE.into();
    let response = answer(&injector, &serde_json::to_vec(&body).expect("json"));
    assert!(patch_of(&response).is_none(), "{response}");
}

#[test]
fn a_malformed_review_is_allowed_with_a_warning() {
    let response = answer(&native(), &fixture_bytes("malformed.json"));
    assert_eq!(response["allowed"], true);
    assert_eq!(response["uid"], "0b9c4f0e-1d1e-4b9a-8c61-2f3a4b5c6d08");
    assert!(patch_of(&response).is_none());
    let warning = response["warnings"][0].as_str().expect("a warning");
    assert!(warning.contains("could not be read"), "{warning}");

    for garbage in [&b""[..], b"{", b"[]", b"{\"kind\": \"AdmissionReview\"}"] {
        let response = answer(&native(), garbage);
        assert_eq!(response["allowed"], true, "{response}");
    }
}

#[test]
fn injection_is_idempotent() {
    let injector = native();
    let once = review(&injector, "deployment-pod.json").pod.expect("a patch");
    let mut body: Value = serde_json::from_slice(&fixture_bytes("deployment-pod.json")).expect("json");
    body["request"]["object"] = serde_json::to_value(&once).expect("pod");
    let response = answer(&injector, &serde_json::to_vec(&body).expect("json"));
    assert!(
        patch_of(&response).is_none(),
        "a second pass changes nothing: {response}"
    );
}

#[test]
fn the_injection_example_gets_the_sidecar() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/injection/deployment.yaml");
    let text = std::fs::read_to_string(path).expect("example");
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_norway::from_str(&text).expect("a Deployment");
    let template = deployment.spec.expect("spec").template;
    // The pod the ReplicaSet controller creates from the template.
    let mut pod = Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        ..Pod::default()
    };
    pod.metadata.generate_name = Some("chat-api-5f7d9c8b4-".to_owned());
    pod.metadata
        .labels
        .get_or_insert_default()
        .insert("pod-template-hash".to_owned(), "5f7d9c8b4".to_owned());
    pod.metadata.owner_references = Some(vec![serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "chat-api-5f7d9c8b4", "uid": "rs", "controller": true
    }))
    .expect("owner")]);
    let mut body: Value = serde_json::from_slice(&fixture_bytes("deployment-pod.json")).expect("json");
    body["request"]["object"] = serde_json::to_value(&pod).expect("pod");
    let response = answer(&native(), &serde_json::to_vec(&body).expect("json"));
    let mut object = body["request"]["object"].clone();
    json_patch::patch(&mut object, &patch_of(&response).expect("a patch")).expect("applies");
    let pod: Pod = serde_json::from_value(object).expect("pod");
    let sidecar = sidecar(&pod, true);
    assert_eq!(env(sidecar, injection::WORKLOAD_NAME), Some("chat-api"));
    assert_eq!(env(sidecar, injection::DEFAULT_VIRTUAL_KEY), Some("chat-api"));
    let limits = sidecar
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(limits["memory"].0, "192Mi");
    let app = &pod.spec.as_ref().expect("spec").containers[0];
    assert_eq!(env(app, "OPENAI_BASE_URL"), Some("http://127.0.0.1:4000/v1"));
}
