//! Gemini answer → OpenAI chat completion, and the pieces streams share with it.

use sha2::{Digest, Sha256};

use super::super::{Completed, ErrorKind, ProviderError, to_json_bytes};
use super::error_from_google;
use super::wire::{Candidate, FunctionCall, GenerateContentResponse, UsageMetadata};
use crate::api::Usage;
use crate::api::chat::{ChatResponse, Choice, FunctionCall as OpenAiCall, ResponseMessage, ToolCall};

/// Token counts above this are not real; clamping keeps sums from overflowing
/// whatever an upstream sends.
const MAX_TOKEN_COUNT: u64 = 1 << 48;

/// Translates a complete `generateContent` answer.
///
/// `fallback_id` names the answer when Gemini sent no `responseId`.
///
/// # Errors
/// `ContentFilter` when the prompt was blocked; `InvalidResponse` when the
/// body is not a Gemini answer.
pub(super) fn complete(
    body: &[u8],
    model: &str,
    fallback_id: &str,
    created: u64,
) -> Result<Completed, ProviderError> {
    let response = parse(body)?;
    if response.candidates.is_empty() {
        return Err(ProviderError::invalid_response(
            "Gemini answered with no candidates",
        ));
    }
    let id = completion_id(response.response_id.as_deref(), fallback_id);
    let mut choices: Vec<Choice> = response
        .candidates
        .iter()
        .enumerate()
        .map(|(position, candidate)| choice(&id, position, candidate))
        .collect();
    choices.sort_by_key(|c| c.index);
    let usage = response.usage_metadata.as_ref().map(usage).unwrap_or_default();
    let body = ChatResponse {
        id,
        object: "chat.completion".to_owned(),
        created,
        model: response.model_version.unwrap_or_else(|| model.to_owned()),
        choices,
        usage: Some(usage.clone()),
    };
    Ok(Completed {
        body: to_json_bytes(&body),
        usage,
    })
}

fn choice(id: &str, position: usize, candidate: &Candidate) -> Choice {
    let index = candidate_index(candidate, position);
    let parts = candidate.content.iter().flat_map(|c| &c.parts);
    let text: String = parts.clone().filter_map(|p| p.answer_text()).collect();
    let tool_calls: Vec<ToolCall> = parts
        .filter_map(|p| p.function_call.as_ref())
        .enumerate()
        .map(|(ordinal, call)| tool_call(id, index, ordinal, call))
        .collect();
    let called = !tool_calls.is_empty();
    Choice {
        index,
        message: ResponseMessage {
            role: "assistant".to_owned(),
            content: (!(called && text.is_empty())).then_some(text),
            tool_calls: called.then_some(tool_calls),
            ..ResponseMessage::default()
        },
        finish_reason: candidate
            .finish_reason
            .as_deref()
            .and_then(|r| finish_reason(r, called))
            .map(str::to_owned),
    }
}

/// Parses one Gemini answer (or stream event) and turns the failures it can
/// carry, an error object or a blocked prompt, into errors.
///
/// # Errors
/// The body is not JSON of Gemini's shape, reports an error, or says the prompt was blocked.
pub(super) fn parse(body: &[u8]) -> Result<GenerateContentResponse, ProviderError> {
    let response: GenerateContentResponse = serde_json::from_slice(body).map_err(|e| {
        ProviderError::invalid_response(format!("Gemini sent an answer that is not valid: {e}"))
    })?;
    if let Some(error) = &response.error {
        return Err(error_from_google(None, error));
    }
    if response.candidates.is_empty()
        && let Some(reason) = response
            .prompt_feedback
            .as_ref()
            .and_then(|f| f.block_reason.as_deref())
    {
        return Err(ProviderError::new(
            ErrorKind::ContentFilter,
            format!("Gemini blocked the prompt ({reason})"),
        ));
    }
    Ok(response)
}

/// The OpenAI id of an answer: Gemini's own when it sent one, so logs on both sides match.
pub(super) fn completion_id(response_id: Option<&str>, fallback_id: &str) -> String {
    match response_id {
        Some(id) if !id.is_empty() => format!("chatcmpl-{id}"),
        _ => fallback_id.to_owned(),
    }
}

/// Where a candidate goes among the choices: its own index, else its position.
pub(super) fn candidate_index(candidate: &Candidate, position: usize) -> u32 {
    candidate
        .index
        .unwrap_or_else(|| u32::try_from(position).unwrap_or(u32::MAX))
}

/// OpenAI's `finish_reason` for Gemini's; `None` for the unset value.
pub(super) fn finish_reason(reason: &str, called_tools: bool) -> Option<&'static str> {
    Some(match reason {
        "FINISH_REASON_UNSPECIFIED" | "" => return None,
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        // Gemini says STOP after function calls; OpenAI apps loop on tool_calls.
        _ if called_tools => "tool_calls",
        // STOP, and reasons OpenAI has no word for (LANGUAGE, OTHER,
        // MALFORMED_FUNCTION_CALL): the answer is over.
        _ => "stop",
    })
}

/// OpenAI usage from Gemini's counts: thoughts are output, tool-use prompts are input.
pub(super) fn usage(metadata: &UsageMetadata) -> Usage {
    let count = |n: u64| n.min(MAX_TOKEN_COUNT);
    let thoughts = count(metadata.thoughts_token_count);
    Usage::new(
        count(metadata.prompt_token_count) + count(metadata.tool_use_prompt_token_count),
        count(metadata.candidates_token_count) + thoughts,
        count(metadata.cached_content_token_count),
        0,
        thoughts,
    )
}

/// An OpenAI tool call for a Gemini function call. Gemini gives calls no id;
/// this one is derived from the answer, the candidate and the call's position,
/// so it is the same whether the answer was streamed or not, and unique
/// within the conversation.
pub(super) fn tool_call(
    completion_id: &str,
    candidate: u32,
    ordinal: usize,
    call: &FunctionCall,
) -> ToolCall {
    let arguments = call
        .args
        .as_ref()
        .map_or_else(|| "{}".to_owned(), serde_json::Value::to_string);
    let digest = Sha256::new()
        .chain_update(completion_id.as_bytes())
        .chain_update(candidate.to_be_bytes())
        .chain_update(ordinal.to_be_bytes())
        .chain_update(call.name.as_bytes())
        .finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    ToolCall {
        id: format!("call_{hex}"),
        kind: "function".to_owned(),
        function: OpenAiCall {
            name: call.name.clone(),
            arguments,
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn translate(body: &Value) -> (Value, Usage) {
        let completed = complete(
            body.to_string().as_bytes(),
            "gemini-2.5-flash",
            "chatcmpl-fallback",
            1_700_000_000,
        )
        .expect("translates");
        (
            serde_json::from_slice(&completed.body).expect("json"),
            completed.usage,
        )
    }

    #[test]
    fn text_and_usage_become_an_openai_completion() {
        let (body, usage) = translate(&json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking about it", "thought": true},
                {"text": "Hello"}, {"text": ", world"}
            ]}, "finishReason": "STOP", "index": 0, "safetyRatings": []}],
            "usageMetadata": {"promptTokenCount": 12, "cachedContentTokenCount": 4, "candidatesTokenCount": 3,
                              "thoughtsTokenCount": 5, "totalTokenCount": 20},
            "modelVersion": "gemini-2.5-flash-001",
            "responseId": "abc123"
        }));
        assert_eq!(body["id"], "chatcmpl-abc123");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "gemini-2.5-flash-001");
        assert_eq!(
            body["choices"][0]["message"],
            json!({"role": "assistant", "content": "Hello, world"})
        );
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(usage, Usage::new(12, 8, 4, 0, 5));
        assert_eq!(body["usage"]["completion_tokens_details"]["reasoning_tokens"], 5);
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    }

    #[test]
    fn function_calls_become_tool_calls_with_stable_ids() {
        let answer = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
                {"functionCall": {"name": "clock"}}
            ]}, "finishReason": "STOP"}]
        });
        let (body, _) = translate(&answer);
        let message = &body["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        let calls = message["tool_calls"].as_array().expect("calls");
        assert_eq!(
            calls[0]["function"],
            json!({"name": "weather", "arguments": "{\"city\":\"Paris\"}"})
        );
        assert_eq!(calls[1]["function"], json!({"name": "clock", "arguments": "{}"}));
        let id = calls[0]["id"].as_str().expect("id");
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        assert_eq!(
            translate(&answer).0["choices"][0]["message"]["tool_calls"],
            message["tool_calls"],
            "stable"
        );
    }

    #[test]
    fn finish_reasons_map_to_openai_words() {
        let cases = [
            ("STOP", false, Some("stop")),
            ("STOP", true, Some("tool_calls")),
            ("MAX_TOKENS", true, Some("length")),
            ("SAFETY", false, Some("content_filter")),
            ("RECITATION", false, Some("content_filter")),
            ("BLOCKLIST", false, Some("content_filter")),
            ("PROHIBITED_CONTENT", false, Some("content_filter")),
            ("SPII", false, Some("content_filter")),
            ("MALFORMED_FUNCTION_CALL", false, Some("stop")),
            ("FINISH_REASON_UNSPECIFIED", false, None),
        ];
        for (reason, called, expected) in cases {
            assert_eq!(finish_reason(reason, called), expected, "{reason}");
        }
    }

    #[test]
    fn several_candidates_become_choices_in_index_order() {
        let (body, _) = translate(&json!({"candidates": [
            {"content": {"parts": [{"text": "b"}]}, "finishReason": "STOP", "index": 1},
            {"content": {"parts": [{"text": "a"}]}, "finishReason": "MAX_TOKENS", "index": 0}
        ]}));
        assert_eq!(body["choices"][0]["message"]["content"], "a");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["choices"][1]["message"]["content"], "b");
        assert_eq!(body["id"], "chatcmpl-fallback");
        assert_eq!(body["model"], "gemini-2.5-flash");
    }

    #[test]
    fn blocked_prompts_and_garbage_are_errors() {
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
                             "usageMetadata": {"promptTokenCount": 9}});
        let error = complete(blocked.to_string().as_bytes(), "m", "x", 0).expect_err("blocked");
        assert_eq!(error.kind, ErrorKind::ContentFilter);
        assert!(error.message.contains("SAFETY"));
        for garbage in ["<html>", "{}", "{\"candidates\": 3}"] {
            assert_eq!(
                complete(garbage.as_bytes(), "m", "x", 0).expect_err(garbage).kind,
                ErrorKind::InvalidResponse
            );
        }
    }

    #[test]
    fn absurd_token_counts_do_not_overflow() {
        let metadata = UsageMetadata {
            prompt_token_count: u64::MAX,
            tool_use_prompt_token_count: u64::MAX,
            candidates_token_count: u64::MAX,
            thoughts_token_count: u64::MAX,
            cached_content_token_count: u64::MAX,
        };
        assert_eq!(usage(&metadata).total_tokens, 4 * MAX_TOKEN_COUNT);
    }
}
