//! Semantic matching: a question phrased differently from one already
//! answered, in the same conversation, is served that answer when their
//! embeddings are close enough.
//!
//! The question is the last user turn; the conversation is everything else
//! (system prompt, earlier turns, tools, parameters), hashed into a scope
//! key, so a different conversation never matches. Within a scope the search
//! is an exact cosine scan: a scope holds at most [`MAX_VECTORS_PER_SCOPE`]
//! vectors (a few hundred repeats of one conversation's opening), which one
//! core scans in well under a millisecond even at 1,536 dimensions. An
//! approximate index would add a dependency and recall loss for no speed
//! that matters at that size.

use std::sync::Arc;

use tokio::time::Instant;

use super::key::CacheKey;

/// Vectors kept per conversation scope; the oldest go first.
pub const MAX_VECTORS_PER_SCOPE: usize = 256;

/// One answered question.
#[derive(Clone, Debug)]
struct Indexed {
    vector: Arc<[f32]>,
    answer: CacheKey,
    expires_at: Instant,
}

/// A scope's vectors: replaced whole on each addition, so the cache can
/// weigh it anew.
type Scope = Arc<Vec<Indexed>>;

/// Question vectors of stored answers, by conversation scope, bounded in bytes.
#[derive(Clone)]
pub struct SemanticIndex {
    scopes: moka::sync::Cache<CacheKey, Scope>,
}

impl std::fmt::Debug for SemanticIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SemanticIndex")
            .field("scopes", &self.scopes.entry_count())
            .finish()
    }
}

impl SemanticIndex {
    /// An index holding at most `max_bytes` of vectors.
    pub fn new(max_bytes: u64) -> Self {
        let scopes = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_scope: &CacheKey, vectors: &Scope| {
                let bytes: usize = vectors.iter().map(|v| v.vector.len() * 4 + 64).sum();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Self { scopes }
    }

    /// Notes that the answer under `answer` was given to the question `vector`.
    pub fn add(&self, scope: CacheKey, vector: Arc<[f32]>, answer: CacheKey, expires_at: Instant) {
        let now = Instant::now();
        let mut vectors: Vec<Indexed> = self
            .scopes
            .get(&scope)
            .map(|s| {
                s.iter()
                    .filter(|v| v.expires_at > now && v.answer != answer)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if vectors.len() >= MAX_VECTORS_PER_SCOPE {
            vectors.remove(0);
        }
        vectors.push(Indexed {
            vector,
            answer,
            expires_at,
        });
        self.scopes.insert(scope, Arc::new(vectors));
    }

    /// Answers in `scope` whose question is at least `threshold` similar to
    /// `vector`, most similar first.
    pub fn matches(&self, scope: &CacheKey, vector: &[f32], threshold: f64) -> Vec<(CacheKey, f64)> {
        let Some(vectors) = self.scopes.get(scope) else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut found: Vec<(CacheKey, f64)> = vectors
            .iter()
            .filter(|v| v.expires_at > now)
            .map(|v| (v.answer, cosine(&v.vector, vector)))
            .filter(|(_, similarity)| *similarity >= threshold)
            .collect();
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        found
    }
}

/// Cosine similarity; 0 for vectors of different sizes or zero length.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut norm_a, mut norm_b) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        norm_a += x * x;
        norm_b += y * y;
    }
    if norm_a == 0.0 || norm_b == 0.0 {
        return 0.0;
    }
    dot / (norm_a.sqrt() * norm_b.sqrt())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::chat::ChatRequest;
    use crate::cache::key::Partition;

    fn key(text: &str) -> CacheKey {
        let partition = Partition {
            route: "r",
            caller: "",
            family: Default::default(),
        };
        let request: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "r", "messages": [{"role": "user", "content": text}],
        }))
        .expect("request");
        CacheKey::of_chat(&partition, &request)
    }

    #[test]
    fn cosine_is_one_for_the_same_direction_and_zero_for_orthogonal() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-9);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-9);
        assert!(cosine(&[1.0], &[1.0, 0.0]).abs() < 1e-9, "sizes differ");
    }

    #[tokio::test(start_paused = true)]
    async fn only_close_live_vectors_of_the_same_scope_match() {
        let index = SemanticIndex::new(1 << 20);
        let later = Instant::now() + Duration::from_secs(60);
        index.add(key("scope"), Arc::from(vec![1.0, 0.0]), key("a"), later);
        index.add(key("scope"), Arc::from(vec![0.9, 0.1]), key("b"), later);
        index.add(key("other scope"), Arc::from(vec![1.0, 0.0]), key("c"), later);

        let found = index.matches(&key("scope"), &[1.0, 0.0], 0.95);
        assert_eq!(
            found.iter().map(|f| f.0).collect::<Vec<_>>(),
            [key("a"), key("b")]
        );
        assert!(index.matches(&key("scope"), &[0.0, 1.0], 0.95).is_empty());
        assert!(index.matches(&key("no scope"), &[1.0, 0.0], 0.5).is_empty());

        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            index.matches(&key("scope"), &[1.0, 0.0], 0.5).is_empty(),
            "expired"
        );
    }

    #[tokio::test]
    async fn a_scope_keeps_its_newest_vectors() {
        let index = SemanticIndex::new(1 << 20);
        let later = Instant::now() + Duration::from_secs(60);
        for n in 0..=MAX_VECTORS_PER_SCOPE {
            index.add(key("scope"), Arc::from(vec![1.0]), key(&n.to_string()), later);
        }
        let found = index.matches(&key("scope"), &[1.0], 0.5);
        assert_eq!(found.len(), MAX_VECTORS_PER_SCOPE);
        assert!(!found.iter().any(|f| f.0 == key("0")), "the oldest went first");
    }
}
