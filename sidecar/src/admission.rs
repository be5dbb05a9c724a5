//! Admission: the opening every endpoint shares, whatever its format —
//! authenticate the caller, read and parse the body (the endpoint's only
//! part), resolve the route, and let the key's budget and rate limits admit
//! the request (whose spend with the key is then held for the sync report).

use std::sync::Arc;

use axum::body::Body;
use http::HeaderMap;
use serde_json::{Map, Value};

use crate::access_log::AccessRecord;
use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::app::App;
use crate::auth::Key;
use crate::budget::{self, Admitted as Budgeted};
use crate::error::ApiError;
use crate::guardrails::Inspect;
use crate::inbound;
use crate::routing::{Estimate, RequestFacts, Route, Runtime, Timeouts};

/// What admission needs to know of a parsed request (and its texts, which
/// the route's guardrails read and may rewrite).
pub trait Admissible: Inspect {
    /// The route alias it names.
    fn model(&self) -> &str;
    /// Its size in tokens.
    fn estimate(&self) -> Estimate;
    /// Whether it asks for a stream.
    fn is_stream(&self) -> bool;
    /// Its `metadata`, which routing rules may match.
    fn metadata(&self) -> Option<&Map<String, Value>>;
    /// Its prompt text, for routes that log content.
    fn prompt(&self) -> Option<String>;
}

impl Admissible for ChatRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn estimate(&self) -> Estimate {
        Estimate::of_chat(self)
    }

    fn is_stream(&self) -> bool {
        ChatRequest::is_stream(self)
    }

    fn metadata(&self) -> Option<&Map<String, Value>> {
        self.extra.get("metadata").and_then(Value::as_object)
    }

    fn prompt(&self) -> Option<String> {
        let prompt: Vec<String> = self
            .messages
            .iter()
            .map(crate::api::chat::Message::text)
            .collect();
        Some(prompt.join("\n"))
    }
}

impl Admissible for EmbeddingsRequest {
    fn model(&self) -> &str {
        &self.model
    }

    fn estimate(&self) -> Estimate {
        Estimate::of_embeddings(self)
    }

    fn is_stream(&self) -> bool {
        false
    }

    fn metadata(&self) -> Option<&Map<String, Value>> {
        None
    }

    fn prompt(&self) -> Option<String> {
        None
    }
}

/// An admitted request and what serving it needs.
#[derive(Debug)]
pub struct Admitted<R> {
    /// The configuration in force when the request arrived.
    pub runtime: Arc<Runtime>,
    /// The caller (`None` when no keys are configured).
    pub key: Option<Arc<Key>>,
    /// The route that serves it (a budget's cheaper one when downgraded).
    pub route: Arc<Route>,
    /// The parsed request.
    pub request: R,
    /// Its size.
    pub estimate: Estimate,
    /// The route's time limits, tightened by the request's headers.
    pub timeouts: Timeouts,
}

impl<R: Admissible> Admitted<R> {
    /// The facts routing rules and strategies look at.
    pub fn facts<'a>(&'a self, headers: &'a HeaderMap) -> RequestFacts<'a> {
        RequestFacts {
            headers,
            metadata: self.request.metadata(),
            estimate: self.estimate,
        }
    }
}

/// Admits a request whose body `parse` reads.
///
/// # Errors
/// The caller, body, route, budget or rate limit refuses it.
pub async fn admit<R: Admissible>(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    record: &mut AccessRecord,
    parse: impl FnOnce(&[u8]) -> Result<R, ApiError>,
) -> Result<Admitted<R>, ApiError> {
    let runtime = app.runtime()?;
    let key = caller(app, &runtime, headers)?;
    if let Some(key) = &key {
        record.set_key(key);
    }
    let bytes = inbound::read_body(body, app.settings.max_body_bytes, app.settings.body_read_timeout).await?;
    let mut request = parse(&bytes)?;
    let asked_timeouts = inbound::timeout_overrides(headers)?;
    record.set_stream(request.is_stream());
    let estimate = request.estimate();
    record.set_estimate(&estimate);
    let route = resolve(app, &runtime, request.model())?;
    record.set_route(&route);
    if let Some(key) = &key {
        key.allow_route(&route.alias)?;
    }
    // Before the budget is charged, the cache key is made, the upstream is
    // called or anything is logged: what they see is what guardrails let through.
    route
        .guardrails
        .screen_request(&mut request, record.guardrail_findings())
        .await?;
    let route = check_budget(app, &runtime, key.as_deref(), route, &estimate, headers, record)?;
    check_rate_limits(app, key.as_deref(), &estimate, record)?;
    if let Some(key) = &key {
        let budget = key.config.budget.as_ref().and_then(|b| runtime.budgets.get(b));
        if let Some(spend) = app.budgets.key_spend(&key.name, budget) {
            record.hold(spend);
        }
    }
    if route.log_content
        && let Some(prompt) = request.prompt()
    {
        record.log_content(app.settings.redactor.clone(), prompt);
    }
    // A mirrored request is recorded too, so its shadow answer has a pair.
    let sampled = route.eval.as_ref().is_some_and(|s| s.admits(record.request_id()))
        || route
            .mirror
            .as_ref()
            .is_some_and(|m| m.copies(record.request_id()));
    if sampled && let Some(sink) = &app.eval {
        record.sample_for_eval(sink.clone(), app.settings.redactor.clone(), request.prompt());
    }
    let timeouts = route.timeouts.tightened_by(asked_timeouts);
    Ok(Admitted {
        runtime,
        key,
        route,
        request,
        estimate,
        timeouts,
    })
}

/// Who is calling (`None` when no keys are configured).
///
/// # Errors
/// The key is missing, unknown, disabled or expired.
pub fn caller(app: &App, runtime: &Runtime, headers: &HeaderMap) -> Result<Option<Arc<Key>>, ApiError> {
    let now = jiff::Timestamp::now().as_second();
    let key = runtime
        .keys
        .authenticate(headers, app.settings.default_key.as_deref(), now)?;
    Ok(key)
}

/// The route `alias` names, once the pod may use it.
///
/// # Errors
/// No such route, or not one of this pod's.
pub fn resolve(app: &App, runtime: &Runtime, alias: &str) -> Result<Arc<Route>, ApiError> {
    app.settings.allow_route(alias)?;
    Ok(runtime.route(alias)?)
}

/// Checks the key's budget: token ceilings, then spend. Returns the route to
/// serve from — the budget's cheaper one when it is exhausted and downgrades.
fn check_budget(
    app: &App,
    runtime: &Runtime,
    key: Option<&Key>,
    route: Arc<Route>,
    estimate: &Estimate,
    headers: &HeaderMap,
    record: &mut AccessRecord,
) -> Result<Arc<Route>, ApiError> {
    let Some((name, config)) = key
        .and_then(|k| k.config.budget.as_ref())
        .and_then(|name| runtime.budgets.get_key_value(name))
    else {
        return Ok(route);
    };
    let session = headers
        .get(budget::SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty());
    let reserve = budget::max_cost(&route, estimate);
    match app.budgets.admit(name, config, estimate, reserve, session)? {
        Budgeted::Serve(charge) => {
            record.hold(charge);
            Ok(route)
        }
        Budgeted::Downgrade(charge, cheaper) => {
            record.hold(charge);
            let cheaper = runtime.route(&cheaper)?;
            record.set_route(&cheaper);
            Ok(cheaper)
        }
    }
}

/// Charges the key's rate limits with the request and its token estimate;
/// the record corrects the estimate with the actual usage at the end.
fn check_rate_limits(
    app: &App,
    key: Option<&Key>,
    estimate: &Estimate,
    record: &mut AccessRecord,
) -> Result<(), ApiError> {
    let Some(key) = key else { return Ok(()) };
    let tokens = estimate
        .prompt_tokens
        .saturating_add(estimate.max_output_tokens.unwrap_or(0));
    match app.rate_limits.admit(key, tokens) {
        Ok((state, reservation)) => {
            record.set_rate_limit_headers(state.headers());
            record.hold(reservation);
            Ok(())
        }
        Err(limited) => {
            record.set_rate_limit_headers(limited.state.headers());
            app.metrics
                .rate_limited
                .with_label_values(&[key.name.as_str(), limited.unit])
                .inc();
            Err(limited.into())
        }
    }
}
