//! Any body an app can send parses into a request or a clear error, and a
//! parsed request survives the trip to an OpenAI-style upstream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::api::chat::ChatRequest;
use llmesh_sidecar::api::embeddings::EmbeddingsRequest;
use llmesh_sidecar::inbound::parse_json;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_json::<ChatRequest>(data) {
        let encoded = serde_json::to_vec(&request).expect("a parsed request encodes");
        let again: ChatRequest = parse_json(&encoded).expect("an encoded request parses");
        assert_eq!(again.messages.len(), request.messages.len());
        let _ = request.stop_sequences();
        let _ = request.messages.iter().map(|m| m.text()).count();
    }
    let _ = parse_json::<EmbeddingsRequest>(data);
});
