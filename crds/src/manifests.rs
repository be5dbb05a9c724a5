//! Multi-document YAML manifests, as a person would `kubectl apply` them.
//!
//! Standalone mode reads these instead of watching an API server. Documents
//! of kinds llmesh does not use (a Deployment in the same folder) are skipped.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use serde::de::DeserializeOwned;

use crate::resources::{Budget, LLMRoute, ProviderSecret, VirtualKey};

/// The resources found in a set of manifests.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// `ProviderSecret`s.
    pub providers: Vec<ProviderSecret>,
    /// `LLMRoute`s.
    pub routes: Vec<LLMRoute>,
    /// `VirtualKey`s.
    pub keys: Vec<VirtualKey>,
    /// `Budget`s.
    pub budgets: Vec<Budget>,
    /// `v1/Secret`s (credentials, in standalone mode only).
    pub secrets: Vec<Secret>,
}

/// A document that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: document {document}: {message}")]
pub struct ManifestError {
    /// The file (or other source) the document came from.
    pub source_name: String,
    /// The document's 1-based position in its file.
    pub document: usize,
    /// What is wrong, with the path of the bad field.
    pub message: String,
}

/// A folder of manifests that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {error}")]
pub struct ReadError {
    /// The file or folder.
    pub path: PathBuf,
    /// Why.
    pub error: std::io::Error,
}

impl Manifests {
    /// Reads every `.yaml`/`.yml` file under `dir` (sorted, hidden entries
    /// skipped: a ConfigMap or Secret mount keeps its real files behind
    /// `..data`). Returns the resources and the documents that failed.
    ///
    /// # Errors
    /// A folder or file cannot be read.
    pub fn read_dir(dir: &Path) -> Result<(Self, Vec<ManifestError>), ReadError> {
        let mut manifests = Self::default();
        let mut problems = Vec::new();
        for path in yaml_files(dir)? {
            let text = std::fs::read_to_string(&path).map_err(|error| ReadError {
                path: path.clone(),
                error,
            })?;
            let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
            problems.extend(manifests.add_yaml(&name, &text));
        }
        Ok((manifests, problems))
    }

    /// Adds every document of one YAML text. Documents that fail to parse are
    /// reported; the others are still added.
    pub fn add_yaml(&mut self, source_name: &str, text: &str) -> Vec<ManifestError> {
        let mut errors = Vec::new();
        for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
            let error = |message: String| ManifestError {
                source_name: source_name.to_owned(),
                document: index + 1,
                message,
            };
            let value: serde_json::Value = match serde::Deserialize::deserialize(document) {
                Ok(value) => value,
                Err(e) => {
                    errors.push(error(e.to_string()));
                    // A syntax error leaves the rest of the stream unreadable.
                    break;
                }
            };
            if value.is_null() {
                continue;
            }
            if let Err(message) = self.add_document(value) {
                errors.push(error(message));
            }
        }
        errors
    }

    fn add_document(&mut self, value: serde_json::Value) -> Result<(), String> {
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
        let llmesh = api_version == format!("{}/{}", crate::API_GROUP, crate::API_VERSION);
        match (llmesh, kind, api_version) {
            (true, "ProviderSecret", _) => self.providers.push(typed(value)?),
            (true, "LLMRoute", _) => self.routes.push(typed(value)?),
            (true, "VirtualKey", _) => self.keys.push(typed(value)?),
            (true, "Budget", _) => self.budgets.push(typed(value)?),
            (false, "Secret", "v1") => self.secrets.push(typed(value)?),
            (false, _, version) if version.starts_with(crate::API_GROUP) => {
                return Err(format!(
                    "apiVersion {version} is not served (use llmesh.io/v1alpha1)"
                ));
            }
            (true, other, _) => return Err(format!("unknown llmesh kind {other:?}")),
            _ => {}
        }
        Ok(())
    }
}

fn typed<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        format!("at {path}: {}", e.into_inner())
    })
}

/// The `.yaml` and `.yml` files under `dir`, sorted, hidden entries skipped.
///
/// # Errors
/// A folder cannot be read.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current).map_err(|error| ReadError {
            path: current.clone(),
            error,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llmesh_kinds_and_secrets_and_skips_the_rest() {
        let mut manifests = Manifests::default();
        let errors = manifests.add_yaml(
            "all.yaml",
            r#"
apiVersion: llmesh.io/v1alpha1
kind: ProviderSecret
metadata: {name: mock}
spec: {provider: mock}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
---
apiVersion: v1
kind: Secret
metadata: {name: key}
stringData: {apiKey: sk-test}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: smart}
spec:
  targets: [{provider: mock, model: m}]
"#,
        );
        assert_eq!(errors, vec![]);
        assert_eq!(manifests.providers.len(), 1);
        assert_eq!(manifests.routes.len(), 1);
        assert_eq!(manifests.secrets.len(), 1);
    }

    #[test]
    fn names_the_document_and_field_of_a_bad_resource() {
        let mut manifests = Manifests::default();
        let errors = manifests.add_yaml(
            "routes.yaml",
            r#"
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: ok}
spec: {targets: [{provider: p, model: m}]}
---
apiVersion: llmesh.io/v1alpha1
kind: LLMRoute
metadata: {name: bad}
spec: {targets: [{provider: p, model: m, weight: -1}]}
---
apiVersion: llmesh.io/v1beta9
kind: LLMRoute
metadata: {name: future}
"#,
        );
        assert_eq!(manifests.routes.len(), 1);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].document, 2);
        assert!(
            errors[0].message.contains("spec.targets[0].weight"),
            "{}",
            errors[0]
        );
        assert!(errors[1].message.contains("not served"), "{}", errors[1]);
    }

    #[test]
    fn reports_a_syntax_error_instead_of_panicking() {
        let mut manifests = Manifests::default();
        let errors = manifests.add_yaml("broken.yaml", "kind: [unclosed\n");
        assert_eq!(errors.len(), 1);
    }
}
