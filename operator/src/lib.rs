//! The llmesh operator: turns each namespace's llmesh resources into one
//! compiled sidecar configuration (a ConfigMap it owns) and reports every
//! resource's status.
//!
//! The work is split so each part is testable alone: [`namespace`] fetches a
//! namespace's inputs and calls the pure compiler, [`configmap`] writes the
//! result, [`keys`] generates and rotates virtual keys, [`status`] derives
//! and writes conditions, [`events`] tells people what changed, and
//! [`controller`] wires the watches (every watched object maps to its
//! namespace) and the error policy.
//! [`webhook`] injects the sidecar into pods and watches for pods it missed;
//! [`sync`] pushes configuration and budget totals to connected sidecars and
//! aggregates their usage.

pub mod configmap;
pub mod controller;
pub mod error;
pub mod events;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod namespace;
pub mod probes;
pub mod status;
pub mod sync;
pub mod webhook;

pub use error::Error;

/// The field manager of every server-side apply this operator sends.
pub const FIELD_MANAGER: &str = "llmesh-operator";
