//! Estimates of a request's size, made before any provider counts it.
//!
//! Used to predict a context-window overflow, to match `minPromptTokens`
//! rules and to price a request for `cheapest`. A token is taken as four
//! characters of text (the usual rule of thumb for English with
//! OpenAI-style tokenizers); images and audio are not counted.

use crate::api::chat::ChatRequest;
use crate::api::embeddings::EmbeddingsRequest;

/// Characters per token in the estimate.
const CHARS_PER_TOKEN: usize = 4;

/// What a request is expected to cost in tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Input tokens.
    pub prompt_tokens: u64,
    /// The output limit the request asks for, if any.
    pub max_output_tokens: Option<u64>,
}

fn tokens(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(CHARS_PER_TOKEN)).unwrap_or(u64::MAX)
}

impl Estimate {
    /// Estimates a chat request: message text, tool calls and tool definitions.
    pub fn of_chat(request: &ChatRequest) -> Self {
        let messages: usize = request
            .messages
            .iter()
            .map(|m| {
                let calls: usize = m
                    .tool_calls
                    .iter()
                    .flatten()
                    .map(|c| c.function.name.len() + c.function.arguments.len())
                    .sum();
                m.text().len() + calls
            })
            .sum();
        let tools = request
            .tools
            .as_ref()
            .map_or(0, |t| serde_json::to_string(t).map_or(0, |s| s.len()));
        Self {
            prompt_tokens: tokens(messages + tools),
            max_output_tokens: request.max_output_tokens(),
        }
    }

    /// Estimates an embeddings request.
    pub fn of_embeddings(request: &EmbeddingsRequest) -> Self {
        let chars = request
            .input
            .texts()
            .map_or(0, |texts| texts.iter().map(|t| t.len()).sum());
        Self {
            prompt_tokens: tokens(chars),
            max_output_tokens: None,
        }
    }

    /// Whether the request fits a context window (unknown windows always fit).
    pub fn fits(&self, context_window: Option<u64>) -> bool {
        context_window.is_none_or(|window| self.prompt_tokens + self.max_output_tokens.unwrap_or(0) <= window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_four_characters_a_token_and_checks_the_window_with_the_output_limit() {
        let request: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "x".repeat(400)}]
        }))
        .expect("valid");
        let estimate = Estimate::of_chat(&request);
        assert_eq!(estimate.prompt_tokens, 100);
        assert!(estimate.fits(Some(110)));
        assert!(!estimate.fits(Some(109)));
        assert!(estimate.fits(None));
    }
}
