//! The shared tier: a Redis that every pod of a workload reads and writes
//! behind its own memory, so an answer one pod paid for serves them all.
//!
//! Redis is an optimisation, never a dependency: every operation has a
//! short time limit, a failure is counted and logged, and after one the
//! tier is left alone for a moment so a dead Redis costs requests nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use llmesh_crds::config::SharedCacheConfig;
use llmesh_crds::resources::ProviderKind;
use parking_lot::Mutex;
use prometheus::IntCounterVec;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::entry::{Entry, Origin};
use super::key::CacheKey;
use crate::api::Usage;

/// After a failure, how long the tier is skipped before it is tried again:
/// long enough that a dead Redis is asked once a second, not once a request.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Prefix of every key llmesh writes, so a Redis can be shared with other uses.
const KEY_PREFIX: &str = "llmesh:cache:v1:";

/// An entry as stored in Redis.
#[derive(Debug, Deserialize, Serialize)]
struct Stored {
    body: String,
    usage: Usage,
    cost_usd: f64,
    provider_name: String,
    provider_kind: ProviderKind,
    model: String,
    /// Unix milliseconds: Redis drops the key then too, this keeps a copy
    /// read just before from outliving it in a sidecar's memory.
    expires_at_ms: u64,
}

/// One Redis, shared by the routes that name it.
pub struct SharedTier {
    client: redis::Client,
    url: String,
    timeout: Duration,
    connection: Mutex<Option<MultiplexedConnection>>,
    paused_until: Mutex<Option<Instant>>,
    errors: IntCounterVec,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTier")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why one Redis operation did not happen.
#[derive(Debug, thiserror::Error)]
enum SharedError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl SharedTier {
    /// A tier for `config`; connects on first use.
    ///
    /// # Errors
    /// The URL is not a Redis URL.
    pub fn new(config: &SharedCacheConfig, errors: IntCounterVec) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(config.redis_url.as_str())?,
            url: config.redis_url.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            connection: Mutex::new(None),
            paused_until: Mutex::new(None),
            errors,
        })
    }

    /// The entry under `key`, if Redis has one and answers in time.
    pub async fn get(&self, key: &CacheKey) -> Option<Entry> {
        let stored: Option<Vec<u8>> = self
            .run("get", redis::cmd("GET").arg(redis_key(key)).clone())
            .await?;
        let stored: Stored = serde_json::from_slice(&stored?).ok()?;
        let remaining = stored.expires_at_ms.checked_sub(unix_ms()).filter(|ms| *ms > 0)?;
        let origin = Origin {
            provider_name: stored.provider_name,
            provider_kind: stored.provider_kind,
            model: stored.model,
            price: None,
        };
        Some(Entry::new(
            Bytes::from(stored.body),
            stored.usage,
            stored.cost_usd,
            origin,
            Duration::from_millis(remaining),
        ))
    }

    /// Stores `entry` under `key` for its lifetime.
    pub async fn put(&self, key: &CacheKey, entry: &Entry) {
        let Ok(body) = String::from_utf8(entry.body.to_vec()) else {
            return;
        };
        let ttl_ms = u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let stored = Stored {
            body,
            usage: entry.usage.clone(),
            cost_usd: entry.cost_usd,
            provider_name: entry.origin.provider_name.clone(),
            provider_kind: entry.origin.provider_kind,
            model: entry.origin.model.clone(),
            expires_at_ms: unix_ms().saturating_add(ttl_ms),
        };
        let Ok(value) = serde_json::to_vec(&stored) else {
            return;
        };
        let command = redis::cmd("SET")
            .arg(redis_key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .clone();
        let _: Option<()> = self.run("set", command).await;
    }

    /// Runs one command within the time limit; `None` when the tier is
    /// paused or the command failed (counted, logged, and the tier paused).
    /// A failure to (re)connect is counted as `connect`, whatever the command.
    async fn run<T: redis::FromRedisValue>(&self, operation: &'static str, command: redis::Cmd) -> Option<T> {
        let now = Instant::now();
        if self.paused_until.lock().is_some_and(|until| now < until) {
            return None;
        }
        // One deadline for both steps, so a reconnect does not double the limit.
        let deadline = now + self.timeout;
        let (operation, error) = match self.connection(deadline).await {
            Err(error) => ("connect", error),
            Ok(mut connection) => {
                match tokio::time::timeout_at(deadline, command.query_async(&mut connection)).await {
                    Ok(Ok(value)) => return Some(value),
                    Ok(Err(error)) => (operation, error.into()),
                    Err(_) => (operation, SharedError::Timeout(self.timeout)),
                }
            }
        };
        self.errors.with_label_values(&[operation]).inc();
        tracing::warn!(redis = %self.url, operation, %error, "shared cache unavailable; serving from local memory only");
        *self.connection.lock() = None;
        *self.paused_until.lock() = Some(Instant::now() + PAUSE_AFTER_FAILURE);
        None
    }

    /// The open connection, or a new one made by `deadline`.
    async fn connection(&self, deadline: Instant) -> Result<MultiplexedConnection, SharedError> {
        if let Some(connection) = self.connection.lock().clone() {
            return Ok(connection);
        }
        let connection = tokio::time::timeout_at(deadline, self.client.get_multiplexed_async_connection())
            .await
            .map_err(|_| SharedError::Timeout(self.timeout))??;
        *self.connection.lock() = Some(connection.clone());
        Ok(connection)
    }
}

fn redis_key(key: &CacheKey) -> String {
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_PREFIX}{hex}")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
