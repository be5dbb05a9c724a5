//! What apps get from `/v1/messages` and `/v1/responses`, held against examples recorded from the published API references.
//!
//! The fixtures in `test-support/fixtures/anthropic/` and
//! `test-support/fixtures/responses/` are answers as Anthropic's and
//! OpenAI's references show them. Each test renders the same answer the
//! way the sidecar does and requires the same events in the same order,
//! each with at least every field the reference shows (values such as ids
//! and timestamps differ by nature). The Anthropic ones go the whole way
//! round: the reference stream is read by the Anthropic adapter, as an
//! upstream's would be, and rendered back for a Messages app.

use bytes::Bytes;
use llmesh_sidecar::api::Usage;
use llmesh_sidecar::api::chat::ChatChunk;
use llmesh_sidecar::api::responses::ResponsesRequest;
use llmesh_sidecar::convert::messages_stream::MessagesRenderer;
use llmesh_sidecar::convert::responses::Echo;
use llmesh_sidecar::convert::responses_stream::ResponsesRenderer;
use llmesh_sidecar::convert::{self, Render};
use llmesh_sidecar::providers::StreamEvent;
use llmesh_sidecar::providers::anthropic::StreamTranslator;
use llmesh_sidecar::providers::sse::SseDecoder;
use serde_json::{Value, json};

fn fixture(path: &str) -> String {
    let file = format!("{}/../test-support/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The `(event name, data)` pairs of an SSE transcript.
fn events(sse: &str) -> Vec<(String, Value)> {
    let mut decoder = SseDecoder::default();
    decoder
        .push(sse.as_bytes())
        .expect("an SSE transcript")
        .into_iter()
        .map(|event| {
            let data: Value = serde_json::from_str(&event.data).expect("JSON data");
            (event.event.unwrap_or_default(), data)
        })
        .collect()
}

fn rendered(frames: &[Bytes]) -> Vec<(String, Value)> {
    let text: String = frames.iter().map(|f| String::from_utf8_lossy(f)).collect();
    events(&text)
}

/// Fails, naming the path, where `ours` lacks a field `reference` has.
fn assert_has_fields(ours: &Value, reference: &Value, path: &str) {
    match reference {
        Value::Object(fields) => {
            let ours = ours
                .as_object()
                .unwrap_or_else(|| panic!("{path}: the reference has an object, we have {ours}"));
            for (name, value) in fields {
                let Some(mine) = ours.get(name) else {
                    panic!(
                        "{path}.{name}: in the reference, missing from {}",
                        Value::Object(ours.clone())
                    )
                };
                assert_has_fields(mine, value, &format!("{path}.{name}"));
            }
        }
        Value::Array(items) => {
            let mine = ours
                .as_array()
                .unwrap_or_else(|| panic!("{path}: not an array: {ours}"));
            assert_eq!(mine.len(), items.len(), "{path}: {ours}");
            for (i, (mine, theirs)) in mine.iter().zip(items).enumerate() {
                assert_has_fields(mine, theirs, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

/// The same events in the same order, each with the reference's fields,
/// the `event:` name always equal to the data's `type`. Left out on both
/// sides: `ping`s, which Anthropic may send anywhere, and deltas that add
/// nothing (Anthropic opens a tool's input with an empty `partial_json`;
/// an app's SDK joins the same input without it).
fn assert_same_sequence(ours: &[(String, Value)], reference: &[(String, Value)]) {
    let keep = |events: &[(String, Value)]| -> Vec<(String, Value)> {
        events
            .iter()
            .filter(|(name, data)| name != "ping" && data["delta"]["partial_json"] != "")
            .cloned()
            .collect()
    };
    let (ours, reference) = (keep(ours), keep(reference));
    let names = |events: &[(String, Value)]| events.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&reference));
    for (i, ((name, mine), (_, theirs))) in ours.iter().zip(&reference).enumerate() {
        assert_eq!(mine["type"], name.as_str(), "event {i}");
        assert_has_fields(mine, theirs, &format!("event {i} ({name})"));
    }
}

/// An Anthropic reference stream read by the Anthropic adapter, then
/// rendered for a Messages app.
fn anthropic_round_trip(sse: &str) -> Vec<Bytes> {
    let mut translator = StreamTranslator::new("claude-sonnet-4-5", true);
    let mut renderer = MessagesRenderer::default();
    let mut decoder = SseDecoder::default();
    let mut frames = Vec::new();
    for event in decoder.push(sse.as_bytes()).expect("decodes") {
        for item in translator.push(&event).expect("translates") {
            match item {
                StreamEvent::Chunk(json) => {
                    let chunk: ChatChunk = serde_json::from_slice(&json).expect("a chat chunk");
                    renderer.chunk(chunk, &mut frames);
                }
                StreamEvent::Usage(usage) => renderer.usage(&usage),
            }
        }
    }
    translator.end().expect("the reference stream is complete");
    renderer.finish(&mut frames);
    frames
}

#[test]
fn a_messages_text_stream_has_anthropics_event_sequence() {
    let reference = fixture("anthropic/text.sse");
    let ours = rendered(&anthropic_round_trip(&reference));
    let reference = events(&reference);
    assert_same_sequence(&ours, &reference);
    let text: String = ours
        .iter()
        .filter_map(|(_, data)| data["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello! How can I help you today?");
    let last_delta = ours
        .iter()
        .rfind(|(name, _)| name == "message_delta")
        .expect("message_delta");
    assert_eq!(last_delta.1["delta"]["stop_reason"], "end_turn");
    assert_eq!(last_delta.1["usage"]["output_tokens"], 12);
    assert_eq!(last_delta.1["usage"]["input_tokens"], 25);
    assert_eq!(last_delta.1["usage"]["cache_read_input_tokens"], 1500);
    assert_eq!(last_delta.1["usage"]["cache_creation_input_tokens"], 12);
    // Anthropic's SDKs need the ping and the message's role and empty content up front.
    assert!(ours.iter().any(|(name, _)| name == "ping"));
    assert_eq!(ours[0].1["message"]["content"], json!([]));
    assert_eq!(ours[0].1["message"]["role"], "assistant");
}

#[test]
fn a_messages_tool_use_stream_has_anthropics_event_sequence() {
    let reference = fixture("anthropic/tool_use.sse");
    let ours = rendered(&anthropic_round_trip(&reference));
    let reference = events(&reference);
    assert_same_sequence(&ours, &reference);
    // Each tool's input, joined from its deltas, is the same JSON.
    let inputs = |events: &[(String, Value)]| {
        let mut inputs: std::collections::BTreeMap<u64, String> = std::collections::BTreeMap::new();
        for (_, data) in events {
            if let (Some(index), Some(piece)) =
                (data["index"].as_u64(), data["delta"]["partial_json"].as_str())
            {
                inputs.entry(index).or_default().push_str(piece);
            }
        }
        inputs
            .into_values()
            .map(|text| serde_json::from_str::<Value>(&text).expect("the input is JSON"))
            .collect::<Vec<_>>()
    };
    let expected = inputs(&reference);
    assert_eq!(expected.len(), 2, "the reference calls two tools");
    assert_eq!(inputs(&ours), expected);
    let stop = ours
        .iter()
        .rfind(|(name, _)| name == "message_delta")
        .expect("message_delta");
    assert_eq!(stop.1["delta"]["stop_reason"], "tool_use");
}

#[test]
fn a_complete_messages_answer_has_the_references_fields() {
    let reference: Value = serde_json::from_str(&fixture("anthropic/message.json")).expect("JSON");
    let chat = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "claude-sonnet-4-5",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi! My name is Claude."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598}
    });
    let ours = convert::messages::from_chat(chat.to_string().as_bytes()).expect("renders");
    let ours = serde_json::to_value(ours).expect("serializes");
    assert_has_fields(&ours, &reference, "message");
    assert_eq!(ours["content"], reference["content"]);
    assert_eq!(ours["stop_reason"], reference["stop_reason"]);
    assert_eq!(ours["usage"]["input_tokens"], reference["usage"]["input_tokens"]);
}

fn echo(request: Value) -> Echo {
    let request: ResponsesRequest = serde_json::from_value(request).expect("a Responses request");
    convert::responses::to_chat(request).expect("converts").1
}

fn chunk(delta: Value, finish: Option<&str>) -> ChatChunk {
    serde_json::from_value(json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4.1-2025-04-14",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
    }))
    .expect("a chat chunk")
}

fn render_responses(echo: Echo, chunks: Vec<ChatChunk>, usage: &Usage) -> Vec<(String, Value)> {
    let mut renderer = ResponsesRenderer::new(echo);
    let mut frames = Vec::new();
    for chunk in chunks {
        renderer.chunk(chunk, &mut frames);
    }
    renderer.usage(usage);
    renderer.finish(&mut frames);
    rendered(&frames)
}

#[test]
fn a_responses_text_stream_has_openais_event_sequence() {
    let reference = events(&fixture("responses/text.sse"));
    let deltas: Vec<&str> = reference
        .iter()
        .filter(|(name, _)| name == "response.output_text.delta")
        .filter_map(|(_, data)| data["delta"].as_str())
        .collect();
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    chunks.extend(deltas.iter().map(|d| chunk(json!({"content": d}), None)));
    chunks.push(chunk(json!({}), Some("stop")));
    let echo = echo(json!({
        "model": "gpt-4.1", "input": "Hi", "instructions": "You are a helpful assistant.", "stream": true
    }));
    let ours = render_responses(echo, chunks, &Usage::new(37, 11, 0, 0, 0));
    assert_same_sequence(&ours, &reference);
    let sequence: Vec<u64> = ours
        .iter()
        .filter_map(|(_, d)| d["sequence_number"].as_u64())
        .collect();
    assert_eq!(sequence, (0..ours.len() as u64).collect::<Vec<_>>());
    let completed = &ours.last().expect("events").1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(
        completed["output"][0]["content"][0]["text"],
        "Hi there! How can I assist you today?"
    );
    assert_eq!(completed["usage"]["total_tokens"], 48);
    assert_eq!(completed["instructions"], "You are a helpful assistant.");
}

#[test]
fn a_responses_function_call_stream_has_openais_event_sequence() {
    let reference = events(&fixture("responses/function_call.sse"));
    let pieces: Vec<&str> = reference
        .iter()
        .filter(|(name, _)| name == "response.function_call_arguments.delta")
        .filter_map(|(_, data)| data["delta"].as_str())
        .collect();
    let mut chunks = vec![chunk(
        json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_12345xyz", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}),
        None,
    )];
    chunks.extend(pieces.iter().map(|p| {
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}),
            None,
        )
    }));
    chunks.push(chunk(json!({}), Some("tool_calls")));
    let echo = echo(json!({
        "model": "gpt-4.1", "input": "What is the weather like in Paris today?", "stream": true,
        "tools": [{"type": "function", "name": "get_weather", "description": "Get current temperature for a given location.",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"],
                "additionalProperties": false}, "strict": true}]
    }));
    let ours = render_responses(echo, chunks, &Usage::new(291, 23, 0, 0, 0));
    assert_same_sequence(&ours, &reference);
    let done = ours
        .iter()
        .find(|(name, _)| name == "response.output_item.done")
        .expect("output_item.done");
    assert_eq!(done.1["item"]["arguments"], r#"{"location":"Paris, France"}"#);
    assert_eq!(done.1["item"]["call_id"], "call_12345xyz");
}

#[test]
fn a_complete_response_has_the_references_fields() {
    let reference: Value = serde_json::from_str(&fixture("responses/response.json")).expect("JSON");
    let chat = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1741290958, "model": "gpt-4.1-2025-04-14",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there! How can I assist you today?"},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 37, "completion_tokens": 11, "total_tokens": 48}
    });
    let echo =
        echo(json!({"model": "gpt-4.1", "input": "Hi", "instructions": "You are a helpful assistant."}));
    let ours = convert::responses::from_chat(chat.to_string().as_bytes(), &echo).expect("renders");
    let ours = serde_json::to_value(ours).expect("serializes");
    assert_has_fields(&ours, &reference, "response");
    assert_eq!(ours["output"][0]["content"], reference["output"][0]["content"]);
    assert_eq!(ours["usage"]["total_tokens"], 48);
}
