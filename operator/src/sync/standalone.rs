//! `llmesh-operator --manifests DIR`: the sync channel without a cluster.
//! The folder is compiled with the same [`llmesh_crds::compile`] as a
//! standalone sidecar's, recompiled when a file changes, and pushed to every
//! connected sidecar; a shared token file stands in for TokenReview, and
//! spend is kept in a state file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use llmesh_crds::SidecarConfig;
use llmesh_crds::compile::{Inputs, SecretKeys};
use llmesh_crds::manifests::{self, Manifests};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::server::SyncServer;
use super::{Authenticator, Identified, Identity, Refused};

/// The namespace every standalone sidecar belongs to.
pub const NAMESPACE: &str = "standalone";

/// How often the folder's file list, sizes and times are compared: a change
/// is pushed well within the 2 s the contract allows.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Accepts the one token in the shared token file.
pub struct SharedToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedToken(..)")
    }
}

impl SharedToken {
    /// Reads the token (surrounding whitespace dropped) from `path`.
    ///
    /// # Errors
    /// The file cannot be read or holds no token.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(std::io::Error::other(format!(
                "{} holds no token",
                path.display()
            )));
        }
        Ok(Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }
}

impl Authenticator for SharedToken {
    fn identify<'a>(&'a self, token: &'a str) -> Identified<'a> {
        // Compare digests in constant time: the length of the token leaks nothing either.
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let accepted = bool::from(presented.ct_eq(&self.digest));
        Box::pin(async move {
            if accepted {
                Ok(Identity {
                    namespace: NAMESPACE.to_owned(),
                    pod: None,
                })
            } else {
                Err(Refused::BadToken)
            }
        })
    }
}

/// Compiles `dir` (keeping `previous`'s entries for resources that turned
/// invalid), or `None` when a document could not be read and a previous
/// configuration exists: a half-saved file must not drop routes.
pub fn compile_dir(
    dir: &Path,
    previous: Option<&SidecarConfig>,
) -> Result<Option<SidecarConfig>, manifests::ReadError> {
    let (manifests, unreadable) = Manifests::read_dir(dir)?;
    for problem in &unreadable {
        tracing::warn!(%problem, "manifest document not read");
    }
    if !unreadable.is_empty() && previous.is_some() {
        return Ok(None);
    }
    let secrets = SecretKeys::from_secrets(&manifests.secrets);
    let compiled = llmesh_crds::compile(Inputs {
        providers: &manifests.providers,
        routes: &manifests.routes,
        keys: &manifests.keys,
        budgets: &manifests.budgets,
        secrets: &secrets,
        previous,
    });
    for problem in &compiled.problems {
        tracing::warn!(%problem, "resource not in force");
    }
    Ok(Some(compiled.config))
}

/// What identifies the folder's content cheaply: every file's name, size
/// and modification time.
fn fingerprint(dir: &Path) -> Option<Vec<(PathBuf, u64, Option<SystemTime>)>> {
    let files = manifests::yaml_files(dir).ok()?;
    Some(
        files
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(&path).ok();
                let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
                let modified = meta.and_then(|m| m.modified().ok());
                (path, len, modified)
            })
            .collect(),
    )
}

/// Compiles `dir` now and whenever its files change, publishing each new
/// version to `server`. Runs until the process ends.
pub async fn follow(dir: PathBuf, server: Arc<SyncServer>) {
    let mut seen = None;
    let mut previous: Option<SidecarConfig> = None;
    loop {
        let now = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || fingerprint(&dir))
                .await
                .ok()
                .flatten()
        };
        if now.is_some() && now != seen {
            seen = now;
            let (folder, last) = (dir.clone(), previous.clone());
            let compiled = tokio::task::spawn_blocking(move || compile_dir(&folder, last.as_ref())).await;
            match compiled {
                Ok(Ok(Some(config))) => {
                    if previous.as_ref().is_none_or(|p| p.version != config.version) {
                        tracing::info!(version = config.version, "configuration compiled; pushing");
                    }
                    server.publish(NAMESPACE, config.clone());
                    previous = Some(config);
                }
                Ok(Ok(None)) => tracing::error!("unreadable manifests; the last good configuration stays"),
                Ok(Err(error)) => tracing::error!(%error, "cannot read the manifests"),
                Err(error) => tracing::error!(%error, "compiling the manifests failed"),
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
