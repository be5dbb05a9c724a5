//! The local state file: each budget's spend in its current period, the
//! tokens each agent session has used and each key's rate-limit buckets, so
//! a restarted sidecar carries on where it stopped.
//!
//! Written whole, in batches (see [`crate::app::LocalState::flush`]): to a temporary
//! file that is fsynced and then renamed over the old one, and the folder
//! fsynced, so a crash leaves the old file or the new one, never half of
//! one. A SHA-256 over the exact bytes of the `state` member catches what the
//! file system does not; a file that fails it is reported and left alone,
//! never zeroed.
//!
//! The checksum covers the bytes as written, never a re-serialization of what
//! was parsed: a number that does not print back identically must not make
//! the sidecar refuse its own file. The file is written compact, so no byte
//! of it is free to change without being noticed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmesh_crds::sync::{BudgetDelta, Report};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The layout this code writes: the checksum over the `state` member's bytes.
const FORMAT: u32 = 2;

/// The first layout, whose checksum covered a re-serialization of the parsed
/// content. Still read, so an upgraded sidecar keeps the spend it recorded.
const FORMAT_REHASHED: u32 = 1;

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
    /// Spend settled since, by VirtualKey.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unreported_keys: BTreeMap<String, BudgetDelta>,
}

/// What the file holds besides its format and checksum.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// Spend by budget.
    pub budgets: BTreeMap<String, Spend>,
    /// Tokens used by budget, then session id.
    #[serde(default)]
    pub sessions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Rate-limit buckets by virtual key. Left out when empty, so format-1
    /// files written before rate limits were saved keep their checksum.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rate_limits: BTreeMap<String, SavedLimits>,
    /// The sync channel's instance and unacknowledged spend; left out
    /// without sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SavedSync>,
}

impl Saved {
    /// The path of the first number JSON cannot carry (NaN, ±infinity), if any.
    fn non_finite(&self) -> Option<String> {
        let budgets = self
            .budgets
            .iter()
            .filter(|(_, spend)| !spend.spent_usd.is_finite())
            .map(|(name, _)| format!("budgets.{name}.spentUsd"));
        let buckets = self.rate_limits.iter().flat_map(|(key, limits)| {
            [("requests", limits.requests), ("tokens", limits.tokens)]
                .into_iter()
                .filter_map(|(which, bucket)| bucket.map(|b| (which, b)))
                .filter(|(_, b)| !(b.capacity.is_finite() && b.level.is_finite()))
                .map(move |(which, _)| format!("rate_limits.{key}.{which}"))
        });
        let sync = self.sync.iter().flat_map(|sync| {
            let in_flight = sync
                .in_flight
                .iter()
                .flat_map(|report| report.budgets.iter().chain(&report.keys));
            in_flight
                .chain(&sync.unreported)
                .chain(&sync.unreported_keys)
                .filter(|(_, delta)| !delta.spent_usd.is_finite())
                .map(|(name, _)| format!("sync.{name}.spentUsd"))
        });
        budgets.chain(buckets).chain(sync).next()
    }
}

/// The layout written now: the state as raw bytes and their checksum.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    format: u32,
    checksum: String,
    #[serde(borrow)]
    state: &'a RawValue,
}

/// The first layout (read only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rehashed {
    /// Already read by [`FormatOnly`].
    #[serde(rename = "format")]
    _format: serde::de::IgnoredAny,
    checksum: String,
    budgets: BTreeMap<String, Spend>,
    #[serde(default)]
    sessions: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(default)]
    rate_limits: BTreeMap<String, SavedLimits>,
}

/// Only the layout version, to pick the reader.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
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
    /// The state holds a number JSON cannot carry; writing it would make a
    /// file the sidecar cannot read back, so the last good file stays.
    #[error("state file {path} not written: {field} is not a finite number")]
    NotFinite {
        /// The file.
        path: PathBuf,
        /// Where the number is.
        field: String,
    },
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
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
    parse(&bytes).map_err(|reason| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    })
}

/// Reads a file's bytes, checking the checksum of its format.
fn parse(bytes: &[u8]) -> Result<Saved, String> {
    let FormatOnly { format } = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match format {
        FORMAT => {
            let envelope: Envelope<'_> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            if sha256_hex(envelope.state.get().as_bytes()) != envelope.checksum {
                return Err("checksum mismatch".to_owned());
            }
            serde_json::from_str(envelope.state.get()).map_err(|e| e.to_string())
        }
        FORMAT_REHASHED => {
            let file: Rehashed = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            let saved = Saved {
                budgets: file.budgets,
                sessions: file.sessions,
                rate_limits: file.rate_limits,
                sync: None,
            };
            // Sound only because numbers now parse back exactly (serde_json's
            // `float_roundtrip`): the re-serialization is the bytes hashed.
            let rehashed = serde_json::to_vec(&saved).map_err(|e| e.to_string())?;
            if sha256_hex(&rehashed) != file.checksum {
                return Err("checksum mismatch".to_owned());
            }
            Ok(saved)
        }
        other => Err(format!("format {other} is not {FORMAT}")),
    }
}

/// The bytes of the file that records `saved`.
fn render(saved: &Saved) -> Result<Vec<u8>, serde_json::Error> {
    let state = serde_json::to_string(saved)?;
    let state = RawValue::from_string(state)?;
    serde_json::to_vec(&Envelope {
        format: FORMAT,
        checksum: sha256_hex(state.get().as_bytes()),
        state: &state,
    })
}

/// Replaces the file at `path` with `saved`, durably.
///
/// # Errors
/// A number is not finite (nothing is written), or writing, syncing or
/// renaming failed.
pub fn save(path: &Path, saved: &Saved) -> Result<(), StateError> {
    if let Some(field) = saved.non_finite() {
        return Err(StateError::NotFinite {
            path: path.to_owned(),
            field,
        });
    }
    let io = |error| StateError::Io {
        path: path.to_owned(),
        error,
    };
    let bytes = render(saved).map_err(|e| io(std::io::Error::other(e)))?;
    llmesh_crds::durable::replace(path, &bytes).map_err(io)
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
                    keys: BTreeMap::from([(
                        "agent".to_owned(),
                        BudgetDelta {
                            period_start: 1_780_000_000,
                            spent_usd: 0.5,
                            tokens: 100,
                        },
                    )]),
                }),
                unreported: BTreeMap::new(),
                unreported_keys: BTreeMap::new(),
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

    /// The value from the bug report: three answers of $0.000141, whose sum
    /// does not print back identically through a lossy float parser.
    #[test]
    fn a_sum_of_small_prices_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let spent = 0.000_141 + 0.000_141 + 0.000_141;
        assert_eq!(spent.to_string(), "0.00042300000000000004");
        let saved = Saved {
            budgets: BTreeMap::from([(
                "team-a".to_owned(),
                Spend {
                    period_start: 0,
                    spent_usd: spent,
                    thresholds_crossed: 0,
                },
            )]),
            ..Saved::default()
        };
        save(&path, &saved).expect("save");
        assert_eq!(load(&path).expect("its own file loads"), saved);
    }

    /// Files written by the first layout (checksum over a re-serialization)
    /// still load, including the value that made them fail before.
    #[test]
    fn a_format_one_file_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        // Format 1 was written before the sync channel existed.
        let mut saved = Saved {
            sync: None,
            ..sample()
        };
        saved.budgets.get_mut("team-a").expect("sample budget").spent_usd = 0.000_423_000_000_000_000_04;
        let checksum = sha256_hex(&serde_json::to_vec(&saved).expect("serialize"));
        let mut file = serde_json::to_value(&saved).expect("serialize");
        file["format"] = 1.into();
        file["checksum"] = checksum.into();
        std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("serialize")).expect("write");
        assert_eq!(load(&path).expect("format 1 loads"), saved);

        file["checksum"] = sha256_hex(b"something else").into();
        std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("serialize")).expect("write");
        let error = load(&path).expect_err("format 1 checksum still checked");
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
    }

    #[test]
    fn a_number_json_cannot_carry_is_never_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        save(&path, &sample()).expect("save");
        let mut broken = sample();
        broken.budgets.get_mut("team-a").expect("sample budget").spent_usd = f64::INFINITY;
        let error = save(&path, &broken).expect_err("infinity is refused");
        assert!(error.to_string().contains("budgets.team-a.spentUsd"), "{error}");
        assert_eq!(load(&path).expect("the last good file stays"), sample());
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

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// Spend grows by adding many small prices: the sums are the values
        /// most likely not to print back identically.
        fn spend() -> impl Strategy<Value = f64> {
            prop_oneof![
                prop::collection::vec(1e-7..0.05_f64, 0..400).prop_map(|prices| prices.iter().sum()),
                prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
            ]
        }

        fn bucket() -> impl Strategy<Value = SavedBucket> {
            (
                prop::num::f64::NORMAL,
                prop::num::f64::NORMAL | prop::num::f64::ZERO,
                any::<i64>(),
            )
                .prop_map(|(capacity, level, saved_at_ms)| SavedBucket {
                    capacity,
                    level,
                    saved_at_ms,
                })
        }

        fn saved() -> impl Strategy<Value = Saved> {
            let budgets = prop::collection::btree_map(
                "\\PC{0,12}",
                (any::<i64>(), spend(), any::<u32>()).prop_map(
                    |(period_start, spent_usd, thresholds_crossed)| Spend {
                        period_start,
                        spent_usd,
                        thresholds_crossed,
                    },
                ),
                0..4,
            );
            let sessions = prop::collection::btree_map(
                "[a-z-]{1,8}",
                prop::collection::btree_map("\\PC{1,12}", any::<u64>(), 0..3),
                0..3,
            );
            let limits = prop::collection::btree_map(
                "[a-z0-9-]{1,10}",
                (prop::option::of(bucket()), prop::option::of(bucket()))
                    .prop_map(|(requests, tokens)| SavedLimits { requests, tokens }),
                0..4,
            );
            let deltas = || {
                prop::collection::btree_map(
                    "[a-z-]{1,8}",
                    (any::<i64>(), spend(), any::<u64>()).prop_map(|(period_start, spent_usd, tokens)| {
                        BudgetDelta {
                            period_start,
                            spent_usd,
                            tokens,
                        }
                    }),
                    0..3,
                )
            };
            let in_flight = (any::<u64>(), "[0-9a-f]{0,16}", deltas(), deltas()).prop_map(
                |(seq, config_version, budgets, keys)| Report {
                    instance: "i".to_owned(),
                    seq,
                    config_version,
                    budgets,
                    keys,
                },
            );
            let sync = prop::option::of(
                (
                    "[0-9a-f]{1,16}",
                    any::<u64>(),
                    prop::option::of(in_flight),
                    deltas(),
                    deltas(),
                )
                    .prop_map(
                        |(instance, next_seq, in_flight, unreported, unreported_keys)| SavedSync {
                            instance,
                            next_seq,
                            in_flight,
                            unreported,
                            unreported_keys,
                        },
                    ),
            );
            (budgets, sessions, limits, sync).prop_map(|(budgets, sessions, rate_limits, sync)| Saved {
                budgets,
                sessions,
                rate_limits,
                sync,
            })
        }

        proptest! {
            #[test]
            fn whatever_is_written_reads_back_identical(state in saved()) {
                let bytes = render(&state).expect("render");
                prop_assert_eq!(parse(&bytes).expect("its own bytes parse"), state);
            }

            #[test]
            fn any_flipped_byte_is_refused(state in saved(), at in any::<prop::sample::Index>(), mask in 1..=255_u8) {
                let mut bytes = render(&state).expect("render");
                let at = at.index(bytes.len());
                bytes[at] ^= mask;
                prop_assert!(parse(&bytes).is_err(), "byte {} changed and still accepted", at);
            }
        }
    }
}
