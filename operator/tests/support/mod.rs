//! A mocked Kubernetes API server for controller tests: the test plays the
//! server's side of a scenario call by call, checking each request.

#![allow(dead_code)] // Each test file uses a different part of the fixtures.

pub mod admission;
pub mod cluster;

use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::client::Body;
use llmesh_crds::{LLMRoute, ProviderSecret};
use serde_json::{Value, json};

/// How long a scenario waits for the operator's next call before failing
/// (a missing call must fail the test, not hang it).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One request the operator sent.
#[derive(Debug)]
pub struct Call {
    /// `GET`, `PATCH`, …
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The query string (empty when none).
    pub query: String,
    /// The JSON body (`Null` when empty).
    pub body: Value,
}

/// The server's side of the mock.
pub struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// A client wired to a new mock server.
    pub fn start() -> (Client, Self) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), Self(handle))
    }

    /// Waits for the next call, checks its method and path, answers it with
    /// `status` and `reply`, and returns it for further checks.
    pub async fn expect(&mut self, method: &str, path: &str, status: u16, reply: Value) -> Call {
        self.expect_with(method, path, |_| (status, reply)).await
    }

    /// Like [`Self::expect`], with the answer computed from the call.
    pub async fn expect_with(
        &mut self,
        method: &str,
        path: &str,
        answer: impl FnOnce(&Call) -> (u16, Value),
    ) -> Call {
        let (request, send) = tokio::time::timeout(CALL_TIMEOUT, self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no call came; expected {method} {path}"))
            .expect("the client is gone");
        let call = Call {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().unwrap_or_default().to_owned(),
            body: {
                let bytes = request
                    .into_body()
                    .collect()
                    .await
                    .expect("request body")
                    .to_bytes();
                if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("JSON body")
                }
            },
        };
        assert_eq!(
            (call.method.as_str(), call.path.as_str()),
            (method, path),
            "unexpected call {call:?}"
        );
        let (status, reply) = answer(&call);
        let body = serde_json::to_vec(&reply).expect("reply JSON");
        send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("response"),
        );
        call
    }

    /// Serves calls in whatever order they come, as a running controller makes
    /// them: `answer` returns the reply, or `None` to hold the call open (a
    /// watch with nothing to report).
    pub fn serve(
        mut self,
        mut answer: impl FnMut(&Call) -> Option<(u16, Value)> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut open_watches = Vec::new();
            while let Some((request, send)) = self.0.next_request().await {
                let call = Call {
                    method: request.method().to_string(),
                    path: request.uri().path().to_owned(),
                    query: request.uri().query().unwrap_or_default().to_owned(),
                    body: Value::Null,
                };
                match answer(&call) {
                    Some((status, reply)) => send.send_response(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Body::from(serde_json::to_vec(&reply).expect("reply JSON")))
                            .expect("response"),
                    ),
                    None => open_watches.push(send),
                }
            }
        })
    }

    /// Answers a GET with 404 Not Found.
    pub async fn expect_missing(&mut self, path: &str) -> Call {
        let name = path.rsplit('/').next().unwrap_or_default();
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{name} not found"), "reason": "NotFound", "code": 404
        });
        self.expect("GET", path, 404, status).await
    }
}

/// Runs `scenario` (the server's side) while `operator` runs; fails when the
/// operator makes a call the scenario did not answer, or never finishes.
pub async fn play<T>(
    operator: impl Future<Output = T> + Send + 'static,
    scenario: impl Future<Output = ()>,
) -> T
where
    T: Send + 'static,
{
    let operator = tokio::spawn(operator);
    scenario.await;
    tokio::time::timeout(CALL_TIMEOUT, operator)
        .await
        .expect("the operator made a call the scenario did not expect (or hung)")
        .expect("the operator task panicked")
}

/// The test namespace.
pub const NS: &str = "team-a";
/// Its ConfigMap's path.
pub const CONFIG_MAP: &str = "/api/v1/namespaces/team-a/configmaps/llmesh-config";
/// Its ProviderSecrets' path.
pub const PROVIDERS: &str = "/apis/llmesh.io/v1alpha1/namespaces/team-a/providersecrets";
/// Its LLMRoutes' path.
pub const ROUTES: &str = "/apis/llmesh.io/v1alpha1/namespaces/team-a/llmroutes";

/// Its VirtualKeys' path.
pub const KEYS: &str = "/apis/llmesh.io/v1alpha1/namespaces/team-a/virtualkeys";
/// Its Budgets' path.
pub const BUDGETS: &str = "/apis/llmesh.io/v1alpha1/namespaces/team-a/budgets";
/// Its Secrets' path (where a generated key's Secret is created).
pub const SECRETS: &str = "/api/v1/namespaces/team-a/secrets";

/// A Secret's path.
pub fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/team-a/secrets/{name}")
}

/// The test Namespace object.
pub fn namespace() -> Namespace {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": NS, "uid": "ns-uid-1"}
    }))
    .expect("namespace")
}

/// An `openai` ProviderSecret reading its key from Secret `openai-key`.
pub fn openai_provider() -> ProviderSecret {
    serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "ProviderSecret",
        "metadata": {"name": "openai", "namespace": NS, "generation": 1},
        "spec": {"provider": "openai", "secretRef": {"name": "openai-key"}}
    }))
    .expect("provider")
}

/// An LLMRoute `name` with one target `provider`/`gpt-4o-mini`.
pub fn route(name: &str, provider: &str) -> LLMRoute {
    serde_json::from_value(json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": "LLMRoute",
        "metadata": {"name": name, "namespace": NS, "generation": 3},
        "spec": {"targets": [{"provider": provider, "model": "gpt-4o-mini"}]}
    }))
    .expect("route")
}

/// Secret `openai-key` holding `keys` (with placeholder values).
pub fn secret(keys: &[&str]) -> Secret {
    let data: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| ((*k).to_owned(), json!("c2stdGVzdA==")))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "openai-key", "namespace": NS},
        "data": data
    }))
    .expect("secret")
}

/// A list response of `kind` holding `items`.
pub fn list_of<T: serde::Serialize>(kind: &str, items: &[T]) -> Value {
    json!({
        "apiVersion": "llmesh.io/v1alpha1", "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": "1"},
        "items": items,
    })
}

/// `object` with `status` set, as the API server answers a status patch.
pub fn with_status<T: serde::Serialize>(object: &T, status: &Value) -> Value {
    let mut value = serde_json::to_value(object).expect("object");
    value["status"] = status.clone();
    value
}

/// The `Ready` condition in a status patch body.
pub fn ready_condition(patch: &Value) -> &Value {
    patch["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("a Ready condition")
}
