//! The operator's error type.

use thiserror::Error;

/// Why a namespace reconcile failed. Every variant is an API call that can be
/// retried; invalid resources are not errors (they become status conditions).
#[derive(Debug, Error)]
pub enum Error {
    /// A list or get of the namespace's inputs failed.
    #[error("reading {what} in namespace {namespace}: {source}")]
    Read {
        /// What was read, e.g. `LLMRoutes` or `Secret openai-key`.
        what: String,
        /// The namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Writing the compiled configuration failed.
    #[error("writing ConfigMap {namespace}/{name}: {source}")]
    WriteConfigMap {
        /// The namespace.
        namespace: String,
        /// The ConfigMap's name.
        name: &'static str,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Writing a resource's status failed.
    #[error("writing the status of {kind} {namespace}/{name}: {source}")]
    WriteStatus {
        /// `LLMRoute`, `ProviderSecret`, `VirtualKey` or `Budget`.
        kind: String,
        /// The namespace.
        namespace: String,
        /// The resource's name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// Creating or rotating a generated key's Secret failed.
    #[error("writing Secret {namespace}/{name}: {source}")]
    WriteSecret {
        /// The namespace.
        namespace: String,
        /// The Secret's name (the `VirtualKey`'s).
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The operating system's random source failed while generating a key.
    #[error("reading the OS random source: {0}")]
    Random(String),
    /// Reading or writing the leader-election Lease failed.
    #[error("leader election Lease: {0}")]
    Lease(#[source] Box<kube::Error>),
    /// The API server did not answer a Lease call within this long.
    #[error("leader election Lease: no answer within {0:?}")]
    LeaseTimeout(std::time::Duration),
    /// A namespace reconcile did not finish within this long (an API call
    /// that never answers); it is retried like any failure.
    #[error("reconciling namespace {namespace}: not done within {after:?}")]
    Timeout {
        /// The namespace.
        namespace: String,
        /// The deadline.
        after: std::time::Duration,
    },
    /// A call of the sync channel's leader (its TLS Secret, its pod label,
    /// its state ConfigMap, resuming spend) failed.
    #[error("sync channel: {what}: {source}")]
    Sync {
        /// What was called, e.g. `labelling pod llmesh-system/op-0`.
        what: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The compiled configuration could not be serialised (a bug, not an input problem).
    #[error("serialising the compiled configuration: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// A sync-channel API error with what was being done.
    pub fn sync(what: impl Into<String>, source: kube::Error) -> Self {
        Self::Sync {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// A small fixed label for the `reason` of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::WriteConfigMap { .. } => "write_configmap",
            Self::WriteStatus { .. } => "write_status",
            Self::WriteSecret { .. } => "write_secret",
            Self::Random(_) => "random",
            Self::Serialize(_) => "serialize",
            Self::Lease(_) | Self::LeaseTimeout(_) => "lease",
            Self::Timeout { .. } => "timeout",
            Self::Sync { .. } => "sync",
        }
    }
}
