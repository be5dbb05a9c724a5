//! Cluster-wide spend per namespace, budget and period, built from sidecars'
//! reports, each (instance, sequence) applied once.
//!
//! A report is acknowledged only once the spend it carried is durable: in
//! the state file (standalone) — written whole to a temporary file, fsynced
//! and renamed — or in the `llmesh-sync-state` ConfigMap (in a cluster), by
//! one writer that batches every report that arrived while the previous
//! write ran (group commit), so a busy operator does one write per batch,
//! not per report.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use llmesh_crds::sync::{Ack, BudgetDelta, BudgetTotal, Report};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

/// The layout version of the state file.
const FORMAT: u32 = 1;

/// Wait before retrying a failed state-file write.
const RETRY_WRITE: Duration = Duration::from_secs(1);

/// One budget's (or VirtualKey's) spend in its current period.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spend {
    /// Unix second the period began (as the sidecars' calendars say).
    pub period_start: i64,
    /// USD spent in it by all sidecars.
    pub spent_usd: f64,
    /// Tokens settled in it by all sidecars.
    #[serde(default)]
    pub tokens: u64,
    /// Unix milliseconds of the last report with spend for it.
    #[serde(default)]
    pub last_report_ms: i64,
    /// Instances that reported spend for it in this period.
    #[serde(default)]
    pub reporters: BTreeSet<String>,
    /// How many sidecars had reported in this period when the spend was
    /// resumed from a status (which keeps the count, not the ids).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub earlier_reporters: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Spend {
    /// Sidecars that reported in this period: those seen since, or the
    /// resumed count if more (most of them report again after a hand-off).
    pub fn reporting(&self) -> u32 {
        u32::try_from(self.reporters.len())
            .unwrap_or(u32::MAX)
            .max(self.earlier_reporters)
    }

    /// Adds `delta`, reported by `instance`: spend of a newer period starts
    /// that period, spend of an older one is late and dropped.
    fn add(&mut self, delta: &BudgetDelta, instance: &str, now_ms: i64) {
        if delta.period_start > self.period_start {
            *self = Self {
                period_start: delta.period_start,
                ..Self::default()
            };
        }
        if delta.period_start == self.period_start {
            self.spent_usd += delta.spent_usd;
            self.tokens = self.tokens.saturating_add(delta.tokens);
            self.last_report_ms = now_ms;
            self.reporters.insert(instance.to_owned());
        }
    }
}

/// What the ledger knows of one sidecar instance.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Instance {
    /// The highest sequence applied.
    pub seq: u64,
    /// The configuration version it last said it serves.
    #[serde(default)]
    pub config_version: String,
    /// Unix milliseconds of its last report.
    #[serde(default)]
    pub last_report_ms: i64,
    /// The pod it runs in, when its token says (cluster only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// One namespace's spend and instances.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    /// By budget name.
    #[serde(default)]
    pub budgets: BTreeMap<String, Spend>,
    /// By VirtualKey name, in the calendar of the key's budget.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, Spend>,
    /// By instance id.
    #[serde(default)]
    pub instances: BTreeMap<String, Instance>,
}

/// The persisted form of the ledger (state file, or the ConfigMap's key).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: u32,
    namespaces: BTreeMap<String, Namespace>,
}

/// The state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading or writing failed.
    #[error("sync state file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The content is not a state file of this format; left untouched.
    #[error(
        "sync state file {path} is corrupt ({reason}); it was left untouched — move it away to start from zero"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What [`Ledger::apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// The answer for the sidecar (send it once [`Ledger::durable`] returns).
    pub ack: Ack,
    /// The write that makes it durable.
    generation: u64,
}

#[derive(Debug, Default)]
struct Inner {
    namespaces: BTreeMap<String, Namespace>,
    /// Bumped by every change; the writer saves up to it.
    generation: u64,
}

/// Where a ledger is made durable, other than a local file.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Writes the whole ledger (`bytes`, the state file's JSON).
    ///
    /// # Errors
    /// The write failed; it is retried and the reports wait unacknowledged.
    fn save(&self, bytes: Vec<u8>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// Where the ledger is kept.
#[derive(Debug)]
enum Durability {
    Memory,
    File(PathBuf),
    Store(Box<dyn Store>),
}

/// Spend across sidecars, persisted before it is acknowledged.
#[derive(Debug)]
pub struct Ledger {
    inner: Mutex<Inner>,
    durability: Durability,
    wake: Notify,
    saved: watch::Sender<u64>,
    /// Durable writes done (each carries every report applied before it).
    writes: AtomicU64,
}

impl Ledger {
    /// A ledger carrying on from `path` (none: in memory only).
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn open(path: Option<PathBuf>) -> Result<Arc<Self>, LedgerError> {
        let namespaces = match &path {
            Some(path) => load(path)?,
            None => BTreeMap::new(),
        };
        let durability = path.map_or(Durability::Memory, Durability::File);
        Ok(Self::with(namespaces, durability))
    }

    /// A ledger carrying on from `bytes` (what `store` saved last; none:
    /// from zero), made durable in `store`.
    ///
    /// # Errors
    /// The bytes are not a ledger of this format.
    pub fn stored(bytes: Option<&[u8]>, store: Box<dyn Store>) -> Result<Arc<Self>, LedgerError> {
        let namespaces = match bytes {
            Some(bytes) => parse(bytes).map_err(|reason| LedgerError::Corrupt {
                path: PathBuf::from(format!("{store:?}")),
                reason,
            })?,
            None => BTreeMap::new(),
        };
        Ok(Self::with(namespaces, Durability::Store(store)))
    }

    fn with(namespaces: BTreeMap<String, Namespace>, durability: Durability) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                namespaces,
                generation: 0,
            }),
            durability,
            wake: Notify::new(),
            saved: watch::Sender::new(0),
            writes: AtomicU64::new(0),
        })
    }

    /// Starts `budget`'s spend in `namespace` from `spend` (what its status
    /// said when no ledger was stored), unless the ledger already knows
    /// this or a later period of it.
    pub fn seed(&self, namespace: &str, budget: &str, spend: Spend) {
        self.seed_into(namespace, |space| &mut space.budgets, budget, spend);
    }

    /// Starts VirtualKey `key`'s spend in `namespace` from `spend`, as [`Ledger::seed`].
    pub fn seed_key(&self, namespace: &str, key: &str, spend: Spend) {
        self.seed_into(namespace, |space| &mut space.keys, key, spend);
    }

    fn seed_into(
        &self,
        namespace: &str,
        pick: fn(&mut Namespace) -> &mut BTreeMap<String, Spend>,
        name: &str,
        spend: Spend,
    ) {
        let mut inner = self.inner.lock();
        let spends = pick(inner.namespaces.entry(namespace.to_owned()).or_default());
        let known = spends.get(name);
        if known.is_none_or(|k| k.period_start < spend.period_start) {
            spends.insert(name.to_owned(), spend);
            inner.generation += 1;
            let generation = inner.generation;
            drop(inner);
            self.changed(generation);
        }
    }

    /// Applies `report` from a sidecar of `namespace` unless this
    /// (instance, sequence) was applied before. Spend of a newer period
    /// than the ledger's starts that period; spend of an older one is late
    /// and dropped (its period is closed).
    pub fn apply(&self, namespace: &str, report: &Report, pod: Option<&str>, now_ms: i64) -> Applied {
        let mut inner = self.inner.lock();
        let space = inner.namespaces.entry(namespace.to_owned()).or_default();
        let instance = space.instances.entry(report.instance.clone()).or_default();
        let fresh = report.seq > instance.seq;
        if fresh {
            instance.seq = report.seq;
            instance.config_version.clone_from(&report.config_version);
            instance.last_report_ms = now_ms;
            if let Some(pod) = pod {
                instance.pod = Some(pod.to_owned());
            }
            for (name, delta) in &report.budgets {
                let spend = space.budgets.entry(name.clone()).or_default();
                spend.add(delta, &report.instance, now_ms);
            }
            for (name, delta) in &report.keys {
                let spend = space.keys.entry(name.clone()).or_default();
                spend.add(delta, &report.instance, now_ms);
            }
            inner.generation += 1;
        }
        let totals = totals_of(inner.namespaces.get(namespace));
        let generation = inner.generation;
        drop(inner);
        if fresh {
            self.changed(generation);
        }
        Applied {
            ack: Ack {
                seq: report.seq,
                applied: fresh,
                totals,
            },
            generation,
        }
    }

    /// Waits until what `applied` reflects is durable. A duplicate waits
    /// too: its first copy may still be on its way to disk.
    pub async fn durable(&self, applied: &Applied) {
        let mut saved = self.saved.subscribe();
        let _ = saved.wait_for(|g| *g >= applied.generation).await;
    }

    /// Every budget's total in `namespace`.
    pub fn totals(&self, namespace: &str) -> BTreeMap<String, BudgetTotal> {
        totals_of(self.inner.lock().namespaces.get(namespace))
    }

    /// A copy of `namespace`'s spend and instances.
    pub fn namespace(&self, namespace: &str) -> Namespace {
        self.inner
            .lock()
            .namespaces
            .get(namespace)
            .cloned()
            .unwrap_or_default()
    }

    /// Durable writes done so far: reports applied per write says how well
    /// group commit batches.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Notified after every durable change (the generation saved).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.saved.subscribe()
    }

    fn changed(&self, generation: u64) {
        if matches!(self.durability, Durability::Memory) {
            self.saved.send_if_modified(|saved| {
                let newer = generation > *saved;
                if newer {
                    *saved = generation;
                }
                newer
            });
        } else {
            self.wake.notify_one();
        }
    }

    /// Writes the state file whenever something changed, batching changes
    /// that arrive during a write. Runs until the process ends.
    pub async fn write_changes(self: Arc<Self>) {
        if matches!(self.durability, Durability::Memory) {
            return std::future::pending().await;
        }
        loop {
            self.wake.notified().await;
            loop {
                let (snapshot, generation) = {
                    let inner = self.inner.lock();
                    if inner.generation == *self.saved.borrow() {
                        break;
                    }
                    (inner.namespaces.clone(), inner.generation)
                };
                match self.save(snapshot).await {
                    Ok(()) => {
                        self.writes.fetch_add(1, Ordering::Relaxed);
                        self.saved.send_replace(generation);
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot persist the sync ledger; reports wait unacknowledged");
                        tokio::time::sleep(RETRY_WRITE).await;
                    }
                }
            }
        }
    }
}

impl Ledger {
    async fn save(&self, namespaces: BTreeMap<String, Namespace>) -> Result<(), String> {
        match &self.durability {
            Durability::Memory => Ok(()),
            Durability::File(path) => {
                let target = path.clone();
                tokio::task::spawn_blocking(move || save(&target, namespaces))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            Durability::Store(store) => {
                let bytes = serde_json::to_vec(&File {
                    format: FORMAT,
                    namespaces,
                })
                .map_err(|e| e.to_string())?;
                store.save(bytes).await
            }
        }
    }
}

fn totals_of(space: Option<&Namespace>) -> BTreeMap<String, BudgetTotal> {
    space
        .map(|space| {
            space
                .budgets
                .iter()
                .map(|(name, spend)| {
                    let total = BudgetTotal {
                        period_start: spend.period_start,
                        spent_usd: spend.spent_usd,
                    };
                    (name.clone(), total)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn load(path: &Path) -> Result<BTreeMap<String, Namespace>, LedgerError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => {
            return Err(LedgerError::Io {
                path: path.to_owned(),
                error,
            });
        }
    };
    parse(&bytes).map_err(|reason| LedgerError::Corrupt {
        path: path.to_owned(),
        reason,
    })
}

fn parse(bytes: &[u8]) -> Result<BTreeMap<String, Namespace>, String> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.format != FORMAT {
        return Err(format!("format {} is not {FORMAT}", file.format));
    }
    Ok(file.namespaces)
}

fn save(path: &Path, namespaces: BTreeMap<String, Namespace>) -> Result<(), LedgerError> {
    let io = |error| LedgerError::Io {
        path: path.to_owned(),
        error,
    };
    let bytes = serde_json::to_vec(&File {
        format: FORMAT,
        namespaces,
    })
    .map_err(|e| io(std::io::Error::other(e)))?;
    llmesh_crds::durable::replace(path, &bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(instance: &str, seq: u64, period_start: i64, usd: f64) -> Report {
        Report {
            instance: instance.to_owned(),
            seq,
            config_version: "v1".to_owned(),
            budgets: BTreeMap::from([(
                "team".to_owned(),
                BudgetDelta {
                    period_start,
                    spent_usd: usd,
                    tokens: 10,
                },
            )]),
            keys: BTreeMap::from([(
                format!("key-{instance}"),
                BudgetDelta {
                    period_start,
                    spent_usd: usd,
                    tokens: 10,
                },
            )]),
        }
    }

    #[tokio::test]
    async fn a_replayed_report_counts_once_and_spend_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sync-state.json");
        let ledger = Ledger::open(Some(path.clone())).expect("open");
        tokio::spawn(ledger.clone().write_changes());
        for (instance, seq) in [("a", 1), ("b", 1), ("a", 1), ("a", 2), ("b", 1)] {
            let applied = ledger.apply("ns", &report(instance, seq, 100, 0.25), None, 1);
            ledger.durable(&applied).await;
        }
        assert_eq!(ledger.totals("ns")["team"].spent_usd, 0.75);
        let restarted = Ledger::open(Some(path)).expect("reopen");
        assert_eq!(restarted.totals("ns")["team"].spent_usd, 0.75);
        let again = restarted.apply("ns", &report("a", 2, 100, 0.25), None, 2);
        assert!(!again.ack.applied, "the sequence is remembered too");
        assert_eq!(restarted.namespace("ns").budgets["team"].reporters.len(), 2);
        let keys = restarted.namespace("ns").keys;
        assert_eq!(
            keys["key-a"].spent_usd, 0.5,
            "each key's own spend, once per report"
        );
        assert_eq!(keys["key-b"].spent_usd, 0.25);
    }

    #[test]
    fn a_resumed_reporting_count_holds_until_more_sidecars_report() {
        let ledger = Ledger::open(None).expect("open");
        let resumed = Spend {
            period_start: 100,
            spent_usd: 2.0,
            earlier_reporters: 3,
            ..Spend::default()
        };
        ledger.seed("ns", "team", resumed);
        ledger.apply("ns", &report("a", 1, 100, 1.0), None, 1);
        let spend = &ledger.namespace("ns").budgets["team"];
        assert_eq!((spend.spent_usd, spend.reporting()), (3.0, 3));
        for instance in ["b", "c", "d"] {
            ledger.apply("ns", &report(instance, 1, 100, 1.0), None, 2);
        }
        assert_eq!(ledger.namespace("ns").budgets["team"].reporting(), 4);
        ledger.apply("ns", &report("a", 2, 200, 1.0), None, 3);
        assert_eq!(
            ledger.namespace("ns").budgets["team"].reporting(),
            1,
            "a new period counts from its own reporters"
        );
    }

    #[test]
    fn a_new_period_starts_from_zero_and_late_spend_of_the_old_one_is_dropped() {
        let ledger = Ledger::open(None).expect("open");
        ledger.apply("ns", &report("a", 1, 100, 1.0), None, 1);
        ledger.apply("ns", &report("b", 1, 200, 0.5), None, 2);
        ledger.apply("ns", &report("a", 2, 100, 1.0), None, 3);
        let totals = ledger.totals("ns");
        assert_eq!(totals["team"].period_start, 200);
        assert_eq!(totals["team"].spent_usd, 0.5);
        assert!(ledger.totals("other").is_empty(), "namespaces are apart");
    }
}
