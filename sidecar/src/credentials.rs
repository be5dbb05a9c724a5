//! Provider credentials, resolved from where Kubernetes puts them.
//!
//! The config names a Secret and key; the value is read from the Secret's
//! mount (`<secrets dir>/<secret>/<key>`), from an env variable, or, in
//! standalone mode, from `Secret` manifests. Mounted files are re-read when
//! they change, so rotating a key in its Secret needs no restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use llmesh_crds::config::CredentialRef;
use parking_lot::{Mutex, RwLock};

/// No source holds a credential the configuration names.
#[derive(Debug, thiserror::Error)]
#[error(
    "credential {secret}/{key} is not available to the sidecar (no mounted file, no {variable} variable)"
)]
pub struct MissingCredential {
    /// The Secret.
    pub secret: String,
    /// Its key.
    pub key: String,
    /// The environment variable that would hold it.
    pub variable: String,
}

/// How often a mounted file is checked for a new value. The kubelet itself
/// refreshes Secret volumes only every minute or so; a second is plenty.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// A credential value. Its `Debug` hides the value, so it cannot reach a log
/// line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Arc<str>);

impl SecretString {
    /// Wraps a value.
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value.trim()))
    }

    /// The value, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// Resolves credential references.
#[derive(Debug, Default)]
pub struct CredentialStore {
    dir: Option<PathBuf>,
    env: HashMap<String, SecretString>,
    manifests: RwLock<HashMap<CredentialRef, SecretString>>,
    files: Mutex<HashMap<CredentialRef, CachedFile>>,
}

#[derive(Debug)]
struct CachedFile {
    value: SecretString,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl CredentialStore {
    /// A store reading mounted Secrets under `dir` and the `LLMESH_SECRET_*`
    /// variables among `env`.
    pub fn new(dir: Option<PathBuf>, env: impl IntoIterator<Item = (String, String)>) -> Self {
        let env = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .map(|(name, value)| (name, SecretString::new(&value)))
            .collect();
        Self {
            dir,
            env,
            ..Self::default()
        }
    }

    /// Replaces the values taken from `Secret` manifests (standalone mode).
    pub fn set_manifest_values(&self, values: HashMap<CredentialRef, SecretString>) {
        *self.manifests.write() = values;
    }

    /// The current value of a credential.
    ///
    /// # Errors
    /// No source holds it: the sidecar's mounts or env do not match the config.
    pub fn resolve(&self, reference: &CredentialRef) -> Result<SecretString, MissingCredential> {
        if let Some(value) = self.manifests.read().get(reference) {
            return Ok(value.clone());
        }
        if let Some(value) = self.read_mounted(reference) {
            return Ok(value);
        }
        if let Some(value) = self.env.get(&env_name(reference)) {
            return Ok(value.clone());
        }
        Err(MissingCredential {
            secret: reference.secret.clone(),
            key: reference.key.clone(),
            variable: env_name(reference),
        })
    }

    /// Whether an `LLMESH_SECRET_*` variable provides this credential.
    pub fn has_env(&self, reference: &CredentialRef) -> bool {
        self.env.contains_key(&env_name(reference))
    }

    fn read_mounted(&self, reference: &CredentialRef) -> Option<SecretString> {
        let path = self.dir.as_ref()?.join(&reference.secret).join(&reference.key);
        let mut files = self.files.lock();
        if let Some(cached) = files.get_mut(reference)
            && cached.checked.elapsed() < RECHECK_EVERY
        {
            return Some(cached.value.clone());
        }
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        match files.get_mut(reference) {
            Some(cached) if cached.modified == modified && modified.is_some() => {
                cached.checked = Instant::now();
                Some(cached.value.clone())
            }
            _ => {
                let text = std::fs::read_to_string(&path).ok()?;
                let value = SecretString::new(&text);
                files.insert(
                    reference.clone(),
                    CachedFile {
                        value: value.clone(),
                        modified,
                        checked: Instant::now(),
                    },
                );
                Some(value)
            }
        }
    }
}

const ENV_PREFIX: &str = "LLMESH_SECRET_";

/// `LLMESH_SECRET_<SECRET>_<KEY>`, upper-cased, with every character that is
/// not a letter or digit turned into `_`.
pub fn env_name(reference: &CredentialRef) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "{ENV_PREFIX}{}_{}",
        clean(&reference.secret),
        clean(&reference.key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> CredentialRef {
        CredentialRef {
            secret: "openai-key".into(),
            key: "apiKey".into(),
        }
    }

    #[test]
    fn reads_env_and_hides_values_from_debug() {
        let store = CredentialStore::new(
            None,
            [("LLMESH_SECRET_OPENAI_KEY_APIKEY".into(), "sk-env\n".into())],
        );
        let value = store.resolve(&reference()).expect("from env");
        assert_eq!(value.expose(), "sk-env");
        assert!(!format!("{value:?} {store:?}").contains("sk-env"));
    }

    #[test]
    fn a_rotated_file_is_picked_up_without_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_dir = dir.path().join("openai-key");
        std::fs::create_dir_all(&secret_dir).expect("mkdir");
        std::fs::write(secret_dir.join("apiKey"), "sk-old").expect("write");
        let store = CredentialStore::new(Some(dir.path().to_path_buf()), []);
        assert_eq!(store.resolve(&reference()).expect("file").expose(), "sk-old");

        std::fs::write(secret_dir.join("apiKey"), "sk-new").expect("write");
        // Force the mtime forward: some filesystems keep one-second stamps.
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(secret_dir.join("apiKey"))
            .and_then(|f| f.set_modified(later))
            .expect("touch");
        store
            .files
            .lock()
            .values_mut()
            .for_each(|c| c.checked -= RECHECK_EVERY);
        assert_eq!(store.resolve(&reference()).expect("file").expose(), "sk-new");
    }

    #[test]
    fn a_missing_credential_names_where_it_was_looked_for() {
        let store = CredentialStore::new(None, []);
        let error = store.resolve(&reference()).expect_err("missing");
        let message = error.to_string();
        assert!(message.contains("LLMESH_SECRET_OPENAI_KEY_APIKEY"), "{message}");
    }
}
