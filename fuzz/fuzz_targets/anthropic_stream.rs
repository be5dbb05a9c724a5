//! Whatever an Anthropic upstream streams, split however the network splits
//! it, translates into well-formed OpenAI chunks or a clear error: never a
//! panic, and a stream counts as complete only after `message_stop`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::api::chat::ChatChunk;
use llmesh_sidecar::providers::StreamEvent;
use llmesh_sidecar::providers::anthropic::StreamTranslator;
use llmesh_sidecar::providers::sse::SseDecoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the options and how the body is split.
    let Some((&options, body)) = data.split_first() else { return };
    let mut translator = StreamTranslator::new("claude-fuzz", options & 1 == 1);
    if options & 2 == 2 {
        translator = translator.json_response();
    }
    let step = usize::from(options >> 2).max(1);
    let mut decoder = SseDecoder::default();
    'feed: for piece in body.chunks(step) {
        let Ok(events) = decoder.push(piece) else { break };
        for event in events {
            let Ok(translated) = translator.push(&event) else { break 'feed };
            for item in translated {
                if let StreamEvent::Chunk(json) = item {
                    let chunk: ChatChunk = serde_json::from_slice(&json).expect("every chunk is an OpenAI chunk");
                    assert_eq!(chunk.object, "chat.completion.chunk");
                }
            }
        }
    }
    assert_eq!(translator.end().is_ok(), translator.is_done());
});
