//! The in-memory tier: a `moka` cache bounded in bytes, not entries, whose
//! TinyLFU policy keeps frequently read answers over ones read once.
//!
//! moka counts reads only from the moment the cache is half full (it sizes
//! its frequency sketch then), so the store counts the reads before that
//! itself and replays them into moka at that moment: an answer read often
//! while the store was nearly empty is not pushed out by answers read never.
//!
//! Lifetimes are checked against tokio's clock on every read, so tests can
//! pause time; moka also drops each entry at its TTL (on its own clock) so
//! expired answers do not hold memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::policy::Expiry;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::entry::Entry;
use super::key::CacheKey;
use crate::metrics::Metrics;

/// An entry larger than this share of the budget is not stored: one huge
/// answer should not flush everything else.
const LARGEST_ENTRY_SHARE: u64 = 8;

/// The most reads of one entry worth remembering: moka's frequency counters
/// are four bits wide.
const MOST_COUNTED_READS: u8 = 15;

/// moka applies its read log every 64 reads and drops reads past its
/// capacity, so a replay applies it more often than that.
const REPLAY_BATCH: usize = 32;

/// Expires each entry after its own TTL.
struct EntryTtl;

impl Expiry<CacheKey, Arc<Entry>> for EntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        entry: &Arc<Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// Stored answers, shared by every route and kept across reloads.
#[derive(Clone)]
pub struct Store {
    entries: moka::sync::Cache<CacheKey, Arc<Entry>>,
    max_bytes: u64,
    metrics: Arc<Metrics>,
    /// Reads per entry until moka counts them itself (then `None`); at most
    /// about twice the entries held in half the store.
    early_reads: Arc<Mutex<Option<HashMap<CacheKey, u8>>>>,
    /// Whether `early_reads` still counts, so a hit after that costs one
    /// atomic load rather than a lock every reader shares.
    counting_early_reads: Arc<AtomicBool>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.entries.entry_count())
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl Store {
    /// A store holding at most `max_bytes` (as [`Entry::weight`] counts them).
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        let evictions = metrics.cache_evictions.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| entry.weight())
            .expire_after(EntryTtl)
            .eviction_listener(move |_key, _entry, cause| {
                let reason = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired | RemovalCause::Explicit => "expired",
                    RemovalCause::Replaced => return,
                };
                evictions.with_label_values(&[reason]).inc();
            })
            .build();
        Self {
            entries,
            max_bytes,
            metrics,
            early_reads: Arc::new(Mutex::new(Some(HashMap::new()))),
            counting_early_reads: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The live entry under `key`.
    pub fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        let entry = self.entries.get(key)?;
        if entry.is_expired(Instant::now()) {
            self.entries.invalidate(key);
            return None;
        }
        if self.counting_early_reads.load(Ordering::Acquire)
            && let Some(early) = self.early_reads.lock().as_mut()
        {
            let reads = early.entry(*key).or_default();
            *reads = reads.saturating_add(1).min(MOST_COUNTED_READS);
        }
        Some(entry)
    }

    /// Stores an entry (replacing one under the same key); entries over the
    /// size limit are dropped.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        if u64::from(entry.weight()) > self.max_bytes / LARGEST_ENTRY_SHARE {
            tracing::debug!(key = %key, bytes = entry.weight(), "answer too large to cache");
            return;
        }
        self.entries.insert(key, entry);
        if self.counting_early_reads.load(Ordering::Acquire) {
            self.replay_early_reads_once_half_full();
        }
    }

    /// Once moka counts reads (the store is half full), hands it the reads
    /// it missed.
    fn replay_early_reads_once_half_full(&self) {
        self.entries.run_pending_tasks();
        if self.entries.weighted_size() < self.max_bytes / 2 {
            // Forget the reads of answers that expired meanwhile, so the
            // counts stay about as many as the answers held (pruned when
            // twice as many, so pruning costs little per insert).
            let held = self.entries.entry_count();
            if let Some(early) = self.early_reads.lock().as_mut()
                && u64::try_from(early.len()).unwrap_or(u64::MAX) > 2 * held
            {
                early.retain(|key, _| self.entries.contains_key(key));
            }
            return;
        }
        let Some(early) = self.early_reads.lock().take() else {
            return;
        };
        self.counting_early_reads.store(false, Ordering::Release);
        let replay = early
            .iter()
            .flat_map(|(key, reads)| std::iter::repeat_n(key, usize::from(*reads)));
        for (n, key) in replay.enumerate() {
            if n % REPLAY_BATCH == REPLAY_BATCH - 1 {
                self.entries.run_pending_tasks();
            }
            // The read is what counts; the answer is not needed.
            let _ = self.entries.get(key);
        }
        self.entries.run_pending_tasks();
    }

    /// Applies pending evictions and publishes the bytes held; called before
    /// metrics are read, so the gauge is exact when scraped.
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
        let held = i64::try_from(self.entries.weighted_size()).unwrap_or(i64::MAX);
        self.metrics.cache_bytes.set(held);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use llmesh_crds::resources::ProviderKind;

    use super::*;
    use crate::api::Usage;
    use crate::cache::entry::Origin;
    use crate::cache::key::Partition;

    fn key(n: usize) -> CacheKey {
        let partition = Partition {
            route: "r",
            caller: "",
            family: std::collections::BTreeSet::new(),
        };
        let request = serde_json::from_value(serde_json::json!({
            "model": "r", "messages": [{"role": "user", "content": format!("question {n}")}],
        }))
        .expect("request");
        CacheKey::of_chat(&partition, &request)
    }

    fn entry(content_bytes: usize, ttl: Duration) -> Arc<Entry> {
        let body = serde_json::json!({
            "id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "x".repeat(content_bytes)}, "finish_reason": "stop"}],
        });
        let origin = Origin {
            provider_name: "mock".into(),
            provider_kind: ProviderKind::Mock,
            model: "m".into(),
            price: None,
        };
        Arc::new(
            Entry::of_answer(Bytes::from(body.to_string()), Usage::default(), origin, ttl).expect("entry"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn entries_are_served_until_their_ttl_passes() {
        let store = Store::new(1 << 20, Arc::new(Metrics::new()));
        store.insert(key(1), entry(10, Duration::from_secs(60)));
        store.insert(key(2), entry(10, Duration::from_secs(600)));

        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(store.get(&key(1)).is_some(), "still fresh");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(store.get(&key(1)).is_none(), "expired at its TTL");
        assert!(store.get(&key(2)).is_some(), "each entry has its own TTL");
    }

    #[tokio::test]
    async fn memory_stays_within_the_byte_budget() {
        let metrics = Arc::new(Metrics::new());
        let budget = 64 * 1024;
        let store = Store::new(budget, metrics.clone());
        for n in 0..200 {
            store.insert(key(n), entry(2_000, Duration::from_secs(60)));
        }
        store.sync();
        let held = u64::try_from(metrics.cache_bytes.get()).expect("not negative");
        assert!(held <= budget, "{held} bytes held, budget {budget}");
        assert!(held > budget / 2, "the budget is used, not left empty: {held}");
        let evicted = metrics.cache_evictions.with_label_values(&["size"]).get();
        assert!(evicted > 0, "entries over the budget are evicted and counted");
    }

    #[tokio::test]
    async fn an_answer_read_often_while_the_store_was_nearly_empty_outlives_answers_read_never() {
        let metrics = Arc::new(Metrics::new());
        let store = Store::new(40 * 1024, metrics.clone());
        let popular = key(0);
        assert!(store.get(&popular).is_none());
        store.insert(popular, entry(1_000, Duration::from_secs(600)));
        for _ in 0..6 {
            assert!(store.get(&popular).is_some());
        }
        // Sixty one-off answers, each asked once (a miss) and stored: half
        // again more than the store holds.
        for n in 1..=60 {
            assert!(store.get(&key(n)).is_none());
            store.insert(key(n), entry(1_000, Duration::from_secs(600)));
        }
        store.sync();
        let evicted = metrics.cache_evictions.with_label_values(&["size"]).get();
        assert!(evicted >= 20, "the store overflowed: {evicted} evicted");
        assert!(store.get(&popular).is_some(), "the often-read answer is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn early_read_counts_of_expired_answers_are_forgotten() {
        let store = Store::new(1 << 20, Arc::new(Metrics::new()));
        for n in 0..100 {
            store.insert(key(n), entry(10, Duration::from_secs(60)));
            assert!(store.get(&key(n)).is_some(), "read while fresh");
            tokio::time::advance(Duration::from_secs(61)).await;
            assert!(store.get(&key(n)).is_none(), "expired");
        }
        let counted = store.early_reads.lock().as_ref().map(HashMap::len);
        assert!(counted.is_some_and(|n| n <= 4), "{counted:?} counts kept");
    }

    #[tokio::test]
    async fn an_answer_too_large_for_its_share_is_not_stored() {
        let store = Store::new(16 * 1024, Arc::new(Metrics::new()));
        store.insert(key(1), entry(4_000, Duration::from_secs(60)));
        assert!(store.get(&key(1)).is_none());
    }
}
