//! Any text: every built-in detector and the injection screen return
//! sorted, disjoint spans on character boundaries, and redaction replaces
//! exactly those spans with their placeholders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::guardrails::all_builtin_detectors;
use llmesh_sidecar::guardrails::detect::{Detect, redact};
use llmesh_sidecar::guardrails::injection::PromptInjection;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let spans = all_builtin_detectors().scan(text);
    for pair in spans.windows(2) {
        assert!(pair[0].end <= pair[1].start, "disjoint and in order");
    }
    for span in &spans {
        assert!(span.start < span.end && text.is_char_boundary(span.start) && text.is_char_boundary(span.end));
    }
    let redacted = redact(text, &spans);
    let placeholders: usize = spans.iter().map(|s| s.kind.placeholder().len()).sum();
    let removed: usize = spans.iter().map(|s| s.end - s.start).sum();
    assert_eq!(redacted.len(), text.len() - removed + placeholders);
    let mut injections = Vec::new();
    PromptInjection.find(text, &mut injections);
    assert!(injections.iter().all(|s| text.is_char_boundary(s.start) && text.is_char_boundary(s.end)));
});
