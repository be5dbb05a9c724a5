//! Serves a stored answer as the request asked for it: the JSON body as is,
//! or the same answer as a stream of `chat.completion.chunk` events.

use bytes::Bytes;
use futures::StreamExt;

use super::entry::Entry;
use crate::api::chat::{
    ChatChunk, ChatRequest, ChatResponse, ChunkChoice, Delta, FunctionCallDelta, ToolCallDelta,
};
use crate::attempts::{CommittedStream, Reply};
use crate::providers::{ChunkStream, Completed, StreamEvent, to_json_bytes};

/// The stored answer in the shape the request wants. Usage is not reported
/// to accounting: a hit costs no tokens (the body still shows what the
/// original answer used, as the provider reported it).
pub fn reply(entry: &Entry, request: &ChatRequest) -> Reply {
    if !request.is_stream() {
        return Reply::Complete(Completed {
            body: entry.body.clone(),
            usage: crate::api::Usage::default(),
        });
    }
    let response: Option<ChatResponse> = serde_json::from_slice(&entry.body).ok();
    let mut events: Vec<StreamEvent> = response
        .map(|response| chunks(&response, request.wants_stream_usage()))
        .unwrap_or_default()
        .into_iter()
        .map(StreamEvent::Chunk)
        .collect();
    let rest = events.split_off(events.len().min(1));
    Reply::Stream(CommittedStream {
        head: events,
        tail: ChunkStream(futures::stream::iter(rest.into_iter().map(Ok)).boxed()),
        idle: None,
        deadline: None,
    })
}

/// The chunks of a stream that says `response`: per choice, its role, its
/// reasoning and thinking blocks whole, its text in one piece, its tool calls whole, and its finish reason; then the
/// usage chunk when the app asked for one.
fn chunks(response: &ChatResponse, with_usage: bool) -> Vec<Bytes> {
    let chunk = |choice: ChunkChoice| ChatChunk {
        id: response.id.clone(),
        object: "chat.completion.chunk".to_owned(),
        created: response.created,
        model: response.model.clone(),
        choices: vec![choice],
        usage: None,
    };
    let mut out = Vec::new();
    for choice in &response.choices {
        let message = &choice.message;
        let delta = |delta: Delta| ChunkChoice {
            index: choice.index,
            delta,
            finish_reason: None,
        };
        out.push(chunk(delta(Delta {
            role: Some("assistant".to_owned()),
            content: Some(String::new()),
            ..Delta::default()
        })));
        if message.reasoning_content.is_some() || message.thinking_blocks.is_some() {
            out.push(chunk(delta(Delta {
                reasoning_content: message.reasoning_content.clone(),
                thinking_blocks: message.thinking_blocks.clone(),
                ..Delta::default()
            })));
        }
        if let Some(text) = message.content.as_ref().filter(|t| !t.is_empty()) {
            out.push(chunk(delta(Delta {
                content: Some(text.clone()),
                ..Delta::default()
            })));
        }
        if let Some(calls) = &message.tool_calls {
            let calls = calls
                .iter()
                .zip(0u32..)
                .map(|(call, index)| ToolCallDelta {
                    index,
                    id: Some(call.id.clone()),
                    kind: Some(call.kind.clone()),
                    function: FunctionCallDelta {
                        name: Some(call.function.name.clone()),
                        arguments: Some(call.function.arguments.clone()),
                    },
                })
                .collect();
            out.push(chunk(delta(Delta {
                tool_calls: Some(calls),
                ..Delta::default()
            })));
        }
        out.push(chunk(ChunkChoice {
            index: choice.index,
            delta: Delta::default(),
            finish_reason: choice.finish_reason.clone(),
        }));
    }
    let mut chunks: Vec<Bytes> = out.iter().map(to_json_bytes).collect();
    if with_usage && let Some(usage) = &response.usage {
        chunks.push(to_json_bytes(&ChatChunk::usage(
            &response.id,
            response.created,
            &response.model,
            usage.clone(),
        )));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::assemble::Assembler;

    #[test]
    fn a_replayed_stream_reassembles_to_the_stored_answer() {
        let response: ChatResponse = serde_json::from_value(serde_json::json!({
            "id": "c", "object": "chat.completion", "created": 9, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there",
                "reasoning_content": "Greet.",
                "thinking_blocks": [{"type": "thinking", "thinking": "Greet.", "signature": "sig1"},
                    {"type": "redacted_thinking", "data": "enc"}],
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        }))
        .expect("response");
        let mut assembler = Assembler::default();
        let events = chunks(&response, true);
        for chunk in &events {
            assembler.observe(&StreamEvent::Chunk(chunk.clone()));
        }
        let (again, usage) = assembler.finish().expect("complete");
        assert_eq!(again, response);
        assert_eq!(usage.total_tokens, 5);
        let last: serde_json::Value = serde_json::from_slice(events.last().expect("usage")).expect("json");
        assert_eq!(
            last["choices"],
            serde_json::json!([]),
            "the usage chunk comes last, with no choices"
        );
    }
}
