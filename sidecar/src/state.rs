//! Local state that outlives the process: budget spend, session tokens and
//! rate-limit buckets, kept in one file (`LLMESH_STATE_FILE`) so a
//! restarted sidecar neither forgets what a team spent nor hands every key
//! a fresh minute. This module is the file; [`crate::app::LocalState`]
//! restores budgets and rate limits from it and writes them back.

pub mod file;

pub use file::StateError;
