//! The local state file: each budget's spend in its current period, the
//! tokens each agent session has used and each key's rate-limit buckets, so
//! a restarted sidecar carries on where it stopped.
//!
//! Written whole, in batches (see [`super::LocalState::flush`]): to a temporary
//! file that is fsynced and then renamed over the old one, and the folder
//! fsynced, so a crash leaves the old file or the new one, never half of
//! one. A checksum over the content catches what the file system does not;
//! a file that fails it is reported and left alone, never zeroed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use llmesh_crds::sync::{BudgetDelta, Report};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The layout version this code writes and reads.
const FORMAT: u32 = 1;

/// One budget's spend.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spend {
    /// Unix second the current period began (0 for `total`).
    pub period_start: i64,
    /// USD spent since.
    pub spent_usd: f64,
    /// The highest threshold percent already reported this period.
    pub thresholds_crossed: u32,
}

/// One rate-limit bucket as it was at `savedAtMs`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavedBucket {
    /// The allowance per minute.
    pub capacity: f64,
    /// What was left (below zero: overdrawn by actual usage).
    pub level: f64,
    /// Unix milliseconds: the wall clock, the one time a restarted process
    /// shares with the one that wrote the file.
    pub saved_at_ms: i64,
}

/// A key's rate-limit buckets; absent ones were full.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavedLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<SavedBucket>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<SavedBucket>,
}

/// The sidecar's place on the sync channel: its instance id and the spend
/// the operator has not acknowledged yet, so a restart neither loses it nor
/// reports it twice.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavedSync {
    /// The instance id reports carry.
    pub instance: String,
    /// The sequence the next new report gets.
    pub next_seq: u64,
    /// A report sent but not acknowledged: resent as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<Report>,
    /// Spend settled since, by budget.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unreported: BTreeMap<String, BudgetDelta>,
}

/// What the file holds besides its format and checksum.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Saved {
    /// Spend by budget.
    pub budgets: BTreeMap<String, Spend>,
    /// Tokens used by budget, then session id.
    pub sessions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Rate-limit buckets by virtual key. Left out when empty, so files
    /// written before rate limits were saved keep their checksum.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limits: BTreeMap<String, SavedLimits>,
    /// The sync channel's instance and unacknowledged spend. Left out
    /// without sync, for the same reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SavedSync>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    checksum: String,
    budgets: BTreeMap<String, Spend>,
    #[serde(default)]
    sessions: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    rate_limits: BTreeMap<String, SavedLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sync: Option<SavedSync>,
}

/// The state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The content is damaged or from an unknown format.
    #[error(
        "state file {path} is corrupt ({reason}); it was left untouched for inspection — move it away to start from zero"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn checksum(saved: &Saved) -> String {
    let canonical = serde_json::to_vec(saved).unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What is recorded at `path`; nothing when there is no file yet.
///
/// # Errors
/// The file cannot be read, or fails to parse or its checksum.
pub fn load(path: &Path) -> Result<Saved, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
        Err(error) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                error,
            });
        }
    };
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file: File = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.format != FORMAT {
        return Err(corrupt(format!("format {} is not {FORMAT}", file.format)));
    }
    let saved = Saved {
        budgets: file.budgets,
        sessions: file.sessions,
        rate_limits: file.rate_limits,
        sync: file.sync,
    };
    if checksum(&saved) != file.checksum {
        return Err(corrupt("checksum mismatch".to_owned()));
    }
    Ok(saved)
}

/// Replaces the file at `path` with `saved`, durably.
///
/// # Errors
/// Writing, syncing or renaming failed.
pub fn save(path: &Path, saved: &Saved) -> Result<(), StateError> {
    let io = |error| StateError::Io {
        path: path.to_owned(),
        error,
    };
    let file = File {
        format: FORMAT,
        checksum: checksum(saved),
        budgets: saved.budgets.clone(),
        sessions: saved.sessions.clone(),
        rate_limits: saved.rate_limits.clone(),
        sync: saved.sync.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temporary = path.with_extension("tmp");
    let mut out = std::fs::File::create(&temporary).map_err(io)?;
    out.write_all(&bytes).map_err(io)?;
    out.sync_all().map_err(io)?;
    drop(out);
    std::fs::rename(&temporary, path).map_err(io)?;
    std::fs::File::open(folder)
        .and_then(|dir| dir.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Saved {
        let spend = Spend {
            period_start: 1_780_000_000,
            spent_usd: 0.123_456_789,
            thresholds_crossed: 50,
        };
        let sessions = BTreeMap::from([("agent-1".to_owned(), 1234)]);
        let limits = SavedLimits {
            requests: Some(SavedBucket {
                capacity: 60.0,
                level: -2.5,
                saved_at_ms: 1_780_000_000_123,
            }),
            tokens: None,
        };
        Saved {
            budgets: BTreeMap::from([("team-a".to_owned(), spend)]),
            sessions: BTreeMap::from([("team-a".to_owned(), sessions)]),
            rate_limits: BTreeMap::from([("key-a".to_owned(), limits)]),
            sync: Some(SavedSync {
                instance: "c0ffee".to_owned(),
                next_seq: 8,
                in_flight: Some(Report {
                    instance: "c0ffee".to_owned(),
                    seq: 7,
                    config_version: "abc".to_owned(),
                    budgets: BTreeMap::from([(
                        "team-a".to_owned(),
                        BudgetDelta {
                            period_start: 1_780_000_000,
                            spent_usd: 0.5,
                            tokens: 100,
                        },
                    )]),
                }),
                unreported: BTreeMap::new(),
            }),
        }
    }

    #[test]
    fn a_file_from_before_rate_limits_were_saved_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let older = Saved {
            rate_limits: BTreeMap::new(),
            sync: None,
            ..sample()
        };
        save(&path, &older).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("rate_limits"), "{text}");
        assert_eq!(load(&path).expect("load"), older);
    }

    #[test]
    fn what_is_saved_is_loaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        assert_eq!(load(&path).expect("no file yet"), Saved::default());
        save(&path, &sample()).expect("save");
        assert_eq!(load(&path).expect("load"), sample());
    }

    #[test]
    fn damage_is_reported_and_the_file_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        save(&path, &sample()).expect("save");
        let tampered = std::fs::read_to_string(&path)
            .expect("read")
            .replace("0.123456789", "0.000000001");
        std::fs::write(&path, &tampered).expect("write");
        let error = load(&path).expect_err("checksum catches it");
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("still there"), tampered);

        std::fs::write(&path, "{\"format\": 1, \"checks").expect("write");
        assert!(matches!(load(&path), Err(StateError::Corrupt { .. })));
    }
}
