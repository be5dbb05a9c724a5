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

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State as AxumState};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use llmesh_test_support::mock_server::{Behavior, State};
use llmesh_test_support::{anthropic, bedrock, gemini, openai};

#[derive(Debug, Parser)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
}

type Mocks = Arc<BTreeMap<&'static str, Arc<State>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
        .merge(bedrock::router_at(mocks["bedrock"].clone(), "/bedrock"));

    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    println!("mock-upstream listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
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
