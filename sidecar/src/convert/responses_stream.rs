//! Internal chunks → the Responses API's stream events: `response.created`
//! and `response.in_progress`, then per output item `output_item.added`,
//! its reasoning summary, text or argument deltas and their `.done` events,
//! `output_item.done`,
//! and last `response.completed` (or `.incomplete`) with the usage — or
//! `response.failed` when the stream breaks off.

use bytes::Bytes;
use serde_json::{Value, json};

use super::responses::{Echo, ending, reasoning_item, response_id};
use super::{Render, sse_event};
use crate::api::Usage;
use crate::api::chat::{ChatChunk, ThinkingBlock};
use crate::api::responses::{
    OutputItem, OutputText, Response, ResponseError, SummaryText, Usage as WireUsage,
};
use crate::error::ApiError;

/// The item being written.
#[derive(Debug)]
enum Open {
    Reasoning {
        text: String,
        blocks: Vec<ThinkingBlock>,
    },
    Text {
        text: String,
    },
    Call {
        chat_index: u32,
        arguments: String,
    },
}

/// Renders one stream; see the module docs.
#[derive(Debug)]
pub struct ResponsesRenderer {
    echo: Echo,
    response: Option<Response>,
    sequence: u64,
    open: Option<(usize, String, Open)>,
    finish: Option<String>,
    usage: Usage,
}

impl ResponsesRenderer {
    /// A renderer whose response object echoes the request.
    pub fn new(echo: Echo) -> Self {
        Self {
            echo,
            response: None,
            sequence: 0,
            open: None,
            finish: None,
            usage: Usage::default(),
        }
    }

    fn emit(&mut self, frames: &mut Vec<Bytes>, kind: &str, mut event: Value) {
        event["type"] = Value::from(kind);
        event["sequence_number"] = Value::from(self.sequence);
        self.sequence += 1;
        frames.push(sse_event(kind, event.to_string().as_bytes()));
    }

    fn emit_response(&mut self, frames: &mut Vec<Bytes>, kind: &str) {
        let response = serde_json::to_value(&self.response).unwrap_or_default();
        self.emit(frames, kind, json!({ "response": response }));
    }

    fn output(&mut self) -> &mut Vec<OutputItem> {
        &mut self
            .response
            .get_or_insert_with(|| self.echo.response(String::new(), String::new(), "in_progress"))
            .output
    }

    fn open_item(&mut self, item: OutputItem, open: Open, frames: &mut Vec<Bytes>) -> usize {
        self.close(frames);
        let id = match &item {
            OutputItem::Message { id, .. }
            | OutputItem::FunctionCall { id, .. }
            | OutputItem::Reasoning { id, .. } => id.clone(),
        };
        let index = self.output().len();
        self.emit(
            frames,
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        match open {
            Open::Text { .. } => {
                let part = OutputText::new(String::new());
                self.emit(
                    frames,
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                );
            }
            Open::Reasoning { .. } => {
                let part = SummaryText::new(String::new());
                self.emit(
                    frames,
                    "response.reasoning_summary_part.added",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part}),
                );
            }
            Open::Call { .. } => {}
        }
        self.output().push(item);
        self.open = Some((index, id, open));
        index
    }

    fn close(&mut self, frames: &mut Vec<Bytes>) {
        let Some((index, id, open)) = self.open.take() else {
            return;
        };
        let item = match open {
            Open::Reasoning { text, blocks } => {
                self.emit(
                    frames,
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}),
                );
                let part = SummaryText::new(text.clone());
                self.emit(
                    frames,
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part}),
                );
                reasoning_item(id, text, &blocks)
            }
            Open::Text { text } => {
                self.emit(
                    frames,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                );
                let part = OutputText::new(text);
                self.emit(
                    frames,
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                );
                OutputItem::Message {
                    id,
                    status: "completed",
                    role: "assistant",
                    content: vec![part],
                }
            }
            Open::Call { arguments, .. } => {
                let (call_id, name) = match self.output().get(index) {
                    Some(OutputItem::FunctionCall { call_id, name, .. }) => (call_id.clone(), name.clone()),
                    _ => (String::new(), String::new()),
                };
                self.emit(
                    frames,
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments}),
                );
                OutputItem::FunctionCall {
                    id,
                    call_id,
                    name,
                    arguments,
                    status: "completed",
                }
            }
        };
        self.emit(
            frames,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        if let Some(slot) = self.output().get_mut(index) {
            *slot = item;
        }
    }
}

impl ResponsesRenderer {
    /// Reasoning text and signed pieces go to the open reasoning item,
    /// opened first if need be.
    fn reason(&mut self, delta: Option<String>, pieces: Vec<ThinkingBlock>, frames: &mut Vec<Bytes>) {
        if !matches!(self.open, Some((_, _, Open::Reasoning { .. }))) {
            let item = OutputItem::Reasoning {
                id: format!("rs_{}", self.output().len()),
                summary: Vec::new(),
                encrypted_content: None,
            };
            let open = Open::Reasoning {
                text: String::new(),
                blocks: Vec::new(),
            };
            self.open_item(item, open, frames);
        }
        let Some((index, id, Open::Reasoning { text, blocks })) = &mut self.open else {
            return;
        };
        for piece in pieces {
            ThinkingBlock::absorb(blocks, piece);
        }
        if let Some(delta) = delta {
            text.push_str(&delta);
            let event = json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": delta});
            self.emit(frames, "response.reasoning_summary_text.delta", event);
        }
    }
}

impl Render for ResponsesRenderer {
    fn chunk(&mut self, chunk: ChatChunk, frames: &mut Vec<Bytes>) {
        if let Some(usage) = chunk.usage {
            self.usage = usage;
        }
        if self.response.is_none() {
            let id = response_id(&chunk.id);
            self.response = Some(self.echo.response(id, chunk.model, "in_progress"));
            self.emit_response(frames, "response.created");
            self.emit_response(frames, "response.in_progress");
        }
        let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) else {
            return;
        };
        let reasoning = choice.delta.reasoning_content.filter(|t| !t.is_empty());
        let pieces = choice.delta.thinking_blocks.unwrap_or_default();
        if reasoning.is_some() || !pieces.is_empty() {
            self.reason(reasoning, pieces, frames);
        }
        if let Some(delta) = choice.delta.content.filter(|t| !t.is_empty()) {
            if !matches!(self.open, Some((_, _, Open::Text { .. }))) {
                let id = format!("msg_{}", self.output().len());
                let item = OutputItem::Message {
                    id,
                    status: "in_progress",
                    role: "assistant",
                    content: Vec::new(),
                };
                self.open_item(item, Open::Text { text: String::new() }, frames);
            }
            if let Some((index, id, Open::Text { text })) = &mut self.open {
                text.push_str(&delta);
                let event = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []});
                self.emit(frames, "response.output_text.delta", event);
            }
        }
        for call in choice.delta.tool_calls.into_iter().flatten() {
            if let Some(call_id) = call.id {
                let item = OutputItem::FunctionCall {
                    id: format!("fc_{call_id}"),
                    call_id,
                    name: call.function.name.unwrap_or_default(),
                    arguments: String::new(),
                    status: "in_progress",
                };
                let open = Open::Call {
                    chat_index: call.index,
                    arguments: String::new(),
                };
                self.open_item(item, open, frames);
            }
            let Some(delta) = call.function.arguments.filter(|a| !a.is_empty()) else {
                continue;
            };
            if let Some((
                index,
                id,
                Open::Call {
                    chat_index,
                    arguments,
                },
            )) = &mut self.open
                && *chat_index == call.index
            {
                arguments.push_str(&delta);
                let event = json!({"item_id": id, "output_index": index, "delta": delta});
                self.emit(frames, "response.function_call_arguments.delta", event);
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
        let (_, code) = error.type_and_code();
        let response = self
            .response
            .get_or_insert_with(|| self.echo.response(String::new(), String::new(), "failed"));
        response.status = "failed";
        response.error = Some(ResponseError {
            code,
            message: error.to_string(),
        });
        self.emit_response(frames, "response.failed");
    }

    fn finish(&mut self, frames: &mut Vec<Bytes>) {
        self.close(frames);
        let (status, incomplete) = ending(self.finish.as_deref());
        let usage = WireUsage::of(&self.usage);
        let response = self
            .response
            .get_or_insert_with(|| self.echo.response(String::new(), String::new(), status));
        response.status = status;
        response.incomplete_details = incomplete;
        response.usage = Some(usage);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit_response(frames, kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::chat::{Delta, FunctionCallDelta, ToolCallDelta};
    use crate::providers::{ErrorKind, ProviderError};

    fn events(frames: &[Bytes]) -> Vec<Value> {
        frames
            .iter()
            .map(|frame| {
                let text = std::str::from_utf8(frame).expect("utf-8");
                let (event, data) = text.trim_end().split_once('\n').expect("two lines");
                let json: Value =
                    serde_json::from_str(data.strip_prefix("data: ").expect("data")).expect("json");
                assert_eq!(
                    Some(json["type"].as_str().expect("type")),
                    event.strip_prefix("event: ")
                );
                json
            })
            .collect()
    }

    fn chunk(delta: Delta, finish: Option<&str>) -> ChatChunk {
        ChatChunk::delta("chatcmpl-7", 1, "m", delta, finish.map(str::to_owned))
    }

    #[test]
    fn text_then_a_call_follow_the_responses_event_order() {
        let mut renderer = ResponsesRenderer::new(Echo::default());
        let mut frames = Vec::new();
        let text = |t: &str| Delta {
            content: Some(t.into()),
            ..Delta::default()
        };
        let call = |id: Option<&str>, arguments: &str| Delta {
            tool_calls: Some(vec![ToolCallDelta {
                index: 0,
                id: id.map(str::to_owned),
                kind: None,
                function: FunctionCallDelta {
                    name: id.map(|_| "f".to_owned()),
                    arguments: Some(arguments.to_owned()),
                },
            }]),
            ..Delta::default()
        };
        for c in [
            chunk(text("Hel"), None),
            chunk(text("lo"), None),
            chunk(call(Some("call_1"), "{\"a\""), None),
            chunk(call(None, ":1}"), None),
            chunk(Delta::default(), Some("tool_calls")),
        ] {
            renderer.chunk(c, &mut frames);
        }
        renderer.usage(&Usage::new(9, 3, 0, 0, 0));
        renderer.finish(&mut frames);
        let events = events(&frames);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("")).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let numbers: Vec<u64> = events
            .iter()
            .filter_map(|e| e["sequence_number"].as_u64())
            .collect();
        assert_eq!(numbers, (0..15).collect::<Vec<_>>());
        assert_eq!(events[0]["response"]["id"], "resp_7");
        assert_eq!(events[0]["response"]["status"], "in_progress");
        assert_eq!(events[6]["text"], "Hello");
        assert_eq!(events[12]["arguments"], "{\"a\":1}");
        let done = &events[14]["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][1]["call_id"], "call_1");
        assert_eq!(done["output"][1]["status"], "completed");
        assert_eq!(done["usage"]["input_tokens"], 9);
        assert_eq!(done["usage"]["output_tokens"], 3);
    }

    #[test]
    fn thinking_streams_as_a_reasoning_item_before_the_text() {
        let mut renderer = ResponsesRenderer::new(Echo::default());
        let mut frames = Vec::new();
        let thinking = |text: &str, signature: Option<&str>| Delta {
            reasoning_content: Some(text.to_owned()),
            thinking_blocks: Some(vec![ThinkingBlock::Thinking {
                thinking: text.to_owned(),
                signature: signature.map(str::to_owned),
            }]),
            ..Delta::default()
        };
        for c in [
            chunk(thinking("Greet ", None), None),
            chunk(thinking("them.", None), None),
            chunk(thinking("", Some("sig")), None),
            chunk(
                Delta {
                    content: Some("Hi".into()),
                    ..Delta::default()
                },
                None,
            ),
            chunk(Delta::default(), Some("stop")),
        ] {
            renderer.chunk(c, &mut frames);
        }
        renderer.finish(&mut frames);
        let events = events(&frames);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap_or("")).collect();
        assert_eq!(
            kinds[2..9],
            [
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
            ]
        );
        assert_eq!(events[6]["text"], "Greet them.");
        let done = &events.last().expect("events")["response"];
        assert_eq!(done["output"][0]["type"], "reasoning");
        assert_eq!(done["output"][0]["summary"][0]["text"], "Greet them.");
        let sealed = done["output"][0]["encrypted_content"].as_str().expect("sealed");
        let complete = reasoning_item(
            "rs_0".into(),
            "Greet them.".into(),
            &[ThinkingBlock::Thinking {
                thinking: "Greet them.".into(),
                signature: Some("sig".into()),
            }],
        );
        assert_eq!(
            serde_json::to_value(&complete).expect("json")["encrypted_content"],
            sealed,
            "the stream seals what a complete answer seals"
        );
        assert_eq!(done["output"][1]["content"][0]["text"], "Hi");
    }

    #[test]
    fn a_cut_answer_is_incomplete_and_a_failure_is_response_failed() {
        let mut renderer = ResponsesRenderer::new(Echo::default());
        let mut frames = Vec::new();
        renderer.chunk(chunk(Delta::default(), Some("length")), &mut frames);
        renderer.finish(&mut frames);
        let last = events(&frames).pop().expect("events");
        assert_eq!(last["type"], "response.incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );

        let mut renderer = ResponsesRenderer::new(Echo::default());
        let mut frames = Vec::new();
        renderer.chunk(chunk(Delta::default(), None), &mut frames);
        let error = ApiError::Upstream {
            provider: "p".into(),
            error: ProviderError::new(ErrorKind::Timeout, "silent"),
        };
        renderer.failed(&error, &mut frames);
        let last = events(&frames).pop().expect("events");
        assert_eq!(last["type"], "response.failed");
        assert_eq!(last["response"]["status"], "failed");
        assert_eq!(last["response"]["error"]["code"], "upstream_timeout");
    }
}
