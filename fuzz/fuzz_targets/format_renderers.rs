//! Whatever chunks an upstream's stream turns into, the Messages and
//! Responses renderers write well-formed events: each frame one `event:`
//! and one JSON `data:` line of that type, a Messages stream opened by
//! `message_start` and closed by `message_stop`, never a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::api::Usage;
use llmesh_sidecar::api::chat::ChatChunk;
use llmesh_sidecar::convert::Render;
use llmesh_sidecar::convert::messages_stream::MessagesRenderer;
use llmesh_sidecar::convert::responses::Echo;
use llmesh_sidecar::convert::responses_stream::ResponsesRenderer;
use llmesh_sidecar::error::ApiError;

fn check(frames: &[Bytes]) -> Vec<String> {
    frames
        .iter()
        .map(|frame| {
            let text = std::str::from_utf8(frame).expect("utf-8");
            let (event, data) = text.trim_end().split_once('\n').expect("event and data lines");
            let name = event.strip_prefix("event: ").expect("event line");
            let json: serde_json::Value =
                serde_json::from_str(data.strip_prefix("data: ").expect("data line")).expect("json data");
            assert_eq!(json["type"], name);
            name.to_owned()
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&options, body)) = data.split_first() else { return };
    let chunks: Vec<ChatChunk> = body
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    let mut renderers: [Box<dyn Render>; 2] = [
        Box::new(MessagesRenderer::default()),
        Box::new(ResponsesRenderer::new(Echo::default())),
    ];
    for (which, renderer) in renderers.iter_mut().enumerate() {
        let mut frames = Vec::new();
        for chunk in chunks.iter().cloned() {
            renderer.chunk(chunk, &mut frames);
        }
        renderer.usage(&Usage::new(u64::from(options), 1, 0, 0, 0));
        if options & 1 == 1 {
            renderer.failed(&ApiError::InvalidBody("cut".into()), &mut frames);
        } else {
            renderer.finish(&mut frames);
        }
        let names = check(&frames);
        if which == 0 && options & 1 == 0 && !chunks.is_empty() {
            assert_eq!(names.first().map(String::as_str), Some("message_start"));
            assert_eq!(names.last().map(String::as_str), Some("message_stop"));
        }
    }
});
