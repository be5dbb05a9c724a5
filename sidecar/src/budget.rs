//! Budgets, enforced in this sidecar: spend per calendar period, thresholds,
//! the action once a budget is exhausted, and token ceilings per request and
//! per session (`x-llmesh-session-id`) that stop a runaway agent loop.
//!
//! Spend is kept per budget and period and written to the local state file
//! ([`crate::state`]) so it survives a restart. Each sidecar only knows its
//! own spend; summing across sidecars is the operator's job, later.

mod period;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use llmesh_crds::config::BudgetConfig;
use llmesh_crds::resources::BudgetAction;
use parking_lot::Mutex;

use crate::access_log::Settle;
use crate::api::Usage;
use crate::metrics::Metrics;
use crate::routing::Estimate;
use crate::state::file::Spend;

/// The header that names an agent session for the per-session ceiling.
pub const SESSION_HEADER: &str = "x-llmesh-session-id";

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
    /// The session has used its tokens.
    #[error(
        "session {session} has used {used} tokens; budget {budget} allows {limit} per session (x-llmesh-session-id)"
    )]
    SessionCeiling {
        /// The `Budget`.
        budget: String,
        /// The session id.
        session: String,
        /// Tokens used so far.
        used: u64,
        /// The ceiling.
        limit: u64,
    },
}

impl BudgetError {
    /// Seconds until the request could succeed, for `Retry-After`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Exhausted { resets_in, .. } => *resets_in,
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
    dirty: AtomicBool,
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
            state: Mutex::new(State { spend, sessions }),
            dirty: AtomicBool::new(false),
        }
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
                    limit,
                });
            }
        }
        let now = self.clock.now();
        let spend = self.current(&mut state, name, config, now);
        let exhausted = spend.spent_usd >= config.limit_usd;
        self.publish(name, config, spend.spent_usd);
        drop(state);
        let charge = Charge {
            budgets: self.clone(),
            budget: name.to_owned(),
            config: config.clone(),
            session: session.map(str::to_owned),
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
                    spent: self.spent(name),
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
            let spend = self.current(&mut state, name, config, now);
            self.publish_period_end(name, config, spend.period_start);
            self.publish(name, config, spend.spent_usd);
        }
    }

    /// USD spent in the budget's period as last recorded.
    pub fn spent(&self, name: &str) -> f64 {
        self.state.lock().spend.get(name).map_or(0.0, |s| s.spent_usd)
    }

    /// Whether anything changed since the last call; the state file is
    /// rewritten only then.
    pub fn take_changed(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Marks the state as not yet written (the write failed; the next flush retries).
    pub fn mark_changed(&self) {
        self.dirty.store(true, Ordering::Release);
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
        let spent = spend.spent_usd;
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

fn zone(config: &BudgetConfig) -> TimeZone {
    // The compiler checked the name; UTC only if the zone database changed since.
    TimeZone::get(&config.time_zone).unwrap_or(TimeZone::UTC)
}

/// A request's claim on a budget, settled with its cost and tokens.
#[derive(Debug)]
pub struct Charge {
    budgets: Arc<Budgets>,
    budget: String,
    config: BudgetConfig,
    session: Option<String>,
}

impl Settle for Charge {
    fn settle(&self, usage: &Usage, cost: Option<f64>) {
        self.budgets
            .record(&self.budget, &self.config, self.session.as_deref(), usage, cost);
    }
}

#[cfg(test)]
mod tests;
