//! The running controller coalesces per namespace: a burst of changes in one
//! namespace becomes a handful of reconciles, not one per change.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use llmesh_operator::controller::{self, Context};
use llmesh_operator::metrics::Metrics;
use llmesh_operator::probes::Health;
use serde_json::{Value, json};
use support::{ApiServer, BUDGETS, CONFIG_MAP, KEYS, NS, PROVIDERS, ROUTES, list_of, route};

/// How many LLMRoutes change at once.
const BURST: usize = 500;

fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

#[tokio::test]
async fn a_burst_of_route_events_in_one_namespace_is_a_few_reconciles() {
    let (client, server) = ApiServer::start();
    let reconciles = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reconciles);
    let burst: Vec<Value> = (0..BURST)
        .map(|i| serde_json::to_value(route(&format!("route-{i}"), "openai")).expect("route"))
        .collect();
    let _server = server.serve(move |call| {
        if call.query.contains("watch=true") {
            return None;
        }
        let reply = match call.path.as_str() {
            "/api/v1/namespaces" => list(
                "v1",
                "NamespaceList",
                vec![json!({"metadata": {"name": NS, "uid": "ns-uid-1"}})],
            ),
            "/api/v1/configmaps" => list("v1", "ConfigMapList", vec![]),
            "/api/v1/secrets" => list("v1", "SecretList", vec![]),
            "/apis/llmesh.io/v1alpha1/providersecrets" => {
                list("llmesh.io/v1alpha1", "ProviderSecretList", vec![])
            }
            // Every route of the burst arrives in the initial list: BURST events for one namespace.
            "/apis/llmesh.io/v1alpha1/llmroutes" => list("llmesh.io/v1alpha1", "LLMRouteList", burst.clone()),
            "/apis/llmesh.io/v1alpha1/virtualkeys" => list("llmesh.io/v1alpha1", "VirtualKeyList", vec![]),
            "/apis/llmesh.io/v1alpha1/budgets" => list("llmesh.io/v1alpha1", "BudgetList", vec![]),
            CONFIG_MAP => {
                counted.fetch_add(1, Ordering::SeqCst);
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "reason": "NotFound", "code": 404});
                return Some((404, status));
            }
            // The namespace-scoped reads of a reconcile: nothing there, so nothing to write.
            PROVIDERS => list_of::<Value>("ProviderSecret", &[]),
            ROUTES => list_of::<Value>("LLMRoute", &[]),
            KEYS => list_of::<Value>("VirtualKey", &[]),
            BUDGETS => list_of::<Value>("Budget", &[]),
            other => panic!("unexpected call {} {other}?{}", call.method, call.query),
        };
        Some((200, reply))
    });

    let ctx = Arc::new(Context::new(
        client,
        Metrics::new().expect("metrics"),
        Arc::new(Health::default()),
        None,
    ));
    let operator = tokio::spawn(controller::run(ctx));
    // Debounce (500 ms) plus slack for a loaded test machine.
    tokio::time::sleep(controller::DEBOUNCE * 4).await;
    operator.abort();

    let reconciles = reconciles.load(Ordering::SeqCst);
    assert!(
        (1..=3).contains(&reconciles),
        "{BURST} events for one namespace became {reconciles} reconciles"
    );
}
