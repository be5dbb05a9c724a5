//! Internal chunks → Anthropic's stream events, in Anthropic's order:
//! `message_start`, `ping`, per block `content_block_start` / `_delta` /
//! `_stop`, then `message_delta` with the stop reason and usage and
//! `message_stop`. Chat interleaves text and tool calls freely; Anthropic
//! has one open block at a time, so a change of kind closes the open one.
//! Thinking pieces (`thinking_blocks`, or bare `reasoning_content` from
//! upstreams that send only that) become thinking blocks: a signature ends
//! one, so the next piece of reasoning opens another.

use bytes::Bytes;

use super::messages::{stop_reason, tool_input};
use super::{Render, sse_event};
use crate::api::Usage;
use crate::api::chat::{ChatChunk, ThinkingBlock};
use crate::api::messages::{
    Block, BlockDelta, ErrorDetail, MessageDelta, MessagesResponse, Role, StreamEvent, Usage as WireUsage,
};
use crate::error::ApiError;
use crate::providers::to_json_bytes;

/// The block being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    /// A thinking block; `signed` once its signature went out.
    Thinking {
        signed: bool,
    },
    /// A redacted thinking block, which has no deltas.
    Redacted,
    Text,
    /// A tool call, by its chat index.
    Tool(u32),
}

/// Renders one stream; see the module docs.
#[derive(Debug, Default)]
pub struct MessagesRenderer {
    started: bool,
    open: Option<(usize, Open)>,
    blocks: usize,
    finish: Option<String>,
    usage: Usage,
}

impl MessagesRenderer {
    fn emit(frames: &mut Vec<Bytes>, event: &StreamEvent) {
        frames.push(sse_event(event.name(), &to_json_bytes(event)));
    }

    fn close(&mut self, frames: &mut Vec<Bytes>) {
        if let Some((index, _)) = self.open.take() {
            Self::emit(frames, &StreamEvent::ContentBlockStop { index });
        }
    }

    fn open(&mut self, kind: Open, block: Block, frames: &mut Vec<Bytes>) -> usize {
        self.close(frames);
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((index, kind));
        Self::emit(
            frames,
            &StreamEvent::ContentBlockStart {
                index,
                content_block: block,
            },
        );
        index
    }

    /// One piece of thinking (see the module docs).
    fn thinking(&mut self, piece: ThinkingBlock, frames: &mut Vec<Bytes>) {
        let (thinking, signature) = match piece {
            ThinkingBlock::RedactedThinking { data } => {
                self.open(Open::Redacted, Block::RedactedThinking { data }, frames);
                return;
            }
            ThinkingBlock::Thinking { thinking, signature } => (thinking, signature),
        };
        let index = match self.open {
            Some((index, Open::Thinking { signed: false })) => index,
            _ => {
                let block = Block::Thinking {
                    thinking: String::new(),
                    signature: String::new(),
                };
                self.open(Open::Thinking { signed: false }, block, frames)
            }
        };
        if !thinking.is_empty() {
            let delta = BlockDelta::ThinkingDelta { thinking };
            Self::emit(frames, &StreamEvent::ContentBlockDelta { index, delta });
        }
        if let Some(signature) = signature {
            self.open = Some((index, Open::Thinking { signed: true }));
            let delta = BlockDelta::SignatureDelta { signature };
            Self::emit(frames, &StreamEvent::ContentBlockDelta { index, delta });
        }
    }
}

impl Render for MessagesRenderer {
    fn chunk(&mut self, chunk: ChatChunk, frames: &mut Vec<Bytes>) {
        if let Some(usage) = chunk.usage {
            self.usage = usage;
        }
        if !self.started {
            self.started = true;
            let message = MessagesResponse {
                id: chunk.id,
                kind: "message".to_owned(),
                role: Role::Assistant,
                model: chunk.model,
                content: Vec::new(),
                stop_reason: None,
                stop_sequence: None,
                usage: WireUsage::default(),
            };
            Self::emit(frames, &StreamEvent::MessageStart { message });
            Self::emit(frames, &StreamEvent::Ping);
        }
        let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) else {
            return;
        };
        let delta = choice.delta;
        match (delta.thinking_blocks, delta.reasoning_content) {
            (Some(pieces), _) => {
                for piece in pieces {
                    self.thinking(piece, frames);
                }
            }
            (None, Some(thinking)) if !thinking.is_empty() => {
                self.thinking(
                    ThinkingBlock::Thinking {
                        thinking,
                        signature: None,
                    },
                    frames,
                );
            }
            (None, _) => {}
        }
        if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
            let index = match self.open {
                Some((index, Open::Text)) => index,
                _ => self.open(Open::Text, Block::text(""), frames),
            };
            let delta = BlockDelta::TextDelta { text };
            Self::emit(frames, &StreamEvent::ContentBlockDelta { index, delta });
        }
        for call in delta.tool_calls.into_iter().flatten() {
            let index = match (self.open, &call.id) {
                (Some((index, Open::Tool(open))), None) if open == call.index => index,
                (_, Some(id)) => {
                    let block = Block::ToolUse {
                        id: id.clone(),
                        name: call.function.name.clone().unwrap_or_default(),
                        input: tool_input(""),
                        cache_control: None,
                    };
                    self.open(Open::Tool(call.index), block, frames)
                }
                // A fragment of a call that is no longer open: Anthropic
                // cannot reopen a block, and chat upstreams do not interleave.
                _ => continue,
            };
            if let Some(partial_json) = call.function.arguments.filter(|a| !a.is_empty()) {
                let delta = BlockDelta::InputJsonDelta { partial_json };
                Self::emit(frames, &StreamEvent::ContentBlockDelta { index, delta });
            }
        }
        if let Some(finish) = choice.finish_reason {
            self.finish = Some(finish);
        }
    }

    fn usage(&mut self, usage: &Usage) {
        self.usage = usage.clone();
    }

    fn failed(&mut self, error: &ApiError, frames: &mut Vec<Bytes>) {
        let (_, kind) = error.anthropic_status_and_type();
        let error = ErrorDetail {
            kind,
            message: error.to_string(),
        };
        Self::emit(frames, &StreamEvent::Error { error });
    }

    fn finish(&mut self, frames: &mut Vec<Bytes>) {
        self.close(frames);
        let delta = MessageDelta {
            stop_reason: Some(stop_reason(self.finish.as_deref()).to_owned()),
            stop_sequence: None,
        };
        let usage = WireUsage::of(&self.usage);
        Self::emit(frames, &StreamEvent::MessageDelta { delta, usage });
        Self::emit(frames, &StreamEvent::MessageStop);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::chat::{Delta, FunctionCallDelta, ToolCallDelta};
    use crate::providers::{ErrorKind, ProviderError};

    fn events(frames: &[Bytes]) -> Vec<(String, Value)> {
        frames
            .iter()
            .map(|frame| {
                let text = std::str::from_utf8(frame).expect("utf-8");
                let (event, data) = text.trim_end().split_once('\n').expect("event and data lines");
                let name = event.strip_prefix("event: ").expect("event line");
                let json: Value =
                    serde_json::from_str(data.strip_prefix("data: ").expect("data")).expect("json");
                assert_eq!(json["type"], name, "the event name repeats the type");
                (name.to_owned(), json)
            })
            .collect()
    }

    fn chunk(delta: Delta, finish: Option<&str>) -> ChatChunk {
        ChatChunk::delta("chatcmpl-1", 1, "m", delta, finish.map(str::to_owned))
    }

    fn call(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> Delta {
        Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index,
                id: id.map(str::to_owned),
                kind: id.map(|_| "function".to_owned()),
                function: FunctionCallDelta {
                    name: name.map(str::to_owned),
                    arguments: Some(arguments.to_owned()),
                },
            }]),
            ..Delta::default()
        }
    }

    #[test]
    fn text_then_two_tool_calls_follow_anthropics_event_order() {
        let mut renderer = MessagesRenderer::default();
        let mut frames = Vec::new();
        let text = |t: &str| Delta {
            role: Some("assistant".into()),
            content: Some(t.into()),
            ..Delta::default()
        };
        for chunk in [
            chunk(text("Let me "), None),
            chunk(text("check."), None),
            chunk(call(0, Some("call_a"), Some("get_weather"), ""), None),
            chunk(call(0, None, None, "{\"city\":"), None),
            chunk(call(0, None, None, "\"Lisbon\"}"), None),
            chunk(call(1, Some("call_b"), Some("get_time"), "{}"), None),
            chunk(Delta::default(), Some("tool_calls")),
        ] {
            renderer.chunk(chunk, &mut frames);
        }
        renderer.usage(&Usage::new(120, 30, 100, 0, 0));
        renderer.finish(&mut frames);
        let events = events(&frames);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[0].1["message"]["role"], "assistant");
        assert_eq!(events[0].1["message"]["content"], json!([]));
        assert_eq!(events[2].1["content_block"], json!({"type": "text", "text": ""}));
        assert_eq!(
            events[6].1,
            json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}})
        );
        assert_eq!(
            events[8].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "\"Lisbon\"}"})
        );
        assert_eq!(events[10].1["index"], 2);
        assert_eq!(
            events[13].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 20, "output_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100}})
        );
    }

    #[test]
    fn a_failure_is_an_error_event_with_anthropics_type() {
        let mut renderer = MessagesRenderer::default();
        let mut frames = Vec::new();
        let error = ApiError::Upstream {
            provider: "p".into(),
            error: ProviderError::new(ErrorKind::ServerError, "cut"),
        };
        renderer.failed(&error, &mut frames);
        let events = events(&frames);
        assert_eq!(events[0].0, "error");
        assert_eq!(events[0].1["error"]["type"], "api_error");
    }

    #[test]
    fn a_usage_chunk_without_choices_sets_the_final_usage() {
        let mut renderer = MessagesRenderer::default();
        let mut frames = Vec::new();
        renderer.chunk(chunk(Delta::default(), Some("length")), &mut frames);
        renderer.chunk(
            ChatChunk::usage("c", 1, "m", Usage::new(5, 6, 0, 0, 0)),
            &mut frames,
        );
        renderer.finish(&mut frames);
        let events = events(&frames);
        let delta = &events[events.len() - 2].1;
        assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
        assert_eq!(delta["usage"]["output_tokens"], 6);
    }

    #[test]
    fn thinking_pieces_become_signed_thinking_blocks_before_the_text_and_tool_use() {
        let mut renderer = MessagesRenderer::default();
        let mut frames = Vec::new();
        let thinking = |text: &str, signature: Option<&str>| Delta {
            reasoning_content: (!text.is_empty()).then(|| text.to_owned()),
            thinking_blocks: Some(vec![ThinkingBlock::Thinking {
                thinking: text.to_owned(),
                signature: signature.map(str::to_owned),
            }]),
            ..Delta::default()
        };
        for chunk in [
            chunk(thinking("Weather ", None), None),
            chunk(thinking("needed.", None), None),
            chunk(thinking("", Some("sig1")), None),
            chunk(
                Delta {
                    thinking_blocks: Some(vec![ThinkingBlock::RedactedThinking { data: "enc".into() }]),
                    ..Delta::default()
                },
                None,
            ),
            chunk(thinking("Then call.", None), None),
            chunk(thinking("", Some("sig2")), None),
            chunk(
                Delta {
                    content: Some("Checking.".into()),
                    ..Delta::default()
                },
                None,
            ),
            chunk(call(0, Some("toolu_1"), Some("get_weather"), "{}"), None),
            chunk(Delta::default(), Some("tool_calls")),
        ] {
            renderer.chunk(chunk, &mut frames);
        }
        renderer.finish(&mut frames);
        let events: Vec<Value> = events(&frames).into_iter().map(|(_, json)| json).collect();
        let start = |index: usize, block: Value| json!({"type": "content_block_start", "index": index, "content_block": block});
        let delta = |index: usize, delta: Value| json!({"type": "content_block_delta", "index": index, "delta": delta});
        let stop = |index: usize| json!({"type": "content_block_stop", "index": index});
        assert_eq!(
            events[2..events.len() - 2],
            [
                start(0, json!({"type": "thinking", "thinking": "", "signature": ""})),
                delta(0, json!({"type": "thinking_delta", "thinking": "Weather "})),
                delta(0, json!({"type": "thinking_delta", "thinking": "needed."})),
                delta(0, json!({"type": "signature_delta", "signature": "sig1"})),
                stop(0),
                start(1, json!({"type": "redacted_thinking", "data": "enc"})),
                stop(1),
                start(2, json!({"type": "thinking", "thinking": "", "signature": ""})),
                delta(2, json!({"type": "thinking_delta", "thinking": "Then call."})),
                delta(2, json!({"type": "signature_delta", "signature": "sig2"})),
                stop(2),
                start(3, json!({"type": "text", "text": ""})),
                delta(3, json!({"type": "text_delta", "text": "Checking."})),
                stop(3),
                start(
                    4,
                    json!({"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}})
                ),
                delta(4, json!({"type": "input_json_delta", "partial_json": "{}"})),
                stop(4),
            ]
        );
        assert_eq!(events[events.len() - 2]["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn bare_reasoning_content_opens_one_unsigned_thinking_block() {
        let mut renderer = MessagesRenderer::default();
        let mut frames = Vec::new();
        for text in ["Hm", "m."] {
            let delta = Delta {
                reasoning_content: Some(text.into()),
                ..Delta::default()
            };
            renderer.chunk(chunk(delta, None), &mut frames);
        }
        renderer.finish(&mut frames);
        let events = events(&frames);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names[2..6],
            [
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop"
            ]
        );
        assert_eq!(
            events[4].1["delta"],
            json!({"type": "thinking_delta", "thinking": "m."})
        );
    }
}
