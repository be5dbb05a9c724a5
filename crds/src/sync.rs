//! The sync channel's messages, shared by the operator (server) and the
//! sidecar (client) so both read and write one definition.
//!
//! A sidecar holds one watch open (`POST` [`WATCH_PATH`]) whose response is
//! newline-delimited JSON [`Frame`]s: the namespace's compiled
//! configuration whenever its version changes, and the budgets' cluster-wide
//! totals whenever they change. Usage goes up as [`Report`]s (`POST`
//! [`REPORT_PATH`]), each answered by an [`Ack`] that carries the totals
//! after it was applied. The operator applies each (instance, sequence)
//! once, so a resent report never counts twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SidecarConfig;

/// The operator's sync port (the webhook keeps 9443).
pub const PORT: u16 = 9444;
/// The audience of the projected service-account token sidecars present.
pub const AUDIENCE: &str = "llmesh-sync";
/// Opens the watch: the request body is a [`Hello`], the response a stream of [`Frame`]s.
pub const WATCH_PATH: &str = "/v1/sync/watch";
/// Takes one [`Report`], answers an [`Ack`].
pub const REPORT_PATH: &str = "/v1/sync/report";
/// The budgets' current figures as the operator holds them (JSON map of
/// budget name to [`BudgetTotal`] plus status fields), for people and tests.
pub const BUDGETS_PATH: &str = "/v1/sync/budgets";
/// Request header naming the namespace a sidecar serves (its pod's). The
/// operator refuses a request whose token is bound to another namespace.
pub const NAMESPACE_HEADER: &str = "llmesh-namespace";
/// Media type of the watch stream.
pub const NDJSON: &str = "application/x-ndjson";

/// What a sidecar says when it opens the watch.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hello {
    /// The sidecar's instance id (kept across restarts in its state file).
    pub instance: String,
    /// The configuration version it serves; the operator sends the config
    /// only when its own differs.
    #[serde(default)]
    pub config_version: String,
}

/// One line of the watch stream.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Frame {
    /// The namespace's compiled configuration (the ConfigMap's contract).
    Config {
        /// The configuration; its `version` is the content hash.
        config: Box<SidecarConfig>,
    },
    /// Every budget's cluster-wide spend in its current period.
    Totals {
        /// By budget name.
        totals: BTreeMap<String, BudgetTotal>,
    },
}

/// One budget's acknowledged cluster-wide spend.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetTotal {
    /// Unix second the period began (0 for `total`), as the sidecars'
    /// calendars compute it: totals of another period do not apply.
    pub period_start: i64,
    /// USD spent by all sidecars in that period.
    pub spent_usd: f64,
}

/// Spend a sidecar settled since its last acknowledged report.
///
/// Unknown fields are ignored, so a sidecar newer than its operator can add
/// one without its reports being refused.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The sidecar's instance id.
    pub instance: String,
    /// 1, 2, 3 … per instance; a report is resent with the same number
    /// until acknowledged, and only then is the next one made.
    pub seq: u64,
    /// The configuration version the sidecar serves.
    #[serde(default)]
    pub config_version: String,
    /// Spend by budget name.
    #[serde(default)]
    pub budgets: BTreeMap<String, BudgetDelta>,
    /// Spend by VirtualKey name, in the calendar of the key's budget (a
    /// month in UTC for a key without one, see [`crate::period::of_key`]).
    /// Absent from sidecars older than this field: their keys show no spend.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, BudgetDelta>,
}

/// One budget's (or key's) spend in one report.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetDelta {
    /// The period the spend belongs to (see [`BudgetTotal::period_start`]).
    pub period_start: i64,
    /// USD settled.
    pub spent_usd: f64,
    /// Tokens (input plus output) settled.
    #[serde(default)]
    pub tokens: u64,
}

/// The operator's answer to a [`Report`].
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ack {
    /// The sequence number acknowledged.
    pub seq: u64,
    /// False when this (instance, sequence) had been applied before.
    pub applied: bool,
    /// The totals after applying it.
    pub totals: BTreeMap<String, BudgetTotal>,
}

impl Frame {
    /// The frame as one stream line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_one_tagged_json_object_per_line() {
        let totals = Frame::Totals {
            totals: BTreeMap::from([(
                "team".to_owned(),
                BudgetTotal {
                    period_start: 1_780_000_000,
                    spent_usd: 1.5,
                },
            )]),
        };
        let line = totals.to_line();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(
            String::from_utf8_lossy(&line).trim_end(),
            r#"{"type":"totals","totals":{"team":{"periodStart":1780000000,"spentUsd":1.5}}}"#
        );
        let back: Frame = serde_json::from_slice(&line).expect("parses");
        assert_eq!(back, totals);
    }
}
