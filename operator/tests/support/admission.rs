//! Admission fixtures: the recorded AdmissionReviews, an injector with a
//! fixed namespace table, and readers for its answers.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use llmesh_operator::webhook::mutate::{InjectionSettings, NamespaceSettings, Resources, SyncInjection};
use llmesh_operator::webhook::review::Injector;
use serde_json::Value;

/// The sidecar image the test injector injects.
pub const IMAGE: &str = "ghcr.io/llmesh/llmesh-sidecar:0.1.0";
/// The sync URL the test injector injects.
pub const SYNC_URL: &str = "https://llmesh-sync.llmesh-system.svc:9444";
/// The CA bundle the test injector injects (any PEM text: it is passed through).
pub const SYNC_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
/// The test operator's namespace.
pub const OPERATOR_NAMESPACE: &str = "llmesh-system";

/// The bytes of `operator/tests/fixtures/<name>`.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The injection settings of the tests.
pub fn settings(native: bool) -> InjectionSettings {
    InjectionSettings {
        image: IMAGE.to_owned(),
        image_pull_policy: None,
        native_sidecar: native,
        operator_namespace: OPERATOR_NAMESPACE.to_owned(),
        resources: Resources::default(),
        sync: Some(SyncInjection {
            url: SYNC_URL.to_owned(),
            ca_pem: SYNC_CA.to_owned(),
        }),
        otel_endpoint: None,
        otel_protocol: None,
    }
}

/// An injector where `team-a` (credentials in Secret `openai-key`) and
/// `kube-system` both ask for injection namespace-wide.
pub fn injector(native: bool) -> Injector {
    let mut namespaces = HashMap::new();
    for (name, secrets) in [("team-a", vec!["openai-key"]), ("kube-system", vec![])] {
        namespaces.insert(
            name.to_owned(),
            NamespaceSettings {
                name: name.to_owned(),
                inject: true,
                restart_on_miss: false,
                credential_secrets: secrets.into_iter().map(str::to_owned).collect::<BTreeSet<_>>(),
            },
        );
    }
    Injector {
        settings: Arc::new(settings(native)),
        namespaces: Arc::new(namespaces),
        metrics: None,
    }
}

/// The `response` of the review the injector answers `body` with.
pub fn answer(injector: &Injector, body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(&injector.review(body)).expect("the answer is JSON");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    review["response"].clone()
}

/// The JSON patch in a response, if any (kube sends its bytes as a number array).
pub fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let bytes: Vec<u8> = serde_json::from_value(response.get("patch")?.clone()).expect("patch bytes");
    assert_eq!(response["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&bytes).expect("a JSON patch"))
}
