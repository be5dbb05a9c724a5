//! The SSE decoder yields the same events however the bytes are split, and
//! never panics or grows without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::providers::sse::SseDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else { return };
    let mut whole = SseDecoder::default();
    let expected = whole.push(body);
    let mut pieces = SseDecoder::default();
    let step = usize::from(split).max(1);
    let mut got = Vec::new();
    let mut failed = false;
    for chunk in body.chunks(step) {
        match pieces.push(chunk) {
            Ok(events) => got.extend(events),
            Err(_) => failed = true,
        }
    }
    if let (Ok(expected), false) = (expected, failed) {
        assert_eq!(expected, got);
    }
});
