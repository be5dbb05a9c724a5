//! The endpoints. Each reads top to bottom as the request path:
//! accept → route → attempt(s) → account → respond.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, Uri};

use crate::access_log::{AccessRecord, Operation};
use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;
use crate::api::{Model, ModelList};
use crate::app::App;
use crate::attempts::{self, Failed, Reply, Served};
use crate::error::ApiError;
use crate::{inbound, respond};

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(app): State<Arc<App>>, body: Body) -> Response {
    let mut record = AccessRecord::start(app.metrics.clone(), Operation::Chat);
    match serve_chat(&app, body, &mut record).await {
        Ok(Reply::Complete(completed)) => respond::complete(completed, record),
        Ok(Reply::Stream(stream)) => respond::stream(stream, record),
        Err(error) => respond::error(error, record),
    }
}

async fn serve_chat(app: &App, body: Body, record: &mut AccessRecord) -> Result<Reply, ApiError> {
    let bytes = inbound::read_body(body, app.settings.max_body_bytes).await?;
    let request: ChatRequest = inbound::parse_json(&bytes)?;
    record.set_stream(request.is_stream());

    let runtime = app.runtime()?;
    let route = runtime.route(&request.model)?;
    record.set_route(&route);

    settle(record, attempts::chat(&route, &request).await)
}

/// Notes who answered (or failed last) and hands on the answer.
fn settle<T>(record: &mut AccessRecord, outcome: Result<Served<'_, T>, Failed<'_>>) -> Result<T, ApiError> {
    match outcome {
        Ok(served) => {
            record.set_attempts(Some(served.target), served.attempts, served.failures);
            Ok(served.reply)
        }
        Err(failed) => {
            record.set_attempts(failed.target, failed.attempts, failed.failures);
            Err(failed.error)
        }
    }
}

/// `POST /v1/embeddings`.
pub async fn embeddings(State(app): State<Arc<App>>, body: Body) -> Response {
    let mut record = AccessRecord::start(app.metrics.clone(), Operation::Embeddings);
    match serve_embeddings(&app, body, &mut record).await {
        Ok(completed) => respond::complete(completed, record),
        Err(error) => respond::error(error, record),
    }
}

async fn serve_embeddings(
    app: &App,
    body: Body,
    record: &mut AccessRecord,
) -> Result<crate::providers::Completed, ApiError> {
    let bytes = inbound::read_body(body, app.settings.max_body_bytes).await?;
    let request: EmbeddingsRequest = inbound::parse_json(&bytes)?;

    let runtime = app.runtime()?;
    let route = runtime.route(&request.model)?;
    record.set_route(&route);

    settle(record, attempts::embeddings(&route, &request).await)
}

/// `GET /v1/models`: the route aliases.
pub async fn models(State(app): State<Arc<App>>) -> Result<Json<ModelList>, ApiError> {
    let runtime = app.runtime()?;
    let data = runtime
        .routes()
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

/// `GET /metrics`.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let content_type = [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (content_type, app.metrics.encode()).into_response()
}

/// Any other path: an OpenAI-shaped 404 rather than an empty one.
pub async fn unknown_path(uri: Uri) -> ApiError {
    ApiError::UnknownPath(uri.path().to_owned())
}
