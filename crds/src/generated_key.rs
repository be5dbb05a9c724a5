//! Virtual keys the operator generates: their format, and where a key's
//! rotation state lives (annotations on the Secret that holds it).
//!
//! The random part is drawn by the operator; this module only fixes the
//! shape, so the operator, the docs and any tool that recognises llmesh keys
//! agree on one definition.

use serde::{Deserialize, Serialize};

/// Every generated key starts with this, so secret scanners and people can
/// tell an llmesh key from a provider key.
pub const PREFIX: &str = "sk-llmesh-";
/// The Secret key (data field) a generated key is written to.
pub const SECRET_KEY: &str = "key";
/// On a `VirtualKey`: an RFC 3339 instant; when it is newer than the last
/// rotation, the operator generates a new key.
pub const ROTATE_AT_ANNOTATION: &str = "llmesh.io/rotate-at";
/// On the generated Secret: the `rotate-at` value the current key answers.
pub const ROTATED_AT_ANNOTATION: &str = "llmesh.io/rotated-at";
/// On the generated Secret: JSON list of [`PreviousKey`], the hashes of
/// replaced keys that stay valid for the rotation's grace period.
pub const PREVIOUS_KEYS_ANNOTATION: &str = "llmesh.io/previous-key-hashes";
/// How long a replaced key keeps working when the `VirtualKey` sets no
/// `rotationGracePeriod`: a day is long enough for
/// every app team to pick the new key up in one working day.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A replaced key that still authenticates until `valid_until_unix`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviousKey {
    /// [`crate::config::key_hash`] of the replaced key.
    pub hash: String,
    /// Refused from this Unix second on.
    pub valid_until_unix: i64,
}

/// `sk-llmesh-<id>-<secret>`: `id` is the `VirtualKey`'s name, the one key
/// id the sidecar shows in logs and metrics, so a key found in a log or a
/// ticket names its VirtualKey; the secret is 32 random bytes in lowercase hex.
pub fn format(id: &str, random: &[u8; 32]) -> String {
    let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{id}-{secret}")
}

/// The replaced keys recorded on a Secret; an unreadable annotation counts
/// as none (the current key still works; only the grace period is lost).
pub fn previous_keys(annotation: Option<&str>) -> Vec<PreviousKey> {
    annotation
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_carries_its_id() {
        let key = format("research", &[0xab; 32]);
        assert!(key.starts_with("sk-llmesh-research-abab"), "{key}");
        assert_eq!(key.len(), "sk-llmesh-research-".len() + 64);
    }

    #[test]
    fn previous_keys_read_from_the_annotation() {
        let text = r#"[{"hash":"ab","validUntilUnix":1700000000}]"#;
        assert_eq!(
            previous_keys(Some(text)),
            vec![PreviousKey {
                hash: "ab".into(),
                valid_until_unix: 1_700_000_000
            }]
        );
        assert_eq!(previous_keys(Some("not json")), vec![]);
        assert_eq!(previous_keys(None), vec![]);
    }
}
