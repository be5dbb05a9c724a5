//! ConverseStream's binary event stream → OpenAI `chat.completion.chunk`s.
//!
//! [`StreamTranslator`] is a pure state machine: fed bytes as they arrive,
//! it decodes event-stream frames and returns the chunks each one completes,
//! so nothing waits for more than one frame. [`relay`] drives it from the
//! upstream body.

use std::collections::HashMap;

use async_stream::stream;
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::BytesMut;
use futures::StreamExt;
use serde::Deserialize;

use super::super::upstream::UpstreamResponse;
use super::super::{ChunkStream, ErrorKind, ProviderError, StreamEvent, to_json_bytes};
use super::exception_kind;
use super::response::{TokenUsage, finish_reason};
use crate::api::Usage;
use crate::api::chat::{ChatChunk, Delta, FunctionCallDelta, ToolCallDelta};

/// The largest event-stream message AWS sends (16 MiB of payload plus
/// 128 KiB of headers); a prelude promising more is a broken stream, and
/// the bound keeps it from growing the buffer without end.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024 + 128 * 1024;

/// What every chunk of one answer carries, and what the app asked for.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// The `chat.completion.chunk` id.
    pub id: String,
    /// Unix seconds, for `created`.
    pub created: u64,
    /// The upstream model id.
    pub model: String,
    /// Whether the app asked for a final usage chunk.
    pub include_usage: bool,
    /// The tool standing in for `response_format`, whose input is streamed
    /// as content.
    pub json_tool: Option<String>,
}

/// What a content block that opened with `contentBlockStart` is.
#[derive(Clone, Copy, Debug)]
enum Block {
    /// An app tool call, by its position among the message's tool calls.
    ToolCall(u32),
    /// The response-format tool: its input is the answer.
    JsonAnswer,
}

/// A tool block between its start and its stop.
#[derive(Clone, Copy, Debug)]
struct OpenBlock {
    block: Block,
    /// Whether any input arrived. A call without arguments may get no input
    /// delta (or only empty ones); it must still end as the JSON `{}`.
    has_input: bool,
}

/// Translates one ConverseStream answer, frame by frame.
#[derive(Debug)]
pub struct StreamTranslator {
    settings: StreamSettings,
    decoder: MessageFrameDecoder,
    pending: BytesMut,
    role_sent: bool,
    blocks: HashMap<u64, OpenBlock>,
    tool_calls: u32,
    stopped: bool,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStart {
    #[serde(default)]
    content_block_index: u64,
    #[serde(default)]
    start: Option<BlockStartKind>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStartKind {
    #[serde(default)]
    tool_use: Option<ToolUseStart>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUseStart {
    tool_use_id: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockDelta {
    #[serde(default)]
    content_block_index: u64,
    delta: DeltaKind,
}

/// A delta's kinds; reasoning deltas deserialize as all-`None` and are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeltaKind {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<ToolUseDelta>,
}

#[derive(Deserialize)]
struct ToolUseDelta {
    #[serde(default)]
    input: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BlockStop {
    #[serde(default)]
    content_block_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageStop {
    stop_reason: String,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct ExceptionBody {
    #[serde(default, alias = "Message")]
    message: Option<String>,
}

impl StreamTranslator {
    /// A translator for one answer.
    pub fn new(settings: StreamSettings) -> Self {
        Self {
            settings,
            decoder: MessageFrameDecoder::new(),
            pending: BytesMut::new(),
            role_sent: false,
            blocks: HashMap::new(),
            tool_calls: 0,
            stopped: false,
            usage: None,
        }
    }

    /// Feeds bytes as they arrive and returns what the frames they complete
    /// translate to.
    ///
    /// # Errors
    /// A frame is corrupt or over-long, an event is unreadable, or Bedrock
    /// sent an exception; the stream ends there.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<StreamEvent>, ProviderError> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        loop {
            let frame = self.decoder.decode_frame(&mut self.pending).map_err(|e| {
                ProviderError::invalid_response(format!("Bedrock sent a corrupt event-stream frame: {e}"))
            })?;
            match frame {
                DecodedFrame::Complete(message) => events.extend(self.on_message(&message)?),
                DecodedFrame::Incomplete => break,
            }
        }
        if self.pending.len() > MAX_MESSAGE_BYTES {
            return Err(ProviderError::invalid_response(
                "Bedrock sent an over-long event-stream frame",
            ));
        }
        Ok(events)
    }

    /// Translates one decoded event-stream message.
    ///
    /// # Errors
    /// The event is unreadable, or it is an exception.
    pub fn on_message(&mut self, message: &Message) -> Result<Vec<StreamEvent>, ProviderError> {
        let message_type = header(message, ":message-type").unwrap_or("event");
        let payload = message.payload();
        match message_type {
            "event" => {}
            "exception" => {
                let exception = header(message, ":exception-type").unwrap_or("unknown exception");
                let text = serde_json::from_slice::<ExceptionBody>(payload)
                    .ok()
                    .and_then(|b| b.message);
                let text = text.unwrap_or_else(|| "no message".to_owned());
                return Err(ProviderError::new(
                    exception_kind(exception, &text),
                    format!("Bedrock stream failed with {exception}: {text}"),
                ));
            }
            _ => {
                let code = header(message, ":error-code").unwrap_or("unknown");
                let text = header(message, ":error-message").unwrap_or("no message");
                return Err(ProviderError::new(
                    ErrorKind::ServerError,
                    format!("Bedrock stream failed with {code}: {text}"),
                ));
            }
        }
        let mut events = Vec::new();
        match header(message, ":event-type").unwrap_or_default() {
            "messageStart" => self.role(&mut events),
            "contentBlockStart" => {
                let start: BlockStart = parse(payload)?;
                if let Some(tool) = start.start.and_then(|s| s.tool_use) {
                    self.role(&mut events);
                    self.start_tool(start.content_block_index, tool, &mut events);
                }
            }
            "contentBlockDelta" => {
                let delta: BlockDelta = parse(payload)?;
                self.role(&mut events);
                if let Some(text) = delta.delta.text {
                    events.push(self.content(text));
                }
                if let Some(tool) = delta.delta.tool_use {
                    let open = self.blocks.get_mut(&delta.content_block_index).ok_or_else(|| {
                        ProviderError::invalid_response(
                            "Bedrock streamed tool input for a block it never started",
                        )
                    })?;
                    open.has_input |= !tool.input.trim().is_empty();
                    let block = open.block;
                    events.push(self.input(block, tool.input));
                }
            }
            "contentBlockStop" => {
                let stop: BlockStop = parse(payload)?;
                if let Some(open) = self.blocks.remove(&stop.content_block_index) {
                    events.extend(self.close(open));
                }
            }
            "messageStop" => {
                let stop: MessageStop = parse(payload)?;
                self.role(&mut events);
                // Blocks Bedrock never stopped are closed in their order.
                let mut unclosed: Vec<(u64, OpenBlock)> = self.blocks.drain().collect();
                unclosed.sort_unstable_by_key(|(index, _)| *index);
                events.extend(unclosed.into_iter().filter_map(|(_, open)| self.close(open)));
                self.stopped = true;
                let finish = finish_reason(&stop.stop_reason, self.tool_calls > 0);
                events.push(self.chunk(Delta::default(), Some(finish)));
            }
            "metadata" => {
                let metadata: Metadata = parse(payload)?;
                self.usage = metadata.usage.as_ref().map(Usage::from).or(self.usage.take());
            }
            // Unknown events are newer than this adapter and skipped.
            _ => {}
        }
        Ok(events)
    }

    /// Called at the end of the body: the usage, or an error if the stream
    /// was cut before Bedrock said it was done.
    ///
    /// # Errors
    /// No `messageStop` arrived, or a frame was left incomplete.
    pub fn finish(&mut self) -> Result<Vec<StreamEvent>, ProviderError> {
        if !self.pending.is_empty() {
            return Err(ProviderError::broken_answer(
                "Bedrock stream ended inside an event-stream frame",
            ));
        }
        if !self.stopped {
            return Err(ProviderError::broken_answer(
                "Bedrock stream ended before messageStop",
            ));
        }
        let Some(usage) = self.usage.take() else {
            return Ok(Vec::new());
        };
        let mut events = Vec::new();
        if self.settings.include_usage {
            let s = &self.settings;
            events.push(StreamEvent::Chunk(to_json_bytes(&ChatChunk::usage(
                &s.id,
                s.created,
                &s.model,
                usage.clone(),
            ))));
        }
        events.push(StreamEvent::Usage(usage));
        Ok(events)
    }

    /// The first chunk names the role, as OpenAI's streams do.
    fn role(&mut self, events: &mut Vec<StreamEvent>) {
        if !self.role_sent {
            self.role_sent = true;
            let delta = Delta {
                role: Some("assistant".to_owned()),
                content: Some(String::new()),
                ..Delta::default()
            };
            events.push(self.chunk(delta, None));
        }
    }

    fn start_tool(&mut self, block: u64, tool: ToolUseStart, events: &mut Vec<StreamEvent>) {
        if self.settings.json_tool.as_deref() == Some(tool.name.as_str()) {
            self.blocks.insert(
                block,
                OpenBlock {
                    block: Block::JsonAnswer,
                    has_input: false,
                },
            );
            return;
        }
        let index = self.tool_calls;
        self.tool_calls += 1;
        self.blocks.insert(
            block,
            OpenBlock {
                block: Block::ToolCall(index),
                has_input: false,
            },
        );
        events.push(self.tool_delta(ToolCallDelta {
            index,
            id: Some(tool.tool_use_id),
            kind: Some("function".to_owned()),
            function: FunctionCallDelta {
                name: Some(tool.name),
                arguments: Some(String::new()),
            },
        }));
    }

    /// A piece of a tool block's input: arguments, or the JSON answer.
    fn input(&self, block: Block, input: String) -> StreamEvent {
        match block {
            Block::JsonAnswer => self.content(input),
            Block::ToolCall(index) => self.tool_delta(ToolCallDelta {
                index,
                function: FunctionCallDelta {
                    name: None,
                    arguments: Some(input),
                },
                ..ToolCallDelta::default()
            }),
        }
    }

    /// A closing tool block that got no input sends `{}`, as the answer
    /// would carry had it not been streamed.
    fn close(&self, open: OpenBlock) -> Option<StreamEvent> {
        (!open.has_input).then(|| self.input(open.block, "{}".to_owned()))
    }

    fn content(&self, text: String) -> StreamEvent {
        self.chunk(
            Delta {
                content: Some(text),
                ..Delta::default()
            },
            None,
        )
    }

    fn tool_delta(&self, call: ToolCallDelta) -> StreamEvent {
        self.chunk(
            Delta {
                tool_calls: Some(vec![call]),
                ..Delta::default()
            },
            None,
        )
    }

    fn chunk(&self, delta: Delta, finish: Option<&str>) -> StreamEvent {
        let s = &self.settings;
        let chunk = ChatChunk::delta(&s.id, s.created, &s.model, delta, finish.map(str::to_owned));
        StreamEvent::Chunk(to_json_bytes(&chunk))
    }
}

/// A string header's value.
fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    let header = message.headers().iter().find(|h| h.name().as_str() == name)?;
    match header.value() {
        HeaderValue::String(value) => Some(value.as_str()),
        _ => None,
    }
}

fn parse<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(payload)
        .map_err(|e| ProviderError::invalid_response(format!("Bedrock sent an unreadable stream event: {e}")))
}

/// Streams a ConverseStream body through `translator`.
pub(super) fn relay(response: UpstreamResponse, mut translator: StreamTranslator) -> ChunkStream {
    let mut body = Box::pin(response.bytes_stream());
    ChunkStream(
        stream! {
            while let Some(piece) = body.next().await {
                let result = match piece {
                    Ok(bytes) => translator.push(&bytes),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(events) => for event in events {
                        yield Ok(event);
                    },
                    Err(error) => {
                        yield Err(error);
                        return;
                    }
                }
            }
            match translator.finish() {
                Ok(events) => for event in events {
                    yield Ok(event);
                },
                Err(error) => yield Err(error),
            }
        }
        .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::Header;
    use serde_json::{Value as Json, json};

    use super::*;

    fn frame(headers: &[(&str, &str)], payload: &Json) -> Vec<u8> {
        let headers = headers
            .iter()
            .map(|(name, value)| Header::new(name.to_string(), HeaderValue::String(value.to_string().into())))
            .collect();
        let message = Message::new_from_parts(headers, payload.to_string().into_bytes());
        let mut bytes = Vec::new();
        write_message_to(&message, &mut bytes).expect("encodable");
        bytes
    }

    fn event(kind: &str, payload: Json) -> Vec<u8> {
        frame(
            &[
                (":event-type", kind),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            &payload,
        )
    }

    fn translator(include_usage: bool, json_tool: Option<&str>) -> StreamTranslator {
        StreamTranslator::new(StreamSettings {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "anthropic.claude".into(),
            include_usage,
            json_tool: json_tool.map(str::to_owned),
        })
    }

    /// Feeds `bytes` in pieces of `step` and returns every chunk as JSON, plus the usage.
    fn run(
        mut t: StreamTranslator,
        bytes: &[u8],
        step: usize,
    ) -> Result<(Vec<Json>, Option<Usage>), ProviderError> {
        let mut events = Vec::new();
        for piece in bytes.chunks(step) {
            events.extend(t.push(piece)?);
        }
        events.extend(t.finish()?);
        let mut chunks = Vec::new();
        let mut usage = None;
        for event in events {
            match event {
                StreamEvent::Chunk(bytes) => chunks.push(serde_json::from_slice(&bytes).expect("JSON chunk")),
                StreamEvent::Usage(u) => usage = Some(u),
            }
        }
        Ok((chunks, usage))
    }

    fn tool_answer() -> Vec<u8> {
        [
            event("messageStart", json!({"role": "assistant", "p": "abcd"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Checking"}, "p": "ab"}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 0})),
            event(
                "contentBlockStart",
                json!({"contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "weather"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"city\":"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 1})),
            event("messageStop", json!({"stopReason": "tool_use"})),
            event(
                "metadata",
                json!({"usage": {"inputTokens": 7, "outputTokens": 9, "totalTokens": 20,
                "cacheReadInputTokens": 4}, "metrics": {"latencyMs": 300}}),
            ),
        ]
        .concat()
    }

    #[test]
    fn text_and_tool_calls_stream_as_openai_chunks_however_bytes_are_split() {
        let bytes = tool_answer();
        for step in [1, 7, 64, bytes.len()] {
            let (chunks, usage) = run(translator(true, None), &bytes, step).expect("a complete stream");
            assert_eq!(
                chunks[0]["choices"][0]["delta"],
                json!({"role": "assistant", "content": ""})
            );
            assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Checking");
            assert_eq!(
                chunks[2]["choices"][0]["delta"]["tool_calls"],
                json!([{"index": 0, "id": "tooluse_1",
                "type": "function", "function": {"name": "weather", "arguments": ""}}])
            );
            let arguments: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
                .collect();
            assert_eq!(
                serde_json::from_str::<Json>(&arguments).expect("JSON"),
                json!({"city": "Paris"})
            );
            let finish = &chunks[chunks.len() - 2];
            assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
            let last = &chunks[chunks.len() - 1];
            assert_eq!(last["choices"], json!([]));
            assert_eq!(last["usage"]["prompt_tokens"], 11);
            assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
            assert_eq!(usage, Some(Usage::new(11, 9, 4, 0, 0)));
        }
    }

    /// A recorded ConverseStream answer, kept as (`:event-type`, payload)
    /// pairs, encoded into the binary frames Bedrock sends.
    fn fixture(recorded: &str) -> Vec<u8> {
        let events: Vec<(String, Json)> = serde_json::from_str(recorded).expect("a JSON fixture");
        events
            .into_iter()
            .flat_map(|(kind, payload)| event(&kind, payload))
            .collect()
    }

    /// Each tool call's arguments, reassembled as an app does, by index.
    fn arguments(chunks: &[Json]) -> Vec<String> {
        let mut calls: Vec<String> = Vec::new();
        for call in chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
        {
            let index = call["index"]
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .expect("an index");
            if calls.len() <= index {
                calls.resize(index + 1, String::new());
            }
            calls[index].push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
        calls
    }

    #[test]
    fn a_tool_call_with_no_input_delta_ends_with_empty_json_arguments() {
        let bytes = fixture(include_str!(
            "../../../../test-support/fixtures/bedrock/stream_tool_call_no_input.json"
        ));
        for step in [1, 13, bytes.len()] {
            let (chunks, _) = run(translator(false, None), &bytes, step).expect("complete");
            assert_eq!(arguments(&chunks), ["{}"]);
            let finish = chunks.last().expect("a finish chunk");
            assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        }
    }

    #[test]
    fn an_empty_input_delta_ends_as_empty_json_beside_a_call_with_arguments() {
        let bytes = fixture(include_str!(
            "../../../../test-support/fixtures/bedrock/stream_tool_calls_empty_input.json"
        ));
        let (chunks, _) = run(translator(false, None), &bytes, 9).expect("complete");
        let calls = arguments(&chunks);
        assert_eq!(calls[0], "{}");
        assert_eq!(
            serde_json::from_str::<Json>(&calls[1]).expect("JSON"),
            json!({"city": "Oslo"})
        );
    }

    #[test]
    fn tool_blocks_left_open_at_message_stop_are_closed_in_order() {
        let start = |index: u64, id: &str| {
            event(
                "contentBlockStart",
                json!({"contentBlockIndex": index, "start": {"toolUse": {"toolUseId": id, "name": "now"}}}),
            )
        };
        let bytes = [
            event("messageStart", json!({"role": "assistant"})),
            start(3, "b"),
            start(1, "a"),
            event("messageStop", json!({"stopReason": "tool_use"})),
        ]
        .concat();
        let (chunks, _) = run(translator(false, None), &bytes, 64).expect("complete");
        assert_eq!(arguments(&chunks), ["{}", "{}"]);
        let closing: Vec<u64> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0].as_object())
            .filter(|call| call["function"]["arguments"] == "{}")
            .filter_map(|call| call["index"].as_u64())
            .collect();
        assert_eq!(closing, [1, 0], "block 1 (call 1) closes before block 3 (call 0)");
    }

    #[test]
    fn a_response_format_tool_with_no_input_answers_an_empty_object() {
        let bytes = [
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": "t", "name": "json_response"}}}),
            ),
            event("contentBlockStop", json!({"contentBlockIndex": 0})),
            event("messageStop", json!({"stopReason": "tool_use"})),
        ]
        .concat();
        let (chunks, _) = run(translator(false, Some("json_response")), &bytes, 64).expect("complete");
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "{}");
    }

    #[test]
    fn usage_is_counted_but_not_sent_unless_asked() {
        let (chunks, usage) = run(translator(false, None), &tool_answer(), 4096).expect("complete");
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
        assert!(usage.is_some());
    }

    #[test]
    fn the_response_format_tool_streams_as_content() {
        let bytes = [
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockStart",
                json!({"contentBlockIndex": 0,
                "start": {"toolUse": {"toolUseId": "tooluse_2", "name": "json_response"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "{\"name\":"}}}),
            ),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": "\"teal\"}"}}}),
            ),
            event("messageStop", json!({"stopReason": "tool_use"})),
        ]
        .concat();
        let (chunks, usage) = run(translator(true, Some("json_response")), &bytes, 5).expect("complete");
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "{\"name\":\"teal\"}");
        assert!(
            chunks
                .iter()
                .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none())
        );
        assert_eq!(
            chunks.last().expect("finish")["choices"][0]["finish_reason"],
            "stop"
        );
        assert_eq!(usage, None);
    }

    #[test]
    fn exceptions_become_classified_errors() {
        let throttled = [
            event("messageStart", json!({"role": "assistant"})),
            frame(
                &[
                    (":exception-type", "throttlingException"),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                &json!({"message": "Too many tokens, please wait before trying again."}),
            ),
        ]
        .concat();
        let error = run(translator(false, None), &throttled, 3).expect_err("an exception");
        assert_eq!(error.kind, ErrorKind::RateLimit);
        assert!(error.message.contains("Too many tokens"), "{}", error.message);
    }

    #[test]
    fn a_stream_cut_before_message_stop_is_an_error() {
        let cut = [
            event("messageStart", json!({"role": "assistant"})),
            event(
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
            ),
        ]
        .concat();
        let error = run(translator(false, None), &cut, 8).expect_err("cut");
        assert_eq!(error.kind, ErrorKind::BrokenAnswer);
        let half_frame = &tool_answer()[..30];
        assert_eq!(
            run(translator(false, None), half_frame, 8).expect_err("cut").kind,
            ErrorKind::BrokenAnswer
        );
    }

    #[test]
    fn corrupt_frames_are_errors_not_panics() {
        let mut bytes = tool_answer();
        bytes[20] ^= 0xff;
        assert_eq!(
            run(translator(false, None), &bytes, 16)
                .expect_err("corrupt")
                .kind,
            ErrorKind::InvalidResponse
        );
        let huge_prelude = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(run(translator(false, None), &huge_prelude, 12).is_err());
    }
}
