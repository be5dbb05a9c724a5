//! Anthropic's streaming events → OpenAI `chat.completion.chunk`s.
//!
//! A pure state machine, fed one SSE event at a time, so it is tested and
//! fuzzed without I/O. Anthropic numbers content blocks across text and tool
//! calls; OpenAI numbers tool calls on their own, so each `tool_use` block
//! gets the next tool-call index.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::request::JSON_RESPONSE_TOOL;
use super::response::{WireUsage, finish_reason};
use super::{ErrorDetail, classify};
use crate::api::chat::{ChatChunk, Delta, FunctionCallDelta, ThinkingBlock, ToolCallDelta};
use crate::providers::sse::SseEvent;
use crate::providers::{ProviderError, StreamEvent, to_json_bytes, unix_now};

/// One streaming event, as far as it is translated. Anthropic may add event
/// and block types; unknown ones are skipped, as its docs ask clients to.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    MessageStart {
        message: StartedMessage,
    },
    ContentBlockStart {
        index: u64,
        content_block: StartedBlock,
    },
    ContentBlockDelta {
        index: u64,
        delta: BlockDelta,
    },
    ContentBlockStop {
        index: u64,
    },
    MessageDelta {
        delta: MessageChange,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop,
    Error {
        error: ErrorDetail,
    },
    /// `ping` and event types added later.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StartedMessage {
    id: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartedBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    RedactedThinking {
        data: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    ThinkingDelta {
        thinking: String,
    },
    SignatureDelta {
        signature: String,
    },
    /// Citation deltas and types added later.
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct MessageChange {
    #[serde(default)]
    stop_reason: Option<String>,
}

/// What an open content block turns into.
#[derive(Clone, Copy, Debug)]
enum OpenBlock {
    /// Content text.
    Text,
    /// A call of one of the app's tools, with its OpenAI index.
    ToolCall(u32),
    /// The JSON response tool: its input is the answer's content.
    JsonAnswer,
    /// Extended thinking: `reasoning_content` and `thinking_blocks` pieces.
    Thinking,
    /// A block type with no deltas to pass on (redacted thinking arrives
    /// whole at its start; server tools).
    Skipped,
}

/// Translates one Anthropic message stream into OpenAI stream events.
///
/// Feed it every SSE event with [`push`](Self::push); after `message_stop`
/// it is [done](Self::is_done). Call [`end`](Self::end) when the body ends
/// to learn whether the stream was complete.
#[derive(Debug)]
pub struct StreamTranslator {
    include_usage: bool,
    json_response: bool,
    created: u64,
    id: String,
    model: String,
    started: bool,
    role_sent: bool,
    done: bool,
    blocks: BTreeMap<u64, OpenBlock>,
    tool_calls: u32,
    stop_reason: Option<String>,
    usage: WireUsage,
}

impl StreamTranslator {
    /// A translator for a stream from `model`. With `include_usage`, a final
    /// usage chunk is emitted (the app asked `stream_options.include_usage`);
    /// usage is always reported as [`StreamEvent::Usage`] for accounting.
    pub fn new(model: &str, include_usage: bool) -> Self {
        Self {
            include_usage,
            json_response: false,
            created: unix_now(),
            id: String::new(),
            model: model.to_owned(),
            started: false,
            role_sent: false,
            done: false,
            blocks: BTreeMap::new(),
            tool_calls: 0,
            stop_reason: None,
            usage: WireUsage::default(),
        }
    }

    /// Streams calls of the JSON response tool as content (the app asked for
    /// `response_format` JSON).
    #[must_use]
    pub fn json_response(mut self) -> Self {
        self.json_response = true;
        self
    }

    /// Whether `message_stop` has arrived.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Translates one event into zero or more stream events.
    ///
    /// Nothing is emitted for `message_start`: the first chunk goes out with
    /// the first content, so an error event before any content still lets
    /// the sidecar fall back instead of breaking a committed stream.
    ///
    /// # Errors
    /// An `error` event (classified like an error answer), or an event that
    /// is malformed or out of order (`InvalidResponse`).
    pub fn push(&mut self, event: &SseEvent) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut out = Vec::new();
        if self.done {
            return Ok(out);
        }
        let wire: WireEvent = serde_json::from_str(&event.data).map_err(|e| {
            ProviderError::invalid_response(format!("upstream sent a malformed stream event: {e}"))
        })?;
        match wire {
            WireEvent::MessageStart { message } => {
                if self.started {
                    return Err(ProviderError::invalid_response(
                        "upstream started a second message in one stream",
                    ));
                }
                self.started = true;
                self.id = message.id;
                if let Some(model) = message.model {
                    self.model = model;
                }
                if let Some(usage) = message.usage {
                    self.usage.merge(&usage);
                }
            }
            WireEvent::ContentBlockStart { index, content_block } => {
                self.expect_started()?;
                let block = self.open_block(content_block, &mut out);
                self.blocks.insert(index, block);
            }
            WireEvent::ContentBlockDelta { index, delta } => {
                self.expect_started()?;
                let block = *self.blocks.get(&index).ok_or_else(|| {
                    ProviderError::invalid_response(format!(
                        "upstream sent a delta for content block {index}, which is not open"
                    ))
                })?;
                self.block_delta(block, delta, &mut out)?;
            }
            WireEvent::ContentBlockStop { index } => {
                self.blocks.remove(&index);
            }
            WireEvent::MessageDelta { delta, usage } => {
                self.expect_started()?;
                if delta.stop_reason.is_some() {
                    self.stop_reason = delta.stop_reason;
                }
                if let Some(usage) = usage {
                    self.usage.merge(&usage);
                }
            }
            WireEvent::MessageStop => {
                self.expect_started()?;
                self.finish(&mut out);
            }
            WireEvent::Error { error } => return Err(classify(None, &error)),
            WireEvent::Other => {}
        }
        Ok(out)
    }

    /// Called when the upstream body ends.
    ///
    /// # Errors
    /// The body ended before `message_stop`: the answer is incomplete.
    pub fn end(&self) -> Result<(), ProviderError> {
        if self.done {
            Ok(())
        } else {
            Err(ProviderError::broken_answer(
                "upstream stream ended before message_stop",
            ))
        }
    }

    fn expect_started(&self) -> Result<(), ProviderError> {
        if self.started {
            Ok(())
        } else {
            Err(ProviderError::invalid_response(
                "upstream sent content before message_start",
            ))
        }
    }

    fn open_block(&mut self, block: StartedBlock, out: &mut Vec<StreamEvent>) -> OpenBlock {
        match block {
            StartedBlock::Text { text } => {
                self.content(text, out);
                OpenBlock::Text
            }
            StartedBlock::ToolUse { name, .. } if self.json_response && name == JSON_RESPONSE_TOOL => {
                OpenBlock::JsonAnswer
            }
            StartedBlock::ToolUse { id, name } => {
                let index = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                let call = ToolCallDelta {
                    index,
                    id: Some(id),
                    kind: Some("function".to_owned()),
                    function: FunctionCallDelta {
                        name: Some(name),
                        arguments: Some(String::new()),
                    },
                };
                self.chunk(
                    Delta {
                        tool_calls: Some(vec![call]),
                        ..Delta::default()
                    },
                    None,
                    out,
                );
                OpenBlock::ToolCall(index)
            }
            StartedBlock::Thinking { thinking } => {
                self.thinking(thinking, None, out);
                OpenBlock::Thinking
            }
            StartedBlock::RedactedThinking { data } => {
                self.chunk(
                    Delta {
                        thinking_blocks: Some(vec![ThinkingBlock::RedactedThinking { data }]),
                        ..Delta::default()
                    },
                    None,
                    out,
                );
                OpenBlock::Skipped
            }
            StartedBlock::Other => OpenBlock::Skipped,
        }
    }

    fn block_delta(
        &mut self,
        block: OpenBlock,
        delta: BlockDelta,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), ProviderError> {
        match (block, delta) {
            (OpenBlock::Text, BlockDelta::TextDelta { text })
            | (OpenBlock::JsonAnswer, BlockDelta::InputJsonDelta { partial_json: text }) => {
                self.content(text, out)
            }
            (OpenBlock::ToolCall(index), BlockDelta::InputJsonDelta { partial_json }) => {
                if !partial_json.is_empty() {
                    let call = ToolCallDelta {
                        index,
                        function: FunctionCallDelta {
                            name: None,
                            arguments: Some(partial_json),
                        },
                        ..ToolCallDelta::default()
                    };
                    self.chunk(
                        Delta {
                            tool_calls: Some(vec![call]),
                            ..Delta::default()
                        },
                        None,
                        out,
                    );
                }
            }
            (OpenBlock::Thinking, BlockDelta::ThinkingDelta { thinking }) => {
                self.thinking(thinking, None, out)
            }
            (OpenBlock::Thinking, BlockDelta::SignatureDelta { signature }) => {
                self.thinking(String::new(), Some(signature), out);
            }
            (OpenBlock::Skipped, _) | (_, BlockDelta::Other) => {}
            (block, delta) => {
                return Err(ProviderError::invalid_response(format!(
                    "upstream sent a {} for a {} block",
                    delta_name(&delta),
                    block_name(block)
                )));
            }
        }
        Ok(())
    }

    fn content(&mut self, text: String, out: &mut Vec<StreamEvent>) {
        if !text.is_empty() {
            self.chunk(
                Delta {
                    content: Some(text),
                    ..Delta::default()
                },
                None,
                out,
            );
        }
    }

    /// A piece of a thinking block: text as `reasoning_content` too, the
    /// signature only in `thinking_blocks`.
    fn thinking(&mut self, text: String, signature: Option<String>, out: &mut Vec<StreamEvent>) {
        if text.is_empty() && signature.is_none() {
            return;
        }
        self.chunk(
            Delta {
                reasoning_content: (!text.is_empty()).then(|| text.clone()),
                thinking_blocks: Some(vec![ThinkingBlock::Thinking {
                    thinking: text,
                    signature,
                }]),
                ..Delta::default()
            },
            None,
            out,
        );
    }

    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        self.done = true;
        let finish = finish_reason(self.stop_reason.as_deref(), self.tool_calls > 0);
        self.chunk(Delta::default(), Some(finish), out);
        let usage = self.usage.to_usage();
        if self.include_usage {
            let chunk = ChatChunk::usage(&self.id, self.created, &self.model, usage.clone());
            out.push(StreamEvent::Chunk(to_json_bytes(&chunk)));
        }
        out.push(StreamEvent::Usage(usage));
    }

    /// One chunk; the first of the stream also names the role, as OpenAI's does.
    fn chunk(&mut self, mut delta: Delta, finish: Option<&str>, out: &mut Vec<StreamEvent>) {
        if !self.role_sent {
            self.role_sent = true;
            delta.role = Some("assistant".to_owned());
        }
        let chunk = ChatChunk::delta(
            &self.id,
            self.created,
            &self.model,
            delta,
            finish.map(str::to_owned),
        );
        out.push(StreamEvent::Chunk(to_json_bytes(&chunk)));
    }
}

fn block_name(block: OpenBlock) -> &'static str {
    match block {
        OpenBlock::Text => "text",
        OpenBlock::ToolCall(_) | OpenBlock::JsonAnswer => "tool_use",
        OpenBlock::Thinking => "thinking",
        OpenBlock::Skipped => "skipped",
    }
}

fn delta_name(delta: &BlockDelta) -> &'static str {
    match delta {
        BlockDelta::TextDelta { .. } => "text_delta",
        BlockDelta::InputJsonDelta { .. } => "input_json_delta",
        BlockDelta::ThinkingDelta { .. } => "thinking_delta",
        BlockDelta::SignatureDelta { .. } => "signature_delta",
        BlockDelta::Other => "delta",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::Usage;
    use crate::providers::ErrorKind;
    use crate::providers::sse::SseDecoder;

    const TEXT: &str = include_str!("../../../../test-support/fixtures/anthropic/text.sse");
    const TOOL_USE: &str = include_str!("../../../../test-support/fixtures/anthropic/tool_use.sse");
    const THINKING: &str = include_str!("../../../../test-support/fixtures/anthropic/thinking.sse");
    const OVERLOADED: &str = include_str!("../../../../test-support/fixtures/anthropic/overloaded.sse");

    /// What a transcript turns into: the chunks as JSON, the usage reported,
    /// and the first error, if any.
    struct Outcome {
        chunks: Vec<Value>,
        usage: Option<Usage>,
        error: Option<ProviderError>,
        complete: bool,
    }

    fn run(transcript: &str, mut translator: StreamTranslator) -> Outcome {
        let mut decoder = SseDecoder::default();
        let mut outcome = Outcome {
            chunks: Vec::new(),
            usage: None,
            error: None,
            complete: false,
        };
        for event in decoder.push(transcript.as_bytes()).expect("decodes") {
            match translator.push(&event) {
                Ok(events) => {
                    for event in events {
                        match event {
                            StreamEvent::Chunk(json) => {
                                outcome.chunks.push(serde_json::from_slice(&json).expect("json"))
                            }
                            StreamEvent::Usage(usage) => outcome.usage = Some(usage),
                        }
                    }
                }
                Err(error) => {
                    outcome.error = Some(error);
                    return outcome;
                }
            }
        }
        outcome.complete = translator.end().is_ok();
        outcome
    }

    fn content(chunks: &[Value]) -> String {
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    #[test]
    fn a_text_stream_becomes_chunks_with_usage_at_the_end() {
        let outcome = run(TEXT, StreamTranslator::new("requested-model", true));
        assert!(outcome.complete && outcome.error.is_none());
        let chunks = &outcome.chunks;
        assert_eq!(content(chunks), "Hello! How can I help you today?");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(
            chunks
                .iter()
                .skip(1)
                .all(|c| c["choices"][0]["delta"].get("role").is_none())
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["id"] == "msg_01TextStream" && c["model"] == "claude-sonnet-4-5")
        );
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage_chunk = &chunks[chunks.len() - 1];
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], 25 + 1500 + 12);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 12);
        assert_eq!(
            usage_chunk["usage"]["prompt_tokens_details"],
            json!({"cached_tokens": 1500, "cache_write_tokens": 12})
        );
        assert_eq!(outcome.usage, Some(Usage::new(1537, 12, 1500, 12, 0)));
    }

    #[test]
    fn without_include_usage_no_usage_chunk_is_sent_but_usage_is_reported() {
        let outcome = run(TEXT, StreamTranslator::new("m", false));
        assert!(outcome.chunks.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(
            outcome.chunks.last().expect("chunks")["choices"][0]["finish_reason"],
            "stop"
        );
        assert_eq!(outcome.usage.map(|u| u.completion_tokens), Some(12));
    }

    #[test]
    fn tool_use_blocks_stream_as_indexed_tool_call_deltas() {
        let outcome = run(TOOL_USE, StreamTranslator::new("m", false));
        assert!(outcome.complete, "{:?}", outcome.error);
        assert_eq!(content(&outcome.chunks), "Let me look that up.");
        let mut calls: BTreeMap<u64, (String, String, String)> = BTreeMap::new();
        for delta in outcome
            .chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        {
            for call in delta {
                let index = call["index"].as_u64().expect("index");
                let entry = calls.entry(index).or_default();
                if let Some(id) = call["id"].as_str() {
                    entry.0 = id.to_owned();
                    assert_eq!(call["type"], "function");
                }
                entry
                    .1
                    .push_str(call["function"]["name"].as_str().unwrap_or_default());
                entry
                    .2
                    .push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
        assert_eq!(
            calls.len(),
            2,
            "Anthropic blocks 1 and 2 are OpenAI tool calls 0 and 1"
        );
        assert_eq!(calls[&0].0, "toolu_01Weather");
        assert_eq!(calls[&0].1, "get_weather");
        let arguments: Value = serde_json::from_str(&calls[&0].2).expect("reassembled arguments are JSON");
        assert_eq!(
            arguments,
            json!({"location": "San Francisco, CA", "unit": "celsius"})
        );
        assert_eq!(calls[&1].1, "get_time");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[&1].2).expect("json"),
            json!({"timezone": "America/Los_Angeles"})
        );
        assert_eq!(
            outcome.chunks.last().expect("chunks")["choices"][0]["finish_reason"],
            "tool_calls"
        );
        assert_eq!(
            outcome.usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((472, 89))
        );
    }

    #[test]
    fn the_json_tool_streams_as_content() {
        let transcript = TOOL_USE.replace("get_weather", JSON_RESPONSE_TOOL).replace(
            r#"{"type":"tool_use","id":"toolu_01Time","name":"get_time","input":{}}"#,
            r#"{"type":"future_block"}"#,
        );
        let outcome = run(&transcript, StreamTranslator::new("m", false).json_response());
        assert!(outcome.complete, "{:?}", outcome.error);
        let text = content(&outcome.chunks);
        let json_part = text.strip_prefix("Let me look that up.").expect("text first");
        assert_eq!(
            serde_json::from_str::<Value>(json_part).expect("json content"),
            json!({"location": "San Francisco, CA", "unit": "celsius"})
        );
        assert_eq!(
            outcome.chunks.last().expect("chunks")["choices"][0]["finish_reason"],
            "stop"
        );
    }

    #[test]
    fn an_error_event_is_classified_and_nothing_was_committed_before_it() {
        let outcome = run(OVERLOADED, StreamTranslator::new("m", true));
        let error = outcome.error.expect("error event");
        assert_eq!(error.kind, ErrorKind::RateLimit);
        assert!(error.message.contains("Overloaded"), "{}", error.message);
        assert!(
            outcome.chunks.is_empty(),
            "message_start and ping alone emit no chunk"
        );
    }

    #[test]
    fn a_stream_without_message_stop_is_incomplete() {
        let cut = TEXT.split("event: message_delta").next().expect("prefix");
        let outcome = run(cut, StreamTranslator::new("m", true));
        assert!(outcome.error.is_none());
        assert!(!outcome.complete);
        assert_eq!(content(&outcome.chunks), "Hello! How can I help you today?");
        assert!(outcome.usage.is_none());
    }

    #[test]
    fn out_of_order_or_malformed_events_are_invalid_responses() {
        let cases = [
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}\n\ndata: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}}\n\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}\n\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\"}}\n\n",
            "data: not json\n\n",
        ];
        for transcript in cases {
            let error = run(transcript, StreamTranslator::new("m", false))
                .error
                .expect(transcript);
            assert_eq!(error.kind, ErrorKind::InvalidResponse, "{transcript}");
        }
    }

    #[test]
    fn thinking_streams_as_reasoning_and_thinking_block_pieces_before_the_text() {
        let outcome = run(THINKING, StreamTranslator::new("m", false));
        assert!(outcome.complete, "{:?}", outcome.error);
        let deltas: Vec<&Value> = outcome.chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(deltas[0]["role"], "assistant");
        assert_eq!(
            deltas[0]["reasoning_content"], "27 * 453: 20 * 453 = 9060,",
            "the first content is the first thinking delta"
        );
        assert_eq!(
            deltas[0]["thinking_blocks"],
            json!([{"type": "thinking", "thinking": "27 * 453: 20 * 453 = 9060,"}])
        );
        assert_eq!(deltas[1]["reasoning_content"], " 7 * 453 = 3171; sum 12231.");
        assert_eq!(
            *deltas[2],
            json!({"thinking_blocks": [{"type": "thinking", "thinking": "",
                "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}]}),
            "the signature comes alone, without reasoning text"
        );
        assert_eq!(
            *deltas[3],
            json!({"thinking_blocks": [{"type": "redacted_thinking",
                "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"}]})
        );
        assert_eq!(*deltas[4], json!({"content": "27 * 453 = 12231."}));
        assert_eq!(outcome.chunks[5]["choices"][0]["finish_reason"], "stop");
        assert_eq!(outcome.chunks.len(), 6);
    }

    #[test]
    fn a_signature_for_a_text_block_is_an_invalid_response() {
        let transcript = TEXT.replace(
            "{\"type\":\"text_delta\",\"text\":\"Hello!\"}",
            "{\"type\":\"signature_delta\",\"signature\":\"x\"}",
        );
        assert!(transcript.contains("signature_delta"));
        let error = run(&transcript, StreamTranslator::new("m", false))
            .error
            .expect("error");
        assert_eq!(error.kind, ErrorKind::InvalidResponse);
    }

    #[test]
    fn unknown_events_and_blocks_are_skipped() {
        let transcript = TEXT.replace(
            "event: ping\ndata: {\"type\": \"ping\"}\n\n",
            "event: ping\ndata: {\"type\": \"ping\"}\n\nevent: future_event\ndata: {\"type\": \"future_event\", \"x\": 1}\n\n",
        );
        assert!(transcript.contains("future_event"));
        let outcome = run(&transcript, StreamTranslator::new("m", false));
        assert!(outcome.complete);
        assert_eq!(content(&outcome.chunks), "Hello! How can I help you today?");
    }
}
