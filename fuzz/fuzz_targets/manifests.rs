//! Any YAML a person can write is read or reported, then compiled without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_crds::compile::{Inputs, SecretKeys};
use llmesh_crds::manifests::Manifests;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut manifests = Manifests::default();
    let _ = manifests.add_yaml("fuzz.yaml", text);
    let secrets = SecretKeys::from_secrets(&manifests.secrets);
    let compiled = llmesh_crds::compile(Inputs {
        providers: &manifests.providers,
        routes: &manifests.routes,
        keys: &manifests.keys,
        budgets: &manifests.budgets,
        secrets: &secrets,
        previous: None,
    });
    let json = serde_json::to_vec(&compiled.config).expect("config encodes");
    llmesh_crds::SidecarConfig::from_json(&json).expect("a compiled config reads back");
});
