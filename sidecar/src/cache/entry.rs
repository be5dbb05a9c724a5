//! A cached answer: the complete `chat.completion` body, what it cost, and
//! who gave it. Only answers that ended normally become entries.

use std::time::Duration;

use bytes::Bytes;
use llmesh_crds::resources::{Price, ProviderKind};
use tokio::time::Instant;

use crate::api::Usage;
use crate::api::chat::ChatResponse;
use crate::routing::Target;

/// Bytes an entry costs beyond its body and names: the key, the cache's
/// node and bookkeeping. An estimate, so that many tiny entries cannot hold
/// much more memory than the budget says.
const ENTRY_OVERHEAD_BYTES: usize = 256;

/// Finish reasons of an answer that ended on its own. `length` (cut at the
/// output limit) and `content_filter` are never cached: asking again with a
/// higher limit, or after a policy change, should reach the model.
const COMPLETE_FINISH_REASONS: &[&str] = &["stop", "tool_calls", "function_call"];

/// The target that produced an answer.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The `ProviderSecret`.
    pub provider_name: String,
    /// Its API.
    pub provider_kind: ProviderKind,
    /// The upstream model.
    pub model: String,
    /// USD per million tokens, when the route names it.
    pub price: Option<Price>,
}

impl Origin {
    /// The origin of an answer `target` gave.
    pub fn of(target: &Target) -> Self {
        Self {
            provider_name: target.provider_name.clone(),
            provider_kind: target.provider.kind(),
            model: target.model.clone(),
            price: target.price.clone(),
        }
    }
}

/// One stored answer.
#[derive(Debug)]
pub struct Entry {
    /// The complete `chat.completion` JSON.
    pub body: Bytes,
    /// What producing it took.
    pub usage: Usage,
    /// What producing it cost, 0 when the target has no price.
    pub cost_usd: f64,
    /// Who produced it.
    pub origin: Origin,
    /// How long it is served.
    pub ttl: Duration,
    /// When it stops being served (tokio's clock, so tests can pause it).
    pub expires_at: Instant,
}

impl Entry {
    /// An entry for a complete answer, or `None` if the answer must not be
    /// cached (it does not parse, has no choices, or did not end normally).
    pub fn of_answer(body: Bytes, usage: Usage, origin: Origin, ttl: Duration) -> Option<Self> {
        let response: ChatResponse = serde_json::from_slice(&body).ok()?;
        let ended_normally = !response.choices.is_empty()
            && response.choices.iter().all(|choice| {
                choice
                    .finish_reason
                    .as_deref()
                    .is_some_and(|reason| COMPLETE_FINISH_REASONS.contains(&reason))
            });
        if !ended_normally {
            return None;
        }
        let cost_usd = origin
            .price
            .as_ref()
            .map_or(0.0, |price| crate::pricing::cost(price, &usage));
        Some(Self::new(body, usage, cost_usd, origin, ttl))
    }

    /// An entry served for `ttl` from now.
    pub fn new(body: Bytes, usage: Usage, cost_usd: f64, origin: Origin, ttl: Duration) -> Self {
        Self {
            body,
            usage,
            cost_usd,
            origin,
            ttl,
            expires_at: Instant::now() + ttl,
        }
    }

    /// Bytes this entry holds, as the cache's memory bound counts them.
    pub fn weight(&self) -> u32 {
        let bytes = self.body.len()
            + self.origin.provider_name.len()
            + self.origin.model.len()
            + ENTRY_OVERHEAD_BYTES;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// Whether it is past its lifetime.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(price: Option<Price>) -> Origin {
        Origin {
            provider_name: "mock".into(),
            provider_kind: ProviderKind::Mock,
            model: "m".into(),
            price,
        }
    }

    fn answer(finish_reason: &str) -> Bytes {
        Bytes::from(
            serde_json::json!({
                "id": "c", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": finish_reason}],
            })
            .to_string(),
        )
    }

    #[test]
    fn only_answers_that_ended_normally_are_kept() {
        let ttl = Duration::from_secs(60);
        for reason in ["stop", "tool_calls"] {
            assert!(Entry::of_answer(answer(reason), Usage::default(), origin(None), ttl).is_some());
        }
        for reason in ["length", "content_filter"] {
            assert!(Entry::of_answer(answer(reason), Usage::default(), origin(None), ttl).is_none());
        }
        assert!(Entry::of_answer(Bytes::from_static(b"{}"), Usage::default(), origin(None), ttl).is_none());
    }

    #[test]
    fn an_entry_remembers_what_its_answer_cost() {
        let price = Price {
            input: 2.0,
            output: 10.0,
            cached_input: Some(1.0),
            cache_write: Some(2.5),
        };
        let usage = Usage::new(1_000, 500, 400, 100, 0);
        let entry = Entry::of_answer(answer("stop"), usage, origin(Some(price)), Duration::from_secs(1))
            .expect("kept");
        let expected = (500.0 * 2.0 + 400.0 * 1.0 + 100.0 * 2.5 + 500.0 * 10.0) / 1e6;
        assert!((entry.cost_usd - expected).abs() < 1e-12, "{}", entry.cost_usd);
    }
}
