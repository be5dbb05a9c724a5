//! The streaming redactor: a card number and an email placed in any text,
//! with the answer cut into chunks anywhere, never leave the redactor, and
//! the stream never panics.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use llmesh_crds::config::GuardrailConfig;
use llmesh_crds::resources::{Detector, GuardrailAction, GuardrailPhase};
use llmesh_sidecar::guardrails::stream::StreamGuard;
use llmesh_sidecar::guardrails::{Findings, Guardrails};
use llmesh_sidecar::providers::{Deps, UpstreamClient, UpstreamSettings};

const CARD: &str = "4111 1111 1111 1111";
const EMAIL: &str = "ann@example.org";

fn guardrails() -> Arc<Guardrails> {
    let policy = GuardrailConfig {
        name: "pii".into(),
        phase: GuardrailPhase::Response,
        action: GuardrailAction::Redact,
        roles: Vec::new(),
        detect: vec![Detector::CreditCard, Detector::Email, Detector::Secret],
        patterns: Vec::new(),
        words: Vec::new(),
        moderation: None,
    };
    let deps = Deps {
        client: UpstreamClient::new(&UpstreamSettings::default()).expect("client"),
        credentials: Arc::new(llmesh_sidecar::credentials::CredentialStore::new(None, [])),
        drills: Arc::default(),
    };
    Arc::new(Guardrails::build(&[policy], &deps).expect("builds"))
}

fn chunk(content: &str, last: bool) -> Vec<u8> {
    serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": if last { Some("stop") } else { None }}]})
    .to_string()
    .into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, rest)) = data.split_first() else { return };
    let noise = String::from_utf8_lossy(rest);
    if noise.contains("4111") || noise.contains("example.org") {
        return;
    }
    let middle = noise.char_indices().map(|(i, _)| i).nth(noise.chars().count() / 2).unwrap_or(noise.len());
    let text = format!("{} {CARD} {} {EMAIL} .", &noise[..middle], &noise[middle..]);
    let mut guard = StreamGuard::new(guardrails(), Findings::default());
    let step = usize::from(cuts % 29) + 1;
    let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).step_by(step).chain([text.len()]).collect();
    let mut out = String::new();
    for (i, pair) in boundaries.windows(2).enumerate() {
        let last = i + 2 == boundaries.len();
        let Ok(json) = guard.chunk(&chunk(&text[pair[0]..pair[1]], last)) else { return };
        let value: serde_json::Value = serde_json::from_slice(&json).expect("a chunk stays JSON");
        out.push_str(value["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    if let Ok(Some(json)) = guard.finish() {
        let value: serde_json::Value = serde_json::from_slice(&json).expect("json");
        out.push_str(value["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert!(!out.contains(CARD) && !out.contains(EMAIL), "a finding left the redactor");
});
