//! The sync channel's server: pushes each namespace's compiled configuration
//! and the budgets' cluster-wide totals to connected sidecars, and applies
//! their usage reports once each.
//!
//! [`ledger`] holds the spend and persists it before a report is
//! acknowledged; [`server`] speaks the wire protocol of
//! [`llmesh_crds::sync`]; [`standalone`] feeds both from a folder of YAML
//! (`llmesh-operator --manifests DIR`).

pub mod ledger;
pub mod metrics;
pub mod server;
pub mod standalone;

/// Why a sidecar's request on the sync channel is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    NoToken,
    /// The token is not the one expected (or not valid for the audience).
    #[error("token not accepted")]
    BadToken,
}

/// Checks the token a sidecar presents.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// The namespace the token may read and report for.
    ///
    /// # Errors
    /// The token is not accepted.
    fn namespace(&self, token: &str) -> Result<String, Refused>;
}
