//! Shadow traffic: a share of a route's requests is copied to the route's
//! `mirror` candidate once the app's answer is ready, in a task of its own.
//! The app never waits for it or sees it; the candidate's answer goes to the
//! eval sink next to the primary's (same request id) with its own cost, its
//! spend is counted apart, and its failures never reach any breaker. In a
//! traced request it is a span of its own, a child of the request's.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::access_log::AccessRecord;
use crate::admission::Admissible;
use crate::api::chat::ChatRequest;
use crate::api::{Api, Usage};
use crate::app::App;
use crate::auth::Key;
use crate::budget::{Admitted, Charge};
use crate::eval::{Kind, Record, Sink};
use crate::metrics::Metrics;
use crate::pricing;
use crate::providers::{ChatReply, ErrorKind, ProviderError, StreamEvent};
use crate::redact::Redact;
use crate::routing::{Estimate, Route};
use crate::settle::Settle;
use crate::telemetry::{self, Attribute, RequestTrace, Value};

/// The longest a shadow request may take when its target sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The primary request a shadow copies.
#[derive(Debug)]
pub struct Primary<'a> {
    /// Its route.
    pub route: &'a Arc<Route>,
    /// Its caller.
    pub key: Option<&'a Key>,
    /// The request as the primary target got it.
    pub request: &'a ChatRequest,
    /// Its size.
    pub estimate: &'a Estimate,
    /// Its record: request id, trace and API.
    pub record: &'a AccessRecord,
}

/// Copies the request to the route's candidate when it is in the mirrored
/// share; returns at once.
pub fn dispatch(app: &App, primary: &Primary<'_>) {
    let route = primary.route;
    let record = primary.record;
    let Some(mirror) = route.mirror.as_ref().filter(|m| m.copies(record.request_id())) else {
        return;
    };
    if mirror.targets.targets.is_empty() {
        return;
    }
    let charge = match primary
        .key
        .and_then(|k| k.config.budget.as_ref())
        .filter(|_| mirror.count_budget)
    {
        None => None,
        Some(name) => {
            let runtime = app.runtime().ok();
            let Some(config) = runtime.as_ref().and_then(|r| r.budgets.get(name)) else {
                return;
            };
            match app.budgets.admit(name, config, primary.estimate, 0.0, None) {
                Ok(Admitted::Serve(charge) | Admitted::Downgrade(charge, _)) => Some(charge),
                Err(_) => {
                    count(&app.metrics, &route.alias, "budget-exhausted");
                    return;
                }
            }
        }
    };
    let mut request = primary.request.clone();
    // The whole answer at once: nobody reads the candidate's stream.
    request.stream = None;
    request.stream_options = None;
    let job = Job {
        route: route.clone(),
        request,
        request_id: record.request_id().to_owned(),
        trace: record.trace().cloned(),
        api: record.api(),
        charge,
        metrics: app.metrics.clone(),
        sink: app.eval.clone(),
        redactor: app.settings.redactor.clone(),
    };
    tokio::spawn(job.run());
}

fn count(metrics: &Metrics, route: &str, result: &str) {
    metrics.shadow_requests.with_label_values(&[route, result]).inc();
}

struct Job {
    route: Arc<Route>,
    request: ChatRequest,
    request_id: String,
    trace: Option<RequestTrace>,
    api: Api,
    charge: Option<Charge>,
    metrics: Arc<Metrics>,
    sink: Option<Arc<Sink>>,
    redactor: Arc<dyn Redact>,
}

/// What the candidate answered.
#[derive(Default)]
struct Answer {
    text: String,
    finish_reasons: Vec<String>,
    usage: Usage,
}

impl Answer {
    fn note(&mut self, json: &[u8]) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        for choice in value["choices"].as_array().into_iter().flatten() {
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reasons.push(reason.to_owned());
            }
            let text = choice["message"]["content"]
                .as_str()
                .or(choice["delta"]["content"].as_str());
            self.text.push_str(text.unwrap_or_default());
        }
    }
}

impl Job {
    async fn run(self) {
        let Some(mirror) = &self.route.mirror else { return };
        let Some(target) = mirror.targets.targets.first() else {
            return;
        };
        let started = Instant::now();
        let limit = target.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let span = self.trace.as_ref().map(|trace| {
            trace.shadow(target.provider.kind().as_str(), &target.model, || {
                vec![
                    ("gen_ai.operation.name", Value::from(self.api.operation())),
                    ("llmesh.route", Value::from(self.route.alias.as_str())),
                    ("llmesh.provider", Value::from(target.provider_name.as_str())),
                    ("llmesh.request_id", Value::from(self.request_id.as_str())),
                ]
            })
        });
        let asking = tokio::time::timeout(limit, ask(target.provider.as_ref(), &target.model, &self.request));
        let asking = async {
            match &span {
                Some(span) => span.run(asking).await,
                None => asking.await,
            }
        };
        let outcome = telemetry::scoped(self.trace.as_ref(), asking)
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::new(
                    ErrorKind::Timeout,
                    "the shadow target did not answer in time",
                ))
            });
        let latency = started.elapsed();
        let (answer, error) = match outcome {
            Ok(answer) => (answer, ""),
            Err(error) => {
                tracing::debug!(route = %self.route.alias, provider = %target.provider_name, %error, "shadow request failed");
                (Answer::default(), error.kind.label())
            }
        };
        let used = answer.usage.prompt_tokens > 0 || answer.usage.completion_tokens > 0;
        let cost = target
            .price
            .as_ref()
            .filter(|_| used)
            .map(|price| pricing::cost(price, &answer.usage));
        count(
            &self.metrics,
            &self.route.alias,
            if error.is_empty() { "ok" } else { "error" },
        );
        if let Some(cost) = cost {
            self.metrics
                .shadow_cost_usd
                .with_label_values(&[&self.route.alias, &target.provider_name, &target.model])
                .inc_by(cost);
        }
        if let Some(charge) = &self.charge {
            charge.settle(&answer.usage, cost);
        }
        if let Some(span) = span {
            let failure = (!error.is_empty()).then_some(error);
            span.end_with(failure, outcome_attributes(&answer, target.model.as_str(), cost));
        }
        let Some(sink) = &self.sink else { return };
        sink.submit(&Record {
            timestamp: jiff::Timestamp::now().to_string(),
            kind: Kind::Shadow,
            request_id: self.request_id.clone(),
            trace_id: self
                .trace
                .as_ref()
                .map(RequestTrace::trace_id)
                .unwrap_or_default(),
            route: self.route.alias.clone(),
            api: self.api.as_str(),
            provider: target.provider_name.clone(),
            provider_kind: target.provider.kind().as_str(),
            model: target.model.clone(),
            status: if error.is_empty() { 200 } else { 502 },
            error,
            finish_reasons: answer.finish_reasons,
            input_tokens: answer.usage.prompt_tokens,
            output_tokens: answer.usage.completion_tokens,
            cost_usd: cost,
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            prompt: self.redactor.redact(&self.request.prompt().unwrap_or_default()),
            answer: self.redactor.redact(&answer.text),
        });
    }
}

/// The shadow span's account of the answer, in the request span's terms.
fn outcome_attributes(answer: &Answer, model: &str, cost: Option<f64>) -> Vec<Attribute> {
    let mut attributes = Vec::new();
    let usage = &answer.usage;
    if usage.prompt_tokens > 0 || usage.completion_tokens > 0 {
        attributes.push(("gen_ai.response.model", Value::from(model)));
        attributes.push(("gen_ai.usage.input_tokens", Value::from(usage.prompt_tokens)));
        attributes.push(("gen_ai.usage.output_tokens", Value::from(usage.completion_tokens)));
    }
    if !answer.finish_reasons.is_empty() {
        let reasons = answer.finish_reasons.clone();
        attributes.push(("gen_ai.response.finish_reasons", Value::StrArray(reasons)));
    }
    if let Some(cost) = cost {
        attributes.push(("llmesh.cost_usd", Value::Double(cost)));
    }
    attributes
}

/// Asks the candidate; a stream (a provider that always streams) is read to its end.
async fn ask(
    provider: &dyn crate::providers::Provider,
    model: &str,
    request: &ChatRequest,
) -> Result<Answer, ProviderError> {
    let mut answer = Answer::default();
    match provider.chat(request, model).await? {
        ChatReply::Complete(completed) => {
            answer.note(&completed.body);
            answer.usage = completed.usage;
        }
        ChatReply::Stream(mut stream) => {
            while let Some(event) = stream.0.next().await {
                match event? {
                    StreamEvent::Chunk(json) => answer.note(&json),
                    StreamEvent::Usage(usage) => answer.usage = usage,
                }
            }
        }
    }
    Ok(answer)
}
