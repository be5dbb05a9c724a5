//! The admin HTTP server: `/metrics`, `/healthz` (the process answers) and
//! `/readyz` (the API server answered: the leader has reconciled once, or a
//! standby has read the leader Lease).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the admin endpoints report on.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the operator ready (a successful reconcile, or a standby's Lease check).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether the operator has reconciled successfully at least once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The admin routes.
pub fn router(health: Arc<Health>, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(health): State<Arc<Health>>| async move {
                if health.is_ready() {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "no successful reconcile yet")
                }
            }),
        )
        .with_state(health)
        .route("/metrics", get(move || async move { metrics.render() }))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_waits_for_the_first_successful_reconcile() {
        let health = Arc::new(Health::default());
        let app = router(Arc::clone(&health), Metrics::new().expect("metrics"));
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        health.set_ready();
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_count_reconciles_and_errors_by_reason() {
        let metrics = Metrics::new().expect("metrics");
        let app = router(Arc::new(Health::default()), metrics.clone());
        metrics.succeeded(std::time::Duration::from_millis(3), true, 2);
        let error = crate::Error::Serialize(serde_json::from_str::<u8>("x").expect_err("not a number"));
        metrics.failed(std::time::Duration::from_millis(1), &error);
        let (status, text) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for line in [
            "llmesh_operator_reconciles_total{result=\"ok\"} 1",
            "llmesh_operator_reconciles_total{result=\"error\"} 1",
            "llmesh_operator_reconcile_errors_total{reason=\"serialize\"} 1",
            "llmesh_operator_reconcile_duration_seconds_count 2",
            "llmesh_operator_config_writes_total 1",
            "llmesh_operator_status_writes_total 2",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn metrics_show_the_queue_and_resources_by_state_summed_over_namespaces() {
        let metrics = Metrics::new().expect("metrics");
        let app = router(Arc::new(Health::default()), metrics.clone());
        let states = |ready: u64, invalid: u64| {
            crate::metrics::States::from([
                (("VirtualKey".to_owned(), true), ready),
                (("VirtualKey".to_owned(), false), invalid),
            ])
        };
        metrics.set_states("a", &states(2, 1));
        metrics.set_states("b", &states(3, 0));
        metrics.set_queue_depth(4);
        let (_, text) = get(&app, "/metrics").await;
        for line in [
            "llmesh_operator_resources{kind=\"VirtualKey\",ready=\"true\"} 5",
            "llmesh_operator_resources{kind=\"VirtualKey\",ready=\"false\"} 1",
            "llmesh_operator_queue_depth 4",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // Namespace a loses its resources: its counts leave the totals.
        metrics.set_states("a", &crate::metrics::States::new());
        let (_, text) = get(&app, "/metrics").await;
        assert!(
            text.contains("llmesh_operator_resources{kind=\"VirtualKey\",ready=\"true\"} 3"),
            "{text}"
        );
        assert!(!text.contains("ready=\"false\"} 1"), "{text}");
    }
}
