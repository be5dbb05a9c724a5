//! Traces: the sidecar joins the app's trace (W3C Trace Context) with one
//! span per request and one child span per upstream attempt, and exports
//! them with OTLP (HTTP/protobuf or gRPC) off the request path.
//!
//! The request path only touches this module through [`RequestTrace`]: the
//! handler starts one and runs the request inside [`scoped`];
//! the attempt loop wraps each attempt in an [`AttemptSpan`], whose
//! `traceparent` the upstream client reads from [`upstream_traceparent`];
//! the access record ends the request span with what it knows; a shadow
//! copy of the request gets a span of its own from [`RequestTrace::shadow`].

pub mod context;
pub mod export;
pub mod grpc;
mod otlp;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rand::Rng;

pub use self::context::SpanContext;
use self::export::{Batching, Exporter, Post};
use crate::metrics::Metrics;

/// `OTEL_SDK_DISABLED`: `true` turns tracing off.
pub const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// `OTEL_TRACES_EXPORTER`: `otlp` (default) or `none`.
pub const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL; over HTTP spans
/// go to `/v1/traces` under it, over gRPC to its scheme and authority.
pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full URL spans are posted to.
pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` or `grpc`.
pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`.
pub const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_HEADERS`: `name=value,…`, values percent-encoded.
pub const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`.
pub const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// `OTEL_EXPORTER_OTLP_TIMEOUT`: milliseconds per export.
pub const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`.
pub const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// `OTEL_SERVICE_NAME`.
pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,…`.
pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// `OTEL_TRACES_SAMPLER`.
pub const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// `OTEL_TRACES_SAMPLER_ARG`: the ratio of the ratio samplers.
pub const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// `OTEL_BSP_MAX_QUEUE_SIZE`.
pub const MAX_QUEUE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
pub const MAX_BATCH: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// `OTEL_BSP_SCHEDULE_DELAY`: milliseconds.
pub const SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";

/// A span attribute.
pub type Attribute = (&'static str, Value);

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// A whole number.
    Int(i64),
    /// A number.
    Double(f64),
    /// A flag.
    Bool(bool),
    /// A list of texts.
    StrArray(Vec<String>),
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Str(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Str(text)
    }
}

impl From<u64> for Value {
    fn from(number: u64) -> Self {
        Self::Int(i64::try_from(number).unwrap_or(i64::MAX))
    }
}

/// The OTLP span kinds llmesh uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The request the app made.
    Server = 2,
    /// A call to the upstream.
    Client = 3,
}

/// A timestamped event on a span.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Unix nanoseconds.
    pub time_ns: u64,
    /// Its name.
    pub name: &'static str,
    /// Its attributes.
    pub attributes: Vec<Attribute>,
}

/// A finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanData {
    /// Its ids.
    pub context: SpanContext,
    /// The parent span, if any.
    pub parent: Option<[u8; 8]>,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: SpanKind,
    /// Unix nanoseconds.
    pub start_ns: u64,
    /// Unix nanoseconds.
    pub end_ns: u64,
    /// Its attributes.
    pub attributes: Vec<Attribute>,
    /// Its events.
    pub events: Vec<Event>,
    /// The error description when it failed.
    pub error: Option<String>,
}

/// Unix nanoseconds now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Which new traces are recorded (`OTEL_TRACES_SAMPLER`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    /// Whether a caller's sampling decision is followed.
    pub parent_based: bool,
    /// The share of traces recorded when there is no decision to follow.
    pub ratio: f64,
}

impl Sampler {
    /// Whether a trace is recorded: the parent's decision when there is one
    /// and the sampler follows it, otherwise by the trace id, so every
    /// service with the same ratio keeps the same traces.
    fn sampled(self, trace_id: &[u8; 16], parent: Option<&SpanContext>) -> bool {
        if let Some(parent) = parent.filter(|_| self.parent_based) {
            return parent.sampled;
        }
        let mut low = [0; 8];
        low.copy_from_slice(&trace_id[8..]);
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let bound = (self.ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
        self.ratio >= 1.0 || u64::from_be_bytes(low) < bound
    }
}

/// A trace setting that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct InvalidVariable {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// Why it is wrong.
    pub reason: String,
}

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `http/protobuf`: a POST per batch.
    HttpProtobuf,
    /// `grpc`: a `TraceService/Export` call per batch over HTTP/2.
    Grpc,
}

impl Protocol {
    /// The collector the OpenTelemetry specification names when no
    /// endpoint is set.
    fn default_endpoint(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http://localhost:4318",
            Self::Grpc => "http://localhost:4317",
        }
    }
}

/// Where and how spans are exported.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSettings {
    /// How spans travel.
    pub protocol: Protocol,
    /// The URL spans are posted to (over gRPC, only its scheme and
    /// authority count).
    pub endpoint: String,
    /// Headers sent with every export (collector credentials).
    pub headers: Vec<(String, String)>,
    /// Batching and timeout.
    pub batching: Batching,
    /// Which traces are recorded.
    pub sampler: Sampler,
    /// `service.name` and the other resource attributes.
    pub resource: Vec<(String, String)>,
}

impl TraceSettings {
    /// Reads the standard OpenTelemetry variables; `None` when neither an
    /// endpoint nor a protocol is set, or tracing is turned off.
    ///
    /// # Errors
    /// A variable is set to something llmesh cannot honour.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, InvalidVariable> {
        let get = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let invalid = |name: &'static str, value: String, reason: &str| InvalidVariable {
            name,
            value,
            reason: reason.to_owned(),
        };
        if get(SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match get(TRACES_EXPORTER).as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => return Err(invalid(TRACES_EXPORTER, other.to_owned(), "use otlp or none")),
        }
        let protocol = match [TRACES_PROTOCOL, PROTOCOL]
            .into_iter()
            .find_map(|n| get(n).map(|v| (n, v)))
        {
            None => None,
            Some((_, v)) if v == "http/protobuf" => Some(Protocol::HttpProtobuf),
            Some((_, v)) if v == "grpc" => Some(Protocol::Grpc),
            Some((name, v)) => return Err(invalid(name, v, "llmesh exports http/protobuf or grpc")),
        };
        let endpoint = match (get(TRACES_ENDPOINT), get(ENDPOINT)) {
            (Some(url), _) => url,
            (None, None) if protocol.is_none() => return Ok(None),
            (None, base) => {
                let protocol = protocol.unwrap_or(Protocol::HttpProtobuf);
                let base = base.unwrap_or_else(|| protocol.default_endpoint().to_owned());
                match protocol {
                    Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                    Protocol::Grpc => base,
                }
            }
        };
        let protocol = protocol.unwrap_or(Protocol::HttpProtobuf);
        let named = if get(TRACES_ENDPOINT).is_some() {
            TRACES_ENDPOINT
        } else {
            ENDPOINT
        };
        match endpoint.parse::<http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() => {}
            _ => return Err(invalid(named, endpoint, "an http:// or https:// URL")),
        }
        let millis = |name: &'static str, default: u64| -> Result<Duration, InvalidVariable> {
            get(name).map_or(Ok(Duration::from_millis(default)), |v| {
                v.parse()
                    .map(Duration::from_millis)
                    .map_err(|_| invalid(name, v, "a number of milliseconds"))
            })
        };
        let count = |name: &'static str, default: usize| -> Result<usize, InvalidVariable> {
            get(name).map_or(Ok(default), |v| match v.parse() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(invalid(name, v, "a positive whole number")),
            })
        };
        let timeout = match get(TRACES_TIMEOUT) {
            Some(_) => millis(TRACES_TIMEOUT, 10_000)?,
            None => millis(TIMEOUT, 10_000)?,
        };
        let batching = Batching {
            max_queue: count(MAX_QUEUE, 2048)?,
            max_batch: count(MAX_BATCH, 512)?,
            delay: millis(SCHEDULE_DELAY, 5000)?,
            timeout,
        };
        let headers_name = if get(TRACES_HEADERS).is_some() {
            TRACES_HEADERS
        } else {
            HEADERS
        };
        let headers = pairs(get(headers_name).as_deref().unwrap_or_default());
        let mut resource = pairs(get(RESOURCE_ATTRIBUTES).as_deref().unwrap_or_default());
        let service = get(SERVICE_NAME).unwrap_or_else(|| "llmesh-sidecar".to_owned());
        resource.retain(|(key, _)| key != "service.name");
        resource.insert(0, ("service.name".to_owned(), service));
        Ok(Some(Self {
            protocol,
            endpoint,
            headers,
            batching,
            sampler: sampler(get(SAMPLER), get(SAMPLER_ARG))?,
            resource,
        }))
    }
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<Sampler, InvalidVariable> {
    let ratio = || -> Result<f64, InvalidVariable> {
        match arg.clone() {
            None => Ok(1.0),
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(InvalidVariable {
                    name: SAMPLER_ARG,
                    value: v,
                    reason: "a ratio from 0 to 1".to_owned(),
                }),
            },
        }
    };
    let (parent_based, ratio) = match name.as_deref().unwrap_or("parentbased_always_on") {
        "always_on" => (false, 1.0),
        "always_off" => (false, 0.0),
        "traceidratio" => (false, ratio()?),
        "parentbased_always_on" => (true, 1.0),
        "parentbased_always_off" => (true, 0.0),
        "parentbased_traceidratio" => (true, ratio()?),
        other => {
            return Err(InvalidVariable {
                name: SAMPLER,
                value: other.to_owned(),
                reason: "use always_on, always_off, traceidratio or their parentbased_ forms".to_owned(),
            });
        }
    };
    Ok(Sampler { parent_based, ratio })
}

/// `key=value,…` with percent-encoded values, as the OTLP variables write them.
fn pairs(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = percent_encoding::percent_decode_str(value.trim()).decode_utf8_lossy();
            Some((key.trim().to_owned(), value.into_owned())).filter(|(k, _)| !k.is_empty())
        })
        .collect()
}

/// Starts request traces and hands finished spans to the exporter.
#[derive(Debug)]
pub struct Tracer {
    sampler: Sampler,
    exporter: Exporter,
}

impl Tracer {
    /// Starts the exporter; `post` sends one encoded batch to the collector.
    pub fn start(settings: &TraceSettings, post: Post, metrics: Arc<Metrics>) -> Arc<Self> {
        let resource = settings
            .resource
            .iter()
            .map(|(key, value)| -> Attribute { (leak(key), Value::Str(value.clone())) })
            .collect();
        let exporter = Exporter::spawn(settings.batching.clone(), resource, post, metrics);
        Arc::new(Self {
            sampler: settings.sampler,
            exporter,
        })
    }

    /// Starts the trace of a request whose headers may carry the app's context.
    pub fn request(self: &Arc<Self>, headers: &http::HeaderMap, operation: &'static str) -> RequestTrace {
        let parent = SpanContext::from_headers(headers);
        let trace_id = parent.as_ref().map_or_else(new_trace_id, |p| p.trace_id);
        let sampled = self.sampler.sampled(&trace_id, parent.as_ref());
        let context = SpanContext {
            trace_id,
            span_id: new_span_id(),
            sampled,
            trace_state: parent.as_ref().map(|p| p.trace_state.clone()).unwrap_or_default(),
        };
        RequestTrace(Arc::new(Trace {
            tracer: self.clone(),
            parent: parent.map(|p| p.span_id),
            context,
            operation,
            start_ns: now_ns(),
            children: Mutex::new(Vec::new()),
        }))
    }
}

/// Resource keys are read once at start-up and live as long as the process.
fn leak(key: &str) -> &'static str {
    Box::leak(key.to_owned().into_boxed_str())
}

fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::rng().random();
        if id != [0; 16] {
            return id;
        }
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::rng().random();
        if id != [0; 8] {
            return id;
        }
    }
}

#[derive(Debug)]
struct Trace {
    tracer: Arc<Tracer>,
    parent: Option<[u8; 8]>,
    context: SpanContext,
    operation: &'static str,
    start_ns: u64,
    children: Mutex<Vec<SpanData>>,
}

/// One request's place in its trace.
#[derive(Clone, Debug)]
pub struct RequestTrace(Arc<Trace>);

tokio::task_local! {
    /// The trace of the request the current task serves.
    static REQUEST: RequestTrace;
    /// The `traceparent` of the upstream attempt being made.
    static UPSTREAM: String;
}

impl RequestTrace {
    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        self.0.context.trace_id_hex()
    }

    /// Whether the trace is recorded.
    pub fn sampled(&self) -> bool {
        self.0.context.sampled
    }

    /// Ends the request span; `name_suffix` completes `{operation} …`.
    pub fn end(
        &self,
        name_suffix: &str,
        attributes: Vec<Attribute>,
        events: Vec<Event>,
        error: Option<String>,
    ) {
        let trace = &self.0;
        if !trace.context.sampled {
            return;
        }
        let span = SpanData {
            context: trace.context.clone(),
            parent: trace.parent,
            name: format!("{} {name_suffix}", trace.operation),
            kind: SpanKind::Server,
            start_ns: trace.start_ns,
            end_ns: now_ns(),
            attributes,
            events,
            error,
        };
        let children = std::mem::take(&mut *trace.children.lock());
        trace.tracer.exporter.submit(children.into_iter().chain([span]));
    }

    /// Starts the span of a shadow copy of the request to `model` of
    /// provider kind `provider`: a child of the request span marked
    /// `llmesh.shadow`, exported on its own when it ends (after the
    /// request's, which does not wait for it).
    pub fn shadow(
        &self,
        provider: &'static str,
        model: &str,
        attributes: impl FnOnce() -> Vec<Attribute>,
    ) -> AttemptSpan {
        let mut span = AttemptSpan::of(Some(self.clone()).filter(Self::sampled), provider, model, || {
            let mut all = vec![("llmesh.shadow", Value::Bool(true))];
            all.extend(attributes());
            all
        });
        span.shadow = true;
        span
    }
}

/// Runs `work` (a request up to its answer) inside `trace`, if any, so
/// its attempts become the request span's children.
pub async fn scoped<T>(trace: Option<&RequestTrace>, work: impl Future<Output = T>) -> T {
    match trace {
        Some(trace) => REQUEST.scope(trace.clone(), work).await,
        None => work.await,
    }
}

/// The `traceparent` to send with the upstream request being made, if the
/// request is traced.
pub fn upstream_traceparent() -> Option<String> {
    UPSTREAM.try_with(Clone::clone).ok()
}

/// One upstream attempt's span (inert outside a traced request).
#[derive(Debug)]
pub struct AttemptSpan {
    trace: Option<RequestTrace>,
    context: Option<SpanContext>,
    start_ns: u64,
    attributes: Vec<Attribute>,
    /// A shadow request's: ends after its request, so it is exported alone.
    shadow: bool,
}

impl AttemptSpan {
    /// Starts the span of an attempt on `model` of provider kind
    /// `provider`; `attributes` are only built when the request is traced.
    pub fn start(provider: &'static str, model: &str, attributes: impl FnOnce() -> Vec<Attribute>) -> Self {
        let trace = REQUEST.try_with(Clone::clone).ok().filter(RequestTrace::sampled);
        Self::of(trace, provider, model, attributes)
    }

    fn of(
        trace: Option<RequestTrace>,
        provider: &'static str,
        model: &str,
        attributes: impl FnOnce() -> Vec<Attribute>,
    ) -> Self {
        let context = trace.as_ref().map(|t| SpanContext {
            span_id: new_span_id(),
            ..t.0.context.clone()
        });
        let mut all = Vec::new();
        if trace.is_some() {
            all.push(("gen_ai.provider.name", Value::from(provider)));
            all.push(("gen_ai.request.model", Value::from(model)));
            all.extend(attributes());
        }
        Self {
            trace,
            context,
            start_ns: now_ns(),
            attributes: all,
            shadow: false,
        }
    }

    /// Runs the attempt with this span's `traceparent` for the upstream (the
    /// request's own when it is traced but not recorded, so the upstream
    /// still joins the app's trace).
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> T {
        let parent = match &self.context {
            Some(context) => Some(context.traceparent()),
            None => REQUEST.try_with(|t| t.0.context.traceparent()).ok(),
        };
        match parent {
            Some(parent) => UPSTREAM.scope(parent, work).await,
            None => work.await,
        }
    }

    /// Ends the span; `failure` is the attempt's failure class.
    pub fn end(self, failure: Option<&'static str>) {
        self.end_with(failure, Vec::new());
    }

    /// Ends the span with what only its end knows (usage, cost).
    pub fn end_with(mut self, failure: Option<&'static str>, attributes: Vec<Attribute>) {
        let (Some(trace), Some(context)) = (self.trace, self.context) else {
            return;
        };
        self.attributes.extend(attributes);
        let model = match self.attributes.get(1) {
            Some((_, Value::Str(model))) => model.clone(),
            _ => String::new(),
        };
        if let Some(class) = failure {
            self.attributes.push(("error.type", Value::from(class)));
        }
        let span = SpanData {
            context,
            parent: Some(trace.0.context.span_id),
            name: format!("{} {model}", trace.0.operation),
            kind: SpanKind::Client,
            start_ns: self.start_ns,
            end_ns: now_ns(),
            attributes: self.attributes,
            events: Vec::new(),
            error: failure.map(str::to_owned),
        };
        if self.shadow {
            trace.0.tracer.exporter.submit([span]);
        } else {
            trace.0.children.lock().push(span);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Option<TraceSettings>, InvalidVariable> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TraceSettings::from_env(|name| env.get(name).cloned())
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_or_when_disabled() {
        assert_eq!(settings(&[]).expect("valid"), None);
        let on = [(ENDPOINT, "http://collector:4318/")];
        assert!(settings(&on).expect("valid").is_some());
        assert_eq!(settings(&[on[0], (SDK_DISABLED, "true")]).expect("valid"), None);
        assert_eq!(
            settings(&[on[0], (TRACES_EXPORTER, "none")]).expect("valid"),
            None
        );
    }

    #[test]
    fn the_standard_variables_are_read() {
        let read = settings(&[
            (ENDPOINT, "http://collector:4318/"),
            (HEADERS, "x-api-key=a%20b, tenant=t1"),
            (SERVICE_NAME, "checkout"),
            (
                RESOURCE_ATTRIBUTES,
                "service.name=ignored,k8s.namespace.name=shop",
            ),
            (SAMPLER, "parentbased_traceidratio"),
            (SAMPLER_ARG, "0.25"),
            (SCHEDULE_DELAY, "100"),
        ])
        .expect("valid")
        .expect("on");
        assert_eq!(read.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(
            read.headers,
            [
                ("x-api-key".to_owned(), "a b".to_owned()),
                ("tenant".to_owned(), "t1".to_owned())
            ]
        );
        assert_eq!(
            read.resource,
            [
                ("service.name".to_owned(), "checkout".to_owned()),
                ("k8s.namespace.name".to_owned(), "shop".to_owned())
            ]
        );
        assert_eq!(
            read.sampler,
            Sampler {
                parent_based: true,
                ratio: 0.25
            }
        );
        assert_eq!(read.batching.delay, Duration::from_millis(100));
        let traces_url = settings(&[(ENDPOINT, "http://a"), (TRACES_ENDPOINT, "http://b/x")]);
        assert_eq!(traces_url.expect("valid").expect("on").endpoint, "http://b/x");
    }

    #[test]
    fn what_llmesh_cannot_honour_is_refused_by_name() {
        for (name, value) in [
            (PROTOCOL, "http/json"),
            (TRACES_PROTOCOL, "grpc/json"),
            (ENDPOINT, "collector:4317"),
            (TRACES_ENDPOINT, "ftp://collector/v1/traces"),
            (SAMPLER, "jaeger_remote"),
            (SAMPLER_ARG, "1.5"),
            (MAX_QUEUE, "0"),
            (TRACES_EXPORTER, "zipkin"),
        ] {
            let sampler = (SAMPLER, "traceidratio");
            let error = settings(&[(ENDPOINT, "http://c"), sampler, (name, value)]).expect_err(name);
            assert_eq!(error.name, name);
        }
    }

    #[test]
    fn the_protocol_variables_choose_the_transport_and_its_default_endpoint() {
        let read = |pairs: &[(&str, &str)]| {
            let read = settings(pairs).expect("valid").expect("on");
            (read.protocol, read.endpoint)
        };
        let grpc = |url: &str| (Protocol::Grpc, url.to_owned());
        let http = |url: &str| (Protocol::HttpProtobuf, url.to_owned());
        assert_eq!(read(&[(PROTOCOL, "grpc")]), grpc("http://localhost:4317"));
        assert_eq!(
            read(&[(PROTOCOL, "http/protobuf")]),
            http("http://localhost:4318/v1/traces")
        );
        // The endpoint is the collector itself over gRPC: no `/v1/traces`.
        let base = (ENDPOINT, "https://collector.observability:4317");
        assert_eq!(
            read(&[base, (PROTOCOL, "grpc")]),
            grpc("https://collector.observability:4317")
        );
        // The traces-only variable wins over the general one.
        assert_eq!(
            read(&[base, (PROTOCOL, "http/protobuf"), (TRACES_PROTOCOL, "grpc")]),
            grpc("https://collector.observability:4317")
        );
        assert_eq!(
            read(&[
                (ENDPOINT, "http://c:4318"),
                (PROTOCOL, "grpc"),
                (TRACES_PROTOCOL, "http/protobuf")
            ]),
            http("http://c:4318/v1/traces")
        );
    }

    #[test]
    fn the_ratio_sampler_follows_the_parent_or_the_trace_id() {
        let half = Sampler {
            parent_based: true,
            ratio: 0.5,
        };
        let mut unsampled_parent =
            context::parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid");
        assert!(!half.sampled(&unsampled_parent.trace_id, Some(&unsampled_parent)));
        unsampled_parent.sampled = true;
        assert!(half.sampled(&unsampled_parent.trace_id, Some(&unsampled_parent)));
        let kept = (0..4000).filter(|_| half.sampled(&new_trace_id(), None)).count();
        assert!((1700..2300).contains(&kept), "{kept} of 4000");
        assert!(
            !Sampler {
                parent_based: false,
                ratio: 0.0
            }
            .sampled(&[0xff; 16], None)
        );
    }
}
