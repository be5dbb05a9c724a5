//! The endpoints. Each reads top to bottom as the request path:
//! accept → authenticate → route → cache → attempt(s) → account → respond.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, Uri};

use crate::access_log::{AccessRecord, Operation};
use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::{Model, ModelList};
use crate::app::App;
use crate::attempts::{self, Failed, Reply, Served};
use crate::auth::Key;
use crate::budget::{self, Admitted};
use crate::cache::{self, ResponseCache};
use crate::error::ApiError;
use crate::routing::{Estimate, RequestFacts, Route, Runtime};
use crate::{inbound, respond};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let mut record = AccessRecord::start(app.metrics.clone(), Operation::Chat);
    match serve_chat(&app, &headers, body, &mut record).await {
        Ok(Reply::Complete(completed)) => respond::complete(completed, record),
        Ok(Reply::Stream(stream)) => respond::stream(stream, record),
        Err(error) => respond::error(error, record),
    }
}

async fn serve_chat(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    record: &mut AccessRecord,
) -> Result<Reply, ApiError> {
    let runtime = app.runtime()?;
    let key = authenticate(app, &runtime, headers, record)?;
    let bytes = inbound::read_body(body, app.settings.max_body_bytes).await?;
    let request: ChatRequest = inbound::parse_json(&bytes)?;
    let asked_timeouts = inbound::timeout_overrides(headers)?;
    record.set_stream(request.is_stream());

    let estimate = Estimate::of_chat(&request);
    let route = authorize(
        app,
        &runtime,
        key.as_deref(),
        &request.model,
        &estimate,
        headers,
        record,
    )?;
    if route.log_content {
        let prompt: Vec<String> = request.messages.iter().map(|m| m.text()).collect();
        record.log_content(app.settings.redactor.clone(), prompt.join("\n"));
    }
    let metadata = request.extra.get("metadata").and_then(|m| m.as_object());
    let facts = RequestFacts {
        headers,
        metadata,
        estimate,
    };
    let timeouts = route.timeouts.tightened_by(asked_timeouts);

    let caller = key.as_ref().map_or(cache::ANONYMOUS_CALLER, |k| k.name.as_str());
    let mut cache_plan = cache::Plan::for_chat(&route, caller, headers, &facts, &request)?;
    if let Some(plan) = &mut cache_plan {
        record.set_cache(plan.status_unless_hit());
        if let Some((entry, status)) = app.cache.lookup(plan).await {
            record.served_from_cache(&entry, status);
            return Ok(ResponseCache::replay(&entry, &request));
        }
    }

    let outcome = attempts::chat(&runtime, &route, &request, &facts, timeouts).await;
    let origin = outcome
        .as_ref()
        .ok()
        .map(|served| cache::Origin::of(served.target));
    let reply = settle(record, outcome)?;
    Ok(match (cache_plan, origin) {
        (Some(plan), Some(origin)) => app.cache.fill(plan, origin, reply),
        _ => reply,
    })
}

/// Who is calling (`None` when no keys are configured).
fn caller(app: &App, runtime: &Runtime, headers: &HeaderMap) -> Result<Option<Arc<Key>>, ApiError> {
    let now = jiff::Timestamp::now().as_second();
    let key = runtime
        .keys
        .authenticate(headers, app.settings.default_key.as_deref(), now)?;
    Ok(key)
}

/// Who is calling, noted in the record.
fn authenticate(
    app: &App,
    runtime: &Runtime,
    headers: &HeaderMap,
    record: &mut AccessRecord,
) -> Result<Option<Arc<Key>>, ApiError> {
    let key = caller(app, runtime, headers)?;
    if let Some(key) = &key {
        record.set_key(key);
    }
    Ok(key)
}

/// The route a request names, once the caller's key may use it, its budget
/// allows the request (or downgrades it to a cheaper route) and its rate
/// limits admit it.
fn authorize(
    app: &App,
    runtime: &Runtime,
    key: Option<&Key>,
    alias: &str,
    estimate: &Estimate,
    headers: &HeaderMap,
    record: &mut AccessRecord,
) -> Result<Arc<Route>, ApiError> {
    app.settings.allow_route(alias)?;
    let route = runtime.route(alias)?;
    record.set_route(&route);
    if let Some(key) = key {
        key.allow_route(&route.alias)?;
    }
    let route = check_budget(app, runtime, key, route, estimate, headers, record)?;
    admit(app, key, estimate, record)?;
    Ok(route)
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
        Admitted::Serve(charge) => {
            record.hold(charge);
            Ok(route)
        }
        Admitted::Downgrade(charge, cheaper) => {
            record.hold(charge);
            let cheaper = runtime.route(&cheaper)?;
            record.set_route(&cheaper);
            Ok(cheaper)
        }
    }
}

/// Charges the key's rate limits with the request and its token estimate;
/// the record corrects the estimate with the actual usage at the end.
fn admit(
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

/// Notes who answered (or failed last) and hands on the answer.
fn settle<T>(record: &mut AccessRecord, outcome: Result<Served<'_, T>, Failed<'_>>) -> Result<T, ApiError> {
    match outcome {
        Ok(served) => {
            record.set_attempts(Some(served.target), served.attempts, served.failures, served.step);
            if let Some(alias) = served.fallback_route {
                record.set_served_route(alias);
            }
            Ok(served.reply)
        }
        Err(failed) => {
            record.set_attempts(failed.target, failed.attempts, failed.failures, failed.step);
            Err(failed.error)
        }
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let mut record = AccessRecord::start(app.metrics.clone(), Operation::Embeddings);
    match serve_embeddings(&app, &headers, body, &mut record).await {
        Ok(completed) => respond::complete(completed, record),
        Err(error) => respond::error(error, record),
    }
}

async fn serve_embeddings(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    record: &mut AccessRecord,
) -> Result<crate::providers::Completed, ApiError> {
    let runtime = app.runtime()?;
    let key = authenticate(app, &runtime, headers, record)?;
    let bytes = inbound::read_body(body, app.settings.max_body_bytes).await?;
    let request: EmbeddingsRequest = inbound::parse_json(&bytes)?;
    let asked_timeouts = inbound::timeout_overrides(headers)?;

    let estimate = Estimate::of_embeddings(&request);
    let route = authorize(
        app,
        &runtime,
        key.as_deref(),
        &request.model,
        &estimate,
        headers,
        record,
    )?;
    let facts = RequestFacts {
        headers,
        metadata: None,
        estimate,
    };
    let timeouts = route.timeouts.tightened_by(asked_timeouts);

    settle(
        record,
        attempts::embeddings(&runtime, &route, &request, &facts, timeouts).await,
    )
}

/// `GET /v1/models`: the route aliases the caller's key may use.
pub async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<ModelList>, ApiError> {
    let runtime = app.runtime()?;
    let key = caller(&app, &runtime, &headers)?;
    let data = runtime
        .routes()
        .filter(|route| app.settings.allow_route(&route.alias).is_ok())
        .filter(|route| key.as_ref().is_none_or(|k| k.allow_route(&route.alias).is_ok()))
        .map(|route| Model {
            id: route.alias.clone(),
            object: "model",
            created: 0,
            owned_by: route.resource.clone(),
        })
        .collect();
    Ok(Json(ModelList { object: "list", data }))
}

/// `GET /healthz`: the process is serving.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: a configuration is loaded.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.runtime() {
        Ok(runtime) => (StatusCode::OK, format!("ready, config {}\n", runtime.version)).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "no configuration loaded yet\n").into_response(),
    }
}

/// `GET /debug/targets`: every target's breaker, load and latency.
pub async fn debug_targets(State(app): State<Arc<App>>) -> Json<Vec<crate::health::TargetSnapshot>> {
    Json(app.deps.health.snapshot())
}

/// `POST /debug/faults`: start or end a failure drill on a mock provider.
pub async fn debug_faults(State(app): State<Arc<App>>, Json(drill): Json<Drill>) -> Response {
    if !app.settings.drills_enabled {
        let message =
            "failure drills are off; start the sidecar with LLMESH_ENABLE_DRILLS=true to allow them";
        return (StatusCode::FORBIDDEN, message).into_response();
    }
    let is_mock = app.runtime().is_ok_and(|r| r.has_mock_provider(&drill.provider));
    if !is_mock {
        let message = format!(
            "no mock provider named {}; drills inject faults into mock providers only",
            drill.provider
        );
        return (StatusCode::NOT_FOUND, message).into_response();
    }
    match drill.faults {
        Some(faults) => {
            tracing::warn!(provider = %drill.provider, faults = faults.len(), "failure drill started");
            app.deps.drills.set(&drill.provider, faults);
        }
        None => {
            tracing::warn!(provider = %drill.provider, "failure drill ended");
            app.deps.drills.clear(&drill.provider);
        }
    }
    Json(app.deps.drills.all()).into_response()
}

/// A drill request: `faults` overrides the provider's configured faults
/// (`[]` for none); omitting it ends the drill.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drill {
    /// The mock `ProviderSecret`.
    pub provider: String,
    /// The faults to inject.
    #[serde(default)]
    pub faults: Option<Vec<llmesh_crds::resources::MockFault>>,
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.cache.sync();
    app.deps.health.publish();
    let content_type = [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (content_type, app.metrics.encode()).into_response()
}

/// Any other path: an OpenAI-shaped 404 rather than an empty one.
pub async fn unknown_path(uri: Uri) -> ApiError {
    ApiError::UnknownPath(uri.path().to_owned())
}
