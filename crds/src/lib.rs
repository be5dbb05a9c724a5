//! The llmesh API: custom resource types, the sidecar configuration contract,
//! and the pure compiler from one to the other.
//!
//! The operator and the sidecar's standalone mode both call [`compile()`], so a
//! set of manifests means the same thing on a laptop and in a cluster.

pub mod compile;
pub mod config;
pub mod durable;
pub mod duration;
pub mod generated_key;
pub mod injection;
pub mod manifests;
pub mod period;
pub mod resources;
pub mod sync;

pub use compile::{Compiled, Inputs, Problem, compile};
pub use config::SidecarConfig;
pub use resources::{Budget, LLMRoute, ProviderSecret, VirtualKey};

/// The API group of every llmesh resource.
pub const API_GROUP: &str = "llmesh.io";
/// The API version of every llmesh resource.
pub const API_VERSION: &str = "v1alpha1";
