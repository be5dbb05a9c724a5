//! Cache: the step between route and attempts. An identical request (as
//! [`CacheKey`] defines it) within an entry's lifetime is answered from
//! memory with no upstream call; a miss goes on to the attempts, and an
//! answer that ended normally is stored for the next one — a stream once
//! its last chunk has passed through.
//!
//! Never cached: errors, streams that broke off or were abandoned, and
//! answers cut at the output limit (`finish_reason: length`) or filtered.

mod assemble;
mod directives;
mod entry;
mod key;
mod replay;
mod semantic;
mod shared;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::HeaderMap;
use llmesh_crds::config::{CacheConfig, SharedCacheConfig};
use llmesh_crds::resources::CacheScope;
use parking_lot::Mutex;

pub use directives::{CACHE_HEADER, CACHE_TTL_HEADER, Directives, InvalidDirective};
pub use entry::{Entry, Origin};
pub use key::{CacheKey, Partition};

use crate::api::chat::{ChatRequest, Role};
use crate::attempts::{CommittedStream, Reply};
use crate::metrics::Metrics;
use crate::providers::ChunkStream;
use crate::routing::{RequestFacts, Route, SemanticTarget};
use assemble::Assembler;
use semantic::SemanticIndex;
use shared::SharedTier;
use store::Store;

/// The caller identity of a request made without a virtual key (the
/// gateway has none configured); keyed requests pass the VirtualKey's name.
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// What the cache did for a request (the `x-llmesh-cache` response header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
    /// Served the answer to a near-identical question in the same conversation.
    SemanticHit,
    /// Not found; the answer is stored unless the request said `no-store`.
    Miss,
    /// The request asked not to use the cache at all.
    Bypass,
    /// The request asked for a fresh answer (`no-cache`), which replaces the entry.
    Refresh,
}

impl CacheStatus {
    /// The header and label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::SemanticHit => "semantic-hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
            Self::Refresh => "refresh",
        }
    }
}

/// How the cache treats one request on a caching route.
#[derive(Debug)]
pub struct Plan {
    key: CacheKey,
    directives: Directives,
    ttl: Duration,
    shared: Option<SharedCacheConfig>,
    semantic: Option<SemanticPlan>,
}

/// Semantic matching for one request.
#[derive(Debug)]
struct SemanticPlan {
    target: Arc<SemanticTarget>,
    /// Everything but the question.
    conversation: CacheKey,
    /// The last user turn.
    question: String,
    /// Its embedding, once made; stored with the answer.
    vector: Option<Arc<[f32]>>,
}

impl Plan {
    /// The plan for `request` on `route`, or `None` when the route does not cache.
    ///
    /// # Errors
    /// A cache header of the request cannot be used.
    pub fn for_chat(
        route: &Route,
        caller: &str,
        headers: &HeaderMap,
        facts: &RequestFacts<'_>,
        request: &ChatRequest,
    ) -> Result<Option<Self>, InvalidDirective> {
        let Some(config) = &route.cache else {
            return Ok(None);
        };
        let directives = Directives::from_headers(headers, config.allow_overrides)?;
        let partition = Partition {
            route: &route.alias,
            caller: caller_scope(config, caller),
            family: route
                .targets_for(facts)
                .targets
                .iter()
                .map(|t| format!("{}/{}", t.provider_name, t.model))
                .collect(),
        };
        let semantic = route.semantic.clone().and_then(|target| {
            let question = request
                .messages
                .last()
                .filter(|m| m.role == Role::User)
                .map(crate::api::chat::Message::text)
                .filter(|text| !text.trim().is_empty())?;
            Some(SemanticPlan {
                target,
                conversation: CacheKey::of_conversation(&partition, request),
                question,
                vector: None,
            })
        });
        Ok(Some(Self {
            key: CacheKey::of_chat(&partition, request),
            ttl: directives.ttl.unwrap_or(Duration::from_millis(config.ttl_ms)),
            directives,
            shared: config.shared.clone(),
            semantic,
        }))
    }

    /// The status when no stored answer is served.
    pub fn status_unless_hit(&self) -> CacheStatus {
        match (self.directives.read, self.directives.write) {
            (true, _) => CacheStatus::Miss,
            (false, true) => CacheStatus::Refresh,
            (false, false) => CacheStatus::Bypass,
        }
    }
}

/// Whose entries a request may read: its caller's, or the route's shared ones.
fn caller_scope<'a>(config: &CacheConfig, caller: &'a str) -> &'a str {
    match config.scope {
        CacheScope::Key => caller,
        CacheScope::Route => "",
    }
}

/// Stored answers of every route, kept across configuration reloads: this
/// sidecar's memory, and the shared Redis tiers routes name.
#[derive(Debug)]
pub struct ResponseCache {
    store: Store,
    /// Shared tiers by their settings, connected once and kept across reloads.
    shared: Mutex<HashMap<SharedCacheConfig, Arc<SharedTier>>>,
    semantic: SemanticIndex,
    metrics: Arc<Metrics>,
}

/// The share of the memory budget question vectors may use on top of the
/// answers: a vector is a few kilobytes, an answer often as much.
const SEMANTIC_SHARE: u64 = 4;

impl ResponseCache {
    /// A cache holding at most `max_bytes` of answers in memory.
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        Self {
            store: Store::new(max_bytes, metrics.clone()),
            shared: Mutex::new(HashMap::new()),
            semantic: SemanticIndex::new(max_bytes / SEMANTIC_SHARE),
            metrics,
        }
    }

    /// The stored answer for a plan, if it may be read and there is one:
    /// from memory, else from the shared tier (then kept in memory too),
    /// else, on a semantic route, the answer to a near-identical question.
    pub async fn lookup(&self, plan: &mut Plan) -> Option<(Arc<Entry>, CacheStatus)> {
        if !plan.directives.read {
            return None;
        }
        if let Some(entry) = self.lookup_exact(plan).await {
            return Some((entry, CacheStatus::Hit));
        }
        let semantic = plan.semantic.as_mut()?;
        let vector: Arc<[f32]> = match semantic.target.embed(&semantic.question).await {
            Ok(vector) => Arc::from(vector),
            Err(error) => {
                tracing::warn!(provider = %semantic.target.provider_name, %error, "cannot embed the question; semantic matching skipped");
                return None;
            }
        };
        semantic.vector = Some(vector.clone());
        let threshold = semantic.target.threshold;
        self.semantic
            .matches(&semantic.conversation, &vector, threshold)
            .into_iter()
            .find_map(|(answer, similarity)| {
                let entry = self.store.get(&answer)?;
                // Logged so wrong hits can be reviewed: which entry, how similar.
                tracing::info!(target: "llmesh::cache", similarity, matched_entry = %answer, threshold, "semantic hit");
                Some((entry, CacheStatus::SemanticHit))
            })
    }

    async fn lookup_exact(&self, plan: &Plan) -> Option<Arc<Entry>> {
        if let Some(entry) = self.store.get(&plan.key) {
            return Some(entry);
        }
        let tier = self.shared_tier(plan)?;
        let entry = Arc::new(tier.get(&plan.key).await?);
        self.store.insert(plan.key, entry.clone());
        Some(entry)
    }

    /// The shared tier a plan names, connected on first use.
    fn shared_tier(&self, plan: &Plan) -> Option<Arc<SharedTier>> {
        let config = plan.shared.as_ref()?;
        let mut tiers = self.shared.lock();
        if let Some(tier) = tiers.get(config) {
            return Some(tier.clone());
        }
        match SharedTier::new(config, self.metrics.cache_shared_errors.clone()) {
            Ok(tier) => {
                let tier = Arc::new(tier);
                tiers.insert(config.clone(), tier.clone());
                Some(tier)
            }
            Err(error) => {
                self.metrics
                    .cache_shared_errors
                    .with_label_values(&["connect"])
                    .inc();
                tracing::warn!(redis = %config.redis_url, %error, "shared cache unusable; serving from local memory only");
                None
            }
        }
    }

    /// The stored answer in the shape `request` wants.
    pub fn replay(entry: &Entry, request: &ChatRequest) -> Reply {
        replay::reply(entry, request)
    }

    /// Stores `reply` under the plan when it may be written and ends
    /// normally: a complete answer now, a stream once its last chunk has
    /// passed. The reply itself goes on unchanged.
    pub fn fill(self: &Arc<Self>, plan: Plan, origin: Origin, reply: Reply) -> Reply {
        if !plan.directives.write {
            return reply;
        }
        match reply {
            Reply::Complete(completed) => {
                if let Some(entry) =
                    Entry::of_answer(completed.body.clone(), completed.usage.clone(), origin, plan.ttl)
                {
                    self.keep(&plan, Arc::new(entry));
                }
                Reply::Complete(completed)
            }
            Reply::Stream(stream) => Reply::Stream(self.fill_when_complete(plan, origin, stream)),
        }
    }

    /// Passes a stream through, noting its chunks, and stores the answer they
    /// make once the upstream ends it normally. A stream that fails, times
    /// out or is dropped by the app never reaches that point.
    fn fill_when_complete(
        self: &Arc<Self>,
        plan: Plan,
        origin: Origin,
        stream: CommittedStream,
    ) -> CommittedStream {
        let CommittedStream {
            head,
            tail,
            idle,
            deadline,
        } = stream;
        let mut assembler = Assembler::default();
        head.iter().for_each(|event| assembler.observe(event));
        let cache = self.clone();
        let mut upstream = tail.0;
        let tail = async_stream::stream! {
            while let Some(item) = upstream.next().await {
                match &item {
                    Ok(event) => assembler.observe(event),
                    Err(_) => {
                        yield item;
                        return;
                    }
                }
                yield item;
            }
            let Some((response, usage)) = assembler.finish() else {
                return;
            };
            let body = crate::providers::to_json_bytes(&response);
            if let Some(entry) = Entry::of_answer(body, usage, origin, plan.ttl) {
                cache.keep(&plan, Arc::new(entry));
            }
        };
        CommittedStream {
            head,
            tail: ChunkStream(tail.boxed()),
            idle,
            deadline,
        }
    }

    /// Keeps an entry in memory, indexes its question on a semantic route,
    /// and writes it to the shared tier in the background so the app's
    /// answer never waits for Redis.
    fn keep(&self, plan: &Plan, entry: Arc<Entry>) {
        self.store.insert(plan.key, entry.clone());
        if let Some(SemanticPlan {
            conversation,
            vector: Some(vector),
            ..
        }) = &plan.semantic
        {
            self.semantic
                .add(*conversation, vector.clone(), plan.key, entry.expires_at);
        }
        if let Some(tier) = self.shared_tier(plan) {
            let key = plan.key;
            tokio::spawn(async move { tier.put(&key, &entry).await });
        }
    }

    /// Applies pending evictions and updates the bytes-held gauge (before a scrape).
    pub fn sync(&self) {
        self.store.sync();
    }
}
