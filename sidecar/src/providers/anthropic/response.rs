//! Anthropic Messages answer → OpenAI chat completion, and the pieces the
//! stream translator shares with it: token usage and stop reasons.

use serde::Deserialize;
use serde_json::Value;

use super::request::JSON_RESPONSE_TOOL;
use crate::api::Usage;
use crate::api::chat::{ChatResponse, Choice, FunctionCall, ResponseMessage, ThinkingBlock, ToolCall};
use crate::providers::{Completed, ProviderError, to_json_bytes, unix_now};

/// A complete Messages API answer, as far as it is translated.
#[derive(Debug, Deserialize)]
struct MessagesResponse {
    id: String,
    model: String,
    #[serde(default)]
    content: Vec<ResponseBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
    /// Server-tool blocks, which llmesh never asks for.
    #[serde(other)]
    Other,
}

/// Anthropic's token counts. In a stream they arrive in pieces (input at
/// `message_start`, cumulative output at `message_delta`), so every field
/// is optional and later pieces override earlier ones.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub(super) struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl WireUsage {
    /// Takes the counts `later` reports, keeping the others.
    pub(super) fn merge(&mut self, later: &Self) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later.cache_read_input_tokens.or(self.cache_read_input_tokens);
    }

    /// In OpenAI's terms: Anthropic's `input_tokens` excludes cache reads and
    /// writes, OpenAI's `prompt_tokens` includes them.
    pub(super) fn to_usage(self) -> Usage {
        let cache_read = self.cache_read_input_tokens.unwrap_or(0);
        let cache_write = self.cache_creation_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cache_read)
            .saturating_add(cache_write);
        // `Usage::new` adds prompt and output; a garbage count must not overflow it.
        let output = self.output_tokens.unwrap_or(0).min(u64::MAX - prompt);
        Usage::new(prompt, output, cache_read, cache_write, 0)
    }
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`. `tool_use` only
/// means `tool_calls` when the app's tools were called; a call to the JSON
/// response tool is the answer itself.
pub(super) fn finish_reason(stop_reason: Option<&str>, called_app_tools: bool) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") if called_app_tools => "tool_calls",
        Some("refusal") => "content_filter",
        // end_turn, stop_sequence, pause_turn, tool_use of the JSON tool.
        _ => "stop",
    }
}

/// Translates a complete answer. With `json_response`, a call to
/// [`JSON_RESPONSE_TOOL`] becomes the message content.
///
/// # Errors
/// The body is not a Messages API answer.
pub(super) fn translate(body: &[u8], json_response: bool) -> Result<Completed, ProviderError> {
    let answer: MessagesResponse = serde_json::from_slice(body).map_err(|e| {
        ProviderError::invalid_response(format!("upstream answer is not an Anthropic message: {e}"))
    })?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut reasoning: Option<String> = None;
    let mut thinking_blocks = Vec::new();
    for block in answer.content {
        match block {
            ResponseBlock::Thinking { thinking, signature } => {
                reasoning.get_or_insert_with(String::new).push_str(&thinking);
                thinking_blocks.push(ThinkingBlock::Thinking { thinking, signature });
            }
            ResponseBlock::RedactedThinking { data } => {
                thinking_blocks.push(ThinkingBlock::RedactedThinking { data });
            }
            ResponseBlock::Text { text: piece } => text.push_str(&piece),
            ResponseBlock::ToolUse { input, name, .. } if json_response && name == JSON_RESPONSE_TOOL => {
                text.push_str(&input.to_string());
            }
            ResponseBlock::ToolUse { id, name, input } => tool_calls.push(ToolCall {
                id,
                kind: "function".to_owned(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            ResponseBlock::Other => {}
        }
    }
    let usage = answer.usage.to_usage();
    let finish = finish_reason(answer.stop_reason.as_deref(), !tool_calls.is_empty());
    let message = ResponseMessage {
        role: "assistant".to_owned(),
        // OpenAI sends `null` content when the model only called tools.
        content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
        tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
        refusal: None,
        reasoning_content: reasoning,
        thinking_blocks: (!thinking_blocks.is_empty()).then_some(thinking_blocks),
    };
    let response = ChatResponse {
        id: answer.id,
        object: "chat.completion".to_owned(),
        created: unix_now(),
        model: answer.model,
        choices: vec![Choice {
            index: 0,
            message,
            finish_reason: Some(finish.to_owned()),
        }],
        usage: Some(usage.clone()),
    };
    Ok(Completed {
        body: to_json_bytes(&response),
        usage,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::PromptTokensDetails;

    fn openai(body: &Value, json_response: bool) -> (Value, Usage) {
        let completed = translate(body.to_string().as_bytes(), json_response).expect("translates");
        (
            serde_json::from_slice(&completed.body).expect("json"),
            completed.usage,
        )
    }

    #[test]
    fn text_tools_stop_reason_and_cached_usage_translate() {
        let (body, usage) = openai(
            &json!({
                "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [
                    {"type": "text", "text": "Let me check "},
                    {"type": "text", "text": "the weather."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 20,
                          "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5}
            }),
            false,
        );
        assert_eq!(body["id"], "msg_01");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "claude-sonnet-4-5");
        let choice = &body["choices"][0];
        assert_eq!(choice["message"]["content"], "Let me check the weather.");
        assert_eq!(
            choice["message"]["tool_calls"],
            json!([{"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}])
        );
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(usage.prompt_tokens, 115);
        assert_eq!(usage.completion_tokens, 20);
        assert_eq!(usage.total_tokens, 135);
        assert_eq!(
            usage.prompt_tokens_details,
            Some(PromptTokensDetails {
                cached_tokens: 100,
                cache_write_tokens: 5
            })
        );
        assert_eq!(body["usage"]["prompt_tokens"], 115);
    }

    #[test]
    fn every_stop_reason_has_an_openai_finish_reason() {
        let cases = [
            (Some("end_turn"), false, "stop"),
            (Some("stop_sequence"), false, "stop"),
            (Some("max_tokens"), false, "length"),
            (Some("model_context_window_exceeded"), false, "length"),
            (Some("tool_use"), true, "tool_calls"),
            (Some("tool_use"), false, "stop"),
            (Some("refusal"), false, "content_filter"),
            (Some("pause_turn"), false, "stop"),
            (None, false, "stop"),
        ];
        for (stop, tools, finish) in cases {
            assert_eq!(finish_reason(stop, tools), finish, "{stop:?}");
        }
    }

    #[test]
    fn the_json_tool_call_becomes_the_content() {
        let (body, _) = openai(
            &json!({
                "id": "msg_02", "model": "claude-haiku-4-5",
                "content": [{"type": "tool_use", "id": "toolu_2", "name": JSON_RESPONSE_TOOL, "input": {"answer": 42}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 3, "output_tokens": 4}
            }),
            true,
        );
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], "{\"answer\":42}");
        assert!(message.get("tool_calls").is_none());
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn a_tool_only_answer_has_null_content_and_garbage_is_an_error() {
        let (body, _) = openai(
            &json!({"id": "m", "model": "c", "content": [{"type": "thinking", "thinking": "hmm"},
                {"type": "tool_use", "id": "t", "name": "f", "input": {}}], "stop_reason": "tool_use", "usage": {}}),
            false,
        );
        assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
        assert!(translate(b"<html>", false).is_err());
    }

    #[test]
    fn thinking_blocks_keep_their_signatures_beside_the_reasoning_text() {
        let (body, _) = openai(
            &json!({"id": "m", "model": "c", "content": [
                {"type": "thinking", "thinking": "First, ", "signature": "sig1"},
                {"type": "redacted_thinking", "data": "enc"},
                {"type": "thinking", "thinking": "then.", "signature": "sig2"},
                {"type": "text", "text": "Done."}], "stop_reason": "end_turn", "usage": {}}),
            false,
        );
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], "Done.");
        assert_eq!(message["reasoning_content"], "First, then.");
        assert_eq!(
            message["thinking_blocks"],
            json!([
                {"type": "thinking", "thinking": "First, ", "signature": "sig1"},
                {"type": "redacted_thinking", "data": "enc"},
                {"type": "thinking", "thinking": "then.", "signature": "sig2"}
            ])
        );
        let (plain, _) = openai(
            &json!({"id": "m", "model": "c", "content": [{"type": "text", "text": "Hi"}], "usage": {}}),
            false,
        );
        assert!(plain["choices"][0]["message"].get("thinking_blocks").is_none());
        assert!(plain["choices"][0]["message"].get("reasoning_content").is_none());
    }

    #[test]
    fn absurd_counts_do_not_overflow() {
        let usage = WireUsage {
            input_tokens: Some(u64::MAX),
            output_tokens: Some(u64::MAX),
            ..WireUsage::default()
        };
        assert_eq!(usage.to_usage().total_tokens, u64::MAX);
    }
}
