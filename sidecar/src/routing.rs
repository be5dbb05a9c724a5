//! Route: from the `model` an app sends to the targets that may serve it.
//!
//! A [`Runtime`] is one configuration made live: provider adapters built,
//! routes resolved to them. It is immutable; a reload builds a new one and
//! swaps it in, so a request sees one configuration from start to end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use llmesh_crds::SidecarConfig;
use llmesh_crds::config::TimeoutsConfig;

use crate::error::ApiError;
use crate::providers::{self, Deps, Provider, ProviderError};

/// One live configuration.
#[derive(Debug, Default)]
pub struct Runtime {
    /// The config version this was built from.
    pub version: String,
    routes: BTreeMap<String, Arc<Route>>,
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
    /// Targets in order.
    pub targets: Vec<Target>,
    /// Time limits.
    pub timeouts: Timeouts,
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
    /// Limit for one attempt, until its answer starts.
    pub timeout: Option<Duration>,
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

/// Why a configuration could not be made live.
#[derive(Debug, thiserror::Error)]
#[error("provider {provider}: {error}")]
pub struct BuildError {
    provider: String,
    error: ProviderError,
}

impl Runtime {
    /// Builds adapters and routes from a configuration.
    ///
    /// # Errors
    /// A provider cannot be built, or a route names a provider the config lacks.
    pub fn build(config: &SidecarConfig, deps: &Deps) -> Result<Self, BuildError> {
        let mut built: BTreeMap<&str, Arc<dyn Provider>> = BTreeMap::new();
        for (name, provider) in &config.providers {
            let adapter = providers::build(provider, deps).map_err(|error| BuildError {
                provider: name.clone(),
                error,
            })?;
            built.insert(name, adapter);
        }
        let mut routes = BTreeMap::new();
        for (alias, route) in &config.routes {
            let mut targets = Vec::with_capacity(route.targets.len());
            for target in &route.targets {
                let provider = built
                    .get(target.provider.as_str())
                    .cloned()
                    .ok_or_else(|| BuildError {
                        provider: target.provider.clone(),
                        error: ProviderError::unsupported(format!(
                            "route {alias} names it but it is not configured"
                        )),
                    })?;
                targets.push(Target {
                    provider_name: target.provider.clone(),
                    provider,
                    model: target.model.clone(),
                    timeout: target.timeout_ms.map(Duration::from_millis),
                });
            }
            let live = Route {
                alias: alias.clone(),
                resource: route.resource.clone(),
                targets,
                timeouts: Timeouts::from(&route.timeouts),
            };
            routes.insert(alias.clone(), Arc::new(live));
        }
        Ok(Self {
            version: config.version.clone(),
            routes,
            rejected: BTreeMap::new(),
        })
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
    /// [`ApiError::UnknownRoute`].
    pub fn route(&self, alias: &str) -> Result<Arc<Route>, ApiError> {
        self.routes
            .get(alias)
            .cloned()
            .ok_or_else(|| match self.rejected.get(alias) {
                Some(reason) => ApiError::RouteNotInForce {
                    alias: alias.to_owned(),
                    reason: reason.clone(),
                },
                None => ApiError::UnknownRoute(alias.to_owned()),
            })
    }

    /// Every route, by alias.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values().map(AsRef::as_ref)
    }
}

impl Route {
    /// The targets to try, in order. One route has one target for now;
    /// strategies and fallback chains will order and extend this plan.
    pub fn plan(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter()
    }
}
