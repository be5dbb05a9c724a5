//! The built-in mock provider: answers in-process, deterministically, with
//! configurable latency and injected faults. For demos that need no API key,
//! load tests that should measure llmesh and not a model, and fallback drills.
//!
//! A reply echoes the last user message; a request with tools gets a call to
//! the first (or the chosen) tool until a tool result comes back; JSON mode
//! gets a JSON object. Tokens are words.

use std::sync::Arc;
use std::time::Duration;

use async_stream::stream;
use futures::StreamExt;
use llmesh_crds::config::{MockConfig, ProviderConfig};
use llmesh_crds::resources::{MockFault, MockFaultKind, ProviderKind};
use rand::Rng;

use super::{
    ChatReply, ChunkStream, Completed, ErrorKind, Provider, ProviderError, StreamEvent, to_json_bytes,
    unix_now,
};
use crate::api::Usage;
use crate::api::chat::{
    ChatChunk, ChatRequest, ChatResponse, Choice, Delta, FunctionCall, FunctionCallDelta, ResponseMessage,
    Role, ToolCall, ToolCallDelta,
};
use crate::api::embeddings::{EmbeddingsRequest, EmbeddingsResponse};
use crate::drills::Drills;

/// Size of the mock's embedding vectors.
const EMBEDDING_DIMENSIONS: usize = 64;

/// The mock provider.
#[derive(Debug)]
pub struct Mock {
    name: String,
    config: MockConfig,
    drills: Arc<Drills>,
}

impl Mock {
    /// Builds the mock `name` from its settings; a drill on `name` overrides its faults.
    pub fn new(name: &str, config: &ProviderConfig, drills: Arc<Drills>) -> Self {
        Self {
            name: name.to_owned(),
            config: config.mock.clone().unwrap_or_default(),
            drills,
        }
    }

    /// The first fault in force whose dice roll hits, if any.
    fn roll_fault(&self) -> Option<MockFault> {
        let faults = self
            .drills
            .faults(&self.name)
            .unwrap_or_else(|| self.config.faults.clone());
        let mut rng = rand::rng();
        faults.into_iter().find(|f| {
            let rate = f.rate.unwrap_or(1.0);
            rate >= 1.0 || rng.random_bool(rate.clamp(0.0, 1.0))
        })
    }

    fn per_token(&self) -> Duration {
        Duration::from_millis(self.config.per_token_ms)
    }
}

/// What the mock says, decided before any delay.
struct Answer {
    words: Vec<String>,
    tool_call: Option<ToolCall>,
    finish_reason: &'static str,
    usage: Usage,
}

fn answer(config: &MockConfig, request: &ChatRequest) -> Answer {
    let prompt_tokens: u64 = request
        .messages
        .iter()
        .map(|m| count_words(&m.text()))
        .sum::<u64>()
        .max(1);
    let last = request.messages.last();
    let wants_tool = request.tools.as_ref().is_some_and(|t| !t.is_empty())
        && last.is_some_and(|m| m.role != Role::Tool)
        && request.tool_choice.as_ref().and_then(|c| c.as_str()) != Some("none");
    if wants_tool {
        let chosen = request
            .tool_choice
            .as_ref()
            .and_then(|c| c.pointer("/function/name"))
            .and_then(|n| n.as_str())
            .map(str::to_owned);
        let name = chosen.unwrap_or_else(|| {
            request
                .tools
                .iter()
                .flatten()
                .next()
                .map(|t| t.function.name.clone())
                .unwrap_or_default()
        });
        let arguments =
            serde_json::json!({ "input": last.map(|m| m.text()).unwrap_or_default() }).to_string();
        let completion = count_words(&arguments).max(1);
        return Answer {
            words: Vec::new(),
            tool_call: Some(ToolCall {
                id: format!("call_mock_{}", prompt_tokens),
                kind: "function".to_owned(),
                function: FunctionCall { name, arguments },
            }),
            finish_reason: "tool_calls",
            usage: Usage::new(prompt_tokens, completion, 0, 0, 0),
        };
    }

    let echo = last.map(|m| m.text()).unwrap_or_default();
    let text = config
        .reply
        .clone()
        .unwrap_or_else(|| format!("Mock reply to: {echo}"));
    let json_mode = request.response_format.as_ref().is_some_and(|f| f.kind != "text");
    let text = if json_mode {
        serde_json::json!({ "reply": text }).to_string()
    } else {
        text
    };
    let mut words: Vec<String> = split_keeping_spaces(&text);
    let mut finish_reason = "stop";
    if let Some(limit) = request.max_output_tokens() {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if words.len() > limit {
            words.truncate(limit);
            finish_reason = "length";
        }
    }
    let completion = u64::try_from(words.len()).unwrap_or(u64::MAX);
    Answer {
        words,
        tool_call: None,
        finish_reason,
        usage: Usage::new(prompt_tokens, completion, 0, 0, 0),
    }
}

fn count_words(text: &str) -> u64 {
    u64::try_from(text.split_whitespace().count()).unwrap_or(u64::MAX)
}

/// Splits into words, each but the first carrying its leading space, so the
/// pieces of a stream concatenate back to the text.
fn split_keeping_spaces(text: &str) -> Vec<String> {
    text.split_whitespace()
        .enumerate()
        .map(|(i, w)| if i == 0 { w.to_owned() } else { format!(" {w}") })
        .collect()
}

fn injected(fault: &MockFault) -> Option<ProviderError> {
    match fault.kind {
        MockFaultKind::Status => {
            let status = fault.status.unwrap_or(500);
            Some(ProviderError::from_status(
                status,
                format!("mock provider injected a {status} error"),
            ))
        }
        MockFaultKind::RateLimit => Some(
            ProviderError::from_status(429, "mock provider injected a rate limit").with_retry_after(Some(
                Duration::from_secs(u64::from(fault.retry_after_seconds.unwrap_or(1))),
            )),
        ),
        MockFaultKind::Reset => Some(ProviderError::new(
            ErrorKind::Connect,
            "connection reset by peer (injected by the mock provider)",
        )),
        MockFaultKind::Hang | MockFaultKind::Truncate => None,
    }
}

#[async_trait::async_trait]
impl Provider for Mock {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Mock
    }

    async fn chat(&self, request: &ChatRequest, model: &str) -> Result<ChatReply, ProviderError> {
        let fault = self.roll_fault();
        if let Some(fault) = &fault {
            if let Some(error) = injected(fault) {
                return Err(error);
            }
            if fault.kind == MockFaultKind::Hang {
                futures::future::pending::<()>().await;
            }
        }
        let cut_after = fault
            .filter(|f| f.kind == MockFaultKind::Truncate)
            .map(|f| f.after_chunks.unwrap_or(2));
        let answer = answer(&self.config, request);
        let id = format!("chatcmpl-mock-{}", uuid::Uuid::new_v4().simple());
        let created = unix_now();
        tokio::time::sleep(Duration::from_millis(self.config.time_to_first_token_ms)).await;

        if !request.is_stream() {
            if cut_after.is_some() {
                return Err(ProviderError::broken_answer(
                    "response cut short (injected by the mock provider)",
                ));
            }
            let pieces = u32::try_from(answer.words.len().saturating_sub(1)).unwrap_or(u32::MAX);
            tokio::time::sleep(self.per_token() * pieces).await;
            let response = ChatResponse {
                id,
                object: "chat.completion".to_owned(),
                created,
                model: model.to_owned(),
                choices: vec![Choice {
                    index: 0,
                    message: ResponseMessage {
                        role: "assistant".to_owned(),
                        content: answer.tool_call.is_none().then(|| answer.words.concat()),
                        tool_calls: answer.tool_call.map(|c| vec![c]),
                        ..ResponseMessage::default()
                    },
                    finish_reason: Some(answer.finish_reason.to_owned()),
                }],
                usage: Some(answer.usage.clone()),
            };
            return Ok(ChatReply::Complete(Completed {
                body: to_json_bytes(&response),
                usage: answer.usage,
            }));
        }

        let per_token = self.per_token();
        let model = model.to_owned();
        let usage_chunk = request.wants_stream_usage().then(|| {
            StreamEvent::Chunk(to_json_bytes(&ChatChunk::usage(
                &id,
                created,
                &model,
                answer.usage.clone(),
            )))
        });
        let chunk = move |delta: Delta, finish: Option<&str>| {
            StreamEvent::Chunk(to_json_bytes(&ChatChunk::delta(
                &id,
                created,
                &model,
                delta,
                finish.map(str::to_owned),
            )))
        };
        let usage = answer.usage;
        Ok(ChatReply::Stream(ChunkStream(
            stream! {
                let role = Delta { role: Some("assistant".to_owned()), content: Some(String::new()), ..Delta::default() };
                yield Ok(chunk(role, None));
                if let Some(call) = answer.tool_call {
                    let delta = Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: 0,
                            id: Some(call.id),
                            kind: Some(call.kind),
                            function: FunctionCallDelta {
                                name: Some(call.function.name),
                                arguments: Some(call.function.arguments),
                            },
                        }]),
                        ..Delta::default()
                    };
                    yield Ok(chunk(delta, None));
                }
                for (i, word) in answer.words.into_iter().enumerate() {
                    if cut_after.is_some_and(|n| i >= n as usize) {
                        yield Err(ProviderError::broken_answer("stream cut short (injected by the mock provider)"));
                        return;
                    }
                    if i > 0 {
                        tokio::time::sleep(per_token).await;
                    }
                    yield Ok(chunk(Delta { content: Some(word), ..Delta::default() }, None));
                }
                yield Ok(chunk(Delta::default(), Some(answer.finish_reason)));
                if let Some(usage_chunk) = usage_chunk {
                    yield Ok(usage_chunk);
                }
                yield Ok(StreamEvent::Usage(usage));
            }
            .boxed(),
        )))
    }

    async fn embeddings(&self, request: &EmbeddingsRequest, model: &str) -> Result<Completed, ProviderError> {
        if let Some(error) = self.roll_fault().as_ref().and_then(injected) {
            return Err(error);
        }
        let texts = request.input.texts().ok_or_else(|| {
            ProviderError::new(ErrorKind::BadRequest, "the mock provider embeds text input only")
        })?;
        let tokens = texts.iter().map(|t| count_words(t)).sum::<u64>();
        let vectors = texts.iter().map(|t| embed(t)).collect();
        let response = EmbeddingsResponse::new(model, vectors, tokens);
        Ok(Completed {
            body: to_json_bytes(&response.to_json(request.encoding_format.as_deref())),
            usage: Usage::new(tokens, 0, 0, 0, 0),
        })
    }
}

/// A deterministic bag-of-words embedding: texts sharing words point the
/// same way, so near-duplicate phrasing is similar and different topics are not.
fn embed(text: &str) -> Vec<f32> {
    let mut vector = vec![0f32; EMBEDDING_DIMENSIONS];
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let hash = word
            .to_lowercase()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        let slot = usize::try_from(hash % EMBEDDING_DIMENSIONS as u64).unwrap_or(0);
        vector[slot] += 1.0;
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|v| *v /= norm);
    }
    vector
}
