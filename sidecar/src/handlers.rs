//! The endpoints. Each reads top to bottom as the request path:
//! accept → admit (authenticate, route, budget, limits) → cache →
//! attempt(s) → account → respond. The chat-like APIs differ only in how
//! the body is parsed into the internal request and how the answer is
//! rendered back.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};

use crate::access_log::AccessRecord;
use crate::admission::{self, Admitted};
use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::messages::{MessagesRequest, ModelInfo, TokenCount};
use crate::api::responses::ResponsesRequest;
use crate::api::{Api, Model, ModelList, messages};
use crate::app::App;
use crate::attempts::{self, CommittedStream, Failed, Reply, Served};
use crate::cache::{self, ResponseCache};
use crate::convert;
use crate::error::ApiError;
use crate::guardrails;
use crate::inbound;
use crate::respond::{self, Shape};
use crate::routing::Route;
use crate::shadow;
use crate::telemetry::{self, RequestTrace};

/// The API apps call (port 4000, loopback): OpenAI's and Anthropic's.
pub fn api_router(app: Arc<App>) -> Router {
    let cap = crate::edge::RequestCap::new(app.settings.max_concurrent_requests);
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/responses", post(responses))
        .route("/v1/embeddings", post(embeddings))
        // Only the calls that reach providers count; probes and listings stay cheap and always answer.
        .route_layer(axum::middleware::from_fn_with_state(
            cap,
            crate::edge::limit_concurrency,
        ))
        .route("/v1/models", get(models))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(unknown_path)
        .with_state(app)
}

/// Metrics and probes (port 9464, pod IP).
pub fn admin_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/debug/targets", get(debug_targets))
        .route("/debug/faults", post(debug_faults))
        .route_layer(axum::middleware::from_fn(crate::edge::pod_local_only))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(app)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    serve(&app, &headers, body, Api::ChatCompletions, |bytes| {
        Ok((inbound::parse_json::<ChatRequest>(bytes)?, Shape::OpenAi))
    })
    .await
}

/// `POST /v1/messages`: Anthropic's Messages API.
pub async fn messages(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    serve(&app, &headers, body, Api::Messages, |bytes| {
        let request: MessagesRequest = inbound::parse_json(bytes)?;
        Ok((
            convert::messages::from_app(request, &headers, false)?,
            Shape::Messages,
        ))
    })
    .await
}

/// `POST /v1/responses`: OpenAI's Responses API, stateless.
pub async fn responses(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    serve(&app, &headers, body, Api::Responses, |bytes| {
        let request: ResponsesRequest = inbound::parse_json(bytes)?;
        let (chat, echo) = convert::responses::to_chat(request)?;
        Ok((chat, Shape::Responses(Box::new(echo))))
    })
    .await
}

/// Serves a chat-like request: `parse` turns the body into the internal
/// request and names the shape of the answer.
async fn serve(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    api: Api,
    parse: impl FnOnce(&[u8]) -> Result<(ChatRequest, Shape), ApiError>,
) -> Response {
    let mut record = AccessRecord::start(app.metrics.clone(), api);
    let trace = start_trace(app, headers, api, &mut record);
    let mut shape = Shape::OpenAi;
    // Boxed here, once: the whole request path's state machine is about
    // 9 KB, and axum and its middleware move the handler's future into a box
    // of their own three times per request; behind a pointer they move 1 KB.
    let serving = Box::pin(serve_chat(app, headers, body, &mut record, |bytes| {
        let (request, wanted) = parse(bytes)?;
        shape = wanted;
        Ok(request)
    }));
    let outcome = telemetry::scoped(trace.as_ref(), serving).await;
    match outcome {
        Ok(Reply::Complete(completed)) => respond::complete(completed, record, &shape),
        Ok(Reply::Stream(stream)) => respond::stream(stream, record, shape),
        Err(error) => respond::error(error, record, api),
    }
}

async fn serve_chat(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    record: &mut AccessRecord,
    parse: impl FnOnce(&[u8]) -> Result<ChatRequest, ApiError>,
) -> Result<Reply, ApiError> {
    let admitted = admission::admit(app, headers, body, record, parse).await?;
    let Admitted {
        runtime,
        key,
        route,
        request,
        timeouts,
        estimate,
    } = &admitted;
    let facts = admitted.facts(headers);

    let caller = key.as_ref().map_or(cache::ANONYMOUS_CALLER, |k| k.name.as_str());
    let mut cache_plan = cache::Plan::for_chat(route, caller, headers, &facts, request)?;
    if let Some(plan) = &mut cache_plan {
        record.set_cache(plan.status_unless_hit());
        if let Some((entry, status)) = app.cache.lookup(plan).await {
            record.served_from_cache(&entry, status);
            return Ok(ResponseCache::replay(&entry, request));
        }
    }

    let outcome = attempts::chat(runtime, route, request, &facts, *timeouts).await;
    let origin = outcome
        .as_ref()
        .ok()
        .map(|served| cache::Origin::of(served.target));
    let reply = settle(record, outcome)?;
    let reply = guard_answer(route, reply, record)?;
    let primary = shadow::Primary {
        route,
        key: key.as_deref(),
        request,
        estimate,
        record,
    };
    shadow::dispatch(app, &primary);
    Ok(match (cache_plan, origin) {
        (Some(plan), Some(origin)) => app.cache.fill(plan, origin, reply),
        _ => reply,
    })
}

/// The answer as the route's answer guardrails let it through: a complete
/// one checked now, a stream as it flows — before the cache stores either.
fn guard_answer(route: &Arc<Route>, reply: Reply, record: &AccessRecord) -> Result<Reply, ApiError> {
    let guardrails = &route.guardrails;
    if !guardrails.on_response() {
        return Ok(reply);
    }
    let findings = record.guardrail_findings();
    Ok(match reply {
        Reply::Complete(mut completed) => {
            completed.body = guardrails.screen_answer(completed.body, findings)?;
            Reply::Complete(completed)
        }
        Reply::Stream(committed) => {
            let (head, tail) = guardrails::stream::guard(
                guardrails.clone(),
                committed.head,
                committed.tail,
                findings.clone(),
            );
            Reply::Stream(CommittedStream {
                head,
                tail,
                ..committed
            })
        }
    })
}

/// Starts the request's trace, joining the app's, when tracing is on.
fn start_trace(app: &App, headers: &HeaderMap, api: Api, record: &mut AccessRecord) -> Option<RequestTrace> {
    let trace = app.tracer.as_ref()?.request(headers, api.operation());
    record.set_trace(trace.clone());
    Some(trace)
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
            Err(ApiError::Upstream {
                provider: failed.provider,
                error: failed.error,
            })
        }
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let mut record = AccessRecord::start(app.metrics.clone(), Api::Embeddings);
    let trace = start_trace(&app, &headers, Api::Embeddings, &mut record);
    // Boxed for the reason `serve` gives.
    let serving = Box::pin(serve_embeddings(&app, &headers, body, &mut record));
    match telemetry::scoped(trace.as_ref(), serving).await {
        Ok(completed) => respond::complete(completed, record, &Shape::OpenAi),
        Err(error) => respond::error(error, record, Api::Embeddings),
    }
}

async fn serve_embeddings(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    record: &mut AccessRecord,
) -> Result<crate::providers::Completed, ApiError> {
    let admitted = admission::admit(
        app,
        headers,
        body,
        record,
        inbound::parse_json::<EmbeddingsRequest>,
    )
    .await?;
    let facts = admitted.facts(headers);
    let outcome = attempts::embeddings(
        &admitted.runtime,
        &admitted.route,
        &admitted.request,
        &facts,
        admitted.timeouts,
    )
    .await;
    settle(record, outcome)
}

/// Whether a token count is the provider's or llmesh's estimate.
static TOKEN_COUNT: HeaderName = HeaderName::from_static("x-llmesh-token-count");

/// `POST /v1/messages/count_tokens`: exact from an Anthropic target (the
/// first the route would try), otherwise llmesh's estimate; the
/// `x-llmesh-token-count` header says which.
pub async fn count_tokens(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    match count(&app, &headers, body).await {
        Ok((count, how)) => {
            let mut response = Json(count).into_response();
            response
                .headers_mut()
                .insert(TOKEN_COUNT.clone(), HeaderValue::from_static(how));
            response
        }
        Err(error) => error.into_response_for(Api::Messages),
    }
}

async fn count(app: &App, headers: &HeaderMap, body: Body) -> Result<(TokenCount, &'static str), ApiError> {
    let runtime = app.runtime()?;
    let key = admission::caller(app, &runtime, headers)?;
    let bytes = inbound::read_body(body, app.settings.max_body_bytes, app.settings.body_read_timeout).await?;
    let request: MessagesRequest = inbound::parse_json(&bytes)?;
    let mut request = convert::messages::from_app(request, headers, true)?;
    let route = admission::resolve(app, &runtime, &request.model)?;
    if let Some(key) = &key {
        key.allow_route(&route.alias)?;
    }
    // An exact count sends the prompt upstream: the same guardrails apply
    // (the count is not a request of the access log, so findings go uncounted).
    route
        .guardrails
        .screen_request(&mut request, &guardrails::Findings::default())
        .await?;
    let estimate = crate::routing::Estimate::of_chat(&request);
    let facts = crate::routing::RequestFacts {
        headers,
        metadata: None,
        estimate,
    };
    let first = route
        .targets_for(&facts)
        .ordered(route.strategy, &estimate)
        .into_iter()
        .next();
    if let Some(target) = first {
        match target.provider.count_tokens(&request, &target.model).await {
            Ok(input_tokens) => return Ok((TokenCount { input_tokens }, "exact")),
            Err(error) => {
                tracing::debug!(provider = %target.provider_name, error = %error, "no exact token count; estimating");
            }
        }
    }
    let input_tokens = estimate.prompt_tokens;
    Ok((TokenCount { input_tokens }, "estimate"))
}

/// `GET /v1/models`: the route aliases the caller's key may use, in
/// Anthropic's shape when the caller is an Anthropic SDK (it always sends
/// `anthropic-version`), in OpenAI's otherwise.
pub async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let anthropic = headers.contains_key("anthropic-version");
    let api = if anthropic {
        Api::Messages
    } else {
        Api::ChatCompletions
    };
    let listed = (|| {
        let runtime = app.runtime()?;
        let key = admission::caller(&app, &runtime, &headers)?;
        let routes: Vec<(String, String)> = runtime
            .routes()
            .filter(|route| app.settings.allow_route(&route.alias).is_ok())
            .filter(|route| key.as_ref().is_none_or(|k| k.allow_route(&route.alias).is_ok()))
            .map(|route| (route.alias.clone(), route.resource.clone()))
            .collect();
        Ok::<_, ApiError>(routes)
    })();
    let routes = match listed {
        Ok(routes) => routes,
        Err(error) => return error.into_response_for(api),
    };
    if anthropic {
        let data: Vec<ModelInfo> = routes
            .into_iter()
            .map(|(alias, _)| ModelInfo {
                kind: "model",
                display_name: alias.clone(),
                id: alias,
                created_at: "1970-01-01T00:00:00Z",
            })
            .collect();
        let list = messages::ModelList {
            first_id: data.first().map(|m| m.id.clone()),
            last_id: data.last().map(|m| m.id.clone()),
            data,
            has_more: false,
        };
        return Json(list).into_response();
    }
    let data = routes
        .into_iter()
        .map(|(id, owned_by)| Model {
            id,
            object: "model",
            created: 0,
            owned_by,
        })
        .collect();
    Json(ModelList { object: "list", data }).into_response()
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
    Json(app.health.snapshot())
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
    app.health.publish();
    app.metrics.sample_runtime();
    let content_type = [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (content_type, app.metrics.encode()).into_response()
}

/// Any other path: an OpenAI-shaped 404 rather than an empty one.
pub async fn unknown_path(uri: Uri) -> ApiError {
    ApiError::UnknownPath(uri.path().to_owned())
}
