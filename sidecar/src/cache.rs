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
mod store;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::HeaderMap;
use llmesh_crds::config::CacheConfig;
use llmesh_crds::resources::CacheScope;

pub use directives::{CACHE_HEADER, CACHE_TTL_HEADER, Directives};
pub use entry::{Entry, Origin};
pub use key::{CacheKey, Partition};

use crate::api::chat::ChatRequest;
use crate::attempts::{CommittedStream, Reply};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::providers::ChunkStream;
use crate::routing::{RequestFacts, Route};
use assemble::Assembler;
use store::Store;

/// The caller identity of a request that names none. Until virtual keys
/// exist every caller is this one, so `scope: key` behaves like `scope:
/// route`; the handler passes the key's id here once it has one.
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// What the cache did for a request (the `x-llmesh-cache` response header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache.
    Hit,
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
    ) -> Result<Option<Self>, ApiError> {
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
        Ok(Some(Self {
            key: CacheKey::of_chat(&partition, request),
            ttl: directives.ttl.unwrap_or(Duration::from_millis(config.ttl_ms)),
            directives,
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

/// Stored answers of every route, kept across configuration reloads.
#[derive(Debug)]
pub struct ResponseCache {
    store: Store,
}

impl ResponseCache {
    /// A cache holding at most `max_bytes` of answers.
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Self {
        Self {
            store: Store::new(max_bytes, metrics),
        }
    }

    /// The stored answer for a plan, if it may be read and there is one.
    pub fn lookup(&self, plan: &Plan) -> Option<Arc<Entry>> {
        if !plan.directives.read {
            return None;
        }
        self.store.get(&plan.key)
    }

    /// The stored answer in the shape `request` wants.
    pub fn replay(entry: &Entry, request: &ChatRequest) -> Reply {
        replay::reply(entry, request)
    }

    /// Stores `reply` under the plan when it may be written and ends
    /// normally: a complete answer now, a stream once its last chunk has
    /// passed. The reply itself goes on unchanged.
    pub fn fill(&self, plan: Plan, origin: Origin, reply: Reply) -> Reply {
        if !plan.directives.write {
            return reply;
        }
        match reply {
            Reply::Complete(completed) => {
                if let Some(entry) =
                    Entry::of_answer(completed.body.clone(), completed.usage.clone(), origin, plan.ttl)
                {
                    self.store.insert(plan.key, Arc::new(entry));
                }
                Reply::Complete(completed)
            }
            Reply::Stream(stream) => Reply::Stream(self.fill_when_complete(plan, origin, stream)),
        }
    }

    /// Passes a stream through, noting its chunks, and stores the answer they
    /// make once the upstream ends it normally. A stream that fails, times
    /// out or is dropped by the app never reaches that point.
    fn fill_when_complete(&self, plan: Plan, origin: Origin, stream: CommittedStream) -> CommittedStream {
        let CommittedStream {
            head,
            tail,
            idle,
            deadline,
        } = stream;
        let mut assembler = Assembler::default();
        head.iter().for_each(|event| assembler.observe(event));
        let store = self.store.clone();
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
                store.insert(plan.key, Arc::new(entry));
            }
        };
        CommittedStream {
            head,
            tail: ChunkStream(tail.boxed()),
            idle,
            deadline,
        }
    }

    /// Applies pending evictions and updates the bytes-held gauge (before a scrape).
    pub fn sync(&self) {
        self.store.sync();
    }
}
