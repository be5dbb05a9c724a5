//! The sync channel over HTTP: the watch stream, usage reports and the
//! budgets' figures, each request authenticated and bound to the token's
//! namespace (a sidecar never names the namespace it reads or reports for).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use llmesh_crds::config::BudgetConfig;
use llmesh_crds::resources::{BudgetPeriod, BudgetStatus, VirtualKeyStatus};
use llmesh_crds::sync::{self, Frame, Hello, Report};
use llmesh_crds::{SidecarConfig, period};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;

use super::ledger::{Ledger, Namespace, Spend};
use super::metrics::SyncMetrics;
use super::{Authenticator, Identity, Refused};

/// Silence longer than this on a watch makes the sidecar reconnect, so the
/// server writes an empty line this often: a dead peer is noticed without
/// TCP keepalive tuning.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// A watch sends totals at most this often; reports get them in every ack.
const TOTALS_EVERY: Duration = Duration::from_millis(250);

/// A namespace's configuration and when it was published.
#[derive(Clone, Debug)]
pub struct Published {
    /// The compiled configuration.
    pub config: Arc<SidecarConfig>,
    /// When it was handed to the server (for the push-latency metric).
    pub at: Instant,
}

/// A sidecar instance with a watch open.
#[derive(Debug)]
struct Watcher {
    /// The configuration version it last said it serves (its hello, then
    /// its reports).
    version: String,
    /// Its open watches (a reconnect may overlap the old watch's end).
    watches: usize,
}

/// How many of a namespace's connected sidecars serve its current configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InSync {
    /// The configuration version in force (none before the first is published).
    pub config_version: Option<String>,
    /// Sidecar instances with a watch open.
    pub connected: u32,
    /// Of those, the ones that said they serve `config_version`.
    pub in_sync: u32,
}

/// The shared state of every sync request.
#[derive(Debug)]
pub struct SyncServer {
    ledger: Arc<Ledger>,
    auth: Arc<dyn Authenticator>,
    configs: watch::Sender<BTreeMap<String, Published>>,
    /// By namespace, then instance id.
    watchers: Mutex<HashMap<String, HashMap<String, Watcher>>>,
    /// Each namespace's totals frame and the ledger generation it was made
    /// for: made once for all of the namespace's watches, not once each.
    totals_frames: Mutex<HashMap<String, (u64, Bytes)>>,
    metrics: SyncMetrics,
}

impl SyncServer {
    /// A server over `ledger`, accepting whom `auth` accepts.
    pub fn new(ledger: Arc<Ledger>, auth: Arc<dyn Authenticator>, metrics: SyncMetrics) -> Arc<Self> {
        Arc::new(Self {
            ledger,
            auth,
            configs: watch::Sender::new(BTreeMap::new()),
            watchers: Mutex::default(),
            totals_frames: Mutex::default(),
            metrics,
        })
    }

    /// Makes `config` the one `namespace`'s sidecars serve; connected ones
    /// get it at once. Publishing the version already in force does nothing.
    pub fn publish(&self, namespace: &str, config: SidecarConfig) {
        self.configs.send_if_modified(|configs| {
            if configs
                .get(namespace)
                .is_some_and(|p| p.config.version == config.version)
            {
                return false;
            }
            let published = Published {
                config: Arc::new(config),
                at: Instant::now(),
            };
            configs.insert(namespace.to_owned(), published);
            true
        });
    }

    /// The routes of the sync channel.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route(sync::WATCH_PATH, post(watch_handler))
            .route(sync::REPORT_PATH, post(report_handler))
            .route(sync::BUDGETS_PATH, get(budgets_handler))
            .with_state(self.clone())
    }

    /// Who the request's token is for; a refusal is counted and logged. A
    /// request naming a namespace ([`sync::NAMESPACE_HEADER`]) other than
    /// the token's is refused: a sidecar reads and reports for its own only.
    async fn authenticate(&self, headers: &HeaderMap, request: &str) -> Result<Identity, Refused> {
        let identified = match headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            Some(token) => self.auth.identify(token.trim()).await,
            None => Err(Refused::NoToken),
        };
        let asked = headers
            .get(sync::NAMESPACE_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        identified
            .and_then(|identity| match asked {
                Some(asked) if asked != identity.namespace => Err(Refused::OtherNamespace {
                    token: identity.namespace,
                    asked,
                }),
                _ => Ok(identity),
            })
            .inspect_err(|refused| {
                self.metrics
                    .refused
                    .with_label_values(&[request, refused.reason()])
                    .inc();
                tracing::warn!(request, reason = %refused, "sync request refused");
            })
    }

    /// The namespaces with a published configuration.
    pub fn namespaces(&self) -> Vec<String> {
        self.configs.borrow().keys().cloned().collect()
    }

    /// The configuration published for `namespace`, if any.
    pub fn published(&self, namespace: &str) -> Option<Published> {
        self.configs.borrow().get(namespace).cloned()
    }

    /// The ledger the reports go to.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &SyncMetrics {
        &self.metrics
    }

    /// How many of `namespace`'s connected sidecars serve its current configuration.
    pub fn in_sync(&self, namespace: &str) -> InSync {
        let config_version = self.published(namespace).map(|p| p.config.version.clone());
        let watchers = self.watchers.lock();
        let instances = watchers.get(namespace);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        InSync {
            connected: count(instances.map_or(0, HashMap::len)),
            in_sync: count(instances.map_or(0, |i| {
                i.values()
                    .filter(|w| Some(&w.version) == config_version.as_ref())
                    .count()
            })),
            config_version,
        }
    }

    /// `namespace`'s totals frame as of ledger generation `generation` (or later).
    fn totals_frame(&self, namespace: &str, generation: u64) -> Bytes {
        let mut frames = self.totals_frames.lock();
        if let Some((made, frame)) = frames.get(namespace)
            && *made >= generation
        {
            return frame.clone();
        }
        let totals = self.ledger.totals(namespace);
        let frame = Bytes::from(Frame::Totals { totals }.to_line());
        frames.insert(namespace.to_owned(), (generation, frame.clone()));
        frame
    }

    fn watch_opened(&self, namespace: &str, instance: &str, version: &str) {
        let mut watchers = self.watchers.lock();
        let watcher = watchers
            .entry(namespace.to_owned())
            .or_default()
            .entry(instance.to_owned())
            .or_insert_with(|| Watcher {
                version: String::new(),
                watches: 0,
            });
        watcher.version = version.to_owned();
        watcher.watches += 1;
    }

    fn watch_closed(&self, namespace: &str, instance: &str) {
        let mut watchers = self.watchers.lock();
        let Some(instances) = watchers.get_mut(namespace) else {
            return;
        };
        if let Some(watcher) = instances.get_mut(instance) {
            watcher.watches -= 1;
            if watcher.watches == 0 {
                instances.remove(instance);
            }
        }
        if instances.is_empty() {
            watchers.remove(namespace);
        }
    }

    /// A connected sidecar reported the version it serves.
    fn serves(&self, namespace: &str, instance: &str, version: &str) {
        if let Some(watcher) = self
            .watchers
            .lock()
            .get_mut(namespace)
            .and_then(|i| i.get_mut(instance))
        {
            version.clone_into(&mut watcher.version);
        }
    }

    /// The spend of every VirtualKey in `namespace`'s configuration in its
    /// current period (its budget's calendar), from the ledger, at `now`.
    pub fn key_statuses(&self, namespace: &str, now: Timestamp) -> BTreeMap<String, VirtualKeyStatus> {
        self.statuses(namespace, |config, space| {
            config
                .keys
                .iter()
                .map(|(name, key)| {
                    let budget = key.budget.as_ref().and_then(|b| config.budgets.get(b));
                    let (kind, zone) = period::of_key(budget);
                    let spend = PeriodSpend::at(kind, zone, space.keys.get(name), now);
                    let status = VirtualKeyStatus {
                        spent_usd: Some(spend.spent_usd),
                        period: Some(spend.period),
                        period_end: spend.period_end,
                        last_report_at: spend.last_report_at,
                        ..VirtualKeyStatus::default()
                    };
                    (name.clone(), status)
                })
                .collect()
        })
    }

    /// The status of every budget in `namespace`'s configuration, from the
    /// ledger's spend, at `now`.
    pub fn budget_statuses(&self, namespace: &str, now: Timestamp) -> BTreeMap<String, BudgetStatus> {
        self.statuses(namespace, |config, space| {
            config
                .budgets
                .iter()
                .map(|(name, budget)| (name.clone(), budget_status(budget, space.budgets.get(name), now)))
                .collect()
        })
    }

    /// `read` over `namespace`'s published configuration and its spend in
    /// the ledger; empty where nothing is published.
    fn statuses<S>(
        &self,
        namespace: &str,
        read: impl FnOnce(&SidecarConfig, &Namespace) -> BTreeMap<String, S>,
    ) -> BTreeMap<String, S> {
        let configs = self.configs.borrow();
        let Some(published) = configs.get(namespace) else {
            return BTreeMap::new();
        };
        read(&published.config, &self.ledger.namespace(namespace))
    }
}

/// Spend in the period in force at `now` (spend of an earlier period counts
/// as zero: the calendar moved on), as a status shows it.
struct PeriodSpend {
    spent_usd: f64,
    /// `monthly (Europe/Berlin)`.
    period: String,
    period_end: Option<String>,
    last_report_at: Option<String>,
    reporting: Option<u32>,
}

impl PeriodSpend {
    fn at(kind: BudgetPeriod, zone_name: &str, spend: Option<&Spend>, now: Timestamp) -> Self {
        let zone = TimeZone::get(zone_name).unwrap_or(TimeZone::UTC);
        let start = period::start(kind, &zone, now);
        let current = spend.filter(|s| s.period_start == start);
        let rfc3339 = |seconds: i64| Timestamp::from_second(seconds).ok().map(|t| t.to_string());
        Self {
            spent_usd: current.map_or(0.0, |s| s.spent_usd),
            period: format!("{} ({zone_name})", kind.as_str()),
            period_end: period::next_start(kind, &zone, start).and_then(rfc3339),
            last_report_at: current
                .filter(|s| s.last_report_ms > 0)
                .and_then(|s| Timestamp::from_millisecond(s.last_report_ms).ok())
                .map(|t| t.to_string()),
            reporting: current.map(Spend::reporting),
        }
    }
}

/// A budget's status: its spend in the period in force at `now`, the state
/// its thresholds and limit give, and when the period ends.
pub fn budget_status(config: &BudgetConfig, spend: Option<&Spend>, now: Timestamp) -> BudgetStatus {
    let current = PeriodSpend::at(config.period, &config.time_zone, spend, now);
    let spent = current.spent_usd;
    let percent = if config.limit_usd > 0.0 {
        spent / config.limit_usd * 100.0
    } else {
        f64::INFINITY
    };
    let state = if spent >= config.limit_usd {
        "exceeded"
    } else if config.thresholds.iter().any(|t| f64::from(*t) <= percent) {
        "warning"
    } else {
        "ok"
    };
    BudgetStatus {
        period: Some(current.period),
        spent_usd: Some(spent),
        state: Some(state.to_owned()),
        period_end: current.period_end,
        last_report_at: current.last_report_at,
        reporting_sidecars: current.reporting,
        ..BudgetStatus::default()
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NoToken | Self::BadToken => StatusCode::UNAUTHORIZED,
            Self::OtherNamespace { .. } => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, self.to_string()).into_response()
    }
}

/// Counts a watch as open until it ends, however it ends.
struct Connected {
    server: Arc<SyncServer>,
    namespace: String,
    instance: String,
}

impl Connected {
    fn open(server: &Arc<SyncServer>, namespace: &str, hello: &Hello) -> Self {
        server.metrics.connected.inc();
        server.watch_opened(namespace, &hello.instance, &hello.config_version);
        Self {
            server: server.clone(),
            namespace: namespace.to_owned(),
            instance: hello.instance.clone(),
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.server.metrics.connected.dec();
        self.server.watch_closed(&self.namespace, &self.instance);
    }
}

async fn watch_handler(State(server): State<Arc<SyncServer>>, headers: HeaderMap, body: Bytes) -> Response {
    let Identity { namespace, pod } = match server.authenticate(&headers, "watch").await {
        Ok(identity) => identity,
        Err(refused) => return refused.into_response(),
    };
    let hello: Hello = match serde_json::from_slice(&body) {
        Ok(hello) => hello,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("invalid hello: {error}")).into_response(),
    };
    tracing::info!(
        namespace,
        pod = pod.as_deref().unwrap_or_default(),
        instance = hello.instance,
        version = hello.config_version,
        "sidecar connected"
    );
    let guard = Connected::open(&server, &namespace, &hello);
    let mut configs = server.configs.subscribe();
    let mut totals = server.ledger.subscribe();
    let frames = async_stream::stream! {
        let _guard = guard;
        let mut version = hello.config_version;
        let mut sent_totals = None;
        // The first pass sends what the sidecar lacks without waiting for a change.
        configs.mark_changed();
        totals.mark_changed();
        loop {
            tokio::select! {
                changed = configs.changed() => {
                    if changed.is_err() { break; }
                    let published = configs.borrow_and_update().get(&namespace).cloned();
                    if let Some(published) = published.filter(|p| p.config.version != version) {
                        version.clone_from(&published.config.version);
                        let frame = Frame::Config { config: Box::new((*published.config).clone()) };
                        yield Ok::<_, std::convert::Infallible>(Bytes::from(frame.to_line()));
                        server.metrics.push_seconds.observe(published.at.elapsed().as_secs_f64());
                    }
                }
                changed = totals.changed() => {
                    if changed.is_err() { break; }
                    let generation = *totals.borrow_and_update();
                    let frame = server.totals_frame(&namespace, generation);
                    if sent_totals.as_ref() != Some(&frame) {
                        sent_totals = Some(frame.clone());
                        yield Ok(frame);
                        tokio::time::sleep(TOTALS_EVERY).await;
                    }
                }
                () = tokio::time::sleep(KEEPALIVE) => yield Ok(Bytes::from_static(b"\n")),
            }
        }
    };
    ([(header::CONTENT_TYPE, sync::NDJSON)], Body::from_stream(frames)).into_response()
}

async fn report_handler(State(server): State<Arc<SyncServer>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    let Identity { namespace, pod } = match server.authenticate(&headers, "report").await {
        Ok(identity) => identity,
        Err(refused) => {
            server.metrics.reports.with_label_values(&["refused"]).inc();
            return refused.into_response();
        }
    };
    let report: Report = match serde_json::from_slice(&body) {
        Ok(report) => report,
        Err(error) => {
            server.metrics.reports.with_label_values(&["invalid"]).inc();
            return (StatusCode::BAD_REQUEST, format!("invalid report: {error}")).into_response();
        }
    };
    let applied = server.ledger.apply(
        &namespace,
        &report,
        pod.as_deref(),
        Timestamp::now().as_millisecond(),
    );
    server.ledger.durable(&applied).await;
    if applied.ack.applied {
        server.serves(&namespace, &report.instance, &report.config_version);
    }
    let result = if applied.ack.applied {
        "applied"
    } else {
        "duplicate"
    };
    server.metrics.reports.with_label_values(&[result]).inc();
    server
        .metrics
        .report_seconds
        .observe(started.elapsed().as_secs_f64());
    Json(applied.ack).into_response()
}

/// What [`sync::BUDGETS_PATH`] answers.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Figures {
    /// Status by budget name.
    budgets: BTreeMap<String, BudgetStatus>,
    /// Spend by VirtualKey name.
    keys: BTreeMap<String, VirtualKeyStatus>,
    /// The configuration version in force, the sidecars connected and how
    /// many of them serve it.
    #[serde(flatten)]
    in_sync: InSync,
}

async fn budgets_handler(State(server): State<Arc<SyncServer>>, headers: HeaderMap) -> Response {
    let namespace = match server.authenticate(&headers, "budgets").await {
        Ok(identity) => identity.namespace,
        Err(refused) => return refused.into_response(),
    };
    let now = Timestamp::now();
    Json(Figures {
        budgets: server.budget_statuses(&namespace, now),
        keys: server.key_statuses(&namespace, now),
        in_sync: server.in_sync(&namespace),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use llmesh_crds::resources::{BudgetAction, BudgetPeriod, FailMode};

    use super::*;

    fn config() -> BudgetConfig {
        BudgetConfig {
            limit_usd: 10.0,
            period: BudgetPeriod::Monthly,
            time_zone: "Europe/Berlin".to_owned(),
            thresholds: vec![50],
            action: BudgetAction::Block,
            downgrade_to: None,
            max_tokens_per_request: None,
            max_tokens_per_session: None,
            fail_mode: FailMode::Open,
        }
    }

    #[test]
    fn the_status_follows_the_calendar_of_the_budgets_time_zone() {
        // 2026-01-31 23:30 UTC is already February 1st in Berlin.
        let now: Timestamp = "2026-01-31T23:30:00Z".parse().expect("time");
        let january: Timestamp = "2025-12-31T23:00:00Z".parse().expect("time");
        let february: Timestamp = "2026-01-31T23:00:00Z".parse().expect("time");
        let spend = |start: Timestamp, usd| Spend {
            period_start: start.as_second(),
            spent_usd: usd,
            tokens: 0,
            last_report_ms: now.as_millisecond(),
            reporters: BTreeSet::from(["a".to_owned(), "b".to_owned()]),
            earlier_reporters: 0,
        };
        let old = budget_status(&config(), Some(&spend(january, 12.0)), now);
        assert_eq!(old.spent_usd, Some(0.0), "January's spend is over");
        assert_eq!(old.state.as_deref(), Some("ok"));
        assert_eq!(old.period_end.as_deref(), Some("2026-02-28T23:00:00Z"));

        let warning = budget_status(&config(), Some(&spend(february, 6.0)), now);
        assert_eq!(warning.state.as_deref(), Some("warning"));
        assert_eq!(warning.reporting_sidecars, Some(2));
        let exceeded = budget_status(&config(), Some(&spend(february, 10.0)), now);
        assert_eq!(exceeded.state.as_deref(), Some("exceeded"));
    }
}
