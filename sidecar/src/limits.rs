//! Rate limits per virtual key: requests and tokens per minute.
//!
//! Each limit is a bucket holding up to a minute's allowance that refills
//! continuously, so a key may burst its whole minute and then proceeds at the
//! limit's pace. A token limit is charged the request's estimate at admission
//! (input estimate plus the output it asks for) and corrected with the actual
//! usage when the answer is complete. That correction, and the remaining and
//! reset figures the `x-ratelimit-*` headers report, are why this is a small
//! bucket of its own rather than `governor`, whose cells cannot be returned
//! and whose state is not exposed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use jiff::Timestamp;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::api::Usage;
use crate::auth::Key;
use crate::settle::Settle;
use crate::state::file::{SavedBucket, SavedLimits};
use crate::unsaved::Unsaved;

/// The one minute both limits are per.
const WINDOW: Duration = Duration::from_secs(60);

/// A request the key's limits do not allow now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate limit of virtual key {key} reached: {limit} {unit} per minute; retry in {} s",
    retry_after.as_millis().div_ceil(1000).max(1)
)]
pub struct RateLimited {
    /// The key's name.
    pub key: String,
    /// Which limit: `requests` or `tokens`.
    pub unit: &'static str,
    /// The limit per minute.
    pub limit: u64,
    /// When the request would be allowed.
    pub retry_after: Duration,
    /// Both limits' state, for the headers of the refusal.
    pub state: LimitState,
}

/// One limit's state as the `x-ratelimit-*` headers report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Per minute.
    pub limit: u64,
    /// Left now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// Both limits of a key (each `None` when the key has no such limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitState {
    /// Requests per minute.
    pub requests: Option<Window>,
    /// Tokens per minute.
    pub tokens: Option<Window>,
}

impl LimitState {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` as OpenAI sends them.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (unit, window) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(window) = window else { continue };
            let values = [
                ("limit", window.limit.to_string()),
                ("remaining", window.remaining.to_string()),
                ("reset", openai_duration(window.reset)),
            ];
            for (what, value) in values {
                let name = HeaderName::try_from(format!("x-ratelimit-{what}-{unit}"));
                if let (Ok(name), Ok(value)) = (name, HeaderValue::try_from(value)) {
                    headers.insert(name, value);
                }
            }
        }
        headers
    }
}

/// A duration as OpenAI's reset headers write it: `250ms`, `1.5s`, `6m0s`.
fn openai_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let minutes = millis / 60_000;
    #[allow(clippy::cast_precision_loss)]
    let seconds = (millis % 60_000) as f64 / 1000.0;
    let seconds = format!("{seconds:.3}");
    let seconds = seconds.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// A minute's allowance that refills continuously.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    /// Goes below zero when actual usage exceeded the estimate, by as much
    /// as it did: the key then waits until the whole overdraft is paid back.
    /// Not capped, or each oversize answer would let the key past its limit
    /// by up to a minute's allowance.
    level: f64,
    updated: Instant,
}

impl Bucket {
    #[allow(clippy::cast_precision_loss)]
    fn new(capacity: u64, now: Instant) -> Self {
        Self {
            capacity: capacity as f64,
            level: capacity as f64,
            updated: now,
        }
    }

    fn per_second(&self) -> f64 {
        self.capacity / WINDOW.as_secs_f64()
    }

    /// The level after `elapsed` more of refilling.
    fn level_after(&self, elapsed: Duration) -> f64 {
        (self.level + elapsed.as_secs_f64() * self.per_second()).min(self.capacity)
    }

    #[allow(clippy::cast_precision_loss)]
    fn refill(&mut self, capacity: u64, now: Instant) {
        // A changed limit applies from now on, without forgetting what was used.
        let capacity = capacity as f64;
        self.level += capacity - self.capacity;
        self.capacity = capacity;
        self.level = self.level_after(now.saturating_duration_since(self.updated));
        self.updated = now;
    }

    /// The bucket as the state file keeps it, unless it is full by `wall`
    /// (a full bucket is the same as none).
    fn save(&self, now: Instant, wall: Timestamp) -> Option<SavedBucket> {
        let level = self.level_after(now.saturating_duration_since(self.updated));
        (level < self.capacity).then_some(SavedBucket {
            capacity: self.capacity,
            level,
            saved_at_ms: wall.as_millisecond(),
        })
    }

    /// A saved bucket, refilled for the time that passed since it was saved
    /// (none when the wall clock went back).
    fn restore(saved: SavedBucket, now: Instant, wall: Timestamp) -> Self {
        let away = u64::try_from(wall.as_millisecond().saturating_sub(saved.saved_at_ms)).unwrap_or(0);
        let mut bucket = Self {
            capacity: saved.capacity,
            level: saved.level.min(saved.capacity),
            updated: now,
        };
        bucket.level = bucket.level_after(Duration::from_millis(away));
        bucket
    }

    /// How long until `amount` fits (a request larger than the whole
    /// allowance needs a full bucket, not a wait that never ends).
    fn wait_for(&self, amount: f64) -> Duration {
        let needed = amount.min(self.capacity) - self.level;
        if needed <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(needed / self.per_second())
        }
    }

    fn take(&mut self, amount: f64) {
        self.level -= amount;
    }

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    fn window(&self) -> Window {
        let missing = (self.capacity - self.level).max(0.0);
        Window {
            limit: self.capacity as u64,
            remaining: self.level.max(0.0).floor() as u64,
            reset: Duration::from_secs_f64(missing / self.per_second()),
        }
    }
}

#[derive(Debug, Default)]
struct KeyBuckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// Every key's buckets. Lives as long as the process, so a reload does not
/// hand a key a fresh minute, and is kept in the state file, so a restart
/// does not either.
#[derive(Debug, Default)]
pub struct RateLimiter {
    keys: Mutex<HashMap<String, KeyBuckets>>,
    /// Buckets changed since the state file was last written.
    dirty: Unsaved,
}

impl RateLimiter {
    /// A limiter carrying on from `saved` buckets, `wall` being now.
    pub fn restore(saved: BTreeMap<String, SavedLimits>, wall: Timestamp) -> Self {
        let now = Instant::now();
        let keys = saved
            .into_iter()
            .map(|(key, limits)| {
                let restore = |bucket| Bucket::restore(bucket, now, wall);
                let buckets = KeyBuckets {
                    requests: limits.requests.map(restore),
                    tokens: limits.tokens.map(restore),
                };
                (key, buckets)
            })
            .collect();
        Self {
            keys: Mutex::new(keys),
            dirty: Unsaved::default(),
        }
    }

    /// Every bucket that is not full, for the state file.
    pub fn saved(&self, wall: Timestamp) -> BTreeMap<String, SavedLimits> {
        let now = Instant::now();
        self.keys
            .lock()
            .iter()
            .filter_map(|(key, buckets)| {
                let save = |bucket: &Option<Bucket>| bucket.as_ref().and_then(|b| b.save(now, wall));
                let limits = SavedLimits {
                    requests: save(&buckets.requests),
                    tokens: save(&buckets.tokens),
                };
                (limits != SavedLimits::default()).then(|| (key.clone(), limits))
            })
            .collect()
    }

    /// Whether any bucket changed since the last call.
    pub fn take_changed(&self) -> bool {
        self.dirty.take()
    }

    /// Marks the buckets as not yet written (the write failed; the next flush retries).
    pub fn mark_changed(&self) {
        self.dirty.mark();
    }

    /// Returns once a bucket changed since the state file was last written.
    pub async fn changed(&self) {
        self.dirty.marked().await;
    }

    /// Admits one request of `key` expected to use `estimated_tokens`, or
    /// says how long to wait. Nothing is charged when it is refused.
    ///
    /// # Errors
    /// [`RateLimited`] naming the limit that is reached.
    pub fn admit(
        self: &Arc<Self>,
        key: &Key,
        estimated_tokens: u64,
    ) -> Result<(LimitState, Reservation), Box<RateLimited>> {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        let buckets = keys.entry(key.name.clone()).or_default();
        let limits = [
            (
                &mut buckets.requests,
                key.config.requests_per_minute.map(u64::from),
                1,
            ),
            (
                &mut buckets.tokens,
                key.config.tokens_per_minute,
                estimated_tokens,
            ),
        ];
        let mut refused = None;
        let mut ready = Vec::new();
        for ((slot, limit, amount), unit) in limits.into_iter().zip(["requests", "tokens"]) {
            let Some(limit) = limit else {
                *slot = None;
                continue;
            };
            let bucket = slot.get_or_insert_with(|| Bucket::new(limit, now));
            bucket.refill(limit, now);
            #[allow(clippy::cast_precision_loss)]
            let amount = amount as f64;
            let wait = bucket.wait_for(amount);
            if wait > Duration::ZERO {
                let longer = refused.as_ref().is_none_or(|(_, _, w)| wait > *w);
                if longer {
                    refused = Some((unit, limit, wait));
                }
            }
            ready.push((bucket, amount));
        }
        if refused.is_none() && !ready.is_empty() {
            for (bucket, amount) in ready {
                bucket.take(amount);
            }
            self.mark_changed();
        }
        let state = LimitState {
            requests: buckets.requests.as_ref().map(Bucket::window),
            tokens: buckets.tokens.as_ref().map(Bucket::window),
        };
        if let Some((unit, limit, retry_after)) = refused {
            return Err(Box::new(RateLimited {
                key: key.name.clone(),
                unit,
                limit,
                retry_after,
                state,
            }));
        }
        let reservation = Reservation {
            limiter: self.clone(),
            key: key.name.clone(),
            estimated_tokens,
        };
        Ok((state, reservation))
    }

    #[allow(clippy::cast_precision_loss)]
    fn correct(&self, key: &str, estimated: u64, actual: u64) {
        if let Some(bucket) = self.keys.lock().get_mut(key).and_then(|b| b.tokens.as_mut()) {
            bucket.take(actual as f64 - estimated as f64);
            bucket.level = bucket.level.min(bucket.capacity);
            self.mark_changed();
        }
    }
}

/// Tokens charged at admission, corrected with the actual usage once known.
#[derive(Debug)]
pub struct Reservation {
    limiter: Arc<RateLimiter>,
    key: String,
    estimated_tokens: u64,
}

impl Settle for Reservation {
    fn settle(&self, usage: &Usage, _cost: Option<f64>) {
        let actual = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        self.limiter.correct(&self.key, self.estimated_tokens, actual);
    }
}

#[cfg(test)]
mod tests {
    use llmesh_crds::config::KeyConfig;

    use super::*;

    fn key(rpm: Option<u32>, tpm: Option<u64>) -> Key {
        Key {
            name: "k".into(),
            config: KeyConfig {
                key_hash: String::new(),
                previous_key_hashes: Vec::new(),
                allowed_routes: Vec::new(),
                requests_per_minute: rpm,
                tokens_per_minute: tpm,
                budget: None,
                team: None,
                feature: None,
                expires_at_unix: None,
                disabled: false,
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_per_minute_burst_then_refill_at_the_limits_pace() {
        let limiter = Arc::new(RateLimiter::default());
        let key = key(Some(3), None);
        for remaining in [2, 1, 0] {
            let (state, _) = limiter.admit(&key, 0).expect("within the limit");
            assert_eq!(state.requests.map(|w| w.remaining), Some(remaining));
        }
        let refused = limiter.admit(&key, 0).expect_err("fourth in a minute");
        assert_eq!((refused.unit, refused.limit), ("requests", 3));
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        assert_eq!(
            refused.state.requests.map(|w| w.reset),
            Some(Duration::from_secs(60))
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(limiter.admit(&key, 0).is_ok(), "one request back after 20 s");
        assert!(limiter.admit(&key, 0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn token_estimates_are_corrected_with_actual_usage() {
        let limiter = Arc::new(RateLimiter::default());
        let key = key(None, Some(1000));
        let (state, reservation) = limiter.admit(&key, 600).expect("fits");
        assert_eq!(state.tokens.map(|w| w.remaining), Some(400));
        assert!(limiter.admit(&key, 600).is_err(), "the estimate is held");
        // The answer used far less than estimated: the rest comes back.
        reservation.settle(&Usage::new(50, 50, 0, 0, 0), None);
        let (state, reservation) = limiter.admit(&key, 600).expect("fits again");
        assert_eq!(state.tokens.map(|w| w.remaining), Some(300));
        // And far more: the key owes it.
        reservation.settle(&Usage::new(1000, 500, 0, 0, 0), None);
        let refused = limiter.admit(&key, 10).expect_err("overdrawn");
        assert_eq!(refused.unit, "tokens");
        // 300 left, then 900 more than estimated: 600 owed, 610 to refill at 1000/min.
        assert_eq!(refused.retry_after, Duration::from_millis(36_600));
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversize_answer_is_owed_in_full_not_just_a_minute_of_it() {
        let limiter = Arc::new(RateLimiter::default());
        let key = key(None, Some(1200));
        let (_, reservation) = limiter.admit(&key, 1).expect("fits");
        reservation.settle(&Usage::new(12, 5000, 0, 0, 0), None);
        let refused = limiter.admit(&key, 1).expect_err("owing");
        // 1200 - 5012 = -3812; one more token fits after 3813 refill at 20/s.
        assert_eq!(refused.retry_after, Duration::from_millis(190_650));
        let tokens = refused.state.tokens.expect("a token limit");
        assert_eq!(tokens.remaining, 0);
        assert!(
            (250_599..=250_600).contains(&tokens.reset.as_millis()),
            "5012 tokens to refill at 20/s before the bucket is full: {:?}",
            tokens.reset
        );
        // Paid back at the limit's pace, not forgiven after a minute.
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(limiter.admit(&key, 1).is_err(), "still owing after a minute");
        tokio::time::advance(Duration::from_millis(129_700)).await;
        assert!(limiter.admit(&key, 1).is_ok(), "paid back");
    }

    #[tokio::test(start_paused = true)]
    async fn saved_buckets_carry_on_refilled_for_the_time_away() {
        let limiter = Arc::new(RateLimiter::default());
        let key = key(Some(6), Some(1000));
        for _ in 0..6 {
            limiter.admit(&key, 100).expect("within the limits");
        }
        assert!(limiter.take_changed());
        let wall: Timestamp = "2026-05-10T12:00:00Z".parse().expect("timestamp");
        let saved = limiter.saved(wall);
        let requests = saved["k"].requests.expect("an empty bucket is saved");
        assert_eq!((requests.capacity, requests.level), (6.0, 0.0));

        // Back 10 s later: one request's worth (6 per minute) has refilled, no more.
        let back = wall + jiff::SignedDuration::from_secs(10);
        let restarted = Arc::new(RateLimiter::restore(saved.clone(), back));
        let (state, _) = restarted.admit(&key, 100).expect("the refilled request");
        assert_eq!(
            state.tokens.map(|w| w.remaining),
            Some(466),
            "400 + 10 s at 1000/min - 100"
        );
        let refused = restarted.admit(&key, 0).expect_err("the minute is not new");
        assert_eq!(refused.unit, "requests");

        // Back after more than a minute: full again, and nothing worth saving.
        let later = RateLimiter::restore(saved, wall + jiff::SignedDuration::from_secs(61));
        assert!(later.saved(wall).is_empty(), "full buckets are not kept");
    }

    #[test]
    fn headers_follow_openai() {
        let state = LimitState {
            requests: Some(Window {
                limit: 60,
                remaining: 59,
                reset: Duration::from_secs(1),
            }),
            tokens: Some(Window {
                limit: 1000,
                remaining: 10,
                reset: Duration::from_millis(360_500),
            }),
        };
        let headers = state.headers();
        assert_eq!(headers["x-ratelimit-limit-requests"], "60");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "59");
        assert_eq!(headers["x-ratelimit-reset-requests"], "1s");
        assert_eq!(headers["x-ratelimit-reset-tokens"], "6m0.5s");
        assert_eq!(openai_duration(Duration::from_millis(250)), "250ms");
    }
}
