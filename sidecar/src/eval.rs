//! Eval sampling: a share of a route's requests written, with their
//! (redacted) prompts and answers, to the pod's eval sink for offline
//! evaluation; shadow answers land next to them, paired by request id.

pub mod sink;

use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use llmesh_crds::config::EvalSamplingConfig;

pub use self::sink::{Sink, SinkSettings};

/// Whether `request_id` falls in the first `percent` of requests: the first
/// eight bytes of its SHA-256 as a big-endian number, modulo 10,000, below
/// `percent × 100`. Anyone holding the id can recompute the decision.
pub fn in_share(request_id: &str, percent: f64) -> bool {
    if percent <= 0.0 {
        return false;
    }
    let digest = Sha256::digest(request_id.as_bytes());
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bound = (percent.min(100.0) * 100.0).round() as u64;
    u64::from_be_bytes(first) % 10_000 < bound
}

/// A route's sampling: its share and its per-minute cap.
#[derive(Debug)]
pub struct Sampling {
    percent: f64,
    max_per_minute: Option<u32>,
    /// The current minute and the records taken in it.
    window: Mutex<(u64, u32)>,
}

impl Sampling {
    /// The sampling a route's configuration asks for.
    pub fn new(config: &EvalSamplingConfig) -> Self {
        Self {
            percent: config.percent,
            max_per_minute: config.max_per_minute,
            window: Mutex::new((0, 0)),
        }
    }

    /// Whether this request is sampled: in the share, and under the cap.
    pub fn admits(&self, request_id: &str) -> bool {
        in_share(request_id, self.percent) && self.take(jiff::Timestamp::now().as_second())
    }

    fn take(&self, now_seconds: i64) -> bool {
        let Some(cap) = self.max_per_minute else {
            return true;
        };
        let minute = u64::try_from(now_seconds / 60).unwrap_or_default();
        let mut window = self.window.lock();
        if window.0 != minute {
            *window = (minute, 0);
        }
        if window.1 >= cap {
            return false;
        }
        window.1 += 1;
        true
    }
}

/// Whose answer a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The answer the app got.
    Primary,
    /// The candidate's answer to the same request, which no one saw.
    Shadow,
}

/// One sampled request and its answer, one JSON line in the sink.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    /// RFC 3339, when the answer was complete.
    pub timestamp: String,
    /// `primary` or `shadow`.
    pub kind: Kind,
    /// Pairs a shadow answer with the primary one (`x-llmesh-request-id`).
    pub request_id: String,
    /// The request's trace, when traced.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    /// The route the app called.
    pub route: String,
    /// The API the app called.
    pub api: &'static str,
    /// The `ProviderSecret` that answered (or failed last).
    pub provider: String,
    /// Its provider kind.
    pub provider_kind: &'static str,
    /// The upstream model.
    pub model: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// The failure class, when it failed.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub error: &'static str,
    /// Why the answer ended, per choice.
    pub finish_reasons: Vec<String>,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// USD, when the target has a price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// From arrival (for a shadow: from its start) to the answer's end.
    pub latency_ms: u64,
    /// The prompt, after the redaction hook.
    pub prompt: String,
    /// The answer, after the redaction hook.
    pub answer: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_is_deterministic_per_request_id_and_near_its_percent() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("request-{i}")).collect();
        let sampled = ids.iter().filter(|id| in_share(id, 10.0)).count();
        assert!((1800..2200).contains(&sampled), "{sampled} of 20000 at 10%");
        assert!(ids.iter().all(|id| in_share(id, 10.0) == in_share(id, 10.0)));
        // A larger share keeps every request a smaller one sampled.
        assert!(
            ids.iter()
                .filter(|id| in_share(id, 10.0))
                .all(|id| in_share(id, 25.0))
        );
        assert!(ids.iter().all(|id| in_share(id, 100.0) && !in_share(id, 0.0)));
    }

    #[test]
    fn the_cap_limits_records_per_minute() {
        let sampling = Sampling::new(&EvalSamplingConfig {
            percent: 100.0,
            max_per_minute: Some(3),
        });
        let taken = (0..10).filter(|_| sampling.take(120)).count();
        assert_eq!(taken, 3);
        assert!(sampling.take(180), "a new minute starts afresh");
    }
}
