//! Writes the CustomResourceDefinitions generated from the Rust types.
//!
//! `cargo run -p llmesh-crds --bin crdgen -- crds/` regenerates the committed
//! YAML; a test fails when the two differ.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crds".to_owned()));
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in llmesh_crds::resources::crd_documents() {
        std::fs::write(dir.join(file), yaml)?;
    }
    Ok(())
}
