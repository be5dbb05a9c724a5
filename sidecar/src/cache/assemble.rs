//! Rebuilds the complete `chat.completion` a stream carried, chunk by chunk,
//! so a streamed answer can be cached and later served to either kind of
//! request. A chunk that does not parse spoils the whole answer.

use std::collections::BTreeMap;

use crate::api::Usage;
use crate::api::chat::{
    ChatChunk, ChatResponse, Choice, FunctionCall, ResponseMessage, ThinkingBlock, ToolCall,
};
use crate::providers::StreamEvent;

/// A stream's answer so far.
#[derive(Debug, Default)]
pub struct Assembler {
    id: String,
    created: u64,
    model: String,
    choices: BTreeMap<u32, PartialChoice>,
    usage: Option<Usage>,
    spoiled: bool,
}

#[derive(Debug, Default)]
struct PartialChoice {
    content: Option<String>,
    refusal: Option<String>,
    tool_calls: BTreeMap<u32, ToolCall>,
    reasoning: Option<String>,
    thinking_blocks: Vec<ThinkingBlock>,
    finish_reason: Option<String>,
}

impl Assembler {
    /// Takes in one event of the stream.
    pub fn observe(&mut self, event: &StreamEvent) {
        if self.spoiled {
            return;
        }
        let chunk = match event {
            StreamEvent::Usage(usage) => {
                self.usage = Some(usage.clone());
                return;
            }
            StreamEvent::Chunk(json) => match serde_json::from_slice::<ChatChunk>(json) {
                Ok(chunk) => chunk,
                Err(_) => {
                    self.spoiled = true;
                    return;
                }
            },
        };
        if self.id.is_empty() {
            self.id = chunk.id;
            self.created = chunk.created;
            self.model = chunk.model;
        }
        if let Some(usage) = chunk.usage {
            self.usage.get_or_insert(usage);
        }
        for choice in chunk.choices {
            let partial = self.choices.entry(choice.index).or_default();
            if let Some(text) = choice.delta.content {
                partial.content.get_or_insert_with(String::new).push_str(&text);
            }
            if let Some(text) = choice.delta.reasoning_content {
                partial.reasoning.get_or_insert_with(String::new).push_str(&text);
            }
            for piece in choice.delta.thinking_blocks.into_iter().flatten() {
                ThinkingBlock::absorb(&mut partial.thinking_blocks, piece);
            }
            for call in choice.delta.tool_calls.into_iter().flatten() {
                let whole = partial.tool_calls.entry(call.index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    kind: "function".to_owned(),
                    function: FunctionCall {
                        name: String::new(),
                        arguments: String::new(),
                    },
                });
                if let Some(id) = call.id {
                    whole.id = id;
                }
                if let Some(kind) = call.kind {
                    whole.kind = kind;
                }
                if let Some(name) = call.function.name {
                    whole.function.name.push_str(&name);
                }
                if let Some(arguments) = call.function.arguments {
                    whole.function.arguments.push_str(&arguments);
                }
            }
            if let Some(reason) = choice.finish_reason {
                partial.finish_reason = Some(reason);
            }
        }
        // Refusals stream in their own field, which the typed delta does not carry.
        if let StreamEvent::Chunk(json) = event
            && let Ok(raw) = serde_json::from_slice::<serde_json::Value>(json)
        {
            for choice in raw["choices"].as_array().into_iter().flatten() {
                if let (Some(index), Some(text)) = (
                    choice["index"].as_u64().and_then(|i| u32::try_from(i).ok()),
                    choice["delta"]["refusal"].as_str(),
                ) {
                    let partial = self.choices.entry(index).or_default();
                    partial.refusal.get_or_insert_with(String::new).push_str(text);
                }
            }
        }
    }

    /// The complete answer and its usage, once the stream has ended
    /// normally; `None` if a chunk did not parse or nothing was said.
    pub fn finish(self) -> Option<(ChatResponse, Usage)> {
        if self.spoiled || self.choices.is_empty() {
            return None;
        }
        let choices = self
            .choices
            .into_iter()
            .map(|(index, partial)| Choice {
                index,
                message: ResponseMessage {
                    role: "assistant".to_owned(),
                    content: partial
                        .content
                        .filter(|c| !c.is_empty() || partial.tool_calls.is_empty()),
                    tool_calls: (!partial.tool_calls.is_empty())
                        .then(|| partial.tool_calls.into_values().collect()),
                    refusal: partial.refusal,
                    reasoning_content: partial.reasoning,
                    thinking_blocks: (!partial.thinking_blocks.is_empty()).then_some(partial.thinking_blocks),
                },
                finish_reason: partial.finish_reason,
            })
            .collect();
        let usage = self.usage.unwrap_or_default();
        let response = ChatResponse {
            id: self.id,
            object: "chat.completion".to_owned(),
            created: self.created,
            model: self.model,
            choices,
            usage: Some(usage.clone()),
        };
        Some((response, usage))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;

    fn chunk(value: serde_json::Value) -> StreamEvent {
        StreamEvent::Chunk(Bytes::from(value.to_string()))
    }

    fn delta(delta: serde_json::Value, finish: Option<&str>) -> StreamEvent {
        chunk(json!({
            "id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }))
    }

    #[test]
    fn text_thinking_and_tool_calls_are_reassembled() {
        let mut assembler = Assembler::default();
        for event in [
            delta(json!({"role": "assistant", "content": ""}), None),
            delta(
                json!({"reasoning_content": "Say ", "thinking_blocks": [{"type": "thinking", "thinking": "Say "}]}),
                None,
            ),
            delta(
                json!({"reasoning_content": "hello.", "thinking_blocks": [{"type": "thinking", "thinking": "hello."}]}),
                None,
            ),
            delta(
                json!({"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "sig1"}]}),
                None,
            ),
            delta(
                json!({"thinking_blocks": [{"type": "redacted_thinking", "data": "enc"}]}),
                None,
            ),
            delta(json!({"content": "Hello"}), None),
            delta(json!({"content": " world"}), None),
            delta(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"a\""}}]}),
                None,
            ),
            delta(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
                None,
            ),
            delta(json!({}), Some("tool_calls")),
            StreamEvent::Usage(Usage::new(3, 4, 0, 0, 0)),
        ] {
            assembler.observe(&event);
        }
        let (response, usage) = assembler.finish().expect("complete");
        assert_eq!(usage.completion_tokens, 4);
        assert_eq!((response.id.as_str(), response.created), ("c1", 5));
        let message = &response.choices[0].message;
        assert_eq!(message.content.as_deref(), Some("Hello world"));
        assert_eq!(message.reasoning_content.as_deref(), Some("Say hello."));
        assert_eq!(
            message.thinking_blocks.as_deref(),
            Some(
                &[
                    ThinkingBlock::Thinking {
                        thinking: "Say hello.".into(),
                        signature: Some("sig1".into())
                    },
                    ThinkingBlock::RedactedThinking { data: "enc".into() }
                ][..]
            )
        );
        let call = &message.tool_calls.as_ref().expect("calls")[0];
        assert_eq!(
            (call.id.as_str(), call.function.arguments.as_str()),
            ("call_1", "{\"a\": 1}")
        );
        assert_eq!(response.choices[0].finish_reason.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn a_chunk_that_does_not_parse_spoils_the_answer() {
        let mut assembler = Assembler::default();
        assembler.observe(&delta(json!({"content": "Hi"}), None));
        assembler.observe(&StreamEvent::Chunk(Bytes::from_static(b"{not json")));
        assembler.observe(&delta(json!({}), Some("stop")));
        assert!(assembler.finish().is_none());
    }
}
