//! The manifests under `config/` agree with the code: the webhook
//! registration names what the operator serves and patches, and is safe.

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use llmesh_operator::webhook::{CONFIGURATION_NAME, MUTATE_PATH, PORT, WEBHOOK_NAME};
use serde::Deserialize;
use serde_json::Value;

fn documents(file: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let doc = documents(file)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .expect(kind);
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{file} {kind}: {e}"))
}

#[test]
fn the_registration_names_what_the_operator_serves_and_fails_open() {
    let registration: MutatingWebhookConfiguration = of_kind("webhook.yaml", "MutatingWebhookConfiguration");
    assert_eq!(registration.metadata.name.as_deref(), Some(CONFIGURATION_NAME));
    let webhooks = registration.webhooks.expect("webhooks");
    assert_eq!(webhooks.len(), 1);
    let webhook = &webhooks[0];
    assert_eq!(webhook.name, WEBHOOK_NAME);
    assert_eq!(webhook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(webhook.side_effects, "None");
    assert_eq!(webhook.admission_review_versions, ["v1"]);
    assert!(webhook.timeout_seconds.is_some_and(|t| t <= 5), "a short timeout");
    let service = webhook.client_config.service.as_ref().expect("service");
    assert_eq!(service.path.as_deref(), Some(MUTATE_PATH));
    let excluded = webhook
        .namespace_selector
        .as_ref()
        .and_then(|s| s.match_expressions.as_ref())
        .and_then(|e| e.iter().find(|e| e.key == "kubernetes.io/metadata.name"))
        .and_then(|e| e.values.clone())
        .expect("system namespaces excluded");
    for namespace in ["kube-system", "kube-public", "llmesh-system"] {
        assert!(excluded.iter().any(|n| n == namespace), "{namespace}");
    }
    let rules = webhook.rules.as_ref().expect("rules");
    assert_eq!(rules[0].operations.as_deref(), Some(&["CREATE".to_owned()][..]));
    assert_eq!(rules[0].resources.as_deref(), Some(&["pods".to_owned()][..]));

    let service_object: Service = of_kind("webhook.yaml", "Service");
    assert_eq!(
        service_object.metadata.name.as_deref(),
        Some(service.name.as_str())
    );
    let deployment: Deployment = of_kind("operator.yaml", "Deployment");
    let ports = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].ports.clone().unwrap_or_default())
        .unwrap_or_default();
    let webhook_port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("webhook"))
        .expect("webhook port");
    assert_eq!(webhook_port.container_port, i32::from(PORT));
}

#[test]
fn rbac_lets_the_operator_patch_only_its_own_registration() {
    let docs = documents("rbac.yaml");
    let rule = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
        .find(|r| r["resources"][0] == "mutatingwebhookconfigurations")
        .expect("a rule for the registration");
    assert_eq!(rule["resourceNames"], serde_json::json!([CONFIGURATION_NAME]));
}
