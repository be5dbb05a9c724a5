//! `mock-upstream`: every mock provider on one loopback port, for the
//! Python SDK tests, the examples and the benchmarks.
//!
//! - `/openai/v1/...`: OpenAI. `/azure/openai/deployments/...`: Azure OpenAI.
//! - `/anthropic/v1/messages`: Anthropic.
//! - `/gemini/v1beta/models/...`: Gemini (`baseUrl: http://HOST/gemini`).
//! - `/bedrock/model/{id}/...`: Bedrock Runtime (signed with the test
//!   credentials in `llmesh_test_support::bedrock`, region `eu-central-1`).
//! - `POST /_mock/{provider}/script` with a JSON list of behaviors
//!   (`["hang", {"status": 500}]`) scripts the next calls.
//! - `GET /_mock/{provider}/calls` returns `{"count": n, "calls": [...]}`.
//! - `/unavailable/...`: every request fails with OpenAI's 503 (benchmarks
//!   of a request that needs a retry and a fallback).
//! - `--forget-calls` (load tests): no control endpoints, and each mock
//!   starts afresh every few calls, so memory stays flat however long it runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use clap::Parser;
use llmesh_test_support::mock_server::{Behavior, State};
use llmesh_test_support::{anthropic, bedrock, gemini, openai};
use parking_lot::Mutex;

#[derive(Debug, Parser)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// Keep no record of calls (for load tests): every call is recorded and
    /// retained otherwise, about 5 KB each, which adds up to gigabytes.
    #[arg(long)]
    forget_calls: bool,
}

/// With `--forget-calls`, how many calls a mock serves before it is replaced
/// by a fresh one: bounds the retained calls to a few megabytes.
const FORGET_EVERY: u32 = 1000;

type Mocks = Arc<BTreeMap<&'static str, Arc<State>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    println!("mock-upstream listening on http://{}", listener.local_addr()?);
    if cli.forget_calls {
        let app = Router::new()
            .nest_service("/openai", forgetful(openai::router))
            .nest_service("/azure", forgetful(openai::router))
            .nest_service("/anthropic", forgetful(anthropic::router))
            .nest_service("/gemini", forgetful(gemini::router))
            .route_service(
                "/bedrock/{*rest}",
                forgetful(|state| bedrock::router_at(state, "/bedrock")),
            )
            .route("/unavailable/{*rest}", any(unavailable));
        axum::serve(listener, app).await?;
        return Ok(());
    }

    let mocks: BTreeMap<&'static str, Arc<State>> = ["openai", "azure", "anthropic", "gemini", "bedrock"]
        .into_iter()
        .map(|name| (name, Arc::new(State::default())))
        .collect();
    let mocks: Mocks = Arc::new(mocks);

    let control = Router::new()
        .route("/_mock/{provider}/script", post(script))
        .route("/_mock/{provider}/calls", get(calls))
        .with_state(mocks.clone());
    let app = control
        .nest("/openai", openai::router(mocks["openai"].clone()))
        .nest("/azure", openai::router(mocks["azure"].clone()))
        .nest("/anthropic", anthropic::router(mocks["anthropic"].clone()))
        .nest("/gemini", gemini::router(mocks["gemini"].clone()))
        .merge(bedrock::router_at(mocks["bedrock"].clone(), "/bedrock"))
        .route("/unavailable/{*rest}", any(unavailable));
    axum::serve(listener, app).await?;
    Ok(())
}

/// A mock built by `build` that is rebuilt around a fresh `State` every
/// [`FORGET_EVERY`] calls, dropping the calls the old one recorded.
fn forgetful(build: fn(Arc<State>) -> Router) -> MethodRouter {
    let current = Arc::new(Mutex::new((0_u32, build(Arc::default()))));
    any(move |request: Request| {
        let router = {
            let mut current = current.lock();
            current.0 += 1;
            if current.0 > FORGET_EVERY {
                *current = (1, build(Arc::default()));
            }
            current.1.clone()
        };
        dispatch(router, request)
    })
}

/// Hands a request to a router. The `axum::ServiceExt` bound brings in
/// `Service::call` without a direct dependency on `tower`.
fn dispatch<S: axum::ServiceExt<Request>>(mut router: S, request: Request) -> S::Future {
    router.call(request)
}

/// An upstream that is down: OpenAI's 503, which llmesh retries and falls back from.
async fn unavailable() -> Response {
    openai::error(
        503,
        "The engine is currently overloaded, please try again later.",
        "server_error",
        None,
    )
}

async fn script(
    AxumState(mocks): AxumState<Mocks>,
    Path(provider): Path<String>,
    axum::Json(behaviors): axum::Json<Vec<Behavior>>,
) -> Response {
    match mocks.get(provider.as_str()) {
        Some(state) => {
            state.push(behaviors);
            "ok".into_response()
        }
        None => (axum::http::StatusCode::NOT_FOUND, "unknown provider").into_response(),
    }
}

async fn calls(AxumState(mocks): AxumState<Mocks>, Path(provider): Path<String>) -> Response {
    let Some(state) = mocks.get(provider.as_str()) else {
        return (axum::http::StatusCode::NOT_FOUND, "unknown provider").into_response();
    };
    let calls: Vec<serde_json::Value> = state
        .calls()
        .iter()
        .map(|call| {
            let headers: BTreeMap<String, String> = call
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect();
            let body = serde_json::from_slice::<serde_json::Value>(&call.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&call.body).into_owned())
            });
            serde_json::json!({"path": call.path, "headers": headers, "body": body})
        })
        .collect();
    axum::Json(serde_json::json!({"count": calls.len(), "calls": calls})).into_response()
}
