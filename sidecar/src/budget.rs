//! Budgets, enforced in this sidecar: spend per calendar period, thresholds,
//! the action once a budget is exhausted, and token ceilings per request and
//! per session (`x-llmesh-session-id`) that stop a runaway agent loop.
//!
//! Spend is kept per budget and period and written to the local state file
//! ([`crate::state`]) so it survives a restart. With the sync channel
//! ([`crate::sync`]) a budget is enforced on the operator's cluster-wide
//! total plus this sidecar's spend not yet acknowledged; without it, on this
//! sidecar's own spend. Either way a request's estimated maximum cost is
//! reserved while it runs, so concurrent requests see each other.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use llmesh_crds::config::BudgetConfig;
use llmesh_crds::period;
use llmesh_crds::resources::{BudgetAction, BudgetPeriod, FailMode};
use llmesh_crds::sync::{Ack, BudgetDelta, BudgetTotal, Report};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::api::Usage;
use crate::metrics::Metrics;
use crate::pricing;
use crate::routing::{Estimate, Route};
use crate::settle::Settle;
use crate::state::file::{SavedSync, Spend};
use crate::unsaved::Unsaved;

/// The header that names an agent session for the per-session ceiling.
pub const SESSION_HEADER: &str = "x-llmesh-session-id";

/// With `failMode: closed`, a budget refuses requests once nothing was heard
/// from the operator for this long (the watch's keepalive comes every 15 s).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Sessions remembered per sidecar. A bound, so an app minting a session id
/// per request cannot grow memory without end; past it the session that has
/// used the fewest tokens is forgotten first.
const MAX_SESSIONS: usize = 10_000;

/// Where "now" comes from; tests move it by hand across period boundaries.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A request a budget does not allow.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// The budget's spend reached its limit and its action is `block`.
    #[error(
        "budget {budget} is exhausted: ${spent:.4} spent of ${limit:.4} this {period} period{}",
        resets_in.map(|s| format!("; it resets in {s} s")).unwrap_or_default()
    )]
    Exhausted {
        /// The `Budget`.
        budget: String,
        /// USD spent.
        spent: f64,
        /// USD limit.
        limit: f64,
        /// `daily`, `weekly`, `monthly` or `total`.
        period: &'static str,
        /// Seconds until the next period (none for `total`).
        resets_in: Option<u64>,
    },
    /// The request asks for more tokens than one request may use.
    #[error(
        "request asks for about {asked} tokens (input estimate plus max_tokens); budget {budget} allows {limit} per request"
    )]
    RequestCeiling {
        /// The `Budget`.
        budget: String,
        /// The estimate.
        asked: u64,
        /// The ceiling.
        limit: u64,
    },
    /// The budget fails closed and the operator's totals are stale.
    #[error(
        "budget {budget} cannot be checked: no cluster-wide spend from the operator for {stale_secs} s (failMode closed)"
    )]
    Unavailable {
        /// The `Budget`.
        budget: String,
        /// Seconds since the operator was last heard from (`u64::MAX`: never).
        stale_secs: u64,
    },
    /// The session's tokens so far plus this request's input estimate pass its ceiling.
    #[error(
        "session {session} has used {used} tokens, and this request's input is estimated at {estimated} more ({} in all); budget {budget} allows {limit} per session (x-llmesh-session-id)",
        used.saturating_add(*estimated)
    )]
    SessionCeiling {
        /// The `Budget`.
        budget: String,
        /// The session id.
        session: String,
        /// Tokens used so far.
        used: u64,
        /// This request's input, estimated.
        estimated: u64,
        /// The ceiling.
        limit: u64,
    },
}

impl BudgetError {
    /// Seconds until the request could succeed, for `Retry-After`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Exhausted { resets_in, .. } => *resets_in,
            Self::Unavailable { .. } => Some(STALE_AFTER.as_secs() / 2),
            Self::RequestCeiling { .. } | Self::SessionCeiling { .. } => None,
        }
    }
}

/// What admission decided.
#[derive(Debug)]
pub enum Admitted {
    /// Serve the request as asked.
    Serve(Charge),
    /// Serve it from this cheaper route instead.
    Downgrade(Charge, String),
}

#[derive(Debug, Default)]
struct State {
    spend: BTreeMap<String, Spend>,
    sessions: HashMap<(String, String), u64>,
    /// USD held by requests still running, by budget.
    reserved: HashMap<String, f64>,
    /// The cluster-wide view, when the sync channel is on.
    sync: Option<Shared>,
}

/// This sidecar's part of the cluster-wide accounting.
#[derive(Debug)]
struct Shared {
    /// What is kept in the state file.
    saved: SavedSync,
    /// The operator's totals, as last heard.
    totals: BTreeMap<String, BudgetTotal>,
    /// When the operator was last heard from (a frame, a keepalive or an ack).
    heard: Option<Timestamp>,
    /// The configuration in force changed since the last report: the next
    /// one is due even without spend, so the operator learns the version.
    version_due: bool,
}

impl Shared {
    /// Spend of `budget` in the period starting `start` not yet acknowledged.
    fn unreported(&self, budget: &str, start: i64) -> f64 {
        let pending = self.saved.in_flight.iter().flat_map(|r| r.budgets.get(budget));
        pending
            .chain(self.saved.unreported.get(budget))
            .filter(|d| d.period_start == start)
            .map(|d| d.spent_usd)
            .sum()
    }

    /// Whether anything waits to be reported or acknowledged.
    fn waiting(&self) -> bool {
        self.version_due
            || self.saved.in_flight.is_some()
            || !self.saved.unreported.is_empty()
            || !self.saved.unreported_keys.is_empty()
    }

    /// The cluster's spend of `budget` in the period starting `start`,
    /// plus this sidecar's not yet in it.
    fn spent(&self, budget: &str, start: i64) -> f64 {
        let total = self
            .totals
            .get(budget)
            .filter(|t| t.period_start == start)
            .map_or(0.0, |t| t.spent_usd);
        total + self.unreported(budget, start)
    }
}

/// Spend by budget, and tokens used by budget and then session id: what the
/// state file keeps of [`Budgets`].
pub type Recorded = (BTreeMap<String, Spend>, BTreeMap<String, BTreeMap<String, u64>>);

/// Every budget's spend in this sidecar; survives reloads, and restarts
/// through the state file.
#[derive(Debug)]
pub struct Budgets {
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Spend changed since the state file was last written.
    dirty: Unsaved,
    /// Woken when there is spend to report.
    unreported: Notify,
}

impl Budgets {
    /// Budgets carrying on from what was `recorded` (empty maps: from zero).
    pub fn new(clock: Arc<dyn Clock>, metrics: Arc<Metrics>, recorded: Recorded) -> Self {
        let (spend, sessions) = recorded;
        let sessions = sessions
            .into_iter()
            .flat_map(|(budget, sessions)| {
                sessions
                    .into_iter()
                    .map(move |(id, used)| ((budget.clone(), id), used))
            })
            .collect();
        Self {
            clock,
            metrics,
            state: Mutex::new(State {
                spend,
                sessions,
                ..State::default()
            }),
            dirty: Unsaved::default(),
            unreported: Notify::new(),
        }
    }

    /// Turns on cluster-wide accounting, carrying on from what the state
    /// file kept of it (none: a new instance id, nothing unreported).
    pub fn enable_sync(&self, saved: Option<SavedSync>) {
        let saved = saved.unwrap_or_else(|| SavedSync {
            instance: uuid::Uuid::new_v4().to_string(),
            next_seq: 1,
            in_flight: None,
            unreported: BTreeMap::new(),
            unreported_keys: BTreeMap::new(),
        });
        let shared = Shared {
            saved,
            totals: BTreeMap::new(),
            heard: None,
            version_due: false,
        };
        let waiting = shared.waiting();
        self.state.lock().sync = Some(shared);
        if waiting {
            self.unreported.notify_one();
        }
    }

    /// This sidecar's instance id on the sync channel.
    pub fn instance(&self) -> Option<String> {
        self.state.lock().sync.as_ref().map(|s| s.saved.instance.clone())
    }

    /// What the state file keeps of the cluster-wide accounting.
    pub fn saved_sync(&self) -> Option<SavedSync> {
        self.state.lock().sync.as_ref().map(|s| s.saved.clone())
    }

    /// Resolves once there may be spend to report.
    pub async fn spend_to_report(&self) {
        self.unreported.notified().await;
    }

    /// The report to send: the one not yet acknowledged (resent as it was,
    /// same sequence), else everything settled since, under the next
    /// sequence. `None` when there is nothing to report.
    pub fn next_report(&self, config_version: &str) -> Option<Report> {
        let mut state = self.state.lock();
        let shared = state.sync.as_mut()?;
        if shared.saved.in_flight.is_none() && shared.waiting() {
            shared.version_due = false;
            let report = Report {
                instance: shared.saved.instance.clone(),
                seq: shared.saved.next_seq,
                config_version: config_version.to_owned(),
                budgets: std::mem::take(&mut shared.saved.unreported),
                keys: std::mem::take(&mut shared.saved.unreported_keys),
            };
            shared.saved.next_seq += 1;
            shared.saved.in_flight = Some(report);
            self.mark_changed();
        }
        shared.saved.in_flight.clone()
    }

    /// The operator acknowledged a report: its spend is in the totals now.
    pub fn acknowledged(&self, ack: Ack) {
        let now = self.clock.now();
        let mut state = self.state.lock();
        let Some(shared) = state.sync.as_mut() else { return };
        if shared.saved.in_flight.as_ref().is_some_and(|r| r.seq == ack.seq) {
            shared.saved.in_flight = None;
        }
        shared.totals = ack.totals;
        shared.heard = Some(now);
        drop(state);
        self.mark_changed();
    }

    /// The operator sent new totals.
    pub fn set_totals(&self, totals: BTreeMap<String, BudgetTotal>) {
        let now = self.clock.now();
        if let Some(shared) = self.state.lock().sync.as_mut() {
            shared.totals = totals;
            shared.heard = Some(now);
        }
    }

    /// The operator is there (a keepalive on the watch).
    pub fn heard_from_operator(&self) {
        let now = self.clock.now();
        if let Some(shared) = self.state.lock().sync.as_mut() {
            shared.heard = Some(now);
        }
    }

    /// Whether spend (or a new configuration version) is waiting to be acknowledged.
    pub fn has_unreported(&self) -> bool {
        self.state.lock().sync.as_ref().is_some_and(Shared::waiting)
    }

    /// A new configuration is in force: report it soon, spend or not, so
    /// the operator counts this sidecar in sync.
    pub fn report_version(&self) {
        if let Some(shared) = self.state.lock().sync.as_mut() {
            shared.version_due = true;
            self.unreported.notify_one();
        }
    }

    /// What settles a request's spend against `key` for its VirtualKey
    /// status, in the calendar of the key's `budget`; none without the sync
    /// channel (only the operator shows a key's spend).
    pub fn key_spend(self: &Arc<Self>, key: &str, budget: Option<&BudgetConfig>) -> Option<KeySpend> {
        self.state.lock().sync.as_ref()?;
        let (kind, zone_name) = period::of_key(budget);
        Some(KeySpend {
            budgets: self.clone(),
            key: key.to_owned(),
            period: kind,
            zone: TimeZone::get(zone_name).unwrap_or(TimeZone::UTC),
        })
    }

    fn record_key(&self, spend: &KeySpend, usage: &Usage, cost: Option<f64>) {
        let start = period::start(spend.period, &spend.zone, self.clock.now());
        let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        let cost = cost.filter(|c| *c > 0.0).unwrap_or(0.0);
        if cost == 0.0 && tokens == 0 {
            return;
        }
        let mut state = self.state.lock();
        let Some(shared) = state.sync.as_mut() else { return };
        add_delta(&mut shared.saved.unreported_keys, &spend.key, start, cost, tokens);
        drop(state);
        self.unreported.notify_one();
        self.mark_changed();
    }

    /// Checks a request against its key's budget.
    ///
    /// # Errors
    /// A token ceiling is exceeded, or the budget is exhausted and blocks.
    pub fn admit(
        self: &Arc<Self>,
        name: &str,
        config: &BudgetConfig,
        estimate: &Estimate,
        reserve: f64,
        session: Option<&str>,
    ) -> Result<Admitted, BudgetError> {
        let asked = estimate
            .prompt_tokens
            .saturating_add(estimate.max_output_tokens.unwrap_or(0));
        if let Some(limit) = config.max_tokens_per_request
            && asked > limit
        {
            self.count_ceiling(name, "request");
            return Err(BudgetError::RequestCeiling {
                budget: name.to_owned(),
                asked,
                limit,
            });
        }
        let mut state = self.state.lock();
        if let (Some(limit), Some(session)) = (config.max_tokens_per_session, session) {
            let used = state
                .sessions
                .get(&(name.to_owned(), session.to_owned()))
                .copied()
                .unwrap_or(0);
            if used.saturating_add(estimate.prompt_tokens) > limit {
                drop(state);
                self.count_ceiling(name, "session");
                return Err(BudgetError::SessionCeiling {
                    budget: name.to_owned(),
                    session: session.to_owned(),
                    used,
                    estimated: estimate.prompt_tokens,
                    limit,
                });
            }
        }
        let now = self.clock.now();
        if config.fail_mode == FailMode::Closed
            && let Some(shared) = &state.sync
        {
            let stale = shared
                .heard
                .map(|heard| (now - heard).get_seconds().max(0).unsigned_abs());
            if stale.is_none_or(|s| s >= STALE_AFTER.as_secs()) {
                drop(state);
                return Err(BudgetError::Unavailable {
                    budget: name.to_owned(),
                    stale_secs: stale.unwrap_or(u64::MAX),
                });
            }
        }
        let spent = self.effective(&mut state, name, config, now);
        let reserved = state.reserved.get(name).copied().unwrap_or(0.0);
        let exhausted = spent + reserved >= config.limit_usd;
        self.publish(name, config, spent);
        let hold = if exhausted { 0.0 } else { reserve };
        if hold > 0.0 {
            *state.reserved.entry(name.to_owned()).or_default() += hold;
        }
        drop(state);
        let charge = Charge {
            budgets: self.clone(),
            budget: name.to_owned(),
            config: config.clone(),
            session: session.map(str::to_owned),
            reserved: hold,
            settled: AtomicBool::new(false),
        };
        if !exhausted {
            return Ok(Admitted::Serve(charge));
        }
        let action = match config.action {
            BudgetAction::Block => "block",
            BudgetAction::Downgrade => "downgrade",
            BudgetAction::Alert => "alert",
        };
        self.metrics
            .budget_exceeded
            .with_label_values(&[name, action])
            .inc();
        match (config.action, &config.downgrade_to) {
            (BudgetAction::Downgrade, Some(route)) => Ok(Admitted::Downgrade(charge, route.clone())),
            (BudgetAction::Alert, _) => {
                tracing::warn!(
                    budget = name,
                    limit_usd = config.limit_usd,
                    "budget exceeded; serving (action alert)"
                );
                Ok(Admitted::Serve(charge))
            }
            _ => {
                let zone = zone(config);
                let start = period::start(config.period, &zone, now);
                let resets_in = period::next_start(config.period, &zone, start)
                    .map(|next| u64::try_from(next - now.as_second()).unwrap_or(0).max(1));
                Err(BudgetError::Exhausted {
                    budget: name.to_owned(),
                    spent,
                    limit: config.limit_usd,
                    period: config.period.as_str(),
                    resets_in,
                })
            }
        }
    }

    /// Publishes every configured budget's limit and current spend (restored
    /// from the state file, or zero), so dashboards see a budget before its
    /// first request.
    pub fn publish_all(&self, budgets: &BTreeMap<String, BudgetConfig>) {
        let now = self.clock.now();
        let mut state = self.state.lock();
        for (name, config) in budgets {
            let period_start = self.current(&mut state, name, config, now).period_start;
            self.publish_period_end(name, config, period_start);
            let spent = self.effective(&mut state, name, config, now);
            self.publish(name, config, spent);
        }
    }

    /// The spend a budget is enforced on: the cluster's total plus this
    /// sidecar's unacknowledged spend, and never less than this sidecar's
    /// own spend in the period.
    fn effective(&self, state: &mut State, name: &str, config: &BudgetConfig, now: Timestamp) -> f64 {
        let spend = self.current(state, name, config, now);
        let (own, start) = (spend.spent_usd, spend.period_start);
        state
            .sync
            .as_ref()
            .map_or(own, |shared| shared.spent(name, start).max(own))
    }

    /// USD spent in the budget's period as last recorded by this sidecar.
    pub fn spent(&self, name: &str) -> f64 {
        self.state.lock().spend.get(name).map_or(0.0, |s| s.spent_usd)
    }

    /// USD held by requests still running.
    pub fn reserved(&self, name: &str) -> f64 {
        self.state.lock().reserved.get(name).copied().unwrap_or(0.0)
    }

    fn release(&self, budget: &str, amount: f64) {
        if amount <= 0.0 {
            return;
        }
        let mut state = self.state.lock();
        if let Some(held) = state.reserved.get_mut(budget) {
            *held -= amount;
            // Float sums drift: anything this close to zero is nothing held.
            if *held <= 1e-12 {
                state.reserved.remove(budget);
            }
        }
    }

    /// Whether anything changed since the last call; the state file is
    /// rewritten only then.
    pub fn take_changed(&self) -> bool {
        self.dirty.take()
    }

    /// Marks the state as not yet written (the write failed; the next flush retries).
    pub fn mark_changed(&self) {
        self.dirty.mark();
    }

    /// Returns once spend changed since the state file was last written.
    pub async fn changed(&self) {
        self.dirty.marked().await;
    }

    /// What the state file keeps.
    pub fn recorded(&self) -> Recorded {
        let state = self.state.lock();
        let mut sessions: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((budget, id), used) in &state.sessions {
            sessions
                .entry(budget.clone())
                .or_default()
                .insert(id.clone(), *used);
        }
        (state.spend.clone(), sessions)
    }

    /// The budget's spend in the current period, starting a new period
    /// (at zero) when the calendar has moved on.
    fn current<'a>(
        &self,
        state: &'a mut State,
        name: &str,
        config: &BudgetConfig,
        now: Timestamp,
    ) -> &'a mut Spend {
        let start = period::start(config.period, &zone(config), now);
        let spend = state.spend.entry(name.to_owned()).or_insert(Spend {
            period_start: start,
            spent_usd: 0.0,
            thresholds_crossed: 0,
        });
        if spend.period_start != start {
            tracing::info!(
                budget = name,
                spent_usd = spend.spent_usd,
                "budget period ended; spend starts again at zero"
            );
            *spend = Spend {
                period_start: start,
                spent_usd: 0.0,
                thresholds_crossed: 0,
            };
            self.publish_period_end(name, config, start);
            self.mark_changed();
        }
        spend
    }

    fn record(
        &self,
        budget: &str,
        config: &BudgetConfig,
        session: Option<&str>,
        usage: &Usage,
        cost: Option<f64>,
    ) {
        let now = self.clock.now();
        let mut state = self.state.lock();
        if let Some(session) = session {
            let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            if state.sessions.len() >= MAX_SESSIONS {
                let fewest = state
                    .sessions
                    .iter()
                    .min_by_key(|(_, used)| **used)
                    .map(|(k, _)| k.clone());
                if let Some(fewest) = fewest {
                    state.sessions.remove(&fewest);
                }
            }
            let used = state
                .sessions
                .entry((budget.to_owned(), session.to_owned()))
                .or_insert(0);
            *used = used.saturating_add(tokens);
            self.mark_changed();
        }
        let Some(cost) = cost.filter(|c| *c > 0.0) else {
            return;
        };
        let spend = self.current(&mut state, budget, config, now);
        spend.spent_usd += cost;
        let start = spend.period_start;
        if let Some(shared) = state.sync.as_mut() {
            let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
            add_delta(&mut shared.saved.unreported, budget, start, cost, tokens);
            self.unreported.notify_one();
        }
        let spent = self.effective(&mut state, budget, config, now);
        let spend = self.current(&mut state, budget, config, now);
        let percent = if config.limit_usd > 0.0 {
            spent / config.limit_usd * 100.0
        } else {
            f64::INFINITY
        };
        let newly: Vec<u32> = config
            .thresholds
            .iter()
            .copied()
            .filter(|t| *t > spend.thresholds_crossed && f64::from(*t) <= percent)
            .collect();
        if let Some(highest) = newly.last() {
            spend.thresholds_crossed = *highest;
        }
        drop(state);
        self.mark_changed();
        for threshold in newly {
            tracing::warn!(
                target: "llmesh::budget",
                budget,
                threshold_percent = threshold,
                spent_usd = spent,
                limit_usd = config.limit_usd,
                "budget threshold crossed"
            );
            self.metrics
                .budget_thresholds
                .with_label_values(&[budget, &threshold.to_string()])
                .inc();
        }
        self.publish(budget, config, spent);
    }

    /// Publishes when the period starting at `period_start` ends, so alerts
    /// can tell whether the burn rate exhausts the budget before it (a
    /// `total` budget has no end). Called when a period begins, not per request.
    fn publish_period_end(&self, budget: &str, config: &BudgetConfig, period_start: i64) {
        if let Some(end) = period::next_start(config.period, &zone(config), period_start) {
            #[allow(clippy::cast_precision_loss)] // Unix seconds fit a double exactly
            self.metrics
                .budget_period_end
                .with_label_values(&[budget, config.period.as_str()])
                .set(end as f64);
        }
    }

    fn publish(&self, budget: &str, config: &BudgetConfig, spent: f64) {
        let labels = [budget, config.period.as_str()];
        self.metrics.budget_spent.with_label_values(&labels).set(spent);
        self.metrics
            .budget_limit
            .with_label_values(&labels)
            .set(config.limit_usd);
        self.metrics
            .budget_remaining
            .with_label_values(&labels)
            .set((config.limit_usd - spent).max(0.0));
    }

    fn count_ceiling(&self, budget: &str, ceiling: &str) {
        self.metrics
            .token_ceiling_rejections
            .with_label_values(&[budget, ceiling])
            .inc();
    }
}

/// Output tokens a request without `max_tokens` is assumed to ask for when
/// its maximum cost is reserved.
pub const DEFAULT_OUTPUT_ALLOWANCE: u64 = 1024;

/// USD a request may cost at most on `route`: its input estimate plus
/// `max_tokens` (or [`DEFAULT_OUTPUT_ALLOWANCE`]) at the dearest priced
/// target. Unpriced targets cost nothing here, as they do when settled.
pub fn max_cost(route: &Route, estimate: &Estimate) -> f64 {
    let usage = Usage::new(
        estimate.prompt_tokens,
        estimate.max_output_tokens.unwrap_or(DEFAULT_OUTPUT_ALLOWANCE),
        0,
        0,
        0,
    );
    route
        .targets
        .targets
        .iter()
        .filter_map(|t| t.price.as_ref())
        .map(|price| pricing::cost(price, &usage))
        .fold(0.0, f64::max)
}

/// Adds spend settled in the period starting `start` to `name`'s delta.
fn add_delta(deltas: &mut BTreeMap<String, BudgetDelta>, name: &str, start: i64, cost: f64, tokens: u64) {
    let delta = deltas.entry(name.to_owned()).or_insert(BudgetDelta {
        period_start: start,
        ..BudgetDelta::default()
    });
    if delta.period_start != start {
        // The period turned since the last report: what is left of the old
        // one is dropped (the operator closed it), the new one starts here.
        *delta = BudgetDelta {
            period_start: start,
            ..BudgetDelta::default()
        };
    }
    delta.spent_usd += cost;
    delta.tokens = delta.tokens.saturating_add(tokens);
}

fn zone(config: &BudgetConfig) -> TimeZone {
    // The compiler checked the name; UTC only if the zone database changed since.
    TimeZone::get(&config.time_zone).unwrap_or(TimeZone::UTC)
}

/// A request's claim on a budget: its estimated maximum cost, held while it
/// runs, settled with its actual cost and tokens (or released if the request
/// ends without settling).
#[derive(Debug)]
pub struct Charge {
    budgets: Arc<Budgets>,
    budget: String,
    config: BudgetConfig,
    session: Option<String>,
    reserved: f64,
    settled: AtomicBool,
}

impl Settle for Charge {
    fn settle(&self, usage: &Usage, cost: Option<f64>) {
        if self.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        self.budgets
            .record(&self.budget, &self.config, self.session.as_deref(), usage, cost);
        self.budgets.release(&self.budget, self.reserved);
    }
}

/// A request's spend with a VirtualKey, settled into the next report.
#[derive(Debug)]
pub struct KeySpend {
    budgets: Arc<Budgets>,
    key: String,
    period: BudgetPeriod,
    zone: TimeZone,
}

impl Settle for KeySpend {
    fn settle(&self, usage: &Usage, cost: Option<f64>) {
        self.budgets.record_key(self, usage, cost);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if !self.settled.swap(true, Ordering::AcqRel) {
            self.budgets.release(&self.budget, self.reserved);
        }
    }
}

#[cfg(test)]
mod tests;
