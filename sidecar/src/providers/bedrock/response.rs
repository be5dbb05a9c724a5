//! Converse response → OpenAI `chat.completion`, and what the stream shares
//! with it: stop reasons and token usage.

use serde::Deserialize;
use serde_json::Value;

use super::super::{ProviderError, unix_now};
use crate::api::Usage;
use crate::api::chat::{ChatResponse, Choice, FunctionCall, ResponseMessage, ToolCall};

/// Converse's token counts (`usage` in an answer, in the stream's `metadata`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl From<&TokenUsage> for Usage {
    /// Converse counts cached input apart; OpenAI's `prompt_tokens` includes it.
    fn from(usage: &TokenUsage) -> Self {
        // No model reads four billion tokens; the cap keeps the sums below
        // from overflowing whatever a broken upstream reports.
        let cap = |n: u64| n.min(u64::from(u32::MAX));
        let read = cap(usage.cache_read_input_tokens);
        let write = cap(usage.cache_write_input_tokens);
        Usage::new(
            cap(usage.input_tokens) + read + write,
            cap(usage.output_tokens),
            read,
            write,
            0,
        )
    }
}

/// OpenAI's `finish_reason` for a Converse `stopReason`. A tool call that was
/// only the response-format tool is an answer, so it ends as `stop`.
pub(super) fn finish_reason(stop_reason: &str, called_app_tool: bool) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" if called_app_tool => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseResponse {
    output: Output,
    stop_reason: String,
    #[serde(default)]
    usage: TokenUsage,
}

#[derive(Deserialize)]
struct Output {
    message: OutputMessage,
}

#[derive(Deserialize)]
struct OutputMessage {
    #[serde(default)]
    content: Vec<ContentBlock>,
}

/// One output block; kinds llmesh does not translate (reasoning, citations)
/// deserialize as all-`None` and are skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContentBlock {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<ToolUse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ToolUse {
    tool_use_id: String,
    name: String,
    #[serde(default)]
    input: Value,
}

/// Translates a Converse answer. `json_tool` names the tool standing in for
/// `response_format`: its input becomes the content, and text the model wrote
/// around the call is dropped so the content stays valid JSON.
///
/// # Errors
/// The body is not a Converse answer.
pub(super) fn translate(
    body: &[u8],
    id: &str,
    model: &str,
    json_tool: Option<&str>,
) -> Result<(ChatResponse, Usage), ProviderError> {
    let answer: ConverseResponse = serde_json::from_slice(body).map_err(|e| {
        ProviderError::invalid_response(format!("Bedrock sent an unreadable Converse answer: {e}"))
    })?;
    let mut text = String::new();
    let mut json_answer = None;
    let mut tool_calls = Vec::new();
    for block in answer.output.message.content {
        if let Some(piece) = block.text {
            text.push_str(&piece);
        }
        if let Some(call) = block.tool_use {
            // A call without arguments may come with no `input` at all; the
            // app still gets a JSON object.
            let input = match call.input {
                Value::Null => "{}".to_owned(),
                input => input.to_string(),
            };
            if json_tool == Some(call.name.as_str()) {
                json_answer = Some(input);
            } else {
                let function = FunctionCall {
                    name: call.name,
                    arguments: input,
                };
                tool_calls.push(ToolCall {
                    id: call.tool_use_id,
                    kind: "function".to_owned(),
                    function,
                });
            }
        }
    }
    let finish_reason = finish_reason(&answer.stop_reason, !tool_calls.is_empty());
    let content = match json_answer {
        Some(json) => Some(json),
        None if text.is_empty() && !tool_calls.is_empty() => None,
        None => Some(text),
    };
    let usage = Usage::from(&answer.usage);
    let response = ChatResponse {
        id: id.to_owned(),
        object: "chat.completion".to_owned(),
        created: unix_now(),
        model: model.to_owned(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".to_owned(),
                content,
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                ..ResponseMessage::default()
            },
            finish_reason: Some(finish_reason.to_owned()),
        }],
        usage: Some(usage.clone()),
    };
    Ok((response, usage))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(body: Value, json_tool: Option<&str>) -> (ChatResponse, Usage) {
        translate(
            body.to_string().as_bytes(),
            "chatcmpl-1",
            "anthropic.claude",
            json_tool,
        )
        .expect("a Converse answer")
    }

    #[test]
    fn text_tool_calls_and_cached_usage_come_back_in_openai_shape() {
        let (response, usage) = answer(
            json!({
                "output": {"message": {"role": "assistant", "content": [
                    {"text": "Let me check."},
                    {"toolUse": {"toolUseId": "tooluse_1", "name": "weather", "input": {"city": "Paris"}}}
                ]}},
                "stopReason": "tool_use",
                "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 35,
                          "cacheReadInputTokens": 12, "cacheWriteInputTokens": 8},
                "metrics": {"latencyMs": 420}
            }),
            None,
        );
        let choice = &response.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(choice.message.content.as_deref(), Some("Let me check."));
        let call = &choice.message.tool_calls.as_ref().expect("a tool call")[0];
        assert_eq!(
            (call.id.as_str(), call.function.name.as_str()),
            ("tooluse_1", "weather")
        );
        assert_eq!(
            serde_json::from_str::<Value>(&call.function.arguments).expect("JSON"),
            json!({"city": "Paris"})
        );
        assert_eq!(usage, Usage::new(30, 5, 12, 8, 0));
        assert_eq!(usage.total_tokens, 35);
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        for (stop, app_tool, finish) in [
            ("end_turn", false, "stop"),
            ("stop_sequence", false, "stop"),
            ("max_tokens", false, "length"),
            ("tool_use", true, "tool_calls"),
            ("tool_use", false, "stop"),
            ("guardrail_intervened", false, "content_filter"),
            ("content_filtered", false, "content_filter"),
        ] {
            assert_eq!(finish_reason(stop, app_tool), finish, "{stop}");
        }
    }

    #[test]
    fn the_response_format_tool_becomes_the_content() {
        let (response, _) = answer(
            json!({
                "output": {"message": {"role": "assistant", "content": [
                    {"text": "Here you go:"},
                    {"toolUse": {"toolUseId": "tooluse_9", "name": "json_response", "input": {"name": "teal"}}}
                ]}},
                "stopReason": "tool_use",
                "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}
            }),
            Some("json_response"),
        );
        let choice = &response.choices[0];
        assert_eq!(choice.finish_reason.as_deref(), Some("stop"));
        assert_eq!(choice.message.tool_calls, None);
        let content = choice.message.content.as_deref().expect("content");
        assert_eq!(
            serde_json::from_str::<Value>(content).expect("JSON"),
            json!({"name": "teal"})
        );
    }

    #[test]
    fn a_tool_call_without_arguments_has_empty_json_arguments() {
        let recorded: Value = serde_json::from_str(include_str!(
            "../../../../test-support/fixtures/bedrock/converse_tool_call_no_input.json"
        ))
        .expect("a JSON fixture");
        let mut without_input = recorded.clone();
        without_input["output"]["message"]["content"][0]["toolUse"]
            .as_object_mut()
            .expect("a toolUse")
            .remove("input");
        for body in [recorded, without_input] {
            let (response, _) = answer(body, None);
            let choice = &response.choices[0];
            assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
            let call = &choice.message.tool_calls.as_ref().expect("a tool call")[0];
            assert_eq!(call.function.name, "current_time");
            assert_eq!(call.function.arguments, "{}");
        }
    }

    #[test]
    fn a_body_that_is_not_converse_is_an_invalid_response() {
        let error = translate(b"{\"unexpected\":true}", "id", "m", None).expect_err("not Converse");
        assert_eq!(error.kind, super::super::super::ErrorKind::InvalidResponse);
    }
}
