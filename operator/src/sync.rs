//! The sync channel's server: pushes each namespace's compiled configuration
//! and the budgets' cluster-wide totals to connected sidecars, and applies
//! their usage reports once each.
//!
//! [`ledger`] holds the spend and persists it before a report is
//! acknowledged; [`server`] speaks the wire protocol of
//! [`llmesh_crds::sync`]; [`standalone`] feeds both from a folder of YAML
//! (`llmesh-operator --manifests DIR`); [`tokenreview`] authenticates
//! projected service-account tokens and [`cluster`] serves the channel from
//! the leader with TLS and writes the budgets' status.

pub mod cluster;
pub mod ledger;
pub mod metrics;
pub mod server;
pub mod standalone;
pub mod status;
pub mod tokenreview;

use std::future::Future;
use std::pin::Pin;

/// Why a sidecar's request on the sync channel is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    NoToken,
    /// The token is not the one expected (or not valid for the audience).
    #[error("token not accepted")]
    BadToken,
    /// The token is valid, but for another namespace than the request names
    /// (or one outside the operator's watch scope).
    #[error("the token is for namespace {token}, not {asked}")]
    OtherNamespace {
        /// The namespace the token is bound to.
        token: String,
        /// The namespace the request named.
        asked: String,
    },
    /// The token could not be checked (the API server did not answer).
    #[error("the token cannot be checked now: {0}")]
    Unavailable(String),
}

impl Refused {
    /// The `reason` label of the refused-requests metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::BadToken => "bad_token",
            Self::OtherNamespace { .. } => "other_namespace",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Who presented a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The namespace the token may read and report for.
    pub namespace: String,
    /// The pod the token was issued for, when the token says.
    pub pod: Option<String>,
}

/// What [`Authenticator::identify`] returns.
pub type Identified<'a> = Pin<Box<dyn Future<Output = Result<Identity, Refused>> + Send + 'a>>;

/// Checks the token a sidecar presents.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// Who the token is for.
    ///
    /// # Errors
    /// The token is not accepted, or cannot be checked now.
    fn identify<'a>(&'a self, token: &'a str) -> Identified<'a>;
}
