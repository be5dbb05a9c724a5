//! AdmissionReview in, AdmissionReview out. Every answer allows the pod: a
//! review that cannot be read, or a pod that cannot be injected, passes
//! unchanged with a warning, because the webhook must never be why a pod
//! fails to start.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use kube::core::Status;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use super::metrics::WebhookMetrics;
use super::mutate::{InjectionSettings, Mutation, mutate};
use super::namespaces::NamespaceLookup;

/// Everything an admission needs.
#[derive(Clone)]
pub struct Injector {
    /// The operator's injection settings.
    pub settings: Arc<InjectionSettings>,
    /// Namespace settings, from caches.
    pub namespaces: Arc<dyn NamespaceLookup>,
    /// Where admissions are counted (none in unit tests).
    pub metrics: Option<WebhookMetrics>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Injector {
    /// Answers one AdmissionReview body with the response body.
    pub fn review(&self, body: &[u8]) -> Vec<u8> {
        let started = Instant::now();
        // `try_into` copies the review's apiVersion and kind into the request,
        // and from there into the answer: the API server refuses one without.
        let request = serde_json::from_slice::<AdmissionReview<Pod>>(body)
            .map_err(|error| error.to_string())
            .and_then(|review| {
                let request: Result<AdmissionRequest<Pod>, _> = review.try_into();
                request.map_err(|error| error.to_string())
            });
        let (response, result) = match request {
            Ok(request) => self.answer(&request),
            Err(reason) => (malformed(body, &reason), "malformed"),
        };
        if result == "malformed" {
            tracing::warn!(uid = %response.uid, "malformed AdmissionReview; pod allowed without the sidecar");
        }
        if let Some(metrics) = &self.metrics {
            metrics.admitted(result, started.elapsed());
        }
        // An `AdmissionReview` of plain data always serialises.
        serde_json::to_vec(&response.into_review()).unwrap_or_default()
    }

    fn answer(&self, request: &AdmissionRequest<Pod>) -> (AdmissionResponse, &'static str) {
        let allowed = AdmissionResponse::from(request);
        let (Operation::Create, Some(pod)) = (&request.operation, &request.object) else {
            return (allowed, "not_a_create");
        };
        // A pod's own `metadata.namespace` is often empty on create; the request's is authoritative.
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let settings = self.namespaces.settings(&namespace);
        match mutate(pod, &settings, &self.settings) {
            Mutation::Skip(skip) => (allowed, skip.label()),
            Mutation::Inject { patch, warnings } => {
                let warnings = (!warnings.is_empty()).then_some(warnings);
                match allowed.clone().with_patch(patch) {
                    Ok(mut response) => {
                        response.warnings = warnings;
                        (response, "injected")
                    }
                    Err(error) => {
                        let mut response = allowed;
                        response.warnings = Some(vec![format!("llmesh: sidecar not injected: {error}")]);
                        (response, "patch_error")
                    }
                }
            }
        }
    }
}

/// The answer to a review that cannot be read: allowed, with the request's
/// uid when one can be found (the API server matches answers by uid).
fn malformed(body: &[u8], reason: &str) -> AdmissionResponse {
    let uid = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["request"]["uid"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut response = AdmissionResponse::invalid(reason);
    response.uid = uid;
    response.allowed = true;
    response.result = Status::success();
    response.warnings = Some(vec![format!(
        "llmesh: the admission review could not be read ({reason}); pod admitted without the sidecar"
    )]);
    response
}
