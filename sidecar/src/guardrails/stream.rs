//! Streaming answers: each choice's text and tool-call arguments pass
//! through a bounded hold-back window, so a finding split across chunks is
//! still caught, and what leaves is settled (redacted, or the stream ends
//! with a block) — the whole answer is never buffered.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

use super::{Blocked, Findings, Guardrails, Phase, Policy, settle};
use crate::providers::{ChunkStream, ErrorKind, ProviderError, StreamEvent};

/// Bytes of text held back behind the newest chunk: longer than any
/// finding's unrecognisable beginning (an IBAN with spaces is 42, an email
/// rarely over 100). A match still growing at the end is held whatever its
/// length (a PEM key until its end line), up to [`MAX_HELD`].
pub const HOLD_BACK: usize = 256;

/// Held text beyond which the window is settled regardless, so an endless
/// match cannot make the sidecar buffer the answer.
pub const MAX_HELD: usize = 64 * 1024;

/// Which text of a chunk: a choice's content, or one of its tool calls' arguments.
type Slot = (u64, Option<u64>);

/// The state of one guarded stream.
#[derive(Debug)]
pub struct StreamGuard {
    guardrails: Arc<Guardrails>,
    findings: Findings,
    held: BTreeMap<Slot, String>,
    /// The last chunk's `id`, `object`, `created` and `model`, for a closing chunk.
    template: Option<Value>,
}

impl StreamGuard {
    /// A guard applying the answer policies of `guardrails`.
    pub fn new(guardrails: Arc<Guardrails>, findings: Findings) -> Self {
        Self {
            guardrails,
            findings,
            held: BTreeMap::new(),
            template: None,
        }
    }

    fn pass(&mut self, slot: Slot, piece: &str, last: bool) -> Result<String, Blocked> {
        let mut text = self.held.remove(&slot).unwrap_or_default();
        text.push_str(piece);
        let hold_from = if last || text.len() > MAX_HELD {
            text.len()
        } else {
            text.len().saturating_sub(HOLD_BACK)
        };
        let policies: Vec<&Policy> = self.guardrails.answer_policies().collect();
        let settled = settle(&policies, &text, hold_from, Phase::Response, &self.findings)?;
        let out = settled
            .replacement
            .unwrap_or_else(|| text[..settled.settled].to_owned());
        if settled.settled < text.len() {
            self.held.insert(slot, text[settled.settled..].to_owned());
        }
        Ok(out)
    }

    /// Rewrites one chat chunk (OpenAI's JSON): held-back text stays, settled
    /// text goes out; a choice that finishes takes all its held text along.
    ///
    /// # Errors
    /// A `block` policy found something in the settled text.
    pub fn chunk(&mut self, json: &[u8]) -> Result<Bytes, Blocked> {
        let Ok(mut chunk) = serde_json::from_slice::<Value>(json) else {
            return Ok(Bytes::copy_from_slice(json));
        };
        self.template = Some(json!({
            "id": chunk["id"], "object": chunk["object"], "created": chunk["created"], "model": chunk["model"],
        }));
        let Some(choices) = chunk.get_mut("choices").and_then(Value::as_array_mut) else {
            return Ok(Bytes::copy_from_slice(json));
        };
        for choice in choices {
            let index = choice["index"].as_u64().unwrap_or(0);
            let last = !choice["finish_reason"].is_null();
            let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut) else {
                continue;
            };
            let content = delta.get("content").and_then(Value::as_str).map(str::to_owned);
            if content.is_some() || (last && self.held.contains_key(&(index, None))) {
                let out = self.pass((index, None), content.as_deref().unwrap_or(""), last)?;
                delta.insert("content".to_owned(), Value::String(out));
            }
            let mut seen = Vec::new();
            if let Some(calls) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) {
                for call in calls {
                    let tool = call["index"].as_u64().unwrap_or(0);
                    seen.push(tool);
                    if let Some(Value::String(arguments)) = call.pointer_mut("/function/arguments") {
                        let piece = std::mem::take(arguments);
                        *arguments = self.pass((index, Some(tool)), &piece, last)?;
                    }
                }
            }
            if last {
                let pending: Vec<u64> = self
                    .held
                    .keys()
                    .filter_map(|&(choice, tool)| tool.filter(|t| choice == index && !seen.contains(t)))
                    .collect();
                for tool in pending {
                    let out = self.pass((index, Some(tool)), "", true)?;
                    let calls = delta.entry("tool_calls").or_insert_with(|| json!([]));
                    if let Some(calls) = calls.as_array_mut() {
                        calls.push(json!({"index": tool, "function": {"arguments": out}}));
                    }
                }
            }
        }
        Ok(crate::providers::to_json_bytes(&chunk))
    }

    /// The text still held when the upstream ended without finishing a
    /// choice, as one more chunk.
    ///
    /// # Errors
    /// A `block` policy found something in it.
    pub fn finish(&mut self) -> Result<Option<Bytes>, Blocked> {
        if self.held.is_empty() {
            return Ok(None);
        }
        let mut choices: BTreeMap<u64, Value> = BTreeMap::new();
        for slot in self.held.keys().copied().collect::<Vec<_>>() {
            let out = self.pass(slot, "", true)?;
            let delta = choices
                .entry(slot.0)
                .or_insert_with(|| json!({"index": slot.0, "delta": {}, "finish_reason": null}));
            match slot.1 {
                None => delta["delta"]["content"] = Value::String(out),
                Some(tool) => {
                    let calls = &mut delta["delta"]["tool_calls"];
                    if !calls.is_array() {
                        *calls = json!([]);
                    }
                    if let Some(calls) = calls.as_array_mut() {
                        calls.push(json!({"index": tool, "function": {"arguments": out}}));
                    }
                }
            }
        }
        let mut chunk = self.template.clone().unwrap_or_else(|| json!({}));
        chunk["choices"] = Value::Array(choices.into_values().collect());
        Ok(Some(crate::providers::to_json_bytes(&chunk)))
    }
}

/// The answer a `block` mid-stream ends with: the format's error event.
fn blocked(blocked: &Blocked) -> ProviderError {
    ProviderError::new(ErrorKind::ContentFilter, blocked.to_string())
}

/// Passes a stream — the events already received and the rest — through
/// the route's answer policies.
pub fn guard(
    guardrails: Arc<Guardrails>,
    head: Vec<StreamEvent>,
    tail: ChunkStream,
    findings: Findings,
) -> (Vec<StreamEvent>, ChunkStream) {
    let mut guard = StreamGuard::new(guardrails, findings);
    let mut events = Vec::with_capacity(head.len());
    let mut failed = None;
    for event in head {
        match event {
            StreamEvent::Chunk(json) => match guard.chunk(&json) {
                Ok(json) => events.push(StreamEvent::Chunk(json)),
                Err(error) => {
                    failed = Some(blocked(&error));
                    break;
                }
            },
            usage @ StreamEvent::Usage(_) => events.push(usage),
        }
    }
    let mut upstream = tail.0;
    let tail = async_stream::stream! {
        if let Some(error) = failed {
            yield Err(error);
            return;
        }
        while let Some(item) = upstream.next().await {
            match item {
                Ok(StreamEvent::Chunk(json)) => match guard.chunk(&json) {
                    Ok(json) => yield Ok(StreamEvent::Chunk(json)),
                    Err(error) => {
                        yield Err(blocked(&error));
                        return;
                    }
                },
                other => yield other,
            }
        }
        match guard.finish() {
            Ok(Some(json)) => yield Ok(StreamEvent::Chunk(json)),
            Ok(None) => {}
            Err(error) => yield Err(blocked(&error)),
        }
    };
    (events, ChunkStream(tail.boxed()))
}
