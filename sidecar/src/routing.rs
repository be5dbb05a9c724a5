//! Route: from the `model` an app sends to the ordered targets that may serve it.
//!
//! A [`Runtime`] is one configuration made live: provider adapters built,
//! routes resolved to them. It is immutable; a reload builds a new one and
//! swaps it in, so a request sees one configuration from start to end.
//! Target health (breakers, latency, load) lives outside it, in the
//! [`HealthRegistry`], and survives reloads.

mod estimate;
mod rules;
mod strategy;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use llmesh_crds::SidecarConfig;
use llmesh_crds::config::{
    BreakerConfig, CacheConfig, RetriesConfig, SemanticCacheConfig, TargetConfig, TimeoutsConfig,
};
use llmesh_crds::resources::{ErrorClass, Price, RuleMatch, Strategy};

pub use estimate::Estimate;
pub use rules::RequestFacts;
pub use strategy::Selector;

use crate::api::embeddings::{EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse};
use crate::eval::Sampling;
use crate::health::{HealthRegistry, TargetKey, TargetState};
use crate::providers::{self, Deps, ErrorKind, Provider, ProviderError};

/// How long embedding a question may take before the request goes on
/// without semantic matching: embeddings answer in tens of milliseconds,
/// and a slow one should not cost more than a fraction of a generation.
const EMBED_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the `model` an app sent cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The `model` names no route.
    #[error("model {0:?} is not a route of this gateway; GET /v1/models lists them")]
    Unknown(String),
    /// The route exists as a resource but is invalid, so it is not served.
    #[error("route {alias:?} is not in force: {reason}")]
    NotInForce {
        /// The alias.
        alias: String,
        /// The resource's problems.
        reason: String,
    },
}

/// One live configuration.
#[derive(Debug, Default)]
pub struct Runtime {
    /// The config version this was built from.
    pub version: String,
    /// Names of the mock providers (the only ones drills may touch).
    mock_providers: std::collections::BTreeSet<String>,
    routes: BTreeMap<String, Arc<Route>>,
    /// The virtual keys requests are made with.
    pub keys: crate::auth::Keys,
    /// The budgets keys name.
    pub budgets: BTreeMap<String, llmesh_crds::config::BudgetConfig>,
    /// Why routes that exist as resources are not served, by alias, so a
    /// request for one is told why instead of only "unknown".
    rejected: BTreeMap<String, String>,
}

/// A route alias and how it is served.
#[derive(Debug)]
pub struct Route {
    /// What apps send as `model`.
    pub alias: String,
    /// The `LLMRoute` it came from.
    pub resource: String,
    /// How targets are ordered.
    pub strategy: Strategy,
    /// The route's own targets.
    pub targets: TargetSet,
    /// Conditional target sets; the first match replaces `targets`.
    pub rules: Vec<Rule>,
    /// Steps after the route's own targets.
    pub fallbacks: Vec<FallbackStep>,
    /// Retries of one target.
    pub retries: RetriesConfig,
    /// Time limits.
    pub timeouts: Timeouts,
    /// When targets are shed.
    pub breaker: BreakerConfig,
    /// Prompts and answers go into the access log.
    pub log_content: bool,
    /// Response caching, when on.
    pub cache: Option<CacheConfig>,
    /// The embeddings model of a semantic cache.
    pub semantic: Option<Arc<SemanticTarget>>,
    /// Checks on prompts and answers.
    pub guardrails: Arc<crate::guardrails::Guardrails>,
    /// Eval sampling, when on.
    pub eval: Option<Sampling>,
    /// Shadow traffic, when on.
    pub mirror: Option<Mirror>,
}

impl Mirror {
    /// Whether the request with this id is copied to the candidate.
    pub fn copies(&self, request_id: &str) -> bool {
        crate::eval::in_share(request_id, self.percent)
    }
}

/// A route's shadow candidate.
#[derive(Debug)]
pub struct Mirror {
    /// The candidate (a set of one, built as any target is).
    pub targets: TargetSet,
    /// Percent of requests copied.
    pub percent: f64,
    /// Whether the candidate's spend counts against the caller's budget.
    pub count_budget: bool,
}

/// Targets that are alternatives to each other, with their selection state.
#[derive(Debug)]
pub struct TargetSet {
    /// The targets, in configuration order.
    pub targets: Vec<Target>,
    selector: Selector,
}

/// A conditional target set.
#[derive(Debug)]
pub struct Rule {
    /// The condition.
    pub matches: RuleMatch,
    /// Its targets.
    pub targets: TargetSet,
}

/// One fallback step.
#[derive(Debug)]
pub struct FallbackStep {
    /// What to try.
    pub to: FallbackTo,
    /// The failure classes that lead here.
    pub on: Vec<ErrorClass>,
}

/// Where a fallback step goes.
#[derive(Debug)]
pub enum FallbackTo {
    /// Another route's own targets, in its strategy's order (not its fallbacks:
    /// chains do not nest, so they cannot loop).
    Route(String),
    /// One target.
    Target(TargetSet),
}

/// One upstream model of a route.
#[derive(Debug)]
pub struct Target {
    /// The `ProviderSecret` name.
    pub provider_name: String,
    /// Its adapter.
    pub provider: Arc<dyn Provider>,
    /// The upstream model name.
    pub model: String,
    /// Share under `weighted`.
    pub weight: u32,
    /// USD per million tokens: the target's own, or the built-in table's.
    pub price: Option<Price>,
    /// Context window in tokens.
    pub context_window: Option<u64>,
    /// Limit for one attempt, until its answer starts.
    pub timeout: Option<Duration>,
    /// Longest silence between two chunks of this target's streams.
    pub idle_timeout: Option<Duration>,
    /// Health shared with every route using this target.
    pub health: Arc<TargetState>,
}

/// The embeddings model of a semantic route, and its threshold.
#[derive(Debug)]
pub struct SemanticTarget {
    /// The `ProviderSecret`.
    pub provider_name: String,
    /// Its adapter.
    pub provider: Arc<dyn Provider>,
    /// The embeddings model.
    pub model: String,
    /// The least cosine similarity served as a hit.
    pub threshold: f64,
}

impl SemanticTarget {
    /// The embedding of `text`.
    ///
    /// # Errors
    /// The provider failed, took too long or answered without a vector.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, ProviderError> {
        let request = EmbeddingsRequest {
            model: self.model.clone(),
            input: EmbeddingInput::One(text.to_owned()),
            encoding_format: None,
            dimensions: None,
            user: None,
            extra: serde_json::Map::new(),
        };
        let completed = tokio::time::timeout(EMBED_TIMEOUT, self.provider.embeddings(&request, &self.model))
            .await
            .map_err(|_| ProviderError::new(ErrorKind::Timeout, "embedding took too long"))??;
        let response: EmbeddingsResponse = serde_json::from_slice(&completed.body)
            .map_err(|e| ProviderError::invalid_response(format!("embeddings answer: {e}")))?;
        response
            .data
            .into_iter()
            .next()
            .map(|d| d.embedding)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ProviderError::invalid_response("embeddings answer has no vector"))
    }
}

/// A route's time limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request.
    pub total: Option<Duration>,
    /// Until the first chunk (or the whole answer, when not streaming).
    pub first_token: Option<Duration>,
    /// Between chunks.
    pub idle: Option<Duration>,
}

impl From<&TimeoutsConfig> for Timeouts {
    fn from(config: &TimeoutsConfig) -> Self {
        Self {
            total: config.total_ms.map(Duration::from_millis),
            first_token: config.first_token_ms.map(Duration::from_millis),
            idle: config.idle_ms.map(Duration::from_millis),
        }
    }
}

impl Timeouts {
    /// These limits tightened by a request's own (a request may shorten a
    /// route's limits, never lengthen them).
    #[must_use]
    pub fn tightened_by(self, request: Self) -> Self {
        Self {
            total: tighter(self.total, request.total),
            first_token: tighter(self.first_token, request.first_token),
            idle: tighter(self.idle, request.idle),
        }
    }
}

/// The stricter of two optional limits (none set: no limit).
pub fn tighter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Why a configuration could not be made live.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A provider adapter could not be built.
    #[error("provider {provider}: {error}")]
    Provider {
        /// The `ProviderSecret`.
        provider: String,
        /// Why.
        error: ProviderError,
    },
    /// A route's guardrails could not be built.
    #[error("route {alias}: {error}")]
    Guardrails {
        /// The route.
        alias: String,
        /// Why.
        error: crate::guardrails::BuildError,
    },
}

/// Builds targets against already-built adapters.
struct Builder<'a> {
    adapters: BTreeMap<&'a str, Arc<dyn Provider>>,
    health: &'a HealthRegistry,
}

impl Builder<'_> {
    fn target_set(&self, alias: &str, targets: &[TargetConfig]) -> Result<TargetSet, BuildError> {
        let targets = targets
            .iter()
            .map(|t| self.target(alias, t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TargetSet::new(targets))
    }

    fn adapter(&self, alias: &str, provider: &str) -> Result<Arc<dyn Provider>, BuildError> {
        self.adapters
            .get(provider)
            .cloned()
            .ok_or_else(|| BuildError::Provider {
                provider: provider.to_owned(),
                error: ProviderError::unsupported(format!("route {alias} names it but it is not configured")),
            })
    }

    fn semantic_target(
        &self,
        alias: &str,
        semantic: &SemanticCacheConfig,
    ) -> Result<Arc<SemanticTarget>, BuildError> {
        Ok(Arc::new(SemanticTarget {
            provider_name: semantic.embeddings_provider.clone(),
            provider: self.adapter(alias, &semantic.embeddings_provider)?,
            model: semantic.embeddings_model.clone(),
            threshold: semantic.similarity_threshold,
        }))
    }

    fn target(&self, alias: &str, target: &TargetConfig) -> Result<Target, BuildError> {
        let provider = self.adapter(alias, &target.provider)?;
        Ok(Target {
            provider_name: target.provider.clone(),
            provider,
            model: target.model.clone(),
            weight: target.weight,
            price: target
                .price
                .clone()
                .or_else(|| crate::pricing::builtin(&target.model)),
            context_window: target.context_window,
            timeout: target.timeout_ms.map(Duration::from_millis),
            idle_timeout: target.idle_timeout_ms.map(Duration::from_millis),
            health: self.health.target(TargetKey {
                provider: target.provider.clone(),
                model: target.model.clone(),
            }),
        })
    }
}

impl Runtime {
    /// Builds adapters and routes from a configuration.
    ///
    /// # Errors
    /// A provider cannot be built, or a route names a provider the config lacks.
    pub fn build(config: &SidecarConfig, deps: &Deps, health: &HealthRegistry) -> Result<Self, BuildError> {
        let mut builder = Builder {
            adapters: BTreeMap::new(),
            health,
        };
        for (name, provider) in &config.providers {
            let adapter = providers::build(name, provider, deps).map_err(|error| BuildError::Provider {
                provider: name.clone(),
                error,
            })?;
            builder.adapters.insert(name, adapter);
        }
        let mut routes = BTreeMap::new();
        for (alias, route) in &config.routes {
            let rules = route
                .rules
                .iter()
                .map(|rule| {
                    Ok(Rule {
                        matches: rule.matches.clone(),
                        targets: builder.target_set(alias, &rule.targets)?,
                    })
                })
                .collect::<Result<Vec<_>, BuildError>>()?;
            let fallbacks = route
                .fallbacks
                .iter()
                .filter_map(|step| {
                    let to = match (&step.route, &step.target) {
                        (Some(route), _) => Ok(FallbackTo::Route(route.clone())),
                        (None, Some(target)) => builder
                            .target_set(alias, std::slice::from_ref(target))
                            .map(FallbackTo::Target),
                        (None, None) => return None,
                    };
                    Some(to.map(|to| FallbackStep {
                        to,
                        on: step.on.clone(),
                    }))
                })
                .collect::<Result<Vec<_>, BuildError>>()?;
            let live = Route {
                alias: alias.clone(),
                resource: route.resource.clone(),
                strategy: route.strategy,
                targets: builder.target_set(alias, &route.targets)?,
                rules,
                fallbacks,
                retries: route.retries.clone(),
                timeouts: Timeouts::from(&route.timeouts),
                breaker: route.circuit_breaker.clone(),
                log_content: route.log_content,
                cache: route.cache.clone(),
                semantic: route
                    .cache
                    .as_ref()
                    .and_then(|c| c.semantic.as_ref())
                    .map(|semantic| builder.semantic_target(alias, semantic))
                    .transpose()?,
                guardrails: Arc::new(
                    crate::guardrails::Guardrails::build(&route.guardrails, deps).map_err(|error| {
                        BuildError::Guardrails {
                            alias: alias.clone(),
                            error,
                        }
                    })?,
                ),
                eval: route.eval_sampling.as_ref().map(Sampling::new),
                mirror: route
                    .mirror
                    .as_ref()
                    .map(|mirror| {
                        Ok::<_, BuildError>(Mirror {
                            targets: builder.target_set(alias, std::slice::from_ref(&mirror.target))?,
                            percent: mirror.percent,
                            count_budget: mirror.count_budget,
                        })
                    })
                    .transpose()?,
            };
            routes.insert(alias.clone(), Arc::new(live));
        }
        let mock_providers = config
            .providers
            .iter()
            .filter(|(_, p)| p.kind == llmesh_crds::resources::ProviderKind::Mock)
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Self {
            version: config.version.clone(),
            mock_providers,
            routes,
            keys: crate::auth::Keys::new(&config.keys),
            budgets: config.budgets.clone(),
            rejected: BTreeMap::new(),
        })
    }

    /// Every target this configuration may send requests to.
    pub fn target_keys(&self) -> BTreeSet<TargetKey> {
        self.routes
            .values()
            .flat_map(|route| {
                let rules = route.rules.iter().map(|rule| &rule.targets);
                let fallbacks = route.fallbacks.iter().filter_map(|step| match &step.to {
                    FallbackTo::Target(set) => Some(set),
                    FallbackTo::Route(_) => None,
                });
                std::iter::once(&route.targets).chain(rules).chain(fallbacks)
            })
            .flat_map(|set| &set.targets)
            .map(|target| target.health.key().clone())
            .collect()
    }

    /// Records why the routes with these aliases are not served.
    #[must_use]
    pub fn with_rejected(mut self, rejected: BTreeMap<String, String>) -> Self {
        self.rejected = rejected;
        self
    }

    /// The route an app named.
    ///
    /// # Errors
    /// [`RouteError::Unknown`], or [`RouteError::NotInForce`] with the reason.
    pub fn route(&self, alias: &str) -> Result<Arc<Route>, RouteError> {
        self.routes
            .get(alias)
            .cloned()
            .ok_or_else(|| match self.rejected.get(alias) {
                Some(reason) => RouteError::NotInForce {
                    alias: alias.to_owned(),
                    reason: reason.clone(),
                },
                None => RouteError::Unknown(alias.to_owned()),
            })
    }

    /// Whether `name` is a mock provider of this configuration.
    pub fn has_mock_provider(&self, name: &str) -> bool {
        self.mock_providers.contains(name)
    }

    /// A route by alias, borrowed from this runtime.
    pub fn find(&self, alias: &str) -> Option<&Route> {
        self.routes.get(alias).map(AsRef::as_ref)
    }

    /// Every route, by alias.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values().map(AsRef::as_ref)
    }
}

impl Route {
    /// The target set a request uses: the first matching rule's, or the route's own.
    pub fn targets_for(&self, facts: &RequestFacts<'_>) -> &TargetSet {
        self.rules
            .iter()
            .find(|rule| facts.matches(&rule.matches))
            .map_or(&self.targets, |rule| &rule.targets)
    }
}

impl TargetSet {
    /// A set of alternatives with fresh selection state.
    pub fn new(targets: Vec<Target>) -> Self {
        Self {
            selector: Selector::new(&targets),
            targets,
        }
    }

    /// The targets in the order `strategy` wants them tried for this request.
    pub fn ordered(&self, strategy: Strategy, estimate: &Estimate) -> Vec<&Target> {
        self.selector.order(strategy, &self.targets, estimate)
    }
}
