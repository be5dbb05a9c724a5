//! Bytes through the Bedrock event-stream decoder and translator: never a
//! panic, and the same chunks however the bytes are split.
//!
//! Half the inputs are raw bytes (corrupt frames, bad CRCs, absurd lengths);
//! the other half are read as a script of well-formed frames with fuzzed
//! event types, block indexes and text, since random bytes almost never pass
//! the CRCs and so would never reach the translator's state machine.
#![no_main]

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::providers::StreamEvent;
use llmesh_sidecar::providers::bedrock::{StreamSettings, StreamTranslator};
use serde_json::json;

fn translator() -> StreamTranslator {
    StreamTranslator::new(StreamSettings {
        id: "chatcmpl-fuzz".to_owned(),
        created: 0,
        model: "fuzz".to_owned(),
        include_usage: true,
        json_tool: Some("json_response".to_owned()),
    })
}

/// Feeds `body` in pieces of `step` bytes; stops at the first error, as the
/// relay does.
fn run(body: &[u8], step: usize) -> Option<Vec<StreamEvent>> {
    let mut translator = translator();
    let mut events = Vec::new();
    for piece in body.chunks(step) {
        events.extend(translator.push(piece).ok()?);
    }
    events.extend(translator.finish().ok()?);
    Some(events)
}

fn frame(kind: &str, message_type: &str, payload: &serde_json::Value) -> Vec<u8> {
    let type_header = if message_type == "exception" {
        ":exception-type"
    } else {
        ":event-type"
    };
    let headers = vec![
        Header::new(type_header, HeaderValue::String(kind.to_owned().into())),
        Header::new(
            ":message-type",
            HeaderValue::String(message_type.to_owned().into()),
        ),
    ];
    let mut bytes = Vec::new();
    let _ = write_message_to(
        &Message::new_from_parts(headers, payload.to_string().into_bytes()),
        &mut bytes,
    );
    bytes
}

/// Reads `script` as (kind, block index, text length, text) records and
/// encodes each as a valid ConverseStream frame.
fn frames(script: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = script;
    while let [kind, block, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let text = String::from_utf8_lossy(&tail[..len]).into_owned();
        rest = &tail[len..];
        let index = u64::from(*block % 4);
        out.extend(match kind % 9 {
            0 => frame("messageStart", "event", &json!({"role": "assistant"})),
            1 => frame(
                "contentBlockDelta",
                "event",
                &json!({"contentBlockIndex": index, "delta": {"text": text}}),
            ),
            2 => {
                let name = if block % 2 == 0 {
                    "json_response".to_owned()
                } else {
                    text
                };
                let start = json!({"toolUse": {"toolUseId": "t", "name": name}});
                frame(
                    "contentBlockStart",
                    "event",
                    &json!({"contentBlockIndex": index, "start": start}),
                )
            }
            3 => frame(
                "contentBlockDelta",
                "event",
                &json!({"contentBlockIndex": index, "delta": {"toolUse": {"input": text}}}),
            ),
            4 => frame("contentBlockStop", "event", &json!({"contentBlockIndex": index})),
            5 => frame("messageStop", "event", &json!({"stopReason": text})),
            6 => frame(
                "metadata",
                "event",
                &json!({"usage": {"inputTokens": block, "outputTokens": len,
                "cacheReadInputTokens": u64::MAX, "cacheWriteInputTokens": u64::MAX}}),
            ),
            7 => frame("throttlingException", "exception", &json!({"message": text})),
            _ => frame(&text, "event", &json!({"p": text})),
        });
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let body = if mode % 2 == 0 {
        body.to_vec()
    } else {
        frames(body)
    };
    let whole = run(&body, body.len().max(1));
    let pieces = run(&body, usize::from(split).max(1));
    assert_eq!(whole, pieces);
});
