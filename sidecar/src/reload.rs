//! Configuration loading and hot reload.
//!
//! A new configuration is validated whole and built into a [`Runtime`]
//! before it is swapped in; if either step fails, the last good one keeps
//! serving and a metric and a log line say why.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use llmesh_crds::SidecarConfig;
use llmesh_crds::compile::{Inputs, SecretKeys};
use llmesh_crds::config::CredentialRef;
use llmesh_crds::manifests::Manifests;
use notify::{RecursiveMode, Watcher};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::app::App;
use crate::credentials::{CredentialStore, SecretString};
use crate::routing::Runtime;
use crate::settings::ConfigSource;

/// Changes arriving within this window are applied together: an editor's
/// save or a kubelet's symlink swap is several events.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Reloads also run on this period, in case a filesystem (some network
/// mounts) delivers no change events. Rare: each poll reads and compiles the
/// source on a blocking thread, the one periodic work of an idle sidecar.
const POLL_EVERY: Duration = Duration::from_secs(60);

/// A configuration read from its source.
#[derive(Debug)]
pub struct Loaded {
    /// The compiled configuration.
    pub config: SidecarConfig,
    /// Credential values from `Secret` manifests (standalone mode).
    pub secrets: HashMap<CredentialRef, SecretString>,
    /// Problems with individual resources or documents, for the log.
    pub problems: Vec<String>,
    /// Aliases of routes that are defined but not served, and why.
    pub rejected_routes: BTreeMap<String, String>,
    /// False when some document could not be read at all.
    pub complete: bool,
}

/// Why a load failed whole.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or directory could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        error: std::io::Error,
    },
    /// The compiled config file does not match the contract.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The path of the bad field and what is wrong.
        message: String,
    },
}

/// Reads and compiles the configuration from `source`.
///
/// # Errors
/// The source cannot be read, or a compiled config file is invalid.
pub fn load(
    source: &ConfigSource,
    previous: Option<&SidecarConfig>,
    credentials: &CredentialStore,
) -> Result<Loaded, LoadError> {
    match source {
        ConfigSource::File(path) => {
            let text = std::fs::read(path).map_err(|error| LoadError::Read {
                path: path.clone(),
                error,
            })?;
            let config = SidecarConfig::from_json(&text).map_err(|message| LoadError::Invalid {
                path: path.clone(),
                message,
            })?;
            Ok(Loaded {
                config,
                secrets: HashMap::new(),
                problems: Vec::new(),
                rejected_routes: BTreeMap::new(),
                complete: true,
            })
        }
        ConfigSource::Manifests(dir) => load_manifests(dir, previous, credentials),
    }
}

fn load_manifests(
    dir: &Path,
    previous: Option<&SidecarConfig>,
    credentials: &CredentialStore,
) -> Result<Loaded, LoadError> {
    let (manifests, problems) = Manifests::read_dir(dir).map_err(|e| LoadError::Read {
        path: e.path,
        error: e.error,
    })?;
    let mut problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let complete = problems.is_empty();

    let mut secret_keys = SecretKeys::from_secrets(&manifests.secrets);
    let mut secrets = HashMap::new();
    for secret in &manifests.secrets {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let binary = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()));
        let text = secret.string_data.iter().flatten().map(|(k, v)| (k, v.clone()));
        for (key, value) in binary.chain(text) {
            secrets.insert(
                CredentialRef {
                    secret: name.clone(),
                    key: key.clone(),
                },
                SecretString::new(&value),
            );
        }
    }
    // Credentials exported as LLMESH_SECRET_<SECRET>_<KEY> count as present.
    for provider in &manifests.providers {
        if let Some(secret_ref) = &provider.spec.secret_ref {
            let keys = [
                secret_ref.key.as_deref().unwrap_or("apiKey"),
                secret_ref.access_key_id_key.as_deref().unwrap_or("accessKeyId"),
                secret_ref
                    .secret_access_key_key
                    .as_deref()
                    .unwrap_or("secretAccessKey"),
            ];
            let optional = secret_ref.session_token_key.as_deref();
            for key in keys.into_iter().chain(optional) {
                let reference = CredentialRef {
                    secret: secret_ref.name.clone(),
                    key: key.to_owned(),
                };
                if credentials.has_env(&reference) {
                    secret_keys.insert(&reference.secret, &reference.key);
                }
            }
        }
    }

    let compiled = llmesh_crds::compile(Inputs {
        providers: &manifests.providers,
        routes: &manifests.routes,
        keys: &manifests.keys,
        budgets: &manifests.budgets,
        secrets: &secret_keys,
        previous,
    });
    problems.extend(compiled.problems.iter().map(ToString::to_string));
    let mut rejected_routes = BTreeMap::new();
    for route in &manifests.routes {
        let name = route.metadata.name.clone().unwrap_or_default();
        let alias = route.spec.model.clone().unwrap_or_else(|| name.clone());
        let reasons: Vec<String> = compiled
            .problems_of("LLMRoute", &name)
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        if !reasons.is_empty() && !compiled.config.routes.contains_key(&alias) {
            rejected_routes.insert(alias, format!("LLMRoute {name}: {}", reasons.join("; ")));
        }
    }
    Ok(Loaded {
        config: compiled.config,
        secrets,
        problems,
        rejected_routes,
        complete,
    })
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new version is in force.
    Applied(String),
    /// The source has not changed.
    Unchanged,
    /// The new configuration was refused; the last good one serves.
    Rejected(String),
}

/// Loads configuration into an [`App`], keeping the last good one.
#[derive(Debug)]
pub struct Reloader {
    app: Arc<App>,
    source: ConfigSource,
    last_good: Mutex<Option<Applied>>,
    /// What the source last yielded and was applied: a configuration pushed
    /// over the sync channel stays in force until the source itself changes.
    last_source: Mutex<Option<Applied>>,
}

/// What is in force: the config and the routes known to be rejected.
#[derive(Clone, Debug, PartialEq)]
struct Applied {
    config: SidecarConfig,
    rejected_routes: BTreeMap<String, String>,
}

impl Reloader {
    /// A reloader for `app` reading `source`.
    pub fn new(app: Arc<App>, source: ConfigSource) -> Self {
        Self {
            app,
            source,
            last_good: Mutex::new(None),
            last_source: Mutex::new(None),
        }
    }

    /// Reads the source and applies it if it is new and valid.
    pub fn reload(&self) -> Outcome {
        let previous = self.last_good.lock().clone();
        let outcome = self.try_reload(previous.as_ref());
        self.count(outcome)
    }

    /// Applies a configuration pushed by the operator, through the same
    /// checks as one read from the source: one that cannot be built is
    /// rejected whole and the last good one keeps serving.
    pub fn apply_pushed(&self, config: SidecarConfig) -> Outcome {
        let applied = Applied {
            config,
            rejected_routes: BTreeMap::new(),
        };
        let outcome = if self.last_good.lock().as_ref() == Some(&applied) {
            Outcome::Unchanged
        } else {
            self.install(applied)
        };
        self.count(outcome)
    }

    /// The configuration version in force (empty before the first).
    pub fn version(&self) -> String {
        self.last_good
            .lock()
            .as_ref()
            .map(|a| a.config.version.clone())
            .unwrap_or_default()
    }

    fn count(&self, outcome: Outcome) -> Outcome {
        let label = match &outcome {
            Outcome::Applied(version) => {
                tracing::info!(version, "configuration applied");
                "applied"
            }
            Outcome::Unchanged => "unchanged",
            Outcome::Rejected(reason) => {
                tracing::error!(
                    reason,
                    "configuration rejected; the last good configuration keeps serving"
                );
                "rejected"
            }
        };
        self.app.metrics.config_reloads.with_label_values(&[label]).inc();
        outcome
    }

    fn try_reload(&self, previous: Option<&Applied>) -> Outcome {
        let loaded = match load(
            &self.source,
            previous.map(|p| &p.config),
            &self.app.deps.credentials,
        ) {
            Ok(loaded) => loaded,
            Err(error) => return Outcome::Rejected(error.to_string()),
        };
        for problem in &loaded.problems {
            tracing::warn!(problem, "resource not in force");
        }
        if !loaded.complete && previous.is_some() {
            return Outcome::Rejected(format!("unreadable manifests: {}", loaded.problems.join("; ")));
        }
        // Secret values may change without the config changing (a rotated key).
        self.app.deps.credentials.set_manifest_values(loaded.secrets);
        let applied = Applied {
            config: loaded.config,
            rejected_routes: loaded.rejected_routes,
        };
        if self.last_source.lock().as_ref() == Some(&applied) || previous.is_some_and(|p| *p == applied) {
            *self.last_source.lock() = Some(applied);
            return Outcome::Unchanged;
        }
        let outcome = self.install(applied.clone());
        if matches!(outcome, Outcome::Applied(_)) {
            *self.last_source.lock() = Some(applied);
        }
        outcome
    }

    fn install(&self, applied: Applied) -> Outcome {
        match Runtime::build(&applied.config, &self.app.deps, &self.app.health) {
            Ok(runtime) => {
                let version = runtime.version.clone();
                self.app
                    .install(runtime.with_rejected(applied.rejected_routes.clone()));
                *self.last_good.lock() = Some(applied);
                // The operator counts this sidecar in sync once it hears the version.
                self.app.budgets.report_version();
                Outcome::Applied(version)
            }
            Err(error) => Outcome::Rejected(error.to_string()),
        }
    }

    /// Watches the source and reloads on change until the returned guard is dropped.
    ///
    /// # Errors
    /// The filesystem watcher could not be started.
    pub fn watch(self: Arc<Self>) -> notify::Result<WatchGuard> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reading the source is an access event too: reacting to those
            // would reload again after every reload, ten times a second.
            if event.is_ok_and(|event| !event.kind.is_access()) {
                let _ = tx.send(());
            }
        })?;
        let (path, mode) = match &self.source {
            // Watch the folder: a ConfigMap update replaces the file through a symlink swap.
            ConfigSource::File(file) => (
                file.parent().unwrap_or(Path::new(".")).to_path_buf(),
                RecursiveMode::NonRecursive,
            ),
            ConfigSource::Manifests(dir) => (dir.clone(), RecursiveMode::Recursive),
        };
        watcher.watch(&path, mode)?;
        let task = tokio::spawn(async move {
            loop {
                let changed = tokio::time::timeout(POLL_EVERY, rx.recv()).await;
                if matches!(changed, Ok(None)) {
                    return;
                }
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                let reloader = self.clone();
                // Loading reads files and compiles: keep it off the request threads.
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        });
        Ok(WatchGuard {
            _watcher: watcher,
            task,
        })
    }
}

/// Keeps a watch running; dropping it stops the watch.
#[derive(Debug)]
pub struct WatchGuard {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}
