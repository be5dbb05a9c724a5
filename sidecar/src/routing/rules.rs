//! Rule matching: which of a route's rules, if any, a request falls under.
//!
//! The match language is deliberately small: exact, case-sensitive values of
//! request headers (names case-insensitive) and of the request's `metadata`
//! object, and a minimum estimated prompt size. Every condition a rule names
//! must hold; the first matching rule wins.

use http::HeaderMap;
use llmesh_crds::resources::RuleMatch;
use serde_json::{Map, Value};

use super::Estimate;

/// What rules can look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The request body's `metadata` object, if any.
    pub metadata: Option<&'a Map<String, Value>>,
    /// The size estimate.
    pub estimate: Estimate,
}

impl RequestFacts<'_> {
    /// Whether every condition of `rule` holds.
    pub fn matches(&self, rule: &RuleMatch) -> bool {
        let headers = rule.headers.iter().all(|(name, want)| {
            self.headers
                .get(name.as_str())
                .is_some_and(|v| v.as_bytes() == want.as_bytes())
        });
        let metadata = rule.metadata.iter().all(|(key, want)| {
            self.metadata
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .is_some_and(|v| v == want)
        });
        let size = rule
            .min_prompt_tokens
            .is_none_or(|min| self.estimate.prompt_tokens >= min);
        headers && metadata && size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_condition_must_hold() {
        let mut headers = HeaderMap::new();
        headers.insert("x-llmesh-tier", "premium".parse().expect("valid"));
        let metadata: Map<String, Value> =
            serde_json::from_str(r#"{"feature": "summarize", "n": 3}"#).expect("json");
        let facts = RequestFacts {
            headers: &headers,
            metadata: Some(&metadata),
            estimate: Estimate {
                prompt_tokens: 5_000,
                max_output_tokens: None,
            },
        };
        let rule = |json: &str| -> RuleMatch { serde_json::from_str(json).expect("a rule") };
        assert!(facts.matches(&rule(r#"{"headers": {"X-LLMesh-Tier": "premium"}}"#)));
        assert!(!facts.matches(&rule(r#"{"headers": {"x-llmesh-tier": "Premium"}}"#)));
        assert!(facts.matches(&rule(
            r#"{"metadata": {"feature": "summarize"}, "minPromptTokens": 4000}"#
        )));
        assert!(!facts.matches(&rule(
            r#"{"metadata": {"feature": "summarize"}, "minPromptTokens": 6000}"#
        )));
        assert!(
            !facts.matches(&rule(r#"{"metadata": {"n": "3"}}"#)),
            "only string values match"
        );
        assert!(!facts.matches(&rule(r#"{"headers": {"x-other": "premium"}}"#)));
    }
}
