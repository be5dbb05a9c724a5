//! Whatever body an Anthropic or Responses app sends, parsing and
//! conversion to the internal request give a request or a clear error:
//! never a panic, and what converts is a chat request the pipeline reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llmesh_sidecar::api::chat::ChatRequest;
use llmesh_sidecar::api::messages::MessagesRequest;
use llmesh_sidecar::api::responses::ResponsesRequest;
use llmesh_sidecar::convert;

fuzz_target!(|data: &[u8]| {
    let Some((&format, body)) = data.split_first() else { return };
    let chat = match format % 3 {
        0 => serde_json::from_slice::<MessagesRequest>(body)
            .ok()
            .and_then(|request| convert::messages::to_chat(request, false).ok()),
        1 => serde_json::from_slice::<MessagesRequest>(body)
            .ok()
            .and_then(|request| convert::messages::to_chat(request, true).ok()),
        _ => serde_json::from_slice::<ResponsesRequest>(body)
            .ok()
            .and_then(|request| convert::responses::to_chat(request).ok())
            .map(|(chat, _)| chat),
    };
    if let Some(chat) = chat {
        let json = serde_json::to_vec(&chat).expect("a chat request serializes");
        let again: ChatRequest = serde_json::from_slice(&json).expect("and reads back");
        assert_eq!(again.model, chat.model);
    }
});
