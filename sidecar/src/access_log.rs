//! Account: one record per request, written as a JSON log line and into the
//! metrics when the request is over — for a complete answer just after the
//! response has been handed to the connection, for a stream when its last
//! chunk has gone out or the app hung up. Prompts and answers are never recorded.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use llmesh_crds::resources::Price;
use tokio::time::Instant;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::api::{Api, Usage};
use crate::attempts::AttemptFailure;
use crate::auth::Key;
use crate::cache::{CacheStatus, Entry};
use crate::eval::{self, Sink};
use crate::guardrails::Findings;
use crate::metrics::Metrics;
use crate::pricing;
use crate::redact::Redact;
use crate::routing::{Estimate, Route, Target};
use crate::settle::Settle;
use crate::telemetry::{Attribute, Event, RequestTrace, Value};

/// `x-llmesh-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-llmesh-request-id");
/// `x-llmesh-route`.
pub const ROUTE: HeaderName = HeaderName::from_static("x-llmesh-route");
/// `x-llmesh-served-route`: the route whose targets answered, when a `route` fallback step served.
pub const SERVED_ROUTE: HeaderName = HeaderName::from_static("x-llmesh-served-route");
/// `x-llmesh-provider`.
pub const PROVIDER: HeaderName = HeaderName::from_static("x-llmesh-provider");
/// `x-llmesh-model`.
pub const MODEL: HeaderName = HeaderName::from_static("x-llmesh-model");
/// `x-llmesh-attempts`.
pub const ATTEMPTS: HeaderName = HeaderName::from_static("x-llmesh-attempts");
/// `x-llmesh-cost-usd`: what the answer cost, from its usage and the target's price.
pub const COST_USD: HeaderName = HeaderName::from_static("x-llmesh-cost-usd");
/// `x-llmesh-fallback`: 0 when the route's own targets served, n for its n-th fallback step.
pub const FALLBACK: HeaderName = HeaderName::from_static("x-llmesh-fallback");
/// `x-llmesh-cache`: `hit`, `semantic-hit`, `miss`, `bypass` or `refresh`, on caching routes.
pub const CACHE: HeaderName = HeaderName::from_static(crate::cache::CACHE_HEADER);

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Still going.
    Open,
    /// Answered in full (or failed with an error response).
    Done,
    /// A stream ended with an error event.
    StreamError(&'static str),
}

/// What is known about one request.
#[derive(Debug)]
pub struct AccessRecord {
    metrics: Arc<Metrics>,
    started: Instant,
    api: Api,
    request_id: String,
    route: Option<String>,
    /// The other route whose targets answered, after a `route` fallback step.
    served_route: Option<String>,
    key: Option<Arc<Key>>,
    provider_name: Option<String>,
    provider_kind: &'static str,
    model: Option<String>,
    price: Option<Price>,
    attempts: u32,
    failures: Vec<AttemptFailure>,
    step: usize,
    status: u16,
    stream: bool,
    usage: Usage,
    first_chunk: Option<Duration>,
    error: Option<&'static str>,
    ending: Ending,
    cache: Option<CacheStatus>,
    /// What the stored answer cost when it was made, on a hit.
    saved: Option<(Usage, f64)>,
    rate_limit_headers: HeaderMap,
    settlements: Vec<Box<dyn Settle>>,
    content: Option<Content>,
    findings: Findings,
    /// The request's input tokens as estimated at admission.
    estimated_prompt_tokens: u64,
    /// Answer chunks sent: the output-token estimate of a stream cut short.
    chunks: u64,
    /// The request's trace, ended with the record.
    trace: Option<RequestTrace>,
    /// Finish reasons of the answer, read only when something records them.
    finish_reasons: Vec<String>,
    /// Where the request goes when it is sampled for eval.
    eval: Option<Arc<Sink>>,
}

/// Prompt and answer text, for routes that log it or requests sampled for eval.
#[derive(Debug)]
struct Content {
    redactor: Arc<dyn Redact>,
    prompt: String,
    answer: String,
    /// The route logs content (access log and span events).
    logged: bool,
}

impl AccessRecord {
    /// Starts the record of a new request.
    pub fn start(metrics: Arc<Metrics>, api: Api) -> Self {
        Self {
            metrics,
            started: Instant::now(),
            api,
            request_id: uuid::Uuid::new_v4().simple().to_string(),
            route: None,
            served_route: None,
            key: None,
            provider_name: None,
            provider_kind: "",
            model: None,
            price: None,
            attempts: 0,
            failures: Vec::new(),
            step: 0,
            status: 0,
            stream: false,
            usage: Usage::default(),
            first_chunk: None,
            error: None,
            ending: Ending::Open,
            cache: None,
            saved: None,
            rate_limit_headers: HeaderMap::new(),
            settlements: Vec::new(),
            estimated_prompt_tokens: 0,
            chunks: 0,
            content: None,
            findings: Findings::default(),
            trace: None,
            finish_reasons: Vec::new(),
            eval: None,
        }
    }

    /// Notes what the cache did (on a caching route).
    pub fn set_cache(&mut self, status: CacheStatus) {
        self.cache = Some(status);
    }

    /// Notes an answer served from the cache: who made it, and what asking
    /// them again would have cost.
    pub fn served_from_cache(&mut self, entry: &Entry, status: CacheStatus) {
        self.cache = Some(status);
        self.provider_name = Some(entry.origin.provider_name.clone());
        self.provider_kind = entry.origin.provider_kind.as_str();
        self.model = Some(entry.origin.model.clone());
        self.saved = Some((entry.usage.clone(), entry.cost_usd));
    }

    /// Notes whether the app asked for a stream.
    pub fn set_stream(&mut self, stream: bool) {
        self.stream = stream;
    }

    /// Notes the route.
    pub fn set_route(&mut self, route: &Route) {
        self.route = Some(route.alias.clone());
    }

    /// Notes the other route whose targets answered (a `route` fallback step).
    pub fn set_served_route(&mut self, alias: &str) {
        self.served_route = Some(alias.to_owned());
    }

    /// Notes the virtual key the request is made with.
    pub fn set_key(&mut self, key: &Arc<Key>) {
        self.key = Some(key.clone());
    }

    /// Notes the key's `x-ratelimit-*` headers, sent with the answer.
    pub fn set_rate_limit_headers(&mut self, headers: HeaderMap) {
        self.rate_limit_headers = headers;
    }

    /// Where guardrails note this request's findings (logged and counted at the end).
    pub fn guardrail_findings(&self) -> &Findings {
        &self.findings
    }

    /// Logs this request's prompt and answer (the route opted in), through `redactor`.
    pub fn log_content(&mut self, redactor: Arc<dyn Redact>, prompt: String) {
        self.content = Some(Content {
            redactor,
            prompt,
            answer: String::new(),
            logged: true,
        });
    }

    /// Writes this request to the eval sink when it is over, with its
    /// prompt and answer through `redactor`.
    pub fn sample_for_eval(&mut self, sink: Arc<Sink>, redactor: Arc<dyn Redact>, prompt: Option<String>) {
        self.eval = Some(sink);
        if self.content.is_none() {
            self.content = Some(Content {
                redactor,
                prompt: prompt.unwrap_or_default(),
                answer: String::new(),
                logged: false,
            });
        }
    }

    /// The API the app called.
    pub fn api(&self) -> Api {
        self.api
    }

    /// The request id (`x-llmesh-request-id`).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The trace id, when the request is traced.
    pub fn trace_id(&self) -> Option<String> {
        self.trace.as_ref().map(RequestTrace::trace_id)
    }

    /// The request's trace, when it is traced.
    pub fn trace(&self) -> Option<&RequestTrace> {
        self.trace.as_ref()
    }

    /// Notes the request's trace; its span ends with the record.
    pub fn set_trace(&mut self, trace: RequestTrace) {
        self.trace = Some(trace);
    }

    /// Notes answer text and finish reasons from a complete chat body or a
    /// stream chunk, when content is logged or the request is traced
    /// (parsing costs nothing otherwise).
    pub fn note_answer(&mut self, json: &[u8]) {
        if self.content.is_none() && !self.trace.as_ref().is_some_and(RequestTrace::sampled) {
            return;
        }
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
            return;
        };
        let choices = value["choices"].as_array().into_iter().flatten();
        for choice in choices {
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reasons.push(reason.to_owned());
            }
            if let Some(content) = &mut self.content {
                let text = choice["message"]["content"]
                    .as_str()
                    .or(choice["delta"]["content"].as_str());
                content.answer.push_str(text.unwrap_or_default());
            }
        }
    }

    /// Holds a charge to settle when the request is over.
    pub fn hold(&mut self, charge: impl Settle + 'static) {
        self.settlements.push(Box::new(charge));
    }

    /// Notes the target of the last attempt, how many were made, and the failed ones.
    pub fn set_attempts(
        &mut self,
        target: Option<&Target>,
        attempts: u32,
        failures: Vec<AttemptFailure>,
        step: usize,
    ) {
        self.failures = failures;
        self.step = step;
        if let Some(target) = target {
            self.provider_name = Some(target.provider_name.clone());
            self.provider_kind = target.provider.kind().as_str();
            self.model = Some(target.model.clone());
            self.price.clone_from(&target.price);
        }
        self.attempts = attempts;
    }

    /// Notes the response status.
    pub fn set_status(&mut self, status: u16, error: Option<&'static str>) {
        self.status = status;
        self.error = error;
    }

    /// Notes a chunk of a stream going out.
    pub fn chunk_sent(&mut self) {
        self.chunks += 1;
        self.first_chunk.get_or_insert_with(|| self.started.elapsed());
    }

    /// Notes the input tokens estimated at admission.
    pub fn set_estimate(&mut self, estimate: &Estimate) {
        self.estimated_prompt_tokens = estimate.prompt_tokens;
    }

    /// What the provider billed, as far as is known: its reported usage; for
    /// a request the app abandoned once a provider had it (none reported),
    /// the estimated input and one token per chunk already streamed.
    fn billed(&self) -> Usage {
        let reported = self.usage.prompt_tokens > 0 || self.usage.completion_tokens > 0;
        let served_from_cache = matches!(self.cache, Some(CacheStatus::Hit | CacheStatus::SemanticHit));
        let abandoned = self.ending == Ending::Open && !served_from_cache;
        if reported || !abandoned || self.estimated_prompt_tokens == 0 {
            return self.usage.clone();
        }
        Usage::new(self.estimated_prompt_tokens, self.chunks, 0, 0, 0)
    }

    /// Notes token usage.
    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = usage;
    }

    /// USD of the usage noted so far, when the target has a price and
    /// there was usage.
    pub fn cost(&self) -> Option<f64> {
        let used = self.usage.prompt_tokens > 0 || self.usage.completion_tokens > 0;
        self.price
            .as_ref()
            .filter(|_| used)
            .map(|price| pricing::cost(price, &self.usage))
    }

    /// The request is over.
    pub fn finish(&mut self) {
        if self.ending == Ending::Open {
            self.ending = Ending::Done;
        }
    }

    /// The request is over and its response is ready: the record is written
    /// by a task that runs once this one has handed the response to the
    /// connection, so the log line and the metrics cost the app no latency.
    pub fn close_after_response(mut self) {
        self.finish();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { drop(self) });
        }
    }

    /// A committed stream ended with an error event of this class.
    pub fn stream_failed(&mut self, class: &'static str) {
        self.ending = Ending::StreamError(class);
    }

    /// The `ProviderSecret` of the last attempt, or `""` before any.
    pub fn provider_name(&self) -> &str {
        self.provider_name.as_deref().unwrap_or("")
    }

    /// Adds the `x-llmesh-*` and rate-limit headers known so far to
    /// `headers` (the response's own map: building one to merge costs a
    /// second hash of every name).
    pub fn add_headers(&self, headers: &mut HeaderMap) {
        // Room for all of them at once rather than growing the map twice.
        headers.reserve(9 + self.rate_limit_headers.len());
        // Fixed names: no check and no copy.
        if !self.provider_kind.is_empty() {
            headers.insert(PROVIDER, HeaderValue::from_static(self.provider_kind));
        }
        if let Some(status) = self.cache {
            headers.insert(CACHE, HeaderValue::from_static(status.as_str()));
        }
        let mut put = |name: HeaderName, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        };
        put(REQUEST_ID, &self.request_id);
        if let Some(route) = &self.route {
            put(ROUTE, route);
        }
        if let Some(served) = &self.served_route {
            put(SERVED_ROUTE, served);
        }
        if let Some(model) = &self.model {
            put(MODEL, model);
        }
        if let Some(cost) = self.cost() {
            put(COST_USD, &pricing::format_usd(cost));
        }
        if self.attempts > 0 {
            headers.insert(ATTEMPTS, HeaderValue::from(self.attempts));
            headers.insert(FALLBACK, HeaderValue::from(self.step));
        }
        for (name, value) in &self.rate_limit_headers {
            headers.insert(name, value.clone());
        }
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        self.usage = self.billed();
        let elapsed = self.started.elapsed();
        let outcome = match self.ending {
            Ending::Open => "client-closed",
            Ending::Done if self.status < 400 => "ok",
            Ending::Done => "error",
            Ending::StreamError(_) => "stream-error",
        };
        let error = match self.ending {
            Ending::StreamError(class) => Some(class),
            _ => self.error,
        };
        let route = self.route.as_deref().unwrap_or("");
        let model = self.model.as_deref().unwrap_or("");
        let key = self.key.as_deref();
        let key_labels = [
            key.map_or("", |k| k.name.as_str()),
            key.and_then(|k| k.config.team.as_deref()).unwrap_or(""),
            key.and_then(|k| k.config.feature.as_deref()).unwrap_or(""),
        ];
        let [key_name, team, feature] = key_labels;
        let status = self.status.to_string();
        self.metrics
            .requests
            .with_label_values(&[route, self.provider_kind, model, &status, key_name, team, feature])
            .inc();
        for failure in &self.failures {
            self.metrics
                .upstream_errors
                .with_label_values(&[failure.provider, failure.kind.label()])
                .inc();
            if failure.retried {
                self.metrics
                    .retries
                    .with_label_values(&[route, failure.provider])
                    .inc();
            }
        }
        if self.step > 0 {
            self.metrics
                .fallbacks
                .with_label_values(&[route, &self.step.to_string()])
                .inc();
        }
        let findings = self.findings.take();
        for finding in &findings {
            self.metrics
                .guardrail_findings
                .with_label_values(&[
                    route,
                    &finding.policy,
                    finding.kind.as_str(),
                    finding.action.as_str(),
                    finding.phase.as_str(),
                ])
                .inc();
        }
        let cost = self.cost();
        for charge in &self.settlements {
            charge.settle(&self.usage, cost);
        }
        if let Some(cost) = cost {
            self.metrics
                .cost_usd
                .with_label_values(&[route, self.provider_kind, model, key_name, team, feature])
                .inc_by(cost);
        }
        let labels = [self.api.operation(), self.provider_kind, model, route];
        let error_label = error.unwrap_or("");
        let duration_labels = [
            labels[0],
            labels[1],
            labels[2],
            labels[3],
            error_label,
            self.api.as_str(),
        ];
        self.metrics
            .request_duration
            .with_label_values(&duration_labels)
            .observe(elapsed.as_secs_f64());
        if let Some(first) = self.first_chunk {
            self.metrics
                .time_to_first_token
                .with_label_values(&labels)
                .observe(first.as_secs_f64());
        }
        if self.usage.total_tokens > 0 || self.usage.prompt_tokens > 0 {
            for (kind, count) in [
                ("input", self.usage.prompt_tokens),
                ("output", self.usage.completion_tokens),
            ] {
                let token_labels = [
                    labels[0], labels[1], labels[2], labels[3], key_name, team, feature, kind,
                ];
                #[allow(clippy::cast_precision_loss)]
                self.metrics
                    .token_usage
                    .with_label_values(&token_labels)
                    .observe(count as f64);
            }
        }
        if let Some(status) = self.cache {
            self.metrics
                .cache_requests
                .with_label_values(&[route, status.as_str()])
                .inc();
        }
        if let Some((usage, usd)) = &self.saved {
            for (kind, count) in [
                ("input", usage.prompt_tokens),
                ("output", usage.completion_tokens),
            ] {
                self.metrics
                    .cache_saved_tokens
                    .with_label_values(&[route, kind])
                    .inc_by(count);
            }
            self.metrics
                .cache_saved_usd
                .with_label_values(&[route])
                .inc_by(*usd);
        }
        let redacted = self
            .content
            .as_ref()
            .map(|c| (c.redactor.redact(&c.prompt), c.redactor.redact(&c.answer)));
        let trace_id = self
            .trace
            .as_ref()
            .map(RequestTrace::trace_id)
            .unwrap_or_default();
        let logged = self.content.as_ref().is_some_and(|c| c.logged);
        let content = redacted.as_ref().filter(|_| logged);
        if let Some(trace) = self.trace.take() {
            self.end_span(&trace, error_label, cost, content);
        }
        if let Some(sink) = self.eval.take() {
            let (prompt, answer) = redacted.clone().unwrap_or_default();
            sink.submit(&eval::Record {
                timestamp: jiff::Timestamp::now().to_string(),
                kind: eval::Kind::Primary,
                request_id: self.request_id.clone(),
                trace_id,
                route: route.to_owned(),
                api: self.api.as_str(),
                provider: self.provider_name.clone().unwrap_or_default(),
                provider_kind: self.provider_kind,
                model: model.to_owned(),
                status: self.status,
                error: error_label,
                finish_reasons: self.finish_reasons.clone(),
                input_tokens: self.usage.prompt_tokens,
                output_tokens: self.usage.completion_tokens,
                cost_usd: cost,
                latency_ms: millis(elapsed),
                prompt,
                answer,
            });
        }
        if tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            let mut line = JsonLine::new();
            line.field("timestamp", format_args!("{:.6}", jiff::Timestamp::now()));
            line.field("level", "INFO");
            line.field("request_id", &self.request_id);
            line.field("operation", self.api.operation());
            line.field("api", self.api.as_str());
            line.field("route", route);
            line.field("virtual_key", key_name);
            line.field("team", team);
            line.field("feature", feature);
            line.field("provider", self.provider_name.as_deref().unwrap_or(""));
            line.field("provider_kind", self.provider_kind);
            line.field("model", model);
            line.field("status", self.status);
            line.field("outcome", outcome);
            line.field("error", error_label);
            line.field("stream", self.stream);
            line.field("attempts", self.attempts);
            line.field("fallback_step", self.step);
            line.field("cache", self.cache.map_or("", CacheStatus::as_str));
            line.field("input_tokens", self.usage.prompt_tokens);
            line.field("output_tokens", self.usage.completion_tokens);
            line.field("cached_input_tokens", self.usage.cached_input());
            line.field("reasoning_tokens", self.usage.reasoning());
            // Absent when the target has no price.
            if let Some(cost) = cost {
                line.field("cost_usd", cost);
            }
            line.field("latency_ms", millis(elapsed));
            if let Some(first) = self.first_chunk {
                line.field("ttft_ms", millis(first));
            }
            if !findings.is_empty() {
                let listed: Vec<String> = findings
                    .iter()
                    .map(|f| {
                        format!(
                            "{}/{}/{}/{}",
                            f.policy,
                            f.kind,
                            f.action.as_str(),
                            f.phase.as_str()
                        )
                    })
                    .collect();
                line.field("guardrails", listed.join(","));
            }
            // Only on routes with `logContent`, after the redaction hook.
            if let Some((prompt, answer)) = content {
                line.field("prompt", prompt);
                line.field("answer", answer);
            }
            line.field("target", TARGET);
            tracing::info!(target: TARGET, line = line.finish().as_str());
        }
    }
}

impl AccessRecord {
    /// Ends the request's span with the GenAI semantic-convention attributes
    /// and llmesh's own; the (redacted) prompt and answer as events only
    /// where the route logs content.
    fn end_span(
        &self,
        trace: &RequestTrace,
        error: &str,
        cost: Option<f64>,
        content: Option<&(String, String)>,
    ) {
        if !trace.sampled() {
            return;
        }
        let key = self.key.as_deref();
        let text = |v: Option<&String>| Value::from(v.map_or("", String::as_str));
        let mut attributes: Vec<Attribute> = vec![
            ("gen_ai.operation.name", Value::from(self.api.operation())),
            ("gen_ai.request.model", text(self.route.as_ref())),
            ("http.response.status_code", Value::from(u64::from(self.status))),
            ("llmesh.request_id", Value::from(self.request_id.as_str())),
            ("llmesh.api", Value::from(self.api.as_str())),
            ("llmesh.route", text(self.route.as_ref())),
            ("llmesh.stream", Value::Bool(self.stream)),
            ("llmesh.attempts", Value::from(u64::from(self.attempts))),
            ("llmesh.fallback_step", Value::from(self.step as u64)),
        ];
        if !self.provider_kind.is_empty() {
            attributes.push(("gen_ai.provider.name", Value::from(self.provider_kind)));
            attributes.push(("gen_ai.response.model", text(self.model.as_ref())));
            attributes.push(("llmesh.provider", text(self.provider_name.as_ref())));
        }
        if self.usage.prompt_tokens > 0 || self.usage.completion_tokens > 0 {
            attributes.push(("gen_ai.usage.input_tokens", Value::from(self.usage.prompt_tokens)));
            attributes.push((
                "gen_ai.usage.output_tokens",
                Value::from(self.usage.completion_tokens),
            ));
        }
        if !self.finish_reasons.is_empty() {
            let reasons = self.finish_reasons.clone();
            attributes.push(("gen_ai.response.finish_reasons", Value::StrArray(reasons)));
        }
        if !error.is_empty() {
            attributes.push(("error.type", Value::from(error)));
        }
        if let Some(served) = &self.served_route {
            attributes.push(("llmesh.served_route", Value::from(served.as_str())));
        }
        if let Some(key) = key {
            attributes.push(("llmesh.virtual_key", Value::from(key.name.as_str())));
            if let Some(team) = &key.config.team {
                attributes.push(("llmesh.team", Value::from(team.as_str())));
            }
        }
        if let Some(status) = self.cache {
            attributes.push(("llmesh.cache", Value::from(status.as_str())));
        }
        if let Some(cost) = cost {
            attributes.push(("llmesh.cost_usd", Value::Double(cost)));
        }
        let events = content.map_or_else(Vec::new, |(prompt, answer)| {
            let now = crate::telemetry::now_ns();
            vec![
                Event {
                    time_ns: now,
                    name: "gen_ai.user.message",
                    attributes: vec![("content", Value::from(prompt.as_str()))],
                },
                Event {
                    time_ns: now,
                    name: "gen_ai.choice",
                    attributes: vec![("content", Value::from(answer.as_str()))],
                },
            ]
        });
        let failed = (!error.is_empty()).then(|| error.to_owned());
        trace.end(self.route.as_deref().unwrap_or(""), attributes, events, failed);
    }
}

/// The `tracing` target of access-log lines, to filter them
/// (`LLMESH_LOG=info,llmesh::access=off`).
pub const TARGET: &str = "llmesh::access";

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One access-log line, written field by field. Not a `Serialize` struct:
/// serde escapes every field *name* as if it could hold a quote, and on the
/// pass-through path that was a third of the line's cost; the names here are
/// constants, so only values are escaped. (Before that, `tracing`'s own JSON
/// formatter cost a fifth of the sidecar's CPU time per request.) The field
/// names match the other log lines.
struct JsonLine(Vec<u8>);

impl JsonLine {
    fn new() -> Self {
        let mut buffer = Vec::with_capacity(512);
        buffer.push(b'{');
        Self(buffer)
    }

    /// Starts a field; `name` must need no escaping.
    fn name(&mut self, name: &'static str) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn field(&mut self, name: &'static str, value: impl serde::Serialize) {
        self.name(name);
        // Strings, numbers and booleans: writing them to memory cannot fail,
        // and a non-finite cost becomes `null` as serde_json writes it.
        let _ = serde_json::to_writer(&mut self.0, &value);
    }

    fn finish(mut self) -> String {
        self.0.push(b'}');
        // Names are `str`s and serde_json writes UTF-8.
        String::from_utf8(self.0).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Writes access-log events as the JSON line they carry and hands every
/// other event to the inner format, so both go through the same filter and
/// non-blocking writer.
#[derive(Debug)]
pub struct AccessLines<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for AccessLines<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if event.metadata().target() == TARGET {
            let mut line = WriteLine {
                writer: &mut writer,
                written: None,
            };
            event.record(&mut line);
            if let Some(written) = line.written {
                return written;
            }
        }
        self.0.format_event(context, writer, event)
    }
}

/// Writes the `line` field of an access-log event.
struct WriteLine<'a, 'w> {
    writer: &'a mut Writer<'w>,
    written: Option<std::fmt::Result>,
}

impl tracing::field::Visit for WriteLine<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "line" {
            self.written = Some(writeln!(self.writer, "{value}"));
        }
    }

    fn record_debug(&mut self, _field: &tracing::field::Field, _value: &dyn std::fmt::Debug) {}
}

#[cfg(test)]
mod tests {
    use super::JsonLine;

    #[test]
    fn a_line_is_one_json_object_with_its_values_escaped() {
        let mut line = JsonLine::new();
        line.field("route", "say \"hi\"\nthen\u{7}go");
        line.field("status", 502_u16);
        line.field("stream", true);
        line.field("cost_usd", 0.000_125_f64);
        line.field("broken_cost", f64::NAN);
        line.field("model", "gpt-4o-mini ✓");
        let text = line.finish();
        assert!(!text.contains('\n'), "one line: {text}");
        let parsed: serde_json::Value = serde_json::from_str(&text).expect(&text);
        assert_eq!(
            parsed,
            serde_json::json!({
                "route": "say \"hi\"\nthen\u{7}go",
                "status": 502,
                "stream": true,
                "cost_usd": 0.000_125,
                "broken_cost": null,
                "model": "gpt-4o-mini ✓",
            })
        );
        // Fields keep the order they were written in, as log readers expect.
        assert!(text.starts_with(r#"{"route":"#), "{text}");
        assert_eq!(JsonLine::new().finish(), "{}");
    }
}
