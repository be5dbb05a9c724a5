//! Whatever `traceparent` and `tracestate` an app sends, the sidecar either
//! joins that trace or starts a new one: never a panic, and a context it
//! accepts is written back out as the same well-formed `traceparent`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::telemetry::context::{SpanContext, TRACEPARENT, TRACESTATE, parse_traceparent};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (parent, state) = text.split_once('\n').unwrap_or((&text, ""));
    if let Some(context) = parse_traceparent(parent) {
        let written = context.traceparent();
        assert_eq!(written.len(), 55);
        let again = parse_traceparent(&written).expect("what llmesh writes, it reads");
        assert_eq!((again.trace_id, again.span_id, again.sampled), (context.trace_id, context.span_id, context.sampled));
    }
    let mut headers = http::HeaderMap::new();
    for (name, value) in [(TRACEPARENT, parent), (TRACESTATE, state)] {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    if let Some(context) = SpanContext::from_headers(&headers) {
        assert!(context.trace_state.len() <= 8192);
        assert!(context.trace_state.is_ascii());
    }
});
