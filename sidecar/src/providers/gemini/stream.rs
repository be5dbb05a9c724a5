//! Gemini stream events → OpenAI `chat.completion.chunk`s, as a pure state machine.
//!
//! Each SSE `data:` of `streamGenerateContent?alt=sse` is a partial
//! `GenerateContentResponse`: new text, whole function calls, and, on the
//! last one, the finish reason. There is no end marker; the stream is
//! complete if every candidate that spoke said why it stopped.

use std::collections::BTreeMap;

use super::super::{ProviderError, StreamEvent, to_json_bytes};
use super::response::{candidate_index, completion_id, finish_reason, parse, tool_call, usage};
use crate::api::Usage;
use crate::api::chat::{ChatChunk, Delta, FunctionCallDelta, ToolCallDelta};

/// Turns the data of Gemini stream events into OpenAI stream events, with no I/O.
///
/// Feed each event's data to [`push`](Self::push) in order, then call
/// [`finish`](Self::finish) when the upstream body ends.
#[derive(Debug)]
pub struct StreamTranslator {
    id: Option<String>,
    fallback_id: String,
    created: u64,
    model: String,
    include_usage: bool,
    candidates: BTreeMap<u32, CandidateState>,
    usage: Option<Usage>,
}

#[derive(Debug, Default)]
struct CandidateState {
    tool_calls: u32,
    finished: bool,
}

impl StreamTranslator {
    /// A translator for one stream. `fallback_id` and `model` name the chunks
    /// if Gemini sends no `responseId` and `modelVersion`; `include_usage` is
    /// whether the app asked for a usage chunk (`stream_options.include_usage`).
    pub fn new(fallback_id: String, created: u64, model: &str, include_usage: bool) -> Self {
        Self {
            id: None,
            fallback_id,
            created,
            model: model.to_owned(),
            include_usage,
            candidates: BTreeMap::new(),
            usage: None,
        }
    }

    /// Translates one event's data into the chunks it adds.
    ///
    /// # Errors
    /// The event is not a Gemini answer, carries an error object, or says the
    /// prompt was blocked. The stream is over after an error.
    pub fn push(&mut self, data: &str) -> Result<Vec<StreamEvent>, ProviderError> {
        if data.trim().is_empty() {
            return Ok(Vec::new());
        }
        let event = parse(data.as_bytes())?;
        // The first event names the answer and the model version for every chunk.
        if self.id.is_none() {
            self.id = Some(completion_id(event.response_id.as_deref(), &self.fallback_id));
            if let Some(version) = event.model_version.as_ref().filter(|v| !v.is_empty()) {
                self.model.clone_from(version);
            }
        }
        let id = self.id.clone().unwrap_or_default();
        if let Some(metadata) = &event.usage_metadata {
            self.usage = Some(usage(metadata));
        }
        let mut out = Vec::new();
        for (position, candidate) in event.candidates.iter().enumerate() {
            let index = candidate_index(candidate, position);
            if !self.candidates.contains_key(&index) {
                let role = Delta {
                    role: Some("assistant".to_owned()),
                    content: Some(String::new()),
                    ..Delta::default()
                };
                out.push(self.chunk(&id, index, role, None));
            }
            let state = self.candidates.entry(index).or_default();
            let mut deltas = Vec::new();
            for part in candidate.content.iter().flat_map(|c| &c.parts) {
                if let Some(text) = part.answer_text().filter(|t| !t.is_empty()) {
                    deltas.push(Delta {
                        content: Some(text.to_owned()),
                        ..Delta::default()
                    });
                }
                if let Some(call) = &part.function_call {
                    let ordinal = state.tool_calls;
                    state.tool_calls = state.tool_calls.saturating_add(1);
                    let call = tool_call(&id, index, usize::try_from(ordinal).unwrap_or(usize::MAX), call);
                    deltas.push(Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: ordinal,
                            id: Some(call.id),
                            kind: Some(call.kind),
                            function: FunctionCallDelta {
                                name: Some(call.function.name),
                                arguments: Some(call.function.arguments),
                            },
                        }]),
                        ..Delta::default()
                    });
                }
            }
            let reason = candidate
                .finish_reason
                .as_deref()
                .and_then(|r| finish_reason(r, state.tool_calls > 0));
            let finish = match reason {
                Some(reason) if !state.finished => {
                    state.finished = true;
                    Some(reason)
                }
                _ => None,
            };
            for delta in deltas {
                out.push(self.chunk(&id, index, delta, None));
            }
            if let Some(reason) = finish {
                out.push(self.chunk(&id, index, Delta::default(), Some(reason)));
            }
        }
        Ok(out)
    }

    /// Ends the stream: the usage chunk if the app asked for it, then the usage
    /// for accounting.
    ///
    /// # Errors
    /// `BrokenAnswer` if no candidate said why it stopped: the stream was cut.
    pub fn finish(&mut self) -> Result<Vec<StreamEvent>, ProviderError> {
        let complete = !self.candidates.is_empty() && self.candidates.values().all(|c| c.finished);
        if !complete {
            return Err(ProviderError::broken_answer(
                "Gemini's stream ended before a finishReason",
            ));
        }
        let usage = self.usage.take().unwrap_or_default();
        let mut out = Vec::new();
        if self.include_usage {
            let id = self.id.as_deref().unwrap_or(&self.fallback_id);
            out.push(StreamEvent::Chunk(to_json_bytes(&ChatChunk::usage(
                id,
                self.created,
                &self.model,
                usage.clone(),
            ))));
        }
        out.push(StreamEvent::Usage(usage));
        Ok(out)
    }

    fn chunk(&self, id: &str, index: u32, delta: Delta, finish: Option<&str>) -> StreamEvent {
        let mut chunk = ChatChunk::delta(id, self.created, &self.model, delta, finish.map(str::to_owned));
        for choice in &mut chunk.choices {
            choice.index = index;
        }
        StreamEvent::Chunk(to_json_bytes(&chunk))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::providers::ErrorKind;
    use crate::providers::sse::SseDecoder;

    /// A transcript in Gemini's wire format, as `streamGenerateContent?alt=sse` sends it.
    const TEXT_STREAM: &str = include_str!("../../../../test-support/fixtures/gemini/stream_text.sse");
    const TOOL_STREAM: &str =
        include_str!("../../../../test-support/fixtures/gemini/stream_function_call.sse");

    /// Runs a transcript through the decoder and translator, in pieces of `piece` bytes.
    fn run(transcript: &str, include_usage: bool, piece: usize) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut decoder = SseDecoder::default();
        let mut translator = StreamTranslator::new(
            "chatcmpl-fallback".into(),
            1_700_000_000,
            "requested-model",
            include_usage,
        );
        let mut out = Vec::new();
        for bytes in transcript.as_bytes().chunks(piece) {
            for event in decoder.push(bytes)? {
                out.extend(translator.push(&event.data)?);
            }
        }
        out.extend(translator.finish()?);
        Ok(out)
    }

    fn chunks(events: &[StreamEvent]) -> Vec<Value> {
        events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Chunk(bytes) => Some(serde_json::from_slice(bytes).expect("chunk json")),
                StreamEvent::Usage(_) => None,
            })
            .collect()
    }

    #[test]
    fn text_streams_as_role_deltas_finish_and_usage() {
        let events = run(TEXT_STREAM, true, 7).expect("complete stream");
        let chunks = chunks(&events);
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["id"] == chunks[0]["id"] && c["object"] == "chat.completion.chunk")
        );
        assert!(
            chunks.iter().all(|c| c["model"] == "gemini-2.5-flash"),
            "Gemini's modelVersion names the model"
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello from gemini: tell me a story");
        let finishes: Vec<&Value> = chunks
            .iter()
            .map(|c| &c["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finishes, vec![&json!("stop")]);
        let last = chunks.last().expect("usage chunk");
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["prompt_tokens"], 5);
        assert_eq!(last["usage"]["completion_tokens"], 12);
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Usage(Usage::new(5, 12, 0, 0, 4)))
        );
        assert_eq!(chunks[0]["id"], "chatcmpl-r3sp0ns3");
    }

    #[test]
    fn without_include_usage_there_is_no_usage_chunk_but_usage_is_counted() {
        let events = run(TEXT_STREAM, false, 4096).expect("complete stream");
        assert!(chunks(&events).iter().all(|c| c.get("usage").is_none()));
        assert!(matches!(events.last(), Some(StreamEvent::Usage(u)) if u.prompt_tokens == 5));
    }

    #[test]
    fn function_calls_stream_as_whole_tool_call_deltas() {
        let chunks = chunks(&run(TOOL_STREAM, false, 3).expect("complete stream"));
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
            .collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0][0]["index"], 0);
        assert_eq!(calls[1][0]["index"], 1);
        assert_eq!(calls[0][0]["function"]["name"], "weather");
        let arguments: Value =
            serde_json::from_str(calls[0][0]["function"]["arguments"].as_str().expect("text")).expect("json");
        assert_eq!(arguments, json!({"city": "Paris"}));
        assert!(
            calls[1][0]["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("call_"))
        );
        assert_eq!(
            chunks.last().expect("finish")["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[test]
    fn a_stream_without_finish_reason_is_cut() {
        let cut = TEXT_STREAM
            .rsplit_once("data:")
            .map(|(head, _)| head)
            .expect("several events");
        assert_eq!(
            run(cut, false, 16).expect_err("cut").kind,
            ErrorKind::BrokenAnswer
        );
        assert_eq!(
            run("", false, 16).expect_err("empty").kind,
            ErrorKind::BrokenAnswer
        );
    }

    #[test]
    fn errors_and_blocks_inside_the_stream_end_it() {
        let mut translator = StreamTranslator::new("x".into(), 0, "m", false);
        let error = translator
            .push(
                r#"{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}"#,
            )
            .expect_err("error event");
        assert_eq!(error.kind, ErrorKind::ServerError);
        let blocked = translator
            .push(r#"{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}"#)
            .expect_err("blocked");
        assert_eq!(blocked.kind, ErrorKind::ContentFilter);
        assert_eq!(
            translator.push("not json").expect_err("garbage").kind,
            ErrorKind::InvalidResponse
        );
    }

    #[test]
    fn a_safety_stop_is_a_content_filter_finish() {
        let mut translator = StreamTranslator::new("x".into(), 0, "m", false);
        let first = translator
            .push(r#"{"candidates": [{"content": {"parts": [{"text": "Once"}], "role": "model"}}]}"#);
        assert_eq!(first.expect("text").len(), 2);
        let last = translator
            .push(r#"{"candidates": [{"finishReason": "SAFETY", "safetyRatings": []}]}"#)
            .expect("finish");
        let chunks = chunks(&last);
        assert_eq!(chunks[0]["choices"][0]["finish_reason"], "content_filter");
        assert!(translator.finish().is_ok());
    }

    #[test]
    fn several_candidates_keep_their_indexes() {
        let mut translator = StreamTranslator::new("x".into(), 0, "m", false);
        let events = translator
            .push(r#"{"candidates": [{"content": {"parts": [{"text": "a"}]}, "index": 0, "finishReason": "STOP"},
                                     {"content": {"parts": [{"text": "b"}]}, "index": 1}]}"#)
            .expect("event");
        let indexes: Vec<Value> = chunks(&events)
            .iter()
            .map(|c| c["choices"][0]["index"].clone())
            .collect();
        assert_eq!(indexes, vec![json!(0), json!(0), json!(0), json!(1), json!(1)]);
        assert!(translator.finish().is_err(), "candidate 1 never finished");
    }
}
