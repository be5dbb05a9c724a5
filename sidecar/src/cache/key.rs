//! The cache key: a hash over everything that changes an answer, and nothing
//! that does not.
//!
//! In: the route, who may share the entry (the scope), the models that may
//! answer (the request's target set), the messages, tools, response format,
//! sampling parameters and every field llmesh passes through unread (for a
//! Messages app also its `thinking` settings and unmodelled fields, which an
//! Anthropic target receives as sent). Out:
//! `stream` and `stream_options` (a cached answer is replayed either way),
//! `user`, `metadata` and the other fields below, which label a request
//! without changing what the model says.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::api::chat::{ChatRequest, Message, ResponseFormat, Tool};

/// Pass-through fields that identify or label a request but do not change
/// its answer: OpenAI's end-user and safety ids, stored-completion flags,
/// and its own prompt-cache routing hint.
const IGNORED_FIELDS: &[&str] = &[
    "metadata",
    "store",
    "safety_identifier",
    "prompt_cache_key",
    "request_id",
];

/// Bumped when the key's inputs change, so old shared entries are not read.
const KEY_VERSION: &[u8] = b"llmesh-cache-key-v1";

/// A SHA-256 over a request's answer-changing content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

impl fmt::Display for CacheKey {
    /// The first 8 bytes in hex: an id for logs, not for lookups.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Where an entry may be read: which route, which caller, which models.
#[derive(Clone, Debug)]
pub struct Partition<'a> {
    /// The route alias.
    pub route: &'a str,
    /// The caller identity entries are kept apart by; empty when the route shares them.
    pub caller: &'a str,
    /// `provider/model` of every target that may answer this request.
    pub family: BTreeSet<String>,
}

/// The request fields that change an answer, in a fixed order.
#[derive(Serialize)]
struct AnswerInputs<'a> {
    messages: &'a [Message],
    tools: Option<&'a [Tool]>,
    tool_choice: Option<&'a Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<&'a ResponseFormat>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_output_tokens: Option<u64>,
    stop: Vec<String>,
    n: Option<u32>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    /// Pass-through fields; a `serde_json::Map` is sorted by key, so the
    /// order the app wrote them in does not matter.
    other: Map<String, Value>,
    /// Absent for a plain Messages request, so it shares its entry with the
    /// same chat or Responses request.
    #[serde(skip_serializing_if = "Option::is_none")]
    anthropic: Option<AnthropicInputs<'a>>,
}

/// What a Messages app sent beside the translation that changes the answer
/// of an Anthropic target. Prompt-cache breakpoints do not.
#[derive(Serialize)]
struct AnthropicInputs<'a> {
    thinking: Option<&'a Value>,
    other: Map<String, Value>,
}

impl<'a> AnthropicInputs<'a> {
    fn of(request: &'a ChatRequest) -> Option<Self> {
        let origin = &request.anthropic.as_ref()?.request;
        let inputs = Self {
            thinking: origin.thinking.as_ref(),
            other: answer_changing(&origin.extra),
        };
        (inputs.thinking.is_some() || !inputs.other.is_empty()).then_some(inputs)
    }
}

fn answer_changing(fields: &Map<String, Value>) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(name, _)| !IGNORED_FIELDS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// What a key covers: the whole request, or everything but its last turn.
#[derive(Clone, Copy)]
enum Coverage {
    Request,
    Conversation,
}

impl CacheKey {
    /// The key of a chat request within a partition.
    pub fn of_chat(partition: &Partition<'_>, request: &ChatRequest) -> Self {
        Self::hash(partition, request, Coverage::Request)
    }

    /// The key of everything in a chat request but its last message (the
    /// system prompt, earlier turns, tools, parameters): requests with the
    /// same conversation key differ at most in the question just asked, so
    /// only they may match semantically.
    pub fn of_conversation(partition: &Partition<'_>, request: &ChatRequest) -> Self {
        Self::hash(partition, request, Coverage::Conversation)
    }

    fn hash(partition: &Partition<'_>, request: &ChatRequest, coverage: Coverage) -> Self {
        let messages = match coverage {
            Coverage::Request => &request.messages[..],
            Coverage::Conversation => request
                .messages
                .split_last()
                .map_or(&[][..], |(_, earlier)| earlier),
        };
        let inputs = AnswerInputs {
            messages,
            tools: request.tools.as_deref(),
            tool_choice: request.tool_choice.as_ref(),
            parallel_tool_calls: request.parallel_tool_calls,
            response_format: request.response_format.as_ref(),
            temperature: request.temperature,
            top_p: request.top_p,
            max_output_tokens: request.max_output_tokens(),
            stop: request.stop_sequences(),
            n: request.n,
            seed: request.seed,
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            other: answer_changing(&request.extra),
            anthropic: AnthropicInputs::of(request),
        };
        let mut hasher = Sha256::new();
        // Each part is length-prefixed, so no two different partitions hash alike.
        let mut part = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        part(KEY_VERSION);
        part(match coverage {
            Coverage::Request => b"request",
            Coverage::Conversation => b"conversation",
        });
        part(partition.route.as_bytes());
        part(partition.caller.as_bytes());
        for member in &partition.family {
            part(member.as_bytes());
        }
        part(&serde_json::to_vec(&inputs).unwrap_or_default());
        Self(hasher.finalize().into())
    }

    /// The raw digest, for the shared tier's key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key_of(partition: &Partition<'_>, body: Value) -> CacheKey {
        let request: ChatRequest = serde_json::from_value(body).expect("a chat request");
        CacheKey::of_chat(partition, &request)
    }

    fn partition<'a>(route: &'a str, caller: &'a str, models: &[&str]) -> Partition<'a> {
        Partition {
            route,
            caller,
            family: models.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn only_what_changes_the_answer_changes_the_key() {
        let base = json!({
            "model": "smart", "temperature": 0.2, "logit_bias": {"1": 2}, "seed": 7,
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        });
        let here = partition("smart", "anonymous", &["openai/gpt-4o"]);
        let reference = key_of(&here, base.clone());
        let with = |field: &str, value: Value| {
            let mut body = base.clone();
            body[field] = value;
            body
        };

        let same = [
            with("stream", json!(true)),
            with("stream_options", json!({"include_usage": true})),
            with("user", json!("end-user-42")),
            with("metadata", json!({"trace": "abc"})),
            with("temperature", json!(0.20)),
            with("logit_bias", json!({"1": 2})),
        ];
        for body in same {
            assert_eq!(key_of(&here, body.clone()), reference, "{body}");
        }

        let different = [
            with("temperature", json!(0.3)),
            with("seed", json!(8)),
            with("max_tokens", json!(10)),
            with("logit_bias", json!({"1": 3})),
            with("response_format", json!({"type": "json_object"})),
            with("tools", json!([{"type": "function", "function": {"name": "f"}}])),
            with("messages", json!([{"role": "user", "content": "Hi"}])),
            with("reasoning_effort", json!("high")),
        ];
        for body in different {
            assert_ne!(key_of(&here, body.clone()), reference, "{body}");
        }
    }

    #[test]
    fn routes_callers_and_model_families_do_not_share_entries() {
        let body = json!({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]});
        let reference = key_of(&partition("smart", "a", &["mock/m"]), body.clone());
        for other in [
            partition("other", "a", &["mock/m"]),
            partition("smart", "b", &["mock/m"]),
            partition("smart", "a", &["mock/m2"]),
            partition("smart", "a", &["mock/m", "mock/n"]),
        ] {
            assert_ne!(key_of(&other, body.clone()), reference, "{other:?}");
        }
        // The same two parts split differently are a different partition.
        assert_ne!(
            key_of(&partition("ab", "", &["mock/m"]), body.clone()),
            key_of(&partition("a", "b", &["mock/m"]), body)
        );
    }

    #[test]
    fn a_conversation_key_ignores_only_the_last_turn() {
        let here = partition("smart", "", &["mock/m"]);
        let conversation = |system: &str, question: &str| {
            let request: ChatRequest = serde_json::from_value(json!({"model": "smart", "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": question},
            ]}))
            .expect("request");
            CacheKey::of_conversation(&here, &request)
        };
        assert_eq!(
            conversation("Be brief.", "Hi"),
            conversation("Be brief.", "Hello")
        );
        assert_ne!(conversation("Be brief.", "Hi"), conversation("Be verbose.", "Hi"));
        let request: ChatRequest = serde_json::from_value(
            json!({"model": "smart", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .expect("request");
        assert_ne!(
            CacheKey::of_conversation(&here, &request),
            CacheKey::of_chat(&here, &request)
        );
    }

    #[test]
    fn a_messages_apps_thinking_and_unmodelled_fields_change_the_key() {
        use std::sync::Arc;

        use crate::api::messages::{AnthropicOrigin, MessagesRequest};

        let here = partition("smart", "", &["anthropic/claude"]);
        let base = json!({"model": "smart", "max_tokens": 100,
            "messages": [{"role": "user", "content": "Hi"}]});
        // The translation is the same for all of them; only the origin differs.
        let key = |extra: Value| {
            let mut body = base.clone();
            body.as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            let origin: MessagesRequest = serde_json::from_value(body).expect("messages request");
            let mut request: ChatRequest = serde_json::from_value(base.clone()).expect("chat request");
            request.anthropic = Some(Arc::new(AnthropicOrigin {
                request: origin,
                version: None,
                beta: None,
            }));
            CacheKey::of_chat(&here, &request)
        };
        let chat: ChatRequest = serde_json::from_value(base.clone()).expect("chat request");
        let plain = CacheKey::of_chat(&here, &chat);
        let enabled = json!({"thinking": {"type": "enabled", "budget_tokens": 1024}});
        let cases = [
            ("plain Messages request", json!({}), plain),
            (
                "metadata labels only",
                json!({"metadata": {"user_id": "u"}}),
                plain,
            ),
            (
                "the same thinking written in another order",
                json!({"thinking": {"budget_tokens": 1024, "type": "enabled"}}),
                key(enabled.clone()),
            ),
        ];
        for (name, extra, expected) in cases {
            assert_eq!(key(extra), expected, "{name}: same entry");
        }
        let different = [
            ("thinking enabled", enabled.clone()),
            (
                "a larger thinking budget",
                json!({"thinking": {"type": "enabled", "budget_tokens": 4096}}),
            ),
            ("thinking disabled", json!({"thinking": {"type": "disabled"}})),
            (
                "an unmodelled field",
                json!({"context_management": {"edits": []}}),
            ),
        ];
        for (i, (name, extra)) in different.iter().enumerate() {
            assert_ne!(key(extra.clone()), plain, "{name}: not the plain entry");
            for (other, more) in &different[i + 1..] {
                assert_ne!(key(extra.clone()), key(more.clone()), "{name} vs {other}");
            }
        }
    }

    #[test]
    fn max_tokens_under_either_name_is_one_limit() {
        let here = partition("smart", "", &["mock/m"]);
        let messages = json!([{"role": "user", "content": "Hi"}]);
        assert_eq!(
            key_of(
                &here,
                json!({"model": "smart", "messages": messages, "max_tokens": 5})
            ),
            key_of(
                &here,
                json!({"model": "smart", "messages": messages, "max_completion_tokens": 5})
            )
        );
    }
}
