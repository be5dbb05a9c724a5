//! The committed CRD YAML is what the Rust types generate.

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, generated) in llmesh_crds::resources::crd_documents() {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/{file} is stale: run `cargo run -p llmesh-crds --bin crdgen -- crds/` and commit the result"
        );
    }
}
