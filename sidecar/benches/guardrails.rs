//! Guardrail cost per request: a typical prompt (system prompt, a few turns,
//! about 2 KB) through every built-in detector and the injection screen
//! (one `redact` policy, one `block` policy), and a typical answer streamed
//! in 40 chunks through the hold-back window. Prints p50/p99; the target is
//! well under 1 ms per request.
//!
//! `cargo bench --workspace --bench guardrails` (`GUARDRAIL_BENCH_N` sets the count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use llmesh_crds::config::GuardrailConfig;
use llmesh_crds::resources::{Detector, GuardrailAction, GuardrailPhase};
use llmesh_sidecar::api::chat::ChatRequest;
use llmesh_sidecar::guardrails::stream::StreamGuard;
use llmesh_sidecar::guardrails::{Findings, Guardrails};
use llmesh_sidecar::providers::{Deps, UpstreamClient, UpstreamSettings};

fn policy(name: &str, action: GuardrailAction, detect: Vec<Detector>) -> GuardrailConfig {
    GuardrailConfig {
        name: name.to_owned(),
        phase: GuardrailPhase::Both,
        action,
        roles: Vec::new(),
        detect,
        patterns: Vec::new(),
        words: Vec::new(),
        moderation: None,
    }
}

fn guardrails() -> Arc<Guardrails> {
    use Detector::*;
    let configs = [
        policy(
            "pii",
            GuardrailAction::Redact,
            vec![Email, Phone, CreditCard, Iban, NationalId, IpAddress, Secret],
        ),
        policy("injection", GuardrailAction::Block, vec![PromptInjection]),
    ];
    let deps = Deps {
        client: UpstreamClient::new(&UpstreamSettings::default()).expect("client"),
        credentials: Arc::new(llmesh_sidecar::credentials::CredentialStore::new(None, [])),
        drills: Arc::default(),
    };
    Arc::new(Guardrails::build(&configs, &deps).expect("builds"))
}

const SYSTEM: &str = "You are the support assistant of Example Corp. Answer in the customer's language, \
    keep answers short, never promise refunds, and hand over to a human agent when the customer asks for one. \
    Orders ship within 3 business days; returns are accepted for 30 days with the receipt.";

fn prompt() -> ChatRequest {
    let turns = [
        (
            "user",
            "Hi, I ordered a blue jacket last week (order 55120) and it still has not arrived. Can you check where it is?",
        ),
        (
            "assistant",
            "I am sorry for the wait. Your order left our warehouse on Monday and is with the carrier; it should arrive within two days.",
        ),
        (
            "user",
            "It was supposed to arrive on Friday. Please send the tracking link to jane.doe@example.com and call me at +44 20 7946 0958 if there is a problem.",
        ),
        (
            "assistant",
            "I have sent the tracking link to your email. Is there anything else I can help you with today?",
        ),
        (
            "user",
            "Yes, I also want to know whether I can return the jacket if it does not fit, and how the refund works for payments by card. I paid with my usual card and would like the money back on the same card rather than as store credit. Also, the delivery address should be my office, not my home.",
        ),
    ];
    let mut messages = vec![serde_json::json!({"role": "system", "content": SYSTEM})];
    messages.extend(
        turns
            .iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content})),
    );
    serde_json::from_value(serde_json::json!({"model": "support", "messages": messages})).expect("request")
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i]
    };
    println!(
        "{what}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} runs)",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
        samples.len()
    );
}

fn main() {
    let runs: usize = std::env::var("GUARDRAIL_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let guardrails = guardrails();
    let request = prompt();
    let size: usize = request.messages.iter().map(|m| m.text().len()).sum();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut request = request.clone();
        let findings = Findings::default();
        let started = Instant::now();
        futures::executor::block_on(guardrails.screen_request(&mut request, &findings)).expect("not blocked");
        samples.push(started.elapsed());
    }
    report(&format!("request, {size} bytes of prompt text"), samples);

    let answer = "Of course. You can return the jacket within 30 days with the receipt, in any of our stores or by post. \
        The refund goes back to the card you paid with and takes three to five business days to appear. \
        I have also changed the delivery address of order 55120 to your office. Anything else?";
    let words: Vec<&str> = answer.split_inclusive(' ').collect();
    let chunks: Vec<Vec<u8>> = words
        .chunks(words.len().div_ceil(40))
        .enumerate()
        .map(|(i, piece)| {
            let last = (i + 1) * words.len().div_ceil(40) >= words.len();
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"index": 0, "delta": {"content": piece.concat()}, "finish_reason": if last { Some("stop") } else { None }}]})
            .to_string()
            .into_bytes()
        })
        .collect();
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut guard = StreamGuard::new(guardrails.clone(), Findings::default());
        let started = Instant::now();
        for chunk in &chunks {
            guard.chunk(chunk).expect("not blocked");
        }
        samples.push(started.elapsed());
    }
    report(
        &format!("stream, {} chunks, {} bytes", chunks.len(), answer.len()),
        samples,
    );
}
