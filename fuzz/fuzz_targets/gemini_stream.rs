//! Arbitrary upstream bytes through the SSE decoder and the Gemini stream
//! translator: never a panic, and every chunk it emits is a valid OpenAI chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::api::chat::ChatChunk;
use llmesh_sidecar::providers::StreamEvent;
use llmesh_sidecar::providers::gemini::StreamTranslator;
use llmesh_sidecar::providers::sse::SseDecoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the body is split and whether usage is asked for.
    let Some((&knobs, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(knobs & 0x7f).max(1);
    let mut decoder = SseDecoder::default();
    let mut translator = StreamTranslator::new("chatcmpl-fuzz".into(), 0, "gemini-fuzz", knobs & 0x80 != 0);
    let mut events = Vec::new();
    'body: for piece in body.chunks(step) {
        let Ok(decoded) = decoder.push(piece) else { return };
        for event in decoded {
            match translator.push(&event.data) {
                Ok(out) => events.extend(out),
                // An error ends the stream, as the adapter does.
                Err(_) => break 'body,
            }
        }
    }
    if let Ok(out) = translator.finish() {
        events.extend(out);
    }
    for event in events {
        if let StreamEvent::Chunk(json) = event {
            let chunk: ChatChunk = serde_json::from_slice(&json).expect("chunks are valid OpenAI chunks");
            assert_eq!(chunk.object, "chat.completion.chunk");
        }
    }
});
